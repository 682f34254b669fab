"""Controllability: does a generated image obey each label, where it was given and where it was missing?

A label estimator (see :mod:`.estimator`) reads every label back from the generated image, and
each re-estimated label is scored against the true label of the scene:

======================  ==================================================================
label                   figures
======================  ==================================================================
``semantic``            ``miou``, ``pixel_accuracy`` (from a confusion matrix summed over pixels)
``depth``               ``abs_rel``, ``rmse`` (metres), ``delta1`` (fraction with ratio < 1.25),
                        after a per-image median scale alignment
``normal``              ``angle_error`` (mean, degrees), ``within_11.25`` (fraction of pixels)
``edge``                ``f1``, ``precision``, ``recall`` with a 1-pixel tolerance
``curvature``           ``mae`` (1/m, mean over both principal curvatures)
======================  ==================================================================

Each figure is computed separately over two sets of pixels, which partition the pixels where the
true label exists (``label_present``):

- ``given``: the label was given to the generator there (``given`` mask True);
- ``missing``: it was not (dropped by sparsity, or the whole label removed). The generator never
  saw the true label there, so this measures how plausibly it filled the gap.

A split with no pixels at all is left out, so a label never given reports only ``missing``, and a
dense evaluation reports only ``given``. The same estimator run on the real images gives the
``ceiling``: what a generator that reproduced the real image exactly would score.

Dataset figures pool pixels over all images (sums of errors over all pixels of the split, then
one division), so an image with few pixels in a split does not weigh as much as one with many;
mIoU comes from the summed confusion matrix. With ``per_image=True`` each figure is an array with
one value per image instead (NaN where the split has no pixel in that image), for paired
per-scene tests and bootstrap intervals.

Choices (see ``docs/evaluation.md``):

- Depth: scale ``s = median(target) / median(prediction)`` per image over all its valid depth
  pixels, given and missing together, so both splits share one alignment; monocular estimators
  recover depth only up to scale, and the given split would otherwise decide the alignment.
- Edges: target and prediction are binarised at :data:`EDGE_THRESHOLD`; a predicted edge pixel
  is a true positive when a target edge lies within one pixel (Chebyshev distance, i.e. in its
  3x3 neighbourhood), and a target edge pixel is recalled when a predicted edge lies within one
  pixel (dilation by a 3x3 max pool).
- A pixel whose true value is not finite (or whose depth is not positive, or whose normal is
  zero) counts as not present; so does a semantic pixel equal to ``ignore_index``.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping

import torch
import torch.nn.functional as F
from torch import nn

from .estimator import LABEL_CHANNELS

__all__ = [
    "SPLITS",
    "METRICS",
    "HIGHER_IS_BETTER",
    "EDGE_THRESHOLD",
    "NORMAL_THRESHOLD_DEG",
    "DELTA_THRESHOLD",
    "ConsistencyAccumulator",
    "label_consistency",
    "flatten_consistency",
    "shuffle_within_regions",
    "remove_shading",
]

SPLITS = ("given", "missing")
"""The two pixel sets every label is scored over."""

METRICS: dict[str, tuple[str, ...]] = {
    "semantic": ("miou", "pixel_accuracy"),
    "depth": ("abs_rel", "rmse", "delta1"),
    "normal": ("angle_error", "within_11.25"),
    "edge": ("f1", "precision", "recall"),
    "curvature": ("mae",),
}
"""The figures of each label (each split also reports its ``pixels``)."""

HIGHER_IS_BETTER: dict[str, bool] = {
    "miou": True,
    "pixel_accuracy": True,
    "abs_rel": False,
    "rmse": False,
    "delta1": True,
    "angle_error": False,
    "within_11.25": True,
    "f1": True,
    "precision": True,
    "recall": True,
    "mae": False,
}
"""Whether a larger value of each figure is better (to say which way a change goes)."""

EDGE_THRESHOLD = 0.5
"""Target edge strengths and predicted edge probabilities at or above this are edges."""
NORMAL_THRESHOLD_DEG = 11.25
"""``within_11.25`` counts normals whose angular error is below this many degrees."""
DELTA_THRESHOLD = 1.25
"""``delta1`` counts depths with ``max(pred / target, target / pred)`` below this."""

_DEPTH_EPS = 1e-6  # predictions are clamped to this many metres: a zero or negative depth has no ratio


class ConsistencyAccumulator:
    """Label consistency accumulated over batches of generated images (and their real images).

    Per batch, the estimator reads the labels from the generated images (and from the real ones
    for the ceiling); per image, label and split, the sufficient statistics of every figure are
    kept (pixel counts, sums of errors, confusion counts), so :meth:`compute` pools them exactly
    over the whole set and also gives per-image values.

    Args:
        estimator: ``images (B, 3, H, W) in [-1, 1] -> {label: prediction}`` (an ``nn.Module`` is
            put in eval mode; it runs under ``torch.no_grad``).
        num_classes: Semantic classes ``K`` (needed when the estimator returns class ids;
            otherwise checked against its logits).
        ignore_index: Semantic id that marks pixels without a true class, or None.

    Example:
        >>> estimator = lambda x: {"depth": x[:, :1].exp()}
        >>> accumulator = ConsistencyAccumulator(estimator)
        >>> images = torch.zeros(2, 3, 4, 4)
        >>> given = {"depth": torch.zeros(2, 4, 4, dtype=torch.bool)}  # depth removed
        >>> accumulator.update(images, {"depth": torch.full((2, 1, 4, 4), 3.0)}, given, real_images=images)
        >>> result = accumulator.compute()
        >>> sorted(result["depth"]), result["depth"]["missing"]["abs_rel"], sorted(result)
        (['missing'], 0.0, ['ceiling', 'depth'])
    """

    def __init__(
        self,
        estimator: Callable[[torch.Tensor], Mapping[str, torch.Tensor]],
        *,
        num_classes: int | None = None,
        ignore_index: int | None = None,
    ) -> None:
        if not callable(estimator):
            raise TypeError(f"estimator must be callable (images -> dict of labels), got {type(estimator).__name__}")
        if num_classes is not None and (
            isinstance(num_classes, bool) or not isinstance(num_classes, int) or num_classes < 1
        ):
            raise ValueError(f"num_classes must be a positive int or None, got {num_classes!r}")
        if isinstance(estimator, nn.Module):
            estimator.eval()
        self.estimator = estimator
        self.num_classes = num_classes
        self.ignore_index = ignore_index
        self._labels: tuple[str, ...] | None = None  # fixed by the first batch
        self._with_ceiling: bool | None = None
        # {source: {label: {split: [(B, S) float64 statistics per batch]}}}
        self._stats: dict[str, dict[str, dict[str, list[torch.Tensor]]]] = {"generated": {}, "ceiling": {}}
        self.num_images = 0

    @property
    def labels(self) -> tuple[str, ...]:
        """The labels being scored (those of the first batch that the estimator reads)."""
        return self._labels or ()

    @torch.no_grad()
    def update(
        self,
        images: torch.Tensor,
        labels: Mapping[str, torch.Tensor],
        given: Mapping[str, torch.Tensor],
        *,
        label_present: Mapping[str, torch.Tensor] | None = None,
        real_images: torch.Tensor | None = None,
    ) -> None:
        """Score a batch of generated images against the true labels of their scenes.

        Args:
            images: ``(B, 3, H, W)`` generated images in [-1, 1].
            labels: The scenes' true labels ``{name: tensor}``: ``semantic`` ``(B, H, W)`` or
                ``(B, 1, H, W)`` int, the others ``(B, C, H, W)`` float (see
                :data:`~examples.metrics.estimator.LABEL_CHANNELS`). Labels the estimator does
                not read, or that are not among those, are not scored.
            given: ``{name: bool (B, H, W) or (B, 1, H, W)}``, True where the generator was given
                the label. A label without an entry was given nowhere.
            label_present: ``{name: bool (B, H, W)}``, True where the true label exists (the
                dataset's ``masks``). A label without an entry exists everywhere.
            real_images: ``(B, 3, H, W)`` real images of the same scenes, for the ceiling. Give
                them with every batch or with none.

        Raises:
            ValueError: On mismatched shapes, a ``given`` mask for a label not in ``labels``,
                class ids out of range, a batch without a label an earlier batch had, or real
                images given for some batches but not others.
            TypeError: A non-tensor input.
        """
        _check_images(images, "images")
        if real_images is not None:
            _check_images(real_images, "real_images")
            if real_images.shape != images.shape:
                raise ValueError(f"real_images {tuple(real_images.shape)} and images {tuple(images.shape)} differ")
        with_ceiling = real_images is not None
        if self._with_ceiling is not None and with_ceiling != self._with_ceiling:
            raise ValueError("give real_images with every batch or with none (the ceiling must cover the same images)")
        unknown_given = sorted(set(given) - set(labels))
        if unknown_given:
            raise ValueError(f"given has masks for {unknown_given}, which are not in labels ({sorted(labels)})")
        label_present = label_present or {}
        batch = images.shape[0]

        predictions = self._estimate(images)
        scored = self._labels
        if scored is None:
            scored = tuple(name for name in LABEL_CHANNELS if name in labels and name in predictions)
        missing = [name for name in scored if name not in labels or name not in predictions]
        if missing:
            raise ValueError(f"this batch lacks label(s) {missing} (in labels or in the estimator's output)")

        sources = {"generated": predictions}
        if with_ceiling:
            sources["ceiling"] = self._estimate(real_images)
        new: list[tuple[str, str, str, torch.Tensor]] = []  # kept only once the whole batch is scored
        for name in scored:
            target = labels[name]
            size = (batch, *target.shape[-2:])
            present = _mask(
                label_present.get(name), size, f"label_present[{name!r}]", default=True, device=target.device
            )
            given_mask = _mask(given.get(name), size, f"given[{name!r}]", default=False, device=target.device)
            for source, prediction in sources.items():
                stats = self._label_statistics(name, prediction[name], target, present, given_mask)
                new.extend((source, name, split, value.cpu()) for split, value in stats.items())
        for source, name, split, value in new:
            self._stats[source].setdefault(name, {}).setdefault(split, []).append(value)
        self._labels, self._with_ceiling = scored, with_ceiling
        self.num_images += batch

    def update_from_batch(
        self, images: torch.Tensor, batch: Mapping, given: Mapping[str, torch.Tensor], *, ceiling: bool = True
    ) -> None:
        """:meth:`update` with the true labels, where they exist and the real images taken from a sample-dict batch.

        Args:
            images: ``(B, 3, H, W)`` images generated from ``batch``.
            batch: The collated sample dict (``image``, ``labels``, ``masks``).
            given: The masks the generator was called with, for the labels it takes (a label it
                does not take, or that was removed, is given nowhere).
            ceiling: Also score the batch's real images.

        Example:
            >>> batch = {"image": torch.zeros(2, 3, 4, 4), "labels": {"edge": torch.zeros(2, 1, 4, 4)},
            ...          "masks": {"edge": torch.ones(2, 4, 4, dtype=torch.bool)}}
            >>> accumulator = ConsistencyAccumulator(lambda x: {"edge": x[:, :1] + 1})
            >>> accumulator.update_from_batch(batch["image"], batch, given={})
            >>> accumulator.compute()["edge"]["missing"]["precision"]
            0.0
        """
        self.update(
            images,
            batch["labels"],
            given,
            label_present=batch.get("masks"),
            real_images=batch["image"] if ceiling else None,
        )

    def compute(self, *, per_image: bool = False) -> dict:
        """Every figure of every label and split, and the ceiling when real images were given.

        Args:
            per_image: Return one value per image (numpy float64 arrays in the order the images
                were added; NaN where the split has no pixel in that image) instead of pooled figures.

        Returns:
            ``{label: {split: {figure: value, "pixels": count}}}`` for the splits that have
            pixels (a label whose truth exists nowhere is left out), plus ``"ceiling"``: the same
            for the real images (only when given). Figures are those of :data:`METRICS`.

        Raises:
            ValueError: If nothing was added.

        Example:
            >>> estimator = lambda x: {"curvature": x[:, :2]}
            >>> labels = {"curvature": torch.zeros(3, 2, 4, 4)}
            >>> given = {"curvature": torch.ones(3, 4, 4, dtype=torch.bool)}
            >>> result = label_consistency(torch.zeros(3, 3, 4, 4), labels, given, estimator, per_image=True)
            >>> result["curvature"]["given"]["mae"].tolist()
            [0.0, 0.0, 0.0]
        """
        if self.num_images == 0:
            raise ValueError("nothing to compute: no batch was added")
        result = self._compute_source("generated", per_image=per_image)
        if self._with_ceiling:
            result["ceiling"] = self._compute_source("ceiling", per_image=per_image)
        return result

    def _compute_source(self, source: str, *, per_image: bool) -> dict:
        out: dict[str, dict] = {}
        for name in self.labels:
            out[name] = {}
            for split in SPLITS:
                stats = torch.cat(self._stats[source][name][split])  # (N, S)
                pooled = _figures(name, stats.sum(0, keepdim=True), ignore_index=self.ignore_index)
                if pooled["pixels"][0] == 0:
                    continue  # no pixel of this split anywhere: the split is not reported
                if per_image:
                    figures = _figures(name, stats, ignore_index=self.ignore_index)
                    out[name][split] = {key: value.numpy() for key, value in figures.items()}
                else:
                    out[name][split] = {
                        key: (int(value[0]) if key == "pixels" else float(value[0])) for key, value in pooled.items()
                    }
            if not out[name]:
                del out[name]  # the true label exists nowhere: nothing to score
        return out

    def _estimate(self, images: torch.Tensor) -> dict[str, torch.Tensor]:
        predictions = self.estimator(images)
        if not isinstance(predictions, Mapping):
            raise TypeError(f"the estimator must return a dict of labels, got {type(predictions).__name__}")
        return dict(predictions)

    def _label_statistics(
        self, name: str, prediction: torch.Tensor, target: torch.Tensor, present: torch.Tensor, given: torch.Tensor
    ) -> dict[str, torch.Tensor]:
        """``{split: (B, S) float64}`` sufficient statistics of one label for one batch."""
        if name == "semantic":
            target = _class_map(target, "labels['semantic']")
            prediction = self._semantic_prediction(prediction, size=tuple(target.shape[-2:]), device=target.device)
            valid = present if self.ignore_index is None else present & (target != self.ignore_index)
            _check_ids(target[valid], self.num_classes, "labels['semantic']")
            splits = {"given": valid & given, "missing": valid & ~given}
            return {
                split: _confusion_statistics(prediction, target, mask, self.num_classes)
                for split, mask in splits.items()
            }
        target = _dense_label(name, target)
        prediction = _dense_prediction(name, prediction, target)
        valid = present & torch.isfinite(target).all(dim=1)  # (B, H, W)
        target = torch.where(valid[:, None], target, torch.zeros_like(target))  # no NaN/inf reaches a sum
        if name == "depth":
            valid &= target[:, 0] > 0
        if name == "normal":
            valid &= target.norm(dim=1) > 0
        splits = {"given": valid & given, "missing": valid & ~given}
        statistics = _STATISTICS[name]
        return {split: statistics(prediction, target, valid, mask) for split, mask in splits.items()}

    def _semantic_prediction(
        self, prediction: torch.Tensor, *, size: tuple[int, int], device: torch.device
    ) -> torch.Tensor:
        """Class ids ``(B, H, W)`` on ``device`` from logits ``(B, K, h, w)`` or ids ``(B, h, w)``."""
        if not isinstance(prediction, torch.Tensor):
            raise TypeError(f"the estimator's semantic prediction must be a tensor, got {type(prediction).__name__}")
        if prediction.is_floating_point():
            if prediction.ndim != 4:
                raise ValueError(f"semantic scores must be (B, K, H, W), got {tuple(prediction.shape)}")
            if self.num_classes is None:
                self.num_classes = prediction.shape[1]
            if prediction.shape[1] != self.num_classes:
                raise ValueError(f"semantic scores have {prediction.shape[1]} classes, expected {self.num_classes}")
            if tuple(prediction.shape[-2:]) != size:
                prediction = F.interpolate(prediction.float(), size=size, mode="bilinear", align_corners=False)
            return prediction.argmax(dim=1).to(device)  # (B, H, W)
        if self.num_classes is None:
            raise ValueError("the estimator returns semantic class ids: give num_classes to the accumulator")
        ids = _class_map(prediction, "the semantic prediction")
        if tuple(ids.shape[-2:]) != size:
            ids = F.interpolate(ids[:, None].float(), size=size, mode="nearest")[:, 0].long()  # (B, H, W)
        _check_ids(ids, self.num_classes, "the semantic prediction")
        return ids.to(device)


def label_consistency(
    images: torch.Tensor,
    labels: Mapping[str, torch.Tensor],
    given: Mapping[str, torch.Tensor],
    estimator: Callable[[torch.Tensor], Mapping[str, torch.Tensor]],
    *,
    label_present: Mapping[str, torch.Tensor] | None = None,
    real_images: torch.Tensor | None = None,
    per_image: bool = False,
    num_classes: int | None = None,
    ignore_index: int | None = None,
) -> dict:
    """How well each label read back from ``images`` matches the true label, where given and where missing.

    One batch; use :class:`ConsistencyAccumulator` over many.

    Args:
        images: ``(B, 3, H, W)`` generated images in [-1, 1].
        labels: The scenes' true labels (``sample["labels"]``, collated).
        given: Where the generator was given each label (the masks it was called with); a label
            without an entry was given nowhere.
        estimator: ``images -> {label: prediction}`` (see :mod:`.estimator`).
        label_present: Where each true label exists (``sample["masks"]``); default everywhere.
        real_images: The real images of the scenes, for the ``ceiling``.
        per_image: Per-image arrays instead of pooled figures.
        num_classes: Semantic classes (needed for class-id predictions).
        ignore_index: Semantic id without a true class.

    Returns:
        ``{label: {"given": {figure: value}, "missing": {figure: value}}, "ceiling": {...}}``
        (see :meth:`ConsistencyAccumulator.compute`).

    Raises:
        ValueError, TypeError: See :meth:`ConsistencyAccumulator.update`.

    Example:
        >>> depth = torch.rand(2, 1, 8, 8) + 1
        >>> given = {"depth": torch.rand(2, 8, 8) < 0.5}
        >>> perfect = lambda images: {"depth": 2 * depth}  # right up to scale
        >>> result = label_consistency(torch.zeros(2, 3, 8, 8), {"depth": depth}, given, perfect)
        >>> round(result["depth"]["given"]["abs_rel"], 6), result["depth"]["missing"]["delta1"]
        (0.0, 1.0)
    """
    accumulator = ConsistencyAccumulator(estimator, num_classes=num_classes, ignore_index=ignore_index)
    accumulator.update(images, labels, given, label_present=label_present, real_images=real_images)
    return accumulator.compute(per_image=per_image)


def flatten_consistency(result: Mapping, *, separator: str = "/") -> dict[str, float]:
    """``{"depth/missing/abs_rel": value, "ceiling/depth/missing/abs_rel": value, ...}``: one column per figure.

    Example:
        >>> flatten_consistency({"edge": {"given": {"f1": 0.5}}, "ceiling": {"edge": {"given": {"f1": 1.0}}}})
        {'edge/given/f1': 0.5, 'ceiling/edge/given/f1': 1.0}
    """
    flat: dict[str, float] = {}
    for key, value in result.items():
        if isinstance(value, Mapping):
            for inner_key, inner in flatten_consistency(value, separator=separator).items():
                flat[f"{key}{separator}{inner_key}"] = inner
        else:
            flat[key] = value
    return flat


def shuffle_within_regions(
    images: torch.Tensor, regions: torch.Tensor, *, generator: torch.Generator | None = None
) -> torch.Tensor:
    """Move every pixel to a random place of the same region: colours stay, shading and texture go.

    A diagnostic "generator": each region (e.g. each semantic class) keeps exactly its colour
    histogram and its outline, so the classes stay readable, while the shading that tells depth
    and orientation is scrambled.

    Args:
        images: ``(B, C, H, W)``.
        regions: ``(B, H, W)`` integer region ids (non-negative).
        generator: Random source of the permutations.

    Returns:
        ``(B, C, H, W)``: the shuffled images.

    Example:
        >>> image = torch.arange(4.0).view(1, 1, 2, 2)
        >>> shuffled = shuffle_within_regions(image, torch.tensor([[[0, 1], [0, 1]]]))
        >>> sorted(shuffled[0, 0, :, 0].tolist()), sorted(shuffled[0, 0, :, 1].tolist())
        ([0.0, 2.0], [1.0, 3.0])
    """
    if images.ndim != 4 or regions.shape != (images.shape[0], *images.shape[-2:]):
        raise ValueError(
            f"need images (B, C, H, W) and regions (B, H, W), got {tuple(images.shape)}, {tuple(regions.shape)}"
        )
    flat = images.flatten(2)  # (B, C, H*W)
    ids = regions.flatten(1).to(torch.float64)  # (B, H*W)
    jitter = torch.rand(ids.shape, generator=generator, dtype=torch.float64).to(ids.device)
    in_place = ids.argsort(dim=1, stable=True)  # pixels grouped by region, in position order
    shuffled = (ids + jitter).argsort(dim=1)  # the same groups, each in random order
    out = torch.empty_like(flat)
    out.scatter_(2, in_place[:, None].expand_as(flat), flat.gather(2, shuffled[:, None].expand_as(flat)))
    return out.view_as(images)


def remove_shading(images: torch.Tensor) -> torch.Tensor:
    """Give every pixel its own colour at the image's median brightness: materials stay, shading goes.

    A diagnostic "generator" whose depth- and orientation-dependent shading is removed: the hue
    and saturation of every pixel (its material) are kept, its brightness (mean of R, G, B in
    [0, 1]) is set to the median brightness of the image.

    Args:
        images: ``(B, 3, H, W)`` in [-1, 1].

    Returns:
        ``(B, 3, H, W)`` in [-1, 1].

    Example:
        >>> rgb = torch.tensor([[0.2, 0.4, 0.8], [0.1, 0.2, 0.4], [0.0, 0.0, 0.0]]).view(1, 3, 1, 3)
        >>> flat = (remove_shading(rgb * 2 - 1) + 1) / 2  # one colour, three brightnesses
        >>> torch.allclose(flat, torch.tensor([0.4, 0.2, 0.0]).view(1, 3, 1, 1).expand(1, 3, 1, 3))
        True
    """
    if images.ndim != 4 or images.shape[1] != 3:
        raise ValueError(f"images must have shape (B, 3, H, W), got {tuple(images.shape)}")
    rgb = (images + 1) / 2
    brightness = rgb.mean(dim=1, keepdim=True)  # (B, 1, H, W)
    median = brightness.flatten(1).median(dim=1).values[:, None, None, None]  # (B, 1, 1, 1)
    flat = rgb * median / brightness.clamp_min(1e-6)
    return flat.clamp(0, 1) * 2 - 1


# -- sufficient statistics: (B, S) float64 per split, summed over pixels of each image ------------


def _confusion_statistics(
    prediction: torch.Tensor, target: torch.Tensor, mask: torch.Tensor, num_classes: int
) -> torch.Tensor:
    """``(B, K*K)`` confusion counts per image (row = truth, column = prediction) over ``mask``."""
    batch = target.shape[0]
    image = torch.arange(batch, device=target.device)[:, None, None].expand_as(target)  # (B, H, W)
    index = (image * num_classes + target) * num_classes + prediction  # (B, H, W)
    counts = torch.bincount(index[mask], minlength=batch * num_classes**2)
    return counts.view(batch, num_classes**2).double()  # (B, K*K)


def _depth_statistics(prediction, target, valid, mask) -> torch.Tensor:
    """``[pixels, sum AbsRel, sum squared error, sum delta<1.25]`` after the per-image median scale."""
    prediction = prediction[:, 0].double().clamp_min(_DEPTH_EPS)  # (B, H, W)
    target = target[:, 0].double()
    nan = torch.tensor(float("nan"), dtype=torch.float64, device=target.device)
    flat_target = torch.where(valid, target, nan).flatten(1)  # (B, H*W)
    flat_prediction = torch.where(valid, prediction, nan).flatten(1)
    scale = torch.nanquantile(flat_target, 0.5, dim=1) / torch.nanquantile(flat_prediction, 0.5, dim=1)  # (B,)
    aligned = prediction * scale[:, None, None]  # (B, H, W); NaN for an image without valid depth
    safe_target = torch.where(valid, target, torch.ones_like(target))
    ratio = torch.maximum(aligned / safe_target, safe_target / aligned)
    return _sums(
        mask, (aligned - target).abs() / safe_target, (aligned - target) ** 2, (ratio < DELTA_THRESHOLD).double()
    )


def _normal_statistics(prediction, target, valid, mask) -> torch.Tensor:
    """``[pixels, sum angular error (degrees), count below 11.25 degrees]``."""
    prediction = F.normalize(prediction.double(), dim=1, eps=1e-12)  # (B, 3, H, W)
    target = F.normalize(target.double(), dim=1, eps=1e-12)
    # atan2(|a x b|, a . b) is accurate at every angle, unlike acos near 0 degrees.
    cross = torch.linalg.vector_norm(torch.cross(prediction, target, dim=1), dim=1)  # (B, H, W)
    angle = torch.rad2deg(torch.atan2(cross, (prediction * target).sum(dim=1)))
    return _sums(mask, angle, (angle < NORMAL_THRESHOLD_DEG).double())


def _edge_statistics(prediction, target, valid, mask) -> torch.Tensor:
    """``[pixels, predicted edges, those near a target edge, target edges, those near a predicted edge]``."""
    predicted = prediction[:, 0] >= EDGE_THRESHOLD  # (B, H, W)
    true = (target[:, 0] >= EDGE_THRESHOLD) & valid
    near_true, near_predicted = _within_one_pixel(true), _within_one_pixel(predicted)
    return _sums(
        mask,
        predicted.double(),
        (predicted & near_true).double(),
        true.double(),
        (true & near_predicted).double(),
    )


def _curvature_statistics(prediction, target, valid, mask) -> torch.Tensor:
    """``[pixels, sum of |error| averaged over the two curvatures]``."""
    return _sums(mask, (prediction.double() - target.double()).abs().mean(dim=1))


_STATISTICS = {
    "depth": _depth_statistics,
    "normal": _normal_statistics,
    "edge": _edge_statistics,
    "curvature": _curvature_statistics,
}


def _sums(mask: torch.Tensor, *values: torch.Tensor) -> torch.Tensor:
    """``(B, 1 + len(values))``: pixel count and per-image sums of each ``(B, H, W)`` value over ``mask``."""
    columns = [mask.double().flatten(1).sum(1)]
    for value in values:
        columns.append(torch.where(mask, value, torch.zeros_like(value)).flatten(1).sum(1))  # (B,)
    return torch.stack(columns, dim=1)  # (B, S)


def _within_one_pixel(edges: torch.Tensor) -> torch.Tensor:
    """``(B, H, W)`` bool: an edge lies in the pixel's 3x3 neighbourhood (dilation by a 3x3 max pool)."""
    return F.max_pool2d(edges[:, None].float(), kernel_size=3, stride=1, padding=1)[:, 0] > 0


# -- figures from statistics: (N, S) -> {figure: (N,)} -------------------------------------------


def _figures(name: str, stats: torch.Tensor, *, ignore_index: int | None) -> dict[str, torch.Tensor]:
    """Every figure of label ``name`` for each row of ``stats`` (a row: one image, or the pooled sums)."""
    if name == "semantic":
        num_classes = math.isqrt(stats.shape[1])
        confusion = stats.view(-1, num_classes, num_classes)  # (N, K, K)
        true_positive = confusion.diagonal(dim1=1, dim2=2)  # (N, K)
        union = confusion.sum(2) + confusion.sum(1) - true_positive
        iou = torch.where(union > 0, true_positive / union.clamp_min(1), torch.nan)
        if ignore_index is not None and 0 <= ignore_index < num_classes:
            iou[:, ignore_index] = torch.nan  # never a true class, so not in the mean
        pixels = confusion.sum(dim=(1, 2))
        return {
            "miou": iou.nanmean(dim=1),
            "pixel_accuracy": _ratio(true_positive.sum(1), pixels),
            "pixels": pixels,
        }
    pixels = stats[:, 0]
    if name == "depth":
        return {
            "abs_rel": _ratio(stats[:, 1], pixels),
            "rmse": _ratio(stats[:, 2], pixels).sqrt(),
            "delta1": _ratio(stats[:, 3], pixels),
            "pixels": pixels,
        }
    if name == "normal":
        return {
            "angle_error": _ratio(stats[:, 1], pixels),
            "within_11.25": _ratio(stats[:, 2], pixels),
            "pixels": pixels,
        }
    if name == "edge":
        predicted, hits, true, recalled = stats[:, 1], stats[:, 2], stats[:, 3], stats[:, 4]
        precision, recall = _ratio(hits, predicted), _ratio(recalled, true)
        f1 = 2 * precision * recall / (precision + recall)
        f1 = torch.where((precision + recall) == 0, torch.zeros_like(f1), f1)
        # Edges on one side only: F1 is 0; on neither side it is undefined (NaN).
        one_sided = (predicted == 0) != (true == 0)
        f1 = torch.where(one_sided, torch.zeros_like(f1), f1)
        return {"f1": f1, "precision": precision, "recall": recall, "pixels": pixels}
    return {"mae": _ratio(stats[:, 1], pixels), "pixels": pixels}


def _ratio(numerator: torch.Tensor, denominator: torch.Tensor) -> torch.Tensor:
    """``numerator / denominator``, NaN where the denominator is 0."""
    return torch.where(denominator > 0, numerator / denominator.clamp_min(1e-300), torch.nan)


# -- input checks ----------------------------------------------------------------------------------


def _check_images(images: object, name: str) -> None:
    if not isinstance(images, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(images).__name__}")
    if images.ndim != 4 or images.shape[1] != 3:
        raise ValueError(f"{name} must have shape (B, 3, H, W), got {tuple(images.shape)}")


def _mask(
    mask: torch.Tensor | None, size: tuple[int, int, int], name: str, *, default: bool, device: torch.device
) -> torch.Tensor:
    """A ``(B, H, W)`` bool mask from ``(B, H, W)`` or ``(B, 1, H, W)``, or the default everywhere."""
    if mask is None:
        return torch.full(size, default, dtype=torch.bool, device=device)
    if not isinstance(mask, torch.Tensor):
        raise TypeError(f"{name} must be a bool tensor, got {type(mask).__name__}")
    if mask.ndim == 4 and mask.shape[1] == 1:
        mask = mask[:, 0]  # (B, H, W)
    if tuple(mask.shape) != size:
        raise ValueError(f"{name} has shape {tuple(mask.shape)}, expected {size} (B, H, W)")
    return mask.to(device=device, dtype=torch.bool)


def _class_map(ids: torch.Tensor, name: str) -> torch.Tensor:
    if not isinstance(ids, torch.Tensor):
        raise TypeError(f"{name} must be a tensor, got {type(ids).__name__}")
    if ids.ndim == 4 and ids.shape[1] == 1:
        ids = ids[:, 0]  # (B, H, W)
    if ids.ndim != 3 or ids.is_floating_point() or ids.dtype == torch.bool:
        raise ValueError(f"{name} must hold integer class ids (B, H, W), got {ids.dtype} {tuple(ids.shape)}")
    return ids.long()


def _check_ids(ids: torch.Tensor, num_classes: int | None, name: str) -> None:
    if num_classes is None:
        raise ValueError("the semantic label needs num_classes (or an estimator that returns class scores)")
    if ids.numel() and (int(ids.min()) < 0 or int(ids.max()) >= num_classes):
        bad = int(ids.min()) if int(ids.min()) < 0 else int(ids.max())
        raise ValueError(f"{name} contains class id {bad}; expected ids in [0, {num_classes}) (or ignore_index)")


def _dense_label(name: str, target: torch.Tensor) -> torch.Tensor:
    if not isinstance(target, torch.Tensor):
        raise TypeError(f"labels[{name!r}] must be a tensor, got {type(target).__name__}")
    channels = LABEL_CHANNELS[name]
    if target.ndim == 3 and channels == 1:
        target = target[:, None]  # (B, 1, H, W)
    if target.ndim != 4 or target.shape[1] != channels:
        raise ValueError(f"labels[{name!r}] must be (B, {channels}, H, W), got {tuple(target.shape)}")
    return target.float()


def _dense_prediction(name: str, prediction: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    if not isinstance(prediction, torch.Tensor):
        raise TypeError(f"the estimator's {name} prediction must be a tensor, got {type(prediction).__name__}")
    if prediction.ndim == 3 and target.shape[1] == 1:
        prediction = prediction[:, None]  # (B, 1, H, W)
    if prediction.ndim != 4 or prediction.shape[:2] != target.shape[:2]:
        raise ValueError(
            f"the estimator's {name} prediction must be (B, {target.shape[1]}, H, W) for B={target.shape[0]}, "
            f"got {tuple(prediction.shape)}"
        )
    prediction = prediction.to(target.device).float()
    if prediction.shape[-2:] != target.shape[-2:]:
        prediction = F.interpolate(prediction, size=tuple(target.shape[-2:]), mode="bilinear", align_corners=False)
    return prediction
