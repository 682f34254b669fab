"""Per-channel statistics of continuous labels, for :class:`label_merge.LabelSpec` normalisation."""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np
from torch.utils.data import Dataset

from label_merge import LabelSpec

__all__ = ["label_statistics", "normalised_specs"]


Statistics = dict[str, tuple[tuple[float, ...], tuple[float, ...]]]


def label_statistics(dataset: Dataset, num_samples: int | None = None) -> Statistics:
    """Mean and standard deviation of each continuous label over its present pixels.

    Args:
        dataset: A dataset of the project's samples (``labels``, ``masks``) with ``label_specs``.
        num_samples: Use the first this many samples (None: all).

    Returns:
        ``{name: (mean, std)}`` with one value per channel, for the continuous labels.

    Raises:
        ValueError: A continuous label with no present pixel in the samples read.

    Example:
        >>> from examples.datasets.synthetic import SyntheticDataset
        >>> stats = label_statistics(SyntheticDataset(4, resolution=16, labels=["depth"]))
        >>> len(stats["depth"][0])
        1
    """
    specs = dataset.label_specs
    names = [n for n, s in specs.items() if not s.is_categorical]
    count = len(dataset) if num_samples is None else min(num_samples, len(dataset))
    # Float64 running sums per channel: (sum, sum of squares, count).
    sums = {n: np.zeros((3, specs[n].channels)) for n in names}
    for index in range(count):
        sample = dataset[index]
        for name in names:
            values = sample["labels"][name]  # (C, H, W)
            present = sample["masks"][name]  # (H, W)
            x = values[:, present].double().numpy()  # (C, P_present)
            sums[name] += np.stack([x.sum(1), (x * x).sum(1), np.full(x.shape[0], x.shape[1])])
    out = {}
    for name, (s, s2, n) in sums.items():
        if n[0] == 0:
            raise ValueError(f"label {name!r} has no present pixel in the first {count} samples")
        mean = s / n
        std = np.sqrt(np.maximum(s2 / n - mean**2, 0.0))
        out[name] = (tuple(float(v) for v in mean), tuple(float(v) for v in std))
    return out


def normalised_specs(specs: Mapping[str, LabelSpec], stats: Statistics) -> dict[str, LabelSpec]:
    """``specs`` with ``shift = mean`` and ``scale = std`` for every label in ``stats``.

    Raises:
        ValueError: A zero standard deviation (a constant label cannot be scaled).
    """
    out = dict(specs)
    for name, (mean, std) in stats.items():
        if any(s == 0 for s in std):
            raise ValueError(f"label {name!r} is constant in the samples read (std {std}); give its scale by hand")
        out[name] = LabelSpec.continuous(specs[name].channels, shift=mean, scale=std)
    return out
