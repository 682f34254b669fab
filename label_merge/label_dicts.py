"""Whole label dicts: packing into one tensor and back, and mask-aware resizing.

A merger takes ``labels`` (``{name: tensor}``) and ``masks`` (``{name: bool tensor}``, True where
present). Pipelines and data loaders often expect one image-like tensor per sample instead:
:func:`pack_labels` and :func:`unpack_labels` convert between the two. :func:`resize_labels`
changes the spatial size of a labels dict without letting missing pixels leak into present ones.

Packed layout, per label in spec order: its values (one channel holding the class id for a
categorical label, ``C`` channels for a continuous one), then one presence channel (1 where the
label is present, 0 where it is missing). Values at missing positions are stored as 0, so the
packed tensor is finite even when the labels hold NaN or inf there; it survives collation,
nearest resizing and casts, and unpacking restores the masks from the presence channels.
"""

from __future__ import annotations

from collections.abc import Mapping
from fractions import Fraction

import torch
import torch.nn.functional as F

from .labels import LabelSpec, check_specs, flatten_labels

__all__ = ["pack_labels", "unpack_labels", "resize_labels", "packed_channels"]

CATEGORICAL_MODES = ("nearest", "majority")

# The floating dtypes a packed tensor may have, each with the largest n such that every integer
# 0..n is exact in it (float16 has an 11-bit significand: 2048 is exact, 2049 is not). float8
# dtypes are left out: they would round class ids and continuous values alike.
_LARGEST_EXACT_INTEGER = {torch.float16: 2**11, torch.bfloat16: 2**8, torch.float32: 2**24, torch.float64: 2**53}
PACKED_DTYPES = tuple(_LARGEST_EXACT_INTEGER)
# min_present is read as the simplest fraction within this denominator (0.2 is 1/5, 5/9 is 5/9).
_MIN_PRESENT_DENOMINATOR = 2**24


def _value_channels(spec: LabelSpec) -> int:
    return 1 if spec.is_categorical else spec.channels


def _check_packed_dtype(argument: str, dtype) -> None:
    """A packed tensor's dtype must be one of :data:`PACKED_DTYPES`."""
    if not isinstance(dtype, torch.dtype):
        raise TypeError(
            f"{argument} must be a floating torch.dtype, one of {PACKED_DTYPES}, got {dtype!r} "
            f"(a {type(dtype).__name__})"
        )
    if dtype not in PACKED_DTYPES:
        raise TypeError(f"{argument} must be a floating torch.dtype, one of {PACKED_DTYPES}, got {dtype}")


def packed_channels(specs: Mapping[str, LabelSpec]) -> int:
    """Channels of :func:`pack_labels`' output: each label's values plus one presence channel.

    Args:
        specs: Ordered ``{name: LabelSpec}``.

    Returns:
        ``sum(1 + (1 if categorical else channels))`` over the specs.

    Example:
        >>> from label_merge import LabelSpec
        >>> packed_channels({"semantic": LabelSpec.categorical(18), "normal": LabelSpec.continuous(3)})
        6
    """
    return sum(_value_channels(spec) + 1 for spec in check_specs(specs).values())


