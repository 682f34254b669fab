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
