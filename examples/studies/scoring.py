"""Measuring a generator on an evaluation set: set-level FID and KID, and paired per-scene metrics.

A :class:`Scorer` holds the networks that every model of a study is measured with (the FID
feature extractor and the segmenter) and names them next to every number. The FID features are
the standard FID Inception's when its weights file is given (flag or ``$LABEL_MERGE_FID_WEIGHTS``);
otherwise the pooled bottleneck of the project's small segmenter, labelled as not comparable to
published FIDs.

Besides the set-level numbers, every measurement records per-scene values in scene order
(``per_scene``), so two models measured on the same scenes can be compared scene by scene
(:mod:`examples.studies.statistics`): the distance between the features of the generated and the
real image of each scene, L1, PSNR, SSIM, the segmentation accuracy, and whatever the scorer's
``scene_scorers`` add (see :data:`SceneScorer`).
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset
from tqdm.auto import tqdm

from examples.metrics import (
    FID_WEIGHTS_ENV,
    ConfusionMatrix,
    FeatureExtractor,
    FeatureStatistics,
    fid_from_statistics,
    fid_inception_extractor,
    kernel_inception_distance,
    predict_classes,
    psnr,
    split_batch,
    ssim,
)
from examples.studies.conditions import LabelCondition, apply_condition
from examples.studies.segmenters import file_digest
from examples.training.loop import to_device
from label_merge import LabelSpec

__all__ = [
    "Scorer",
    "SceneScorer",
    "BUILTIN_SCENE_METRICS",
    "build_scorer",
    "evaluate_generator",
    "evaluation_loader",
    "fid_weights_from",
    "flatten_scene_metrics",
    "kid_subset_size",
    "real_floor",
]

SEMANTIC = "semantic"

SceneScorer = Callable[[torch.Tensor, Mapping, Mapping[str, torch.Tensor]], Mapping[str, object]]
"""An extra per-scene scorer: ``(fake (B, 3, H, W) in [-1, 1], batch, masks) -> {name: (B,) values}``.