def pack_labels(
    specs: Mapping[str, LabelSpec],
    labels: Mapping[str, torch.Tensor],
    masks: Mapping[str, torch.Tensor] | None = None,
    *,
    dtype: torch.dtype = torch.float32,
) -> torch.Tensor:
    """Pack a labels dict and its masks into one finite tensor.

    Every label of ``specs`` gets its channels; a label absent from ``labels`` is packed as
    missing everywhere. A categorical label's ``ignore_index`` pixels count as missing. Values
    at missing positions may be anything (NaN, inf, out-of-range ids): they are stored as 0.
    Values at present positions must be finite and fit ``dtype``, or the call raises.

    Args:
        specs: Ordered ``{name: LabelSpec}``; fixes the channel order.
        labels: ``{name: tensor}`` for any non-empty subset of ``specs``, shaped as a merger
            takes them (categorical ``(B, H, W)``/``(B, 1, H, W)`` int, continuous
            ``(B, C, H, W)`` float). An empty batch or a zero-size side gives an empty result.
        masks: Optional ``{name: bool (B, H, W) or (B, 1, H, W)}``, True where present.
        dtype: Dtype of the result: float16, bfloat16, float32 or float64. Class ids must be
            exact in it (float16 holds ids up to 2048, bfloat16 up to 256).

    Returns:
        ``(B, packed_channels(specs), H, W)``; values at missing positions are 0, never NaN.

    Raises:
        TypeError: A bad label or mask dtype, or a ``dtype`` that is not one of the four above.
        ValueError: Anything a merger would reject (unknown label, shape, class id out of
            range), class ids that ``dtype`` cannot hold exactly, or a present value that is
            NaN or inf, or that overflows ``dtype``.

    Example:
        >>> import torch
        >>> from label_merge import LabelSpec, pack_labels
        >>> specs = {"semantic": LabelSpec.categorical(4), "depth": LabelSpec.continuous(1)}
        >>> depth = torch.full((1, 1, 2, 2), float("nan"))
        >>> pack_labels(specs, {"depth": depth}, {"depth": torch.zeros(1, 2, 2, dtype=torch.bool)}).shape
        torch.Size([1, 4, 2, 2])
    """
    specs = check_specs(specs)
    _check_packed_dtype("dtype", dtype)
    largest_id = max((s.channels - 1 for s in specs.values() if s.is_categorical), default=0)
    if largest_id > _LARGEST_EXACT_INTEGER[dtype]:
        raise ValueError(f"dtype {dtype} cannot hold class ids up to {largest_id} exactly; pack in float32")
    (B, H, W), flat = flatten_labels(specs, labels, masks)
    given = {label.name: label for label in flat}
    device = flat[0].values.device
    parts = []
    for name, spec in specs.items():
        channels = _value_channels(spec)
        if name in given:
            # flatten_labels already zeroed the values at missing positions.
            values = given[name].values.reshape(B, H, W, channels).permute(0, 3, 1, 2)  # (B, C or 1, H, W)
            present = given[name].present.reshape(B, 1, H, W)
        else:
            values = torch.zeros(B, channels, H, W, device=device)
            present = torch.zeros(B, 1, H, W, dtype=torch.bool, device=device)
        packed_values = values.to(dtype)
        _check_finite(name, values, packed_values)
        parts += [packed_values, present.to(dtype)]
    return torch.cat(parts, dim=1)  # (B, packed_channels, H, W)


def _check_finite(name: str, values: torch.Tensor, packed: torch.Tensor) -> None:
    """Present values (missing ones are already 0) must be finite before and after the cast."""
    if bool(torch.isfinite(packed).all()):
        return
    if not bool(torch.isfinite(values).all()):
        count = int((~torch.isfinite(values)).sum())
        raise ValueError(f"label {name!r} holds NaN or inf at {count} present position(s); mark them missing in masks")
    largest = float(values.abs().max())
    raise ValueError(
        f"label {name!r} holds values up to {largest:.4g} in magnitude, which overflow {packed.dtype}; pack in float32"
    )


