"""Compile the fused kernels for an H100 (sm_90a) without a GPU and report their resources.

Triton can build a cubin ahead of time for any target with its bundled ``ptxas``; this script
does so for the forward and the two backward kernels at the paper configuration (N=5, d=96,
3 heads, MLP 384) with the launch configurations that ``label_merge._triton.launch`` uses (or
others given on the command line), and prints registers, spill stack, shared memory and the
instruction mix (``wgmma`` tensor-core ops, ``mma.sync``, vector loads). Pointer arguments are
specialised as 16-byte aligned, as Triton's JIT does for PyTorch allocations. No kernel runs.

    python benchmarks/kernel_resources.py                     # default configurations, bf16
    python benchmarks/kernel_resources.py --dtype fp32 --kernels forward
    python benchmarks/kernel_resources.py --configs 64x4 128x8 --json out.json
"""

from __future__ import annotations

import argparse
import inspect
import json
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import triton  # noqa: E402
from triton.backends.compiler import GPUTarget  # noqa: E402
from triton.compiler import ASTSource  # noqa: E402

from label_merge._triton import kernels  # noqa: E402
from label_merge._triton.launch import BACKWARD_CONFIG, FORWARD_CONFIG, LaunchConfig  # noqa: E402
from label_merge._triton.layout import StackShape  # noqa: E402

KERNELS = {
    "forward": kernels.block_forward_kernel,
    "mlp_backward": kernels.mlp_backward_kernel,
    "attention_backward": kernels.attention_backward_kernel,
}
DTYPES = {"bf16": "bf16", "fp16": "fp16", "fp32": "fp32"}
_ACTIVATIONS = ("x_ptr", "y_ptr", "dy_ptr", "dx_ptr", "dx1_ptr")
_MATRICES = ("qkv_w", "proj_w", "fc1_w", "fc2_w")


def _signature(fn, dtype: str, constexprs: dict) -> dict[str, str]:
    """Argument types as Triton's JIT would infer them for this dtype."""
    out = {}
    for name in inspect.signature(fn.fn).parameters:
        if name in constexprs:
            out[name] = "constexpr"
        elif name in _ACTIVATIONS or name in _MATRICES:
            out[name] = f"*{dtype}"
        elif name == "key_mask_ptr":
            out[name] = "*u8"
        elif name in ("P", "slot_stride", "num_slots"):
            out[name] = "i32"
        elif name.startswith("eps") or name.endswith("scale"):
            out[name] = "fp32"
        else:
            out[name] = "*fp32"  # LayerNorm parameters, biases, gradient buffers
    return out


def _tool(name: str) -> str:
    return str(Path(triton.__file__).parent / "backends" / "nvidia" / "bin" / name)


def compile_kernel(name: str, dtype: str, shape: StackShape, config: LaunchConfig, *, key_mask: bool = True) -> dict:
    """Build one kernel for sm_90a and return its resource usage."""
    fn = KERNELS[name]
    params = inspect.signature(fn.fn).parameters
    constexprs = {k: v for k, v in shape.constexprs(config.max_hidden_chunk).items() if k in params}
    constexprs.update(
        BLOCK_M=config.block_m,
        HAS_KEY_MASK=key_mask,
        PREC="tf32" if dtype == "fp32" else "ieee",
    )
    signature = _signature(fn, dtype, constexprs)
    names = list(signature)
    attrs = {(names.index(k),): [["tt.divisibility", 16]] for k, v in signature.items() if v.startswith("*")}
    start = time.perf_counter()
    compiled = triton.compile(
        ASTSource(fn=fn, signature=signature, constexprs=constexprs, attrs=attrs),
        target=GPUTarget("cuda", 90, 32),
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


def _parse_config(text: str, base: LaunchConfig) -> LaunchConfig:
    block_m, num_warps = (int(v) for v in text.lower().split("x"))
    return LaunchConfig(block_m, num_warps, base.num_slots, base.max_hidden_chunk)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--kernels", nargs="+", choices=list(KERNELS), default=list(KERNELS))
    parser.add_argument("--dtype", choices=list(DTYPES), default="bf16")
    parser.add_argument("--tokens", type=int, default=5)
    parser.add_argument("--configs", nargs="*", help="BLOCK_MxWARPS, e.g. 64x4 128x8 (default: the library's)")
    parser.add_argument("--json", type=Path, help="also write the rows to this file")
    args = parser.parse_args()
    shape = StackShape(num_tokens=args.tokens, dim=96, heads=3, hidden=384)
    rows = []
    header = (
        f"{'kernel':20s} {'dtype':5s} {'M':>4s} {'warps':>5s} {'FC':>3s} {'regs':>5s} {'spill B':>8s} "
        f"{'smem B':>7s} {'wgmma':>6s} {'mma':>5s} {'vld':>5s} {'sld':>5s} {'compile s':>9s}"
    )
    print(header)
    for name in args.kernels:
        base = FORWARD_CONFIG if name == "forward" else BACKWARD_CONFIG
        configs = [_parse_config(c, base) for c in args.configs] if args.configs else [base]
        for config in configs:
            row = compile_kernel(name, DTYPES[args.dtype], shape, config)
            rows.append(row)
            print(
                f"{name:20s} {row['dtype']:5s} {row['block_m']:4d} {row['num_warps']:5d} "
                f"{row['hidden_chunk'] or '-':>3} "
                f"{row['registers']:5d} {row['spill_stack_bytes']:8d} {row['shared_bytes']:7d} {row['wgmma']:6d} "
                f"{row['mma_sync']:5d} {row['vector_loads']:5d} {row['scalar_loads']:5d} {row['compile_seconds']:9.1f}",
                flush=True,
            )
    if args.json:
        args.json.write_text(json.dumps({"target": "sm_90a", "triton": triton.__version__, "rows": rows}, indent=2))


if __name__ == "__main__":
    main()
