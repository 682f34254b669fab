"""The project's small segmenter for a dataset: trained once on its real images, then cached.

The segmentation score (and, without the FID Inception weights, the FID features) come from a
:class:`~examples.metrics.SmallSegmenter` trained on the dataset's real training images. Training
it takes minutes, so it is trained once per dataset, image size and recipe, saved under the
cache folder (``segmenters/small-segmenter-<dataset>-<H>x<W>-<hash>.safetensors``) and loaded by
every later evaluation. Every model compared must be scored with the same file; its SHA-256 is
written next to every number it produced.
"""

from __future__ import annotations

import functools
import hashlib
import os
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import torch
from torch.utils.data import DataLoader, Dataset
from tqdm.auto import tqdm

from examples.datasets import SyntheticDataset
from examples.metrics import SmallSegmenter, image_and_label_collate, load_segmenter, save_segmenter, train_segmenter
from examples.metrics.network_files import cached_network_path, save_atomically
from examples.metrics.samples import cycle_batches
from examples.training.builders import build_datasets, image_size, label_specs_of
from examples.training.config import DataConfig
from label_merge import LabelSpec

__all__ = ["SegmenterRecipe", "cached_segmenter_path", "file_digest", "obtain_segmenter", "segmenter_training_set"]

SEMANTIC = "semantic"
SCENE_SEED = 0  # the synthetic scenes a segmenter learns from, whatever the seed of the run it scores
_RECIPE_VERSION = 1  # bump when training changes, so old files are not reused


@dataclass(frozen=True)
class SegmenterRecipe:
    """How the small segmenter is trained.

    Attributes:
        steps: AdamW steps.
        width: Channels of the full-resolution stage.
        depth: Downsampling stages (features are ``width * 2**depth``-d).
        batch_size: Images per step.
        samples: Synthetic scenes it learns from (real datasets use their whole training split).
        lr: Learning rate.
        seed: Seed of initialisation, shuffling and flips.
    """

    steps: int = 1000
    width: int = 16
    depth: int = 3
    batch_size: int = 16
    samples: int = 1024
    lr: float = 1e-3
    seed: int = 0


def file_digest(path: str | os.PathLike) -> str:
    """SHA-256 of a file, in hex."""
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _synthetic_settings(data: DataConfig) -> str:
    height, width = image_size(data)
    return SyntheticDataset(1, resolution=(height, width), seed=SCENE_SEED)._settings_key()


def _key(data: DataConfig, recipe: SegmenterRecipe) -> dict:
    """Everything that changes the trained segmenter."""
    root = os.path.abspath(data.data_root) if data.data_root else None
    return {
        "version": _RECIPE_VERSION,
        "dataset": data.dataset,
        "data_root": root,
        "image_size": list(image_size(data)),
        "scene_seed": SCENE_SEED if data.dataset == "synthetic" else None,
        # The renderer's settings (and version): a segmenter trained on other scenes is not reused.
        "scene_settings": _synthetic_settings(data) if data.dataset == "synthetic" else None,
        **asdict(recipe),
    }


def cached_segmenter_path(cache_dir: str | os.PathLike, data: DataConfig, recipe: SegmenterRecipe) -> Path:
    """Where the segmenter for ``data`` and ``recipe`` is kept under ``cache_dir``.

    Example:
        >>> cached_segmenter_path("/tmp/c", DataConfig(resolution=32), SegmenterRecipe()).name[:32]
        'small-segmenter-synthetic-32x32-'
    """
    key = _key(data, recipe)
    height, width = key["image_size"]
    return cached_network_path(cache_dir, "segmenters", f"small-segmenter-{data.dataset}-{height}x{width}", key)