``batch`` is the sample-dict batch (``image``, ``labels``, ...) on the evaluation device, and
``masks`` the ``{label: bool (B, H, W)}`` the model was given (after sparsity and removed labels).
Values may be NaN where a scene has nothing to score. The callable's ``__name__`` names it in
the protocol.
"""

BUILTIN_SCENE_METRICS = ("feature_distance", "l1", "psnr", "ssim", "segmentation_accuracy")


@dataclass
class Scorer:
    """The networks a study measures every model with.

    Attributes:
        feature_extractor: FID/KID features.
        segmenter: ``images -> logits (B, K, H, W)`` for the segmentation score, or None.
        segmenter_name: Names the segmenter (and its file) in the results.
        num_classes: ``K`` of the semantic label.
        ignore_index: Its ignored class id, or None.
        fid_method: ``"sqrtm"`` (pytorch-fid's, for the standard extractor) or ``"eigh"``.
        kid_subsets: Random subsets KID averages over (of :func:`kid_subset_size` images each).
        scene_scorers: Extra per-scene scorers (:data:`SceneScorer`), applied to every batch
            after the built-in per-scene metrics.
    """

    feature_extractor: FeatureExtractor
    segmenter: nn.Module | None
    segmenter_name: str | None
    num_classes: int | None
    ignore_index: int | None
    fid_method: str = "sqrtm"
    kid_subsets: int = 100
    scene_scorers: Sequence[SceneScorer] = field(default_factory=tuple)

    def describe(self) -> dict:
        """The networks, for the record next to the numbers."""
        return {
            "feature_extractor": self.feature_extractor.name,
            "comparable_to_published": self.feature_extractor.standard,
            "fid_method": self.fid_method,
            "kid": f"{self.kid_subsets} subsets of min(100, N // 2) images",
            "segmenter": self.segmenter_name,
            "scene_scorers": [getattr(f, "__name__", type(f).__name__) for f in self.scene_scorers],
        }


def fid_weights_from(flag: str | None) -> str | None:
    """The FID Inception weights to use: the flag, else ``$LABEL_MERGE_FID_WEIGHTS``, else None."""
    return flag or os.environ.get(FID_WEIGHTS_ENV) or None


def build_scorer(
    *,
    segmenter: nn.Module | None,
    segmenter_path: str | os.PathLike | None,
    semantic_spec: LabelSpec | None,
    fid_weights: str | None = None,
    device: torch.device | str = "cpu",
    scene_scorers: Sequence[SceneScorer] = (),
) -> Scorer:
    """Choose the FID features and wrap the segmenter.

    Args:
        segmenter: The segmenter (a :class:`~examples.metrics.SmallSegmenter` for the fallback
            FID features), or None to skip the segmentation score.
        segmenter_path: Its file, whose SHA-256 names it in the results.
        semantic_spec: The dataset's semantic label (classes, ignored id), or None.
        fid_weights: The FID Inception weights file, or None for the small segmenter's features.
        device: Where the networks run.
        scene_scorers: Extra per-scene scorers (:data:`SceneScorer`).

    Returns:
        A :class:`Scorer`.

    Raises:
        FileNotFoundError: ``fid_weights`` names a missing file.
        ValueError: Neither FID weights nor a segmenter with pooled features.
    """
    segmenter_name = None
    if segmenter is not None:
        digest = file_digest(segmenter_path)[:12] if segmenter_path else "unsaved"
        name = Path(segmenter_path).name if segmenter_path else type(segmenter).__name__
        segmenter_name = f"{type(segmenter).__name__} {name} (sha256 {digest})"
        segmenter = segmenter.to(device).eval()
    if fid_weights:
        extractor = fid_inception_extractor(fid_weights, device=device)
        method = "sqrtm"  # reproduces pytorch-fid's numbers
    else:
        if segmenter is None or not hasattr(segmenter, "pooled_features"):
            raise ValueError(
                "FID needs features: give the FID Inception weights (--fid-weights or "
                f"${FID_WEIGHTS_ENV}) or a SmallSegmenter, whose pooled features serve instead"
            )
        extractor = FeatureExtractor(
            segmenter.pooled_features,
            name=f"{segmenter_name} pooled bottleneck ({segmenter.feature_dim}-d); NOT comparable to published FIDs",
            standard=False,
            quantize=True,
            device=device,
        )
        # Few images in a low-dimensional space give singular covariances, where pytorch-fid's
        # sqrtm may fail; the symmetric-eigenvalue form computes the same distance robustly.
        method = "eigh"
    return Scorer(
        feature_extractor=extractor,
        segmenter=segmenter,
        segmenter_name=segmenter_name,
        num_classes=semantic_spec.num_classes if segmenter is not None else None,
        ignore_index=semantic_spec.ignore_index if segmenter is not None else None,
        fid_method=method,
        scene_scorers=tuple(scene_scorers),
    )


def evaluation_loader(dataset: Dataset, *, batch_size: int, workers: int = 0) -> DataLoader:
    """The evaluation set in its fixed order (sample positions seed the evaluation sparsity)."""
    return DataLoader(dataset, batch_size=batch_size, shuffle=False, num_workers=workers)


def kid_subset_size(count: int) -> int:
    """KID's subset size for ``count`` images: ``min(100, count // 2)``, at least 2.

    Subsets smaller than the set make KID's spread over subsets mean something (subsets of the
    whole set are all the same set).

    Example:
        >>> kid_subset_size(256), kid_subset_size(8), kid_subset_size(3)
        (100, 4, 2)
    """
    return max(2, min(100, count // 2))


def flatten_scene_metrics(nested: Mapping, *, separator: str = ".") -> dict[str, np.ndarray]:
    """Nested per-image results as flat per-scene metrics: ``{"depth.given.rmse": (B,)}``.

    Turns e.g. a controllability accumulator's per-image output ``{label: {"given": {metric:
    (B,)}, "missing": {...}}}`` into what a :data:`SceneScorer` returns.

    Raises:
        ValueError: A leaf is not one-dimensional.

    Example:
        >>> out = flatten_scene_metrics({"depth": {"given": {"rmse": [0.1, 0.2]}, "missing": {"rmse": [0.3, 0.4]}}})
        >>> {k: v.tolist() for k, v in out.items()}
        {'depth.given.rmse': [0.1, 0.2], 'depth.missing.rmse': [0.3, 0.4]}
    """
    flat = {}
    for key, value in nested.items():
        if isinstance(value, Mapping):
            for inner, array in flatten_scene_metrics(value, separator=separator).items():
                flat[f"{key}{separator}{inner}"] = array
        else:
            array = _as_scene_values(value, str(key))
            flat[str(key)] = array
    return flat


def _as_scene_values(value: object, name: str, count: int | None = None) -> np.ndarray:
    """``value`` as a float64 ``(B,)`` array (tensors are moved to the CPU)."""
    if isinstance(value, torch.Tensor):
        value = value.detach().to("cpu", torch.float64).numpy()
    array = np.asarray(value, dtype=np.float64)
    if array.ndim != 1 or (count is not None and array.shape[0] != count):
        expected = f"({count},)" if count is not None else "one-dimensional"
        raise ValueError(f"per-scene metric {name!r} must be {expected}, got shape {array.shape}")
    return array


def _paired_scene_metrics(
    fake: torch.Tensor, real: torch.Tensor, fake_features: torch.Tensor, real_features: torch.Tensor
) -> dict[str, np.ndarray]:
    """Per scene: feature distance, L1, PSNR, SSIM of each generated image and its real image."""
    fake_01, real_01 = (fake + 1) / 2, (real.to(fake.device) + 1) / 2  # (B, 3, H, W) in [0, 1]
    return {
        # L2 distance of the FID feature vectors of the same scene: how far the image is from its
        # real counterpart in the space FID measures sets in.
        "feature_distance": (fake_features.double() - real_features.double()).norm(dim=1).numpy(),
        "l1": (fake_01 - real_01).abs().flatten(1).mean(dim=1).double().cpu().numpy(),
        # [0, 1] with data_range 1: the values of the same images stored as 8-bit files.
        "psnr": psnr(fake_01, real_01, data_range=1.0).cpu().numpy(),
        "ssim": ssim(fake_01, real_01, data_range=1.0).cpu().numpy(),
    }


def _scene_accuracy(prediction: torch.Tensor, semantic: torch.Tensor, ignore_index: int | None) -> np.ndarray:
    """``(B,)`` share of a scene's scored pixels the segmenter classifies right (NaN if none is scored)."""
    scored = torch.ones_like(semantic, dtype=torch.bool) if ignore_index is None else semantic != ignore_index
    correct = ((prediction == semantic) & scored).flatten(1).sum(dim=1).double()  # (B,)
    counted = scored.flatten(1).sum(dim=1).double()  # (B,)
    return (correct / counted).cpu().numpy()  # 0 / 0 = NaN


