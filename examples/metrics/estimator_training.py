"""Training the :class:`~examples.metrics.estimator.LabelEstimator` on the synthetic scenes, once, cached.

The estimator learns every label from the *real* images of the synthetic scenes against their
exact labels (masked where a label is missing: depth has holes and windows). Like the small
segmenter it is trained once per image size, scene settings and recipe, saved under the cache
folder (``estimators/label-estimator-synthetic-<H>x<W>-<hash>.safetensors``) and loaded by every
later evaluation. The hash covers the recipe and the synthetic dataset's settings key (renderer
version, size, scene ranges), so a change of the scenes trains a new estimator.
"""

from __future__ import annotations

import math
import os
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader
from tqdm.auto import tqdm

from .estimator import LABEL_CHANNELS, LabelEstimator, load_label_estimator, save_label_estimator
from .network_files import cached_network_path, save_atomically
from .samples import cycle_batches

__all__ = [
    "EstimatorRecipe",
    "EstimatorTraining",
    "train_label_estimator",
    "estimator_scenes",
    "cached_estimator_path",
    "obtain_label_estimator",
    "SCENE_SEED",
]

SCENE_SEED = 0  # the synthetic scenes the estimator learns from, whatever the seed of the run it scores
_RECIPE_VERSION = 1  # bump when training changes, so old files are not reused


@dataclass(frozen=True)
class EstimatorRecipe:
    """How the label estimator is trained.

    Attributes:
        steps: AdamW steps.
        width: Channels of the full-resolution stage.
        depth: Downsampling stages.
        batch_size: Images per step.
        samples: Synthetic scenes it learns from (rendered once into memory).
        lr: Peak learning rate (cosine decay to 5% of it).
        seed: Seed of initialisation, shuffling and flips.
    """

    steps: int = 800
    width: int = 16
    depth: int = 3
    batch_size: int = 12
    samples: int = 1024
    lr: float = 3e-3
    seed: int = 0


@dataclass
class EstimatorTraining:
    """Result of :func:`train_label_estimator`.

    Attributes:
        model: The trained network, in eval mode.
        losses: ``{label: [loss of every step]}`` (masked means; 0 for a batch without a present pixel).
        config: The training settings.
    """

    model: LabelEstimator
    losses: dict[str, list[float]]
    config: dict = field(default_factory=dict)


def train_label_estimator(
    data: Sequence[Mapping] | Iterable[Mapping],
    num_classes: int,
    steps: int,
    *,
    labels: Sequence[str] = tuple(LABEL_CHANNELS),
    ignore_index: int | None = None,
    width: int = 16,
    depth: int = 3,
    batch_size: int = 16,
    lr: float = 3e-3,
    weight_decay: float = 1e-4,
    flip: bool = True,
    seed: int = 0,
    device: torch.device | str = "cpu",
    on_step: Callable[[int], None] | None = None,
) -> EstimatorTraining:
    """Train a :class:`LabelEstimator` on real images and their exact labels.

    Losses, each a mean over the pixels where its label is present, summed with weight 1:
    cross-entropy (semantic), L1 of log depth, ``1 - cos`` (normals), binary cross-entropy
    against the edge strength, L1 of the curvatures (1/m). AdamW with a cosine learning-rate
    decay; random horizontal flips (which negate the normals' x component).

    Args:
        data: A list or map-style dataset of sample dicts (``image`` ``(3, H, W)`` in [-1, 1],
            ``labels``, ``masks``), batched here with shuffling; or an iterable of collated
            sample-dict batches, cycled until ``steps`` steps were taken.
        num_classes: Semantic classes ``K``.
        steps: Optimisation steps.
        labels: Labels to learn (each must be in every sample).
        ignore_index: Semantic id not trained on, or None.
        width: Estimator width.
        depth: Estimator depth.
        batch_size: Batch size when ``data`` is a list or dataset.
        lr: Peak learning rate.
        weight_decay: AdamW weight decay.
        flip: Random horizontal flips.
        seed: Seed of initialisation, shuffling and flips.
        device: Training device.
        on_step: Called with the step number after every step (e.g. a progress bar).

    Returns:
        An :class:`EstimatorTraining`.

    Raises:
        ValueError: ``steps < 1``, data without a batch, or a batch without a label to learn.

    Example:
        >>> from examples.datasets import SyntheticDataset
        >>> scenes = [SyntheticDataset(4, resolution=16)[i] for i in range(4)]
        >>> result = train_label_estimator(scenes, num_classes=9, steps=2, width=4, depth=1, batch_size=2)
        >>> len(result.losses["depth"])
        2
    """
    if isinstance(steps, bool) or not isinstance(steps, int) or steps < 1:
        raise ValueError(f"steps must be a positive int, got {steps!r}")
    torch.manual_seed(seed)
    model = LabelEstimator(num_classes, labels=tuple(labels), width=width, depth=depth).to(device)
    if _holds_samples(data):
        data = DataLoader(
            data,
            batch_size=min(batch_size, len(data)),
            shuffle=True,
            drop_last=True,
            collate_fn=_collate,
            generator=torch.Generator().manual_seed(seed),
        )
    optimizer = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=weight_decay)
    schedule = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda step: 0.05 + 0.95 * 0.5 * (1 + math.cos(math.pi * step / steps))
    )
    flip_generator = torch.Generator().manual_seed(seed + 1)
    losses: dict[str, list[float]] = {name: [] for name in model.labels}
    model.train()
    step = 0
    for batch in cycle_batches(data):
        batch = _batch_to(batch, model.labels, device)
        if flip and bool(torch.rand((), generator=flip_generator) < 0.5):
            batch = _flip(batch)
        raw = model.raw_outputs(batch["image"])
        parts = {
            name: _label_loss(name, raw[name], batch["labels"][name], batch["masks"][name], ignore_index)
            for name in model.labels
        }
        loss = sum(parts.values())
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        schedule.step()
        for name, value in parts.items():
            losses[name].append(float(value.detach()))
        step += 1
        if on_step is not None:
            on_step(step)
        if step == steps:
            break
    config = {
        "num_classes": num_classes,
        "labels": list(model.labels),
        "ignore_index": ignore_index,
        "width": width,
        "depth": depth,
        "steps": steps,
        "batch_size": batch_size,
        "lr": lr,
        "weight_decay": weight_decay,
        "flip": flip,
        "seed": seed,
    }
    return EstimatorTraining(model=model.eval(), losses=losses, config=config)


