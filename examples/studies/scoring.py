"""Measuring a generator on an evaluation set: FID, KID, PSNR, SSIM and the segmentation score.

A :class:`Scorer` holds the networks that every model of a study is measured with (the FID
feature extractor and the segmenter) and names them next to every number. The FID features are
the standard FID Inception's when its weights file is given (flag or ``$LABEL_MERGE_FID_WEIGHTS``);
otherwise the pooled bottleneck of the project's small segmenter, labelled as not comparable to
published FIDs.
"""

from __future__ import annotations

import os
import time
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset
from tqdm.auto import tqdm

from examples.metrics import FID_WEIGHTS_ENV, FeatureExtractor, GenerationEvaluator, fid_inception_extractor
from examples.metrics.samples import split_batch
from examples.studies.conditions import LabelCondition, apply_condition
from examples.studies.segmenters import file_digest
from examples.training.loop import to_device
from label_merge import LabelSpec

__all__ = ["Scorer", "build_scorer", "evaluate_generator", "evaluation_loader", "fid_weights_from"]

SEMANTIC = "semantic"


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
        kid_subsets: Random subsets KID averages over.
    """

    feature_extractor: FeatureExtractor
    segmenter: nn.Module | None
    segmenter_name: str | None
    num_classes: int | None
    ignore_index: int | None
    fid_method: str = "sqrtm"
    kid_subsets: int = 100

    def describe(self) -> dict:
        """The networks, for the record next to the numbers."""
        return {
            "feature_extractor": self.feature_extractor.name,
            "comparable_to_published": self.feature_extractor.standard,
            "fid_method": self.fid_method,
            "segmenter": self.segmenter_name,
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
) -> Scorer:
    """Choose the FID features and wrap the segmenter.

    Args:
        segmenter: The segmenter (a :class:`~examples.metrics.SmallSegmenter` for the fallback
            FID features), or None to skip the segmentation score.
        segmenter_path: Its file, whose SHA-256 names it in the results.
        semantic_spec: The dataset's semantic label (classes, ignored id), or None.
        fid_weights: The FID Inception weights file, or None for the small segmenter's features.
        device: Where the networks run.

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
    )


def evaluation_loader(dataset: Dataset, *, batch_size: int, workers: int = 0) -> DataLoader:
    """The evaluation set in its fixed order (sample positions seed the evaluation sparsity)."""
    return DataLoader(dataset, batch_size=batch_size, shuffle=False, num_workers=workers)


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
        scorer: The networks to measure with.
        condition: Sparsity and removed labels (None: dense, all labels).
        device: Where the generator runs.
        progress: Show a progress bar.
        desc: The progress bar's title.

    Returns:
        A flat dict: ``fid``, ``kid_mean``, ``kid_std``, ``psnr``, ``ssim``, ``miou``,
        ``pixel_accuracy``, ``mean_class_accuracy`` (when scored), the networks' names,
        ``segmenter_on_real_miou`` / ``segmenter_on_real_pixel_accuracy`` (the segmenter on the
        real images: what a perfect generator would reach), ``num_samples``, the condition and
        ``seconds``.

    Raises:
        ValueError: Fewer than 2 samples, or a removed label the model does not have.
    """
    condition = condition or LabelCondition()
    started = time.perf_counter()
    was_training = generator.training
    generator.eval()
    segmenting = scorer.segmenter is not None
    kwargs = dict(
        segmenter=scorer.segmenter if segmenting else None,
        segmenter_name=scorer.segmenter_name,
        num_classes=scorer.num_classes,
        ignore_index=scorer.ignore_index,
    )
    evaluator = GenerationEvaluator(
        feature_extractor=scorer.feature_extractor,
        fid_method=scorer.fid_method,
        kid_subsets=scorer.kid_subsets,
        **kwargs,
    )
    real_reference = GenerationEvaluator(**kwargs) if segmenting else None
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
            evaluator.update_from_batch(fake, batch)
            if real_reference is not None:
                real, semantic = split_batch(batch, label_name=SEMANTIC, ignore_index=scorer.ignore_index)
                real_reference.update(real, semantic=semantic)
            position += fake.shape[0]
    finally:
        generator.train(was_training)
    if position < 2:
        raise ValueError(f"FID needs at least 2 evaluation samples, got {position}")
    results = evaluator.compute()
    if real_reference is not None:
        reference = real_reference.compute()
        results["segmenter_on_real_miou"] = reference["miou"]
        results["segmenter_on_real_pixel_accuracy"] = reference["pixel_accuracy"]
    results.update(
        num_samples=position,
        sparsity=condition.sparsity,
        sparsity_seed=condition.seed,
        dropped_labels=list(condition.drop_labels),
        seconds=round(time.perf_counter() - started, 3),
    )
    return results
