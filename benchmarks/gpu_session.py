"""Everything that needs a GPU, in one call of at most 10 minutes, most important first.

GPU time comes in short rentals (about 15 minutes, start-up included), so this script runs its
parts in priority order, each within a time box and all within ``--budget`` seconds, and writes
its JSON after every part (and after every probe run): a run cut short still returns what it
measured. The parts:

1. ``parity``: the fused kernels against a float64 reference (float32 and bfloat16, both drop
   modes, 5 tokens, paper widths), as ``cuda_check.py`` checks them.
2. ``probe``: the merger probe at the paper's sizes (256x256 scenes, TLAM and CLAM of width 96
   with 3 blocks, TLAM with 3 heads) for naive concatenation, CLAM and TLAM, dense and 50%
   sparse, 5 seeds, seed-major (every row of seed 0, then of seed 1, ...) so that a cut-short
   run still has paired seeds. Scenes are rendered on the machine's cores. bfloat16 autocast
   for every row.
3. ``bench``: ``bench_merger.py`` at 8x256x512 (eager, ``torch.compile`` and fused; speed and memory).
4. ``asap``: a few hundred steps of the paper-size ASAP-Net + TLAM (the training example's
   ``paper`` preset) on pre-rendered batches: step time and peak memory.
5. ``cuda_check``: the rest of ``cuda_check.py`` (``pytest -m gpu``, all parity cases,
   determinism), in whatever time is left.

Usage (from the repository root)::

    python benchmarks/gpu_session.py              # on a CUDA machine: writes benchmarks/results/gpu_session_<gpu>.json
    python benchmarks/gpu_session.py --dry-run    # the plan and its time boxes; needs no GPU
    python benchmarks/gpu_session.py --smoke      # every part at toy sizes on the CPU (what the tests run)
"""

from __future__ import annotations

import sys
from pathlib import Path

if __package__ in (None, ""):  # run as a script: make the repository importable
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import argparse  # noqa: E402
import json  # noqa: E402
import os  # noqa: E402
import re  # noqa: E402
import statistics  # noqa: E402
import subprocess  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402
import traceback  # noqa: E402
from collections.abc import Callable  # noqa: E402
from dataclasses import dataclass, replace  # noqa: E402

import torch  # noqa: E402

from examples.studies.environment import machine_info, utc_now, write_json  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "benchmarks" / "results"
PROBE_ROWS = ("naive-dense", "clam-dense", "tlam-dense", "naive-sparse", "clam-sparse", "tlam-sparse")


@dataclass(frozen=True)
class Part:
    """One part of the session: its name, what it does, and the most seconds it may take."""

    name: str
    what: str
    seconds: float
    run: Callable


class Session:
    """The clock, the report and where it is written (after every part and every probe run)."""

    def __init__(self, args) -> None:
        self.args = args
        self.started = time.perf_counter()
        self.device = torch.device("cuda" if torch.cuda.is_available() and not args.smoke else "cpu")
        name = "smoke" if args.smoke else _slug(torch.cuda.get_device_name(0)) if self.device.type == "cuda" else "cpu"
        self.path = Path(args.out) if args.out else RESULTS / f"gpu_session_{name}.json"
        self.report: dict = {
            "benchmark": "gpu session: parity, paper-size probe, speed and memory, paper-size training steps",
            "smoke": args.smoke,
            "budget_seconds": args.budget,
            "machine": machine_info(self.device),
            "date": utc_now(),
            "parts": {},
        }

    def left(self) -> float:
        return self.args.budget - (time.perf_counter() - self.started)

    def save(self) -> None:
        self.report["elapsed_seconds"] = round(time.perf_counter() - self.started, 1)
        write_json(self.path, self.report)

    def run_part(self, part: Part) -> None:
        box = min(part.seconds, self.left())
        entry = {"what": part.what, "time_box_seconds": round(box, 1)}
        self.report["parts"][part.name] = entry
        if box < 5:
            entry["status"] = "not run: no time left"
            self.save()
            return
        print(
            f"[{time.perf_counter() - self.started:6.0f} s] {part.name}: {part.what} (at most {box:.0f} s)", flush=True
        )
        start = time.perf_counter()
        try:
            entry.update(part.run(self, box, entry))
            entry.setdefault("status", "done")
        except Exception as err:  # a broken part must not cost the parts after it
            entry["status"] = "error"
            entry["error"] = f"{type(err).__name__}: {err}"
            entry["traceback"] = traceback.format_exc()[-3000:]
            print(entry["traceback"], file=sys.stderr, flush=True)
        entry["seconds"] = round(time.perf_counter() - start, 1)
        self.save()
        print(f"           {part.name}: {entry['status']} in {entry['seconds']} s", flush=True)


