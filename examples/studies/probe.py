"""The merger-capacity probe: each merger with one small decoder, trained to predict the image.

No GAN, no discriminator: a merger and a fixed convolutional decoder learn ``labels -> image``
with a pixel loss, so what one merger extracts from the labels is measured without GAN noise.
Every row gets the same scenes, decoder, optimiser, steps and evaluation masks; only the merger
differs (design and settings: docs/studies.md, "Merger probe").
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass, replace

import numpy as np
import torch
from torch import nn

from examples.datasets import SyntheticDataset
from examples.studies.conditions import sample_generator
from examples.training.builders import raw_specs
from label_merge import CLAM, TLAM, LabelSpec, NaiveConcat
from label_merge.sparsity import label_dropout, region_dropout

__all__ = [
    "ProbeConfig",
    "ProbeRow",
    "raw_specs",
    "ROWS",
    "SceneTensors",
    "render_scenes",
    "build_probe",
    "train_probe",
    "evaluate_probe",
    "save_probe",
    "load_probe",
    "probe_masks",
]


# Seed offset of the whole-label dropout draws (distinct from the region dropout's seeds).
LABEL_DROPOUT_STREAM = 7_919 * 1_000_003


@dataclass(frozen=True)
class ProbeConfig:
    """Every setting of the probe; the same for every row, fixed before any run.

    Attributes:
        resolution: Scene height and width.
        train_scenes: Training scenes (seed ``scene_seed``).
        test_scenes: Held-out scenes (seed ``scene_seed + 1_000_003``).
        steps: Optimiser steps per run.
        batch_size: Scenes per step.
        lr: Adam learning rate (merger and decoder).
        dim: Concept width of CLAM and TLAM.
        depth: CLAM's extra layers and TLAM's transformer blocks.
        heads: TLAM's attention heads.
        decoder_width: Channels of the decoder's two 3x3 convolutions.
        sparsity: Region dropout probability of the sparse rows, in training and evaluation.
        scene_seed: Seed of the training scenes.
        eval_mask_seed: Seed of the evaluation masks (the same for every row and seed).
    """

    resolution: int = 32
    train_scenes: int = 1024
    test_scenes: int = 256
    steps: int = 400
    batch_size: int = 8
    lr: float = 2e-3
    dim: int = 16  # the quality study's merger sizes (budget cpu-2h)
    depth: int = 2
    heads: int = 2
    decoder_width: int = 32
    sparsity: float = 0.5
    scene_seed: int = 0
    eval_mask_seed: int = 0

    def to_dict(self) -> dict:
        return asdict(self)

    def digest(self) -> str:
        """A short hash of the settings and the scenes' renderer: trained runs are filed under it."""
        scenes = SyntheticDataset(1, resolution=self.resolution, seed=self.scene_seed)._settings_key()
        text = json.dumps({**self.to_dict(), "scenes": scenes}, sort_keys=True)
        return hashlib.sha256(text.encode()).hexdigest()[:12]


@dataclass(frozen=True)
class ProbeRow:
    """One row: a merger (``semantic``, ``naive``, ``clam``, ``tlam``), sparse or dense.

    The defaults are the probe's rows; the other fields describe the variants of the merger
    choice study (``benchmarks/merger_choice.py``).

    Attributes:
        name: The row's name (results and trained runs are filed under it).
        merger: ``semantic``, ``naive``, ``clam`` or ``tlam``.
        sparse: Region dropout at ``ProbeConfig.sparsity`` in training (and, in the probe, in
            evaluation).
        concept_norm: End CLAM or TLAM with a LayerNorm over the concept.
        normalize: Keep the dataset's label normalisation (``LabelSpec`` shift and scale); False
            gives the merger raw label values.
        include_masks: Naive concatenation's presence channels.
        label_dropout: Whole-label dropout in training: each label of each scene is dropped
            entirely with this probability (after region dropout).
        dim, depth, heads, steps: Override the config's merger sizes or training steps.
    """

    name: str
    merger: str
    sparse: bool
    concept_norm: bool = False
    normalize: bool = True
    include_masks: bool = True
    label_dropout: float = 0.0
    dim: int | None = None
    depth: int | None = None
    heads: int | None = None
    steps: int | None = None

    def configure(self, config: ProbeConfig) -> ProbeConfig:
        """``config`` with this row's merger sizes and steps."""
        overrides = {k: getattr(self, k) for k in ("dim", "depth", "heads", "steps") if getattr(self, k) is not None}
        return replace(config, **overrides)


