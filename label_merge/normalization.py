"""Affine normalisation of continuous labels, kept in a merger's ``state_dict``.

Labels arrive in their own units: depth in metres, curvature in 1/m, normals in [-1, 1]. A
merger projects each label linearly, so without normalisation the label with the widest range
dominates the concept. A continuous :class:`~label_merge.LabelSpec` may carry a per-channel
``shift`` and ``scale``; the merger then sees ``(x - shift) / scale`` at present pixels.
"""

from __future__ import annotations

from collections.abc import Mapping

import torch
from torch import nn

from .labels import LabelSpec, PixelLabel

__all__ = ["LabelNormalization"]


class LabelNormalization(nn.Module):
    """Per-channel ``(x - shift) / scale`` for the continuous labels whose spec asks for it.

    Buffers ``shift_<name>`` and ``scale_<name>`` (``(C,)`` float32) exist only for labels with
    a ``shift`` or ``scale``, so a merger without normalisation has the same ``state_dict`` as
    before normalisation existed. The buffers, not the specs, are what is applied: a loaded
    ``state_dict`` brings its own values.

    Args:
        specs: Ordered ``{name: LabelSpec}`` (already checked).
        device: Factory argument for the buffers.
    """

    def __init__(self, specs: Mapping[str, LabelSpec], *, device: torch.device | str | None = None) -> None:
        super().__init__()
        self.names: list[str] = []
        for name, spec in specs.items():
            if spec.is_categorical or (spec.shift is None and spec.scale is None):
                continue
            shift = spec.shift if spec.shift is not None else (0.0,) * spec.channels
            scale = spec.scale if spec.scale is not None else (1.0,) * spec.channels
            self.register_buffer(f"shift_{name}", torch.tensor(shift, dtype=torch.float32, device=device))
            self.register_buffer(f"scale_{name}", torch.tensor(scale, dtype=torch.float32, device=device))
            self.names.append(name)

    def forward(self, label: PixelLabel) -> PixelLabel:
        """One flattened label, normalised where present and still exactly 0 where missing."""
        if label.name not in self.names:
            return label
        dtype = label.values.dtype
        shift = getattr(self, f"shift_{label.name}").to(dtype)  # (C,)
        scale = getattr(self, f"scale_{label.name}").to(dtype)  # (C,)
        values = (label.values - shift) / scale  # (P, C)
        # Missing positions stay 0, the drop rule's zero input, whatever the shift.
        values = torch.where(label.present.unsqueeze(1), values, 0)
        return PixelLabel(label.name, label.spec, values, label.present)

    def extra_repr(self) -> str:
        return f"labels={self.names}"
