"""Speed and memory of TLAM's concept-generation block: eager, torch.compile, SDPA and fused Triton.

What is timed is ``encode_tokens``: the paper configuration's 3 pre-LN transformer blocks
(d=96, 3 heads of 32, MLP 384) over N=5 label tokens per pixel, then the mean over tokens, on
``B*H*W`` pixels. The label embedding in front of it is identical for every variant and left out.

Variants (side by side in one run):
  eager    label_merge.reference.encode_tokens (the executable specification)
  compile  torch.compile of the same function (default mode, one compile per shape)
  sdpa     the reference with attention through F.scaled_dot_product_attention on (P, heads, N, e),
           chunked at 65,535 pixels per call on CUDA, where the stock kernels put the batch on a
           grid axis capped at 65,535 (whether an unchunked call fails is probed in a subprocess
           and recorded)
  fused    label_merge._triton.encode_tokens (CUDA only: Triton's CPU interpreter is not a benchmark)

On CUDA the parameters and tokens are bfloat16 (no autocast); on CPU float32. Times are medians
of ``--repeats`` runs after warm-up, measured with CUDA events (CPU: perf_counter); every raw
time is kept. Peak memory is ``torch.cuda.max_memory_allocated`` after ``reset_peak_memory_stats``,
minus what was allocated before the step (inputs and parameters): "inference" is a forward under
``no_grad``, "training" a forward plus backward. CPU memory is not measured.

Achieved TFLOP/s count the model's FLOPs (``model_flops`` below, the formula of
docs/kernels.md): forward ``L * (N * 2 * (4 d^2 + 2 d F) + 4 N^2 d)`` per pixel, training 3x the
forward (the fused backward also recomputes the forward: 4x, not counted). The roofline is
989.4 TFLOP/s, H100 SXM dense bf16 tensor cores.

    python benchmarks/bench_merger.py                 # CUDA if present (bf16), else a small CPU run
    python benchmarks/bench_merger.py --no-tune --backward-config 128x8   # fixed fused launches
    python benchmarks/bench_merger.py --quick         # fewer sizes and repeats
    python benchmarks/bench_merger.py --cases 8x256x512 1x1024x2048   # exact B x H x W sizes
    python benchmarks/bench_merger.py --device cpu --threads 1 --resolutions 32x32 64x64 --batches 1 2

On CUDA the fused kernels' launch configurations (rows x warps per program) are first timed
at 8x256x512 and the fastest are used (``--no-tune`` keeps the library's). Writes
``benchmarks/results/merger_<device>.json`` and ``.png`` (and prints a table, and on CUDA the
target checks at batch 8, 256x512).
"""

from __future__ import annotations

import argparse
import gc
import json
import platform
import statistics
import subprocess
import sys
import time
import traceback
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
import torch.nn.functional as F
from einops import rearrange
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from label_merge import reference  # noqa: E402
from label_merge.transformer import TransformerBlock  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "results"
NUM_TOKENS, DIM, HEADS, MLP_RATIO, DEPTH = 5, 96, 3, 4.0, 3
H100_BF16_DENSE_TFLOPS = 989.4
SDPA_MAX_BATCH = 65_535
VARIANTS = ("eager", "compile", "sdpa", "fused")
CUDA_RESOLUTIONS = ((256, 256), (256, 512), (512, 1024), (1024, 2048))
CUDA_BATCHES = (1, 2, 4, 8, 16)
CUDA_MAX_PIXELS = 16 * 512 * 1024
CPU_RESOLUTIONS = ((32, 32), (64, 64))
CPU_BATCHES = (1, 2)


