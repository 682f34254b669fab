"""Turning per-seed measurements into the quality table, its claims and a markdown report.

Every number of a run is the mean over its last measured checkpoints (``Budget.averaged_steps``),
never a single checkpoint. Rows are summarised by their mean and bootstrap 95% interval, and the
paper's claims by the difference of two rows with its interval, a test and a verdict that only an
interval excluding zero gives (:mod:`examples.studies.statistics`).
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Mapping, Sequence

import numpy as np

from examples.studies.controllability import controllability_directions
from examples.studies.statistics import UNDECIDED, bootstrap_mean, compare, verdict

__all__ = [
    "summarize",
    "averaged",
    "metric_matrix",
    "row_summary",
    "compare_measurements",
    "same_seeds",
    "comparison_lines",
    "interval_cell",
    "scene_metric_names",
    "SET_METRICS",
    "CLAIM_SET_METRICS",
    "quality_rows",
    "quality_claims",
    "quality_markdown",
    "PAPER_FID",
    "METRIC_DIRECTIONS",
    "QUALITY_CLAIMS",
]

# Table 1 of the paper (Taskonomy, 256x256, standard FID): for context only, never comparable
# with numbers from the synthetic scenes or other feature extractors.
PAPER_FID = {
    "spade-semantic": 72.3,
    "spade-naive": 66.1,
    "asap-semantic": 73.8,
    "asap-naive": 74.6,
    "asap-clam-sparse": 43.8,
    "asap-tlam-sparse": 37.9,
    "asap-clam-dense": 37.1,
    "asap-tlam-dense": 30.6,
}

# Set-level metrics (one number per measurement) and the built-in per-scene ones.
SET_METRICS = ("fid", "kid_mean", "miou", "pixel_accuracy")
SCENE_METRICS = ("feature_distance", "l1", "psnr", "ssim", "segmentation_accuracy")
CLAIM_SET_METRICS = ("fid", "kid_mean", "miou")  # checked next to every per-scene metric

# Whether higher is better, per metric. A metric without an entry is still compared, but its
# verdict only says which row is higher. Add the directions of extra per-scene metrics here
# (e.g. the controllability scorer's "depth.given.rmse": False).
METRIC_DIRECTIONS: dict[str, bool] = {
    "fid": False,
    "kid_mean": False,
    "miou": True,
    "pixel_accuracy": True,
    "feature_distance": False,
    "l1": False,
    "psnr": True,
    "ssim": True,
    "segmentation_accuracy": True,
    **controllability_directions(),
}


def summarize(values: Sequence[float | None]) -> dict:
    """Mean, sample standard deviation (n - 1) and count of the finite values.

    Example:
        >>> summarize([1.0, 3.0, None])
        {'mean': 2.0, 'std': 1.4142135623730951, 'n': 2, 'values': [1.0, 3.0, None]}
    """
    finite = [float(v) for v in values if v is not None and math.isfinite(v)]
    return {
        "mean": statistics.fmean(finite) if finite else None,
        "std": statistics.stdev(finite) if len(finite) > 1 else None,
        "n": len(finite),
        "values": list(values),
    }


def averaged(evaluations: Sequence[Mapping]) -> dict:
    """The mean of several measurements of one model (its last checkpoints, or one condition).

    Args:
        evaluations: Results of :func:`~examples.studies.scoring.evaluate_generator` on the same scenes.

    Returns:
        ``{"set": {metric: mean}, "per_scene": {metric: [mean per scene]}}``: set-level numbers
        averaged over the measurements, per-scene values averaged scene by scene. A metric
        missing from one measurement is left out.

    Example:
        >>> first = {"fid": 1.0, "per_scene": {"psnr": [10.0, 12.0]}}
        >>> second = {"fid": 3.0, "per_scene": {"psnr": [14.0, 12.0]}}
        >>> averaged([first, second])
        {'set': {'fid': 2.0}, 'per_scene': {'psnr': [12.0, 12.0]}}
    """
    if not evaluations:
        raise ValueError("nothing to average: no measurements")
    numbers = [
        {k: float(v) for k, v in e.items() if isinstance(v, (int, float)) and not isinstance(v, bool)}
        for e in evaluations
    ]
    set_level = {m: statistics.fmean(n[m] for n in numbers) for m in numbers[0] if all(m in n for n in numbers)}
    shared = [
        name for name in evaluations[0].get("per_scene", {}) if all(name in e.get("per_scene", {}) for e in evaluations)
    ]
    per_scene = {
        name: np.mean([np.asarray(e["per_scene"][name], dtype=np.float64) for e in evaluations], axis=0).tolist()
        for name in shared
    }  # (scenes,) each
    return {"set": set_level, "per_scene": per_scene}


def metric_matrix(measurements: Sequence[Mapping], metric: str) -> np.ndarray | None:
    """The values of ``metric`` over models: ``(models, scenes)`` when every model has per-scene
    values, else ``(models,)`` of set-level values; None when a model lacks it.

    Args:
        measurements: :func:`averaged` results, one per model (seed).
        metric: The metric's name.
    """
    if all(metric in m["per_scene"] for m in measurements):
        return np.array([m["per_scene"][metric] for m in measurements], dtype=np.float64)  # (S, N)
    if all(m["set"].get(metric) is not None for m in measurements):
        return np.array([m["set"][metric] for m in measurements], dtype=np.float64)  # (S,)
    return None


def row_summary(measurements: Sequence[Mapping], metrics: Sequence[str]) -> dict:
    """Per metric: mean with its 95% bootstrap interval, and the seed spread.

    A per-scene metric's interval resamples seeds and scenes, a set-level one seeds only.
    """
    summary = {}
    for metric in metrics:
        matrix = metric_matrix(measurements, metric)
        if matrix is None:
            continue
        seed_means = matrix.mean(axis=1) if matrix.ndim == 2 else matrix  # (S,)
        summary[metric] = {
            **bootstrap_mean(matrix),
            "per_seed": seed_means.tolist(),
            "seed_std": float(np.std(seed_means, ddof=1)) if len(seed_means) > 1 else None,
            "level": "scene" if matrix.ndim == 2 else "set",
        }
    return summary


def scene_metric_names(measurements: Sequence[Mapping]) -> list[str]:
    """Per-scene metrics every model has: the built-in ones in their order, then the others sorted."""
    if not measurements:
        return []
    names = {n for n in measurements[0]["per_scene"] if all(n in m["per_scene"] for m in measurements)}
    return [n for n in SCENE_METRICS if n in names] + sorted(names - set(SCENE_METRICS))


def compare_measurements(
    a: Sequence[Mapping], b: Sequence[Mapping], metrics: Sequence[str], *, paired_seeds: bool = False
) -> list[dict]:
    """Row A against row B on each metric both have: difference, interval, test and verdict."""
    found = []
    for metric in metrics:
        matrix_a, matrix_b = metric_matrix(a, metric), metric_matrix(b, metric)
        if matrix_a is None or matrix_b is None or matrix_a.ndim != matrix_b.ndim:
            continue
        comparison = compare(matrix_a, matrix_b, paired_seeds=paired_seeds)
        direction = METRIC_DIRECTIONS.get(metric)
        found.append(
            {
                "metric": metric,
                "higher_is_better": direction,
                **comparison.to_dict(),
                "verdict": verdict(comparison, higher_is_better=direction),
            }
        )
    return found


def quality_rows(variants, runs: Mapping[str, Mapping[int, dict]], averaged_steps: Sequence[int]) -> list[dict]:
    """One entry per row: its description, per-seed records and the summary of each metric.

    Args:
        variants: The rows (:class:`~examples.studies.runs.Variant`), in table order.
        runs: ``{variant name: {seed: records}}`` from :func:`~examples.studies.runs.train_and_measure`.
        averaged_steps: The steps whose measurements are averaged for the table and the claims.
    """
    rows = []
    for variant in variants:
        per_seed = runs.get(variant.name, {})
        means = {
            seed: averaged([rec["evaluations"][str(step)] for step in averaged_steps])
            for seed, rec in sorted(per_seed.items())
        }
        steps = sorted({int(s) for rec in per_seed.values() for s in rec["evaluations"]})
        rows.append(
            {
                "name": variant.name,
                "backbone": variant.backbone,
                "method": variant.method,
                "generator": variant.generator,
                "merger": variant.merger,
                "sparsity": variant.sparsity,
                "labels": variant.label_marks(),
                "paper_fid": PAPER_FID.get(variant.name),
                "averaged_steps": list(averaged_steps),
                "summary": row_summary(list(means.values()), [*SET_METRICS, *scene_metric_names(list(means.values()))]),
                "curve": [
                    {
                        "step": step,
                        "fid": summarize(
                            [per_seed[s]["evaluations"].get(str(step), {}).get("fid") for s in sorted(per_seed)]
                        ),
                    }
                    for step in steps
                ],
                "runs": [
                    {
                        "seed": seed,
                        "train_seconds": rec["train_seconds"],
                        "perceptual_loss": rec.get("perceptual_loss"),
                        "averaged": means[seed],
                        # every measurement along training, without its per-scene lists (those stay
                        # in the run's records; the averaged ones above are what the claims use)
                        "evaluations": {
                            step: {k: v for k, v in e.items() if k != "per_scene"}
                            for step, e in rec["evaluations"].items()
                        },
                    }
                    for seed, rec in sorted(per_seed.items())
                ],
            }
        )
    return rows


# The paper's claims as (text, row A, row B): "A is better than B".
QUALITY_CLAIMS = (
    ("TLAM beats CLAM (dense, ASAP)", "asap-tlam-dense", "asap-clam-dense"),
    ("TLAM beats CLAM with 50% sparse labels", "asap-tlam-sparse", "asap-clam-sparse"),
    ("CLAM beats naive concatenation (dense, ASAP)", "asap-clam-dense", "asap-naive"),
    ("TLAM beats naive concatenation (dense, ASAP)", "asap-tlam-dense", "asap-naive"),
    ("multi-label (TLAM) beats semantics only, ASAP", "asap-tlam-dense", "asap-semantic"),
    ("multi-label (naive) beats semantics only, ASAP", "asap-naive", "asap-semantic"),
    ("multi-label (naive) beats semantics only, SPADE", "spade-naive", "spade-semantic"),
    # "50% sparse TLAM comes close to dense": how much dense beats sparse, next to the same for CLAM
    ("dense labels beat 50% sparse labels (TLAM)", "asap-tlam-dense", "asap-tlam-sparse"),
    ("dense labels beat 50% sparse labels (CLAM)", "asap-clam-dense", "asap-clam-sparse"),
)


def quality_claims(rows: Sequence[dict], claims: Sequence[tuple[str, str, str]] = QUALITY_CLAIMS) -> list[dict]:
    """The paper's Table 1 claims (or ``claims``: ``(text, row A, row B)``), each on every metric both rows have.

    Every check gives the difference of means (A - B, over seeds and scenes), its bootstrap 95%
    interval, a test's p-value and a verdict: "holds" or "reversed" only when the interval
    excludes zero, otherwise "undecided at this budget". Claims whose rows were not run are left out.
    """
    by_name = {row["name"]: row for row in rows}
    checked = []
    for text, name_a, name_b in claims:
        if name_a not in by_name or name_b not in by_name:
            continue
        a = [run["averaged"] for run in by_name[name_a]["runs"]]
        b = [run["averaged"] for run in by_name[name_b]["runs"]]
        if not a or not b:
            continue
        metrics = [*CLAIM_SET_METRICS, *scene_metric_names(a + b)]
        paired = same_seeds(by_name[name_a]["runs"], by_name[name_b]["runs"])
        checks = compare_measurements(a, b, metrics, paired_seeds=paired)
        checked.append({"claim": text, "a": name_a, "b": name_b, "checks": checks})
    return checked


def same_seeds(runs_a: Sequence[Mapping], runs_b: Sequence[Mapping]) -> bool:
    """Whether two rows were trained with the same seeds, in the same order.

    A study draws each run's batch order and training masks from its seed, so rows with the
    same seeds are paired by design (see :mod:`examples.studies.statistics`).
    """
    return [run["seed"] for run in runs_a] == [run["seed"] for run in runs_b]


def _number(value: float | None, scale: float = 1.0) -> str:
    return "n/a" if value is None else f"{value * scale:.3g}"


def interval_cell(summary: dict | None, scale: float = 1.0) -> str:
    """``mean [low, high]``."""
    if summary is None or summary["mean"] is None:
        return "n/a"
    text = _number(summary["mean"], scale)
    if summary["low"] is not None:
        text += f" [{_number(summary['low'], scale)}, {_number(summary['high'], scale)}]"
    return text


def _p(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.2g}"


def comparison_lines(claims: Sequence[Mapping], *, a_label: str = "A", b_label: str = "B") -> list[str]:
    """A markdown table of claims: difference A - B, its 95% interval, the test's p-value, the verdict."""
    lines = [
        f"| claim | metric | {a_label} − {b_label} | 95% interval | p | test | verdict |",
        "|---|---|---|---|---|---|---|",
    ]
    for claim in claims:
        for check in claim["checks"]:
            arrow = {True: " ↑", False: " ↓", None: ""}[check["higher_is_better"]]
            interval = "n/a" if check["low"] is None else f"[{_number(check['low'])}, {_number(check['high'])}]"
            verdict_text = f"**{check['verdict']}**" if check["verdict"] != UNDECIDED else check["verdict"]
            lines.append(
                f"| {claim['claim']} | {check['metric']}{arrow} | {_number(check['difference'])} | {interval} "
                f"| {_p(check['p_value'])} | {check['test']} | {verdict_text} |"
            )
    return lines