ROWS = (
    ProbeRow("semantic-dense", "semantic", False),
    ProbeRow("naive-dense", "naive", False),
    ProbeRow("clam-dense", "clam", False),
    ProbeRow("tlam-dense", "tlam", False),
    ProbeRow("naive-sparse", "naive", True),
    ProbeRow("clam-sparse", "clam", True),
    ProbeRow("tlam-sparse", "tlam", True),
)


@dataclass
class SceneTensors:
    """Scenes held in memory: ``images (N, 3, H, W)``, ``labels``, ``masks (N, H, W)``, ``regions``."""

    images: torch.Tensor
    labels: dict[str, torch.Tensor]
    masks: dict[str, torch.Tensor]
    regions: torch.Tensor
    specs: dict[str, LabelSpec]

    def __len__(self) -> int:
        return self.images.shape[0]

    def take(self, index: torch.Tensor) -> SceneTensors:
        index = index.to(self.images.device)
        return SceneTensors(
            self.images[index],
            {k: v[index] for k, v in self.labels.items()},
            {k: v[index] for k, v in self.masks.items()},
            self.regions[index],
            self.specs,
        )

    def to(self, device: torch.device | str) -> SceneTensors:
        """The scenes on ``device``."""
        move = lambda d: {k: v.to(device) for k, v in d.items()}  # noqa: E731
        return SceneTensors(
            self.images.to(device), move(self.labels), move(self.masks), self.regions.to(device), self.specs
        )


def render_scenes(
    num: int, resolution: int, seed: int, *, cache_dir=None, progress: Callable | None = None, workers: int = 0
) -> SceneTensors:
    """Render ``num`` synthetic scenes into memory (stacked tensors), in ``workers`` processes if > 0.

    Scene ``i`` depends only on ``(seed, i)``, so the result is the same for any ``workers``.
    """
    ds = SyntheticDataset(num, resolution=resolution, seed=seed, cache_dir=cache_dir)
    if workers > 0:
        loader = torch.utils.data.DataLoader(ds, batch_size=None, num_workers=workers)
        samples = list(progress(loader) if progress else loader)
    else:
        samples = [ds[i] for i in (progress(range(num)) if progress else range(num))]
    stack = lambda key, name: torch.stack([s[key][name] for s in samples])  # noqa: E731
    return SceneTensors(
        images=torch.stack([s["image"] for s in samples]),
        labels={name: stack("labels", name) for name in samples[0]["labels"]},
        masks={name: stack("masks", name) for name in samples[0]["masks"]},
        regions=torch.stack([s["regions"] for s in samples]),
        specs=ds.label_specs,
    )


class Probe(nn.Module):
    """A merger and the decoder: ``(labels, masks) -> image (B, 3, H, W)``."""

    def __init__(self, merger: nn.Module, width: int) -> None:
        super().__init__()
        self.merger = merger
        c = merger.out_channels
        self.decoder = nn.Sequential(
            nn.Conv2d(c, width, 3, padding=1), nn.GELU(),
            nn.Conv2d(width, width, 3, padding=1), nn.GELU(),
            nn.Conv2d(width, 3, 1),
        )  # fmt: skip

    def forward(self, labels: Mapping[str, torch.Tensor], masks: Mapping[str, torch.Tensor]) -> torch.Tensor:
        known = {k: v for k, v in labels.items() if k in self.merger.specs}
        known_masks = {k: v for k, v in masks.items() if k in self.merger.specs}
        return self.decoder(self.merger(known, known_masks))


def build_probe(row: ProbeRow, specs: Mapping[str, LabelSpec], config: ProbeConfig) -> Probe:
    """The row's merger (public API of ``label_merge``) with the shared decoder.

    ``config`` is the study's; the row's own sizes (:meth:`ProbeRow.configure`) are applied here.
    """
    config = row.configure(config)
    specs = specs if row.normalize else raw_specs(specs)
    if row.merger == "tlam":
        merger = TLAM(specs, dim=config.dim, depth=config.depth, heads=config.heads, concept_norm=row.concept_norm)
    elif row.merger == "clam":
        merger = CLAM(specs, dim=config.dim, depth=config.depth, concept_norm=row.concept_norm)
    elif row.merger == "naive":
        merger = NaiveConcat(specs, include_masks=row.include_masks)
    elif row.merger == "semantic":
        merger = NaiveConcat({"semantic": specs["semantic"]}, include_masks=False)
    else:
        raise ValueError(f"unknown merger {row.merger!r}; expected semantic, naive, clam or tlam")
    return Probe(merger, config.decoder_width)


