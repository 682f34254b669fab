"""Label specifications and validation of the ``labels`` / ``masks`` dicts.

A merger is built from an ordered mapping ``{name: LabelSpec}``. At call time it receives
``labels`` (``{name: tensor}``, any subset of the specs) and optional ``masks``
(``{name: bool tensor}``, True where the label is present). Everything here turns those dicts
into per-label, per-pixel inputs and raises a clear error when something does not fit.
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal

import torch
from einops import rearrange
from torch import nn

__all__ = ["LabelSpec", "PixelLabel", "flatten_labels"]


# Normalisation is stored and applied in float32: a shift or scale must survive that rounding.
_FLOAT32 = torch.finfo(torch.float32)


def _as_numbers(what: str, value: Any, channels: int) -> tuple[float, ...]:
    """A number, or a sequence (list, tuple, 0-d/1-d tensor or array) of ``channels`` numbers, as floats."""
    if isinstance(value, torch.Tensor) or type(value).__module__ == "numpy":
        if getattr(value, "ndim", 0) > 1:
            raise ValueError(
                f"LabelSpec {what} must be a number or {channels} numbers, got an array of shape {tuple(value.shape)}"
            )
        value = value.tolist()  # a 0-d tensor or numpy scalar gives a number, a 1-d one a list
    if isinstance(value, numbers.Real) and not isinstance(value, bool):
        return (float(value),) * channels
    if isinstance(value, (str, bytes, Mapping, set, frozenset)) or not isinstance(value, Sequence):
        # A dict or set would be read as its keys or in no fixed order: refuse it.
        raise ValueError(
            f"LabelSpec {what} must be a number or a sequence of {channels} numbers (one per channel), "
            f"got a {type(value).__name__}: {value!r}"
        )
    not_numbers = [v for v in value if isinstance(v, bool) or not isinstance(v, numbers.Real)]
    if not_numbers:
        raise ValueError(f"LabelSpec {what} must hold numbers only, got {not_numbers[0]!r} in {value!r}")
    if len(value) != channels:
        raise ValueError(f"LabelSpec {what} must have one value per channel ({channels}), got {len(value)}")
    return tuple(float(v) for v in value)


def _per_channel(what: str, value: Any, channels: int) -> tuple[float, ...] | None:
    """A scalar or per-channel sequence as a tuple of ``channels`` floats that float32 holds (None stays None)."""
    if value is None:
        return None
    values = _as_numbers(what, value, channels)
    if not all(math.isfinite(v) for v in values):
        raise ValueError(f"LabelSpec {what} must be finite, got {value!r}")
    too_large = [v for v in values if abs(v) > _FLOAT32.max]
    if too_large:
        raise ValueError(
            f"LabelSpec {what} {too_large[0]!r} is beyond float32's range (+-{_FLOAT32.max:.3e}), "
            "in which normalisation is stored and applied"
        )
    return values


def _check_scale(scale: tuple[float, ...]) -> None:
    """A scale must be non-zero, and so large that dividing by it in float32 stays finite."""
    if any(v == 0 for v in scale):
        raise ValueError(f"LabelSpec scale must be non-zero, got {scale}")
    too_small = [v for v in scale if abs(v) < _FLOAT32.tiny]
    if too_small:
        raise ValueError(
            f"LabelSpec scale {too_small[0]!r} is too close to zero for float32 (|scale| must be at least "
            f"{_FLOAT32.tiny:.3e}), in which normalisation is stored and applied"
        )


@dataclass(frozen=True)
class LabelSpec:
    """What one kind of per-pixel label looks like.

    Build one with :meth:`categorical` or :meth:`continuous` rather than directly.

    Attributes:
        kind: ``"categorical"`` (an integer class map) or ``"continuous"`` (float channels).
        channels: Input features per pixel: the number of classes for a categorical label
            (the width of its one-hot vector), the channel count for a continuous one.
        ignore_index: For a categorical label, the class id that marks a missing pixel, or None.
        shift: For a continuous label, per-channel values subtracted before the projection, or
            None (no shift).
        scale: For a continuous label, per-channel values the shifted label is divided by, or
            None (no scaling). A merger sees ``(x - shift) / scale``.
    """

    kind: Literal["categorical", "continuous"]
    channels: int
    ignore_index: int | None = None
    shift: tuple[float, ...] | None = None
    scale: tuple[float, ...] | None = None

    def __post_init__(self) -> None:
        if self.kind not in ("categorical", "continuous"):
            raise ValueError(f"LabelSpec kind must be 'categorical' or 'continuous', got {self.kind!r}")
        if isinstance(self.channels, bool) or not isinstance(self.channels, int) or self.channels < 1:
            raise ValueError(f"LabelSpec channels must be a positive int, got {self.channels!r}")
        if self.ignore_index is not None:
            if self.kind != "categorical":
                raise ValueError("ignore_index only applies to categorical labels")
            if isinstance(self.ignore_index, bool) or not isinstance(self.ignore_index, int):
                raise ValueError(f"ignore_index must be an int or None, got {self.ignore_index!r}")
        if self.kind == "categorical" and (self.shift is not None or self.scale is not None):
            raise ValueError("shift and scale only apply to continuous labels")
        # Normalise scalars to per-channel tuples (the dataclass is frozen, hence __setattr__).
        object.__setattr__(self, "shift", _per_channel("shift", self.shift, self.channels))
        object.__setattr__(self, "scale", _per_channel("scale", self.scale, self.channels))
        if self.scale is not None:
            _check_scale(self.scale)

    @classmethod
    def categorical(cls, num_classes: int, ignore_index: int | None = None) -> LabelSpec:
        """A class-index map, given as an integer tensor ``(B, H, W)`` or ``(B, 1, H, W)``.

        Args:
            num_classes: Valid ids are ``0 .. num_classes - 1``.
            ignore_index: An id meaning "no label here" (it may lie inside or outside the
                valid range, e.g. ``0`` for Taskonomy or ``255`` for Cityscapes).

        Examples:
            >>> LabelSpec.categorical(18, ignore_index=0).channels
            18
        """
        return cls("categorical", num_classes, ignore_index)

    @classmethod
    def continuous(
        cls,
        channels: int,
        *,
        shift: float | Sequence[float] | None = None,
        scale: float | Sequence[float] | None = None,
    ) -> LabelSpec:
        """A float map ``(B, channels, H, W)``; a one-channel map may also be ``(B, H, W)``.

        Labels come in their own units (depth in metres, curvature in 1/m, normals in
        [-1, 1]); without normalisation the label with the widest range dominates the concept.
        ``shift`` and ``scale`` (a number, or one per channel) make the merger see
        ``(x - shift) / scale``, e.g. a dataset's mean and standard deviation. They are stored
        in the merger's ``state_dict`` as float32 and applied in float32 (float64 for float64
        labels), whatever the label's or the merger's dtype.

        Args:
            channels: Channels per pixel.
            shift: Subtracted first; None for 0. A number, or a list, tuple, or 0-d or 1-d
                tensor or array of ``channels`` numbers.
            scale: Divides the shifted value; None for 1. Given as ``shift``; non-zero.

        Raises:
            ValueError: A shift or scale that is not a number or a sequence of numbers (a dict,
                a string), of the wrong length, non-finite or beyond float32's range, or a scale
                that is zero or too small for float32 (below ``torch.finfo(torch.float32).tiny``).

        Examples:
            >>> LabelSpec.continuous(3).kind
            'continuous'
            >>> LabelSpec.continuous(1, shift=3.0, scale=2.0).scale
            (2.0,)
        """
        return cls("continuous", channels, shift=shift, scale=scale)

    @property
    def is_categorical(self) -> bool:
        return self.kind == "categorical"

    @property
    def num_classes(self) -> int:
        """The number of classes of a categorical label."""
        if not self.is_categorical:
            raise AttributeError("num_classes is only defined for categorical labels")
        return self.channels

    def to_dict(self) -> dict[str, Any]:
        """A JSON-able dict; :meth:`from_dict` inverts it.

        Examples:
            >>> spec = LabelSpec.continuous(2, scale=(1.0, 4.0))
            >>> LabelSpec.from_dict(spec.to_dict()) == spec
            True
        """
        d: dict[str, Any] = {"kind": self.kind, "channels": self.channels, "ignore_index": self.ignore_index}
        if self.shift is not None:
            d["shift"] = list(self.shift)
        if self.scale is not None:
            d["scale"] = list(self.scale)
        return d

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> LabelSpec:
        """Inverse of :meth:`to_dict` (dicts without ``shift``/``scale`` give an identity normalisation)."""
        return cls(d["kind"], d["channels"], d.get("ignore_index"), shift=d.get("shift"), scale=d.get("scale"))


def _reserved_names() -> frozenset[str]:
    # Label names become ModuleDict keys and buffer-name suffixes; nn.ModuleDict refuses a key
    # that is one of its attributes ("type", "keys", "float", "training", ...).
    return frozenset(dir(nn.ModuleDict())) | frozenset(vars(nn.ModuleDict()))


def check_specs(specs: Mapping[str, LabelSpec]) -> dict[str, LabelSpec]:
    """Return ``specs`` as a plain ordered dict after checking names and types."""
    if not isinstance(specs, Mapping) or len(specs) == 0:
        raise ValueError("specs must be a non-empty mapping {name: LabelSpec}")
    for name, spec in specs.items():
        if not isinstance(name, str) or not name.isidentifier():
            # Names become ModuleDict keys, so they must be valid attribute-like strings.
            raise ValueError(f"label name {name!r} must be a non-empty identifier string")
        if name in _reserved_names():
            raise ValueError(
                f"label name {name!r} is an attribute of torch.nn.Module/ModuleDict and cannot name a label's "
                f"parameters; rename it (e.g. {name + '_label'!r})"
            )
        if not isinstance(spec, LabelSpec):
            raise TypeError(f"specs[{name!r}] must be a LabelSpec, got {type(spec).__name__}")
    return dict(specs)


@dataclass
class PixelLabel:
    """One label flattened to pixels.

    Attributes:
        name: The label's name.
        spec: Its specification.
        values: ``(P, C)`` floats (continuous) or ``(P,)`` int64 class ids (categorical), with
            ``P = B*H*W`` in ``(b, h, w)`` order. Missing positions hold 0, never NaN or an
            out-of-range id, so nothing at a missing position can reach the output.
        present: ``(P,)`` bool, True where the label is present.
    """

    name: str
    spec: LabelSpec
    values: torch.Tensor
    present: torch.Tensor

    def chunk(self, start: int, stop: int) -> PixelLabel:
        return PixelLabel(self.name, self.spec, self.values[start:stop], self.present[start:stop])


def _expected(spec: LabelSpec) -> str:
    if spec.is_categorical:
        return "(B, H, W) or (B, 1, H, W) integer class ids"
    if spec.channels == 1:
        return "(B, 1, H, W) or (B, H, W) floats"
    return f"(B, {spec.channels}, H, W) floats"


def _as_bchw(name: str, spec: LabelSpec, x: torch.Tensor) -> torch.Tensor:
    """Check dtype and channel count; return ``(B, C, H, W)``."""
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"label {name!r} must be a torch.Tensor, got {type(x).__name__}")
    if spec.is_categorical:
        if x.is_floating_point() or x.is_complex() or x.dtype == torch.bool:
            raise TypeError(f"label {name!r} is categorical: expected an integer tensor of class ids, got {x.dtype}")
    elif not x.is_floating_point():
        raise TypeError(f"label {name!r} is continuous: expected a floating-point tensor, got {x.dtype}")
    one_channel = spec.is_categorical or spec.channels == 1
    if x.dim() == 3 and one_channel:
        x = x.unsqueeze(1)
    if x.dim() != 4 or x.shape[1] != (1 if spec.is_categorical else spec.channels):
        raise ValueError(f"label {name!r}: expected {_expected(spec)}, got shape {tuple(x.shape)}")
    return x


def _as_mask(name: str, m: torch.Tensor, bhw: tuple[int, int, int]) -> torch.Tensor:
    """Check a mask; return ``(B, H, W)`` bool."""
    if not isinstance(m, torch.Tensor):
        raise TypeError(f"masks[{name!r}] must be a torch.Tensor, got {type(m).__name__}")
    if m.dtype != torch.bool:
        raise TypeError(f"masks[{name!r}] must be a bool tensor (True = present), got {m.dtype}")
    if m.dim() == 4 and m.shape[1] == 1:
        m = m[:, 0]
    if tuple(m.shape) != bhw:
        B, H, W = bhw
        raise ValueError(f"masks[{name!r}]: expected shape ({B}, {H}, {W}) or ({B}, 1, {H}, {W}), got {tuple(m.shape)}")
    return m


def flatten_labels(
    specs: Mapping[str, LabelSpec],
    labels: Mapping[str, torch.Tensor],
    masks: Mapping[str, torch.Tensor] | None = None,
    *,
    check_values: bool = True,
) -> tuple[tuple[int, int, int], list[PixelLabel]]:
    """Validate ``labels`` and ``masks`` and flatten the given labels to pixels.

    Args:
        specs: The merger's label specifications, in token order.
        labels: ``{name: tensor}`` for any non-empty subset of ``specs``.
        masks: Optional ``{name: bool (B, H, W) or (B, 1, H, W)}``, True where present; only for
            labels that are given.
        check_values: Check categorical ids against the valid range (a data-dependent check;
            skipped while ``torch.compile`` traces).

    Returns:
        ``((B, H, W), pixel_labels)`` with one :class:`PixelLabel` per given label, in spec order.

    Raises:
        TypeError: A label or mask of the wrong type or dtype.
        ValueError: An unknown label, no labels at all, a wrong shape, mismatched sizes, devices,
            or a class id out of range.
    """
    if not isinstance(labels, Mapping):
        raise TypeError(f"labels must be a mapping {{name: tensor}}, got {type(labels).__name__}")
    masks = {} if masks is None else masks
    if not isinstance(masks, Mapping):
        raise TypeError(f"masks must be a mapping {{name: bool tensor}} or None, got {type(masks).__name__}")
    for where, given in (("labels", labels), ("masks", masks)):
        unknown = [k for k in given if k not in specs]
        if unknown:
            raise ValueError(f"unknown label(s) {unknown} in {where}; this merger knows {list(specs)}")
    orphan = [k for k in masks if k not in labels]
    if orphan:
        raise ValueError(f"masks given for label(s) {orphan} that are not in labels")
    if len(labels) == 0:
        raise ValueError(f"labels is empty: give at least one of {list(specs)}")

    bchw = {name: _as_bchw(name, specs[name], labels[name]) for name in specs if name in labels}
    first, x0 = next(iter(bchw.items()))
    bhw = (x0.shape[0], x0.shape[2], x0.shape[3])
    for name, x in bchw.items():
        if (x.shape[0], x.shape[2], x.shape[3]) != bhw:
            raise ValueError(
                f"label {name!r} has batch and spatial size {(x.shape[0], *x.shape[2:])}, "
                f"but label {first!r} has {bhw}; all labels must match"
            )
        if x.device != x0.device:
            raise ValueError(f"label {name!r} is on {x.device}, but label {first!r} is on {x0.device}")

    out = []
    for name, x in bchw.items():
        spec = specs[name]
        present = torch.ones(bhw, dtype=torch.bool, device=x.device)
        if name in masks:
            m = _as_mask(name, masks[name], bhw)
            if m.device != x.device:
                raise ValueError(f"masks[{name!r}] is on {m.device}, but the label is on {x.device}")
            present = m
        if spec.is_categorical:
            ids = x[:, 0].long()  # (B, H, W)
            if spec.ignore_index is not None:
                present = present & (ids != spec.ignore_index)
            if check_values and not torch.compiler.is_compiling():
                bad = present & ((ids < 0) | (ids >= spec.num_classes))
                if bool(bad.any()):
                    lo, hi = int(ids[bad].min()), int(ids[bad].max())
                    raise ValueError(
                        f"label {name!r}: class ids must lie in [0, {spec.num_classes - 1}] where present, "
                        f"found values in [{lo}, {hi}] (mark missing pixels with the mask or ignore_index)"
                    )
            values = rearrange(torch.where(present, ids, 0), "b h w -> (b h w)")
        else:
            # torch.where, not multiplication: 0 * NaN would still be NaN.
            values = rearrange(torch.where(present.unsqueeze(1), x, 0), "b c h w -> (b h w) c")
        out.append(PixelLabel(name, spec, values, rearrange(present, "b h w -> (b h w)")))
    return bhw, out


def num_pixels(bhw: tuple[int, int, int]) -> int:
    return math.prod(bhw)
