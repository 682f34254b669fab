"""Label sensitivity study: FID against label sparsity (paper Fig. 6b) and with each label removed (Fig. 6c).

A TLAM + ASAP-Net model trained with 50% region sparsity is measured on the held-out synthetic
scenes at evaluation sparsities 0% to 70% and, with the other labels dense
(``--removal-sparsity``), with each label removed entirely (and with none removed, the
reference). The models are the quality study's ``asap-tlam-sparse``
runs of the same budget (or ``--variant``'s: another merger trained at 50% sparsity; trained
here if they do not exist yet, one per seed), each measured at
the checkpoints the quality study averages over, or ``--checkpoint`` files. Every degraded
condition is compared with its reference (dense labels; no label removed) on the same models and
scenes: difference, bootstrap 95% interval, paired test, verdict. Writes under ``--results-dir``:

- ``sensitivity_<budget>.md``: per-condition means with intervals, and the comparisons;
- ``sensitivity_<budget>.json``: per-model numbers, summaries, comparisons, settings, hardware, versions;
- ``sensitivity_<budget>_sparsity.png`` (Fig. 6b) and ``sensitivity_<budget>_removal.png`` (Fig. 6c).

Usage (from the repository root)::

    python benchmarks/sensitivity.py                        # --budget cpu-2h, reusing or training the runs
    python benchmarks/sensitivity.py --budget smoke
    python benchmarks/sensitivity.py --checkpoint runs/asap_tlam/checkpoints/step_00001500.safetensors --budget cpu-2h

Measurements are cached per model; running the command again only computes what is missing.
"""

from __future__ import annotations

import sys
from pathlib import Path

if __package__ in (None, ""):  # run as a script: make the repository importable
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import argparse  # noqa: E402
import hashlib  # noqa: E402
import time  # noqa: E402
from itertools import pairwise  # noqa: E402

import numpy as np  # noqa: E402
from scipy.stats import spearmanr  # noqa: E402

from examples.metrics.controllability import HIGHER_IS_BETTER  # noqa: E402
from examples.studies.budgets import BUDGETS  # noqa: E402
from examples.studies.conditions import LabelCondition  # noqa: E402
from examples.studies.controllability import SCENE_FIGURES  # noqa: E402
from examples.studies.environment import (  # noqa: E402
    machine_info,
    read_json,
    utc_now,
    write_json,
)
from examples.studies.plots import plot_removal, plot_sparsity  # noqa: E402
from examples.studies.report import (  # noqa: E402
    CLAIM_SET_METRICS,
    SET_METRICS,
    averaged,
    compare_measurements,
    comparison_lines,
    interval_cell,
    metric_matrix,
    row_summary,
    scene_metric_names,
)
from examples.studies.runs import VARIANTS  # noqa: E402
from examples.studies.statistics import UNDECIDED, compare, verdict  # noqa: E402
from examples.studies.study import EVAL_SPARSITY_SEED, Study, study_from_args  # noqa: E402
from examples.training.builders import image_size, restore_generator  # noqa: E402
from examples.training.checkpoint import load_checkpoint_config  # noqa: E402
from examples.training.config import RunConfig  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
SPARSITIES = (0.0, 0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7)
VARIANT = VARIANTS["asap-tlam-sparse"]
SPARSE_VARIANTS = [name for name, v in VARIANTS.items() if v.generator == "asap" and v.sparsity == 0.5]
MODEL_KIND = {name: f"{VARIANTS[name].method} + ASAP-Net (`{name}`)" for name in SPARSE_VARIANTS}


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.ArgumentDefaultsHelpFormatter
    )
    p.add_argument("--budget", default="cpu-2h", help=f"one of {sorted(BUDGETS)}, or a number of training steps")
    p.add_argument("--checkpoint", nargs="+", help="checkpoints to measure (default: the budget's runs of --variant)")
    p.add_argument(
        "--variant",
        default=VARIANT.name,
        choices=SPARSE_VARIANTS,
        help="the study rows whose runs are measured (ASAP-Net trained at 50%% sparsity)",
    )
    p.add_argument("--name", help="file name stem of the results (default: sensitivity_<budget>[_<variant>])")
    p.add_argument("--seeds", nargs="+", type=int, help="seeds of the runs to train or reuse (default: the budget's)")
    p.add_argument("--sparsities", nargs="+", type=float, default=list(SPARSITIES), help="evaluation sparsities")
    p.add_argument(
        "--removal-sparsity",
        type=float,
        default=0.0,
        help="sparsity of the other labels when one is removed (0: the consistency matrix compares the same pixels)",
    )
    p.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N")
    p.add_argument("--threads", type=int, help="CPU threads (default: the budget's)")
    p.add_argument("--work-dir", default=str(ROOT / "runs" / "studies"), help="where runs are trained")
    p.add_argument(
        "--cache-dir",
        help="rendered scenes and trained segmenters (default: $LABEL_MERGE_CACHE or ~/.cache/label-merge)",
    )
    p.add_argument("--results-dir", default=str(ROOT / "benchmarks" / "results"), help="where the JSON and plots go")
    p.add_argument(
        "--fid-weights",
        help="FID Inception weights; default $LABEL_MERGE_FID_WEIGHTS, else the small segmenter's features",
    )
    p.add_argument(
        "--vgg-weights", help="VGG19 weights for the perceptual loss when training (default $LABEL_MERGE_VGG19)"
    )
    p.add_argument("--no-progress", action="store_true", help="no progress bars")
    return p


