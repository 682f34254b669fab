"""The documentation site builds in strict mode, and the docstring examples run."""

import doctest
import os
import subprocess
import sys
from pathlib import Path

import pytest

import label_merge.blocks
import label_merge.label_dicts
import label_merge.labels
import label_merge.sparsity
import label_merge.viz

ROOT = Path(__file__).resolve().parent.parent


@pytest.mark.parametrize(
    "module", [label_merge.blocks, label_merge.label_dicts, label_merge.labels, label_merge.sparsity, label_merge.viz]
)
def test_docstring_examples(module):
    result = doctest.testmod(module)
    assert result.attempted > 0 and result.failed == 0


def test_mkdocs_strict_build(tmp_path):
    done = subprocess.run(
        [sys.executable, "-m", "mkdocs", "build", "--strict", "--site-dir", str(tmp_path / "site")],
        cwd=ROOT,
        capture_output=True,
        text=True,
        env={**os.environ, "NO_MKDOCS_2_WARNING": "1"},
    )
    assert done.returncode == 0, done.stdout + done.stderr


def test_every_picture_in_docs_images_is_shown():
    """No stale copies: each picture under docs/images is shown by a page or the README."""
    pages = [ROOT / "README.md", *(ROOT / "docs").rglob("*.md")]
    text = "\n".join(page.read_text() for page in pages)
    unshown = [p.name for p in (ROOT / "docs" / "images").iterdir() if f"images/{p.name}" not in text]
    assert not unshown, unshown


def test_superseded_reports_are_archived_and_named_so():
    results = ROOT / "benchmarks" / "results"
    assert not [p.name for p in results.iterdir() if p.is_file() and "cpu-hour" in p.name]
    archived = {p.name for p in (results / "archive").iterdir()}
    assert {"quality_cpu-hour.md", "sensitivity_cpu-hour.json", "README.md"} <= archived
    assert (results / "archive" / "README.md").read_text().startswith("# Superseded results")
    studies = (ROOT / "docs" / "studies.md").read_text()
    assert "superseded" in studies and "`benchmarks/results/archive/`" in studies