def segmenter_training_set(
    data: DataConfig, recipe: SegmenterRecipe, *, progress: bool = True
) -> tuple[Dataset | list, LabelSpec]:
    """The real images (and semantic maps) the segmenter learns from, and the semantic label's spec.

    Synthetic scenes are rendered once into memory (image and class map only), since rendering
    each of them again every epoch would cost more than the training; real datasets are read
    from their training split.

    Raises:
        ValueError: The dataset has no categorical ``semantic`` label.
    """
    if data.dataset == "synthetic":
        from examples.datasets import SyntheticDataset

        scenes = SyntheticDataset(
            num_samples=recipe.samples,
            resolution=image_size(data),
            seed=SCENE_SEED,
            labels=[SEMANTIC],
            cache_dir=data.cache_dir,
        )
        loader = DataLoader(
            scenes,
            batch_size=32,
            num_workers=data.workers,
            collate_fn=functools.partial(image_and_label_collate, label_name=SEMANTIC),
        )
        samples = []
        for batch in tqdm(loader, desc="rendering segmenter scenes", unit="batch", disable=not progress):
            for image, semantic in zip(batch["image"], batch["labels"][SEMANTIC], strict=True):
                samples.append({"image": image, "labels": {SEMANTIC: semantic.to(torch.uint8)}})
        return samples, scenes.label_specs[SEMANTIC]
    train, _ = build_datasets(replace(data, labels=[SEMANTIC]), seed=recipe.seed)
    specs = label_specs_of(train)
    if SEMANTIC not in specs or not specs[SEMANTIC].is_categorical:
        raise ValueError(f"the segmenter needs a categorical 'semantic' label; {data.dataset} has {list(specs)}")
    return train, specs[SEMANTIC]


class _Endless:
    """Shuffled batches of a dataset, epoch after epoch, counted on a progress bar."""

    def __init__(self, dataset, recipe: SegmenterRecipe, *, workers: int, bar: tqdm) -> None:
        self.loader = DataLoader(
            dataset,
            batch_size=min(recipe.batch_size, len(dataset)),
            shuffle=True,
            drop_last=True,
            num_workers=workers,
            collate_fn=functools.partial(image_and_label_collate, label_name=SEMANTIC),
            generator=torch.Generator().manual_seed(recipe.seed),
        )
        self.bar = bar

    def __iter__(self) -> Iterator[dict]:
        for batch in cycle_batches(self.loader, source="the segmenter's training set"):
            self.bar.update(1)
            yield batch


def obtain_segmenter(
    data: DataConfig,
    recipe: SegmenterRecipe,
    *,
    cache_dir: str | os.PathLike,
    device: torch.device | str = "cpu",
    progress: bool = True,
) -> tuple[SmallSegmenter, Path]:
    """The cached small segmenter for ``data``, trained first if there is none yet.

    Args:
        data: The dataset (its kind, folder and image size; labels and sample counts do not matter).
        recipe: How to train it.
        cache_dir: The cache folder (the file goes into its ``segmenters/`` sub-folder).
        device: Where to train and return it.
        progress: Show progress bars.

    Returns:
        ``(segmenter in eval mode, path of its file)``.

    Raises:
        ValueError: The dataset has no categorical ``semantic`` label, or a cached file is not a
            segmenter file.

    Example:
        >>> net, path = obtain_segmenter(DataConfig(resolution=32), recipe, cache_dir="cache")  # doctest: +SKIP
    """
    path = cached_segmenter_path(cache_dir, data, recipe)
    if path.is_file():
        return load_segmenter(path, device=device), path
    dataset, spec = segmenter_training_set(data, recipe, progress=progress)
    started = time.perf_counter()
    with tqdm(total=recipe.steps, desc="training the small segmenter", unit="step", disable=not progress) as bar:
        result = train_segmenter(
            _Endless(dataset, recipe, workers=data.workers if data.dataset != "synthetic" else 0, bar=bar),
            num_classes=spec.num_classes,
            steps=recipe.steps,
            ignore_index=spec.ignore_index,
            label_name=SEMANTIC,
            width=recipe.width,
            depth=recipe.depth,
            lr=recipe.lr,
            seed=recipe.seed,
            device=device,
        )
    tail = result.losses[-min(50, len(result.losses)) :]
    metadata = {
        **_key(data, recipe),
        "training_images": len(dataset),
        "final_loss": sum(tail) / len(tail),
        "training_seconds": round(time.perf_counter() - started, 2),
    }
    save_atomically(path, lambda temporary: save_segmenter(result.model, temporary, metadata=metadata))
    return load_segmenter(path, device=device), path
