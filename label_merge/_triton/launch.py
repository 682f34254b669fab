"""Host side of the kernels: parameter preparation, launch configurations, gradient buffers."""

from __future__ import annotations

import contextlib
import math
from dataclasses import dataclass

import torch
from triton.runtime.interpreter import InterpretedFunction

from . import kernels
from .layout import StackShape

__all__ = [
    "INTERPRETED",
    "LaunchConfig",
    "FORWARD_CONFIG",
    "BACKWARD_CONFIG",
    "BlockWeights",
    "block_forward",
    "block_backward",
    "allows_tf32",
]

# Whether the kernels were decorated under TRITON_INTERPRET=1 (they then run on CPU tensors).
INTERPRETED = isinstance(kernels.block_forward_kernel, InterpretedFunction)


@dataclass(frozen=True)
class LaunchConfig:
    """Rows per program and warps per program of one kernel.

    Attributes:
        block_m: Token rows per program (power of two, multiple of the group size).
        num_warps: Warps per program.
        max_hidden_chunk: Widest MLP column chunk (narrower chunks need fewer registers).
        num_slots: Copies of the weight gradient that programs add into (backward only); more
            copies mean fewer programs contending for the same addresses, fewer mean a
            smaller, cache-resident buffer.
        deterministic_programs: Programs (and gradient copies, one each) of the deterministic
            backward, used when ``torch.are_deterministic_algorithms_enabled()``; 0 means one
            per streaming multiprocessor.
    """

    block_m: int
    num_warps: int
    num_slots: int = 0
    max_hidden_chunk: int = 64
    deterministic_programs: int = 0


# Chosen from the sm_90 builds (benchmarks/kernel_resources.py, docs/kernels.md): the forward
# has no spills at 128 rows and 8 warps (one 64-row wgmma tile per warpgroup, half the weight
# traffic of 64 rows); the backward kernels spill least at 64 rows and 4 warps. They are read
# at each launch, so a tuning run may replace them.
FORWARD_CONFIG = LaunchConfig(block_m=128, num_warps=8)
BACKWARD_CONFIG = LaunchConfig(block_m=64, num_warps=4, num_slots=32, max_hidden_chunk=64)


@dataclass(frozen=True)
class BlockWeights:
    """One block's parameters as the kernels read them.

    Matrices are row-major ``(out, in)`` in the compute dtype (the ``tl.dot`` operand dtype);
    LayerNorm parameters and biases are fp32. ``eps1``/``eps2`` are the LayerNorm epsilons.
    """

    tensors: tuple[torch.Tensor, ...]  # in GRAD_NAMES order
    eps1: float
    eps2: float


def allows_tf32() -> bool:
    """Whether PyTorch's CUDA float32 matmuls may use TF32, read through the API torch has.

    Torch 2.9 and later keep the setting in ``torch.backends.cuda.matmul.fp32_precision``
    (``"none"`` inherits ``torch.backends.fp32_precision``); reading the legacy ``allow_tf32``
    there raises once the new API has been used. Older torch has only ``allow_tf32``.
    """
    matmul = torch.backends.cuda.matmul
    try:
        precision = matmul.fp32_precision
    except AttributeError:  # torch < 2.9: legacy flag only
        return bool(matmul.allow_tf32)
    if precision == "none":
        precision = getattr(torch.backends, "fp32_precision", "none")
    return precision == "tf32"


def _precision(compute_dtype: torch.dtype, *, interpreted: bool | None = None) -> str:
    """``tl.dot`` input precision for float32 operands (ignored for 16-bit ones).

    TF32 when PyTorch allows TF32 matmuls, else 3xTF32 (split operands, near-fp32 accuracy on
    tensor cores): exact ``"ieee"`` dots compile to FMA loops that take minutes to build and
    run far slower. The interpreter computes in exact fp32 whatever this says
    (``interpreted`` defaults to ``INTERPRETED``).
    """
    if (INTERPRETED if interpreted is None else interpreted) or compute_dtype != torch.float32:
        return "ieee"
    return "tf32" if allows_tf32() else "tf32x3"


def _device_guard(device: torch.device):
    """Make ``device`` current for a launch (Triton launches on the current CUDA device)."""
    if device.type == "cuda":
        return torch.cuda.device(device)
    return contextlib.nullcontext()


def _deterministic_programs(config: LaunchConfig, device: torch.device) -> int:
    if config.deterministic_programs:
        return config.deterministic_programs
    if device.type == "cuda":
        return torch.cuda.get_device_properties(device).multi_processor_count
    return 4  # the interpreter: a few programs, each with several tiles


def _constexprs(shape: StackShape, config: LaunchConfig, key_mask, compute_dtype) -> dict:
    block_m = config.block_m
    if block_m < 16 or block_m & (block_m - 1) or block_m % shape.group:
        raise ValueError(
            f"block_m must be a power of two, at least 16 and a multiple of the group size {shape.group}, got {block_m}"
        )
    return {
        **shape.constexprs(config.max_hidden_chunk),
        "BLOCK_M": config.block_m,
        "HAS_KEY_MASK": key_mask is not None,
        "PREC": _precision(compute_dtype),
    }


