"""Turning per-seed measurements into the quality table, its claims and a markdown report."""

from __future__ import annotations

import math
import statistics
from collections.abc import Mapping, Sequence
from itertools import pairwise

__all__ = ["summarize", "quality_rows", "quality_claims", "quality_markdown", "PAPER_FID"]

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

METRICS = ("fid", "kid_mean", "miou", "pixel_accuracy", "psnr", "ssim")


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


def quality_rows(variants, runs: Mapping[str, Mapping[int, dict]], final_step: int) -> list[dict]:
    """One entry per row: its description, per-seed records and the summary of each metric.

    Args:
        variants: The rows (:class:`~examples.studies.runs.Variant`), in table order.
        runs: ``{variant name: {seed: records}}`` from :func:`~examples.studies.runs.train_and_measure`.
        final_step: The step whose measurements fill the table.
    """
    rows = []
    for variant in variants:
        per_seed = runs.get(variant.name, {})
        finals = {seed: rec["evaluations"].get(str(final_step), {}) for seed, rec in per_seed.items()}
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
                "summary": {m: summarize([finals[s].get(m) for s in sorted(finals)]) for m in METRICS},
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
                        "final": finals[seed],
                        "evaluations": rec["evaluations"],
                    }
                    for seed, rec in sorted(per_seed.items())
                ],
            }
        )
    return rows


def _fid(rows: Mapping[str, dict], name: str) -> tuple[float, float] | None:
    row = rows.get(name)
    if row is None or row["summary"]["fid"]["mean"] is None:
        return None
    s = row["summary"]["fid"]
    return s["mean"], s["std"]


def _ordering(rows: Mapping[str, dict], names: Sequence[str]) -> dict | None:
    """Whether mean FID increases along ``names`` (best first), and whether seeds resolve it."""
    values = [_fid(rows, name) for name in names]
    if any(v is None for v in values):
        return None
    holds = all(a[0] < b[0] for a, b in pairwise(values))
    # A step is resolved when the means differ by more than the larger of the two std's.
    # (None with a single seed: the spread is unknown.)
    if any(v[1] is None for v in values):
        resolved = None
    else:
        resolved = all(abs(b[0] - a[0]) > max(a[1], b[1]) for a, b in pairwise(values))
    return {"order": list(names), "fid": [v[0] for v in values], "holds": holds, "beyond_seed_spread": resolved}


def quality_claims(rows: Sequence[dict]) -> list[dict]:
    """The paper's Table 1 claims, checked against the measured mean FIDs (lower is better).

    Each claim says whether it holds for the means and whether every step of the ordering is
    larger than the seed-to-seed spread (one sample standard deviation); claims whose rows were
    not run are left out.
    """
    by_name = {row["name"]: row for row in rows}
    claims = []
    checks = [
        ("multi-conditioning (TLAM) beats semantics-only, ASAP", ["asap-tlam-dense", "asap-semantic"]),
        ("multi-conditioning (TLAM) beats semantics-only SPADE", ["asap-tlam-dense", "spade-semantic"]),
        (
            "TLAM beats CLAM beats naive concatenation (dense, ASAP)",
            ["asap-tlam-dense", "asap-clam-dense", "asap-naive"],
        ),
        ("TLAM beats CLAM (dense, ASAP)", ["asap-tlam-dense", "asap-clam-dense"]),
        ("TLAM beats CLAM with 50% sparse labels", ["asap-tlam-sparse", "asap-clam-sparse"]),
        ("dense labels beat 50% sparse labels (TLAM)", ["asap-tlam-dense", "asap-tlam-sparse"]),
    ]
    for text, names in checks:
        result = _ordering(by_name, names)
        if result is not None:
            claims.append({"claim": text, **result})
    sparse, dense = _fid(by_name, "asap-tlam-sparse"), _fid(by_name, "asap-tlam-dense")
    if sparse and dense and dense[0] > 0:
        claims.append(
            {
                "claim": "50% sparse labels come close to dense (TLAM): FID ratio sparse / dense",
                "ratio": sparse[0] / dense[0],
                "paper_ratio": PAPER_FID["asap-tlam-sparse"] / PAPER_FID["asap-tlam-dense"],
            }
        )
    return claims


