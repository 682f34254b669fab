"""One command that validates the fused Triton path on a CUDA GPU: tests, parity, determinism, speed.

Run it once on a machine with an NVIDIA GPU (Ampere or newer), from the repository root:

    python benchmarks/cuda_check.py              # everything, about 8 minutes on an H100/H200
    python benchmarks/cuda_check.py --quick      # N=5 only, no large sizes: a few minutes
    python benchmarks/cuda_check.py --dry-run    # print the plan; needs no GPU

Checks, each printed as one PASS/FAIL line at the end:

1. ``pytest -m gpu``: the GPU-marked tests (large pixel counts, bf16 parity, speed sanity).
2. Parity of every kernel (forward; both backward kernels through every gradient) against a
   float64 reference, for float32, bfloat16 and float16, ``drop="zero"`` and ``"exclude"``
   (random presence masks with empty pixels) and N in {1, 5, 16}, at the paper widths (d=96,
   3 heads, MLP 384). The rule of docs/design: the fused error (norm-wise, vs float64) is at
   most twice that of the reference run in the same precision, for the output and every
   gradient; float32 gets a floor of 1e-6 because its dots are 3xTF32, close to but not
   exactly float32. Runs in ``--jobs`` processes, since compiling the kernel variants dominates.
3. Determinism: with ``torch.use_deterministic_algorithms(True)`` two backward passes give
   bit-identical gradients (the default atomic path is also run and its run-to-run difference
   recorded).
4. ``benchmarks/bench_merger.py`` at batch 8, 256x512, bf16, paper sizes, for eager,
   ``torch.compile`` and fused (forward, forward+backward, peak memory), plus 1x1024x2048 and
   16x512x1024; targets: fused forward+backward at least 5x eager and 2x ``torch.compile``,
   at most 1/5 of eager's training memory, no failure at the large sizes. Also the cost of
   the deterministic backward at 8x256x512.

Writes ``benchmarks/results/cuda_check_<gpu>.json`` with the device, driver, versions, every
check's numbers and the benchmark's raw timings. Exit status 0 only if every check passed.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import os
import platform
import re
import statistics
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

RESULTS = ROOT / "benchmarks" / "results"
DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
DROPS = ("zero", "exclude")
TOKENS = (1, 5, 16)
DIM, HEADS, MLP_RATIO = 96, 3, 4.0
PARITY_DEPTH, PARITY_PIXELS = 2, 1037  # odd pixel count: several tiles and a ragged last one
FLOAT32_FLOOR = 1e-6
BENCH_CASES = ("8x256x512", "1x1024x2048", "16x512x1024")


# ----------------------------------------------------------------------------- parity (worker processes)


def _rel_err(value: torch.Tensor, truth: torch.Tensor) -> float:
    truth = truth.double()
    return ((value.double() - truth).norm() / truth.norm().clamp_min(1e-30)).item()


def _blocks(depth: int, seed: int):
    from torch import nn

    from label_merge.transformer import TransformerBlock

    torch.manual_seed(seed)
    blocks = nn.ModuleList(TransformerBlock(DIM, HEADS, MLP_RATIO) for _ in range(depth))
    with torch.no_grad():  # non-trivial LayerNorm parameters and biases
        for name, param in blocks.named_parameters():
            if "norm" in name and name.endswith("weight"):
                param.copy_(1 + 0.2 * torch.randn_like(param))
            elif name.endswith("bias"):
                param.copy_(0.1 * torch.randn_like(param))
    return blocks


def _copy(blocks, dtype, device):
    import copy

    return copy.deepcopy(blocks).to(device=device, dtype=dtype)


def _grads(encode, z, present, blocks, drop, null, upstream):
    """Output and gradients w.r.t. (z, every parameter, null_concept)."""
    z = z.detach().requires_grad_(True)
    null = null.detach().requires_grad_(True) if null is not None else None
    out = encode(z, present, blocks, drop=drop, null_concept=null)
    inputs = [z, *blocks.parameters()] + ([null] if null is not None else [])
    grads = torch.autograd.grad(out, inputs, upstream.to(out.dtype))
    return [out.detach(), *(g.detach() for g in grads)]


def parity_case(
    dtype_name: str,
    drop: str,
    tokens: int,
    *,
    device: str = "cuda",
    pixels: int = PARITY_PIXELS,
    depth: int = PARITY_DEPTH,
) -> dict:
    """One parity configuration: the worst ratio of fused to reference error, and the verdict.

    ``device="cpu"`` runs the kernels in Triton's interpreter (TRITON_INTERPRET=1), for testing
    this script without a GPU.
    """
    from label_merge import reference
    from label_merge._triton import encode_tokens

    device = torch.device(device)
    dtype = DTYPES[dtype_name]
    seed = 1000 * tokens + 10 * DROPS.index(drop) + list(DTYPES).index(dtype_name)
    gen = torch.Generator().manual_seed(seed)
    blocks = _blocks(depth, seed)
    z = torch.randn(pixels, tokens, DIM, generator=gen).to(device)  # (P, N, d)
    present = (torch.rand(pixels, tokens, generator=gen) > 0.4).to(device)  # (P, N)
    present[::7] = False  # pixels with nothing present
    null = torch.randn(DIM, generator=gen).to(device) if drop == "exclude" else None
    upstream = torch.randn(pixels, DIM, generator=gen).to(device)
    names = ["output", "z", *(n for n, _ in blocks.named_parameters())] + (["null_concept"] if null is not None else [])

    start = time.perf_counter()
    truth = _grads(
        reference.encode_tokens,
        z.double(),
        present,
        _copy(blocks, torch.float64, device),
        drop,
        None if null is None else null.double(),
        upstream,
    )
    low = _copy(blocks, dtype, device)
    low_null = None if null is None else null.to(dtype)
    ref = _grads(reference.encode_tokens, z.to(dtype), present, low, drop, low_null, upstream)
    fused = _grads(encode_tokens, z.to(dtype), present, low, drop, low_null, upstream)
    if device.type == "cuda":
        torch.cuda.synchronize()
    floor = FLOAT32_FLOOR if dtype == torch.float32 else 1e-3 * torch.finfo(dtype).eps
    worst, failures, finite = 0.0, [], True
    for name, f, r, t in zip(names, fused, ref, truth, strict=True):
        finite &= bool(torch.isfinite(f).all())
        fused_err, ref_err = _rel_err(f, t), _rel_err(r, t)
        worst = max(worst, fused_err / max(ref_err, 1e-30))
        if not fused_err <= 2 * ref_err + floor:
            failures.append({"tensor": name, "fused_error": fused_err, "reference_error": ref_err})
    return {
        "dtype": dtype_name,
        "drop": drop,
        "tokens": tokens,
        "pixels": pixels,
        "worst_error_ratio": worst,
        "failures": failures,
        "finite": finite,
        "status": "pass" if finite and not failures else "FAIL",
        "seconds": round(time.perf_counter() - start, 1),
    }


def determinism_case(*, device: str = "cuda", pixels: int = 60_000, depth: int = 3) -> dict:
    """Two deterministic backward passes: bit-identical? And how far apart two atomic ones are."""
    from label_merge._triton import encode_tokens

    device = torch.device(device)
    gen = torch.Generator().manual_seed(7)
    blocks = _copy(_blocks(depth, 7), torch.bfloat16, device)
    z = torch.randn(pixels, 5, DIM, generator=gen).to(device, torch.bfloat16)
    present = (torch.rand(pixels, 5, generator=gen) > 0.3).to(device)
    upstream = torch.randn(pixels, DIM, generator=gen).to(device)

    def grads(deterministic: bool):
        torch.use_deterministic_algorithms(deterministic, warn_only=True)
        try:
            return _grads(encode_tokens, z, present, blocks, "zero", None, upstream)[1:]
        finally:
            torch.use_deterministic_algorithms(False)

    first, second = grads(True), grads(True)
    identical = all(torch.equal(a, b) for a, b in zip(first, second, strict=True))
    atomic_a, atomic_b = grads(False), grads(False)
    atomic_diff = max(_rel_err(a, b) for a, b in zip(atomic_a, atomic_b, strict=True))
    versus = max(_rel_err(a, b) for a, b in zip(first, atomic_a, strict=True))
    return {
        "pixels": pixels,
        "deterministic_runs_identical": identical,
        "atomic_runs_max_relative_difference": atomic_diff,
        "deterministic_vs_atomic_max_relative_difference": versus,
        "status": "pass" if identical and versus < 1e-2 else "FAIL",
    }


# ----------------------------------------------------------------------------- main-process steps


def environment() -> dict:
    info = {
        "python": platform.python_version(),
        "platform": platform.platform(),
        "torch": torch.__version__,
        "cuda_runtime": torch.version.cuda,
        "hip": getattr(torch.version, "hip", None),
    }
    try:
        import triton

        info["triton"] = triton.__version__
    except ImportError:
        info["triton"] = None
    if torch.cuda.is_available():
        props = torch.cuda.get_device_properties(0)
        info.update(
            device=props.name,
            capability=f"{props.major}.{props.minor}",
            multiprocessors=props.multi_processor_count,
            memory_gib=round(props.total_memory / 2**30, 1),
            device_count=torch.cuda.device_count(),
        )
    try:
        smi = subprocess.run(
            ["nvidia-smi", "--query-gpu=driver_version,clocks.sm,clocks.max.sm,power.limit", "--format=csv,noheader"],
            capture_output=True,
            text=True,
            timeout=30,
        )
        info["nvidia_smi"] = smi.stdout.strip().splitlines()
        info["driver"] = info["nvidia_smi"][0].split(",")[0].strip() if info["nvidia_smi"] else None
    except (OSError, subprocess.TimeoutExpired):
        info["driver"] = None
    return info


def run_gpu_tests(timeout: int) -> dict:
    """``pytest -m gpu`` in a subprocess; the summary line and the output's tail are kept."""
    command = [sys.executable, "-m", "pytest", "-m", "gpu", "-q", "-p", "no:cacheprovider", "tests"]
    start = time.perf_counter()
    try:
        done = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=timeout)
        output, code = done.stdout + done.stderr, done.returncode
    except subprocess.TimeoutExpired as err:
        output, code = f"timed out after {timeout} s\n{err.stdout or ''}", -1
    lines = [line for line in output.strip().splitlines() if line.strip()]
    summary = next((line for line in reversed(lines) if re.search(r"passed|failed|error|no tests ran", line)), "")
    return {
        "command": " ".join(command),
        "returncode": code,
        "summary": summary,
        "tail": "\n".join(lines[-40:]),
        "seconds": round(time.perf_counter() - start, 1),
        "status": "pass" if code == 0 else "FAIL",
    }


