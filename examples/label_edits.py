"""Edits of one scene's labels and masks: plain functions, and a history to undo them.

Every function takes one scene's unbatched labels (``(H, W)`` class maps, ``(C, H, W)``
continuous maps) and masks (``{name: bool (H, W)}``, True where present; every label has one)
and returns new dicts; the inputs are never modified. The studio (``examples/studio.py``) calls
them, but they need no user interface.

Erasing a label only clears its mask and keeps the values underneath: a value at a missing
position never reaches the image (the mergers guarantee it), and keeping it lets
:func:`restore` bring the label back exactly and lets the controllability readout score what the
generator made of the hidden truth. Removing an object zeroes its values as well, as
``examples/edit.py remove`` does, so that an exported label file carries nothing of it.
"""

from __future__ import annotations

from collections.abc import Mapping

import torch

from examples.studies.editing import label_size, remove_labels

__all__ = [
    "Labels",
    "Masks",
    "EditHistory",
    "brush_mask",
    "erase",
    "restore",
    "paint_class",
    "shift_depth",
    "object_mask",
    "remove_object",
    "drop_label",
]

Labels = dict[str, torch.Tensor]
Masks = dict[str, torch.Tensor]

MIN_DEPTH = 0.05  # metres: pulling a region forward never puts it behind the camera