def _slug(text: str) -> str:
    return re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-")


# ---------------------------------------------------------------- 1. parity


def part_parity(session: Session, box: float, entry: dict) -> dict:
    import cuda_check

    interpret = os.environ.get("TRITON_INTERPRET") == "1"
    if session.device.type != "cuda" and not interpret:
        return {"status": "skipped: the fused kernels need CUDA (or TRITON_INTERPRET=1 on the CPU)"}
    sizes = {"pixels": 33, "depth": 1} if session.args.smoke else {}
    cases, deadline = [], time.perf_counter() + box
    for dtype in ("float32", "bfloat16"):
        for drop in ("zero", "exclude"):
            if time.perf_counter() > deadline:
                break
            cases.append(cuda_check.parity_case(dtype, drop, 5, device=session.device.type, **sizes))
            entry["cases"] = cases
            session.save()
    failed = [c for c in cases if c["status"] != "pass"]
    return {"cases": cases, "status": "FAIL" if failed else "pass" if len(cases) == 4 else "partial"}


# ---------------------------------------------------------------- 2. the paper-size probe


def probe_config(smoke: bool):
    from examples.studies.probe import ProbeConfig

    if smoke:
        return ProbeConfig(
            resolution=16, train_scenes=16, test_scenes=8, steps=3, batch_size=4, dim=6, depth=1, heads=3
        )
    # The paper's merger sizes and image size; 512 training scenes keep rendering under half a minute.
    return replace(ProbeConfig(), resolution=256, train_scenes=512, test_scenes=128, dim=96, depth=3, heads=3)


def part_probe(session: Session, box: float, entry: dict) -> dict:
    from benchmarks.merger_probe import probe_claims
    from examples.studies.probe import ROWS, evaluate_probe, probe_masks, render_scenes, total_variance, train_probe
    from examples.training.builders import HELD_OUT_SEED_OFFSET

    deadline = time.perf_counter() + box
    config = probe_config(session.args.smoke)
    if session.args.probe_steps:
        config = replace(config, steps=session.args.probe_steps)
    workers = 0 if session.args.smoke else max(1, (os.cpu_count() or 2) - 1)
    t0 = time.perf_counter()
    train = render_scenes(config.train_scenes, config.resolution, config.scene_seed, workers=workers)
    test = render_scenes(
        config.test_scenes, config.resolution, config.scene_seed + HELD_OUT_SEED_OFFSET, workers=workers
    )
    entry.update(config=config.to_dict(), render_seconds=round(time.perf_counter() - t0, 1), autocast="bfloat16")
    sst = total_variance(test.images)
    train, test = train.to(session.device), test.to(session.device)
    eval_masks = {False: probe_masks(test, 0.0, seed=0), True: probe_masks(test, config.sparsity, seed=0)}
    rows = {r.name: r for r in ROWS if r.name in PROBE_ROWS}
    results = {name: {"row": rows[name].__dict__, "mean_sst": float(sst.mean()), "runs": []} for name in PROBE_ROWS}
    entry["rows"] = results
    round_seconds = None
    planned = session.args.probe_seeds or (2 if session.args.smoke else 5)
    for seed in range(planned):
        left = deadline - time.perf_counter()
        if round_seconds is not None and left < round_seconds:
            entry["stopped"] = f"seed {seed} not started: {left:.0f} s left, a seed takes about {round_seconds:.0f} s"
            break
        round_start = time.perf_counter()
        for name in PROBE_ROWS:
            row = rows[name]
            start = time.perf_counter()
            with torch.autocast(session.device.type, dtype=torch.bfloat16):
                model = train_probe(row, train, config, seed=seed)
                out = evaluate_probe(model, test, eval_masks[row.sparse])
            _sync(session.device)
            sse = out["sse"]
            results[name]["runs"].append(
                {
                    "seed": seed,
                    "train_seconds": round(time.perf_counter() - start, 2),
                    "parameters": sum(p.numel() for p in model.parameters()),
                    "r2": float(1 - sse.sum() / sst.sum()),
                    "scene_sse": sse.tolist(),
                }
            )
            session.save()
        round_seconds = time.perf_counter() - round_start
    done = {n: r for n, r in results.items() if r["runs"]}
    seeds = min(len(r["runs"]) for r in results.values())
    for r in done.values():
        r2 = [run["r2"] for run in r["runs"]]
        r["r2_mean"] = statistics.fmean(r2)
        r["r2_std"] = statistics.stdev(r2) if len(r2) > 1 else 0.0
    trimmed = {n: {**r, "runs": r["runs"][:seeds]} for n, r in done.items()}  # paired seeds only
    claims = probe_claims(trimmed) if seeds else []
    status = "done" if seeds >= planned else f"{seeds} of {planned} seeds"
    return {"seeds_planned": planned, "seeds_completed": seeds, "claims": claims, "status": status}


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


