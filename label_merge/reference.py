"""The executable specification: plain PyTorch for every step of TLAM and CLAM.

These functions are the CPU path, the oracle that the fused kernels are tested against, and
the code that ``torch.compile`` sees. Tokens are laid out pixel-major: ``(P, N, d)`` for ``P``
pixels and ``N`` label tokens of width ``d``.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from einops import rearrange

from .labels import PixelLabel

__all__ = [
    "embed_label",
    "attention",
    "transformer_block",
    "pool_tokens",
    "encode_tokens",
]


def _compute_dtype(weight: torch.Tensor) -> torch.dtype:
    """The dtype that a Linear with this weight produces (autocast decides when it is on)."""
    if torch.is_autocast_enabled(weight.device.type):
        return torch.get_autocast_dtype(weight.device.type)
    return weight.dtype


def embed_label(label: PixelLabel, weight: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
    """Eq. (1): ``GELU(A_k x_k + b_k)`` for one label's pixels, with missing inputs set to zero.

    A categorical label is an embedding lookup of ``weight.T``, identical to applying the
    Linear to the one-hot vector (and a missing pixel's all-zero vector gives ``GELU(b_k)``),
    without ever building the one-hot tensor.

    Args:
        label: ``values`` ``(P, C)`` floats or ``(P,)`` ids, ``present`` ``(P,)``.
        weight: ``(d, C)``, the projection ``A_k``.
        bias: ``(d,)``, ``b_k``.

    Returns:
        ``(P, d)`` embeddings (zero-input embeddings where the label is missing).
    """
    if label.spec.is_categorical:
        rows = F.embedding(label.values, weight.t())  # (P, d): column id of A_k
        rows = torch.where(label.present.unsqueeze(1), rows, 0)
        pre = rows.to(_compute_dtype(weight)) + bias.to(_compute_dtype(weight))
    else:
        x = label.values
        if not torch.is_autocast_enabled(x.device.type):
            x = x.to(weight.dtype)
        pre = F.linear(x, weight, bias)  # (P, d)
    return F.gelu(pre)


def attention(
    x: torch.Tensor,
    key_mask: torch.Tensor | None,
    qkv_weight: torch.Tensor,
    qkv_bias: torch.Tensor,
    proj_weight: torch.Tensor,
    proj_bias: torch.Tensor,
    heads: int,
    *,
    return_weights: bool = False,
) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
    """Multi-head self-attention across the N tokens of every pixel.

    Args:
        x: ``(P, N, d)`` normalised tokens.
        key_mask: ``(P, N)`` bool, True for tokens that may be attended to, or None for all.
            A pixel must have at least one True key (the caller guarantees it).
        qkv_weight: ``(3d, d)``, q, k and v stacked in that order, heads contiguous.
        qkv_bias: ``(3d,)``.
        proj_weight: ``(d, d)``; proj_bias: ``(d,)``.
        heads: Number of heads; ``d`` must be divisible by it.
        return_weights: Also return the attention probabilities ``(P, heads, N, N)``.

    Returns:
        ``(P, N, d)``, and the probabilities when asked.
    """
    qkv = F.linear(x, qkv_weight, qkv_bias)  # (P, N, 3d)
    q, k, v = rearrange(qkv, "p n (three h e) -> three p h n e", three=3, h=heads)  # each (P, h, N, e)
    if return_weights or not _use_cpu_fused_attention(x):
        out, probs = _explicit_attention(q, k, v, key_mask)
    else:
        mask = None if key_mask is None else key_mask[:, None, None, :]  # (P, 1, 1, N), True = attend
        out, probs = F.scaled_dot_product_attention(q, k, v, attn_mask=mask), None
    out = F.linear(rearrange(out, "p h n e -> p n (h e)"), proj_weight, proj_bias)  # (P, N, d)
    return (out, probs) if return_weights else out


def _explicit_attention(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, key_mask: torch.Tensor | None
) -> tuple[torch.Tensor, torch.Tensor]:
    """``softmax(q k^T / sqrt(e)) v`` on ``(P, h, N, e)`` tensors; returns ``(out, probs)``."""
    scores = torch.einsum("phqe,phke->phqk", q, k) * (1.0 / math.sqrt(q.shape[-1]))  # (P, h, N, N)
    if key_mask is not None:
        scores = scores.masked_fill(~key_mask[:, None, None, :], float("-inf"))
    # Softmax in at least float32 (float64 stays float64 for gradcheck).
    probs = scores.softmax(dim=-1, dtype=torch.promote_types(scores.dtype, torch.float32)).to(v.dtype)
    return torch.einsum("phqk,phke->phqe", probs, v), probs  # (P, h, N, e), (P, h, N, N)


def _use_cpu_fused_attention(x: torch.Tensor) -> bool:
    """Whether to compute attention with PyTorch's fused kernel instead of the explicit form.

    On the CPU, ``scaled_dot_product_attention`` computes the same function (tests check it
    against the explicit form) about twice as fast as millions of tiny batched matmuls. On
    CUDA the explicit form stays: the stock fused kernels put the batch on a grid axis capped
    at 65,535 rows, and the Triton backend is the fast CUDA path.
    """
    return x.device.type == "cpu"


def transformer_block(
    z: torch.Tensor, key_mask: torch.Tensor | None, block: torch.nn.Module, *, return_weights: bool = False
) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
    """Eq. (2) and (3), pre-LN: ``z + MSA(LN(z))`` then ``z + MLP(LN(z))`` with exact GELU.

    Args:
        z: ``(P, N, d)`` tokens.
        key_mask: ``(P, N)`` bool or None, see :func:`attention`.
        block: A :class:`label_merge.transformer.TransformerBlock` (holds the parameters).
        return_weights: Also return the attention probabilities ``(P, heads, N, N)``.

    Returns:
        ``(P, N, d)``, and the probabilities when asked.
    """
    a = block.attn
    h = F.layer_norm(z, z.shape[-1:], block.norm1.weight, block.norm1.bias, block.norm1.eps)
    att = attention(
        h, key_mask, a.qkv.weight, a.qkv.bias, a.proj.weight, a.proj.bias, a.heads, return_weights=return_weights
    )
    att, probs = att if return_weights else (att, None)
    z = z + att
    h = F.layer_norm(z, z.shape[-1:], block.norm2.weight, block.norm2.bias, block.norm2.eps)
    m = block.mlp
    z = z + F.linear(F.gelu(F.linear(h, m.fc1.weight, m.fc1.bias)), m.fc2.weight, m.fc2.bias)
    return (z, probs) if return_weights else z


def pool_tokens(
    z: torch.Tensor, present: torch.Tensor | None, null_concept: torch.Tensor | None = None
) -> torch.Tensor:
    """The mean over tokens that makes the concept vector.

    Args:
        z: ``(P, N, d)`` output tokens.
        present: ``(P, N)`` bool. None means every token counts (``drop="zero"``); otherwise the
            mean runs over present tokens only (``drop="exclude"``).
        null_concept: ``(d,)``, the concept of a pixel with no present token (exclude mode).

    Returns:
        ``(P, d)``; never NaN, also for pixels with nothing present.
    """
    if present is None:
        return z.mean(dim=1)
    weights = present.to(z.dtype)  # (P, N)
    count = weights.sum(dim=1, keepdim=True)  # (P, 1)
    summed = torch.einsum("pnd,pn->pd", z, weights)
    mean = summed / count.clamp_min(1)
    return torch.where(count > 0, mean, null_concept.to(mean.dtype))


def attention_keys(present: torch.Tensor) -> torch.Tensor:
    """Key mask for ``drop="exclude"``: present tokens, or all tokens of a pixel with none present.

    A pixel with nothing present would otherwise softmax over no keys (NaN in forward and
    backward). Its tokens are finite, its result is replaced by the null concept, and so letting
    it attend to all of them changes no output and keeps every gradient finite.
    """
    return present | ~present.any(dim=1, keepdim=True)  # (P, N)


def encode_tokens(
    z: torch.Tensor,
    present: torch.Tensor,
    blocks: Sequence[torch.nn.Module],
    *,
    drop: str,
    null_concept: torch.Tensor | None = None,
    checkpoint: bool = False,
) -> torch.Tensor:
    """The concept generation block: ``depth`` transformer blocks, then the mean over tokens.

    Args:
        z: ``(P, N, d)`` embedded tokens ``e_k + p_k``.
        present: ``(P, N)`` bool presence of each token.
        blocks: Sequence of :class:`label_merge.transformer.TransformerBlock`.
        drop: ``"zero"`` (every token attends and is averaged) or ``"exclude"``.
        null_concept: ``(d,)`` for exclude mode.
        checkpoint: Recompute each block in backward instead of storing its activations.

    Returns:
        ``(P, d)`` concept vectors.
    """
    key_mask = attention_keys(present) if drop == "exclude" else None
    for block in blocks:
        if checkpoint and torch.is_grad_enabled():
            z = torch.utils.checkpoint.checkpoint(transformer_block, z, key_mask, block, use_reentrant=False)
        else:
            z = transformer_block(z, key_mask, block)
    return pool_tokens(z, present if drop == "exclude" else None, null_concept)
