"""Which implementation runs a merger: the PyTorch reference or the fused Triton kernels.

``backend="auto" | "torch" | "triton"`` is stored on the module. An explicit ``"torch"`` or
``"triton"`` beats the ``LABEL_MERGE_BACKEND`` environment variable, which beats
auto-detection (``"auto"``). Auto picks Triton for CUDA tensors when it can run and falls
back to the reference silently; an explicit ``"triton"`` that cannot run raises a
``ValueError`` listing every reason. With ``TRITON_INTERPRET=1`` an explicit ``"triton"``
runs on CPU tensors in Triton's interpreter (a testing tool, far slower than the reference).
"""

from __future__ import annotations

import importlib.util
import os

import torch

__all__ = ["BACKENDS", "ENV_VAR", "check_backend", "triton_unavailable_reasons", "resolve_backend"]

BACKENDS = ("auto", "torch", "triton")
ENV_VAR = "LABEL_MERGE_BACKEND"


def check_backend(backend: str) -> str:
    """Return ``backend`` if it is a known name, else raise ``ValueError``."""
    if backend not in BACKENDS:
        raise ValueError(f"backend must be one of {BACKENDS}, got {backend!r}")
    return backend


def _interpreting() -> bool:
    return os.environ.get("TRITON_INTERPRET", "0") == "1"


def triton_unavailable_reasons(
    device: torch.device, dtype: torch.dtype, module: torch.nn.Module | None = None
) -> list[str]:
    """Every reason the fused Triton path cannot run here (empty if it can).

    Args:
        device: Device of the inputs.
        dtype: Dtype the tokens will have.
        module: The merger, whose configuration the kernels may not support.

    Besides Triton and the device type, this lists what
    :func:`label_merge._triton.unsupported_reasons` finds: dtype and shapes, and on a GPU the
    vendor (NVIDIA only), the compute capability and the kernels' shared memory.
    """
    reasons = []
    if importlib.util.find_spec("triton") is None:
        reasons.append("Triton is not installed (pip install 'label-merge[triton]')")
    if device.type == "cpu":
        if not _interpreting():
            reasons.append("the inputs are on the CPU: the fused kernels need CUDA tensors (or TRITON_INTERPRET=1)")
    elif device.type != "cuda":
        reasons.append(f"the inputs are on {device.type!r}: the fused kernels need CUDA tensors")
    if not reasons:
        from ._triton import unsupported_reasons  # imported lazily: Triton is optional

        reasons.extend(unsupported_reasons(dtype, module, device))
    return reasons


def resolve_backend(
    requested: str, device: torch.device, dtype: torch.dtype, module: torch.nn.Module | None = None
) -> str:
    """Turn a requested backend into the one that runs: ``"torch"`` or ``"triton"``.

    Raises:
        ValueError: An unknown name, in the argument or in ``LABEL_MERGE_BACKEND``, or an
            explicit ``"triton"`` that cannot run (the message lists every reason).
    """
    check_backend(requested)
    source = "backend argument"
    if requested == "auto":
        env = os.environ.get(ENV_VAR, "").strip().lower()
        if env:
            if env not in BACKENDS:
                raise ValueError(f"{ENV_VAR} must be one of {BACKENDS}, got {env!r}")
            requested, source = env, f"{ENV_VAR}={env}"
    if requested == "torch":
        return "torch"
    if requested == "auto":
        if device.type != "cuda" or torch.compiler.is_compiling():
            return "torch"
        return "torch" if triton_unavailable_reasons(device, dtype, module) else "triton"
    reasons = triton_unavailable_reasons(device, dtype, module)
    if reasons:
        raise ValueError(f"backend 'triton' ({source}) cannot run: " + "; ".join(reasons))
    return "triton"