def model_flops(
    pixels: int,
    *,
    training: bool,
    tokens: int = NUM_TOKENS,
    dim: int = DIM,
    hidden: int = int(DIM * MLP_RATIO),
    depth: int = DEPTH,
) -> float:
    """FLOPs of the concept-generation block (1 multiply-add = 2 FLOP).

    Per token and layer the four linears (QKV 3d^2, projection d^2, fc1 and fc2 d*F each) cost
    ``2 * (4 d^2 + 2 d F)``; per pixel and layer attention (q k^T and p v over all heads) costs
    ``2 * 2 * N^2 * d``. Training counts backward as twice the forward. LayerNorm, GELU, softmax
    and the mean are not counted (see docs/kernels.md on why they still matter).
    """
    linear = 2 * (4 * dim * dim + 2 * dim * hidden)
    attention = 4 * tokens * tokens * dim
    forward = depth * (tokens * linear + attention) * pixels
    return 3 * forward if training else forward


# ----------------------------------------------------------------------------- variants


def sdpa_encode_tokens(z, present, blocks, *, drop, null_concept=None, chunk=None):
    """The reference with attention through F.scaled_dot_product_attention, ``chunk`` pixels per call."""
    key_mask = reference.attention_keys(present) if drop == "exclude" else None
    for block in blocks:
        a = block.attn
        h = F.layer_norm(z, z.shape[-1:], block.norm1.weight, block.norm1.bias, block.norm1.eps)
        qkv = F.linear(h, a.qkv.weight, a.qkv.bias)  # (P, N, 3d)
        q, k, v = rearrange(qkv, "p n (three h e) -> three p h n e", three=3, h=a.heads)  # each (P, h, N, e)
        mask = None if key_mask is None else key_mask[:, None, None, :]  # (P, 1, 1, N)
        step = chunk or q.shape[0]
        outs = [
            F.scaled_dot_product_attention(
                q[s : s + step],
                k[s : s + step],
                v[s : s + step],
                attn_mask=None if mask is None else mask[s : s + step],
            )
            for s in range(0, q.shape[0], step)
        ]
        out = outs[0] if len(outs) == 1 else torch.cat(outs)  # (P, h, N, e)
        z = z + F.linear(rearrange(out, "p h n e -> p n (h e)"), a.proj.weight, a.proj.bias)
        h = F.layer_norm(z, z.shape[-1:], block.norm2.weight, block.norm2.bias, block.norm2.eps)
        m = block.mlp
        z = z + F.linear(F.gelu(F.linear(h, m.fc1.weight, m.fc1.bias)), m.fc2.weight, m.fc2.bias)
    return reference.pool_tokens(z, present if drop == "exclude" else None, null_concept)


_VARIANT_CACHE: dict = {}


def make_variant(name: str, blocks: nn.ModuleList, drop: str, device: torch.device):
    """A callable ``(z, present) -> (P, d)`` for one variant (one per blocks, so one torch.compile)."""
    key = (name, id(blocks), drop)
    if key not in _VARIANT_CACHE:
        _VARIANT_CACHE[key] = _make_variant(name, blocks, drop, device)
    return _VARIANT_CACHE[key]


def _make_variant(name: str, blocks: nn.ModuleList, drop: str, device: torch.device):
    null = torch.zeros(DIM, device=device, dtype=blocks[0].norm1.weight.dtype) if drop == "exclude" else None
    if name == "eager":
        return lambda z, present: reference.encode_tokens(z, present, blocks, drop=drop, null_concept=null)
    if name == "compile":
        # Compiled once; the second size makes Dynamo mark the pixel dimension dynamic, so the
        # sizes after it reuse the same graph instead of compiling again.
        torch._dynamo.config.cache_size_limit = max(torch._dynamo.config.cache_size_limit, 64)
        return torch.compile(
            lambda z, present: reference.encode_tokens(z, present, blocks, drop=drop, null_concept=null)
        )
    if name == "sdpa":
        chunk = SDPA_MAX_BATCH if device.type == "cuda" else None
        return lambda z, present: sdpa_encode_tokens(z, present, blocks, drop=drop, null_concept=null, chunk=chunk)
    if name == "fused":
        from label_merge._triton import encode_tokens

        return lambda z, present: encode_tokens(z, present, blocks, drop=drop, null_concept=null)
    raise ValueError(f"unknown variant {name!r}; choose from {VARIANTS}")


