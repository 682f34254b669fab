"""How long the README's main job takes, at its default size and at smaller candidate sizes.

Each case runs the main job itself, ``python examples/train_asap_tlam.py`` with the case's
flags, in a fresh process for ``--steps`` steps (2 threads, as on the 2-core machines the
README speaks of), and reads the cumulative seconds the job logs every 25 steps into
``metrics.jsonl``. The steady step time is the median over the 25-step intervals after the
first (so start-up and the first steps' warm-up are not in it); the start-up is the process's
wall time before its first step. A 400-step job is then estimated as start-up + first interval
+ 375 steady steps (sample grids and checkpoints included, as they happen in the intervals).

Every case runs twice: with this CPU's own vector extensions, and capped at AVX2
(``ATEN_CPU_CAPABILITY=avx2``, ``ONEDNN_MAX_CPU_ISA=AVX2``, ``MKL_ENABLE_INSTRUCTIONS=AVX2``),
the code paths an AVX2-only CPU such as an AMD EPYC runs. The cap reproduces the instructions,
not that CPU's clock, caches or memory, so the AVX2 figures are a code-path estimate; the ratio
of a candidate to the default size is what carries over to another machine. Cases are run
round-robin, one process at a time, on an otherwise idle machine.

Writes ``main_job_time_<cpu>[_<name>].json`` (every interval of every run, the machine) and ``.md``;
``--cases`` picks cases (the first is the one ratios refer to), ``--isas`` the ISAs.

Usage (from the repository root)::

    python benchmarks/main_job_time.py                 # the cases below, 100 steps each, both ISAs
    python benchmarks/main_job_time.py --cases "64px batch 4" "64px batch 4, system allocator" \
        --repeats 3 --name allocator                   # the allocator, each case 3 times
    python benchmarks/main_job_time.py --smoke         # 2 tiny cases, seconds; the numbers mean nothing
"""

from __future__ import annotations

import sys
from pathlib import Path

if __package__ in (None, ""):  # run as a script: make the repository importable
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import argparse  # noqa: E402
import json  # noqa: E402
import os  # noqa: E402
import statistics  # noqa: E402
import subprocess  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402

from benchmarks.bench_train_step import result_stem  # noqa: E402
from examples.studies.environment import machine_info, utc_now, write_json  # noqa: E402
from examples.training.cpu import read_cpu_info  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
MAIN_JOB = ROOT / "examples" / "train_asap_tlam.py"
JOB_STEPS = 400  # the main job's length
LOG_EVERY = 25

# Fixed before any run: the sizes a default could move to (64 px batch 8 was the default up to
# 0.2.0, batch 4 after), then two levers at the default size: glibc's allocator as the process
# finds it, against the job's default, which keeps freed memory for reuse (--cpu-allocator), and
# rendering the scenes in a loader process that overlaps with the step (the job renders each
# batch between two steps).
CASES = {
    "64px batch 8": ["--batch-size", "8"],
    "64px batch 4": ["--batch-size", "4"],
    "48px batch 8": ["--resolution", "48", "--batch-size", "8"],
    "48px batch 4": ["--resolution", "48", "--batch-size", "4"],
    "64px batch 4, system allocator": ["--batch-size", "4", "--cpu-allocator", "system"],
    "64px batch 4, 1 loader worker": ["--batch-size", "4", "--workers", "1"],
}
ISAS = {
    "native": {},
    "avx2": {"ATEN_CPU_CAPABILITY": "avx2", "ONEDNN_MAX_CPU_ISA": "AVX2", "MKL_ENABLE_INSTRUCTIONS": "AVX2"},
}


def run_case(flags: list[str], isa_env: dict, *, steps: int, threads: int, extra: list[str]) -> dict:
    """One main job in a fresh process; its logged cumulative seconds and its start-up."""
    env = {**os.environ, **isa_env, "OMP_NUM_THREADS": str(threads), "MKL_NUM_THREADS": str(threads)}
    with tempfile.TemporaryDirectory() as out:
        command = [sys.executable, str(MAIN_JOB), "--out", out, "--steps", str(steps), "--log-every", str(LOG_EVERY)]
        started = time.perf_counter()
        done = subprocess.run(command + flags + extra, env=env, capture_output=True, text=True, cwd=ROOT)
        wall = time.perf_counter() - started
        if done.returncode:
            raise RuntimeError(f"{' '.join(command + flags)} failed:\n{done.stderr[-3000:]}")
        records = [json.loads(line) for line in (Path(out) / "metrics.jsonl").read_text().splitlines()]
    logged = [(r["step"], r["seconds"]) for r in records]
    intervals = [(b - a) / (sb - sa) for (sa, a), (sb, b) in zip(logged, logged[1:], strict=False)]
    last_step, last_seconds = logged[-1]
    return {
        "wall_s": wall,
        "logged": logged,
        "startup_s": wall - last_seconds,  # everything outside the step loop (imports, building, writing)
        "first_interval_s": logged[0][1],
        "steady_step_s": statistics.median(intervals) if intervals else last_seconds / last_step,
        "intervals_s_per_step": intervals,
    }


