"""Bootstrap intervals and tests over seeds for comparing rows of a study.

A study measures every row (a model configuration) with several training seeds on the same
evaluation scenes, so a per-scene metric of a row is a matrix ``(seeds, scenes)``. Two sources
of noise matter: which seeds were trained, and which scenes were drawn. The two-level bootstrap
resamples both: scenes with replacement, **shared** between the two rows because scene ``j`` is
the same scene for both (paired), and seeds with replacement within each row independently
(different rows are trained independently) or shared when both matrices come from the same
models (a model measured under two conditions). A set-level metric (FID) is a ``(seeds, 1)``
matrix, for which only the seed level remains.

The training seed is the unit of replication: a p-value says how surprising the difference would
be if another set of training runs were drawn, so it comes from a t-test over the per-seed means
(paired when the rows share their seeds, Welch's otherwise), never from a test over scenes, whose
scenes are those of the few models trained.

Rows trained with the same seed see the same batches in the same order and the same training
masks (the studies draw both from the seed), so their per-seed results are correlated. Pairing
the seeds (``paired_seeds=True``: seed ``i`` of A resampled together with seed ``i`` of B, and a
paired t-test) removes that shared variance; it is valid because the pairing is fixed by the
design before any run, and it gives tighter intervals than resampling each row's seeds on its own.

*Few seeds.* A percentile bootstrap over a handful of seeds is too narrow: with two seeds it
can only draw three seed means, and an interval that excludes zero can sit beside a t-test over
the same seeds with p = 0.25. So every interval here is the wider of the two-level bootstrap
interval (which also carries the scenes' sampling) and the t-interval over the per-seed means
(paired differences, or Welch's), whose Student quantile pays for every missing seed.

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
    low, high = _widest(np.percentile(means, [2.5, 97.5]), _t_interval(matrix.mean(axis=1)))
    return {"mean": mean, "low": low, "high": high, "seeds": seeds, "scenes": scenes}


def _t_interval(values: np.ndarray) -> tuple[float, float] | None:
    """Student's 95% interval of the mean of ``values (S,)`` (per-seed means or paired differences)."""
    if len(values) < 2:
        return None
    half = stats.t.ppf(0.975, len(values) - 1) * values.std(ddof=1) / math.sqrt(len(values))
    return float(values.mean() - half), float(values.mean() + half)


def _welch_interval(a: np.ndarray, b: np.ndarray) -> tuple[float, float] | None:
    """Welch's 95% interval of ``mean(a) - mean(b)`` for independent per-seed means ``(S_a,)``, ``(S_b,)``."""
    if min(len(a), len(b)) < 2:
        return None
    va, vb = a.var(ddof=1) / len(a), b.var(ddof=1) / len(b)
    if va + vb == 0:
        return float(a.mean() - b.mean()), float(a.mean() - b.mean())
    dof = (va + vb) ** 2 / (va**2 / (len(a) - 1) + vb**2 / (len(b) - 1))
    half = stats.t.ppf(0.975, dof) * math.sqrt(va + vb)
    return float(a.mean() - b.mean() - half), float(a.mean() - b.mean() + half)


def _widest(bootstrap, t_interval) -> tuple[float, float]:
    """The union of the bootstrap interval and the t-interval over seeds (None: bootstrap alone)."""
    low, high = (float(x) for x in bootstrap)
    if t_interval is None:
        return low, high
    return min(low, t_interval[0]), max(high, t_interval[1])


@dataclass(frozen=True)
class Comparison:
    """Row A against row B on one metric: ``difference = mean(A) - mean(B)``.

    Attributes:
        difference: Difference of the means (over seeds and scenes).
        low, high: Its 95% interval: the wider of the two-level bootstrap interval and the
            t-interval over seeds (None when neither level can be resampled).
        p_value: Two-sided p-value of the test named by ``test``, over the per-seed means (None
            when it cannot be run: fewer than two seeds, or no spread to test against).
        test: ``"paired t over seeds"`` (rows sharing their seeds) or ``"welch t over seeds"``.
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
        paired_seeds: Seed ``i`` of A is paired with seed ``i`` of B (the same models measured
            under two conditions, or rows trained with the same seeds, batches and masks), so
            seeds are resampled jointly and the test is a paired t-test; otherwise seeds are
            resampled independently per row and the test is Welch's t-test.
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
        >>> c = compare(a, b, paired_seeds=True)
        >>> round(c.difference, 1), c.low > 0, c.p_value < 0.001, c.test
        (1.0, True, True, 'paired t over seeds')
    """
    a, b = as_matrix(a, "a"), as_matrix(b, "b")
    if a.shape[1] != b.shape[1]:
        raise ValueError(f"the rows must be measured on the same scenes: {a.shape[1]} against {b.shape[1]}")
    if paired_seeds and a.shape[0] != b.shape[0]:
        raise ValueError(f"paired seeds need as many seeds in both rows: {a.shape[0]} against {b.shape[0]}")
    a, b = _complete_scenes(a, b)
    scenes = a.shape[1]
    test = "paired t over seeds" if paired_seeds else "welch t over seeds"
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
        seed_a, seed_b = a.mean(axis=1), b.mean(axis=1)  # (S_a,), (S_b,)
        over_seeds = _t_interval(seed_a - seed_b) if paired_seeds else _welch_interval(seed_a, seed_b)
        low, high = _widest(np.percentile(differences, [2.5, 97.5]), over_seeds)
    p_value = _seed_p_value(a.mean(axis=1), b.mean(axis=1), paired=paired_seeds)
    return Comparison(difference, low, high, p_value, test, scenes, a.shape[0], b.shape[0])


def _seed_p_value(seeds_a: np.ndarray, seeds_b: np.ndarray, *, paired: bool) -> float | None:
    """Two-sided t-test over the per-seed means ``(S_a,)`` and ``(S_b,)``; None when untestable."""
    if min(len(seeds_a), len(seeds_b)) < 2:
        return None
    if paired:
        differences = seeds_a - seeds_b  # (S,)
        if not np.any(differences != 0):
            return 1.0  # identical rows: nothing to test
        p = stats.ttest_rel(seeds_a, seeds_b).pvalue
    else:
        if np.array_equal(np.unique(seeds_a), np.unique(seeds_b)) and len(np.unique(seeds_a)) == 1:
            return 1.0  # both rows the same constant
        p = stats.ttest_ind(seeds_a, seeds_b, equal_var=False).pvalue
    p = float(p)
    return p if math.isfinite(p) else None  # no spread at all: a t-test has nothing to say


def verdict(comparison: Comparison, *, higher_is_better: bool | None) -> str:
    """``"holds"`` (A better), ``"reversed"`` (B better) or :data:`UNDECIDED`.

    Only an interval that excludes zero decides, and only with at least two seeds in each row:
    one seed says nothing about how much another training run would differ, so its interval
    (scenes only) would overstate what is known. A metric without a known direction
    (``higher_is_better=None``) only says which row is higher.

    Example:
        >>> c = Comparison(-2.0, -3.0, -1.0, 0.01, "paired t over seeds", 10, 5, 5)
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