# ----------------------------------------------------------------------------- measurement


@dataclass
class Result:
    variant: str
    batch: int
    height: int
    width: int
    pixels: int
    status: str = "ok"
    forward_ms: list[float] = field(default_factory=list)
    training_ms: list[float] = field(default_factory=list)
    forward_ms_median: float | None = None
    training_ms_median: float | None = None
    peak_inference_bytes: int | None = None
    peak_training_bytes: int | None = None
    forward_tflops: float | None = None
    training_tflops: float | None = None
    training_roofline_fraction: float | None = None
    note: str | None = None


def _sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize()


def timed(fn, device, *, warmup: int, repeats: int) -> list[float]:
    """Milliseconds per call of ``fn`` after ``warmup`` untimed calls."""
    for _ in range(warmup):
        fn()
    _sync(device)
    times = []
    for _ in range(repeats):
        if device.type == "cuda":
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            fn()
            end.record()
            end.synchronize()
            times.append(start.elapsed_time(end))
        else:
            begin = time.perf_counter()
            fn()
            times.append((time.perf_counter() - begin) * 1e3)
    return times


def peak_bytes(fn, device) -> int | None:
    """Peak allocated bytes of one call above what was allocated before it (CUDA only)."""
    if device.type != "cuda":
        return None
    _sync(device)
    gc.collect()
    torch.cuda.empty_cache()
    torch.cuda.reset_peak_memory_stats(device)
    base = torch.cuda.memory_allocated(device)
    fn()
    _sync(device)
    return torch.cuda.max_memory_allocated(device) - base


_BLOCKS: dict = {}


def make_problem(pixels: int, device, dtype, seed: int = 0):
    """The paper's 3 blocks (shared by every call with this device and dtype), tokens, mask, upstream grad."""
    gen = torch.Generator(device="cpu").manual_seed(seed)
    if (device, dtype) not in _BLOCKS:
        torch.manual_seed(seed)
        _BLOCKS[device, dtype] = nn.ModuleList(TransformerBlock(DIM, HEADS, MLP_RATIO) for _ in range(DEPTH)).to(
            device=device, dtype=dtype
        )
    blocks = _BLOCKS[device, dtype]
    z = torch.randn(pixels, NUM_TOKENS, DIM, generator=gen).to(device=device, dtype=dtype)  # (P, N, d)
    present = (torch.rand(pixels, NUM_TOKENS, generator=gen) > 0.3).to(device)  # (P, N)
    upstream = torch.randn(pixels, DIM, generator=gen).to(device=device, dtype=dtype)  # (P, d)
    return blocks, z, present, upstream


def _run_variant(result: Result, variant, pixels, *, device, dtype, drop, warmup, repeats) -> None:
    """Fill ``result`` with the times and peaks of one variant on one problem size."""
    blocks, z, present, upstream = make_problem(pixels, device, dtype)
    fn = make_variant(variant, blocks, drop, device)
    z_grad = z.detach().requires_grad_(True)

    def forward():
        with torch.no_grad():
            return fn(z, present)

    def training():
        for p in blocks.parameters():
            p.grad = None
        z_grad.grad = None
        fn(z_grad, present).backward(upstream)

    result.forward_ms = timed(forward, device, warmup=warmup, repeats=repeats)
    result.training_ms = timed(training, device, warmup=warmup, repeats=repeats)
    result.peak_inference_bytes = peak_bytes(forward, device)
    result.peak_training_bytes = peak_bytes(training, device)
    if variant == "compile":
        # Inductor may rewrite softmax(q k^T) v into SDPA, which brings back the 65,535 grid limit.
        from torch._dynamo.utils import counters

        result.note = f"inductor fuse_attention rewrites: {counters['inductor']['fuse_attention']}"


