"""The pre-LN transformer block of TLAM, with timm ViT parameter names.

The names map one to one onto ``torch.nn.TransformerEncoderLayer(norm_first=True,
activation="gelu", batch_first=True)``: ``norm1``/``norm2`` are the same, ``attn.qkv`` is
``self_attn.in_proj_weight``/``in_proj_bias``, ``attn.proj`` is ``self_attn.out_proj``,
``mlp.fc1`` is ``linear1`` and ``mlp.fc2`` is ``linear2``. The arithmetic lives in
:mod:`label_merge.reference`.
"""

from __future__ import annotations

import torch
from torch import nn

from . import reference

__all__ = ["Attention", "Mlp", "TransformerBlock"]


class Attention(nn.Module):
    """Multi-head self-attention over the label tokens of each pixel."""

    def __init__(
        self, dim: int, heads: int, *, device: torch.device | str | None = None, dtype: torch.dtype | None = None
    ) -> None:
        super().__init__()
        if dim % heads != 0:
            raise ValueError(f"dim ({dim}) must be divisible by heads ({heads})")
        self.heads = heads
        self.qkv = nn.Linear(dim, 3 * dim, device=device, dtype=dtype)
        self.proj = nn.Linear(dim, dim, device=device, dtype=dtype)

    def forward(self, x: torch.Tensor, key_mask: torch.Tensor | None = None) -> torch.Tensor:
        """``(P, N, d)`` -> ``(P, N, d)``; ``key_mask`` ``(P, N)`` bool, True = may be attended to."""
        return reference.attention(
            x, key_mask, self.qkv.weight, self.qkv.bias, self.proj.weight, self.proj.bias, self.heads
        )


class Mlp(nn.Module):
    """``fc2(GELU(fc1(x)))`` with exact GELU."""

    def __init__(
        self, dim: int, hidden: int, *, device: torch.device | str | None = None, dtype: torch.dtype | None = None
    ) -> None:
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden, device=device, dtype=dtype)
        self.fc2 = nn.Linear(hidden, dim, device=device, dtype=dtype)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(nn.functional.gelu(self.fc1(x)))


class TransformerBlock(nn.Module):
    """``z + MSA(LN(z))`` then ``z + MLP(LN(z))`` (paper Eq. 2 and 3).

    LayerNorm eps is 1e-5, PyTorch's default, so the block matches ``TransformerEncoderLayer``.
    """

    def __init__(
        self,
        dim: int,
        heads: int,
        mlp_ratio: float,
        *,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
    ) -> None:
        super().__init__()
        hidden = int(round(dim * mlp_ratio))
        if hidden < 1:
            raise ValueError(f"mlp_ratio ({mlp_ratio}) gives an empty MLP for dim {dim}")
        self.norm1 = nn.LayerNorm(dim, device=device, dtype=dtype)
        self.attn = Attention(dim, heads, device=device, dtype=dtype)
        self.norm2 = nn.LayerNorm(dim, device=device, dtype=dtype)
        self.mlp = Mlp(dim, hidden, device=device, dtype=dtype)

    def forward(self, z: torch.Tensor, key_mask: torch.Tensor | None = None) -> torch.Tensor:
        """``(P, N, d)`` -> ``(P, N, d)``."""
        return reference.transformer_block(z, key_mask, self)
