"""Geometric image editing by editing labels (paper Sec. 4.6, Figs. 10-11).

An object is removed by making every label missing inside its mask, and inserted by pasting every
label of an object from another scene inside the object's mask. The model then renders the
edited labels. All functions take one scene's unbatched labels (``(H, W)`` class maps,
``(C, H, W)`` continuous maps) and masks (``(H, W)`` bool, True where present) and return new
dicts; the inputs are never modified.

**Removal leaves the labels missing** rather than filling them from the surrounding background:
what lies behind a removed object is unknown (the wall or floor behind it may bend, meet another
surface, or carry a painting), and any fill would invent geometry the model then renders as fact.
Missing labels are what the sparse models are trained on (whole regions dropped with 50%
probability), so they fill the hole from the context they learned, and the concept there says
"unknown" instead of something wrong.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import torch

__all__ = ["label_size", "region_mask", "object_regions", "remove_labels", "paste_labels", "shift"]


def region_mask(regions: torch.Tensor, region_id: int) -> torch.Tensor:
    """``(H, W)`` bool, True where ``regions == region_id``.

    Raises:
        ValueError: The id does not occur (the message lists the ids that do).

    Example:
        >>> region_mask(torch.tensor([[0, 1], [1, 2]]), 1).tolist()
        [[False, True], [True, False]]
    """
    mask = regions == region_id
    if not bool(mask.any()):
        raise ValueError(
            f"region {region_id} does not occur in this scene; its regions are {regions.unique().tolist()}"
        )
    return mask


def object_regions(
    regions: torch.Tensor, semantic: torch.Tensor, object_classes: Sequence[int]
) -> list[tuple[int, int]]:
    """The regions whose most frequent class is an object class, largest first: ``[(id, pixels)]``.

    Example:
        >>> regions = torch.tensor([[0, 0, 5], [0, 7, 7]])
        >>> semantic = torch.tensor([[0, 0, 6], [0, 7, 7]])
        >>> object_regions(regions, semantic, object_classes=[6, 7])
        [(7, 2), (5, 1)]
    """
    found = []
    for region in regions.unique().tolist():
        inside = regions == region
        classes = semantic[inside]
        if int(torch.mode(classes).values) in object_classes:
            found.append((int(region), int(inside.sum())))
    return sorted(found, key=lambda item: (-item[1], item[0]))


def _check_mask(mask: torch.Tensor, size: tuple[int, int], what: str) -> torch.Tensor:
    if not isinstance(mask, torch.Tensor) or mask.dtype != torch.bool or tuple(mask.shape) != size:
        got = f"{mask.dtype} {tuple(mask.shape)}" if isinstance(mask, torch.Tensor) else type(mask).__name__
        raise ValueError(f"{what} must be a bool tensor of shape {size}, got {got}")
    return mask


def label_size(labels: Mapping[str, torch.Tensor]) -> tuple[int, int]:
    """The common ``(H, W)`` of a labels dict; ValueError when it is empty or the sizes differ."""
    if not labels:
        raise ValueError("there are no labels to edit")
    sizes = {tuple(value.shape[-2:]) for value in labels.values()}
    if len(sizes) != 1:
        raise ValueError(f"the labels differ in size: {sorted(sizes)}")
    return sizes.pop()


def remove_labels(
    labels: Mapping[str, torch.Tensor], masks: Mapping[str, torch.Tensor], mask: torch.Tensor
) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
    """Every label becomes missing inside ``mask``; nothing changes outside it.

    The values inside are also zeroed, so that saved label files carry nothing of the removed
    object.

    Args:
        labels: ``{name: (H, W) or (C, H, W)}``.
        masks: ``{name: bool (H, W)}``; a label without one is present everywhere.
        mask: ``(H, W)`` bool, True where the labels are removed.

    Returns:
        ``(labels, masks)`` with a mask for every label.

    Raises:
        ValueError: Labels of different sizes, or a mask that is not a bool tensor of their size.

    Example:
        >>> labels = {"depth": torch.ones(1, 2, 2)}
        >>> hole = torch.tensor([[True, False], [False, False]])
        >>> _, masks = remove_labels(labels, {}, hole)
        >>> masks["depth"].tolist()
        [[False, True], [True, True]]
    """
    size = label_size(labels)
    mask = _check_mask(mask, size, "the removal mask")
    new_labels, new_masks = {}, {}
    for name, value in labels.items():
        present = masks.get(name)
        present = (
            torch.ones(size, dtype=torch.bool) if present is None else _check_mask(present, size, f"masks[{name!r}]")
        )
        new_masks[name] = present & ~mask
        new_labels[name] = value.masked_fill(mask.expand_as(value), 0)
    return new_labels, new_masks


def shift(x: torch.Tensor, dy: int, dx: int, *, fill=0) -> torch.Tensor:
    """``x`` ``(..., H, W)`` moved down by ``dy`` and right by ``dx`` pixels; uncovered pixels get ``fill``.

    Example:
        >>> shift(torch.tensor([[1, 2], [3, 4]]), 1, 0).tolist()
        [[0, 0], [1, 2]]
    """
    H, W = x.shape[-2:]
    out = torch.full_like(x, fill)
    src_y, dst_y = slice(max(0, -dy), min(H, H - dy)), slice(max(0, dy), min(H, H + dy))
    src_x, dst_x = slice(max(0, -dx), min(W, W - dx)), slice(max(0, dx), min(W, W + dx))
    if src_y.start < src_y.stop and src_x.start < src_x.stop:
        out[..., dst_y, dst_x] = x[..., src_y, src_x]
    return out


def paste_labels(
    labels: Mapping[str, torch.Tensor],
    masks: Mapping[str, torch.Tensor],
    source_labels: Mapping[str, torch.Tensor],
    source_masks: Mapping[str, torch.Tensor],
    source_mask: torch.Tensor,
    *,
    offset: tuple[int, int] = (0, 0),
) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor], torch.Tensor]:
    """Paste every label of an object from another scene (its pixels in ``source_mask``).

    Inside the object's (shifted) mask each label takes the source's value and presence; a label
    the source does not have becomes missing there (the object carries no such information), and
    a label only the source has is added, present only on the object. Outside the mask nothing
    changes.

    Args:
        labels: Target scene ``{name: (H, W) or (C, H, W)}``.
        masks: Its ``{name: bool (H, W)}``.
        source_labels: The scene the object comes from, same size.
        source_masks: Its masks.
        source_mask: ``(H, W)`` bool, the object's pixels in the source scene.
        offset: ``(dy, dx)`` pixels to move the object by (down, right).

    Returns:
        ``(labels, masks, mask)``: the edited scene and the object's mask in it.

    Raises:
        ValueError: Scenes of different sizes, a bad mask, or an object moved out of the image.

    Example:
        >>> target = {"depth": torch.zeros(1, 2, 2)}
        >>> source = {"depth": torch.ones(1, 2, 2)}
        >>> thing = torch.tensor([[True, False], [False, False]])
        >>> labels, masks, where = paste_labels(target, {}, source, {}, thing, offset=(1, 1))
        >>> labels["depth"][0].tolist(), where.tolist()
        ([[0.0, 0.0], [0.0, 1.0]], [[False, False], [False, True]])
    """
    size, source_size = label_size(labels), label_size(source_labels)
    if size != source_size:
        raise ValueError(f"the source scene is {source_size[0]}x{source_size[1]}, the target {size[0]}x{size[1]}")
    source_mask = _check_mask(source_mask, size, "the object mask")
    dy, dx = offset
    where = shift(source_mask, dy, dx, fill=False)
    if not bool(where.any()):
        raise ValueError(f"the object leaves the {size[0]}x{size[1]} image when moved by {offset}")
    new_labels, new_masks = {}, {}
    for name in [*labels, *(n for n in source_labels if n not in labels)]:
        if name in labels:
            value = labels[name]
            present = masks.get(name)
            present = (
                torch.ones(size, dtype=torch.bool)
                if present is None
                else _check_mask(present, size, f"masks[{name!r}]")
            )
        else:
            value = torch.zeros_like(source_labels[name])
            present = torch.zeros(size, dtype=torch.bool)
        if name in source_labels:
            source_present = source_masks.get(name)
            if source_present is None:
                source_present = torch.ones(size, dtype=torch.bool)
            pasted_value = shift(source_labels[name].to(value.dtype), dy, dx)
            pasted_present = shift(_check_mask(source_present, size, f"source masks[{name!r}]"), dy, dx, fill=False)
            new_labels[name] = torch.where(where.expand_as(value), pasted_value, value)
            new_masks[name] = torch.where(where, pasted_present, present)
        else:
            new_labels[name] = value.masked_fill(where.expand_as(value), 0)
            new_masks[name] = present & ~where
    return new_labels, new_masks, where