# ---------------------------------------------------------------- 3. speed and memory


def part_bench(session: Session, box: float, entry: dict) -> dict:
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "bench.json"
        if session.device.type == "cuda":
            args = ["--variants", "eager", "compile", "fused", "--cases", "8x256x512", "--no-tune"]
        else:
            args = ["--device", "cpu", "--variants", "eager", "--cases", "1x8x8", "--warmup", "0", "--repeats", "1"]
        command = [sys.executable, str(ROOT / "benchmarks" / "bench_merger.py"), *args, "--out", str(out)]
        done = _run(command, box)
        payload = json.loads(out.read_text()) if out.exists() else {}
    return {"command": " ".join(command[1:]), **done, "payload": payload, "status": "done" if payload else "no result"}


def _run(command: list[str], timeout: float) -> dict:
    try:
        done = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=timeout)
        code, output = done.returncode, done.stdout + done.stderr
    except subprocess.TimeoutExpired as err:
        code, output = -1, f"timed out after {timeout:.0f} s\n{err.stdout or ''}"
    return {"returncode": code, "output_tail": output[-3000:]}


# ---------------------------------------------------------------- 4. paper-size training steps


def asap_config(smoke: bool, out: str):
    from examples.training.config import PRESETS, DataConfig, ModelConfig, OptimConfig, RunConfig, TrainConfig

    if smoke:
        tiny = ModelConfig(dim=6, depth=1, heads=3, asap_lr_width=4, asap_lr_max_width=8, asap_lr_depth=1,
                           asap_hr_width=4, asap_hr_depth=2, ndf=4)  # fmt: skip
        return RunConfig(
            data=DataConfig(resolution=32, train_samples=4, val_samples=4, workers=0),
            model=tiny,
            optim=OptimConfig(lambda_vgg=0.0, lambda_l1=10.0),
            train=TrainConfig(steps=3, batch_size=2, device="cpu", out=out, amp=False),
        )
    paper = PRESETS["paper"]
    workers = max(1, (os.cpu_count() or 2) - 1)
    return replace(
        paper,
        data=replace(paper.data, train_samples=64, val_samples=4, workers=workers),
        train=replace(paper.train, steps=300, device="cuda", out=out, amp=True),
    )