def _kid(real: FeatureStatistics, fake: FeatureStatistics, subsets: int) -> dict:
    kid = kernel_inception_distance(
        real.features, fake.features, subsets=subsets, subset_size=kid_subset_size(min(real.count, fake.count))
    )
    return {"kid_mean": kid.mean, "kid_std": kid.std, "kid_subset_size": kid.subset_size}


@torch.no_grad()
def evaluate_generator(
    generator: nn.Module,
    batches: Iterable[dict],
    scorer: Scorer,
    condition: LabelCondition | None = None,
    *,
    device: torch.device | str = "cpu",
    progress: bool = True,
    desc: str = "evaluating",
) -> dict:
    """Generate an image for every sample of ``batches`` under ``condition`` and measure them.

    The segmentation score compares the generated image with the sample's full semantic map,
    also when the model saw it sparse or not at all: the image should still show the scene.

    Args:
        generator: ``(labels, masks) -> (image (B, 3, H, W) in [-1, 1], concept)``.
        batches: Sample-dict batches in a fixed order (see :func:`evaluation_loader`).
        scorer: The networks to measure with, and the extra per-scene scorers.
        condition: Sparsity and removed labels (None: dense, all labels).
        device: Where the generator runs.
        progress: Show a progress bar.
        desc: The progress bar's title.

    Returns:
        A flat dict of set-level numbers: ``fid``, ``kid_mean``, ``kid_std`` (over subsets of
        ``kid_subset_size`` images), ``psnr``, ``ssim``, ``l1``, ``feature_distance`` (means over
        scenes), ``miou``, ``pixel_accuracy``, ``mean_class_accuracy`` (when scored), the
        networks' names, ``segmenter_on_real_miou`` / ``segmenter_on_real_pixel_accuracy`` (the
        segmenter on the real images: what a perfect generator would reach), ``num_samples``,
        the condition and ``seconds``; and ``per_scene``: ``{metric: [value per scene]}`` in
        scene order, for :data:`BUILTIN_SCENE_METRICS` (``segmentation_accuracy`` when scored)
        and every metric of the extra scene scorers.

    Raises:
        ValueError: Fewer than 2 samples, a removed label the model does not have, or an extra
            scorer that returns a value of the wrong shape or reuses a metric's name.
    """
    condition = condition or LabelCondition()
    started = time.perf_counter()
    was_training = generator.training
    generator.eval()
    segmenting = scorer.segmenter is not None
    extractor = scorer.feature_extractor
    real_stats = fake_stats = None
    fake_confusion = ConfusionMatrix(scorer.num_classes, ignore_index=scorer.ignore_index) if segmenting else None
    real_confusion = ConfusionMatrix(scorer.num_classes, ignore_index=scorer.ignore_index) if segmenting else None
    per_scene: dict[str, list[np.ndarray]] = {}
    position = 0
    try:
        for batch in tqdm(batches, desc=desc, unit="batch", disable=not progress, leave=False):
            batch = to_device(batch, device)
            if segmenting and SEMANTIC not in batch["labels"]:
                raise ValueError(
                    f"the segmentation score needs labels[{SEMANTIC!r}]; the batch has {list(batch['labels'])}"
                )
            masks = apply_condition(
                batch["masks"], batch.get("regions"), condition, labels=batch["labels"], first_position=position
            )
            fake, _ = generator(batch["labels"], masks)
            fake = fake.float().clamp(-1, 1)  # (B, 3, H, W)
            if segmenting:
                real, semantic = split_batch(batch, label_name=SEMANTIC, ignore_index=scorer.ignore_index)
            else:
                real, semantic = batch["image"], None
            fake_features, real_features = extractor(fake), extractor(real)  # (B, D) each
            if fake_stats is None:
                dim = fake_features.shape[1]
                fake_stats = FeatureStatistics(dim, extractor=extractor.name, keep_features=True)
                real_stats = FeatureStatistics(dim, extractor=extractor.name, keep_features=True)
            fake_stats.update(fake_features)
            real_stats.update(real_features)
            scenes = _paired_scene_metrics(fake, real, fake_features, real_features)
            if segmenting:
                size = tuple(semantic.shape[-2:])
                prediction = predict_classes(scorer.segmenter, fake, size=size, num_classes=scorer.num_classes)
                fake_confusion.update(prediction, semantic)
                real_confusion.update(
                    predict_classes(scorer.segmenter, real, size=size, num_classes=scorer.num_classes), semantic
                )
                scenes["segmentation_accuracy"] = _scene_accuracy(prediction, semantic, scorer.ignore_index)
            # ---- Extra per-scene scorers (e.g. controllability): applied here, to every batch.
            for extra in scorer.scene_scorers:
                for name, values in extra(fake, batch, masks).items():
                    if name in scenes:
                        raise ValueError(f"scene scorer {extra!r} returns {name!r}, which another metric already uses")
                    scenes[name] = _as_scene_values(values, name, fake.shape[0])
            for name, values in scenes.items():
                per_scene.setdefault(name, []).append(values)
            position += fake.shape[0]
    finally:
        generator.train(was_training)
    if position < 2:
        raise ValueError(f"FID needs at least 2 evaluation samples, got {position}")
    scene_values = {name: np.concatenate(parts) for name, parts in per_scene.items()}  # (N,) each
    if any(values.shape[0] != position for values in scene_values.values()):
        raise ValueError("a scene scorer returned values for some batches only")
    results = {
        "feature_extractor": extractor.name,
        "comparable_to_published": extractor.standard,
        "fid": fid_from_statistics(real_stats, fake_stats, method=scorer.fid_method),
        **_kid(real_stats, fake_stats, scorer.kid_subsets),
        **{name: float(scene_values[name].mean()) for name in ("psnr", "ssim", "l1", "feature_distance")},
    }
    if segmenting:
        score, reference = fake_confusion.compute(), real_confusion.compute()
        results.update(
            segmenter=scorer.segmenter_name,
            miou=score.miou,
            pixel_accuracy=score.pixel_accuracy,
            mean_class_accuracy=score.mean_class_accuracy,
            segmenter_on_real_miou=reference.miou,
            segmenter_on_real_pixel_accuracy=reference.pixel_accuracy,
        )
    results.update(
        num_samples=position,
        sparsity=condition.sparsity,
        sparsity_seed=condition.seed,
        dropped_labels=list(condition.drop_labels),
        seconds=round(time.perf_counter() - started, 3),
        per_scene={name: values.tolist() for name, values in scene_values.items()},
    )
    return results