def estimate_job(run: dict, job_steps: int = JOB_STEPS) -> float:
    """Seconds for the whole job: start-up, the first interval, then steady steps."""
    first_step = run["logged"][0][0]
    return run["startup_s"] + run["first_interval_s"] + (job_steps - first_step) * run["steady_step_s"]


def markdown(report: dict) -> str:
    machine, default = report["machine"], report["summary"][0]["case"]
    lines = [
        "# The main job's time by size",
        "",
        f"CPU: {machine['cpu']} ({', '.join(report['vector_extensions']) or 'no AVX'}), "
        f"{report['settings']['threads']} threads, torch {machine['torch']}. Each case ran "
        f"{report['settings']['steps']} steps of `python examples/train_asap_tlam.py` in a fresh process, "
        f"{report['settings']['repeats']} time(s) per ISA; the job is estimated at {JOB_STEPS} steps.",
        "The AVX2 column caps this CPU at AVX2 code paths (same clock and caches), so read its ratios, "
        "not its seconds, as what an AVX2-only CPU gains.",
        "",
        f"| case | ISA | steady s/step | start-up s | {JOB_STEPS}-step job, min | ratio to {default} (same ISA) |",
        "|---|---|---|---|---|---|",
    ]
    for row in report["summary"]:
        lines.append(
            f"| {row['case']} | {row['isa']} | {row['steady_step_s']:.3f} | {row['startup_s']:.1f} | "
            f"{row['job_s'] / 60:.1f} | {row['ratio_to_default']:.2f} |"
        )
    return "\n".join(lines) + "\n"


def summarise(runs: list[dict], default_case: str) -> list[dict]:
    summary = []
    for case, isa in dict.fromkeys((r["case"], r["isa"]) for r in runs):
        mine = [r for r in runs if r["case"] == case and r["isa"] == isa]
        summary.append(
            {
                "case": case,
                "isa": isa,
                "steady_step_s": statistics.median(r["steady_step_s"] for r in mine),
                "startup_s": statistics.median(r["startup_s"] for r in mine),
                "job_s": statistics.median(estimate_job(r) for r in mine),
            }
        )
    for row in summary:
        default = next(r for r in summary if r["case"] == default_case and r["isa"] == row["isa"])
        row["ratio_to_default"] = row["job_s"] / default["job_s"]
    return summary


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--steps", type=int, default=100, help="steps per timed job (a multiple of 25, at least 75)")
    p.add_argument("--repeats", type=int, default=1, help="timed jobs per case and ISA")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--results-dir", type=Path, default=ROOT / "benchmarks" / "results")
    p.add_argument("--smoke", action="store_true", help="2 tiny cases of 50 steps; the numbers mean nothing")
    p.add_argument("--cases", nargs="+", choices=list(CASES), help="cases to run, in this order (default: all)")
    p.add_argument("--isas", nargs="+", choices=list(ISAS), default=list(ISAS), help="code paths (default: both)")
    p.add_argument("--name", help="suffix of the result files, so that a part does not replace the whole")
    args = p.parse_args(argv)
    cases, extra = {case: CASES[case] for case in args.cases or CASES}, []
    if args.smoke:
        cases = {
            "16px batch 2": ["--resolution", "16", "--batch-size", "2"],
            "16px batch 1": ["--resolution", "16", "--batch-size", "1"],
        }
        extra = ["--train-samples", "8", "--val-samples", "4", "--sample-every", "1000", "--checkpoint-every", "1000"]
        args.steps, args.repeats = 50, 1
    isas = {isa: ISAS[isa] for isa in args.isas}
    cpu = read_cpu_info()
    runs = []
    for repeat in range(args.repeats):
        for isa, isa_env in isas.items():
            for case, flags in cases.items():
                run = run_case(flags, isa_env, steps=args.steps, threads=args.threads, extra=extra)
                runs.append({"case": case, "isa": isa, "repeat": repeat, "flags": flags, **run})
                print(
                    f"{case} [{isa}] {run['steady_step_s']:.3f} s/step, start-up {run['startup_s']:.1f} s", flush=True
                )
    report = {
        "benchmark": "main job time by size (examples/train_asap_tlam.py)",
        "settings": {"steps": args.steps, "repeats": args.repeats, "threads": args.threads, "smoke": args.smoke},
        "machine": machine_info(),
        "vector_extensions": cpu.vector_flags,
        "isas": isas,
        "date": utc_now(),
        "summary": summarise(runs, next(iter(cases))),
        "runs": runs,
    }
    stem = result_stem(cpu.model).replace("train_step_", "main_job_time_", 1)
    stem += "".join(f"_{part}" for part in (args.name, "smoke" if args.smoke else None) if part)
    write_json(args.results_dir / f"{stem}.json", report)
    (args.results_dir / f"{stem}.md").write_text(markdown(report))
    print(markdown(report))
    return report


if __name__ == "__main__":
    main()
