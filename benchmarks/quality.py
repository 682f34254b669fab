"""Quality study: the rows of the paper's Table 1 and its convergence plot (Fig. 6a), on synthetic scenes.

Trains every row — SPADE and ASAP-Net with semantics only ("Regular") and with naive
concatenation of all labels, CLAM and TLAM with ASAP-Net, dense and 50% sparse — with the same
budget and several seeds, measures FID, KID, the segmentation score and paired per-scene metrics
(feature distance, L1, PSNR, SSIM, segmentation accuracy) at regular checkpoints, averages each
run over its last checkpoints, and writes under ``--results-dir``:

- ``quality_<budget>.md``: the table with means and bootstrap 95% intervals, the real-vs-real
  FID floor, and the paper's claims with differences, intervals, p-values and verdicts;
- ``quality_<budget>.json``: per-seed numbers (averaged per-scene values included), curves,
  settings, hardware, versions, wall time;
- ``quality_<budget>_convergence.png``: FID over training (paper Fig. 6a).

Usage (from the repository root)::

    python benchmarks/quality.py                      # --budget cpu-2h: all rows, 5 seeds, 1,000 steps
    python benchmarks/quality.py --budget smoke       # the whole pipeline in seconds
    python benchmarks/quality.py --budget cpu-2h --rows asap-semantic asap-naive asap-clam-dense asap-tlam-dense
    python benchmarks/quality.py --budget 1500 --seeds 0 1 2 3 4 5 6   # cpu-2h settings, 1,500 steps
    python benchmarks/quality.py --budget paper --device cuda --fid-weights pt_inception-2015-12-05-6726825d.pth

Runs are resumable: start the same command again and it skips every measurement it has and
continues training from the newest checkpoint (runs live in ``--work-dir``).
"""

from __future__ import annotations

import sys
from pathlib import Path

if __package__ in (None, ""):  # run as a script: make the repository importable
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import argparse  # noqa: E402
import time  # noqa: E402

from tqdm.auto import tqdm  # noqa: E402

from examples.studies.budgets import BUDGETS  # noqa: E402
from examples.studies.environment import (  # noqa: E402
    machine_info,
    utc_now,
    write_json,
)
from examples.studies.plots import plot_convergence  # noqa: E402
from examples.studies.report import quality_claims, quality_markdown, quality_rows  # noqa: E402
from examples.studies.runs import TABLE1  # noqa: E402
from examples.studies.study import study_from_args  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.ArgumentDefaultsHelpFormatter
    )
    p.add_argument("--budget", default="cpu-2h", help=f"one of {sorted(BUDGETS)}, or a number of training steps")
    p.add_argument("--rows", nargs="+", choices=[v.name for v in TABLE1], help="rows to run (default: all of Table 1)")
    p.add_argument("--seeds", nargs="+", type=int, help="seeds (default: the budget's)")
    p.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N")
    p.add_argument("--threads", type=int, help="CPU threads (default: the budget's; 1 for the CPU budgets)")
    p.add_argument("--work-dir", default=str(ROOT / "runs" / "studies"), help="where runs are trained")
    p.add_argument(
        "--cache-dir",
        help="rendered scenes and trained segmenters (default: $LABEL_MERGE_CACHE or ~/.cache/label-merge)",
    )
    p.add_argument("--results-dir", default=str(ROOT / "benchmarks" / "results"), help="where the table and plot go")
    p.add_argument(
        "--fid-weights",
        help="FID Inception weights (pt_inception-2015-12-05-6726825d.pth); "
        "default $LABEL_MERGE_FID_WEIGHTS, else the small segmenter's features",
    )
    p.add_argument("--vgg-weights", help="VGG19 weights for the perceptual loss (default $LABEL_MERGE_VGG19, else off)")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")
    return p


def main(argv: list[str] | None = None) -> dict:
    args = build_parser().parse_args(argv)
    started = time.perf_counter()
    study = study_from_args(args, "quality.py")
    budget = study.budget
    variants = [v for v in TABLE1 if args.rows is None or v.name in args.rows]
    runs: dict[str, dict[int, dict]] = {}
    jobs = [(variant, seed) for variant in variants for seed in budget.seeds]
    for variant, seed in tqdm(jobs, desc=f"quality ({budget.name})", unit="run", disable=args.no_progress):
        runs.setdefault(variant.name, {})[seed] = study.run(variant, seed)

    rows = quality_rows(variants, runs, budget.averaged_steps())
    first = rows[0]["runs"][0]["averaged"]["set"]
    report = {
        "benchmark": "quality: paper Table 1 and Fig. 6a on SyntheticDataset",
        "budget": budget.to_dict(),
        "protocol": study.protocol(),
        "averaged_steps": budget.averaged_steps(),
        "floor": study.floor(),
        "reference": {key: first.get(key) for key in ("segmenter_on_real_miou", "segmenter_on_real_pixel_accuracy")},
        "perceptual_loss": perceptual_state(rows, budget.lambda_vgg),
        "rows": rows,
        "claims": quality_claims(rows),
        "machine": machine_info(study.device),
        "date": utc_now(),
        "wall_seconds": time.perf_counter() - started,
        "train_seconds": sum(run["train_seconds"] for row in rows for run in row["runs"]),
        "work_dir": str(Path(args.work_dir).resolve()),
    }
    results = Path(args.results_dir)
    stem = f"quality_{budget.name}"
    write_json(results / f"{stem}.json", report)
    (results / f"{stem}.md").write_text(quality_markdown(report))
    fid_label = "FID" + ("" if study.scorer.feature_extractor.standard else " (small-segmenter features)")
    plot_convergence(
        rows,
        results / f"{stem}_convergence.png",
        title=f"Convergence on synthetic scenes ({budget.name})",
        fid_label=fid_label,
    )
    print((results / f"{stem}.md").read_text())
    print(f"wrote {results / stem}.json, .md and _convergence.png")
    return report


def perceptual_state(rows: list[dict], weight: float) -> str:
    if not weight:
        return "off in this budget"
    states = {run["perceptual_loss"] for row in rows for run in row["runs"]}
    if states == {True}:
        return "on"
    if states <= {False, None}:
        return "off (no VGG19 weights: pass --vgg-weights or set $LABEL_MERGE_VGG19)"
    return "mixed across runs"


if __name__ == "__main__":
    main()
