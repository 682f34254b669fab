"""Missing labels in the GAN: TLAM against naive concatenation, condition by condition.

For each merger's ASAP-Net runs trained at 50% region sparsity (``--variants``, the quality
study's and the ladder's rows of one budget), runs the sensitivity study
(``benchmarks/sensitivity.py --variant V``: evaluation sparsities ``--sparsities`` and each label
removed with the others dense; measurements are cached, so a second call only compares). Then
TLAM is compared with every other merger on each condition: FID, mIoU, and each label's
controllability (the project's label estimator re-reads the label from the generated image) on
the pixels where the label was given and on those where it was missing. Seeds are paired (seed
``i`` of both rows trained on the same batches and masks), scenes and evaluation masks are the
same; a verdict only where the 95% interval excludes zero. Removing a whole label is a
condition that training (region dropout only) never showed.

Writes ``sensitivity_mergers_<budget>.{json,md,png}`` under ``--results-dir``, next to each
merger's own sensitivity report (``sensitivity_mergers_<budget>_<variant>.*``).

Usage (from the repository root)::

    python benchmarks/sensitivity_mergers.py --budget 600
    python benchmarks/sensitivity_mergers.py --budget 600 --variants asap-tlam-w32-sparse asap-naive-sparse \
        asap-tlam-sparse --name sensitivity_mergers_cpu-2h-600_w32      # TLAM at width 32 against both
    python benchmarks/sensitivity_mergers.py --budget smoke     # the pipeline in seconds
"""

from __future__ import annotations

import sys
from pathlib import Path

if __package__ in (None, ""):  # run as a script: make the repository importable
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import argparse  # noqa: E402
import json  # noqa: E402
from collections import Counter  # noqa: E402

import numpy as np  # noqa: E402

from benchmarks import sensitivity  # noqa: E402
from examples.studies.budgets import resolve_budget  # noqa: E402
from examples.studies.controllability import SCENE_FIGURES  # noqa: E402
from examples.studies.environment import machine_info, utc_now, write_json  # noqa: E402
from examples.studies.plots import save_figure  # noqa: E402
from examples.studies.report import compare_measurements, metric_matrix  # noqa: E402
from examples.studies.statistics import UNDECIDED, bootstrap_mean  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
SPARSITIES = (0.0, 0.25, 0.5, 0.75, 0.9)
SET_FIGURES = ("fid", "miou")


def label_metrics(labels: list[str]) -> list[str]:
    """Each label's headline controllability figure on given and on missing pixels."""
    return [f"{label}.{split}.{SCENE_FIGURES[label][0]}" for label in labels for split in ("given", "missing")]


def by_seed(report: dict) -> dict[int, dict]:
    """``{seed: {condition: averaged measurements}}`` of one sensitivity report."""
    return {int(model["name"].rsplit("seed", 1)[1]): model["averaged"] for model in report["models"]}


def compare_mergers(reports: dict[str, dict], reference: str) -> dict:
    """``reference`` (TLAM) against each other merger, on every condition and metric both have."""
    labels = next(iter(reports.values()))["models"][0]["labels"]
    metrics = [*SET_FIGURES, *label_metrics(labels)]
    ours = by_seed(reports[reference])
    out = {}
    for name, report in reports.items():
        if name == reference:
            continue
        theirs = by_seed(report)
        seeds = sorted(set(ours) & set(theirs))
        conditions = [c for c in ours[seeds[0]] if c in theirs[seeds[0]]]
        out[name] = {
            "seeds": seeds,
            "conditions": {
                condition: [
                    check
                    for check in compare_measurements(
                        [ours[s][condition] for s in seeds],
                        [theirs[s][condition] for s in seeds],
                        metrics,
                        paired_seeds=True,
                    )
                    if check["difference"] is not None and np.isfinite(check["difference"])
                ]
                for condition in conditions
            },
        }
    return out


