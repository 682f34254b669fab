"""Scenes for the editing and visualisation scripts: held-out samples, label files and mask files."""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from examples.label_files import load_label_file
from examples.training.builders import build_datasets
from examples.training.config import RunConfig
from label_merge import LabelSpec

__all__ = ["Scene", "held_out_scene", "label_file_scene", "load_mask_file"]


class Scene(dict):
    """One unbatched scene: ``labels``, ``masks`` (all labels), ``source``; ``image``, ``regions``, ``meta`` or None."""


def held_out_scene(config: RunConfig, index: int, *, data_root: str | None = None) -> Scene:
    """Sample ``index`` of the held-out split of a checkpoint's configuration.

    Raises:
        ValueError: A negative index, or one beyond a real dataset's split.
    """
    if isinstance(index, bool) or not isinstance(index, int) or index < 0:
        raise ValueError(f"the scene index must be a non-negative int, got {index!r}")
    data = config.data if data_root is None else replace(config.data, data_root=data_root)
    if data.dataset == "synthetic":  # rendered afresh: the run's scene cache may be elsewhere
        data = replace(data, val_samples=max(data.val_samples, index + 1), cache_dir=None)
    _, held_out = build_datasets(data, seed=config.train.seed)
    if index >= len(held_out):
        raise ValueError(f"scene {index} does not exist: the held-out split has {len(held_out)} samples")
    sample = held_out[index]
    masks = {
        name: sample["masks"].get(name, torch.ones(value.shape[-2:], dtype=torch.bool))
        for name, value in sample["labels"].items()
    }
    return Scene(
        labels=sample["labels"],
        masks=masks,
        image=sample["image"],
        regions=sample.get("regions"),
        meta=sample.get("meta"),
        source=f"held-out {data.dataset} scene {index}",
    )


def label_file_scene(path: str | os.PathLike, specs: Mapping[str, LabelSpec]) -> Scene:
    """A scene from a label file (see :mod:`examples.label_files`); it has no image and no regions.

    Raises:
        FileNotFoundError, ValueError: See :func:`examples.label_files.load_label_file`.
    """
    labels, masks = load_label_file(path, specs)
    masks = {name: masks.get(name, torch.ones(value.shape[-2:], dtype=torch.bool)) for name, value in labels.items()}
    return Scene(labels=labels, masks=masks, image=None, regions=None, meta=None, source=str(path))


def load_mask_file(path: str | os.PathLike, size: tuple[int, int]) -> torch.Tensor:
    """A mask from ``.npy`` (bool or numbers) or an image (``.png``...): True where non-zero.

    Raises:
        FileNotFoundError: No such file.
        ValueError: Unreadable, not 2-D, of another size than ``size``, or empty.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"mask file not found: {path}")
    try:
        if path.suffix == ".npy":
            array = np.load(path, allow_pickle=False)
        else:
            with Image.open(path) as image:
                array = np.asarray(image.convert("L"))
    except (OSError, ValueError) as err:
        raise ValueError(f"cannot read mask file {path}: {err}") from err
    if array.ndim != 2:
        raise ValueError(f"mask file {path} must hold a 2-D array, got shape {array.shape}")
    if tuple(array.shape) != tuple(size):
        raise ValueError(f"mask file {path} is {array.shape[0]}x{array.shape[1]}, the scene is {size[0]}x{size[1]}")
    mask = torch.from_numpy(array != 0)
    if not bool(mask.any()):
        raise ValueError(f"mask file {path} selects no pixel")
    return mask