def _num_tiles(num_pixels: int, shape: StackShape, config: LaunchConfig) -> int:
    return _cdiv(num_pixels, shape.pixels_per_tile(config.block_m))


def _cdiv(a: int, b: int) -> int:
    return -(-a // b)


def block_forward(
    x: torch.Tensor,
    key_mask: torch.Tensor | None,
    weights: BlockWeights,
    shape: StackShape,
    *,
    config: LaunchConfig | None = None,
) -> torch.Tensor:
    """One transformer block on ``(P, N, d)`` contiguous tokens; returns a new ``(P, N, d)``.

    ``key_mask`` is ``(P, N)`` uint8 (1 = may be attended to) or None (every token);
    ``config`` defaults to ``FORWARD_CONFIG``.
    """
    config = config or FORWARD_CONFIG
    num_pixels = x.shape[0]
    y = torch.empty_like(x)
    grid = (_num_tiles(num_pixels, shape, config),)  # pixel tiles on grid axis 0 (up to 2**31 - 1)
    with _device_guard(x.device):
        _launch_forward(grid, x, y, key_mask, num_pixels, weights, shape, config)
    return y


def _launch_forward(grid, x, y, key_mask, num_pixels, weights, shape, config) -> None:
    kernels.block_forward_kernel[grid](
        x,
        y,
        key_mask if key_mask is not None else x,
        num_pixels,
        *weights.tensors,
        weights.eps1,
        weights.eps2,
        kernels.LOG2E / math.sqrt(shape.head_dim),
        **_constexprs(shape, config, key_mask, weights.tensors[2].dtype),
        num_warps=config.num_warps,
        num_stages=1,
    )


def block_backward(
    x: torch.Tensor,
    dy: torch.Tensor,
    key_mask: torch.Tensor | None,
    weights: BlockWeights,
    shape: StackShape,
    *,
    config: LaunchConfig | None = None,
    deterministic: bool | None = None,
) -> tuple[torch.Tensor, list[torch.Tensor]]:
    """Gradients of one block: ``dx`` ``(P, N, d)`` and fp32 parameter gradients (GRAD_NAMES order).

    ``config`` defaults to ``BACKWARD_CONFIG``. ``deterministic`` (default:
    ``torch.are_deterministic_algorithms_enabled()``) gives every program its own gradient slot
    and a fixed sequence of tiles, so the parameter gradients are the same bits on every run;
    otherwise programs add into shared slots with atomics, in whatever order they finish.
    """
    config = config or BACKWARD_CONFIG
    if deterministic is None:
        deterministic = torch.are_deterministic_algorithms_enabled()
    num_pixels = x.shape[0]
    num_tiles = _num_tiles(num_pixels, shape, config)
    if deterministic:
        num_slots = min(_deterministic_programs(config, x.device), num_tiles)
        num_programs = num_slots  # program p owns slot p and handles tiles p, p + num_slots, ...
    else:
        num_slots = max(1, min(config.num_slots, num_tiles))
        num_programs = num_tiles  # one program per tile, slot = program id % num_slots
    sizes = [t.numel() for t in weights.tensors]
    starts = [0]
    for size in sizes:
        starts.append(starts[-1] + -(-size // 4) * 4)  # 16-byte aligned parameter blocks
    total = starts[-1]
    partials = torch.zeros(num_slots, total, device=x.device, dtype=torch.float32)  # (slots, all params)
    views = [partials[:, start : start + size] for start, size in zip(starts, sizes, strict=False)]  # (slots, numel)
    common = dict(
        num_warps=config.num_warps,
        num_stages=1,
        OWN_SLOT=deterministic,
        **_constexprs(shape, config, key_mask, weights.tensors[2].dtype),
    )
    key_mask_arg = key_mask if key_mask is not None else x
    qk_scale = kernels.LOG2E / math.sqrt(shape.head_dim)
    dx1 = torch.empty_like(x)  # gradient at the block's midpoint x1 = x + MSA(LN1(x))
    dx = torch.empty_like(x)
    with _device_guard(x.device):
        kernels.mlp_backward_kernel[(num_programs,)](
            x,
            dy,
            dx1,
            key_mask_arg,
            num_pixels,
            *weights.tensors,
            *views[6:],
            total,
            num_slots,
            num_tiles,
            weights.eps1,
            weights.eps2,
            qk_scale,
            **common,
        )
        common.pop("FC")
        common.pop("NF")
        kernels.attention_backward_kernel[(num_programs,)](
            x,
            dx1,
            dx,
            key_mask_arg,
            num_pixels,
            *weights.tensors[:5],
            *views[:6],
            total,
            num_slots,
            num_tiles,
            weights.eps1,
            qk_scale,
            1.0 / math.sqrt(shape.head_dim),
            **common,
        )
    del dx1
    summed = partials.sum(dim=0)  # (all params,); a tree reduction without atomics: same bits every run
    grads = [summed[start : start + t.numel()].view_as(t) for start, t in zip(starts, weights.tensors, strict=False)]
    return dx, grads