def _cell(summary: dict, scale: float = 1.0, digits: int = 2) -> str:
    if summary["mean"] is None:
        return "n/a"
    text = f"{summary['mean'] * scale:.{digits}f}"
    if summary["std"] is not None:
        text += f" ± {summary['std'] * scale:.{digits}f}"
    return text


def _percent(value: float | None) -> str:
    return "n/a" if value is None else f"{100 * value:.1f}%"


def quality_markdown(report: Mapping) -> str:
    """The quality report as markdown: settings, table, claims, machine."""
    budget, protocol = report["budget"], report["protocol"]
    lines = [
        f"# Quality study (paper Table 1) — budget `{budget['name']}`",
        "",
        f"Synthetic scenes at {budget['resolution']}x{budget['resolution']}, {budget['steps']} training steps "
        f"of batch {budget['batch_size']} per run, seeds {', '.join(map(str, budget['seeds']))}; every run is "
        f"measured on {protocol['eval_samples']} held-out scenes ({protocol['eval_set']}). Sparse rows are "
        "trained and measured with 50% region sparsity (fixed evaluation masks).",
        "",
        f"- FID/KID features: {protocol['feature_extractor']} (comparable to published FIDs: "
        f"**{'yes' if protocol['comparable_to_published'] else 'no'}**).",
        f"- Segmentation score: {protocol['segmenter']}; on the real held-out images it reaches "
        f"{_percent(report['reference'].get('segmenter_on_real_miou'))} mIoU and "
        f"{_percent(report['reference'].get('segmenter_on_real_pixel_accuracy'))} pixel accuracy "
        "(what a perfect generator would score).",
        f"- Perceptual (VGG19) loss: {report['perceptual_loss']}.",
        "",
        "| Backbone | Method | S | E | C | D | N | FID ↓ | KID ×10³ ↓ | mIoU % ↑ | Acc % ↑ | PSNR ↑ | SSIM ↑ "
        "| paper FID |",
        "|---|---|:-:|:-:|:-:|:-:|:-:|---|---|---|---|---|---|---|",
    ]
    for row in report["rows"]:
        s = row["summary"]
        lines.append(
            "| "
            + " | ".join(
                [
                    row["backbone"],
                    row["method"],
                    *row["labels"],
                    _cell(s["fid"]),
                    _cell(s["kid_mean"], 1000),
                    _cell(s["miou"], 100, 1),
                    _cell(s["pixel_accuracy"], 100, 1),
                    _cell(s["psnr"]),
                    _cell(s["ssim"], 1, 3),
                    f"{row['paper_fid']}" if row["paper_fid"] is not None else "",
                ]
            )
            + " |"
        )
    lines += [
        "",
        "Mean ± sample standard deviation over seeds. ■ dense label, △ 50% sparse, blank unused. "
        "The paper's FIDs (Taskonomy, 256x256, Inception features) are context, not a target.",
        "",
        "## Claims",
        "",
    ]
    if not report["claims"]:
        lines.append("- none of the paper's claims can be checked with only these rows")
    for claim in report["claims"]:
        if "ratio" in claim:
            lines.append(f"- {claim['claim']}: {claim['ratio']:.2f} (paper: {claim['paper_ratio']:.2f})")
        else:
            verdict = "holds" if claim["holds"] else "does not hold"
            spread = {True: ", beyond the seed spread", False: ", within the seed spread", None: " (one seed)"}
            fids = ", ".join(f"{name} {fid:.4g}" for name, fid in zip(claim["order"], claim["fid"], strict=True))
            lines.append(f"- {claim['claim']}: **{verdict}**{spread[claim['beyond_seed_spread']]} (FID {fids})")
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
