"""Label files: one ``.npz`` per image holding its labels and, optionally, their masks.

An ``.npz`` file holds one array per label, named after it: a class map ``(H, W)`` of integers,
or a continuous label ``(C, H, W)`` (a one-channel label may be ``(H, W)``). A mask, True where
the label is present, is stored as ``mask_<label>`` ``(H, W)`` bool; labels without one are
dense. A label left out of the file is missing everywhere. ``numpy.savez`` writes such files;
:func:`save_label_file` does it from tensors.
"""

from __future__ import annotations

import os
import zipfile
from collections.abc import Mapping
from pathlib import Path

import numpy as np
import torch

from label_merge import LabelSpec

__all__ = ["save_label_file", "load_label_file", "load_label_folder"]

MASK_PREFIX = "mask_"


def save_label_file(
    path: str | os.PathLike, labels: Mapping[str, torch.Tensor], masks: Mapping[str, torch.Tensor] | None = None
) -> None:
    """Write one image's labels (unbatched tensors) and masks to ``path`` (``.npz``), atomically."""
    arrays = {name: value.detach().cpu().numpy() for name, value in labels.items()}
    for name, mask in (masks or {}).items():
        arrays[MASK_PREFIX + name] = mask.detach().cpu().numpy().astype(bool)
    path = Path(path)
    temporary = path.with_name(f".{path.name}.{os.getpid()}.tmp.npz")
    np.savez_compressed(temporary, **arrays)
    os.replace(temporary, path)


def load_label_file(
    path: str | os.PathLike, specs: Mapping[str, LabelSpec]
) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
    """Read one ``.npz`` label file as unbatched tensors, checked against ``specs``.

    Returns:
        ``(labels, masks)``: class maps int64 ``(H, W)``, continuous labels float32
        ``(C, H, W)``, and a bool ``(H, W)`` mask for every label (all True where the file
        stores none).

    Raises:
        FileNotFoundError: No such file.
        ValueError: Unreadable file, unknown names, or arrays of the wrong shape or kind (the
            message names the file and the array).
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"label file not found: {path}")
    try:
        with np.load(path, allow_pickle=False) as data:
            arrays = {key: data[key] for key in data.files}
    except (OSError, ValueError, zipfile.BadZipFile) as err:
        raise ValueError(f"cannot read label file {path}: {err}") from err
    labels, masks = {}, {}
    for key, array in arrays.items():
        name = key[len(MASK_PREFIX) :] if key.startswith(MASK_PREFIX) else key
        if name not in specs:
            raise ValueError(f"{path}: array {key!r} names no known label; expected {list(specs)}")
        if key.startswith(MASK_PREFIX):
            if array.dtype != bool or array.ndim != 2:
                raise ValueError(f"{path}: {key!r} must be a bool (H, W) array, got {array.dtype} {array.shape}")
            masks[name] = torch.from_numpy(array)
            continue
        spec = specs[name]
        if spec.is_categorical:
            if array.ndim != 2 or not np.issubdtype(array.dtype, np.integer):
                raise ValueError(
                    f"{path}: {name!r} must be an integer (H, W) class map, got {array.dtype} {array.shape}"
                )
            labels[name] = torch.from_numpy(array.astype(np.int64))
        else:
            if array.ndim == 2 and spec.channels == 1:
                array = array[None]
            if array.ndim != 3 or array.shape[0] != spec.channels or not np.issubdtype(array.dtype, np.floating):
                raise ValueError(
                    f"{path}: {name!r} must be a float ({spec.channels}, H, W) array, got {array.dtype} {array.shape}"
                )
            labels[name] = torch.from_numpy(array.astype(np.float32))
    if not labels:
        raise ValueError(f"{path} holds no labels; expected some of {list(specs)}")
    orphans = sorted(set(masks) - set(labels))
    if orphans:
        raise ValueError(f"{path}: masks for {orphans} but no such labels")
    sizes = {name: tuple(v.shape[-2:]) for name, v in labels.items()}
    sizes.update({MASK_PREFIX + name: tuple(m.shape) for name, m in masks.items()})
    if len(set(sizes.values())) > 1:
        raise ValueError(f"{path}: arrays differ in size: {sizes}")
    (size,) = set(sizes.values())
    dense = {name: torch.ones(size, dtype=torch.bool) for name in labels if name not in masks}
    return labels, {**masks, **dense}


def load_label_folder(
    folder: str | os.PathLike, specs: Mapping[str, LabelSpec]
) -> list[tuple[str, dict[str, torch.Tensor], dict[str, torch.Tensor]]]:
    """Every ``*.npz`` label file of a folder, sorted by name: ``[(stem, labels, masks)]``.

    Raises:
        FileNotFoundError: The folder does not exist or holds no ``.npz`` file.
    """
    folder = Path(folder)
    if not folder.is_dir():
        raise FileNotFoundError(f"label folder not found: {folder}")
    files = sorted(folder.glob("*.npz"))
    if not files:
        raise FileNotFoundError(f"no .npz label files in {folder}")
    return [(f.stem, *load_label_file(f, specs)) for f in files]