def conditions(labels: list[str], sparsities, removal_sparsity: float) -> dict[str, LabelCondition]:
    """Every condition measured, by key: one per sparsity, one per removed label, and the reference."""
    out = {f"sparsity={s:g}": LabelCondition(sparsity=s, seed=EVAL_SPARSITY_SEED) for s in sparsities}
    out[f"sparsity={removal_sparsity:g}"] = LabelCondition(sparsity=removal_sparsity, seed=EVAL_SPARSITY_SEED)
    for name in labels:
        out[f"sparsity={removal_sparsity:g},without={name}"] = LabelCondition(
            sparsity=removal_sparsity, seed=EVAL_SPARSITY_SEED, drop_labels=(name,)
        )
    return out


def models(study: Study, args) -> list[tuple[str, list[Path], Path]]:
    """``(name, checkpoints, cache file)`` of every model to measure; trains missing runs.

    A run of the study is measured at the checkpoints its results average over
    (``budget.averaged_steps()``); a ``--checkpoint`` file is measured alone.
    """
    if args.checkpoint:
        found = []
        for value in args.checkpoint:
            path = Path(value)
            if not path.is_file():
                raise FileNotFoundError(f"checkpoint not found: {path}")
            key = hashlib.sha1(str(path.resolve()).encode()).hexdigest()[:12]
            cache = study.work_dir / study.budget.name / "sensitivity-external" / f"{path.stem}-{key}.json"
            found.append((str(path), [path], cache))
        return found
    variant = VARIANTS[args.variant]
    found = []
    for seed in study.budget.seeds:
        study.run(variant, seed)
        found.append(
            (
                f"{variant.name}/seed{seed}",
                study.averaged_checkpoints(variant, seed),
                study.run_dir(variant, seed) / "study_sensitivity.json",
            )
        )
    return found


def measure_model(study: Study, name: str, checkpoints: list[Path], cache: Path, args) -> dict:
    """All conditions for one model at each of its checkpoints, averaged over the checkpoints.

    Measurements are cached per checkpoint, condition and protocol.
    """
    size = (study.budget.resolution, study.budget.resolution)
    records = read_json(cache) or {}
    if records.get("protocol") != study.protocol():
        records = {"protocol": study.protocol(), "checkpoints": {}}
    wanted: dict[str, LabelCondition] = {}
    for checkpoint in checkpoints:
        run = RunConfig.from_dict(load_checkpoint_config(checkpoint))
        if run.data.dataset != "synthetic" or image_size(run.data) != size:
            raise ValueError(
                f"{checkpoint} generates {run.data.dataset} images of {image_size(run.data)}, but budget "
                f"{study.budget.name!r} measures on synthetic scenes of {size}; pass a matching --budget"
            )
        generator, _, specs = restore_generator(checkpoint, device=study.device)
        identity = {"size": checkpoint.stat().st_size, "mtime_ns": checkpoint.stat().st_mtime_ns}
        entry = records["checkpoints"].get(str(checkpoint.resolve()))
        if not entry or entry.get("identity") != identity:
            entry = records["checkpoints"][str(checkpoint.resolve())] = {"identity": identity, "results": {}}
        wanted = conditions(list(specs), args.sparsities, args.removal_sparsity)
        for key, condition in wanted.items():
            if key not in entry["results"]:
                entry["results"][key] = study.measure(generator, condition, desc=f"{name}: {condition.describe()}")
                write_json(cache, records)
    per_checkpoint = [records["checkpoints"][str(c.resolve())]["results"] for c in checkpoints]
    return {
        "name": name,
        "checkpoints": [str(c) for c in checkpoints],
        "steps": [int(c.stem.split("_")[1]) for c in checkpoints],
        "labels": list(specs),
        "averaged": {key: averaged([results[key] for results in per_checkpoint]) for key in wanted},
    }


