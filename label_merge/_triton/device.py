"""Which GPUs can run the fused kernels: vendor, compute capability and shared memory.

Pure Python over ``torch.cuda`` queries (no Triton), so the checks are cheap enough for every
dispatch and can be tested on CPU with the queries replaced.

Shared memory is the limit that bites first: Triton stages ``tl.dot`` operands and layout
conversions in it, a launch that needs more than the device's per-block opt-in limit raises
``OutOfResources``, and the need grows with the tile widths. :func:`shared_memory_estimate`
is a conservative model of it from the tile sizes, calibrated against ahead-of-time builds
(:mod:`label_merge._triton.aot`) for sm_90a and sm_80 (docs/kernels.md has the table).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from .layout import StackShape, hidden_chunk

__all__ = [
    "MIN_CAPABILITY",
    "DeviceLimits",
    "device_limits",
    "shared_memory_estimate",
    "device_reasons",
]

# tl.dot operand dtype -> oldest NVIDIA compute capability the kernels accept. bf16 and tf32
# (the float32 path's tf32 / 3xTF32 dots) need Ampere's tensor cores. fp16 dots exist on Turing,
# but there the kernels' shared memory is not modelled (an sm_75 build needs about twice what
# the model predicts), so Turing and older are refused for every dtype.
MIN_CAPABILITY = {torch.float16: (8, 0), torch.bfloat16: (8, 0), torch.float32: (8, 0)}

# The model's margin over the largest measured build (see shared_memory_estimate).
_SAFETY = 1.25


@dataclass(frozen=True)
class DeviceLimits:
    """What the checks need to know about one GPU.

    Attributes:
        name: Device name.
        vendor: ``"nvidia"`` or ``"amd"`` (a ROCm build reports AMD GPUs as ``"cuda"`` devices).
        capability: Compute capability ``(major, minor)``.
        shared_bytes: Shared memory one program (thread block) may use, opt-in limit.
    """

    name: str
    vendor: str
    capability: tuple[int, int]
    shared_bytes: int


def device_limits(device: torch.device) -> DeviceLimits:
    """Read the limits of a CUDA (or ROCm) device through ``torch.cuda``.

    The per-block opt-in shared memory is the multiprocessor's minus the 1 KB that CUDA reserves
    per block from compute capability 8.0 on (227 KB on an H100, 163 KB on an A100, 99 KB on
    sm_86/89, 64 KB on a T4): PyTorch reports the per-multiprocessor figure only.
    """
    props = torch.cuda.get_device_properties(device)
    capability = (int(props.major), int(props.minor))
    per_sm = int(props.shared_memory_per_multiprocessor)
    reserved = 1024 if capability >= (8, 0) else 0
    vendor = "amd" if getattr(torch.version, "hip", None) else "nvidia"
    return DeviceLimits(props.name, vendor, capability, per_sm - reserved)


def shared_memory_estimate(
    shape: StackShape, *, block_m: int, dot_dtype: torch.dtype, kernel: str, max_hidden_chunk: int = 64
) -> int:
    """Upper estimate of the shared memory (bytes) one program of ``kernel`` needs.

    Model: the token rows kept as ``tl.dot`` operands for a whole loop (the forward's LayerNorm
    output; in the backward kernels also ``dy`` or ``dx1``: ``BLOCK_M x d`` each) plus both operands of the
    largest single dot, twice over in float32 (3xTF32 splits each operand in two), times a 25%
    margin. It bounds every ahead-of-time build measured for sm_90a and sm_80 (tests keep the
    table) and overestimates most of them, the float32 ones by up to about 3x.

    Args:
        shape: The stack's static shape.
        block_m: Rows per program.
        dot_dtype: ``tl.dot`` operand dtype.
        kernel: ``"forward"``, ``"mlp_backward"`` or ``"attention_backward"``.
        max_hidden_chunk: Widest MLP column chunk of the launch configuration.

    Raises:
        ValueError: Unknown kernel.
    """
    size = torch.empty((), dtype=dot_dtype).element_size()
    splits = 2 if dot_dtype == torch.float32 else 1
    e, d, fc = shape.head_dim, shape.dim, hidden_chunk(shape.hidden, max_hidden_chunk)

    def dot(m: int, k: int, n: int) -> int:
        return splits * (m * k + k * n) * size

    if kernel == "forward":
        live = 1
        largest = max(dot(block_m, e, e), dot(block_m, e, fc), dot(block_m, fc, e))
    elif kernel == "mlp_backward":
        live = 2
        largest = max(dot(fc, block_m, e), dot(block_m, e, fc), dot(block_m, fc, e), dot(block_m, e, e))
    elif kernel == "attention_backward":
        live = 2
        largest = max(dot(e, block_m, e), dot(block_m, e, e))
    else:
        raise ValueError(f"unknown kernel {kernel!r}")
    return int(_SAFETY * (live * block_m * d * size + largest))


def device_reasons(device: torch.device, dot_dtype: torch.dtype, shape: StackShape | None, configs=()) -> list[str]:
    """Every reason this GPU cannot run the kernels (empty if it can).

    Args:
        device: A ``cuda`` device (NVIDIA, or AMD under ROCm).
        dot_dtype: ``tl.dot`` operand dtype (the autocast dtype when autocast is on).
        shape: The stack's shape, or None to check vendor and capability only.
        configs: ``(kernel, LaunchConfig)`` pairs whose shared memory must fit.
    """
    limits = device_limits(device)
    if limits.vendor != "nvidia":
        return [
            f"{limits.name} is not an NVIDIA GPU (ROCm): the kernels are built and checked for NVIDIA only "
            "(3xTF32 dots, wgmma/mma layouts)"
        ]
    reasons = []
    needed = MIN_CAPABILITY.get(dot_dtype)
    if needed is not None and limits.capability < needed:
        reasons.append(
            f"{limits.name} has compute capability {limits.capability[0]}.{limits.capability[1]}; "
            f"{dot_dtype} tensor-core dots need {needed[0]}.{needed[1]} or newer"
        )
    if shape is not None:
        for kernel, config in configs:
            need = shared_memory_estimate(
                shape,
                block_m=config.block_m,
                dot_dtype=dot_dtype,
                kernel=kernel,
                max_hidden_chunk=config.max_hidden_chunk,
            )
            if need > limits.shared_bytes:
                reasons.append(
                    f"the {kernel.replace('_', ' ')} kernel needs about {need // 1024} KB of shared memory for "
                    f"{dot_dtype} with head dim {shape.head_dim}, width {shape.dim}, MLP chunk "
                    f"{hidden_chunk(shape.hidden, config.max_hidden_chunk)} and {config.block_m} rows; "
                    f"{limits.name} has {limits.shared_bytes // 1024} KB per block"
                )
    return reasons
