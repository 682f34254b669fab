"""How much of a scene's look its labels predict: per-pixel regressors from label neighbourhoods.

Three per-pixel predictors of the RGB value of a pixel, each fitted on some scenes and scored by
R^2 on other (held-out) scenes:

- ``semantic``: a function of the 3x3 neighbourhood of the semantic label only.
- ``additive``: one function per label of that label's 3x3 neighbourhood, summed
  (``f_semantic + f_depth + f_normal + f_edge + f_curvature``): anything each label says alone,
  but no interaction between labels.
- ``interaction``: one function of the 3x3 neighbourhoods of all labels jointly.

Each function is a :class:`RandomFeatureRidge`: a one-hidden-layer ReLU network whose hidden
layer is random and fixed and whose output layer is ridge regression, solved in closed form (so
a fit is deterministic and takes seconds). The interaction model has as many random features as
the additive model's five functions together. R^2 is ``1 - SSE / SST`` over all held-out pixels
and the three colour channels, with SST taken around the held-out pixels' mean colour.

Labels enter as fixed encodings (:func:`label_features`): the semantic class one-hot, depth in
units of 5 m plus its presence mask, the camera-frame normal, the edge strength and
``tanh(k / 4 m^-1)`` of both principal curvatures; missing values are 0. The neighbourhood is
taken with replicated borders.

Example:
    >>> from examples.datasets import SyntheticDataset
    >>> ds = SyntheticDataset(num_samples=6, resolution=16, seed=0)
    >>> scores = predictability([ds[i] for i in range(4)], [ds[4], ds[5]], num_features=32)
    >>> sorted(scores)
    ['additive', 'interaction', 'semantic']
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import torch
import torch.nn.functional as F

__all__ = ["LABEL_GROUPS", "PREDICTORS", "label_features", "neighbourhood", "predictability"]

LABEL_GROUPS = ("semantic", "depth", "normal", "edge", "curvature")
"""The labels the predictors read, one group of input features each."""

PREDICTORS = ("semantic", "additive", "interaction")
"""The predictors that :func:`predictability` scores."""

_DEPTH_UNIT = 5.0  # metres
_CURVATURE_UNIT = 4.0  # 1/m; tanh saturates the 20 1/m of the smallest objects


def label_features(sample: Mapping, num_classes: int) -> dict[str, torch.Tensor]:
    """Per-pixel encodings of every label of one sample.

    Args:
        sample: A :class:`~examples.datasets.SyntheticDataset` sample with all five labels.
        num_classes: Number of semantic classes (for the one-hot encoding).

    Returns:
        ``{label: (C, H, W) float32}`` in :data:`LABEL_GROUPS` order with C = ``num_classes``,
        2 (depth, presence), 3, 1 and 2.

    Raises:
        KeyError: The sample lacks one of the labels.
    """
    labels, masks = sample["labels"], sample["masks"]
    missing = [name for name in LABEL_GROUPS if name not in labels]
    if missing:
        raise KeyError(f"the sample lacks label(s) {missing}; predictability needs all of {list(LABEL_GROUPS)}")
    semantic = F.one_hot(labels["semantic"].long(), num_classes).permute(2, 0, 1).float()  # (H, W, K) -> (K, H, W)
    present = masks["depth"].float()[None]
    depth = torch.cat([labels["depth"].float() * present / _DEPTH_UNIT, present])
    curvature = torch.tanh(labels["curvature"].float() / _CURVATURE_UNIT)
    return {
        "semantic": semantic,
        "depth": depth,
        "normal": labels["normal"].float(),
        "edge": labels["edge"].float(),
        "curvature": curvature,
    }


def neighbourhood(x: torch.Tensor, size: int = 3) -> torch.Tensor:
    """The ``size x size`` neighbourhood of every pixel, with replicated borders.

    Args:
        x: ``(C, H, W)`` features.
        size: Odd window size.

    Returns:
        ``(H * W, C * size**2)`` one row per pixel in row-major order.

    Raises:
        ValueError: An even or non-positive ``size``.
    """
    if size < 1 or size % 2 == 0:
        raise ValueError(f"size must be a positive odd int, got {size!r}")
    pad = size // 2
    padded = F.pad(x[None], (pad, pad, pad, pad), mode="replicate") if pad else x[None]
    patches = F.unfold(padded, size)  # (1, C * size**2, H * W)
    return patches[0].T.contiguous()


def _pixels(samples: Sequence[Mapping], groups: Sequence[str], num_classes: int) -> tuple[torch.Tensor, list[int]]:
    """``(N, D)`` neighbourhood features of the chosen groups over all pixels, and each group's width."""
    rows, widths = [], []
    for sample in samples:
        features = label_features(sample, num_classes)
        parts = [neighbourhood(features[g]) for g in groups]
        widths = [p.shape[1] for p in parts]
        rows.append(torch.cat(parts, dim=1))
    return torch.cat(rows), widths


