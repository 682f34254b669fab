"""``python -m label_merge``: the report, the self-check and its verdict."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import label_merge
from label_merge import _selfcheck

ROOT = Path(__file__).resolve().parent.parent
TINY = {"dim": 16, "depth": 1, "heads": 1, "mlp_ratio": 2.0}


def test_python_m_label_merge_reports_and_passes(tmp_path):
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    env.pop("TRITON_INTERPRET", None)  # as a user runs it: the command turns the interpreter on itself
    done = subprocess.run(
        [sys.executable, "-m", "label_merge"], cwd=tmp_path, env=env, capture_output=True, text=True, check=False
    )
    assert done.returncode == 0, done.stdout + done.stderr
    lines = done.stdout.splitlines()
    assert lines[0].startswith(f"label-merge {label_merge.__version__} ")
    assert f"torch {torch.__version__}" in lines[1]
    assert "  torch    usable on every device: the PyTorch reference" in lines
    assert any(line.startswith("  triton   ") for line in lines)
    assert any(line.startswith("  reference: error ") and line.endswith(": ok") for line in lines)
    fused = [line for line in lines if line.startswith("  fused path, ")]
    assert len(fused) == 1
    if torch.cuda.is_available() or _selfcheck._version("triton") != "not installed":
        assert fused[0].endswith(": ok"), fused  # the fused path ran and agreed with the reference
    assert lines[-1] == "Self-check passed."


@pytest.mark.skipif(_selfcheck._version("triton") == "not installed", reason="needs Triton")
def test_parity_check_catches_a_wrong_fused_path(monkeypatch):
    """The verdict can fail: a fused path that is off by 0.1% is reported as failing."""
    if not torch.cuda.is_available() and os.environ.get("TRITON_INTERPRET") != "1":
        pytest.skip("the kernels were not set up for the interpreter in this process")
    import label_merge._triton

    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    right = _selfcheck.parity_check(device, "test", TINY)
    assert right.passed and right.fused_error > 0  # the fused path ran: not bitwise the reference

    original = label_merge._triton.encode_tokens
    monkeypatch.setattr(label_merge._triton, "encode_tokens", lambda *a, **k: original(*a, **k) * 1.001)
    wrong = _selfcheck.parity_check(device, "test", TINY)
    assert not wrong.passed and wrong.fused_error > wrong.tolerance


def test_main_exits_1_when_a_check_fails(monkeypatch, capsys):
    failing = _selfcheck.ParityResult("test", {"dim": 1}, reference_error=1e-7, fused_error=1e-2, tolerance=1e-5)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(_selfcheck, "_interpreter_parity", lambda: failing)
    assert _selfcheck.main([]) == 1
    output = capsys.readouterr().out
    assert "fused path, test: error 1.0e-02 (reference 1.0e-07, limit 1.0e-05): FAILED" in output
    assert output.splitlines()[-1] == "Self-check FAILED."


def test_a_fused_path_that_cannot_run_is_not_a_failure(monkeypatch, capsys):
    skipped = _selfcheck.ParityResult("test", {"dim": 1}, reference_error=1e-7, skipped="Triton is not installed")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(_selfcheck, "_interpreter_parity", lambda: skipped)
    assert _selfcheck.main([]) == 0
    assert "fused path, test: not run: Triton is not installed" in capsys.readouterr().out


@pytest.mark.skipif(_selfcheck._version("triton") == "not installed", reason="needs Triton")
def test_fused_path_reasons_per_dtype():
    """What the report says for each dtype comes from the backend's own checks (the CUDA lines)."""
    if not torch.cuda.is_available() and os.environ.get("TRITON_INTERPRET") != "1":
        pytest.skip("the kernels were not set up for the interpreter in this process")
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    reasons = _selfcheck.fused_path_reasons(device)
    assert list(reasons) == ["float32", "bfloat16", "float16"]
    assert reasons["float32"] == []  # the paper's TLAM runs fused in float32
    assert all(isinstance(r, str) and r for rs in reasons.values() for r in rs)


def test_a_crashed_interpreter_check_fails(monkeypatch, capsys):
    """The child process's error output reaches the user and the command exits 1."""
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(_selfcheck.subprocess, "run", lambda *a, **k: subprocess.CompletedProcess(a, 3, "", "Boom\n"))
    assert _selfcheck.main([]) == 1
    captured = capsys.readouterr()
    assert "Boom" in captured.err
    assert "not run: the check crashed (exit code 3" in captured.out
    assert "reference: error" not in captured.out
    assert captured.out.splitlines()[-1] == "Self-check FAILED."


def run_report(env_changes, *args):
    env = {k: v for k, v in os.environ.items() if k not in ("TRITON_INTERPRET", "LABEL_MERGE_BACKEND")}
    env.update(PYTHONPATH=str(ROOT), **env_changes)
    return subprocess.run(
        [sys.executable, "-m", "label_merge", *args], cwd=ROOT, env=env, capture_output=True, text=True, check=False
    )


@pytest.mark.skipif(_selfcheck._version("triton") == "not installed", reason="needs Triton")
@pytest.mark.skipif(torch.cuda.is_available(), reason="describes a machine without CUDA")
def test_report_follows_label_merge_backend_in_the_interpreter():
    # It used to say "auto runs torch here" while a paper-sized TLAM ran triton.
    done = run_report({"LABEL_MERGE_BACKEND": "triton", "TRITON_INTERPRET": "1"}, "--no-check")
    assert done.returncode == 0, done.stdout + done.stderr
    lines = done.stdout.splitlines()
    assert "  auto     runs triton here (LABEL_MERGE_BACKEND=triton)" in lines
    assert any(line.startswith("  triton   on CPU tensors: in Triton's interpreter") for line in lines)


def test_report_says_that_a_misspelt_backend_breaks_every_merger(monkeypatch, capsys):
    # It used to say "auto runs torch here" while every forward raised.
    monkeypatch.setenv("LABEL_MERGE_BACKEND", "bogus")
    assert _selfcheck.main(["--no-check"]) == 1
    lines = capsys.readouterr().out.splitlines()
    assert (
        "  auto     raises ValueError for every input here: "
        "LABEL_MERGE_BACKEND must be one of ('auto', 'torch', 'triton'), got 'bogus'"
    ) in lines
    assert lines[-1] == "Every merger with backend='auto' raises here: correct or unset LABEL_MERGE_BACKEND."
    with pytest.raises(ValueError, match="bogus"):  # what the report says is what a forward does
        _selfcheck.seeded_merger(torch.device("cpu"), TINY)(*_selfcheck._inputs(torch.device("cpu")))


def test_report_names_the_backend_asked_for(monkeypatch, capsys):
    monkeypatch.setenv("LABEL_MERGE_BACKEND", "torch")
    assert _selfcheck.main(["--no-check"]) == 0
    assert "  auto     runs torch here (LABEL_MERGE_BACKEND=torch)" in capsys.readouterr().out.splitlines()


def test_report_lists_mixed_choices_per_device():
    choices = {
        "CUDA": {"float32": "triton", "bfloat16": "triton", "float16": "torch"},
        "CPU": {"float32": "raises ValueError: cannot run", "bfloat16": "torch", "float16": "torch"},
    }
    assert _selfcheck._auto_lines(choices) == [
        "  auto     on CUDA tensors: triton for float32, bfloat16; torch for float16",
        "  auto     on CPU tensors: raises ValueError for float32 (cannot run); torch for bfloat16, float16",
    ]