def _summary(per_model: list[dict], key: str) -> dict:
    measurements = [model["averaged"][key] for model in per_model]
    return row_summary(measurements, [*SET_METRICS, *scene_metric_names(measurements)])


def _comparison(per_model: list[dict], text: str, reference: str, key: str) -> dict:
    """``reference`` (all labels, or dense) against condition ``key``, on the same models."""
    a = [model["averaged"][reference] for model in per_model]
    b = [model["averaged"][key] for model in per_model]
    metrics = [*CLAIM_SET_METRICS, *scene_metric_names(a + b)]
    return {"claim": text, "a": reference, "b": key, "checks": compare_measurements(a, b, metrics, paired_seeds=True)}


def main(argv: list[str] | None = None) -> dict:
    args = build_parser().parse_args(argv)
    try:
        for s in [*args.sparsities, args.removal_sparsity]:
            LabelCondition(sparsity=s)  # checks the range
    except ValueError as err:
        raise SystemExit(f"sensitivity.py: {err}") from None
    started = time.perf_counter()
    study = study_from_args(args, "sensitivity.py")
    budget = study.budget
    per_model = [measure_model(study, *model, args) for model in models(study, args)]
    labels = per_model[0]["labels"]
    if any(model["labels"] != labels for model in per_model):
        raise SystemExit("sensitivity.py: the models condition on different labels; measure them separately")
    removal = f"sparsity={args.removal_sparsity:g}"
    sparsities = sorted(set(args.sparsities))
    sparsity_points = [{"sparsity": s, "summary": _summary(per_model, f"sparsity={s:g}")} for s in sparsities]
    removal_bars = [{"removed": None, "summary": _summary(per_model, removal)}] + [
        {"removed": name, "summary": _summary(per_model, f"{removal},without={name}")} for name in labels
    ]
    dense = "sparsity=0"
    sparsity_claims = [
        _comparison(per_model, f"dense labels beat {100 * s:g}% sparsity", dense, f"sparsity={s:g}")
        for s in sparsities
        if s > 0 and 0.0 in sparsities
    ]
    removal_claims = [
        _comparison(per_model, f"removing {name} hurts (at {100 * args.removal_sparsity:g}%)", removal, key)
        for name in labels
        for key in [f"{removal},without={name}"]
    ]
    report = {
        "benchmark": "sensitivity: paper Fig. 6b (sparsity) and Fig. 6c (removed labels) on SyntheticDataset",
        "budget": budget.to_dict(),
        "protocol": study.protocol(),
        "variant": None if args.checkpoint else args.variant,
        "averaged_steps": per_model[0]["steps"],
        "removal_sparsity": args.removal_sparsity,
        "models": per_model,
        "sparsity": sparsity_points,
        "removal": removal_bars,
        "sparsity_claims": sparsity_claims,
        "removal_claims": removal_claims,
        "own_label_metrics": own_label_metrics(removal_claims, labels),
        "consistency_matrix": consistency_matrix(per_model, labels, removal),
        "findings": findings(sparsity_points, removal_bars, removal_claims),
        "machine": machine_info(study.device),
        "date": utc_now(),
        "wall_seconds": time.perf_counter() - started,
    }
    results = Path(args.results_dir)
    stem = args.name or f"sensitivity_{budget.name}" + ("" if args.variant == VARIANT.name else f"_{args.variant}")
    write_json(results / f"{stem}.json", report)
    (results / f"{stem}.md").write_text(sensitivity_markdown(report))
    fid_label = "FID" + ("" if study.scorer.feature_extractor.standard else " (small-segmenter features)")
    trained = training_sparsity(per_model[0]["checkpoints"][0])
    plot_sparsity(
        [{"sparsity": p["sparsity"], "fid": p["summary"]["fid"]} for p in sparsity_points],
        results / f"{stem}_sparsity.png",
        title=f"Label sparsity ({budget.name})",
        fid_label=fid_label,
        trained_at=trained,
    )
    plot_removal(
        [{"removed": b["removed"], "fid": b["summary"]["fid"]} for b in removal_bars],
        results / f"{stem}_removal.png",
        title=f"Removing one label at {100 * args.removal_sparsity:g}% sparsity ({budget.name})",
        fid_label=fid_label,
    )
    print((results / f"{stem}.md").read_text())
    print(f"wrote {results / stem}.json, .md, _sparsity.png and _removal.png")
    return report


