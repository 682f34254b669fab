"""Adapters between the project's sample dicts and the format-independent metric functions.

A sample is a dict with ``image`` ``(3, H, W)`` in [-1, 1] and ``labels`` ``{name: tensor}``
(optionally ``masks`` ``{name: bool (H, W)}``, True where the label is present); a batch from
``torch.utils.data.DataLoader`` has the same keys with a leading batch dimension. The metrics
themselves only see tensors; these helpers pull the image and the semantic map out of a batch,
and cycle a loader for the small networks' training loops.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterable, Iterator, Mapping, Sequence

import torch

__all__ = ["split_batch", "image_and_label_collate", "cycle_batches"]


def split_batch(
    batch: Mapping | Sequence, *, label_name: str = "semantic", ignore_index: int | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """``(images, semantic)`` from a sample-dict batch or an ``(images, semantic)`` pair.

    Pixels that ``batch["masks"][label_name]`` marks as missing are set to ``ignore_index``, so
    they are never scored or trained on.

    Args:
        batch: A collated sample dict (``image`` ``(B, 3, H, W)``, ``labels[label_name]``
            ``(B, H, W)`` or ``(B, 1, H, W)``, optional ``masks[label_name]``) or a 2-sequence
            ``(images, semantic)``.
        label_name: Key of the semantic map in ``batch["labels"]``.
        ignore_index: Id to write at masked-out pixels.

    Returns:
        ``images (B, 3, H, W)`` and ``semantic (B, H, W)`` int64.

    Raises:
        KeyError: If the batch lacks ``image`` or ``labels[label_name]`` (the message lists what it has).
        ValueError: If the mask marks pixels missing and no ``ignore_index`` is given, or shapes differ.

    Example:
        >>> batch = {"image": torch.zeros(2, 3, 4, 4), "labels": {"semantic": torch.ones(2, 1, 4, 4, dtype=torch.long)}}
        >>> images, semantic = split_batch(batch)
        >>> semantic.shape
        torch.Size([2, 4, 4])
    """
    if isinstance(batch, Mapping):
        if "image" not in batch:
            raise KeyError(f"the batch has no 'image' (keys: {sorted(batch)})")
        labels = batch.get("labels", {})
        if label_name not in labels:
            raise KeyError(f"the batch has no labels[{label_name!r}] (labels: {sorted(labels)})")
        images, semantic = batch["image"], labels[label_name]
        mask = batch.get("masks", {}).get(label_name)
    elif isinstance(batch, Sequence) and len(batch) == 2:
        images, semantic = batch
        mask = None
    else:
        raise TypeError(f"expected a sample-dict batch or an (images, semantic) pair, got {type(batch).__name__}")
    if semantic.ndim == 4 and semantic.shape[1] == 1:
        semantic = semantic[:, 0]  # (B, H, W)
    if semantic.ndim != 3 or images.ndim != 4 or images.shape[0] != semantic.shape[0]:
        raise ValueError(
            f"expected images (B, 3, H, W) and {label_name} (B, H, W), "
            f"got {tuple(images.shape)} and {tuple(semantic.shape)}"
        )
    semantic = semantic.long()
    if mask is not None:
        mask = mask[:, 0] if mask.ndim == 4 else mask  # (B, H, W)
        if mask.shape != semantic.shape:
            raise ValueError(f"masks[{label_name!r}] has shape {tuple(mask.shape)}, expected {tuple(semantic.shape)}")
        if not bool(mask.all()):
            if ignore_index is None:
                raise ValueError(
                    f"masks[{label_name!r}] marks pixels as missing but no ignore_index was given to exclude them"
                )
            semantic = semantic.masked_fill(~mask.bool(), ignore_index)
    return images, semantic


def image_and_label_collate(samples: Sequence[Mapping], *, label_name: str = "semantic") -> dict:
    """Collate only ``image``, ``labels[label_name]`` and its mask from sample dicts.

    The rest (``meta``, other labels) may not be collatable and is not needed by the metrics.

    Args:
        samples: Sample dicts.
        label_name: Key of the semantic map in ``sample["labels"]``.

    Returns:
        A batch dict ``{"image": (B, 3, H, W), "labels": {label_name: (B, H, W)}, "masks": {...}}``.

    Raises:
        KeyError: If a sample lacks ``image`` or ``labels[label_name]``.

    Example:
        >>> sample = {"image": torch.zeros(3, 4, 4), "labels": {"semantic": torch.zeros(4, 4, dtype=torch.long)}}
        >>> image_and_label_collate([sample, sample])["image"].shape
        torch.Size([2, 3, 4, 4])
    """
    for index, sample in enumerate(samples):
        if not isinstance(sample, Mapping) or "image" not in sample or label_name not in sample.get("labels", {}):
            raise KeyError(f"sample {index} lacks 'image' or labels[{label_name!r}]")
    batch = {
        "image": torch.stack([sample["image"] for sample in samples]),
        "labels": {label_name: torch.stack([sample["labels"][label_name] for sample in samples])},
    }
    if all(label_name in sample.get("masks", {}) for sample in samples):
        batch["masks"] = {label_name: torch.stack([sample["masks"][label_name] for sample in samples])}
    return batch


def cycle_batches(loader: Iterable, *, source: str = "the training data") -> Iterator:
    """Iterate over ``loader`` again and again (a training loop stops when it has its steps).

    Args:
        loader: Anything iterable again, e.g. a ``DataLoader`` (a fresh shuffle every epoch).
        source: What the data is called in the error.

    Yields:
        The loader's batches, epoch after epoch.

    Raises:
        ValueError: If an epoch yields no batch (an empty dataset, or a one-shot iterator run dry).

    Example:
        >>> import itertools
        >>> list(itertools.islice(cycle_batches([1, 2]), 5))
        [1, 2, 1, 2, 1]
    """
    for epoch in itertools.count():
        empty = True
        for batch in loader:
            empty = False
            yield batch
        if empty:
            raise ValueError(f"{source} yielded no batch (epoch {epoch})")
