"""One object that accumulates every metric over batches of generated images.

Typical use inside an evaluation loop::

    evaluator = GenerationEvaluator(
        feature_extractor=fid_inception_extractor(),      # or any FeatureExtractor
        segmenter=load_segmenter("segmenter.safetensors"),
        num_classes=18, ignore_index=0,
    )
    for batch in loader:                                   # sample-dict batches
        fake = generator(batch)                            # (B, 3, H, W) in [-1, 1]
        evaluator.update_from_batch(fake, batch)
    print(evaluator.compute())                             # {"fid": ..., "feature_extractor": ..., ...}

With ``consistency=ConsistencyAccumulator(estimator, ...)`` and ``given=`` (the masks the
generator was called with) passed to :meth:`GenerationEvaluator.update_from_batch`, the results
also hold ``controllability``: the per-label consistency of the generated images, where each
label was given and where it was missing, with its ceiling (see :mod:`.controllability`).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Literal

import torch

from .controllability import ConsistencyAccumulator
from .features import FeatureExtractor, compute_statistics
from .frechet import fid_from_statistics
from .image_quality import psnr, ssim
from .kid import kernel_inception_distance
from .samples import split_batch
from .segmentation import ConfusionMatrix, predict_classes
from .statistics import FeatureStatistics

__all__ = ["FIDResult", "compute_fid", "GenerationEvaluator"]


@dataclass(frozen=True)
class FIDResult:
    """An FID and what it was computed with.

    Attributes:
        fid: The Frechet distance.
        feature_extractor: Name of the extractor (network and weights).
        comparable_to_published: True only with the standard FID Inception weights.
        num_real: Number of real images.
        num_fake: Number of generated images.
    """

    fid: float
    feature_extractor: str
    comparable_to_published: bool
    num_real: int
    num_fake: int


def compute_fid(
    extractor: FeatureExtractor,
    real_batches: Iterable[torch.Tensor] | FeatureStatistics,
    fake_batches: Iterable[torch.Tensor],
    *,
    method: Literal["sqrtm", "eigh"] = "sqrtm",
) -> FIDResult:
    """FID between real and generated images (each an iterable of ``(B, 3, H, W)`` in [-1, 1]).

    Args:
        extractor: Feature extractor; its name labels the result.
        real_batches: Real image batches, or precomputed real :class:`FeatureStatistics`
            (which must come from the same extractor).
        fake_batches: Generated image batches.
        method: Matrix square root method (see :func:`frechet_distance`).

    Returns:
        A :class:`FIDResult`.

    Raises:
        ValueError: If a set is empty or has a single image, or the real statistics come from
            another extractor.

    Example:
        >>> net = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.AdaptiveAvgPool2d(1))
        >>> extractor = FeatureExtractor(net, name="random conv (test only)")
        >>> real = [torch.rand(8, 3, 16, 16) * 2 - 1 for _ in range(2)]
        >>> result = compute_fid(extractor, real, [batch * 0.5 for batch in real])
        >>> result.feature_extractor, result.comparable_to_published
        ('random conv (test only)', False)
    """
    if isinstance(real_batches, FeatureStatistics):
        real = real_batches
    else:
        real = compute_statistics(extractor, real_batches)
    fake = compute_statistics(extractor, fake_batches)
    return FIDResult(
        fid=fid_from_statistics(real, fake, method=method),
        feature_extractor=extractor.name,
        comparable_to_published=extractor.standard,
        num_real=real.count,
        num_fake=fake.count,
    )


class GenerationEvaluator:
    """Accumulates FID, KID, PSNR/SSIM and the segmentation score over batches.

    Every metric is optional: FID and KID need ``feature_extractor``; PSNR and SSIM need the real
    image paired with each generated one; the segmentation score needs ``segmenter``,
    ``num_classes`` and the ground-truth semantic maps.

    Args:
        feature_extractor: Extractor for FID/KID, or None to skip them.
        real_statistics: Precomputed statistics of the real set (same extractor). When given, the
            real images passed to :meth:`update` only serve PSNR/SSIM.
        kid: Also compute KID (keeps every feature vector in memory).
        kid_subsets: KID subsets.
        kid_subset_size: KID subset size; None means ``min(1000, N_real, N_fake)``.
        segmenter: Callable ``images -> logits (B, K, H, W)``, or None to skip the segmentation
            score. An ``nn.Module`` is put in eval mode.
        segmenter_name: Label for the segmenter in the results (defaults to its class name).
        num_classes: ``K`` for the segmentation score.
        ignore_index: Ground-truth id left out of the segmentation score.
        fid_method: Matrix square root method for FID.
        seed: Seed of KID's subset sampling.
        consistency: Accumulates controllability (per-label consistency) in
            :meth:`update_from_batch` calls that pass ``given``; None to skip it.

    Raises:
        ValueError: If ``segmenter`` is given without ``num_classes``, or KID is asked for with
            ``real_statistics`` that kept no features.

    Example:
        >>> net = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.AdaptiveAvgPool2d(1))
        >>> evaluator = GenerationEvaluator(feature_extractor=FeatureExtractor(net, name="random conv"))
        >>> real = torch.rand(6, 3, 16, 16) * 2 - 1
        >>> evaluator.update(real.flip(-1), real=real)
        >>> sorted(evaluator.compute())[:4]
        ['comparable_to_published', 'feature_extractor', 'fid', 'kid_mean']
    """

    def __init__(
        self,
        *,
        feature_extractor: FeatureExtractor | None = None,
        real_statistics: FeatureStatistics | None = None,
        kid: bool = True,
        kid_subsets: int = 100,
        kid_subset_size: int | None = None,
        segmenter: Callable[[torch.Tensor], torch.Tensor] | None = None,
        segmenter_name: str | None = None,
        num_classes: int | None = None,
        ignore_index: int | None = None,
        fid_method: Literal["sqrtm", "eigh"] = "sqrtm",
        seed: int = 0,
        consistency: ConsistencyAccumulator | None = None,
    ) -> None:
        if segmenter is not None and num_classes is None:
            raise ValueError("the segmentation score needs num_classes")
        if real_statistics is not None and kid and feature_extractor is not None and not real_statistics.keep_features:
            raise ValueError(
                "KID needs the real features: build real_statistics with keep_features=True or pass kid=False"
            )
        if real_statistics is not None and feature_extractor is not None:
            if real_statistics.extractor != feature_extractor.name:
                raise ValueError(
                    f"real_statistics come from {real_statistics.extractor!r}, not {feature_extractor.name!r}"
                )
        self.feature_extractor = feature_extractor
        self.kid, self.kid_subsets, self.kid_subset_size = kid, kid_subsets, kid_subset_size
        if isinstance(segmenter, torch.nn.Module):
            segmenter.eval()
        self.segmenter = segmenter
        self.segmenter_name = segmenter_name or (type(segmenter).__name__ if segmenter is not None else None)
        self.num_classes, self.ignore_index = num_classes, ignore_index
        self.fid_method, self.seed = fid_method, seed
        self.consistency = consistency
        self._fixed_real = real_statistics is not None
        self._real = real_statistics
        self._fake: FeatureStatistics | None = None
        self._confusion = ConfusionMatrix(num_classes, ignore_index=ignore_index) if segmenter is not None else None
        self._psnr_sum = self._ssim_sum = 0.0
        self._paired = 0

    def update(
        self, fake: torch.Tensor, *, real: torch.Tensor | None = None, semantic: torch.Tensor | None = None
    ) -> None:
        """Add a batch of generated images, with their real counterparts and semantic maps if known.

        Args:
            fake: ``(B, 3, H, W)`` generated images in [-1, 1].
            real: ``(B, 3, H, W)`` real images in [-1, 1] (paired with ``fake`` for PSNR/SSIM), or None.
            semantic: ``(B, H, W)`` ground-truth class ids the images were generated from, or None.

        Raises:
            ValueError: On shape mismatches or images outside [-1, 1].
        """
        if self.feature_extractor is not None:
            self._fake = self._add_features(self._fake, fake)
            if real is not None and not self._fixed_real:
                self._real = self._add_features(self._real, real)
        if real is not None:
            fake_01, real_01 = (fake.detach() + 1) / 2, (real.detach().to(fake.device) + 1) / 2
            # [0, 1] with data_range 1 gives the SSIM of the same images stored as 8-bit files.
            self._psnr_sum += float(psnr(fake_01, real_01, data_range=1.0).sum())
            self._ssim_sum += float(ssim(fake_01, real_01, data_range=1.0).sum())
            self._paired += fake.shape[0]
        if semantic is not None and self.segmenter is not None:
            semantic = semantic[:, 0] if semantic.ndim == 4 and semantic.shape[1] == 1 else semantic  # (B, H, W)
            size = tuple(semantic.shape[-2:])
            prediction = predict_classes(self.segmenter, fake, size=size, num_classes=self.num_classes)
            self._confusion.update(prediction, semantic)

    def update_from_batch(
        self,
        fake: torch.Tensor,
        batch: Mapping,
        *,
        label_name: str = "semantic",
        given: Mapping[str, torch.Tensor] | None = None,
    ) -> None:
        """:meth:`update` with ``real`` and ``semantic`` taken from a sample-dict batch.

        Pixels that ``batch["masks"][label_name]`` marks as missing are scored as ``ignore_index``.

        Args:
            fake: ``(B, 3, H, W)`` generated images in [-1, 1].
            batch: The collated sample dict the images were generated from.
            label_name: Key of the semantic map in ``batch["labels"]``.
            given: The masks the generator was called with (for the labels it takes); with a
                ``consistency`` accumulator, the batch is scored for controllability too.
        """
        if given is not None and self.consistency is not None:
            self.consistency.update_from_batch(fake, batch, given)
        if self.segmenter is not None:
            real, semantic = split_batch(batch, label_name=label_name, ignore_index=self.ignore_index)
        else:
            real, semantic = batch["image"], None
        self.update(fake, real=real, semantic=semantic)

    def compute(self) -> dict[str, float | int | str | bool | None]:
        """All metrics accumulated so far, with the networks that produced them.

        Returns:
            A flat dict: ``fid``, ``kid_mean``, ``kid_std``, ``kid_subset_size``,
            ``feature_extractor``, ``comparable_to_published``, ``num_real``, ``num_fake``
            (with a feature extractor); ``psnr``, ``ssim``, ``num_paired`` (with real images);
            ``miou``, ``pixel_accuracy``, ``mean_class_accuracy``, ``segmenter`` (with a segmenter);
            ``controllability`` (a nested dict, see :meth:`ConsistencyAccumulator.compute`) when
            batches were scored for it.

        Raises:
            ValueError: If a metric has too little data (e.g. fewer than 2 images for FID).
        """
        results: dict[str, float | int | str | bool | None] = {}
        if self.feature_extractor is not None and self._fake is not None:
            if self._real is None:
                raise ValueError("FID needs real images: pass real= to update() or real_statistics= to the evaluator")
            results["feature_extractor"] = self.feature_extractor.name
            results["comparable_to_published"] = self.feature_extractor.standard
            results["num_real"], results["num_fake"] = self._real.count, self._fake.count
            results["fid"] = fid_from_statistics(self._real, self._fake, method=self.fid_method)
            if self.kid:
                kid = kernel_inception_distance(
                    self._real.features,
                    self._fake.features,
                    subsets=self.kid_subsets,
                    subset_size=self.kid_subset_size,
                    seed=self.seed,
                )
                results["kid_mean"], results["kid_std"], results["kid_subset_size"] = kid.mean, kid.std, kid.subset_size
        if self._paired:
            results["psnr"] = self._psnr_sum / self._paired
            results["ssim"] = self._ssim_sum / self._paired
            results["num_paired"] = self._paired
        if self._confusion is not None and int(self._confusion.matrix.sum()) > 0:
            score = self._confusion.compute()
            results["segmenter"] = self.segmenter_name
            results["miou"] = score.miou
            results["pixel_accuracy"] = score.pixel_accuracy
            results["mean_class_accuracy"] = score.mean_class_accuracy
        if self.consistency is not None and self.consistency.num_images > 0:
            results["controllability"] = self.consistency.compute()
        return results

    def _add_features(self, stats: FeatureStatistics | None, images: torch.Tensor) -> FeatureStatistics:
        features = self.feature_extractor(images)  # (B, D)
        if stats is None:
            stats = FeatureStatistics(features.shape[1], extractor=self.feature_extractor.name, keep_features=self.kid)
        stats.update(features)
        return stats
