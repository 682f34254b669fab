"""What the three real-dataset loaders share: label selection, the derived-label cache, the sample dict."""

from __future__ import annotations

import os
from abc import ABC, abstractmethod
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path

import numpy as np
from torch.utils.data import Dataset

from label_merge import LabelSpec

from .cache import CACHE_DIRNAME, DerivedCache

__all__ = ["RealDataset", "select_labels"]


def select_labels(labels: Sequence[str] | None, *, available: Sequence[str], dataset: str) -> tuple[str, ...]:
    """Validate a label subset; return it in the dataset's canonical order.

    Args:
        labels: Names to load, or None for all of ``available``.
        available: The dataset's labels in canonical order.
        dataset: Name used in error messages.

    Raises:
        ValueError: Unknown, duplicate or no labels (the message lists the valid ones).
        TypeError: ``labels`` is a bare string.

    Example:
        >>> select_labels(["depth", "semantic"], available=("semantic", "depth", "edge"), dataset="x")
        ('semantic', 'depth')
    """
    if labels is None:
        return tuple(available)
    if isinstance(labels, str):
        raise TypeError(f"labels must be a list of names such as [{labels!r}], not a string")
    labels = list(labels)
    unknown = [name for name in labels if name not in available]
    if unknown:
        raise ValueError(f"unknown label(s) {unknown} for {dataset}; valid labels are {list(available)}")
    if len(set(labels)) != len(labels):
        raise ValueError(f"duplicate label names in {labels}")
    if not labels:
        raise ValueError(f"labels is empty; choose from {list(available)} or pass None for all")
    return tuple(name for name in available if name in labels)


class RealDataset(Dataset, ABC):
    """Base class: a sample is built from raw files plus derived labels (cached or computed).

    Subclasses set ``name``, ``all_labels`` and ``derived_keys``, and implement the abstract
    methods plus ``__len__`` and ``__getitem__``.
    """

    name: str = ""
    all_labels: tuple[str, ...] = ()
    # Arrays (by key) that compute_derived produces for each selected label.
    derived_keys: Mapping[str, tuple[str, ...]] = {}

    def __init__(
        self,
        *,
        root: str | os.PathLike,
        labels: Sequence[str] | None,
        size: tuple[int, int],
        cache_dir: str | os.PathLike | None,
        use_cache: bool,
        transform: Callable[[dict], dict] | None,
    ) -> None:
        self.root = Path(root)
        self.labels = select_labels(labels, available=self.all_labels, dataset=self.name)
        self.size = size
        self.transform = transform
        self.cache_dir = Path(cache_dir) if cache_dir is not None else self.default_cache_dir()
        self.cache = DerivedCache(self.cache_dir, dataset=self.name, size=size, recipe=self.derived_recipe())
        # Read cached files only from a finished folder made with these parameters.
        self.use_cache = bool(use_cache) and self.cache.check_recipe()

    def default_cache_dir(self) -> Path:
        return self.root / CACHE_DIRNAME

    @property
    def label_specs(self) -> dict[str, LabelSpec]:
        """``{name: LabelSpec}`` of the selected labels, in canonical order."""
        specs = self.all_label_specs()
        return {name: specs[name] for name in self.labels}

    @abstractmethod
    def all_label_specs(self) -> dict[str, LabelSpec]:
        """``{name: LabelSpec}`` of every label the dataset offers."""

    @abstractmethod
    def derived_recipe(self) -> dict:
        """JSON-serialisable parameters that determine the derived labels (the cache's ``recipe.json``)."""

    @abstractmethod
    def sample_key(self, index: int) -> str:
        """A unique relative path (no suffix) naming sample ``index`` in the cache."""

    @abstractmethod
    def compute_derived(self, index: int, *, keys: Sequence[str] | None = None) -> dict[str, np.ndarray]:
        """Compute derived arrays ``keys`` (default: all) of sample ``index`` from the raw files."""

    def _derived_keys_for(self, names: Sequence[str]) -> tuple[str, ...]:
        keys: list[str] = []
        for name in ("regions", *names):
            keys += [k for k in self.derived_keys.get(name, ()) if k not in keys]
        return tuple(keys)

    def all_derived_keys(self) -> tuple[str, ...]:
        """Every array the cache holds for a sample (for all labels, not only the selected ones)."""
        return self._derived_keys_for(self.all_labels)

    def needed_derived_keys(self) -> tuple[str, ...]:
        """The derived arrays the selected labels (and the regions) need."""
        return self._derived_keys_for(self.labels)

    def derived(self, index: int) -> dict[str, np.ndarray]:
        """Derived arrays for the selected labels: from the cache when present, else computed."""
        keys = self.needed_derived_keys()
        if not keys:
            return {}
        if self.use_cache:
            cached = self.cache.load(self.sample_key(index), keys=keys)
            if cached is not None:
                return cached
        return self.compute_derived(index, keys=keys)

    def _check_index(self, index: int) -> int:
        n = len(self)
        if not isinstance(index, (int, np.integer)) or isinstance(index, bool):
            raise TypeError(f"{self.name} index must be an int, got {type(index).__name__}")
        if not -n <= index < n:
            raise IndexError(f"{self.name} index {index} out of range for {n} samples")
        return int(index) % n

    def _finish(self, sample: dict) -> dict:
        sample["meta"].setdefault("hflip", False)
        return self.transform(sample) if self.transform is not None else sample
