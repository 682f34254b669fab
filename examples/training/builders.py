"""Build the datasets and networks a :class:`~examples.training.config.RunConfig` describes."""

from __future__ import annotations

import os
from collections.abc import Mapping

import torch
from torch import nn
from torch.utils.data import Dataset

from examples.asapnet import ASAPNetConfig, ASAPNetGenerator
from examples.discriminator import MultiscaleDiscriminator
from examples.spade import SPADEConfig, SPADEGenerator
from examples.training.config import DataConfig, ModelConfig, RunConfig
from examples.weight_init import init_weights
from label_merge import CLAM, TLAM, LabelSpec, NaiveConcat

__all__ = [
    "ConditionalGenerator",
    "build_datasets",
    "build_merger",
    "raw_specs",
    "build_networks",
    "image_size",
    "restore_generator",
    "specs_from_dict",
    "specs_to_dict",
]

# The synthetic held-out scenes of a run with seed s are drawn with seed s + this offset.
HELD_OUT_SEED_OFFSET = 1_000_003

# Width over height of each dataset's images, for a given --resolution (the height).
ASPECT = {"synthetic": 1.0, "taskonomy": 1.0, "cityscapes": 2.0, "nyu": 4.0 / 3.0}


def image_size(data: DataConfig) -> tuple[int, int]:
    """``(H, W)`` of the training images."""
    height = data.resolution
    return height, int(round(height * ASPECT[data.dataset]))


def build_datasets(data: DataConfig, *, seed: int) -> tuple[Dataset, Dataset]:
    """The training and held-out datasets.

    The synthetic dataset draws its held-out scenes from a different seed, so they never
    appear in training. Real datasets use their standard train and validation splits.

    Raises:
        ValueError: A real dataset without ``data_root``.
    """
    from examples import datasets

    size = image_size(data)
    if data.dataset == "synthetic":
        train = datasets.SyntheticDataset(
            num_samples=data.train_samples, resolution=size, seed=seed, labels=data.labels, cache_dir=data.cache_dir
        )
        val = datasets.SyntheticDataset(
            num_samples=data.val_samples,
            resolution=size,
            seed=seed + HELD_OUT_SEED_OFFSET,
            labels=data.labels,
            cache_dir=data.cache_dir,
        )
        return train, val
    if data.data_root is None:
        raise ValueError(f"--dataset {data.dataset} needs --data-root (the dataset's folder)")
    if data.dataset == "taskonomy":
        full = datasets.TaskonomyDataset(data.data_root, labels=data.labels, resolution=size[0])
        # Taskonomy has no fixed split here: hold out the last 10% of views.
        cut = max(1, int(round(len(full) * 0.9)))
        indices = list(range(len(full)))
        return torch.utils.data.Subset(full, indices[:cut]), torch.utils.data.Subset(full, indices[cut:])
    cls = {"cityscapes": datasets.CityscapesDataset, "nyu": datasets.NYUDepthV2Dataset}[data.dataset]
    val_split = "val" if data.dataset == "cityscapes" else "test"
    return (
        cls(data.data_root, split="train", labels=data.labels, resolution=size),
        cls(data.data_root, split=val_split, labels=data.labels, resolution=size),
    )


def label_specs_of(dataset: Dataset) -> dict[str, LabelSpec]:
    """``label_specs`` of a dataset, also through ``Subset``."""
    while isinstance(dataset, torch.utils.data.Subset):
        dataset = dataset.dataset
    return dict(dataset.label_specs)


def specs_to_dict(specs: Mapping[str, LabelSpec]) -> dict[str, dict]:
    """Label specs as JSON-able dicts (stored in checkpoints, so generation needs no dataset)."""
    return {name: spec.to_dict() for name, spec in specs.items()}


def specs_from_dict(d: Mapping[str, Mapping]) -> dict[str, LabelSpec]:
    """Inverse of :func:`specs_to_dict`."""
    return {name: LabelSpec.from_dict(v) for name, v in d.items()}


def raw_specs(specs: Mapping[str, LabelSpec]) -> dict[str, LabelSpec]:
    """The specs without normalisation: continuous labels reach the merger as they are."""
    return {
        name: LabelSpec.continuous(spec.channels) if not spec.is_categorical else spec for name, spec in specs.items()
    }


