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
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import triton  # noqa: E402

from label_merge._triton.aot import KERNELS, compile_kernel  # noqa: E402
from label_merge._triton.launch import BACKWARD_CONFIG, FORWARD_CONFIG, LaunchConfig  # noqa: E402
from label_merge._triton.layout import StackShape  # noqa: E402

DTYPES = ("bf16", "fp16", "fp32")


def _parse_config(text: str, base: LaunchConfig) -> LaunchConfig:
    block_m, num_warps = (int(v) for v in text.lower().split("x"))
    return LaunchConfig(block_m, num_warps, base.num_slots, base.max_hidden_chunk)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--kernels", nargs="+", choices=list(KERNELS), default=list(KERNELS))
    parser.add_argument("--dtype", choices=DTYPES, default="bf16")
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
            row = compile_kernel(name, args.dtype, shape, config)
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
