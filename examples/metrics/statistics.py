"""Streaming mean and covariance of feature vectors, accumulated in float64 over batches.

FID needs the mean and covariance of tens of thousands of 2048-d feature vectors. Keeping all of
them is wasteful, and the textbook ``sum(x x^T) - n mu mu^T`` formula loses precision when the
mean is large compared with the spread. :class:`FeatureStatistics` instead merges per-batch
centred moments with Chan et al.'s parallel update, in float64, so the result equals
``np.cov(all_features, rowvar=False)`` to rounding error whatever the batch sizes.
"""

from __future__ import annotations

import os

import numpy as np
import torch

__all__ = ["FeatureStatistics"]


class FeatureStatistics:
    """Running mean and (unbiased) covariance of ``D``-dimensional features.

    Args:
        dim: The feature dimension ``D``.
        extractor: Name of the feature extractor that produced the features; FIDs are only
            meaningful between statistics of the same extractor, and it is written to saved files.
        keep_features: Also keep every feature vector (float32, on CPU), e.g. for KID.

    Attributes:
        count: Number of feature vectors seen so far.

    Raises:
        ValueError: If ``dim`` is not a positive int.

    Example:
        >>> stats = FeatureStatistics(dim=4, extractor="demo")
        >>> stats.update(torch.randn(10, 4))
        >>> stats.update(torch.randn(6, 4))
        >>> stats.count, stats.mean.shape, stats.covariance.shape
        (16, (4,), (4, 4))
    """

    def __init__(self, dim: int, *, extractor: str = "unnamed", keep_features: bool = False) -> None:
        if isinstance(dim, bool) or not isinstance(dim, int) or dim < 1:
            raise ValueError(f"dim must be a positive int, got {dim!r}")
        self.dim = dim
        self.extractor = str(extractor)
        self.keep_features = keep_features
        self.count = 0
        self._mean = np.zeros(dim, dtype=np.float64)
        self._scatter = np.zeros((dim, dim), dtype=np.float64)  # sum of centred outer products
        self._features: list[torch.Tensor] = []
        self._frozen = False  # loaded from a file without a sample count

    def __repr__(self) -> str:
        return f"FeatureStatistics(dim={self.dim}, extractor={self.extractor!r}, count={self.count})"

    def update(self, features: torch.Tensor | np.ndarray) -> None:
        """Add a batch of feature vectors.

        Args:
            features: ``(B, D)`` floats (any float dtype; accumulated in float64).

        Raises:
            ValueError: If the shape is not ``(B, D)``, a value is NaN or infinite, or these
                statistics were loaded without a sample count and cannot be extended.
        """
        if self._frozen:
            raise ValueError("these statistics were loaded without a sample count; they cannot be updated")
        batch = _as_float64_matrix(features, dim=self.dim)
        if self.keep_features:
            self._features.append(torch.from_numpy(batch.astype(np.float32)))
        n_batch = batch.shape[0]
        if n_batch == 0:
            return
        batch_mean = batch.mean(axis=0)  # (D,)
        centred = batch - batch_mean  # (B, D)
        batch_scatter = centred.T @ centred  # (D, D)
        # Chan et al.: combine two groups' centred moments without re-centring the old data.
        total = self.count + n_batch
        delta = batch_mean - self._mean  # (D,)
        self._scatter += batch_scatter + np.outer(delta, delta) * (self.count * n_batch / total)
        self._mean += delta * (n_batch / total)
        self.count = total

    @property
    def mean(self) -> np.ndarray:
        """``(D,)`` float64 mean of all features seen."""
        if self.count < 1 and not self._frozen:
            raise ValueError("no features were added yet")
        return self._mean.copy()

    @property
    def covariance(self) -> np.ndarray:
        """``(D, D)`` float64 unbiased covariance (``ddof=1``, as ``np.cov``).

        Raises:
            ValueError: With fewer than two feature vectors.
        """
        if self._frozen:
            return self._scatter.copy()
        if self.count < 2:
            raise ValueError(f"the covariance needs at least 2 feature vectors, got {self.count}")
        return self._scatter / (self.count - 1)

    @property
    def features(self) -> torch.Tensor:
        """``(N, D)`` float32: every feature vector seen (only with ``keep_features=True``)."""
        if not self.keep_features:
            raise ValueError("features were not kept; create the statistics with keep_features=True")
        if not self._features:
            return torch.empty(0, self.dim)
        return torch.cat(self._features)

    def save(self, path: str | os.PathLike) -> None:
        """Write ``mu``, ``sigma`` (the pytorch-fid ``.npz`` keys), ``count`` and ``extractor``.

        Example:
            >>> import tempfile, pathlib
            >>> stats = FeatureStatistics(dim=3, extractor="demo")
            >>> stats.update(torch.randn(5, 3))
            >>> path = pathlib.Path(tempfile.mkdtemp()) / "real_stats.npz"
            >>> stats.save(path)
            >>> FeatureStatistics.load(path).count
            5
        """
        arrays = {"mu": self.mean, "sigma": self.covariance, "extractor": np.str_(self.extractor)}
        if not self._frozen:  # statistics loaded without a count stay without one
            arrays["count"] = np.int64(self.count)
        np.savez(path, **arrays)

    @classmethod
    def load(cls, path: str | os.PathLike, *, extractor: str | None = None) -> FeatureStatistics:
        """Read statistics written by :meth:`save` (or a pytorch-fid ``.npz`` with ``mu``/``sigma``).

        A file without ``count`` (pytorch-fid's) gives statistics that can be compared but not
        updated.

        Args:
            path: The ``.npz`` file.
            extractor: Name of the extractor that produced the file. For a file that records
                none (pytorch-fid's), this names it (otherwise it is ``"unknown (from <file>)"``,
                which matches no extractor); for a file that records one, it must be the same.

        Raises:
            FileNotFoundError: If ``path`` does not exist.
            ValueError: If ``mu``/``sigma`` are missing, their shapes do not agree, or the
                recorded extractor is not ``extractor``.
        """
        if not os.path.isfile(path):
            raise FileNotFoundError(f"feature statistics file not found: {os.fspath(path)!r}")
        with np.load(path, allow_pickle=False) as data:
            missing = [key for key in ("mu", "sigma") if key not in data]
            if missing:
                raise ValueError(f"{os.fspath(path)!r} lacks {missing}; expected keys 'mu' and 'sigma'")
            mu = np.asarray(data["mu"], dtype=np.float64)
            sigma = np.asarray(data["sigma"], dtype=np.float64)
            count = int(data["count"]) if "count" in data else None
            recorded = str(data["extractor"]) if "extractor" in data else None
        if recorded is not None and extractor is not None and recorded != extractor:
            raise ValueError(f"{os.fspath(path)!r} was computed with {recorded!r}, not {extractor!r}")
        extractor = recorded or extractor or f"unknown (from {os.fspath(path)})"
        if mu.ndim != 1 or sigma.shape != (mu.shape[0], mu.shape[0]):
            raise ValueError(f"{os.fspath(path)!r}: mu {mu.shape} and sigma {sigma.shape} do not match")
        stats = cls(dim=int(mu.shape[0]), extractor=extractor)
        stats._mean = mu
        if count is None:
            stats._scatter = sigma
            stats._frozen = True
        else:
            stats.count = count
            stats._scatter = sigma * (count - 1)
        return stats


def as_float64(value: torch.Tensor | np.ndarray, name: str) -> np.ndarray:
    """``value`` as a finite float64 numpy array; ``name`` is used in the errors."""
    if isinstance(value, torch.Tensor):
        array = value.detach().to("cpu", torch.float64).numpy()
    elif isinstance(value, np.ndarray):
        array = value.astype(np.float64, copy=False)
    else:
        raise TypeError(f"{name} must be a torch.Tensor or numpy array, got {type(value).__name__}")
    if not np.isfinite(array).all():
        raise ValueError(f"{name} has NaN or infinite values")
    return array


def _as_float64_matrix(features: torch.Tensor | np.ndarray, *, dim: int) -> np.ndarray:
    """Check a ``(B, D)`` batch and return it as a float64 numpy array."""
    array = as_float64(features, "features")
    if array.ndim != 2 or array.shape[1] != dim:
        raise ValueError(f"features must have shape (B, {dim}), got {tuple(array.shape)}")
    return array