def _check_region(region: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    if not isinstance(region, torch.Tensor) or region.dtype != torch.bool or tuple(region.shape) != size:
        got = f"{region.dtype} {tuple(region.shape)}" if isinstance(region, torch.Tensor) else type(region).__name__
        raise ValueError(f"the edit region must be a bool tensor of shape {size}, got {got}")
    return region


def _check_name(labels: Mapping[str, torch.Tensor], name: str) -> None:
    if name not in labels:
        raise ValueError(f"the scene has no label {name!r}; its labels are {list(labels)}")


def _copy(labels: Mapping[str, torch.Tensor], masks: Mapping[str, torch.Tensor]) -> tuple[Labels, Masks]:
    """Shallow copies of both dicts, with a mask for every label (missing masks: present everywhere)."""
    size = label_size(labels)
    new_masks = {}
    for name in labels:
        mask = masks.get(name)
        new_masks[name] = torch.ones(size, dtype=torch.bool) if mask is None else _check_region(mask, size)
    return dict(labels), new_masks


def brush_mask(size: tuple[int, int], center: tuple[float, float], radius: float) -> torch.Tensor:
    """``(H, W)`` bool: the pixels whose centres lie within ``radius`` pixels of ``center`` ``(row, col)``.

    A radius below 0.5 still covers the pixel under the centre.

    Raises:
        ValueError: A negative radius.

    Example:
        >>> brush_mask((3, 4), (1, 1), 1).int().tolist()
        [[0, 1, 0, 0], [1, 1, 1, 0], [0, 1, 0, 0]]
    """
    if not radius >= 0:
        raise ValueError(f"the brush radius must be >= 0 pixels, got {radius!r}")
    rows = torch.arange(size[0], dtype=torch.float32)[:, None]
    cols = torch.arange(size[1], dtype=torch.float32)[None, :]
    reach = max(float(radius), 0.5)
    return (rows - center[0]) ** 2 + (cols - center[1]) ** 2 <= reach**2


def erase(labels: Mapping, masks: Mapping, name: str, region: torch.Tensor) -> tuple[Labels, Masks]:
    """Label ``name`` becomes missing inside ``region``; its values stay (they never reach the image).

    Example:
        >>> _, masks = erase({"depth": torch.ones(1, 1, 2)}, {}, "depth", torch.tensor([[True, False]]))
        >>> masks["depth"].tolist()
        [[False, True]]
    """
    labels, masks = _copy(labels, masks)
    _check_name(labels, name)
    region = _check_region(region, label_size(labels))
    masks[name] = masks[name] & ~region
    return labels, masks


def restore(
    labels: Mapping,
    masks: Mapping,
    name: str,
    region: torch.Tensor,
    *,
    original_labels: Mapping,
    original_masks: Mapping,
) -> tuple[Labels, Masks]:
    """Label ``name`` takes its original value and presence (the scene as loaded) inside ``region``.

    Raises:
        ValueError: The original scene lacks the label or differs in size.

    Example:
        >>> before = {"depth": torch.ones(1, 1, 2)}
        >>> labels, masks = erase(before, {}, "depth", torch.ones(1, 2, dtype=torch.bool))
        >>> _, masks = restore(labels, masks, "depth", torch.tensor([[True, False]]),
        ...                    original_labels=before, original_masks={})
        >>> masks["depth"].tolist()
        [[True, False]]
    """
    labels, masks = _copy(labels, masks)
    _check_name(labels, name)
    size = label_size(labels)
    region = _check_region(region, size)
    if name not in original_labels:
        raise ValueError(f"the original scene has no label {name!r} to restore")
    original_mask = {name: original_masks[name]} if name in original_masks else {}
    original, original_present = _copy({name: original_labels[name]}, original_mask)
    if label_size(original) != size:
        raise ValueError(f"the original scene is {label_size(original)}, the edited one {size}")
    value = labels[name]
    labels[name] = torch.where(region.expand_as(value), original[name].to(value.dtype), value)
    masks[name] = torch.where(region, original_present[name], masks[name])
    return labels, masks


def paint_class(
    labels: Mapping, masks: Mapping, region: torch.Tensor, class_id: int, *, name: str = "semantic"
) -> tuple[Labels, Masks]:
    """The class map ``name`` becomes ``class_id``, present, inside ``region``.

    Raises:
        ValueError: No such label, a label that is not a class map, or a negative id.

    Example:
        >>> labels, _ = paint_class({"semantic": torch.zeros(1, 2, dtype=torch.long)}, {},
        ...                         torch.tensor([[False, True]]), 3)
        >>> labels["semantic"].tolist()
        [[0, 3]]
    """
    labels, masks = _copy(labels, masks)
    _check_name(labels, name)
    region = _check_region(region, label_size(labels))
    value = labels[name]
    if value.dim() != 2 or value.dtype.is_floating_point:
        raise ValueError(
            f"paint_class needs an integer (H, W) class map; {name!r} is {value.dtype} {tuple(value.shape)}"
        )
    if isinstance(class_id, bool) or not isinstance(class_id, int) or class_id < 0:
        raise ValueError(f"class_id must be a non-negative int, got {class_id!r}")
    labels[name] = value.masked_fill(region, class_id)
    masks[name] = masks[name] | region
    return labels, masks


def shift_depth(
    labels: Mapping, masks: Mapping, region: torch.Tensor, metres: float, *, name: str = "depth"
) -> tuple[Labels, Masks]:
    """Push the present depth inside ``region`` back by ``metres`` (negative: pull it forward).

    Depth never goes below :data:`MIN_DEPTH`. Missing pixels stay missing: there is no depth
    there to move. The other labels are left alone (the normals of a region moved as a whole
    along the view ray do not change much; edit them separately if they should).

    Example:
        >>> labels, _ = shift_depth({"depth": torch.full((1, 1, 2), 2.0)}, {}, torch.tensor([[True, False]]), 0.5)
        >>> labels["depth"].tolist()
        [[[2.5, 2.0]]]
    """
    labels, masks = _copy(labels, masks)
    _check_name(labels, name)
    region = _check_region(region, label_size(labels))
    value = labels[name]
    if not value.dtype.is_floating_point:
        raise ValueError(f"shift_depth needs a continuous label; {name!r} is {value.dtype}")
    moved = (value + float(metres)).clamp_min(MIN_DEPTH)
    where = (region & masks[name]).expand_as(value)
    labels[name] = torch.where(where, moved, value)
    return labels, masks


def object_mask(point: tuple[int, int], *, regions: torch.Tensor | None, semantic: torch.Tensor | None) -> torch.Tensor:
    """The object under ``point`` ``(row, col)``: its region, else its connected area of one class.

    Synthetic scenes carry region ids (one per object); a label file has none, so the
    4-connected pixels of the class under the point stand in for the object.

    Raises:
        ValueError: Neither map is given, or the point lies outside the image.

    Example:
        >>> object_mask((0, 0), regions=None, semantic=torch.tensor([[2, 2, 0], [0, 2, 2]])).int().tolist()
        [[1, 1, 0], [0, 1, 1]]
    """
    ids = regions if regions is not None else semantic
    if ids is None:
        raise ValueError("finding an object needs region ids or a semantic class map")
    row, col = point
    if not (0 <= row < ids.shape[-2] and 0 <= col < ids.shape[-1]):
        raise ValueError(f"point {point} lies outside the {ids.shape[-2]}x{ids.shape[-1]} image")
    same = ids == ids[row, col]
    if regions is not None:
        return same
    from scipy import ndimage

    components, _ = ndimage.label(same.numpy())  # 4-connected by default
    return torch.from_numpy(components == components[row, col])


def remove_object(labels: Mapping, masks: Mapping, region: torch.Tensor) -> tuple[Labels, Masks]:
    """Every label becomes missing inside ``region``, values zeroed (as ``examples/edit.py remove``)."""
    labels, masks = _copy(labels, masks)
    return remove_labels(labels, masks, _check_region(region, label_size(labels)))


def drop_label(labels: Mapping, masks: Mapping, name: str) -> tuple[Labels, Masks]:
    """Label ``name`` becomes missing everywhere (values kept, so :func:`restore` can bring it back).

    Example:
        >>> _, masks = drop_label({"edge": torch.ones(1, 2, 2)}, {}, "edge")
        >>> bool(masks["edge"].any())
        False
    """
    labels, masks = _copy(labels, masks)
    _check_name(labels, name)
    masks[name] = torch.zeros_like(masks[name])
    return labels, masks


class EditHistory:
    """The scene as loaded, and every edit since, so each can be undone.

    Args:
        labels: The scene's labels as loaded.
        masks: Their masks.

    Example:
        >>> history = EditHistory({"edge": torch.ones(1, 2, 2)}, {})
        >>> history.apply(*drop_label(*history.current, "edge"), description="drop edge")
        >>> history.undo(), bool(history.current[1]["edge"].all())
        ('drop edge', True)
    """

    def __init__(self, labels: Mapping, masks: Mapping) -> None:
        self.original: tuple[Labels, Masks] = _copy(labels, masks)
        self._states: list[tuple[Labels, Masks, str]] = [(*self.original, "load")]

    @property
    def current(self) -> tuple[Labels, Masks]:
        labels, masks, _ = self._states[-1]
        return labels, masks

    @property
    def descriptions(self) -> list[str]:
        """What each edit did, oldest first (the loaded scene not included)."""
        return [description for _, _, description in self._states[1:]]

    def apply(self, labels: Mapping, masks: Mapping, *, description: str) -> None:
        """Make ``(labels, masks)`` the current state."""
        self._states.append((*_copy(labels, masks), description))

    def undo(self) -> str | None:
        """Go back one edit; returns what it did, or None if there was nothing to undo."""
        if len(self._states) == 1:
            return None
        return self._states.pop()[2]

    def reset(self) -> None:
        """Back to the scene as loaded."""
        del self._states[1:]
