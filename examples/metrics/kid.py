"""Kernel Inception Distance (Binkowski et al., 2018): unbiased MMD^2 with a cubic polynomial kernel.

KID compares the same features as FID but, unlike FID, has an unbiased estimator, so it is usable
on small sets. Following the KID paper and torchmetrics' defaults, it is averaged over random
subsets: ``subsets=100`` draws of ``subset_size=1000`` real and fake features (each draw without
replacement), kernel ``k(x, y) = (gamma x.y + coef0)^degree`` with ``degree=3``,
``gamma=1/D``, ``coef0=1``; the reported std is the population std (``ddof=0``) over subsets,
as torchmetrics does.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

__all__ = ["KIDResult", "kernel_inception_distance", "polynomial_kernel", "unbiased_mmd2"]


@dataclass(frozen=True)
class KIDResult:
    """KID over random subsets.

    Attributes:
        mean: Mean of the per-subset unbiased MMD^2 estimates.
        std: Population standard deviation of the per-subset estimates.
        subsets: Number of subsets drawn.
        subset_size: Features per subset (of each of real and fake).
    """

    mean: float
    std: float
    subsets: int
    subset_size: int


def polynomial_kernel(
    x: torch.Tensor, y: torch.Tensor, *, degree: int = 3, gamma: float | None = None, coef0: float = 1.0
) -> torch.Tensor:
    """Polynomial kernel matrix ``(gamma x_i.y_j + coef0)^degree``.

    Args:
        x: ``(N, D)`` features.
        y: ``(M, D)`` features.
        degree: Kernel degree.
        gamma: Scale of the dot product; ``None`` means ``1 / D``.
        coef0: Additive constant.

    Returns:
        ``(N, M)`` kernel matrix in the dtype of the inputs.

    Example:
        >>> polynomial_kernel(torch.ones(2, 4), torch.zeros(3, 4)).shape
        torch.Size([2, 3])
    """
    if gamma is None:
        gamma = 1.0 / x.shape[1]
    return (gamma * (x @ y.T) + coef0) ** degree  # (N, M)


def unbiased_mmd2(k_xx: torch.Tensor, k_yy: torch.Tensor, k_xy: torch.Tensor) -> torch.Tensor:
    """Unbiased estimate of MMD^2 from the three kernel matrices of two equal-size samples.

    ``sum_{i!=j} k(x_i, x_j) / (m(m-1)) + sum_{i!=j} k(y_i, y_j) / (m(m-1)) - 2 sum_{i,j} k(x_i, y_j) / m^2``

    Args:
        k_xx: ``(m, m)`` kernel among the first sample.
        k_yy: ``(m, m)`` kernel among the second sample.
        k_xy: ``(m, m)`` kernel between the samples.

    Returns:
        A scalar tensor; it can be slightly negative when the distributions are equal.

    Raises:
        ValueError: If the matrices are not all ``(m, m)`` with ``m >= 2``.

    Example:
        >>> x = torch.randn(50, 3, dtype=torch.float64)
        >>> y = torch.randn(50, 3, dtype=torch.float64) + 3
        >>> k = polynomial_kernel
        >>> float(unbiased_mmd2(k(x, x), k(y, y), k(x, y))) > 0
        True
    """
    m = k_xx.shape[0]
    if m < 2 or any(k.shape != (m, m) for k in (k_xx, k_yy, k_xy)):
        raise ValueError(
            f"expected three (m, m) kernel matrices with m >= 2, got {tuple(k_xx.shape)}, "
            f"{tuple(k_yy.shape)}, {tuple(k_xy.shape)}"
        )
    off_diagonal_sum_xx = k_xx.sum() - k_xx.diagonal().sum()
    off_diagonal_sum_yy = k_yy.sum() - k_yy.diagonal().sum()
    return (off_diagonal_sum_xx + off_diagonal_sum_yy) / (m * (m - 1)) - 2.0 * k_xy.sum() / (m * m)


def kernel_inception_distance(
    real_features: torch.Tensor | np.ndarray,
    fake_features: torch.Tensor | np.ndarray,
    *,
    subsets: int = 100,
    subset_size: int | None = 1000,
    degree: int = 3,
    gamma: float | None = None,
    coef0: float = 1.0,
    seed: int = 0,
) -> KIDResult:
    """KID between two feature sets: mean and std of unbiased MMD^2 over random subsets.

    Computed in float64. Subsets are drawn with a ``torch.Generator`` seeded by ``seed``, so the
    result is reproducible.

    Args:
        real_features: ``(N_real, D)`` features of real images.
        fake_features: ``(N_fake, D)`` features of generated images.
        subsets: Number of random subsets.
        subset_size: Features per subset from each set; ``None`` means ``min(1000, N_real, N_fake)``.
        degree: Polynomial kernel degree.
        gamma: Kernel scale; ``None`` means ``1 / D``.
        coef0: Kernel constant.
        seed: Seed of the subset sampling.

    Returns:
        A :class:`KIDResult`.

    Raises:
        ValueError: On mismatched feature dimensions, non-finite values, ``subsets < 1``, or a
            ``subset_size`` below 2 or above either set's size.

    Example:
        >>> real, fake = torch.randn(64, 8), torch.randn(64, 8) + 2
        >>> kernel_inception_distance(real, fake, subsets=10, subset_size=32).mean > 0
        True
    """
    real = _as_feature_matrix(real_features, "real_features")
    fake = _as_feature_matrix(fake_features, "fake_features")
    if real.shape[1] != fake.shape[1]:
        raise ValueError(f"feature dimensions differ: real {real.shape[1]}, fake {fake.shape[1]}")
    if subsets < 1:
        raise ValueError(f"subsets must be >= 1, got {subsets}")
    if subset_size is None:
        subset_size = min(1000, real.shape[0], fake.shape[0])
    if subset_size < 2 or subset_size > min(real.shape[0], fake.shape[0]):
        raise ValueError(
            f"subset_size={subset_size} must be between 2 and the smaller set size "
            f"(real {real.shape[0]}, fake {fake.shape[0]}); pass subset_size=None to use min(1000, sizes)"
        )
    generator = torch.Generator().manual_seed(seed)
    scores = torch.empty(subsets, dtype=torch.float64)
    for index in range(subsets):
        real_subset = real[torch.randperm(real.shape[0], generator=generator)[:subset_size]]  # (m, D)
        fake_subset = fake[torch.randperm(fake.shape[0], generator=generator)[:subset_size]]  # (m, D)
        kernel = {"degree": degree, "gamma": gamma, "coef0": coef0}
        scores[index] = unbiased_mmd2(
            polynomial_kernel(real_subset, real_subset, **kernel),
            polynomial_kernel(fake_subset, fake_subset, **kernel),
            polynomial_kernel(real_subset, fake_subset, **kernel),
        )
    return KIDResult(
        mean=float(scores.mean()), std=float(scores.std(correction=0)), subsets=subsets, subset_size=subset_size
    )


def _as_feature_matrix(value: torch.Tensor | np.ndarray, name: str) -> torch.Tensor:
    if isinstance(value, np.ndarray):
        value = torch.from_numpy(value)
    if not isinstance(value, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor or numpy array, got {type(value).__name__}")
    if value.ndim != 2:
        raise ValueError(f"{name} must have shape (N, D), got {tuple(value.shape)}")
    value = value.detach().to("cpu", torch.float64)
    if not torch.isfinite(value).all():
        raise ValueError(f"{name} contains NaN or infinite values")
    return value