def build_merger(model: ModelConfig, specs: Mapping[str, LabelSpec]) -> nn.Module:
    """The label merger: TLAM, CLAM, NaiveConcat, or one-hot semantics only.

    Raises:
        ValueError: ``semantic`` without a semantic label.
    """
    specs = specs if model.normalize_labels else raw_specs(specs)
    if model.merger == "tlam":
        return TLAM(specs, dim=model.dim, depth=model.depth, heads=model.heads, drop=model.drop)
    if model.merger == "clam":
        return CLAM(specs, dim=model.dim, depth=model.depth, drop=model.drop)
    if model.merger == "naive":
        return NaiveConcat(specs, include_masks=model.naive_presence)
    if "semantic" not in specs or not specs["semantic"].is_categorical:
        raise ValueError(f"--merger semantic needs a categorical 'semantic' label; the labels are {list(specs)}")
    # The usual semantic image synthesis input: the one-hot class map alone.
    return NaiveConcat({"semantic": specs["semantic"]}, include_masks=False)


class ConditionalGenerator(nn.Module):
    """A label merger followed by a generator: ``(labels, masks) -> (image, concept)``.

    Labels the merger does not know (e.g. depth for the semantics-only baseline) are ignored.
    """

    def __init__(self, merger: nn.Module, generator: nn.Module) -> None:
        super().__init__()
        self.merger = merger
        self.generator = generator

    def forward(
        self, labels: Mapping[str, torch.Tensor], masks: Mapping[str, torch.Tensor] | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        known = self.merger.specs
        labels = {k: v for k, v in labels.items() if k in known}
        masks = {k: v for k, v in (masks or {}).items() if k in labels}
        concept = self.merger(labels, masks)  # (B, C, H, W)
        return self.generator(concept), concept


def asap_downsampling_for(height: int, width: int) -> int:
    """ASAP-Net's total downsampling ``S`` for an image size.

    ASAP uses ``S = H // 16`` (a 16-row parameter grid). When that is not a power of two that
    divides both sides (NYU's 240 x 320, say), take the largest power of two below it that
    does, so the grid gets a few more rows instead of failing.

    Raises:
        ValueError: No power of two >= 2 divides both sides.
    """
    s = 1
    while s * 2 <= max(height // 16, 2) and height % (s * 2) == 0 and width % (s * 2) == 0:
        s *= 2
    if s < 2:
        raise ValueError(f"ASAP-Net needs an image size divisible by 2 at least, got {height} x {width}")
    return s


def build_networks(config: RunConfig, specs: Mapping[str, LabelSpec]) -> tuple[ConditionalGenerator, nn.Module]:
    """The merger+generator and the multi-scale discriminator, initialised."""
    m = config.model
    merger = build_merger(m, specs)
    height, width = image_size(config.data)
    channels = merger.out_channels
    if m.generator == "asap":
        s = asap_downsampling_for(height, width)
        asap = ASAPNetConfig(
            downsampling=s,
            learned_ds_factor=min(16, s),
            lr_width=m.asap_lr_width,
            lr_max_width=m.asap_lr_max_width,
            lr_depth=m.asap_lr_depth,
            hr_width=m.asap_hr_width,
            hr_depth=m.asap_hr_depth,
        )
        generator = init_weights(ASAPNetGenerator(channels, config=asap))
        if m.asap_init == "hyper":
            generator.init_mlp_prior()
        elif m.asap_init != "asap":
            raise ValueError(f"asap_init must be 'hyper' or 'asap', got {m.asap_init!r}")
    else:
        generator = init_weights(SPADEGenerator(channels, config=SPADEConfig(ngf=m.spade_ngf)))
    discriminator = MultiscaleDiscriminator(channels, num_scales=m.num_d, n_layers=m.n_layers_d, ndf=m.ndf)
    init_weights(discriminator)
    return ConditionalGenerator(merger, generator), discriminator


def restore_generator(
    checkpoint: str | os.PathLike, *, device: str | torch.device = "cpu"
) -> tuple[ConditionalGenerator, RunConfig, dict[str, LabelSpec]]:
    """Rebuild the trained merger+generator of a checkpoint, in eval mode, on ``device``.

    Needs no dataset: the label specs and the configuration are stored in the checkpoint.

    Returns:
        ``(generator, config, specs)``.

    Raises:
        FileNotFoundError, CheckpointError: See :func:`examples.training.checkpoint.load_checkpoint`.
    """
    from examples.training.checkpoint import CheckpointError, load_checkpoint, load_checkpoint_config

    saved = load_checkpoint_config(checkpoint)
    if "label_specs" not in saved:
        raise CheckpointError(f"{checkpoint} does not record its label specs")
    config, specs = RunConfig.from_dict(saved), specs_from_dict(saved["label_specs"])
    generator, _ = build_networks(config, specs)
    load_checkpoint(checkpoint, modules={"generator": generator}, restore_rng=False)
    return generator.to(device).eval(), config, specs
