"""Making labels sparse on purpose: region dropout (the paper) and whole-label dropout.

Both act on a mask dict ``{name: bool (B, H, W)}`` (True = present) and return a new one; the
inputs are never modified. Randomness comes only from the ``torch.Generator`` you pass, so a
seeded generator reproduces the same masks.
"""

from __future__ import annotations

from collections.abc import Mapping

import torch

__all__ = ["dense_masks", "region_dropout", "label_dropout"]


def _check_probability(name: str, p: float) -> float:
    if isinstance(p, bool) or not isinstance(p, (int, float)) or not 0.0 <= p <= 1.0:
        raise ValueError(f"{name} must be a probability in [0, 1], got {p!r}")
    return float(p)


def _check_masks(masks: Mapping[str, torch.Tensor]) -> tuple[int, ...]:
    """Check that every mask is a bool tensor of one common shape; return that shape."""
    if not isinstance(masks, Mapping) or len(masks) == 0:
        raise ValueError("masks must be a non-empty mapping {name: bool tensor}")
    shape = None
    for name, m in masks.items():
        if not isinstance(m, torch.Tensor) or m.dtype != torch.bool:
            raise TypeError(f"masks[{name!r}] must be a bool tensor, got {getattr(m, 'dtype', type(m).__name__)}")
        if m.dim() not in (2, 3):
            raise ValueError(f"masks[{name!r}] must be (B, H, W) or (H, W), got shape {tuple(m.shape)}")
        if shape is None:
            shape, first = tuple(m.shape), name
        elif tuple(m.shape) != shape:
            raise ValueError(f"masks[{name!r}] has shape {tuple(m.shape)} but masks[{first!r}] has {shape}")
    return shape


def _uniform(n: int, generator: torch.Generator | None, device: torch.device) -> torch.Tensor:
    """``n`` uniform draws, made on the generator's device, returned on ``device``."""
    gen_device = generator.device if generator is not None else device
    return torch.rand(n, generator=generator, device=gen_device).to(device)