def curves(reports: dict[str, dict]) -> dict:
    """``{variant: {condition: {metric: mean and interval over seeds and scenes}}}``."""
    out = {}
    for name, report in reports.items():
        models = report["models"]
        metrics = [*SET_FIGURES, *label_metrics(models[0]["labels"])]
        out[name] = {}
        for condition in models[0]["averaged"]:
            measured = [model["averaged"][condition] for model in models]
            out[name][condition] = {}
            for metric in metrics:
                matrix = metric_matrix(measured, metric)
                if matrix is not None and np.isfinite(matrix).any():
                    out[name][condition][metric] = bootstrap_mean(matrix)
    return out


def _condition_label(key: str) -> str:
    """``sparsity=0.5`` -> ``50%``; ``sparsity=0,without=depth`` -> ``no depth``."""
    if ",without=" in key:
        return "no " + key.split("without=")[1]
    return f"{100 * float(key.split('=')[1]):g}%"


def markdown(report: dict) -> str:
    reference = report["reference"]
    lines = [
        f"# Missing labels in the GAN: {reference} against the other mergers — budget `{report['budget']['name']}`",
        "",
        f"ASAP-Net runs trained at 50% region sparsity, seeds {report['seeds']}, each measured at the checkpoints "
        "the quality study averages over, on the held-out scenes. Conditions: evaluation sparsity "
        f"{', '.join(f'{100 * s:g}%' for s in report['sparsities'])}, and each label removed with the others dense "
        "(never seen in training). Controllability: the label estimator's figure for that label on the pixels "
        "where it was given, and where it was missing (where the generator had to infer it). Difference "
        f"{reference} − other, seed-paired; 95% interval: the wider of the two-level bootstrap and the t-interval "
        "over seeds; a verdict only where it excludes zero.",
        "",
    ]
    for other, part in report["comparisons"].items():
        counts = Counter(check["verdict"] for checks in part["conditions"].values() for check in checks)
        lines += [
            f"## {reference} − {other}",
            "",
            f"Verdicts over {sum(counts.values())} (condition, metric) pairs: "
            + ", ".join(f"{verdict} {n}" for verdict, n in sorted(counts.items())),
            "",
            "| condition | metric | difference | 95% interval | verdict |",
            "|---|---|---|---|---|",
        ]
        for condition, checks in part["conditions"].items():
            for check in checks:
                arrow = {True: " ↑", False: " ↓", None: ""}[check["higher_is_better"]]
                verdict = check["verdict"] if check["verdict"] == UNDECIDED else f"**{check['verdict']}**"
                interval = "n/a" if check["low"] is None else f"[{check['low']:+.4g}, {check['high']:+.4g}]"
                lines.append(
                    f"| {_condition_label(condition)} | {check['metric']}{arrow} | {check['difference']:+.4g} | "
                    f"{interval} | {verdict} |"
                )
        lines.append("")
    machine = report["machine"]
    lines += [f"Machine: {machine['cpu']}, torch {machine['torch']}, label-merge {machine['label_merge']}.", ""]
    return "\n".join(lines)