def part_asap(session: Session, box: float, entry: dict) -> dict:
    from examples.training.loop import Trainer, to_device

    deadline = time.perf_counter() + box
    with tempfile.TemporaryDirectory() as out:
        config = asap_config(session.args.smoke, out)
        trainer = Trainer(config, progress=False)
        # A few batches rendered once and cycled: the step is timed, not the scene renderer.
        batches = []
        for batch in trainer._loader():
            batches.append(to_device(batch, trainer.device))
            if len(batches) == 4:
                break
        if session.device.type == "cuda":
            torch.cuda.reset_peak_memory_stats()
        times = []
        for step in range(config.train.steps):
            if time.perf_counter() > deadline:
                break
            start = time.perf_counter()
            trainer.train_step(batches[step % len(batches)])
            trainer.step += 1
            _sync(session.device)
            times.append(time.perf_counter() - start)
        steady = times[len(times) // 5 :] or times  # the first steps compile and warm up
        return {
            "config": {
                "model": config.model.__dict__,
                "batch_size": config.train.batch_size,
                "resolution": config.data.resolution,
                "amp": config.train.amp,
            },  # fmt: skip
            "steps_timed": len(times),
            "first_step_seconds": times[0] if times else None,
            "median_step_seconds": statistics.median(steady) if steady else None,
            "peak_memory_gib": torch.cuda.max_memory_allocated() / 2**30 if session.device.type == "cuda" else None,
            "status": "done" if len(times) == config.train.steps else f"{len(times)} of {config.train.steps} steps",
        }


# ---------------------------------------------------------------- 5. the rest of cuda_check


def part_cuda_check(session: Session, box: float, entry: dict) -> dict:
    if session.device.type != "cuda":
        return {"status": "skipped: needs CUDA"}
    out = session.path.with_name(session.path.stem.replace("gpu_session", "cuda_check") + ".json")
    command = [sys.executable, str(ROOT / "benchmarks" / "cuda_check.py"), "--skip-bench", "--out", str(out)]
    command += ["--test-timeout", str(int(max(30, box * 0.6)))]
    done = _run(command, box)
    return {"command": " ".join(command[1:]), **done, "report": str(out.relative_to(ROOT)) if out.exists() else None,
            "status": "pass" if done["returncode"] == 0 else "FAIL or cut short"}  # fmt: skip


PARTS = (
    Part("parity", "fused kernels against float64: float32 and bfloat16, both drop modes, N=5", 90, part_parity),
    Part("probe", "merger probe at 256x256, width 96, 3 blocks, 3 heads: 6 rows x 5 seeds", 330, part_probe),
    Part("bench", "bench_merger.py at 8x256x512: eager, torch.compile, fused", 90, part_bench),
    Part("asap", "paper-size ASAP-Net + TLAM: 300 training steps, step time and peak memory", 75, part_asap),
    Part(
        "cuda_check", "cuda_check.py --skip-bench: pytest -m gpu, every parity case, determinism", 300, part_cuda_check
    ),
)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--budget", type=float, default=540, help="seconds for the whole session (one 10-minute call)")
    p.add_argument("--parts", nargs="+", choices=[part.name for part in PARTS], help="parts to run (default: all)")
    p.add_argument("--probe-seeds", type=int, help="seeds of the paper-size probe (default 5; 2 with --smoke)")
    p.add_argument("--probe-steps", type=int, help="training steps of each probe run (default: the probe's 400)")
    p.add_argument("--smoke", action="store_true", help="every part at toy sizes on the CPU: checks the script")
    p.add_argument("--dry-run", action="store_true", help="print the plan and exit; needs no GPU")
    p.add_argument("--out", help="JSON path (default benchmarks/results/gpu_session_<gpu>.json)")
    return p


def main(argv: list[str] | None = None) -> dict | None:
    args = build_parser().parse_args(argv)
    parts = [part for part in PARTS if args.parts is None or part.name in args.parts]
    if args.dry_run:
        print(f"gpu_session plan, at most {args.budget:.0f} s in all, in this order:")
        for part in parts:
            print(f"  - {part.name} (at most {part.seconds:.0f} s): {part.what}")
        return None
    if not args.smoke and not torch.cuda.is_available():
        raise SystemExit("gpu_session.py needs a CUDA GPU and none is visible to PyTorch; see --dry-run or --smoke")
    sys.path.insert(0, str(ROOT / "benchmarks"))  # cuda_check imports bench_merger as a sibling module
    session = Session(args)
    print(
        f"gpu_session on {session.report['machine'].get('cuda_device') or session.report['machine']['cpu']}", flush=True
    )
    for part in parts:
        session.run_part(part)
    print(f"wrote {session.path} after {time.perf_counter() - session.started:.0f} s", flush=True)
    return session.report


if __name__ == "__main__":
    main()