def measure(variant, batch, height, width, *, device, dtype, drop, warmup, repeats) -> Result:
    """Times, peaks and achieved TFLOP/s of one variant at ``batch x height x width`` pixels."""
    pixels = batch * height * width
    result = Result(variant, batch, height, width, pixels)
    try:
        _run_variant(result, variant, pixels, device=device, dtype=dtype, drop=drop, warmup=warmup, repeats=repeats)
    except torch.cuda.OutOfMemoryError:
        result.status = "out of memory"
    except Exception as err:  # record any failure (e.g. a CUDA grid limit) and go on
        result.status = f"failed: {type(err).__name__}: {str(err).splitlines()[0][:200]}"
        traceback.print_exc(limit=2)
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()
    if result.forward_ms:
        result.forward_ms_median = statistics.median(result.forward_ms)
        result.forward_tflops = model_flops(pixels, training=False) / (result.forward_ms_median * 1e-3) / 1e12
    if result.training_ms:
        result.training_ms_median = statistics.median(result.training_ms)
        result.training_tflops = model_flops(pixels, training=True) / (result.training_ms_median * 1e-3) / 1e12
        if device.type == "cuda":
            result.training_roofline_fraction = result.training_tflops / H100_BF16_DENSE_TFLOPS
    return result


def probe_unchunked_sdpa(pixels: int, dtype: str, drop: str) -> dict:
    """Run unchunked SDPA forward+backward on ``pixels`` in a fresh process (a CUDA fault can be fatal)."""
    code = (
        "import sys, torch\n"
        f"sys.path.insert(0, {str(Path(__file__).resolve().parent)!r})\n"
        "import bench_merger as b\n"
        f"blocks, z, present, up = b.make_problem({pixels}, torch.device('cuda'), torch.{dtype})\n"
        "z.requires_grad_(True)\n"
        f"b.sdpa_encode_tokens(z, present, blocks, drop={drop!r}, chunk=None).backward(up)\n"
        "torch.cuda.synchronize()\n"
        "print('ok')\n"
    )
    try:
        run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=600)
    except subprocess.TimeoutExpired:
        return {"pixels": pixels, "ok": False, "error": "timed out after 600 s"}
    if run.returncode == 0 and run.stdout.strip().endswith("ok"):
        return {"pixels": pixels, "ok": True, "error": None}
    lines = [line for line in run.stderr.strip().splitlines() if line.strip()]
    return {"pixels": pixels, "ok": False, "error": lines[-1][:300] if lines else f"exit code {run.returncode}"}


# ----------------------------------------------------------------------------- reporting


def _fmt_ms(value):
    return f"{value:9.2f}" if value is not None else "        -"


def _fmt_mb(value):
    return f"{value / 2**20:9.0f}" if value is not None else "        -"


def print_table(results: list[Result]) -> None:
    print(
        f"\n{'variant':8s} {'B':>3s} {'HxW':>10s} {'pixels':>9s} {'fwd ms':>9s} {'train ms':>9s} "
        f"{'fwd TF/s':>8s} {'trn TF/s':>8s} {'inf MiB':>9s} {'train MiB':>9s}  status"
    )
    for r in results:
        tf = f"{r.forward_tflops:8.2f}" if r.forward_tflops is not None else "       -"
        tt = f"{r.training_tflops:8.2f}" if r.training_tflops is not None else "       -"
        print(
            f"{r.variant:8s} {r.batch:3d} {f'{r.height}x{r.width}':>10s} {r.pixels:9d} {_fmt_ms(r.forward_ms_median)} "
            f"{_fmt_ms(r.training_ms_median)} {tf} {tt} {_fmt_mb(r.peak_inference_bytes)} "
            f"{_fmt_mb(r.peak_training_bytes)}  {r.status}"
        )