def plot(report: dict, path: Path) -> Path:
    """Each label's controllability on given and missing pixels, per condition and merger."""
    import matplotlib.pyplot as plt

    conditions = list(next(iter(report["curves"].values())))  # the reference merger's, in measured order
    labels = [label for label in report["labels"] if label in SCENE_FIGURES]
    figure, axes = plt.subplots(2, len(labels), figsize=(3.2 * len(labels), 6), squeeze=False)
    for column, label in enumerate(labels):
        for line, split in enumerate(("given", "missing")):
            ax = axes[line][column]
            metric = f"{label}.{split}.{SCENE_FIGURES[label][0]}"
            for offset, (name, curve) in enumerate(report["curves"].items()):
                xs, means, errors = [], [], [[], []]
                for x, condition in enumerate(conditions):
                    s = curve.get(condition, {}).get(metric)
                    if s is None or s["mean"] is None:
                        continue
                    xs.append(x + 0.12 * (offset - 0.5))
                    means.append(s["mean"])
                    errors[0].append(s["mean"] - (s["low"] if s["low"] is not None else s["mean"]))
                    errors[1].append((s["high"] if s["high"] is not None else s["mean"]) - s["mean"])
                ax.errorbar(xs, means, yerr=errors, marker="o", capsize=2, linestyle="none", label=name)
            ax.set_xticks(range(len(conditions)), [_condition_label(c) for c in conditions], rotation=45, fontsize=7)
            ax.set_title(f"{metric}", fontsize=8)
            ax.grid(alpha=0.3)
    axes[0][0].legend(fontsize=7)
    figure.suptitle("Controllability where each label was given (top) and missing (bottom); mean and 95% interval")
    figure.tight_layout()
    return save_figure(figure, path)


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--budget", default="600", help="a study budget (the quality study's runs)")
    p.add_argument(
        "--variants",
        nargs="+",
        default=["asap-tlam-sparse", "asap-naive-sparse"],
        choices=sensitivity.SPARSE_VARIANTS,
        help="the first is compared with each of the others",
    )
    p.add_argument("--sparsities", nargs="+", type=float, default=list(SPARSITIES))
    p.add_argument("--work-dir", default=str(ROOT / "runs" / "studies"))
    p.add_argument("--cache-dir")
    p.add_argument("--results-dir", type=Path, default=ROOT / "benchmarks" / "results")
    p.add_argument("--no-progress", action="store_true")
    p.add_argument("--name", help="stem of the comparison's files (default: sensitivity_mergers_<budget>)")
    args = p.parse_args(argv)
    shared = ["--budget", args.budget, "--work-dir", args.work_dir, "--results-dir", str(args.results_dir)]
    shared += ["--sparsities", *map(str, args.sparsities), *(["--cache-dir", args.cache_dir] if args.cache_dir else [])]
    shared += ["--no-progress"] if args.no_progress else []
    try:
        stem = f"sensitivity_mergers_{resolve_budget(args.budget).name}"
    except ValueError as err:
        raise SystemExit(f"sensitivity_mergers.py: {err}") from None
    reports = {  # each merger's own sensitivity report, under the comparison's name
        variant: sensitivity.main([*shared, "--variant", variant, "--name", f"{stem}_{variant}"])
        for variant in args.variants
    }
    stem = args.name or stem  # each merger's own report keeps the budget's name, so it is shared
    budget = reports[args.variants[0]]["budget"]
    if any(r["protocol"] != reports[args.variants[0]]["protocol"] for r in reports.values()):
        raise SystemExit("sensitivity_mergers.py: the mergers' runs were measured with different protocols")
    report = {
        "benchmark": "missing labels in the GAN: TLAM against the other mergers (sensitivity conditions)",
        "budget": budget,
        "protocol": reports[args.variants[0]]["protocol"],
        "reference": args.variants[0],
        "variants": args.variants,
        "sparsities": args.sparsities,
        "seeds": sorted(by_seed(reports[args.variants[0]])),
        "labels": reports[args.variants[0]]["models"][0]["labels"],
        "comparisons": compare_mergers(reports, args.variants[0]),
        "curves": curves(reports),
        "machine": machine_info(),
        "date": utc_now(),
    }
    write_json(args.results_dir / f"{stem}.json", report)
    (args.results_dir / f"{stem}.md").write_text(markdown(report))
    plot(report, args.results_dir / f"{stem}.png")
    print(json.dumps({k: dict(Counter(c["verdict"] for cs in v["conditions"].values() for c in cs))
                      for k, v in report["comparisons"].items()}))  # fmt: skip
    print(f"wrote {args.results_dir / stem}.json, .md and .png")
    return report


if __name__ == "__main__":
    main()
