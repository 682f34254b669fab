"""Build the kernels ahead of time for an NVIDIA target, without a GPU, and read their resources.

Triton compiles for any target with its bundled ``ptxas``; this checks what the interpreter
cannot (the compiler is stricter about globals, shapes and layouts) and shows registers, spills
and the instruction mix. Used by ``benchmarks/kernel_resources.py`` and the tests. The kernels
must have been decorated for the compiler (``TRITON_INTERPRET`` unset when this package was
first imported).
"""

from __future__ import annotations

import inspect
import re
import subprocess
import tempfile
import time
from pathlib import Path

import triton
from triton.backends.compiler import GPUTarget
from triton.compiler import ASTSource

from . import kernels
from .launch import INTERPRETED, LaunchConfig
from .layout import StackShape

__all__ = ["KERNELS", "compile_kernel"]

KERNELS = {
    "forward": kernels.block_forward_kernel,
    "mlp_backward": kernels.mlp_backward_kernel,
    "attention_backward": kernels.attention_backward_kernel,
}
_ACTIVATIONS = ("x_ptr", "y_ptr", "dy_ptr", "dx_ptr", "dx1_ptr")
_MATRICES = ("qkv_w", "proj_w", "fc1_w", "fc2_w")


def _signature(fn, dtype: str, constexprs: dict) -> dict[str, str]:
    """Argument types as Triton's JIT infers them for ``dtype`` tokens and weights."""
    out = {}
    for name in inspect.signature(fn.fn).parameters:
        if name in constexprs:
            out[name] = "constexpr"
        elif name in _ACTIVATIONS or name in _MATRICES:
            out[name] = f"*{dtype}"
        elif name == "key_mask_ptr":
            out[name] = "*u8"
        elif name in ("P", "slot_stride", "num_slots", "num_tiles"):
            out[name] = "i32"
        elif name.startswith("eps") or name.endswith("scale"):
            out[name] = "fp32"
        else:
            out[name] = "*fp32"  # LayerNorm parameters, biases, gradient buffers
    return out


def _tool(name: str) -> str:
    return str(Path(triton.__file__).parent / "backends" / "nvidia" / "bin" / name)


def compile_kernel(
    name: str,
    dtype: str,
    shape: StackShape,
    config: LaunchConfig,
    *,
    key_mask: bool = True,
    capability: int = 90,
    deterministic: bool = False,
) -> dict:
    """Build one kernel for ``sm_<capability>`` and return its resource usage.

    Args:
        name: ``"forward"``, ``"mlp_backward"`` or ``"attention_backward"``.
        dtype: Token and weight dtype as Triton spells it: ``"bf16"``, ``"fp16"`` or ``"fp32"``.
        shape: The stack's static shape.
        config: Rows and warps per program.
        key_mask: Build the exclude-mode variant (with a key mask).
        capability: Compute capability, 90 for an H100.
        deterministic: Build the backward kernels' deterministic variant (one gradient slot
            per program, ``OWN_SLOT``).

    Returns:
        ``{"registers", "spill_stack_bytes", "shared_bytes", "wgmma", "mma_sync", "vector_loads",
        "scalar_loads", "atomics", "compile_seconds", ...}``; pointer arguments are specialised as
        16-byte aligned, as Triton's JIT does for PyTorch allocations.

    Raises:
        RuntimeError: The kernels were decorated for the interpreter.
        ValueError: Unknown kernel name.

    Example:
        >>> from label_merge._triton.aot import compile_kernel  # doctest: +SKIP
        >>> compile_kernel("forward", "bf16", StackShape(5, 96, 3, 384), LaunchConfig(128, 8))["registers"]
        226
    """
    if INTERPRETED:
        raise RuntimeError("the kernels were decorated for Triton's interpreter (TRITON_INTERPRET=1)")
    if name not in KERNELS:
        raise ValueError(f"unknown kernel {name!r}; choose from {list(KERNELS)}")
    fn = KERNELS[name]
    params = inspect.signature(fn.fn).parameters
    constexprs = {k: v for k, v in shape.constexprs(config.max_hidden_chunk).items() if k in params}
    constexprs.update(BLOCK_M=config.block_m, HAS_KEY_MASK=key_mask, PREC="tf32x3" if dtype == "fp32" else "ieee")
    if "OWN_SLOT" in params:
        constexprs["OWN_SLOT"] = deterministic
    signature = _signature(fn, dtype, constexprs)
    names = list(signature)
    attrs = {(names.index(k),): [["tt.divisibility", 16]] for k, v in signature.items() if v.startswith("*")}
    start = time.perf_counter()
    compiled = triton.compile(
        ASTSource(fn=fn, signature=signature, constexprs=constexprs, attrs=attrs),
        target=GPUTarget("cuda", capability, 32),
        options={"num_warps": config.num_warps, "num_stages": 1},
    )
    seconds = time.perf_counter() - start
    with tempfile.NamedTemporaryFile(suffix=".cubin") as cubin:
        cubin.write(compiled.asm["cubin"])
        cubin.flush()
        usage = subprocess.run([_tool("cuobjdump"), "-res-usage", cubin.name], capture_output=True, text=True).stdout
    fields = dict(re.findall(r"(\w+):(\d+)", usage.split("Function", 1)[-1]))
    ptx = compiled.asm["ptx"]
    return {
        "kernel": name,
        "dtype": dtype,
        "block_m": config.block_m,
        "num_warps": config.num_warps,
        "hidden_chunk": constexprs.get("FC"),
        "registers": int(fields.get("REG", -1)),
        "spill_stack_bytes": int(fields.get("STACK", -1)),
        "shared_bytes": compiled.metadata.shared,
        "wgmma": len(re.findall(r"wgmma\.mma_async", ptx)),
        "mma_sync": len(re.findall(r"mma\.sync\.aligned", ptx)),
        "vector_loads": len(re.findall(r"ld\.global[.a-z0-9]*\.v[248]\.", ptx)),
        "scalar_loads": len(re.findall(r"ld\.global(?:\.[a-z0-9]+)*\.b(?:8|16|32|64)\s", ptx)),
        "atomics": len(re.findall(r"red\.global|atom\.global", ptx)),
        "compile_seconds": round(seconds, 1),
    }
