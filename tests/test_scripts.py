"""Every command-line script starts as its docs say: from the repository root, no PYTHONPATH."""

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent

SCRIPTS = [
    "examples/train_asap_tlam.py",
    "examples/train_controlnet_tlam.py",
    "examples/generate.py",
    "examples/evaluate.py",
    "examples/train_label_estimator.py",
    "examples/edit.py",
    "examples/visualize.py",
    "examples/studio.py",
    "benchmarks/bench_merger.py",
    "benchmarks/bench_synthetic.py",
    "benchmarks/cuda_check.py",
    "benchmarks/kernel_resources.py",
    "benchmarks/label_balance.py",
    "benchmarks/label_guidance.py",
    "benchmarks/merger_probe.py",
    "benchmarks/quality.py",
    "benchmarks/sensitivity.py",
    "benchmarks/studio_latency.py",
    "benchmarks/synthetic_predictability.py",
    "docs/scripts/render_synthetic_figure.py",
    "docs/scripts/render_controllability_figure.py",
    "docs/scripts/add_grid_headings.py",
    "benchmarks/merger_choice.py",
    "benchmarks/gpu_session.py",
    "benchmarks/rerender_reports.py",
    "benchmarks/bench_train_step.py",
    "benchmarks/main_job_time.py",
    "benchmarks/quality_ladder.py",
    "benchmarks/sensitivity_mergers.py",
]


def test_every_script_is_listed():
    found = {
        str(path.relative_to(ROOT))
        for folder in ("examples", "benchmarks", "docs/scripts")
        for path in (ROOT / folder).glob("*.py")
        if 'if __name__ == "__main__":' in path.read_text()
    }
    assert found == set(SCRIPTS)


@pytest.mark.parametrize("command", [[s] for s in SCRIPTS] + [["-m", "examples.datasets.prepare"]], ids=str)
def test_help(command):
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    done = subprocess.run(
        [sys.executable, *command, "--help"], cwd=ROOT, capture_output=True, text=True, env=env, timeout=120
    )
    assert done.returncode == 0, done.stderr
    assert "usage:" in done.stdout