def check_targets(results: list[Result]) -> dict:
    """The H100 targets at batch 8, 256x512, bf16, and the no-failure sizes (fused path)."""

    def find(variant, batch, height, width):
        for r in results:
            if (r.variant, r.batch, r.height, r.width) == (variant, batch, height, width):
                return r
        return None

    checks = {}
    fused, eager, compiled = (find(v, 8, 256, 512) for v in ("fused", "eager", "compile"))

    def ratio_check(name, num, den, attr, minimum):
        if not (num and den and getattr(num, attr) and getattr(den, attr)):
            checks[name] = {"status": "not measured"}
            return
        value = getattr(den, attr) / getattr(num, attr)
        checks[name] = {"value": value, "required": minimum, "status": "pass" if value >= minimum else "FAIL"}

    ratio_check("fused training speed-up over eager (8x256x512)", fused, eager, "training_ms_median", 5.0)
    ratio_check("fused training speed-up over torch.compile (8x256x512)", fused, compiled, "training_ms_median", 2.0)
    ratio_check("eager / fused training peak memory (8x256x512)", fused, eager, "peak_training_bytes", 5.0)
    for batch, height, width in ((1, 1024, 2048), (16, 512, 1024)):
        r = find("fused", batch, height, width)
        name = f"fused runs at {batch}x{height}x{width}"
        checks[name] = (
            {"status": "not measured"}
            if r is None
            else {"status": "pass" if r.status == "ok" else "FAIL", "detail": r.status}
        )
    return checks


def plot(results: list[Result], path: Path, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 3, figsize=(16, 4.5))
    panels = (
        ("forward_ms_median", "forward (ms)"),
        ("training_ms_median", "forward + backward (ms)"),
        ("peak_training_bytes", "training peak memory (MiB)"),
    )
    for ax, (attr, label) in zip(axes, panels, strict=True):
        drawn = False
        for variant in VARIANTS:
            points = sorted(
                (r.pixels, getattr(r, attr)) for r in results if r.variant == variant and getattr(r, attr) is not None
            )
            if not points:
                continue
            drawn = True
            xs, ys = zip(*points, strict=True)
            if attr == "peak_training_bytes":
                ys = [y / 2**20 for y in ys]
            ax.plot(xs, ys, marker="o", label=variant)
        if not drawn:
            ax.text(0.5, 0.5, "not measured on this device", ha="center", va="center", transform=ax.transAxes)
            ax.set_xlabel("pixels (B x H x W)")
            ax.set_ylabel(label)
            continue
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.set_xlabel("pixels (B x H x W)")
        ax.set_ylabel(label)
        ax.grid(True, which="both", alpha=0.3)
    axes[0].legend()
    fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def set_launch_configs(forward: str | None, backward: str | None) -> dict:
    """Replace the fused kernels' launch configurations (for tuning runs); returns those in use."""
    from dataclasses import replace

    from label_merge._triton import launch

    def parse(text, base):
        block_m, num_warps = (int(v) for v in text.lower().split("x"))
        return replace(base, block_m=block_m, num_warps=num_warps)

    if forward:
        launch.FORWARD_CONFIG = parse(forward, launch.FORWARD_CONFIG)
    if backward:
        launch.BACKWARD_CONFIG = parse(backward, launch.BACKWARD_CONFIG)
    return {"forward": asdict(launch.FORWARD_CONFIG), "backward": asdict(launch.BACKWARD_CONFIG)}


FORWARD_CANDIDATES = ("128x8", "64x4", "64x8")
BACKWARD_CANDIDATES = ("64x4", "64x8", "128x8")