def run_benchmark(cases, *, tune: bool, timeout: int) -> dict:
    """bench_merger.py on ``cases`` for eager, torch.compile and fused; its JSON payload."""
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "merger.json"
        command = [
            sys.executable,
            str(ROOT / "benchmarks" / "bench_merger.py"),
            "--variants",
            "eager",
            "compile",
            "fused",
            "--cases",
            *cases,
            "--out",
            str(out),
        ]
        if not tune:
            command.append("--no-tune")
        start = time.perf_counter()
        try:
            done = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=timeout)
            code, output = done.returncode, done.stdout + done.stderr
        except subprocess.TimeoutExpired:
            code, output = -1, f"timed out after {timeout} s"
        payload = json.loads(out.read_text()) if out.exists() else {}
    print(output[-4000:], flush=True)
    return {
        "command": " ".join(command[1:]),
        "returncode": code,
        "seconds": round(time.perf_counter() - start, 1),
        "payload": payload,
    }


def deterministic_cost(repeats: int = 7) -> dict:
    """Median forward+backward time at 8x256x512 bf16, atomic vs deterministic backward (CUDA events)."""
    import bench_merger as bench

    from label_merge._triton import encode_tokens

    device = torch.device("cuda")
    blocks, z, present, upstream = bench.make_problem(8 * 256 * 512, device, torch.bfloat16)
    z = z.detach().requires_grad_(True)

    def step():
        for p in blocks.parameters():
            p.grad = None
        encode_tokens(z, present, blocks, drop="zero").backward(upstream)

    times = {}
    for deterministic in (False, True):
        torch.use_deterministic_algorithms(deterministic, warn_only=True)
        try:
            times["deterministic" if deterministic else "atomic"] = bench.timed(step, device, warmup=2, repeats=repeats)
        finally:
            torch.use_deterministic_algorithms(False)
    medians = {k: statistics.median(v) for k, v in times.items()}
    return {"training_ms": times, "median_ms": medians, "slowdown": medians["deterministic"] / medians["atomic"]}


