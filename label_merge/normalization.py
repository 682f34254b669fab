"""Affine normalisation of continuous labels, kept in a merger's ``state_dict``.

Labels arrive in their own units: depth in metres, curvature in 1/m, normals in [-1, 1]. A
merger projects each label linearly, so without normalisation the label with the widest range
dominates the concept. A continuous :class:`~label_merge.LabelSpec` may carry a per-channel
``shift`` and ``scale``; the merger then sees ``(x - shift) / scale`` at present pixels.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping

import torch
from torch import nn

from .labels import LabelSpec, PixelLabel

__all__ = ["LabelNormalization", "NormalizationLoadHints", "normalization_load_hints"]


def _buffer_values(spec: LabelSpec) -> tuple[torch.Tensor, torch.Tensor]:
    """The ``(C,)`` float32 shift and scale a spec asks for (0 and 1 where it gives none)."""
    shift = spec.shift if spec.shift is not None else (0.0,) * spec.channels
    scale = spec.scale if spec.scale is not None else (1.0,) * spec.channels
    return torch.tensor(shift, dtype=torch.float32), torch.tensor(scale, dtype=torch.float32)


class LabelNormalization(nn.Module):
    """Per-channel ``(x - shift) / scale`` for the continuous labels whose spec asks for it.

    Buffers ``shift_<name>`` and ``scale_<name>`` (``(C,)`` float32) exist only for labels with
    a ``shift`` or ``scale``, so a merger without normalisation has the same ``state_dict`` as
    before normalisation existed. The buffers, not the specs, are what is applied: a loaded
    ``state_dict`` brings its own values, and the specs are updated to show them.

    The buffers stay float32 when the module is cast (``.half()``, ``.to(torch.bfloat16)``),
    and ``(x - shift) / scale`` is computed in float32 (float64 for float64 labels): a scale
    of ``1e-8`` or a shift of ``7e4`` would not survive float16.

    Args:
        specs: Ordered ``{name: LabelSpec}`` (already checked). The merger's own dict: a loaded
            ``state_dict`` that brings other values replaces the specs in it.
        device: Factory argument for the buffers.
    """

    def __init__(self, specs: dict[str, LabelSpec], *, device: torch.device | str | None = None) -> None:
        super().__init__()
        self._specs = specs
        self.names: list[str] = []
        for name, spec in specs.items():
            if spec.is_categorical or (spec.shift is None and spec.scale is None):
                continue
            shift, scale = _buffer_values(spec)
            self.register_buffer(f"shift_{name}", shift.to(device))
            self.register_buffer(f"scale_{name}", scale.to(device))
            self.names.append(name)

    def forward(self, label: PixelLabel) -> PixelLabel:
        """One flattened label, normalised where present and still exactly 0 where missing.

        The values come back in float32 (float64 for float64 labels); the projection that
        follows casts them to its own dtype.
        """
        if label.name not in self.names:
            return label
        dtype = torch.promote_types(label.values.dtype, torch.float32)
        shift = getattr(self, f"shift_{label.name}").to(dtype)  # (C,)
        scale = getattr(self, f"scale_{label.name}").to(dtype)  # (C,)
        values = (label.values.to(dtype) - shift) / scale  # (P, C)
        # Missing positions stay 0, the drop rule's zero input, whatever the shift.
        values = torch.where(label.present.unsqueeze(1), values, 0)
        return PixelLabel(label.name, label.spec, values, label.present)

    def _apply(self, fn: Callable[[torch.Tensor], torch.Tensor], recurse: bool = True) -> LabelNormalization:
        # Follow device moves, but not dtype casts: float16 would round a scale of 1e-8 to 0.
        for key, buffer in self._buffers.items():
            if buffer is None:
                continue
            moved = fn(buffer)
            self._buffers[key] = moved if moved.dtype == buffer.dtype else buffer.to(moved.device)
        return self

    def _load_from_state_dict(
        self, state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys, error_msgs
    ) -> None:
        super()._load_from_state_dict(
            state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys, error_msgs
        )
        # Whether the merger is loaded on its own or inside a larger model, strictly or not.
        for name in self.names:
            self._specs[name] = self._spec_from_buffers(name)

    def mismatch_hints(self, state_dict: Mapping[str, torch.Tensor], prefix: str) -> list[str]:
        """Say why normalisation buffers are missing or unexpected, beyond torch's list of keys."""
        hints = []
        lacking = [name for name in self.names if f"{prefix}shift_{name}" not in state_dict]
        if lacking:
            hints.append(
                f"the state_dict has no normalisation for label(s) {lacking} ({prefix}shift_<name>, "
                f"{prefix}scale_<name>): it was saved by a merger whose specs gave them no shift or scale, "
                "for instance by label-merge 0.1.0, which had no normalisation. Build the merger with the "
                "specs it was trained with, or load with strict=False to keep this merger's shift and scale"
            )
        extra = sorted(
            key.removeprefix(f"{prefix}shift_")
            for key in state_dict
            if key.startswith(f"{prefix}shift_") and key.removeprefix(f"{prefix}shift_") not in self.names
        )
        if extra:
            hints.append(
                f"the state_dict normalises label(s) {extra}, whose specs in this merger have no shift or scale; "
                "build the merger with the specs it was trained with"
            )
        return hints

    def _spec_from_buffers(self, name: str) -> LabelSpec:
        """The spec of ``name``, updated to the shift and scale its buffers now hold."""
        spec = self._specs[name]
        shift = getattr(self, f"shift_{name}").detach().cpu()
        scale = getattr(self, f"scale_{name}").detach().cpu()
        wanted_shift, wanted_scale = _buffer_values(spec)
        if torch.equal(shift, wanted_shift) and torch.equal(scale, wanted_scale):
            return spec  # unchanged (and not rounded to float32)
        return dataclasses.replace(
            spec,
            shift=None if bool((shift == 0).all()) else tuple(shift.tolist()),
            scale=None if bool((scale == 1).all()) else tuple(scale.tolist()),
        )

    def extra_repr(self) -> str:
        return f"labels={self.names}"


def normalization_load_hints(model: nn.Module, state_dict: Mapping[str, torch.Tensor]) -> list[str]:
    """Why ``state_dict`` lacks (or has unexpected) normalisation buffers for any merger in ``model``.

    For code that loads a model holding mergers and wants a clearer error than torch's list of
    keys (``merger.normalize.shift_<name>``). Empty when the normalisation buffers match.
    """
    hints = []
    for prefix, module in model.named_modules():
        if isinstance(module, LabelNormalization):
            hints.extend(module.mismatch_hints(state_dict, f"{prefix}." if prefix else ""))
    return hints


class NormalizationLoadHints:
    """Mixin for a merger with a ``normalize`` :class:`LabelNormalization`: a strict
    ``load_state_dict`` that fails on normalisation keys says why (torch lists only the keys).

    The hint is added where the merger itself is loaded; code that loads a model holding a
    merger can add it with :func:`normalization_load_hints`.
    """

    normalize: LabelNormalization

    def load_state_dict(self, state_dict: Mapping[str, torch.Tensor], strict: bool = True, assign: bool = False):
        try:
            return super().load_state_dict(state_dict, strict=strict, assign=assign)
        except RuntimeError as error:
            hints = normalization_load_hints(self, state_dict)
            if not hints:
                raise
            raise RuntimeError("\n\t".join([str(error), *hints])) from None