def _holds_samples(data) -> bool:
    """A list or map-style dataset of single samples (an image of 3 dims), not of collated batches."""
    if not (hasattr(data, "__getitem__") and hasattr(data, "__len__")) or len(data) == 0:
        return False
    first = data[0]
    return isinstance(first, Mapping) and getattr(first.get("image"), "ndim", None) == 3


def _collate(samples: Sequence[Mapping]) -> dict:
    """Stack image, labels and masks (the only keys training needs; ``meta`` does not collate)."""
    return {
        "image": torch.stack([s["image"] for s in samples]),
        "labels": {name: torch.stack([s["labels"][name] for s in samples]) for name in samples[0]["labels"]},
        "masks": {name: torch.stack([s["masks"][name] for s in samples]) for name in samples[0].get("masks", {})},
    }


def _batch_to(batch: Mapping, labels: Sequence[str], device: torch.device | str) -> dict:
    missing = [name for name in labels if name not in batch["labels"]]
    if missing:
        raise ValueError(f"the batch lacks label(s) {missing} (it has {sorted(batch['labels'])})")
    image = batch["image"].to(device).float()
    shape = (image.shape[0], *image.shape[-2:])  # (B, H, W)
    masks = {}
    for name in labels:
        mask = batch.get("masks", {}).get(name)
        masks[name] = torch.ones(shape, dtype=torch.bool) if mask is None else mask.reshape(shape)
    return {
        "image": image,
        "labels": {name: batch["labels"][name].to(device) for name in labels},
        "masks": {name: mask.to(device).bool() for name, mask in masks.items()},
    }


def _flip(batch: dict) -> dict:
    """Mirror left-right; the camera-frame normals' x component changes sign."""
    labels = {name: value.flip(-1) for name, value in batch["labels"].items()}
    if "normal" in labels:
        labels["normal"] = (
            labels["normal"] * torch.tensor([-1.0, 1.0, 1.0], device=labels["normal"].device)[:, None, None]
        )
    return {
        "image": batch["image"].flip(-1),
        "labels": labels,
        "masks": {name: value.flip(-1) for name, value in batch["masks"].items()},
    }


def _label_loss(
    name: str, raw: torch.Tensor, target: torch.Tensor, present: torch.Tensor, ignore_index: int | None
) -> torch.Tensor:
    """Mean loss of one head over the pixels where its label is present (0 when there are none)."""
    if name == "semantic":
        target = target.reshape(present.shape).long()  # (B, H, W)
        if ignore_index is not None:
            present = present & (target != ignore_index)
        per_pixel = F.cross_entropy(raw, torch.where(present, target, torch.zeros_like(target)), reduction="none")
    else:
        target = target.reshape(raw.shape).float()  # (B, C, H, W)
        present = present & torch.isfinite(target).all(dim=1)
        target = torch.where(present[:, None], target, torch.ones_like(target))  # finite and positive everywhere
        if name == "depth":
            present = present & (target[:, 0] > 0)
            per_pixel = (raw[:, 0] - target[:, 0].clamp_min(1e-3).log()).abs()
        elif name == "normal":
            per_pixel = 1 - F.cosine_similarity(raw, target, dim=1, eps=1e-6)
        elif name == "edge":
            per_pixel = F.binary_cross_entropy_with_logits(raw[:, 0], target[:, 0].clamp(0, 1), reduction="none")
        else:
            per_pixel = (raw - target).abs().mean(dim=1)
    weight = present.float()
    return (per_pixel * weight).sum() / weight.sum().clamp_min(1)


