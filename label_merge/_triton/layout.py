"""How the fused kernels tile a stack of transformer blocks: pure Python, no Triton.

Tokens live in HBM pixel-major, ``(P, N, d)``, i.e. as ``P * N`` rows of width ``d``. A kernel
program owns ``BLOCK_M`` rows (a power of two, the ``M`` of every ``tl.dot``), split into
groups of ``G`` rows (16 or 32). A group holds ``G // N`` whole pixels back to back, so a
group is a contiguous run of rows in HBM, and attention is a batched ``(G, G)`` problem per
group with a block-diagonal "same pixel" mask. Rows past ``(G // N) * N`` in a group are
padding (masked). For the paper's N=5, G=16 holds 3 pixels in 15 of its 16 rows.

Column dimensions are tiled in chunks whose widths are powers of two, because ``tl.arange``
must be: the model width ``d`` as ``heads`` chunks of the head dimension (96 = 3 x 32) and
the MLP width as chunks of at most 64 (384 = 6 x 64).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

__all__ = [
    "GROUP_SIZES",
    "MAX_TOKENS",
    "MAX_DIM",
    "MAX_HIDDEN",
    "HEAD_DIMS",
    "MAX_HIDDEN_CHUNK",
    "SUPPORTED_DTYPES",
    "StackShape",
    "choose_group",
    "hidden_chunk",
    "shape_reasons",
    "GRAD_NAMES",
]

GROUP_SIZES = (16, 32)
MAX_TOKENS = max(GROUP_SIZES)
HEAD_DIMS = (16, 32, 64, 128)
MAX_DIM = 256
MAX_HIDDEN = 1024
MAX_HIDDEN_CHUNK = 64
SUPPORTED_DTYPES = (torch.float32, torch.float16, torch.bfloat16)

# Parameter order of one block, as the kernels receive them and return their gradients.
GRAD_NAMES = (
    "norm1.weight",
    "norm1.bias",
    "attn.qkv.weight",
    "attn.qkv.bias",
    "attn.proj.weight",
    "attn.proj.bias",
    "norm2.weight",
    "norm2.bias",
    "mlp.fc1.weight",
    "mlp.fc1.bias",
    "mlp.fc2.weight",
    "mlp.fc2.bias",
)


def choose_group(num_tokens: int) -> int:
    """Rows per attention group: the size in ``GROUP_SIZES`` that wastes the fewest rows.

    Rows per pixel are ``G / (G // N)``; ties go to the smaller group (cheaper softmax).

    Raises:
        ValueError: ``num_tokens`` outside ``1 .. MAX_TOKENS``.
    """
    if not 1 <= num_tokens <= MAX_TOKENS:
        raise ValueError(f"the fused kernels take 1 to {MAX_TOKENS} tokens per pixel, got {num_tokens}")
    candidates = [g for g in GROUP_SIZES if g >= num_tokens]
    return min(candidates, key=lambda g: (g / (g // num_tokens), g))


def hidden_chunk(hidden: int, limit: int = MAX_HIDDEN_CHUNK) -> int:
    """Width of the MLP column chunks: the largest power of two dividing ``hidden``, at most ``limit``."""
    chunk = 1
    while hidden % (chunk * 2) == 0 and chunk * 2 <= limit:
        chunk *= 2
    return chunk


def shape_reasons(*, dim: int, heads: int, hidden: int, num_tokens: int | None) -> list[str]:
    """Every reason the kernels cannot tile this block configuration (empty if they can)."""
    reasons = []
    if heads < 1 or dim % heads:
        reasons.append(f"dim ({dim}) is not divisible by heads ({heads})")
    else:
        head_dim = dim // heads
        if head_dim not in HEAD_DIMS:
            reasons.append(f"head dim {head_dim} (dim {dim} / heads {heads}) is not one of {HEAD_DIMS}")
    if dim > MAX_DIM:
        reasons.append(f"dim {dim} is above {MAX_DIM} (a tile's rows are kept in registers)")
    if hidden % 16:
        reasons.append(f"MLP hidden width {hidden} is not a multiple of 16")
    if hidden > MAX_HIDDEN:
        reasons.append(f"MLP hidden width {hidden} is above {MAX_HIDDEN}")
    if num_tokens is not None and not 1 <= num_tokens <= MAX_TOKENS:
        reasons.append(f"{num_tokens} tokens per pixel (labels); the kernels take 1 to {MAX_TOKENS}")
    return reasons


@dataclass(frozen=True)
class StackShape:
    """Static shape of one fused call: everything that becomes a ``tl.constexpr``.

    Attributes:
        num_tokens: ``N``, tokens per pixel.
        dim: ``d``.
        heads: Attention heads; the head dim ``d / heads`` is the column chunk of ``d``.
        hidden: MLP hidden width.
    """

    num_tokens: int
    dim: int
    heads: int
    hidden: int

    def __post_init__(self) -> None:
        reasons = shape_reasons(dim=self.dim, heads=self.heads, hidden=self.hidden, num_tokens=self.num_tokens)
        if reasons:
            raise ValueError("the fused kernels cannot run this configuration: " + "; ".join(reasons))

    @property
    def head_dim(self) -> int:
        return self.dim // self.heads

    @property
    def group(self) -> int:
        return choose_group(self.num_tokens)

    @property
    def pixels_per_group(self) -> int:
        return self.group // self.num_tokens

    def pixels_per_tile(self, block_m: int) -> int:
        """Pixels one program handles with ``block_m`` rows."""
        return (block_m // self.group) * self.pixels_per_group

    def constexprs(self, max_hidden_chunk: int = MAX_HIDDEN_CHUNK) -> dict[str, int]:
        """The kernels' shape constants, with MLP chunks of at most ``max_hidden_chunk`` columns."""
        chunk = hidden_chunk(self.hidden, max_hidden_chunk)
        return {
            "N": self.num_tokens,
            "G": self.group,
            "PG": self.pixels_per_group,
            "E": self.head_dim,
            "NC": self.heads,
            "FC": chunk,
            "NF": self.hidden // chunk,
        }