def _percent(value: float | None) -> str:
    return "n/a" if value is None else f"{100 * value:.1f}%"


def quality_markdown(report: Mapping, *, title: str | None = None, note: str | None = None) -> str:
    """The quality report as markdown: settings, table with intervals, claims, machine.

    ``title`` replaces the Table 1 heading; ``note`` is a paragraph after the settings.
    """
    budget, protocol, floor = report["budget"], report["protocol"], report["floor"]
    steps = ", ".join(map(str, report["averaged_steps"]))
    lines = [
        f"# {title or 'Quality study (paper Table 1) — budget `' + budget['name'] + '`'}",
        "",
        f"Synthetic scenes at {budget['resolution']}x{budget['resolution']}, {budget['steps']} training steps "
        f"of batch {budget['batch_size']} per run, seeds {', '.join(map(str, budget['seeds']))}; every run is "
        f"measured on {protocol['eval_samples']} held-out scenes ({protocol['eval_set']}). Sparse rows are "
        "trained and measured with 50% region sparsity (fixed evaluation masks). Every setting is the same "
        "for every row and was fixed before the runs.",
        "",
        f"- Every number of a run is its mean over the measurements at steps {steps} (the last "
        f"{len(report['averaged_steps'])} checkpoints), never one checkpoint.",
        f"- Generator losses: adversarial, feature matching, pixel L1 (weight {budget['lambda_l1']:g}); "
        f"perceptual (VGG19) loss: {report['perceptual_loss']}.",
        f"- FID/KID features: {protocol['feature_extractor']} (comparable to published FIDs: "
        f"**{'yes' if protocol['comparable_to_published'] else 'no'}**). KID: {protocol['kid']}.",
        f"- Real-vs-real floor: FID {_number(floor['fid'])}, KID×10³ {_number(floor['kid_mean'], 1000)} between "
        f"the evaluation scenes' real images and {floor['num_samples']} other real scenes ({floor['other_set']}): "
        "what a perfect generator would score here.",
        f"- Segmentation score: {protocol['segmenter']}; on the real held-out images it reaches "
        f"{_percent(report['reference'].get('segmenter_on_real_miou'))} mIoU and "
        f"{_percent(report['reference'].get('segmenter_on_real_pixel_accuracy'))} pixel accuracy.",
        *([f"- {note}"] if note else []),
        "",
        "| Backbone | Method | S | E | C | D | N | FID ↓ | KID ×10³ ↓ | feature distance ↓ | mIoU % ↑ "
        "| PSNR ↑ | L1 ×100 ↓ | SSIM ↑ | paper FID |",
        "|---|---|:-:|:-:|:-:|:-:|:-:|---|---|---|---|---|---|---|---|",
        "| real | real vs real (floor) | | | | | | "
        f"{_number(floor['fid'])} | {_number(floor['kid_mean'], 1000)} | | | | | | |",
    ]
    for row in report["rows"]:
        s = row["summary"]
        cells = [
            interval_cell(s.get("fid")),
            interval_cell(s.get("kid_mean"), 1000),
            interval_cell(s.get("feature_distance")),
            interval_cell(s.get("miou"), 100),
            interval_cell(s.get("psnr")),
            interval_cell(s.get("l1"), 100),
            interval_cell(s.get("ssim")),
            f"{row['paper_fid']}" if row["paper_fid"] is not None else "",
        ]
        lines.append("| " + " | ".join([row["backbone"], row["method"], *row["labels"], *cells]) + " |")
    lines += [
        "",
        "Mean [bootstrap 95% interval]: seeds resampled for FID, KID and mIoU (set-level numbers), seeds and "
        "scenes for the per-scene metrics. Feature distance: L2 distance between the FID features of the "
        "generated and the real image of the same scene. ■ dense label, △ 50% sparse, blank unused. The "
        "paper's FIDs (Taskonomy, 256x256, Inception features) are context, not a target.",
        "",
        "## Claims",
        "",
        "Difference A − B of the row means; A is the first row named in the claim. The interval is a "
        "two-level bootstrap: scenes resampled jointly for both rows since they are the same scenes, and "
        "seeds resampled jointly too when both rows were trained with the same seeds (the same batches and "
        "training masks, so seed i of A is paired with seed i of B), within each row otherwise. The p-value "
        "is a t-test over the per-seed means (paired when the seeds are), since the training seed is the "
        "unit of replication. "
        f'A claim "holds" or is "reversed" only when the interval excludes zero; otherwise it is "{UNDECIDED}".',
        "",
    ]
    if report["claims"]:
        lines += comparison_lines(report["claims"])
    else:
        lines.append("- none of the paper's claims can be checked with only these rows")
    machine = report["machine"]
    lines += [
        "",
        "## Run",
        "",
        f"- Wall time: {report['wall_seconds'] / 60:.1f} min in this invocation; training time summed over runs "
        f"(all invocations): {report['train_seconds'] / 60:.1f} min.",
        f"- Machine: {machine['cpu']} ({machine['logical_cpus']} logical CPUs, {machine['torch_threads']} threads), "
        f"device {machine['device']}{' (' + machine['cuda_device'] + ')' if machine['cuda_device'] else ''}, "
        f"load average {machine['load_average_1_5_15min']}.",
        f"- Versions: Python {machine['python']}, PyTorch {machine['torch']}, NumPy {machine['numpy']}, "
        f"label-merge {machine['label_merge']}. Date {report['date']}.",
        "",
    ]
    return "\n".join(lines)
