"""Bootstrap intervals and paired tests for comparing rows of a study.

A study measures every row (a model configuration) with several training seeds on the same
evaluation scenes, so a per-scene metric of a row is a matrix ``(seeds, scenes)``. Two sources
of noise matter: which seeds were trained, and which scenes were drawn. The two-level bootstrap
resamples both: scenes with replacement, **shared** between the two rows because scene ``j`` is
the same scene for both (paired), and seeds with replacement within each row independently
(different rows are trained independently) or shared when both matrices come from the same
models (a model measured under two conditions). A set-level metric (FID) is a ``(seeds, 1)``
matrix, for which only the seed level remains.

A claim gets a verdict only when the 95% interval of the difference excludes zero; otherwise it
is "undecided at this budget".
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import numpy as np
from scipy import stats

__all__ = ["Comparison", "UNDECIDED", "as_matrix", "bootstrap_mean", "compare", "verdict"]

UNDECIDED = "undecided at this budget"
RESAMPLES = 4000


def as_matrix(values, name: str = "values") -> np.ndarray:
    """``values`` as a float64 ``(seeds, scenes)`` matrix; a 1-D input is one value per seed.

    Raises:
        ValueError: Not 1-D or 2-D, or empty.

    Example:
        >>> as_matrix([1.0, 2.0]).shape
        (2, 1)
    """
    matrix = np.asarray(values, dtype=np.float64)
    if matrix.ndim == 1:
        matrix = matrix[:, None]  # (seeds,) -> (seeds, 1): a set-level metric
    if matrix.ndim != 2 or matrix.size == 0:
        raise ValueError(f"{name} must be a non-empty (seeds, scenes) matrix, got shape {matrix.shape}")
    return matrix


def _weights(rng: np.random.Generator, count: int, resamples: int) -> np.ndarray:
    """``(resamples, count)`` bootstrap weights: how often each item was drawn, over ``count``."""
    # Drawing ``count`` items with replacement gives multinomial counts.
    return rng.multinomial(count, np.full(count, 1.0 / count), size=resamples) / count


def _resampled_means(matrix: np.ndarray, seed_weights: np.ndarray, scene_weights: np.ndarray) -> np.ndarray:
    """``(resamples,)`` means of ``matrix (S, N)`` under seed ``(R, S)`` and scene ``(R, N)`` weights."""
    return np.einsum("rs,sn,rn->r", seed_weights, matrix, scene_weights)


def _complete_scenes(*matrices: np.ndarray) -> list[np.ndarray]:
    """The matrices restricted to the scenes where every value is finite (a pair needs both sides)."""
    keep = np.logical_and.reduce([np.isfinite(m).all(axis=0) for m in matrices])
    return [m[:, keep] for m in matrices]


def bootstrap_mean(values, *, resamples: int = RESAMPLES, seed: int = 0) -> dict:
    """Mean of a row's ``(seeds, scenes)`` values with its two-level bootstrap 95% interval.

    Scenes with a non-finite value in any seed are left out.

    Args:
        values: ``(seeds, scenes)`` or ``(seeds,)`` (a set-level metric).
        resamples: Bootstrap resamples.
        seed: Seed of the resampling.

    Returns:
        ``{"mean", "low", "high", "seeds", "scenes"}``; the bounds are None with a single seed
        and a single scene (nothing to resample), everything None without a finite scene.

    Example:
        >>> r = bootstrap_mean([[1.0, 2.0, 3.0], [2.0, 3.0, 4.0]])
        >>> r["mean"], r["low"] <= 2.5 <= r["high"]
        (2.5, True)
    """
    (matrix,) = _complete_scenes(as_matrix(values))
    seeds, scenes = matrix.shape
    if scenes == 0:
        return {"mean": None, "low": None, "high": None, "seeds": seeds, "scenes": 0}
    mean = float(matrix.mean())
    if seeds * scenes == 1:
        return {"mean": mean, "low": None, "high": None, "seeds": 1, "scenes": 1}
    rng = np.random.default_rng(seed)
    means = _resampled_means(matrix, _weights(rng, seeds, resamples), _weights(rng, scenes, resamples))
    low, high = np.percentile(means, [2.5, 97.5])
    return {"mean": mean, "low": float(low), "high": float(high), "seeds": seeds, "scenes": scenes}


@dataclass(frozen=True)
class Comparison:
    """Row A against row B on one metric: ``difference = mean(A) - mean(B)``.

    Attributes:
        difference: Difference of the means (over seeds and scenes).
        low, high: Its bootstrap 95% interval (None when neither level can be resampled).
        p_value: Two-sided p-value of the test named by ``test`` (None when it cannot be run).
        test: ``"wilcoxon signed-rank over scenes"`` (per-scene metrics, on seed-averaged
            differences) or ``"mann-whitney u over seeds"`` (set-level metrics).
        scenes: Scenes used (finite in both rows).
        seeds_a, seeds_b: Seeds of each row.
    """

    difference: float | None
    low: float | None
    high: float | None
    p_value: float | None
    test: str
    scenes: int
    seeds_a: int
    seeds_b: int

    def to_dict(self) -> dict:
        return asdict(self)


def compare(a, b, *, paired_seeds: bool = False, resamples: int = RESAMPLES, seed: int = 0) -> Comparison:
    """Compare two rows measured on the same scenes: difference of means, 95% interval, test.

    Args:
        a: Row A, ``(seeds_a, scenes)``, or ``(seeds_a,)`` for a set-level metric.
        b: Row B, ``(seeds_b, scenes)`` with the same scenes in the same order.
        paired_seeds: Both rows come from the same models (seed ``i`` of A is seed ``i`` of B),
            so seeds are resampled jointly; otherwise independently.
        resamples: Bootstrap resamples.
        seed: Seed of the resampling.

    Returns:
        A :class:`Comparison`.

    Raises:
        ValueError: The rows have different numbers of scenes, or different seed counts with
            ``paired_seeds``.

    Example:
        >>> rng = np.random.default_rng(0)
        >>> scenes = rng.normal(size=200)  # what makes a scene easy or hard, shared by both rows
        >>> a = scenes + 1.0 + 0.1 * rng.normal(size=(5, 200))
        >>> b = scenes + 0.1 * rng.normal(size=(5, 200))
        >>> c = compare(a, b)
        >>> round(c.difference, 1), c.low > 0, c.p_value < 0.001
        (1.0, True, True)
    """
    a, b = as_matrix(a, "a"), as_matrix(b, "b")
    if a.shape[1] != b.shape[1]:
        raise ValueError(f"the rows must be measured on the same scenes: {a.shape[1]} against {b.shape[1]}")
    if paired_seeds and a.shape[0] != b.shape[0]:
        raise ValueError(f"paired seeds need as many seeds in both rows: {a.shape[0]} against {b.shape[0]}")
    a, b = _complete_scenes(a, b)
    scenes = a.shape[1]
    set_level = scenes == 1
    test = "mann-whitney u over seeds" if set_level else "wilcoxon signed-rank over scenes"
    if scenes == 0:
        return Comparison(None, None, None, None, test, 0, a.shape[0], b.shape[0])
    difference = float(a.mean() - b.mean())
    low = high = None
    if max(a.shape[0], b.shape[0], scenes) > 1:
        rng = np.random.default_rng(seed)
        scene_weights = _weights(rng, scenes, resamples)  # (R, N): shared, the scenes are paired
        seeds_a = _weights(rng, a.shape[0], resamples)  # (R, S_a)
        seeds_b = seeds_a if paired_seeds else _weights(rng, b.shape[0], resamples)  # (R, S_b)
        differences = _resampled_means(a, seeds_a, scene_weights) - _resampled_means(b, seeds_b, scene_weights)
        low, high = (float(x) for x in np.percentile(differences, [2.5, 97.5]))
    return Comparison(difference, low, high, _p_value(a, b, set_level), test, scenes, a.shape[0], b.shape[0])


def _p_value(a: np.ndarray, b: np.ndarray, set_level: bool) -> float | None:
    if set_level:
        if min(a.shape[0], b.shape[0]) < 2:
            return None
        return float(stats.mannwhitneyu(a[:, 0], b[:, 0], alternative="two-sided").pvalue)
    per_scene = a.mean(axis=0) - b.mean(axis=0)  # (N,): seed-averaged paired differences
    if not np.any(per_scene != 0):
        return 1.0  # identical rows: nothing to test (scipy refuses all-zero differences)
    p = float(stats.wilcoxon(per_scene).pvalue)
    return p if math.isfinite(p) else None


def verdict(comparison: Comparison, *, higher_is_better: bool | None) -> str:
    """``"holds"`` (A better), ``"reversed"`` (B better) or :data:`UNDECIDED`.

    Only an interval that excludes zero decides, and only with at least two seeds in each row:
    one seed says nothing about how much another training run would differ, so its interval
    (scenes only) would overstate what is known. A metric without a known direction
    (``higher_is_better=None``) only says which row is higher.

    Example:
        >>> c = Comparison(-2.0, -3.0, -1.0, 0.01, "wilcoxon signed-rank over scenes", 10, 5, 5)
        >>> verdict(c, higher_is_better=False), verdict(c, higher_is_better=True)
        ('holds', 'reversed')
    """
    if min(comparison.seeds_a, comparison.seeds_b) < 2 or comparison.low is None or comparison.high is None:
        return UNDECIDED
    if comparison.low <= 0 <= comparison.high:
        return UNDECIDED
    a_higher = comparison.low > 0
    if higher_is_better is None:
        return "A higher" if a_higher else "B higher"
    return "holds" if a_higher == higher_is_better else "reversed"
