"""Frechet distance between two Gaussians: the formula behind FID.

``d^2 = ||mu1 - mu2||^2 + tr(S1) + tr(S2) - 2 tr((S1 S2)^(1/2))``

Two ways to get ``tr((S1 S2)^(1/2))``:

- ``method="sqrtm"`` (default) does what pytorch-fid does, so numbers match it: ``scipy.linalg.sqrtm``
  of ``S1 @ S2``; if that is not finite (singular covariances, common with fewer samples than
  feature dimensions) retry with ``eps * I`` added to both covariances; a complex result whose
  diagonal has an imaginary part above ``1e-3`` is an error, a smaller one is rounding and dropped.
- ``method="eigh"`` uses only symmetric eigendecompositions: ``tr((S1 S2)^(1/2)) =
  sum(sqrt(eig(S1^(1/2) S2 S1^(1/2))))``, where ``S1^(1/2) S2 S1^(1/2)`` is symmetric positive
  semi-definite and similar to ``S1 S2``. It never produces complex numbers and needs no offset.
"""

from __future__ import annotations

import warnings
from typing import Literal

import numpy as np
import torch

from .statistics import FeatureStatistics, as_float64

__all__ = ["frechet_distance", "fid_from_statistics"]

_IMAGINARY_TOLERANCE = 1e-3  # pytorch-fid's atol on the diagonal's imaginary part


def frechet_distance(
    mu1: np.ndarray | torch.Tensor,
    sigma1: np.ndarray | torch.Tensor,
    mu2: np.ndarray | torch.Tensor,
    sigma2: np.ndarray | torch.Tensor,
    *,
    method: Literal["sqrtm", "eigh"] = "sqrtm",
    eps: float = 1e-6,
) -> float:
    """Squared Frechet (2-Wasserstein) distance between ``N(mu1, sigma1)`` and ``N(mu2, sigma2)``.

    Computed in float64 whatever the input dtype.

    Args:
        mu1: ``(D,)`` mean of the first Gaussian.
        sigma1: ``(D, D)`` covariance of the first Gaussian (symmetric positive semi-definite).
        mu2: ``(D,)`` mean of the second Gaussian.
        sigma2: ``(D, D)`` covariance of the second Gaussian.
        method: ``"sqrtm"`` (pytorch-fid's algorithm) or ``"eigh"`` (see the module docstring).
        eps: Diagonal offset for the ``"sqrtm"`` retry when the first square root is not finite.

    Returns:
        The distance as a Python float (>= 0 up to rounding).

    Raises:
        ValueError: On mismatched shapes, non-finite inputs, an unknown method, or (``"sqrtm"``)
            a matrix square root with a significant imaginary part.

    Example:
        >>> import numpy as np
        >>> round(frechet_distance(np.zeros(2), np.eye(2), np.ones(2), 4 * np.eye(2)), 6)
        4.0
    """
    mu1, mu2 = _as_vector(mu1, "mu1"), _as_vector(mu2, "mu2")
    sigma1, sigma2 = _as_matrix(sigma1, "sigma1"), _as_matrix(sigma2, "sigma2")
    dim = mu1.shape[0]
    for name, value in (("mu2", mu2), ("sigma1", sigma1), ("sigma2", sigma2)):
        if value.shape[0] != dim:
            raise ValueError(f"{name} has shape {value.shape}, which does not match mu1's dimension {dim}")
    if method == "sqrtm":
        trace_sqrt = _trace_sqrt_product_sqrtm(sigma1, sigma2, eps=eps)
    elif method == "eigh":
        trace_sqrt = _trace_sqrt_product_eigh(sigma1, sigma2)
    else:
        raise ValueError(f"method must be 'sqrtm' or 'eigh', got {method!r}")
    diff = mu1 - mu2
    return float(diff @ diff + np.trace(sigma1) + np.trace(sigma2) - 2.0 * trace_sqrt)


