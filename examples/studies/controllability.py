"""The studies' controllability scorer: per-scene label consistency of every generated image.

Each generated image goes through the label estimator; the re-estimated labels are scored
against the scene's true labels over the pixels where each label was given to the generator and
where it was missing (:mod:`examples.metrics.controllability`). A study keeps one figure or two
per label, per scene, for its paired tests:

- semantic: pixel accuracy; depth: AbsRel and delta < 1.25; normal: mean angular error;
  edge: F1; curvature: MAE.

Names are ``<label>.<split>.<figure>`` (``depth.missing.abs_rel``); a scene whose split has no
pixel gets NaN there, and the paired statistics leave such scenes out.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping

import numpy as np
import torch

from examples.metrics.controllability import HIGHER_IS_BETTER, SPLITS, ConsistencyAccumulator

__all__ = ["SCENE_FIGURES", "controllability_scorer", "controllability_directions"]

SCENE_FIGURES: dict[str, tuple[str, ...]] = {
    "semantic": ("pixel_accuracy",),
    "depth": ("abs_rel", "delta1"),
    "normal": ("angle_error",),
    "edge": ("f1",),
    "curvature": ("mae",),
}


def controllability_directions() -> dict[str, bool]:
    """``{"depth.given.abs_rel": False, ...}``: whether higher is better, for every scene metric."""
    return {
        f"{label}.{split}.{figure}": HIGHER_IS_BETTER[figure]
        for label, figures in SCENE_FIGURES.items()
        for split in SPLITS
        for figure in figures
    }


def controllability_scorer(
    estimator: Callable[[torch.Tensor], Mapping[str, torch.Tensor]],
    *,
    num_classes: int | None,
    ignore_index: int | None,
) -> Callable[[torch.Tensor, Mapping, Mapping[str, torch.Tensor]], dict[str, np.ndarray]]:
    """A per-scene scorer ``(fake, batch, masks) -> {name: (B,) values}`` for a study.

    ``masks`` are those the generator was called with: a label is *given* where its mask is
    True. Every row is scored over the same pixels (a model that does not take a label, such as
    the semantics-only one, is scored on it like the others), so rows compare pixel for pixel.

    Args:
        estimator: The label estimator (``images -> {label: prediction}``).
        num_classes: Semantic classes.
        ignore_index: Semantic id without a true class, or None.
    """

    def controllability(fake: torch.Tensor, batch: Mapping, masks: Mapping[str, torch.Tensor]) -> dict:
        accumulator = ConsistencyAccumulator(estimator, num_classes=num_classes, ignore_index=ignore_index)
        accumulator.update_from_batch(fake, batch, given=masks, ceiling=False)
        result = accumulator.compute(per_image=True)
        empty = np.full(fake.shape[0], np.nan)
        return {
            name: np.asarray(result.get(label, {}).get(split, {}).get(figure, empty), dtype=np.float64)
            for name, (label, split, figure) in _names().items()
        }

    return controllability


def _names() -> dict[str, tuple[str, str, str]]:
    return {
        f"{label}.{split}.{figure}": (label, split, figure)
        for label, figures in SCENE_FIGURES.items()
        for split in SPLITS
        for figure in figures
    }