def unpack_labels(
    specs: Mapping[str, LabelSpec],
    packed: torch.Tensor,
    *,
    dtype: torch.dtype | None = None,
) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
    """Split a tensor made by :func:`pack_labels` back into labels and masks.

    Args:
        specs: The specs it was packed with (same order).
        packed: ``(B, packed_channels(specs), H, W)`` floats. A presence channel above 0.5 means
            present, so the result survives interpolation of the presence channels too.
        dtype: Dtype of the continuous labels: float16, bfloat16, float32 or float64
            (default: ``packed.dtype``).

    Returns:
        ``(labels, masks)``: every label of ``specs``; categorical ``(B, H, W)`` int64 (missing
        pixels hold ``ignore_index``, or 0 when there is none), continuous ``(B, C, H, W)``
        (missing pixels hold 0); masks ``(B, H, W)`` bool.

    Raises:
        TypeError: ``packed`` is not a floating tensor, or ``dtype`` is not one of the four above.
        ValueError: ``packed`` has the wrong number of dimensions or channels.

    Example:
        >>> import torch
        >>> from label_merge import LabelSpec, pack_labels, unpack_labels
        >>> specs = {"depth": LabelSpec.continuous(1)}
        >>> labels, masks = unpack_labels(specs, pack_labels(specs, {"depth": torch.ones(1, 1, 2, 2)}))
        >>> bool(masks["depth"].all()), labels["depth"].shape
        (True, torch.Size([1, 1, 2, 2]))
    """
    specs = check_specs(specs)
    if not isinstance(packed, torch.Tensor) or not packed.is_floating_point():
        kind = getattr(packed, "dtype", type(packed).__name__)
        raise TypeError(f"packed must be a floating torch.Tensor, got {kind}")
    expected = packed_channels(specs)
    if packed.dim() != 4 or packed.shape[1] != expected:
        raise ValueError(
            f"packed must be (B, {expected}, H, W) for labels {list(specs)}, got shape {tuple(packed.shape)}"
        )
    if dtype is not None:
        _check_packed_dtype("dtype", dtype)  # an integer dtype would truncate continuous labels
    dtype = packed.dtype if dtype is None else dtype
    labels, masks = {}, {}
    start = 0
    for name, spec in specs.items():
        stop = start + _value_channels(spec)
        values = packed[:, start:stop]  # (B, C or 1, H, W)
        present = packed[:, stop] > 0.5  # (B, H, W)
        start = stop + 1
        if spec.is_categorical:
            fill = 0 if spec.ignore_index is None else spec.ignore_index
            ids = torch.nan_to_num(values[:, 0]).round().long()  # (B, H, W)
            labels[name] = torch.where(present, ids, fill)
        else:
            labels[name] = torch.where(present.unsqueeze(1), values, 0).to(dtype)
        masks[name] = present
    return labels, masks


def _check_size(size) -> tuple[int, int]:
    if isinstance(size, int) and not isinstance(size, bool):
        size = (size, size)
    if (
        not isinstance(size, (tuple, list))
        or len(size) != 2
        or any(isinstance(s, bool) or not isinstance(s, int) or s < 1 for s in size)
    ):
        raise ValueError(f"size must be a positive int or a pair (height, width) of them, got {size!r}")
    return int(size[0]), int(size[1])


def _check_min_present(min_present) -> Fraction:
    """``min_present`` as the simplest fraction it stands for: 0.2 is 1/5 and 5/9 is 5/9, not the
    binary float nearest to them (5/9 as a float is a little above 5/9)."""
    if isinstance(min_present, bool) or not isinstance(min_present, (int, float)) or not 0.0 <= min_present <= 1.0:
        raise ValueError(f"min_present must be a fraction in [0, 1], got {min_present!r}")
    return Fraction(min_present).limit_denominator(_MIN_PRESENT_DENOMINATOR)


def _window_bounds(n_in: int, n_out: int, device) -> tuple[torch.Tensor, torch.Tensor]:
    """Start and stop (exclusive) of each output pixel's source window along one axis, ``(n_out,)``
    each: the windows of ``adaptive_avg_pool2d``, ``floor(i * n_in / n_out)`` to
    ``ceil((i + 1) * n_in / n_out)``."""
    i = torch.arange(n_out, device=device)
    return (i * n_in) // n_out, ((i + 1) * n_in + n_out - 1) // n_out