def dense_masks(labels: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """All-True masks for every label given, shaped ``(B, H, W)`` like the labels.

    Args:
        labels: ``{name: tensor}`` with batch first and spatial size last.

    Returns:
        ``{name: bool (B, H, W)}``.

    Examples:
        >>> import torch
        >>> dense_masks({"depth": torch.rand(2, 1, 4, 5)})["depth"].shape
        torch.Size([2, 4, 5])
    """
    return {
        name: torch.ones(x.shape[0], *x.shape[-2:], dtype=torch.bool, device=x.device) for name, x in labels.items()
    }


def region_dropout(
    masks: Mapping[str, torch.Tensor],
    regions: torch.Tensor,
    p: float,
    *,
    generator: torch.Generator | None = None,
) -> dict[str, torch.Tensor]:
    """The paper's label sparsity (Sec. 4, supplementary C).

    For every image, every region id in it and every label independently, the label is dropped
    in the whole region with probability ``p``. With ``p = 0.5`` a region keeps each label with
    even odds, and loses all of them with probability ``0.5 ** N``.

    Args:
        masks: ``{name: bool (B, H, W)}`` (or ``(H, W)`` for one image), True = present. Give an
            entry for every label to sparsify (see :func:`dense_masks`).
        regions: Integer ``(B, H, W)`` (or ``(H, W)``) region ids, e.g. instances or connected
            components of the semantic map; ids are per image.
        p: Drop probability ``S``.
        generator: Source of randomness; seed it to reproduce the masks.

    Returns:
        New masks, ``masks[name] & kept``, in the same order.

    Raises:
        TypeError: Masks that are not bool, regions that are not integer.
        ValueError: ``p`` outside [0, 1], or shapes that do not match.

    Examples:
        >>> import torch
        >>> masks = {"depth": torch.ones(1, 2, 2, dtype=torch.bool)}
        >>> regions = torch.tensor([[[0, 0], [1, 1]]])
        >>> out = region_dropout(masks, regions, 0.5, generator=torch.Generator().manual_seed(0))
        >>> bool((out["depth"][0, 0, 0] == out["depth"][0, 0, 1]))  # one region, one decision
        True
    """
    p = _check_probability("p", p)
    shape = _check_masks(masks)
    if not isinstance(regions, torch.Tensor) or regions.is_floating_point() or regions.dtype == torch.bool:
        raise TypeError(f"regions must be an integer tensor, got {getattr(regions, 'dtype', type(regions).__name__)}")
    if tuple(regions.shape) != shape:
        raise ValueError(f"regions has shape {tuple(regions.shape)} but the masks have {shape}")
    batched = regions.reshape(-1, *regions.shape[-2:]).long()  # (B, H, W)
    # One key per (image, region id) so that ids are drawn independently per image.
    span = int(batched.max() - batched.min()) + 1 if batched.numel() else 1
    image = torch.arange(batched.shape[0], device=batched.device).view(-1, 1, 1)
    keys = image * span + (batched - batched.min())  # (B, H, W)
    _, inverse = torch.unique(keys, return_inverse=True)  # inverse: (B, H, W) index of each pixel's key
    num_keys = int(inverse.max()) + 1 if inverse.numel() else 0
    out = {}
    for name, m in masks.items():
        kept = _uniform(num_keys, generator, m.device) >= p  # (num_keys,)
        out[name] = m & kept[inverse.to(m.device)].view(m.shape)
    return out


def label_dropout(
    masks: Mapping[str, torch.Tensor],
    *,
    p_keep_all: float = 0.0,
    p_drop_all: float = 0.0,
    p_label: float | Mapping[str, float] = 0.0,
    generator: torch.Generator | None = None,
) -> dict[str, torch.Tensor]:
    """Whole-label dropout per image, as multi-condition generators are trained.

    For each image: with probability ``p_keep_all`` every label is kept; with probability
    ``p_drop_all`` every label is dropped (the unconditional case); otherwise each label is
    dropped independently with its probability ``p_label`` (one number for all, or per name).
    A dropped label is missing at every pixel of that image.

    Args:
        masks: ``{name: bool (B, H, W)}`` (or ``(H, W)`` for one image).
        p_keep_all: Probability of keeping all labels.
        p_drop_all: Probability of dropping all labels; ``p_keep_all + p_drop_all <= 1``.
        p_label: Per-label drop probability in the remaining case, a float or ``{name: float}``
            (names not listed are never dropped individually).
        generator: Source of randomness.

    Returns:
        New masks.

    Raises:
        TypeError: Masks that are not bool.
        ValueError: Probabilities outside [0, 1], summing above 1, or naming unknown labels.

    Examples:
        >>> import torch
        >>> masks = {"a": torch.ones(4, 2, 2, dtype=torch.bool), "b": torch.ones(4, 2, 2, dtype=torch.bool)}
        >>> out = label_dropout(masks, p_drop_all=1.0)
        >>> bool(out["a"].any() or out["b"].any())
        False
    """
    p_keep_all = _check_probability("p_keep_all", p_keep_all)
    p_drop_all = _check_probability("p_drop_all", p_drop_all)
    if p_keep_all + p_drop_all > 1.0 + 1e-12:
        raise ValueError(f"p_keep_all + p_drop_all must be at most 1, got {p_keep_all} + {p_drop_all}")
    shape = _check_masks(masks)
    if isinstance(p_label, Mapping):
        unknown = [k for k in p_label if k not in masks]
        if unknown:
            raise ValueError(f"p_label names unknown label(s) {unknown}; masks have {list(masks)}")
        per_label = {name: _check_probability(f"p_label[{name!r}]", p_label.get(name, 0.0)) for name in masks}
    else:
        per_label = dict.fromkeys(masks, _check_probability("p_label", p_label))
    num_images = shape[0] if len(shape) == 3 else 1
    device = next(iter(masks.values())).device
    choice = _uniform(num_images, generator, device)  # (B,)
    keep_all = choice < p_keep_all
    drop_all = (choice >= p_keep_all) & (choice < p_keep_all + p_drop_all)
    out = {}
    for name, m in masks.items():
        dropped_alone = _uniform(num_images, generator, device) < per_label[name]  # (B,)
        kept = keep_all | (~drop_all & ~dropped_alone)  # (B,)
        out[name] = m & (kept.view(-1, 1, 1) if len(shape) == 3 else kept[0])
    return out
