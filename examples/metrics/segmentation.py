"""Segmentation score: mIoU and pixel accuracy from a confusion matrix accumulated over batches.

The paper's second metric (Sec. 4.2): run a semantic segmentation network on the *generated*
images and compare its prediction with the ground-truth semantic map the images were generated
from. Good generators produce images in which the segmenter finds the intended classes.

Conventions (those of the usual Cityscapes/ADE20K evaluation code):

- Pixels whose ground truth is ``ignore_index`` are left out entirely.
- Every other ground-truth id must lie in ``[0, num_classes)``; anything else is an error.
- IoU of class ``c`` is ``TP / (TP + FP + FN)``. A class that appears neither in the ground truth
  nor in the predictions (of non-ignored pixels) has no IoU (NaN) and is left out of the mean.
  A class that is predicted but never present in the ground truth has IoU 0 and counts.
- When ``ignore_index`` is itself a class id (e.g. 0 = "unlabelled"), that class never occurs in
  the ground truth and is left out of the mean; predicting it is a miss.
- Pixel accuracy is ``trace / total`` over non-ignored pixels.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass

import torch
import torch.nn.functional as F

__all__ = ["ConfusionMatrix", "SegmentationScore", "segmentation_score", "predict_classes"]


@dataclass(frozen=True)
class SegmentationScore:
    """Result of a segmentation evaluation.

    Attributes:
        miou: Mean IoU over the classes that have one.
        pixel_accuracy: Fraction of non-ignored pixels predicted correctly.
        mean_class_accuracy: Mean over classes present in the ground truth of per-class recall.
        per_class_iou: ``(K,)`` float64 IoU per class, NaN where undefined.
        pixels: Number of non-ignored pixels evaluated.
    """

    miou: float
    pixel_accuracy: float
    mean_class_accuracy: float
    per_class_iou: torch.Tensor
    pixels: int


class ConfusionMatrix:
    """A ``(K, K)`` confusion matrix, rows = ground truth, columns = prediction, summed over batches.

    Args:
        num_classes: Number of classes ``K``; valid ids are ``0 .. K-1``.
        ignore_index: Ground-truth id to leave out (inside or outside ``[0, K)``), or None.

    Raises:
        ValueError: If ``num_classes < 1``.

    Example:
        >>> cm = ConfusionMatrix(num_classes=3, ignore_index=255)
        >>> cm.update(torch.tensor([[0, 1, 2, 2]]), torch.tensor([[0, 1, 1, 255]]))
        >>> cm.matrix
        tensor([[1, 0, 0],
                [0, 1, 1],
                [0, 0, 0]])
        >>> cm.compute().pixel_accuracy
        0.6666666666666666
    """

    def __init__(self, num_classes: int, *, ignore_index: int | None = None) -> None:
        if isinstance(num_classes, bool) or not isinstance(num_classes, int) or num_classes < 1:
            raise ValueError(f"num_classes must be a positive int, got {num_classes!r}")
        self.num_classes = num_classes
        self.ignore_index = ignore_index
        self.matrix = torch.zeros(num_classes, num_classes, dtype=torch.int64)

    def update(self, prediction: torch.Tensor, target: torch.Tensor) -> None:
        """Add a batch of predicted and ground-truth class maps.

        Args:
            prediction: Integer class ids, any shape (e.g. ``(B, H, W)``), in ``[0, K)``.
            target: Ground-truth ids of the same shape; ``(B, 1, H, W)`` is accepted for a
                ``(B, H, W)`` prediction.

        Raises:
            ValueError: On shape mismatch, non-integer tensors, or ids outside ``[0, K)`` (other
                than ``ignore_index`` in the target).
        """
        target = _squeeze_channel(target, like=prediction)
        if prediction.shape != target.shape:
            raise ValueError(f"prediction {tuple(prediction.shape)} and target {tuple(target.shape)} differ in shape")
        for name, value in (("prediction", prediction), ("target", target)):
            if value.dtype.is_floating_point or value.dtype == torch.bool or value.is_complex():
                raise ValueError(f"{name} must hold integer class ids, got dtype {value.dtype}")
        prediction = prediction.detach().reshape(-1).to("cpu", torch.int64)  # (P,)
        target = target.detach().reshape(-1).to("cpu", torch.int64)  # (P,)
        if self.ignore_index is not None:
            keep = target != self.ignore_index
            prediction, target = prediction[keep], target[keep]
        _check_range(target, self.num_classes, "target", self.ignore_index)
        _check_range(prediction, self.num_classes, "prediction", None)
        counts = torch.bincount(target * self.num_classes + prediction, minlength=self.num_classes**2)
        self.matrix += counts.view(self.num_classes, self.num_classes)  # (K, K)

    def compute(self) -> SegmentationScore:
        """mIoU, pixel accuracy and per-class IoU of everything added so far.

        Raises:
            ValueError: If no (non-ignored) pixel was added.
        """
        matrix = self.matrix.to(torch.float64)
        total = matrix.sum()
        if total == 0:
            raise ValueError("the confusion matrix is empty: no non-ignored pixel was added")
        true_positive = matrix.diagonal()  # (K,)
        gt_count = matrix.sum(dim=1)  # (K,)
        predicted_count = matrix.sum(dim=0)  # (K,)
        union = gt_count + predicted_count - true_positive
        iou = torch.where(union > 0, true_positive / union.clamp_min(1), torch.full_like(union, float("nan")))
        if self.ignore_index is not None and 0 <= self.ignore_index < self.num_classes:
            iou[self.ignore_index] = float("nan")  # never in the ground truth, so not a real class here
        recall = torch.where(gt_count > 0, true_positive / gt_count.clamp_min(1), torch.nan)
        return SegmentationScore(
            miou=float(iou.nanmean()),
            pixel_accuracy=float(true_positive.sum() / total),
            mean_class_accuracy=float(recall.nanmean()),
            per_class_iou=iou,
            pixels=int(total),
        )

    def reset(self) -> None:
        """Set all counts back to zero."""
        self.matrix.zero_()


def predict_classes(
    segmenter: Callable[[torch.Tensor], torch.Tensor],
    images: torch.Tensor,
    *,
    size: tuple[int, int] | None = None,
    num_classes: int | None = None,
) -> torch.Tensor:
    """Class map predicted by a segmentation network, optionally at another resolution.

    Args:
        segmenter: Callable ``images (B, 3, H, W) -> logits (B, K, H', W')``.
        images: ``(B, 3, H, W)`` images in the range the segmenter expects.
        size: ``(H_out, W_out)``: logits are resized bilinearly (``align_corners=False``) to it
            before the argmax when they differ; None keeps the logits' size.
        num_classes: Expected logit channels ``K``, checked when given.

    Returns:
        ``(B, H_out, W_out)`` int64 class ids.

    Raises:
        ValueError: If the segmenter does not return ``(B, K, H, W)`` logits.

    Example:
        >>> conv = torch.nn.Conv2d(3, 5, 1)
        >>> predict_classes(conv, torch.rand(2, 3, 8, 8), size=(16, 16)).shape
        torch.Size([2, 16, 16])
    """
    with torch.no_grad():
        logits = segmenter(images)
    _check_logits(logits, num_classes=num_classes)
    return _logits_to_classes(logits, size=size)


def segmentation_score(
    segmenter: Callable[[torch.Tensor], torch.Tensor],
    batches: Iterable[tuple[torch.Tensor, torch.Tensor]],
    *,
    num_classes: int,
    ignore_index: int | None = None,
    device: torch.device | str | None = None,
) -> SegmentationScore:
    """mIoU and pixel accuracy of ``segmenter`` on ``(images, semantic)`` batches.

    The logits are resized to the ground-truth map's size (bilinear) when they differ; the
    ground truth is never resized, so no label is invented or lost.

    Args:
        segmenter: Callable ``images -> logits (B, K, H, W)`` (put an ``nn.Module`` in eval mode).
        batches: Iterable of ``(images (B, 3, H, W), semantic (B, H, W) or (B, 1, H, W) int)``;
            the images are typically generated from ``semantic``.
        num_classes: ``K``; the segmenter must output ``K`` channels.
        ignore_index: Ground-truth id to leave out, or None.
        device: Where to run the segmenter (images are moved there); None leaves them as they are.

    Returns:
        A :class:`SegmentationScore`.

    Raises:
        ValueError: If the segmenter's channel count is not ``num_classes`` or a label is out of range.

    Example:
        >>> conv = torch.nn.Conv2d(3, 4, 1)
        >>> batch = (torch.rand(2, 3, 8, 8), torch.randint(0, 4, (2, 8, 8)))
        >>> 0.0 <= segmentation_score(conv, [batch], num_classes=4).miou <= 1.0
        True
    """
    confusion = ConfusionMatrix(num_classes, ignore_index=ignore_index)
    for images, semantic in batches:
        if device is not None:
            images = images.to(device)
        semantic = _squeeze_channel(semantic, like=None)
        prediction = predict_classes(segmenter, images, size=tuple(semantic.shape[-2:]), num_classes=num_classes)
        confusion.update(prediction, semantic)
    return confusion.compute()


def _check_logits(logits: object, *, num_classes: int | None) -> None:
    expected = "K" if num_classes is None else str(num_classes)
    if (
        not isinstance(logits, torch.Tensor)
        or logits.ndim != 4
        or (num_classes is not None and logits.shape[1] != num_classes)
    ):
        shape = tuple(logits.shape) if isinstance(logits, torch.Tensor) else type(logits).__name__
        raise ValueError(f"the segmenter must return logits (B, {expected}, H, W), got {shape}")


def _logits_to_classes(logits: torch.Tensor, *, size: tuple[int, int] | None) -> torch.Tensor:
    """Argmax over ``(B, K, H, W)`` logits, resized bilinearly to ``size`` first if it differs."""
    if size is not None and tuple(logits.shape[-2:]) != tuple(size):
        logits = F.interpolate(logits.float(), size=size, mode="bilinear", align_corners=False)  # (B, K, *size)
    return logits.argmax(dim=1)  # (B, H, W)


def _squeeze_channel(target: torch.Tensor, *, like: torch.Tensor | None) -> torch.Tensor:
    """Turn a ``(B, 1, H, W)`` class map into ``(B, H, W)`` (unless ``like`` is 4-D too)."""
    if not isinstance(target, torch.Tensor):
        raise TypeError(f"the semantic map must be a torch.Tensor, got {type(target).__name__}")
    if target.ndim == 4 and target.shape[1] == 1 and (like is None or like.ndim == 3):
        return target[:, 0]  # (B, H, W)
    return target


def _check_range(ids: torch.Tensor, num_classes: int, name: str, ignore_index: int | None) -> None:
    if ids.numel() == 0:
        return
    low, high = int(ids.min()), int(ids.max())
    if low < 0 or high >= num_classes:
        allowed = f"[0, {num_classes})" + (f" or ignore_index={ignore_index}" if ignore_index is not None else "")
        bad = low if low < 0 else high
        raise ValueError(f"{name} contains class id {bad}; expected ids in {allowed}")