def training_sparsity(checkpoint: str) -> float:
    """The region sparsity a checkpoint was trained with."""
    return float(load_checkpoint_config(checkpoint)["train"]["sparsity"])


def own_label_metrics(removal_claims: list[dict], labels: list[str]) -> dict[str, list[dict]]:
    """For each removed label, the checks of the per-scene metrics about that label itself.

    Per-label metrics (e.g. the controllability scorer's, plugged in with
    :func:`examples.studies.study.extra_scene_scorers`) are named ``<label>.<...>``; this picks
    removing depth against "depth.*", so "removing depth hurts depth consistency most" can be
    read off. Empty while no such scorer is plugged in. Checks that compare no pixels are left
    out: a removed label has no given pixels, and a dense reference has no missing ones, so at
    removal sparsity 0 this is empty and the consistency matrix (given against missing, on the
    same pixels) answers the question instead.
    """
    found = {}
    for name, claim in zip(labels, removal_claims, strict=True):
        checks = [
            check
            for check in claim["checks"]
            if check["metric"].startswith(f"{name}.") and check["difference"] is not None
        ]
        if checks:
            found[name] = checks
    return found


def consistency_matrix(per_model: list[dict], labels: list[str], reference: str) -> dict:
    """Which label's consistency drops when each label is removed: a (removed x scored) matrix.

    For removed label ``L`` and scored label ``M``, the change of ``M``'s headline figure
    (:data:`~examples.studies.controllability.SCENE_FIGURES`, first entry) between the reference
    condition and the one without ``L``, on the same models, scenes and pixels, oriented so that
    a positive ``degradation`` is worse. ``M`` is scored where it was given in both conditions;
    ``L`` itself where it was given in the reference and is missing without it. Those are the
    same pixels only when the reference is dense (``--removal-sparsity 0``); otherwise the matrix
    is left empty.

    Returns:
        ``{"figures": {M: figure}, "cells": {L: {M: {...comparison, "degradation", "relative"}}},
        "own_label_worst": {L: bool}}``, or ``{}`` without controllability metrics or a dense reference.
    """
    if reference != "sparsity=0":
        return {}
    figures = {m: SCENE_FIGURES[m][0] for m in labels if m in SCENE_FIGURES}
    base = [model["averaged"][reference] for model in per_model]
    cells: dict[str, dict] = {}
    for removed in labels:
        without = [model["averaged"][f"{reference},without={removed}"] for model in per_model]
        row = {}
        for scored, figure in figures.items():
            before = metric_matrix(base, f"{scored}.given.{figure}")
            after = metric_matrix(without, f"{scored}.{'missing' if scored == removed else 'given'}.{figure}")
            if before is None or after is None:
                continue
            higher_is_better = HIGHER_IS_BETTER[figure]
            worse, better = (before, after) if higher_is_better else (after, before)
            comparison = compare(worse, better, paired_seeds=True)  # positive: removing hurts
            scale = abs(float(np.nanmean(before)))
            row[scored] = {
                "figure": figure,
                **comparison.to_dict(),
                "degradation": comparison.difference,
                "relative": comparison.difference / scale if comparison.difference is not None and scale else None,
                "verdict": verdict(comparison, higher_is_better=True),
            }
        cells[removed] = row
    if not any(cells.values()):
        return {}
    own_worst = {}
    for removed, row in cells.items():
        relative = {m: c["relative"] for m, c in row.items() if c["relative"] is not None}
        if removed in relative:
            own_worst[removed] = max(relative, key=relative.get) == removed
    return {"figures": figures, "cells": cells, "own_label_worst": own_worst}


def findings(sparsity_points: list[dict], removal_bars: list[dict], removal_claims: list[dict]) -> dict:
    """What the numbers say about the paper's claims (no thresholds beyond the paper's own)."""
    points = [(p["sparsity"], p["summary"]["fid"]["mean"]) for p in sparsity_points if "fid" in p["summary"]]
    xs, ys = [x for x, _ in points], [y for _, y in points]
    steady = all(b > a for a, b in pairwise(ys)) if len(ys) > 1 else None
    rho = float(spearmanr(xs, ys).statistic) if len(ys) > 2 else None
    reference = removal_bars[0]["summary"]["fid"]["mean"]
    ratios = {
        bar["removed"]: bar["summary"]["fid"]["mean"] / reference if reference else None for bar in removal_bars[1:]
    }
    verdicts = {
        claim["b"].split("without=")[1]: {check["metric"]: check["verdict"] for check in claim["checks"]}
        for claim in removal_claims
    }
    return {
        "mean_fid_rises_at_every_sparsity_step": steady,
        "spearman_sparsity_vs_mean_fid": rho,
        "fid_ratio_removed_over_all_present": ratios,
        "removal_verdicts": verdicts,
        "paper": "FID degrades steadily from 10% to 70%; removing any label worsens FID by a factor of at least 1.3",
    }