def plan(args) -> list[str]:
    tokens = (5,) if args.quick else TOKENS
    cases = BENCH_CASES[:1] if args.quick else BENCH_CASES
    steps = []
    if not args.skip_tests:
        steps.append(f"pytest -m gpu tests   (timeout {args.test_timeout} s)")
    parity = [f"{d}/{drop}/N={n}" for d in DTYPES for drop in DROPS for n in tokens]
    steps.append(f"parity vs float64 ({len(parity)} cases in {args.jobs} processes): " + ", ".join(parity))
    steps.append("determinism: two deterministic backward passes bit-identical (bf16, 60,000 pixels)")
    if not args.skip_bench:
        steps.append(
            "bench_merger.py --variants eager compile fused --cases "
            + " ".join(cases)
            + ("" if args.tune else " --no-tune")
        )
        steps.append("deterministic backward cost at 8x256x512 (atomic vs deterministic, medians)")
    return steps


def summarize(report: dict) -> list[tuple[str, str, str]]:
    """``(status, check, detail)`` rows for the final summary."""
    rows = []
    if "gpu_tests" in report:
        t = report["gpu_tests"]
        rows.append((t["status"], "pytest -m gpu", t["summary"]))
    for case in report.get("parity", []):
        detail = f"worst fused/reference error ratio {case.get('worst_error_ratio', float('nan')):.2f}"
        if case.get("failures"):
            detail += "; fails on " + ", ".join(f["tensor"] for f in case["failures"][:4])
        if case.get("error"):
            detail = case["error"]
        rows.append((case["status"], f"parity {case['dtype']} drop={case['drop']} N={case['tokens']}", detail))
    if "determinism" in report:
        d = report["determinism"]
        detail = d.get("error") or (
            f"identical={d['deterministic_runs_identical']}, atomic run-to-run "
            f"difference {d['atomic_runs_max_relative_difference']:.1e}"
        )
        rows.append((d["status"], "deterministic weight gradients", detail))
    bench = report.get("benchmark")
    if bench is not None:
        targets = bench.get("payload", {}).get("targets", {})
        if not targets:
            rows.append(("FAIL", "bench_merger.py", f"no result (exit code {bench['returncode']})"))
        for name, check in targets.items():
            status = {"pass": "pass", "FAIL": "FAIL"}.get(check["status"], "FAIL")
            value = f"{check['value']:.2f} (need >= {check['required']})" if "value" in check else check["status"]
            rows.append((status, name, value + (f"; {check['detail']}" if check.get("detail") else "")))
    if "deterministic_cost" in report:
        c = report["deterministic_cost"]
        if "error" in c:
            rows.append(("FAIL", "deterministic backward cost", c["error"]))
        else:
            rows.append(
                ("info", "deterministic backward cost (8x256x512)", f"{c['slowdown']:.2f}x the atomic path's time")
            )
    return rows


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="parity for N=5 only, benchmark at 8x256x512 only")
    parser.add_argument("--dry-run", action="store_true", help="print what would run and exit (no GPU needed)")
    parser.add_argument("--skip-tests", action="store_true", help="do not run pytest -m gpu")
    parser.add_argument("--skip-bench", action="store_true", help="do not run the benchmark")
    parser.add_argument("--tune", action="store_true", help="let bench_merger.py time candidate launch configurations")
    parser.add_argument("--jobs", type=int, default=min(8, os.cpu_count() or 1), help="parity worker processes")
    parser.add_argument("--test-timeout", type=int, default=420, help="seconds for pytest -m gpu")
    parser.add_argument("--out", type=Path, help="JSON path (default benchmarks/results/cuda_check_<gpu>.json)")
    args = parser.parse_args()

    if args.dry_run:
        print("cuda_check plan:")
        for step in plan(args):
            print("  -", step)
        return 0
    if not torch.cuda.is_available():
        print(
            "cuda_check needs a CUDA GPU (NVIDIA, compute capability 8.0 or newer) and none is visible to "
            "PyTorch here. Nothing was run. Use --dry-run to see the plan.",
            file=sys.stderr,
        )
        return 2
    from label_merge._triton import unsupported_reasons

    reasons = unsupported_reasons(torch.bfloat16, None, torch.device("cuda"))
    if reasons:
        print("this GPU cannot run the fused kernels: " + "; ".join(reasons), file=sys.stderr)
        return 2

    started = time.perf_counter()
    report = {"environment": environment(), "plan": plan(args)}
    print(f"cuda_check on {report['environment'].get('device')}:", flush=True)
    for step in report["plan"]:
        print("  -", step, flush=True)

    tokens = (5,) if args.quick else TOKENS
    cases = [(d, drop, n) for d in DTYPES for drop in DROPS for n in tokens]
    context = multiprocessing.get_context("spawn")
    with ProcessPoolExecutor(max_workers=max(1, args.jobs), mp_context=context) as pool:
        # The parity workers compile kernel variants on the CPU while pytest runs alongside.
        parity_futures = [pool.submit(parity_case, *case) for case in cases]
        determinism_future = pool.submit(determinism_case)
        if not args.skip_tests:
            print("running pytest -m gpu ...", flush=True)
            report["gpu_tests"] = run_gpu_tests(args.test_timeout)
            print(f"  {report['gpu_tests']['status']}: {report['gpu_tests']['summary']}", flush=True)
        report["parity"] = []
        for case, future in zip(cases, parity_futures, strict=True):
            try:
                result = future.result()
            except Exception as err:  # a crash in one configuration is that configuration's failure
                result = dict(zip(("dtype", "drop", "tokens"), case, strict=True))
                result.update(status="FAIL", error=f"{type(err).__name__}: {str(err)[:300]}")
            report["parity"].append(result)
            print(f"  parity {case}: {result['status']}", flush=True)
        try:
            report["determinism"] = determinism_future.result()
        except Exception as err:
            report["determinism"] = {"status": "FAIL", "error": f"{type(err).__name__}: {str(err)[:300]}"}
    if not args.skip_bench:
        print("running bench_merger.py ...", flush=True)
        bench_cases = BENCH_CASES[:1] if args.quick else BENCH_CASES
        report["benchmark"] = run_benchmark(bench_cases, tune=args.tune, timeout=600)
        sys.path.insert(0, str(ROOT / "benchmarks"))
        try:
            report["deterministic_cost"] = deterministic_cost()
        except Exception as err:
            report["deterministic_cost"] = {"error": f"{type(err).__name__}: {str(err)[:300]}"}
    report["seconds"] = round(time.perf_counter() - started, 1)

    rows = summarize(report)
    report["summary"] = [{"status": s, "check": c, "detail": d} for s, c, d in rows]
    slug = re.sub(r"[^a-z0-9]+", "_", str(report["environment"].get("device", "cuda")).lower()).strip("_")
    out = args.out or RESULTS / f"cuda_check_{slug}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=2, default=str))

    print(f"\nSummary ({report['seconds']:.0f} s on {report['environment'].get('device')}):")
    for status, check, detail in rows:
        print(f"  {status.upper():5s} {check}: {detail}")
    failed = sum(status == "FAIL" for status, _, _ in rows)
    print(f"\n{'ALL CHECKS PASSED' if not failed else f'{failed} CHECK(S) FAILED'}; wrote {out}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
