"""The baseline ladder in the quality study: where does a gap between TLAM and concatenation come from?

Trains, with ASAP-Net and the quality study's budget and seeds, the rungs of the ladder
(``examples.studies.runs.LADDER``), dense and 50% sparse:

- naive concatenation as the paper describes it: raw labels, no presence channels;
- naive with label normalisation;
- naive with normalisation and presence channels (the project's, Table 1's ``asap-naive``;
  its sparse twin ``asap-naive-sparse`` is a ladder row);
- TLAM without label normalisation;
- TLAM at widths 32 and 64, dense and 50% sparse, and 96 (the paper's) 50% sparse: two, four and
  six times the budget's: does width close TLAM's gaps in the GAN?

and sets them beside Table 1's ``asap-naive``, ``asap-tlam-dense`` and ``asap-tlam-sparse``.
Those three are read from the quality study's JSON (``--reference``) when it was measured with
this budget and this protocol (evaluation set, segmenter, features: the same checksums), so
they are not trained twice; otherwise (or with ``--train-reference``) they are trained here.

Writes ``quality_ladder_<budget>.{json,md,png}`` under ``--results-dir``: per-seed numbers, the
table with 95% intervals, every rung against TLAM and against the rung below it (paired by
seed), and a plot of FID and mIoU per rung.

Usage (from the repository root)::

    python benchmarks/quality_ladder.py --budget 600            # the committed quality study's budget
    python benchmarks/quality_ladder.py --budget 600 --rows asap-naive-raw asap-naive-norm   # a part
    python benchmarks/quality_ladder.py --budget smoke --train-reference   # the pipeline in seconds
    python benchmarks/quality_ladder.py --budget 600 --report     # from the runs measured so far
"""

from __future__ import annotations

import sys
from pathlib import Path

if __package__ in (None, ""):  # run as a script: make the repository importable
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import json  # noqa: E402
import time  # noqa: E402

from tqdm.auto import tqdm  # noqa: E402

from benchmarks.quality import build_parser as quality_parser  # noqa: E402
from benchmarks.quality import perceptual_state  # noqa: E402
from examples.studies.environment import machine_info, utc_now, write_json  # noqa: E402
from examples.studies.plots import save_figure  # noqa: E402
from examples.studies.report import quality_claims, quality_markdown, quality_rows  # noqa: E402
from examples.studies.runs import LADDER, VARIANTS  # noqa: E402
from examples.studies.study import study_from_args  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
REFERENCE_ROWS = ("asap-naive", "asap-tlam-dense", "asap-tlam-sparse")


def _claims(regime: str) -> tuple[tuple[str, str, str], ...]:
    """(claim, A, B), "A is better than B": each rung against TLAM, then each rung against the one below."""
    suffix = "-sparse" if regime == "sparse" else ""
    tlam, tlam_raw = f"asap-tlam-{regime}", f"asap-tlam-raw-{regime}"
    raw, norm, naive = f"asap-naive-raw{suffix}", f"asap-naive-norm{suffix}", f"asap-naive{suffix}"
    where = "50% sparse" if suffix else "dense"
    return (
        (f"TLAM beats the paper's naive ({where})", tlam, raw),
        (f"TLAM beats naive + normalisation ({where})", tlam, norm),
        (f"TLAM beats naive + normalisation + presence ({where})", tlam, naive),
        (f"TLAM without normalisation beats the paper's naive ({where})", tlam_raw, raw),
        (f"normalisation helps naive ({where})", norm, raw),
        (f"presence channels help normalised naive ({where})", naive, norm),
        (f"normalisation helps TLAM ({where})", tlam, tlam_raw),
    )


LADDER_CLAIMS = (
    _claims("dense")
    + _claims("sparse")
    + (
        ("TLAM at width 32 beats TLAM at the budget's width (dense)", "asap-tlam-w32-dense", "asap-tlam-dense"),
        ("TLAM at width 32 beats naive + normalisation + presence (dense)", "asap-tlam-w32-dense", "asap-naive"),
        ("TLAM at width 32 beats TLAM at the budget's width (50% sparse)", "asap-tlam-w32-sparse", "asap-tlam-sparse"),
        (
            "TLAM at width 32 beats naive + normalisation + presence (50% sparse)",
            "asap-tlam-w32-sparse",
            "asap-naive-sparse",
        ),
        ("TLAM at width 64 beats TLAM at width 32 (dense)", "asap-tlam-w64-dense", "asap-tlam-w32-dense"),
        ("TLAM at width 64 beats naive + normalisation + presence (dense)", "asap-tlam-w64-dense", "asap-naive"),
        ("TLAM at width 64 beats TLAM at width 32 (50% sparse)", "asap-tlam-w64-sparse", "asap-tlam-w32-sparse"),
        (
            "TLAM at width 64 beats naive + normalisation + presence (50% sparse)",
            "asap-tlam-w64-sparse",
            "asap-naive-sparse",
        ),
        ("TLAM at width 96 beats TLAM at width 32 (50% sparse)", "asap-tlam-w96-sparse", "asap-tlam-w32-sparse"),
        (
            "TLAM at width 96 beats naive + normalisation + presence (50% sparse)",
            "asap-tlam-w96-sparse",
            "asap-naive-sparse",
        ),
    )
)