def tune_fused(*, device, dtype, drop, batch=8, height=256, width=512, repeats=5) -> dict:
    """Time the candidate launch configurations of the fused kernels at one size; pick the fastest.

    Forward configurations are compared on the forward alone, then backward configurations on
    forward + backward with the chosen forward. A configuration that fails is recorded and skipped.
    """
    from label_merge._triton import launch

    defaults = (launch.FORWARD_CONFIG, launch.BACKWARD_CONFIG)
    sweep = {"size": f"{batch}x{height}x{width}", "forward_ms": {}, "training_ms": {}}
    for which, candidates, key in (
        ("forward", FORWARD_CANDIDATES, "forward_ms_median"),
        ("backward", BACKWARD_CANDIDATES, "training_ms_median"),
    ):
        times = sweep["forward_ms" if which == "forward" else "training_ms"]
        for candidate in candidates:
            if which == "forward":
                set_launch_configs(candidate, None)
            else:
                set_launch_configs(sweep["chosen_forward"], candidate)
            print(f"tuning fused {which} {candidate} ...", flush=True)
            r = measure("fused", batch, height, width, device=device, dtype=dtype, drop=drop, warmup=2, repeats=repeats)
            times[candidate] = getattr(r, key) if r.status == "ok" else r.status
        ok = {c: t for c, t in times.items() if isinstance(t, float)}
        base = defaults[0 if which == "forward" else 1]
        default = f"{base.block_m}x{base.num_warps}"
        sweep[f"chosen_{which}"] = min(ok, key=ok.get) if ok else default
    launch.FORWARD_CONFIG, launch.BACKWARD_CONFIG = defaults
    sweep["chosen"] = {"forward": sweep.pop("chosen_forward"), "backward": sweep.pop("chosen_backward")}
    print(f"fused launch configurations: {sweep['chosen']}", flush=True)
    return sweep