def _general(claims: list[dict]) -> list[dict]:
    """The claims without per-label metrics (``<label>.<...>``), which get their own section."""
    return [{**claim, "checks": [c for c in claim["checks"] if "." not in c["metric"]]} for claim in claims]


def sensitivity_markdown(report: dict) -> str:
    """The sensitivity report as markdown: per-condition means with intervals, and the comparisons."""
    protocol = report["protocol"]
    lines = [
        f"# Label sensitivity (paper Fig. 6b, 6c) — budget `{report['budget']['name']}`",
        "",
        f"{len(report['models'])} {MODEL_KIND.get(report.get('variant'), 'TLAM + ASAP-Net')} model(s) trained at "
        "50% sparsity, each measured at steps "
        f"{', '.join(map(str, report['averaged_steps']))} and averaged over them, on {protocol['eval_samples']} "
        f"held-out scenes. FID features: {protocol['feature_extractor']}.",
        "",
        "| condition | FID ↓ | feature distance ↓ | mIoU % ↑ | PSNR ↑ | L1 ×100 ↓ |",
        "|---|---|---|---|---|---|",
    ]
    entries = [(f"sparsity {100 * p['sparsity']:g}%", p["summary"]) for p in report["sparsity"]]
    entries += [
        (f"{100 * report['removal_sparsity']:g}%, without {b['removed'] or 'none'}", b["summary"])
        for b in report["removal"]
    ]
    for text, s in entries:
        cells = [
            interval_cell(s.get("fid")),
            interval_cell(s.get("feature_distance")),
            interval_cell(s.get("miou"), 100),
        ]
        cells += [interval_cell(s.get("psnr")), interval_cell(s.get("l1"), 100)]
        lines.append(f"| {text} | " + " | ".join(cells) + " |")
    lines += [
        "",
        "Mean [bootstrap 95% interval] over models (and scenes, for per-scene metrics).",
        "",
        "## Comparisons",
        "",
        "A is the reference (dense, or no label removed), B the degraded condition, on the same models and "
        f'scenes (seeds and scenes resampled jointly). "holds": the degradation hurts; "{UNDECIDED}": the '
        "interval includes zero.",
        "",
        *comparison_lines(_general(report["sparsity_claims"] + report["removal_claims"]), a_label="reference"),
        "",
    ]
    if report.get("consistency_matrix"):
        lines += consistency_matrix_lines(report["consistency_matrix"])
    if report["own_label_metrics"]:
        lines += ["## Removing a label, on that label's own metrics", ""]
        lines += comparison_lines(
            [
                {"claim": f"removing {name} hurts", "checks": checks}
                for name, checks in report["own_label_metrics"].items()
            ]
        )
        lines.append("")
    return "\n".join(lines)


def consistency_matrix_lines(matrix: dict) -> list[str]:
    """The (removed x scored) consistency matrix as a markdown table."""
    scored = list(matrix["figures"])
    lines = [
        "## Which label's consistency drops when a label is removed",
        "",
        "Rows: the label removed (dense reference, so every cell compares the same pixels); columns: the label "
        "re-estimated from the generated image, with its figure. Each cell: relative degradation of that figure "
        "(positive = worse) and the 95% interval of the absolute change; **bold** where the interval excludes zero.",
        "",
        "| removed | " + " | ".join(f"{m} ({matrix['figures'][m]})" for m in scored) + " |",
        "| --- | " + " | ".join("---" for _ in scored) + " |",
    ]
    for removed, row in matrix["cells"].items():
        cells = []
        for m in scored:
            c = row.get(m)
            if c is None or c["relative"] is None:
                cells.append("")
                continue
            text = f"{100 * c['relative']:+.1f}% [{c['low']:+.3g}, {c['high']:+.3g}]"
            cells.append(f"**{text}**" if c["verdict"] != UNDECIDED else text)
        lines.append(f"| {removed} | " + " | ".join(cells) + " |")
    worst = matrix.get("own_label_worst", {})
    if worst:
        held = [k for k, v in worst.items() if v]
        lines += ["", f"Removing a label hurts that label's own consistency most for: {', '.join(held) or 'none'}."]
    return [*lines, ""]


if __name__ == "__main__":
    main()