def build_parser():
    p = quality_parser()
    p.description = __doc__.split("\n\n")[0]
    for action in p._actions:  # --rows picks ladder rows here, not Table 1's
        if action.dest == "rows":
            action.choices = [v.name for v in LADDER]
            action.help = "ladder rows to train (default: all); the report covers every row that is measured"
    p.add_argument("--reference", type=Path, help="the quality study's JSON (default: quality_<budget>.json)")
    p.add_argument("--train-reference", action="store_true", help=f"train {', '.join(REFERENCE_ROWS)} here")
    p.add_argument(
        "--report",
        action="store_true",
        help="train nothing: report the rows measured in --work-dir for every seed; name the others as not run",
    )
    return p


def reference_rows(path: Path, budget: dict, protocol: dict) -> list[dict]:
    """Table 1's reference rows from the quality study's JSON, if it has this budget and protocol.

    Raises:
        SystemExit: The file is missing, lacks a row, or was measured with other settings.
    """
    if not path.is_file():
        raise SystemExit(f"{path} not found: run benchmarks/quality.py first, or pass --train-reference")
    report = json.loads(path.read_text())
    if report["budget"] != json.loads(json.dumps(budget)):  # as JSON holds it: tuples become lists
        raise SystemExit(f"{path} was measured with another budget; pass --train-reference to train the rows here")
    if report["protocol"] != protocol:
        changed = sorted(k for k in {*protocol, *report["protocol"]} if protocol.get(k) != report["protocol"].get(k))
        raise SystemExit(
            f"{path} was measured with another protocol (differences in {changed}); pass --train-reference"
        )
    rows = {row["name"]: row for row in report["rows"]}
    missing = [name for name in REFERENCE_ROWS if name not in rows]
    if missing:
        raise SystemExit(f"{path} has no rows {missing}; pass --train-reference")
    return [rows[name] for name in REFERENCE_ROWS]


# The rungs from the weakest baseline up, then TLAM, per regime (dense: False, sparse: True).
PLOT_ORDER = {
    False: ("asap-naive-raw", "asap-naive-norm", "asap-naive", "asap-tlam-raw-dense", "asap-tlam-dense",
            "asap-tlam-w32-dense", "asap-tlam-w64-dense"),
    True: ("asap-naive-raw-sparse", "asap-naive-norm-sparse", "asap-naive-sparse", "asap-tlam-raw-sparse",
           "asap-tlam-sparse", "asap-tlam-w32-sparse", "asap-tlam-w64-sparse",
           "asap-tlam-w96-sparse"),
}  # fmt: skip
RUNG_LABELS = {
    name: label
    for suffix in ("", "-sparse")
    for name, label in (
        (f"asap-naive-raw{suffix}", "naive, paper (raw)"),
        (f"asap-naive-norm{suffix}", "naive + norm."),
        (f"asap-naive{suffix}", "naive + norm. + presence"),
    )
} | {
    "asap-tlam-raw-dense": "TLAM, raw labels",
    "asap-tlam-raw-sparse": "TLAM, raw labels",
    "asap-tlam-dense": "TLAM",
    "asap-tlam-sparse": "TLAM",
    "asap-tlam-w32-dense": "TLAM, width 32",
    "asap-tlam-w32-sparse": "TLAM, width 32",
    "asap-tlam-w64-dense": "TLAM, width 64",
    "asap-tlam-w64-sparse": "TLAM, width 64",
    "asap-tlam-w96-sparse": "TLAM, width 96",
}