def _colours(samples: Sequence[Mapping]) -> torch.Tensor:
    """``(N, 3)`` RGB of every pixel, in the order of :func:`_pixels`."""
    return torch.cat([s["image"].float().reshape(3, -1).T for s in samples])  # (3, H, W) -> (H*W, 3)


def r2_score(y: torch.Tensor, prediction: torch.Tensor) -> float:
    """``1 - SSE / SST`` pooled over pixels and channels, SST around the per-channel mean of ``y``."""
    sse = (y - prediction).pow(2).sum()
    sst = (y - y.mean(dim=0)).pow(2).sum()
    return float(1.0 - sse / sst)


class RandomFeatureRidge:
    """A one-hidden-layer network whose hidden layer is random and fixed, output fitted in closed form.

    The features of an input row ``x`` are ``[1, x, relu(x W + b)]`` with ``W ~ N(0, 1 / D_in)``
    and ``b ~ N(0, 1)`` (inputs are standardised with the training mean and deviation); the output
    layer is ridge regression on them. With ``groups``, each group of input columns gets its own
    random features and the model is a sum ``sum_g f_g(x_g)``, fitted by backfitting (exact block
    coordinate descent on the joint ridge objective).

    Args:
        num_features: Random ReLU features per group.
        ridge: Ridge penalty, relative to the mean diagonal of each group's Gram matrix.
        seed: Seed of the random layer.
        sweeps: Backfitting sweeps over the groups.

    Example:
        >>> x = torch.randn(500, 4)
        >>> y = torch.stack([x[:, 0] * x[:, 1], x[:, 2], x[:, 3].abs()], dim=1)
        >>> model = RandomFeatureRidge(256).fit(x, y)
        >>> model.predict(x).shape
        torch.Size([500, 3])
    """

    def __init__(self, num_features: int = 1024, *, ridge: float = 1e-3, seed: int = 0, sweeps: int = 12) -> None:
        if num_features < 1 or not ridge > 0:
            raise ValueError(f"need num_features >= 1 and ridge > 0, got {num_features} and {ridge}")
        self.num_features, self.ridge, self.seed, self.sweeps = num_features, ridge, seed, sweeps

    def _features(self, x: torch.Tensor) -> list[torch.Tensor]:
        """One ``(N, 1 + D_g + num_features)`` feature matrix per group."""
        out = []
        for (lo, hi), (w, b) in zip(self._slices, self._layers, strict=True):
            z = (x[:, lo:hi] - self._mean[lo:hi]) / self._std[lo:hi]
            out.append(torch.cat([torch.ones(z.shape[0], 1), z, torch.relu(z @ w + b)], dim=1))
        return out

    def fit(self, x: torch.Tensor, y: torch.Tensor, groups: Sequence[int] | None = None) -> RandomFeatureRidge:
        """Fit on ``(N, D_in)`` inputs and ``(N, K)`` targets.

        Args:
            x: Inputs.
            y: Targets.
            groups: Column counts of consecutive input groups (summing to ``D_in``) for an
                additive model; None for one joint function.

        Returns:
            ``self``.

        Raises:
            ValueError: ``groups`` that do not add up to the number of columns.
        """
        widths = [x.shape[1]] if groups is None else list(groups)
        if sum(widths) != x.shape[1]:
            raise ValueError(f"groups {widths} do not add up to the {x.shape[1]} input columns")
        ends = torch.tensor(widths).cumsum(0).tolist()
        self._slices = list(zip([0, *ends[:-1]], ends, strict=True))
        self._mean, self._std = x.mean(0), x.std(0).clamp_min(1e-6)
        generator = torch.Generator().manual_seed(self.seed)
        self._layers = [
            (
                torch.randn(w, self.num_features, generator=generator) / w**0.5,
                torch.randn(self.num_features, generator=generator),
            )
            for w in widths
        ]
        phis = self._features(x)
        factors = []
        for phi in phis:
            gram = phi.T @ phi
            penalty = self.ridge * gram.diagonal().mean() * torch.eye(gram.shape[0])
            factors.append(torch.linalg.cholesky(gram + penalty))
        self._coef = [torch.zeros(phi.shape[1], y.shape[1]) for phi in phis]
        parts = [torch.zeros_like(y) for _ in phis]
        for _ in range(self.sweeps if len(phis) > 1 else 1):
            for g, phi in enumerate(phis):
                residual = y - (sum(parts) - parts[g])  # what the other groups leave unexplained
                self._coef[g] = torch.cholesky_solve(phi.T @ residual, factors[g])
                parts[g] = phi @ self._coef[g]
        return self

    def predict(self, x: torch.Tensor) -> torch.Tensor:
        """``(N, K)`` predictions for ``(N, D_in)`` inputs."""
        return sum(phi @ c for phi, c in zip(self._features(x), self._coef, strict=True))