@torch.no_grad()
def real_floor(eval_batches: Iterable[dict], other_batches: Iterable[dict], scorer: Scorer) -> dict:
    """FID and KID between the evaluation set's real images and another set of real scenes.

    The two sets hold different scenes of the same distribution, so this is the FID a perfect
    generator would get at this set size, with these features: the floor under every row.

    Args:
        eval_batches: Batches of the evaluation set (only ``image`` is used).
        other_batches: Batches of a disjoint set of real scenes of the same size.
        scorer: The networks the rows are measured with.

    Returns:
        ``{"fid", "kid_mean", "kid_std", "kid_subset_size", "num_samples", "feature_extractor"}``.

    Raises:
        ValueError: The sets differ in size or hold fewer than 2 images.
    """
    extractor = scorer.feature_extractor
    statistics = []
    for batches in (eval_batches, other_batches):
        stats = None
        for batch in batches:
            features = extractor(batch["image"])  # (B, D)
            if stats is None:
                stats = FeatureStatistics(features.shape[1], extractor=extractor.name, keep_features=True)
            stats.update(features)
        statistics.append(stats)
    counts = [0 if s is None else s.count for s in statistics]
    if counts[0] != counts[1] or counts[0] < 2:
        raise ValueError(f"the real-vs-real floor needs two sets of the same size (>= 2), got {counts}")
    return {
        "fid": fid_from_statistics(*statistics, method=scorer.fid_method),
        **_kid(*statistics, scorer.kid_subsets),
        "num_samples": counts[0],
        "feature_extractor": extractor.name,
    }