def ladder_plot(rows: list[dict], path: Path, *, fid_label: str) -> Path:
    """FID and mIoU per rung, dense and sparse: mean and 95% interval over seeds."""
    import matplotlib.pyplot as plt

    figure, axes = plt.subplots(2, 2, figsize=(10, 6.5), squeeze=False)
    for column, sparse in enumerate((False, True)):
        by_name = {row["name"]: row for row in rows}
        mine = [by_name[name] for name in PLOT_ORDER[sparse] if name in by_name]
        for line, (metric, label, scale) in enumerate((("fid", fid_label, 1), ("miou", "mIoU %", 100))):
            ax = axes[line][column]
            for x, row in enumerate(mine):
                s = row["summary"].get(metric)
                if s is None or s["mean"] is None:
                    continue
                low = s["low"] if s["low"] is not None else s["mean"]
                high = s["high"] if s["high"] is not None else s["mean"]
                colour = "tab:red" if row["merger"] == "tlam" else "tab:blue"
                ax.errorbar([x], [s["mean"] * scale], yerr=[[(s["mean"] - low) * scale], [(high - s["mean"]) * scale]],
                            marker="o", capsize=3, color=colour)  # fmt: skip
            labels = [RUNG_LABELS[row["name"]] for row in mine]
            ax.set_xticks(range(len(mine)), labels, rotation=25, ha="right", fontsize=7)
            ax.set_ylabel(f"{label}, {'lower' if metric == 'fid' else 'higher'} is better", fontsize=8)
            ax.grid(alpha=0.3)
            if line == 0:
                ax.set_title(f"{'50% sparse' if sparse else 'dense'} labels")
    figure.suptitle("Baseline ladder in ASAP-Net (blue: naive rungs, red: TLAM); mean and 95% interval over seeds")
    figure.tight_layout()
    return save_figure(figure, path)


def main(argv: list[str] | None = None) -> dict:
    args = build_parser().parse_args(argv)
    started = time.perf_counter()
    study = study_from_args(args, "quality_ladder.py")
    budget = study.budget
    results = Path(args.results_dir)
    chosen = [v for v in LADDER if args.rows is None or v.name in args.rows]
    trained = chosen + ([VARIANTS[name] for name in REFERENCE_ROWS] if args.train_reference else [])
    runs: dict[str, dict[int, dict]] = {}
    jobs = [(variant, seed) for variant in trained for seed in budget.seeds]
    not_run = []
    if args.report:  # what is measured already; a row missing any seed is left out and named
        for variant, seed in jobs:
            records = study.measured(variant, seed)
            if records is not None:
                runs.setdefault(variant.name, {})[seed] = records
        not_run = [v.name for v in trained if len(runs.get(v.name, {})) < len(budget.seeds)]
        trained = [v for v in trained if v.name not in not_run]
    else:
        for variant, seed in tqdm(jobs, desc=f"ladder ({budget.name})", unit="run", disable=args.no_progress):
            runs.setdefault(variant.name, {})[seed] = study.run(variant, seed)
    if args.rows is not None and not args.report:  # one part of the ladder: the report comes with all rows
        print(f"trained {', '.join(v.name for v in chosen)}; run without --rows for the report")
        return {"runs": runs}

    if not trained and args.train_reference:
        raise SystemExit(f"quality_ladder.py: no row is measured for every seed in {study.work_dir / budget.name}")
    rows = quality_rows(trained, runs, budget.averaged_steps())
    source = "trained here"
    if not args.train_reference:
        path = args.reference or results / f"quality_{budget.name}.json"
        rows += reference_rows(path, budget.to_dict(), study.protocol())
        source = f"read from {path.name} (same budget, seeds and protocol)"
    first = rows[0]["runs"][0]["averaged"]["set"]
    report = {
        "benchmark": "quality: the baseline ladder (ASAP-Net) on SyntheticDataset",
        "budget": budget.to_dict(),
        "protocol": study.protocol(),
        "averaged_steps": budget.averaged_steps(),
        "floor": study.floor(),
        "reference": {key: first.get(key) for key in ("segmenter_on_real_miou", "segmenter_on_real_pixel_accuracy")},
        "reference_rows": {"names": list(REFERENCE_ROWS), "source": source},
        "not_run": not_run,
        "perceptual_loss": perceptual_state(rows, budget.lambda_vgg),
        "rows": rows,
        "claims": quality_claims(rows, LADDER_CLAIMS),
        "machine": machine_info(study.device),
        "date": utc_now(),
        "wall_seconds": time.perf_counter() - started,
        "train_seconds": sum(run["train_seconds"] for row in rows for run in row["runs"]),
        "work_dir": str(Path(args.work_dir).resolve()),
    }
    stem = f"quality_ladder_{budget.name}"
    write_json(results / f"{stem}.json", report)
    title = f"Quality study: the baseline ladder — budget `{budget.name}`"
    note = f"Table 1's rows {', '.join(REFERENCE_ROWS)}: {source}."
    if not_run:
        note += f" Not run (no claims about them): {', '.join(not_run)}."
    (results / f"{stem}.md").write_text(quality_markdown(report, title=title, note=note))
    fid_label = "FID" + ("" if study.scorer.feature_extractor.standard else " (small-segmenter features)")
    ladder_plot(rows, results / f"{stem}.png", fid_label=fid_label)
    print((results / f"{stem}.md").read_text())
    print(f"wrote {results / stem}.json, .md and .png")
    return report


if __name__ == "__main__":
    main()