def predictability(
    train: Sequence[Mapping],
    test: Sequence[Mapping],
    *,
    num_classes: int = 9,
    num_features: int = 512,
    ridge: float = 1e-3,
    max_train_pixels: int | None = None,
    seed: int = 0,
) -> dict[str, float]:
    """Held-out R^2 of the :data:`PREDICTORS`, fitted on ``train`` and scored on ``test``.

    Args:
        train: Samples to fit on (dicts with ``image``, ``labels`` and ``masks`` of all five labels).
        test: Held-out samples (other scenes) to score on.
        num_classes: Number of semantic classes.
        num_features: Random features per label: the semantic model has ``num_features``, the
            additive model ``num_features`` for each of its five functions and the interaction
            model ``5 * num_features`` in its one joint function (the same total as the additive one).
        ridge: Ridge penalty, relative to the mean diagonal of the Gram matrix.
        max_train_pixels: Fit on a random subset of this many training pixels (None: all).
        seed: Seed of the random features and of the pixel subset.

    Returns:
        ``{"semantic": r2, "additive": r2, "interaction": r2}``.

    Raises:
        ValueError: An empty ``train`` or ``test``.
    """
    if not train or not test:
        raise ValueError(f"train and test need at least one sample each, got {len(train)} and {len(test)}")
    y_train, y_test = _colours(train), _colours(test)
    keep = torch.arange(y_train.shape[0])
    if max_train_pixels is not None and max_train_pixels < y_train.shape[0]:
        keep = torch.randperm(y_train.shape[0], generator=torch.Generator().manual_seed(seed))[:max_train_pixels]
    y_train = y_train[keep]
    scores = {}
    for name in PREDICTORS:
        groups = ("semantic",) if name == "semantic" else LABEL_GROUPS
        x_train, widths = _pixels(train, groups, num_classes)
        x_test, _ = _pixels(test, groups, num_classes)
        features = num_features * (len(LABEL_GROUPS) if name == "interaction" else 1)
        model = RandomFeatureRidge(features, ridge=ridge, seed=seed)
        model.fit(x_train[keep], y_train, widths if name == "additive" else None)
        scores[name] = r2_score(y_test, model.predict(x_test))
    return scores