def _window_sums(x: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """Exact integer sums of ``x`` ``(B, C, H, W)`` (bool or int) over each output pixel's
    window, ``(B, C, h, w)`` int64, read from a summed-area table."""
    (H, W), (h, w) = x.shape[2:], size
    count_dtype = torch.int32 if H * W < 2**31 else torch.int64  # a window holds at most H * W pixels
    table = x.cumsum(2, dtype=count_dtype).cumsum(3, dtype=count_dtype)  # (B, C, H, W): sums of x[:i+1, :j+1]
    table = F.pad(table, (1, 0, 1, 0))  # (B, C, H + 1, W + 1): table[i, j] = x[:i, :j].sum()
    top, bottom = _window_bounds(H, h, x.device)
    left, right = _window_bounds(W, w, x.device)

    def corner(rows, cols):
        return table[:, :, rows][:, :, :, cols]  # (B, C, h, w)

    return (corner(bottom, right) - corner(top, right) - corner(bottom, left) + corner(top, left)).long()


def _window_areas(source: tuple[int, int], size: tuple[int, int], device) -> torch.Tensor:
    """Pixels in each output pixel's window, ``(h, w)`` int64."""
    top, bottom = _window_bounds(source[0], size[0], device)
    left, right = _window_bounds(source[1], size[1], device)
    return (bottom - top).unsqueeze(1) * (right - left).unsqueeze(0)


def _enough_present(counts: torch.Tensor, areas: torch.Tensor, min_present: Fraction) -> torch.Tensor:
    """``(B, h, w)`` bool: at least one pixel present and ``counts / areas >= min_present``,
    compared exactly in integers (the one rule for categorical and continuous labels)."""
    return (counts > 0) & (counts * min_present.denominator >= areas * min_present.numerator)


def _area_mean(x: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """Mean over each output pixel's source window (``adaptive_avg_pool2d``), in float32 or float64."""
    work = x if x.dtype == torch.float64 else x.float()
    return F.adaptive_avg_pool2d(work, size)


def _resize_continuous(values, present, size):
    """Present-only area mean ``(B, C, h, w)`` and present pixels per window ``(B, h, w)`` int64."""
    B, C, H, W = values.shape
    counts = _window_sums(present.unsqueeze(1), size)[:, 0]  # (B, h, w)
    if H * W == 0:  # no source pixels: every window is empty
        return torch.zeros(B, C, *size, device=values.device), counts
    # torch.where, not multiplication: 0 * NaN would still be NaN.
    window_mean = _area_mean(torch.where(present.unsqueeze(1), values, 0), size)  # (B, C, h, w): sum / area
    areas = _window_areas((H, W), size, values.device)  # (h, w)
    dtype = window_mean.dtype
    mean = window_mean * (areas.to(dtype) / counts.clamp_min(1).to(dtype)).unsqueeze(1)  # sum / count
    return mean, counts


def _resize_majority(ids, present, num_classes, size):
    """Per output pixel, the class held by most present source pixels (lowest id on ties),
    ``(B, h, w)``, and the present pixels per window, ``(B, h, w)`` int64."""
    one_hot = F.one_hot(torch.where(present, ids, 0), num_classes)  # (B, H, W, K)
    one_hot = one_hot.permute(0, 3, 1, 2).bool() & present.unsqueeze(1)  # (B, K, H, W), False where missing
    votes = _window_sums(one_hot, size)  # (B, K, h, w), exact counts
    return votes.argmax(dim=1), votes.sum(dim=1)  # argmax takes the first (lowest) id on a tie


def _nearest(x: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """Pixel-centre nearest sampling of ``(B, C, H, W)`` (any dtype)."""
    if x.shape[2] * x.shape[3] == 0:  # no source pixel to sample
        return torch.zeros(*x.shape[:2], *size, dtype=x.dtype, device=x.device)
    work = x.to(torch.float64) if not x.is_floating_point() else x
    # float64 keeps class ids exact; "nearest-exact" samples at pixel centres (as PIL does),
    # where "nearest" would shift the image by half a pixel.
    return F.interpolate(work, size=size, mode="nearest-exact").to(x.dtype)


def _check_fill_fits(name: str, spec: LabelSpec, given: torch.Tensor) -> None:
    """Missing output pixels hold ``ignore_index``: the class map's integer dtype must hold it."""
    if spec.ignore_index is None or given.is_floating_point() or given.is_complex() or given.dtype == torch.bool:
        return  # no fill value, or a dtype that flatten_labels refuses with its own error
    info = torch.iinfo(given.dtype)
    if not info.min <= spec.ignore_index <= info.max:
        raise ValueError(
            f"label {name!r} is {given.dtype}, which cannot hold its ignore_index {spec.ignore_index} "
            f"(range [{info.min}, {info.max}]) that resize_labels writes at missing pixels; "
            "pass the class map in a wider integer dtype"
        )


def resize_labels(
    specs: Mapping[str, LabelSpec],
    labels: Mapping[str, torch.Tensor],
    masks: Mapping[str, torch.Tensor] | None = None,
    size: int | tuple[int, int] = None,
    *,
    categorical: str = "majority",
    min_present: float = 0.5,
) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
    """Resize a labels dict and its masks, never mixing missing values into present ones.

    Each output pixel covers a window of source pixels (the windows of
    ``torch.nn.functional.adaptive_avg_pool2d``, so any sizes work, up or down):

    - continuous labels: the mean over the window's *present* pixels only;
    - categorical labels, ``categorical="majority"``: the class of most present pixels in the
      window (the lowest id on a tie); ``"nearest"``: the source pixel nearest to the output
      pixel's centre (what SPADE-style code does with ``mode="nearest"``, which reads only one
      pixel in ``k * k`` when shrinking by ``k``).

    The label is present at an output pixel when at least ``min_present`` of its window was
    present (and at least one pixel was), counted in whole pixels and compared exactly, one rule
    for both kinds of label: 5 present pixels of 25 pass ``min_present=0.2``, 5 of 9 pass
    ``min_present=5/9``. ``min_present`` stands for the simplest fraction it rounds from
    (denominator up to ``2**24``). With ``"nearest"`` the label is present when the sampled
    pixel was. Missing output pixels hold 0 (categorical: ``ignore_index`` if the spec has one).
    An empty batch gives an empty result; a zero-size side gives windows with nothing present.

    Args:
        specs: ``{name: LabelSpec}`` of the labels.
        labels: ``{name: tensor}``, any non-empty subset of ``specs``, shaped as a merger takes
            them; the output keeps each label's shape convention and dtype.
        masks: Optional ``{name: bool}`` masks, True where present (default: present wherever a
            categorical label is not ``ignore_index``).
        size: Output ``(height, width)``, or one int for both.
        categorical: ``"majority"`` or ``"nearest"``.
        min_present: Fraction in ``[0, 1]`` of a window that must be present.

    Returns:
        ``(labels, masks)`` at the new size, for the labels given; masks are ``(B, h, w)`` bool.

    Raises:
        TypeError: A bad label or mask dtype.
        ValueError: A bad ``size``, ``categorical`` or ``min_present``, a class map whose
            integer dtype cannot hold its ``ignore_index`` (int8 and 255), or anything a merger
            would reject.

    Example:
        >>> import torch
        >>> from label_merge import LabelSpec, resize_labels
        >>> specs = {"depth": LabelSpec.continuous(1)}
        >>> depth = torch.tensor([[[[1.0, float("nan")], [3.0, 5.0]]]])
        >>> present = torch.tensor([[[True, False], [True, True]]])
        >>> labels, masks = resize_labels(specs, {"depth": depth}, {"depth": present}, size=1)
        >>> labels["depth"].flatten().tolist(), masks["depth"].flatten().tolist()
        ([3.0], [True])
    """
    specs = check_specs(specs)
    if size is None:
        raise ValueError("resize_labels needs size=(height, width)")
    size = _check_size(size)
    if categorical not in CATEGORICAL_MODES:
        raise ValueError(f"categorical must be one of {CATEGORICAL_MODES}, got {categorical!r}")
    threshold = _check_min_present(min_present)
    (B, H, W), flat = flatten_labels(specs, labels, masks)
    out_labels, out_masks = {}, {}
    for label in flat:
        spec, given = label.spec, labels[label.name]
        present = label.present.reshape(B, H, W)
        if spec.is_categorical:
            _check_fill_fits(label.name, spec, given)
            ids = label.values.reshape(B, H, W)  # zero where missing
            if categorical == "nearest":
                ids = _nearest(ids.unsqueeze(1), size)[:, 0]  # (B, h, w)
                keep = _nearest(present.unsqueeze(1), size)[:, 0]
            else:
                ids, counts = _resize_majority(ids, present, spec.channels, size)
                keep = _enough_present(counts, _window_areas((H, W), size, ids.device), threshold)
            fill = 0 if spec.ignore_index is None else spec.ignore_index
            ids = torch.where(keep, ids, fill).to(given.dtype)
            out_labels[label.name] = ids if given.dim() == 3 else ids.unsqueeze(1)
        else:
            values = label.values.reshape(B, H, W, spec.channels).permute(0, 3, 1, 2)  # (B, C, H, W)
            mean, counts = _resize_continuous(values, present, size)
            keep = _enough_present(counts, _window_areas((H, W), size, values.device), threshold)
            mean = torch.where(keep.unsqueeze(1), mean, 0).to(given.dtype)
            out_labels[label.name] = mean if given.dim() == 4 else mean[:, 0]
        out_masks[label.name] = keep
    return out_labels, out_masks