def probe_masks(
    scenes: SceneTensors, sparsity: float, *, seed: int, first_position: int = 0
) -> dict[str, torch.Tensor]:
    """The scenes' masks after region dropout, each scene's draw fixed by ``(seed, position)``."""
    if sparsity == 0:
        return dict(scenes.masks)
    per_scene = [
        region_dropout(
            {k: m[b] for k, m in scenes.masks.items()},
            scenes.regions[b],
            sparsity,
            generator=sample_generator(seed, first_position + b),
        )
        for b in range(len(scenes))
    ]
    return {name: torch.stack([s[name] for s in per_scene]) for name in scenes.masks}  # (N, H, W)


def train_probe(
    row: ProbeRow, train: SceneTensors, config: ProbeConfig, *, seed: int, on_step: Callable | None = None
) -> Probe:
    """Train one run: Adam on the mean squared error between predicted and real image."""
    torch.manual_seed(seed)
    model = build_probe(row, train.specs, config)
    config = row.configure(config)
    optimiser = torch.optim.Adam(model.parameters(), lr=config.lr)
    order = torch.Generator().manual_seed(seed)
    positions = torch.randperm(len(train), generator=order)
    cursor = 0
    for step in range(config.steps):
        if cursor + config.batch_size > len(train):
            positions, cursor = torch.randperm(len(train), generator=order), 0
        index = positions[cursor : cursor + config.batch_size]
        cursor += config.batch_size
        batch = train.take(index)
        # Fresh sparse masks every step, from (seed, step): reproducible, never reused.
        masks = probe_masks(batch, config.sparsity if row.sparse else 0.0, seed=seed * 1_000_003 + step)
        if row.label_dropout:
            # Its own stream, so the region masks of seed i stay those of every other row.
            whole = torch.Generator().manual_seed(LABEL_DROPOUT_STREAM + seed * 1_000_003 + step)
            masks = label_dropout(masks, p_label=row.label_dropout, generator=whole)
        loss = (model(batch.labels, masks) - batch.images).square().mean()
        optimiser.zero_grad(set_to_none=True)
        loss.backward()
        optimiser.step()
        if on_step is not None:
            on_step(step, float(loss))
    return model


def save_probe(model: Probe, path) -> None:
    """Write a trained probe's weights to ``path`` (safetensors), atomically."""
    from safetensors.torch import save_file

    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, tmp)
    tmp.replace(path)  # atomic: a killed run never leaves a half-written model behind


def load_probe(path, row: ProbeRow, specs: Mapping[str, LabelSpec], config: ProbeConfig) -> Probe:
    """The row's probe with the weights :func:`save_probe` wrote to ``path``."""
    from safetensors.torch import load_file

    model = build_probe(row, specs, config)
    model.load_state_dict(load_file(path))
    return model


@torch.no_grad()
def evaluate_probe(
    model: Probe, test: SceneTensors, masks: Mapping[str, torch.Tensor], *, batch_size: int = 64
) -> dict[str, np.ndarray]:
    """Per-scene squared error and the predictions.

    Returns:
        ``sse`` ``(N,)`` sum of squared errors per scene (over pixels and channels),
        ``predictions`` ``(N, 3, H, W)`` clamped to [-1, 1].
    """
    model.eval()
    outs = []
    for start in range(0, len(test), batch_size):
        index = torch.arange(start, min(start + batch_size, len(test)))
        part = test.take(index)
        outs.append(model(part.labels, {k: v[index] for k, v in masks.items()}).clamp(-1, 1))
    pred = torch.cat(outs)  # (N, 3, H, W)
    sse = (pred - test.images).square().flatten(1).sum(1)  # (N,)
    return {"sse": sse.double().cpu().numpy(), "predictions": pred}


def total_variance(images: torch.Tensor) -> np.ndarray:
    """Per-scene sum of squares about the set's per-channel mean colour: R²'s denominator, ``(N,)``."""
    mean = images.mean(dim=(0, 2, 3), keepdim=True)  # (1, 3, 1, 1)
    return (images - mean).square().flatten(1).sum(1).double().numpy()