def environment(device: torch.device, dtype: torch.dtype) -> dict:
    info = {
        "device": torch.cuda.get_device_name(device) if device.type == "cuda" else platform.processor() or "cpu",
        "device_type": device.type,
        "cpu_threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "cuda": torch.version.cuda,
        "python": platform.python_version(),
        "platform": platform.platform(),
        "dtype": str(dtype),
        "precision_mode": "bf16 parameters and tokens (no autocast)" if dtype == torch.bfloat16 else str(dtype),
        "config": {
            "tokens": NUM_TOKENS,
            "dim": DIM,
            "heads": HEADS,
            "mlp_hidden": int(DIM * MLP_RATIO),
            "depth": DEPTH,
        },
        "flop_formula": "forward per pixel = L*(N*2*(4*d^2 + 2*d*F) + 4*N^2*d); training = 3x forward",
        "roofline_tflops": H100_BF16_DENSE_TFLOPS if device.type == "cuda" else None,
    }
    try:
        import triton

        info["triton"] = triton.__version__
    except ImportError:
        info["triton"] = None
    return info


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", choices=("cuda", "cpu"), default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--variants", nargs="+", choices=VARIANTS, default=list(VARIANTS))
    parser.add_argument("--resolutions", nargs="+", help="HxW, e.g. 256x512")
    parser.add_argument("--batches", nargs="+", type=int)
    parser.add_argument(
        "--cases", nargs="+", help="exact BxHxW sizes, e.g. 8x256x512 (instead of resolutions x batches)"
    )
    parser.add_argument("--max-pixels", type=int, default=CUDA_MAX_PIXELS)
    parser.add_argument("--drop", choices=("zero", "exclude"), default="zero")
    parser.add_argument("--warmup", type=int)
    parser.add_argument("--repeats", type=int)
    parser.add_argument("--quick", action="store_true", help="two resolutions, three repeats")
    parser.add_argument("--threads", type=int, help="CPU threads for PyTorch (default: PyTorch's choice)")
    parser.add_argument("--out", type=Path, help="JSON path (default benchmarks/results/merger_<device>.json)")
    parser.add_argument("--forward-config", help="fused forward launch, ROWSxWARPS (default: the library's)")
    parser.add_argument("--backward-config", help="fused backward launch, ROWSxWARPS (default: the library's)")
    parser.add_argument(
        "--no-tune", action="store_true", help="on CUDA, skip timing the candidate fused launch configurations first"
    )
    args = parser.parse_args()

    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    cuda = device.type == "cuda"
    dtype = torch.bfloat16 if cuda else torch.float32
    launch_configs = set_launch_configs(args.forward_config, args.backward_config) if "fused" in args.variants else {}
    sweep = {}
    if cuda and "fused" in args.variants and not args.no_tune and not (args.forward_config or args.backward_config):
        sweep = tune_fused(device=device, dtype=dtype, drop=args.drop)
        launch_configs = set_launch_configs(sweep["chosen"]["forward"], sweep["chosen"]["backward"])
    resolutions = (
        [tuple(int(v) for v in r.lower().split("x")) for r in args.resolutions]
        if args.resolutions
        else list(CUDA_RESOLUTIONS if cuda else CPU_RESOLUTIONS)
    )
    batches = args.batches or list(CUDA_BATCHES if cuda else CPU_BATCHES)
    if args.quick:
        resolutions, batches = resolutions[:2], batches[:2]
    warmup = args.warmup if args.warmup is not None else (3 if cuda else 1)
    repeats = args.repeats if args.repeats is not None else (3 if args.quick else (10 if cuda else 3))
    cases = sorted(
        {(b, h, w) for (h, w) in resolutions for b in batches if b * h * w <= args.max_pixels},
        key=lambda c: (c[0] * c[1] * c[2], c),
    )
    if args.cases:
        cases = sorted(
            {tuple(int(v) for v in c.lower().split("x")) for c in args.cases}, key=lambda c: (c[0] * c[1] * c[2], c)
        )
    elif cuda and not args.batches and not args.resolutions and not args.quick:
        cases = sorted(
            set(cases) | {(8, 256, 512), (1, 1024, 2048), (16, 512, 1024)}, key=lambda c: (c[0] * c[1] * c[2], c)
        )

    results, failed_at = [], {}
    for batch, height, width in cases:
        for variant in args.variants:
            pixels = batch * height * width
            if variant == "fused" and not cuda:
                results.append(
                    Result(
                        variant,
                        batch,
                        height,
                        width,
                        pixels,
                        status="skipped: Triton's CPU interpreter is not a benchmark",
                    )
                )
                continue
            if variant in failed_at and pixels > failed_at[variant]:
                results.append(
                    Result(
                        variant, batch, height, width, pixels, status=f"skipped: failed at {failed_at[variant]} pixels"
                    )
                )
                continue
            print(f"{variant:8s} {batch}x{height}x{width} ...", flush=True)
            result = measure(
                variant,
                batch,
                height,
                width,
                device=device,
                dtype=dtype,
                drop=args.drop,
                warmup=warmup,
                repeats=repeats,
            )
            if result.status != "ok":
                failed_at[variant] = pixels
            results.append(result)

    probes = []
    if cuda and "sdpa" in args.variants:
        for pixels in (SDPA_MAX_BATCH + 1, 8 * 256 * 512):
            probes.append(probe_unchunked_sdpa(pixels, "bfloat16", args.drop))
    print_table(results)
    targets = check_targets(results) if cuda else {}
    if cuda:
        print("\nTargets (one H100, batch 8, 256x512, bf16):")
        for name, check in targets.items():
            value = f" {check['value']:.2f} (need >= {check['required']})" if "value" in check else ""
            print(f"  {check['status']:12s} {name}{value}")
        for probe in probes:
            print(
                f"  unchunked SDPA at {probe['pixels']} pixels: {'ok' if probe['ok'] else 'fails: ' + probe['error']}"
            )
    else:
        print("\nCPU run: the fused path is skipped and the H100 targets are not checked.")

    RESULTS.mkdir(parents=True, exist_ok=True)
    out = args.out or RESULTS / f"merger_{device.type}.json"
    payload = {
        "environment": environment(device, dtype),
        "drop": args.drop,
        "warmup": warmup,
        "repeats": repeats,
        "results": [asdict(r) for r in results],
        "fused_launch_configs": launch_configs,
        "fused_config_sweep": sweep,
        "sdpa_unchunked_probe": probes,
        "targets": targets,
    }
    out.write_text(json.dumps(payload, indent=2))
    plot(
        results,
        out.with_suffix(".png"),
        f"TLAM concept block, N=5, d=96, 3 layers, {dtype} on {payload['environment']['device']}",
    )
    print(f"\nwrote {out} and {out.with_suffix('.png')}")


if __name__ == "__main__":
    main()
