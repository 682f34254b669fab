"""Speed of SyntheticDataset on one CPU core: samples per minute.

Usage (from the repository root)::

    python benchmarks/bench_synthetic.py                 # 64x64, supersample 1 and 2
    python benchmarks/bench_synthetic.py --num 100 --resolution 64 128

Every configuration renders ``--num`` fresh samples (indices never repeat, no cache) through
``dataset[i]``, i.e. scene sampling, ray casting, shading, labels and tensor conversion, after a
few warm-up samples. Reports CPU time of the process (steady on a shared machine) and wall-clock
time. Prints a table and writes the raw per-sample timings with the machine, its load and the
library versions to ``benchmarks/results/synthetic_speed.json``.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

if __package__ in (None, ""):  # run as a script: make the repository importable
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

# One core: pin every thread pool before numpy and torch start theirs.
for _var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS", "NUMEXPR_NUM_THREADS"):
    os.environ[_var] = "1"

import argparse  # noqa: E402
import json  # noqa: E402
import statistics  # noqa: E402
import time  # noqa: E402
from datetime import datetime, timezone  # noqa: E402

import torch  # noqa: E402

from examples.datasets import SyntheticDataset  # noqa: E402
from examples.studies.environment import machine_info  # noqa: E402

_WARMUP = 5


def time_config(resolution: int, supersample: int, num: int, seed: int) -> tuple[list[float], list[float]]:
    """Wall-clock and CPU seconds per sample for ``num`` fresh samples (after warm-up).

    CPU time (of this process) leaves out the time the process waits while other programs use the
    core, so it is the steadier measure on a shared machine; wall-clock time is what a user waits.
    """
    dataset = SyntheticDataset(num_samples=num + _WARMUP, resolution=resolution, seed=seed, supersample=supersample)
    for i in range(_WARMUP):
        dataset[i]
    wall, cpu = [], []
    for i in range(_WARMUP, _WARMUP + num):
        start_wall, start_cpu = time.perf_counter(), time.process_time()
        dataset[i]
        cpu.append(time.process_time() - start_cpu)
        wall.append(time.perf_counter() - start_wall)
    return wall, cpu


def main() -> None:
    parser = argparse.ArgumentParser(description="SyntheticDataset speed on one CPU core")
    parser.add_argument("--num", type=int, default=300, help="samples per configuration")
    parser.add_argument("--resolution", type=int, nargs="+", default=[64])
    parser.add_argument("--supersample", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/synthetic_speed.json"))
    args = parser.parse_args()
    torch.set_num_threads(1)

    rows = []
    header = ("resolution", "supersample", "CPU ms/sample", "CPU samples/min", "wall ms/sample", "wall samples/min")
    print(" ".join(f"{h:>16}" for h in header))
    for resolution in args.resolution:
        for supersample in args.supersample:
            wall, cpu = time_config(resolution, supersample, args.num, args.seed)
            row = {
                "resolution": resolution,
                "supersample": supersample,
                "num_samples": len(wall),
                "cpu_mean_s": statistics.fmean(cpu),
                "cpu_samples_per_minute": 60.0 / statistics.fmean(cpu),
                "wall_mean_s": statistics.fmean(wall),
                "wall_median_s": statistics.median(wall),
                "wall_samples_per_minute": 60.0 / statistics.fmean(wall),
                "cpu_times_s": cpu,
                "wall_times_s": wall,
            }
            rows.append(row)
            values = (
                resolution,
                supersample,
                f"{1e3 * row['cpu_mean_s']:.2f}",
                f"{row['cpu_samples_per_minute']:.0f}",
                f"{1e3 * row['wall_mean_s']:.2f}",
                f"{row['wall_samples_per_minute']:.0f}",
            )
            print(" ".join(f"{v:>16}" for v in values))
    result = {
        "benchmark": "SyntheticDataset.__getitem__, single thread, no cache",
        "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "machine": machine_info(),
        "results": rows,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=1))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
