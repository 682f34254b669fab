"""Recompute the claims of committed study reports from their raw JSON, and rewrite their tables.

A report's JSON keeps every per-seed, per-scene number, so a change in how claims are tested
(for example the test over seeds of :mod:`examples.studies.statistics`) re-renders the merger
probe, the quality study and the sensitivity study without training anything again.

Usage (from the repository root)::

    python benchmarks/rerender_reports.py                       # every report under benchmarks/results
    python benchmarks/rerender_reports.py benchmarks/results/merger_probe.json
"""

from __future__ import annotations

import sys
from pathlib import Path

if __package__ in (None, ""):  # run as a script: make the repository importable
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import argparse  # noqa: E402
import json  # noqa: E402

from benchmarks import merger_probe, sensitivity  # noqa: E402
from examples.studies.environment import write_json  # noqa: E402
from examples.studies.report import quality_claims, quality_markdown  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent


def rerender_probe(report: dict) -> str:
    report["claims"] = merger_probe.probe_claims(report["rows"], merger_probe.CLAIMS)
    return merger_probe.probe_markdown(report)


def rerender_quality(report: dict) -> str:
    report["claims"] = quality_claims(report["rows"])
    return quality_markdown(report)


def rerender_sensitivity(report: dict) -> str:
    models = report["models"]
    for key in ("sparsity_claims", "removal_claims"):
        report[key] = [sensitivity._comparison(models, c["claim"], c["a"], c["b"]) for c in report[key]]
    labels = models[0]["labels"]
    report["own_label_metrics"] = sensitivity.own_label_metrics(report["removal_claims"], labels)
    removal = f"sparsity={report['removal_sparsity']:g}"
    report["consistency_matrix"] = sensitivity.consistency_matrix(models, labels, removal)
    report["findings"] = sensitivity.findings(report["sparsity"], report["removal"], report["removal_claims"])
    return sensitivity.sensitivity_markdown(report)


# The "benchmark" field's first word names the kind of report.
RENDERERS = {"merger": rerender_probe, "quality:": rerender_quality, "sensitivity:": rerender_sensitivity}


def rerender(path: Path) -> bool:
    """Rewrite ``path`` and its ``.md`` beside it; False when it is not a report this script knows."""
    report = json.loads(path.read_text())
    kind = str(report.get("benchmark", "")).split(" ")[0]
    has_runs = "rows" in report or "models" in report  # a report with its per-seed numbers
    if kind not in RENDERERS or not has_runs:
        return False
    markdown = RENDERERS[kind](report)
    write_json(path, report)
    path.with_suffix(".md").write_text(markdown)
    return True


def main(argv: list[str] | None = None) -> list[Path]:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("reports", nargs="*", type=Path, help="report JSON files (default: all under benchmarks/results)")
    args = p.parse_args(argv)
    paths = args.reports or sorted((ROOT / "benchmarks" / "results").glob("*.json"))
    done = [path for path in paths if rerender(path)]
    for path in done:
        print(f"re-rendered {path}")
    return done


if __name__ == "__main__":
    main()