def estimator_scenes(
    resolution: int | tuple[int, int], recipe: EstimatorRecipe, *, progress: bool = True
) -> tuple[list[dict], object]:
    """The synthetic scenes the estimator learns from, rendered once into memory, and their dataset.

    Returns:
        ``(samples, dataset)``: sample dicts with ``image``, ``labels`` and ``masks`` only, and the
        :class:`~examples.datasets.SyntheticDataset` they come from (for its settings and specs).
    """
    from examples.datasets import SyntheticDataset

    scenes = SyntheticDataset(num_samples=recipe.samples, resolution=resolution, seed=SCENE_SEED)
    samples = []
    for index in tqdm(range(len(scenes)), desc="rendering estimator scenes", unit="scene", disable=not progress):
        sample = scenes[index]
        samples.append({"image": sample["image"], "labels": sample["labels"], "masks": sample["masks"]})
    return samples, scenes


def _key(resolution: int | tuple[int, int], recipe: EstimatorRecipe) -> dict:
    """Everything that changes the trained estimator: the recipe and the scenes' settings."""
    from examples.datasets import SyntheticDataset

    scenes = SyntheticDataset(num_samples=recipe.samples, resolution=resolution, seed=SCENE_SEED)
    return {
        "version": _RECIPE_VERSION,
        "dataset": "synthetic",
        "image_size": [scenes.height, scenes.width],
        "scene_seed": SCENE_SEED,
        "scene_settings": scenes._settings_key(),
        **asdict(recipe),
    }


def cached_estimator_path(
    cache_dir: str | os.PathLike, resolution: int | tuple[int, int], recipe: EstimatorRecipe
) -> Path:
    """Where the estimator for ``resolution`` and ``recipe`` is kept under ``cache_dir``.

    Example:
        >>> cached_estimator_path("/tmp/c", 32, EstimatorRecipe()).name[:32]
        'label-estimator-synthetic-32x32-'
    """
    key = _key(resolution, recipe)
    height, width = key["image_size"]
    return cached_network_path(cache_dir, "estimators", f"label-estimator-synthetic-{height}x{width}", key)


def obtain_label_estimator(
    resolution: int | tuple[int, int],
    recipe: EstimatorRecipe,
    *,
    cache_dir: str | os.PathLike,
    device: torch.device | str = "cpu",
    progress: bool = True,
) -> tuple[LabelEstimator, Path]:
    """The cached label estimator for synthetic scenes of this size, trained first if there is none yet.

    Args:
        resolution: ``H = W`` or ``(H, W)`` of the scenes (the generated images' size).
        recipe: How to train it.
        cache_dir: The cache folder (the file goes into its ``estimators/`` sub-folder).
        device: Where to train and return it.
        progress: Show progress bars.

    Returns:
        ``(estimator in eval mode, path of its file)``; ``estimator.metadata`` records the
        recipe, the scene settings, the final losses and the training time.

    Raises:
        ValueError: A cached file that is not a label estimator file.

    Example:
        >>> net, path = obtain_label_estimator(32, EstimatorRecipe(), cache_dir="cache")  # doctest: +SKIP
    """
    path = cached_estimator_path(cache_dir, resolution, recipe)
    if path.is_file():
        return load_label_estimator(path, device=device), path
    samples, scenes = estimator_scenes(resolution, recipe, progress=progress)
    spec = scenes.label_specs["semantic"]
    started = time.perf_counter()
    with tqdm(total=recipe.steps, desc="training the label estimator", unit="step", disable=not progress) as bar:
        result = train_label_estimator(
            samples,
            num_classes=spec.num_classes,
            steps=recipe.steps,
            ignore_index=spec.ignore_index,
            width=recipe.width,
            depth=recipe.depth,
            batch_size=recipe.batch_size,
            lr=recipe.lr,
            seed=recipe.seed,
            device=device,
            on_step=lambda _: bar.update(1),
        )
    tail = min(50, recipe.steps)
    metadata = {
        **_key(resolution, recipe),
        "final_losses": {name: sum(values[-tail:]) / tail for name, values in result.losses.items()},
        "training_seconds": round(time.perf_counter() - started, 2),
    }
    save_atomically(path, lambda temporary: save_label_estimator(result.model, temporary, metadata=metadata))
    return load_label_estimator(path, device=device), path