def fid_from_statistics(
    real: FeatureStatistics, fake: FeatureStatistics, *, method: Literal["sqrtm", "eigh"] = "sqrtm"
) -> float:
    """Frechet distance between two sets of feature statistics of the same extractor.

    Args:
        real: Statistics of the real images.
        fake: Statistics of the generated images.
        method: See :func:`frechet_distance`.

    Returns:
        The FID (with the extractor both statistics name; see ``real.extractor``).

    Raises:
        ValueError: If the two were produced by different extractors or have different dimensions.

    Example:
        >>> real = FeatureStatistics(dim=3, extractor="demo"); real.update(torch.randn(50, 3))
        >>> fake = FeatureStatistics(dim=3, extractor="demo"); fake.update(torch.randn(50, 3) + 1)
        >>> fid_from_statistics(real, fake) > 0
        True
    """
    if real.extractor != fake.extractor:
        raise ValueError(
            f"statistics come from different feature extractors ({real.extractor!r} vs {fake.extractor!r}); "
            "their Frechet distance is meaningless"
        )
    if real.dim != fake.dim:
        raise ValueError(f"feature dimensions differ: real {real.dim}, fake {fake.dim}")
    return frechet_distance(real.mean, real.covariance, fake.mean, fake.covariance, method=method)


def _trace_sqrt_product_sqrtm(sigma1: np.ndarray, sigma2: np.ndarray, *, eps: float) -> float:
    """``tr(sqrtm(sigma1 @ sigma2))`` with pytorch-fid's offset retry and imaginary-part check."""
    import scipy.linalg  # imported here: scipy is only needed for this method

    def sqrtm(matrix: np.ndarray) -> np.ndarray:
        with warnings.catch_warnings():
            # Singular products are expected with few samples; finiteness is checked below.
            warnings.simplefilter("ignore", scipy.linalg.LinAlgWarning)
            return scipy.linalg.sqrtm(matrix)

    covmean = sqrtm(sigma1 @ sigma2)
    if not np.isfinite(covmean).all():
        offset = np.eye(sigma1.shape[0]) * eps
        covmean = sqrtm((sigma1 + offset) @ (sigma2 + offset))
        if not np.isfinite(covmean).all():
            raise ValueError(f"the matrix square root is not finite even with a diagonal offset of {eps}")
    if np.iscomplexobj(covmean):
        max_imaginary = float(np.abs(np.diagonal(covmean).imag).max())
        if max_imaginary > _IMAGINARY_TOLERANCE:
            raise ValueError(
                f"the matrix square root has an imaginary diagonal component of {max_imaginary:.3g} "
                f"(> {_IMAGINARY_TOLERANCE}); the covariances are likely not positive semi-definite; "
                "try method='eigh'"
            )
        covmean = covmean.real
    return float(np.trace(covmean))


def _trace_sqrt_product_eigh(sigma1: np.ndarray, sigma2: np.ndarray) -> float:
    """``tr((sigma1 sigma2)^(1/2))`` from symmetric eigendecompositions only."""
    sigma1 = (sigma1 + sigma1.T) / 2  # remove asymmetric rounding noise before eigh
    eigenvalues, eigenvectors = np.linalg.eigh(sigma1)
    # Clamp tiny negative eigenvalues (rounding) so that the square root is real.
    sqrt_sigma1 = (eigenvectors * np.sqrt(np.clip(eigenvalues, 0.0, None))) @ eigenvectors.T  # (D, D)
    inner = sqrt_sigma1 @ sigma2 @ sqrt_sigma1  # (D, D), symmetric PSD, similar to sigma1 @ sigma2
    inner = (inner + inner.T) / 2
    return float(np.sqrt(np.clip(np.linalg.eigvalsh(inner), 0.0, None)).sum())


def _as_vector(value: np.ndarray | torch.Tensor, name: str) -> np.ndarray:
    array = as_float64(value, name)
    if array.ndim != 1:
        raise ValueError(f"{name} must be a vector (D,), got shape {array.shape}")
    return array


def _as_matrix(value: np.ndarray | torch.Tensor, name: str) -> np.ndarray:
    array = as_float64(value, name)
    if array.ndim != 2 or array.shape[0] != array.shape[1]:
        raise ValueError(f"{name} must be a square matrix (D, D), got shape {array.shape}")
    return array
