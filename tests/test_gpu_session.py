"""The prepared GPU session: its plan, its time boxes and a smoke run of every part on the CPU."""

import json
import subprocess
import sys

import pytest

from benchmarks import gpu_session


def test_dry_run_prints_the_parts_in_priority_order_without_a_gpu():
    done = subprocess.run(
        [sys.executable, "benchmarks/gpu_session.py", "--dry-run"], capture_output=True, text=True, check=True
    )
    order = [line.split()[1] for line in done.stdout.splitlines() if line.startswith("  - ")]
    assert order == ["parity", "probe", "bench", "asap", "cuda_check"]
    # one 10-minute call: the whole budget and every time box fit in it
    assert gpu_session.build_parser().parse_args([]).budget <= 600
    assert all(part.seconds <= 600 for part in gpu_session.PARTS)


def test_parts_beyond_the_budget_are_recorded_as_not_run(tmp_path):
    out = tmp_path / "session.json"
    gpu_session.main(["--smoke", "--budget", "1", "--out", str(out)])
    saved = json.loads(out.read_text())
    assert list(saved["parts"]) == ["parity", "probe", "bench", "asap", "cuda_check"]
    assert all(p["status"] == "not run: no time left" for p in saved["parts"].values())


def test_a_failing_part_does_not_stop_the_others(tmp_path, monkeypatch):
    def broken(session, box, entry):
        raise RuntimeError("out of memory")

    parts = tuple(
        gpu_session.Part(p.name, p.what, p.seconds, broken if p.name == "probe" else p.run)
        for p in gpu_session.PARTS
        if p.name in ("probe", "cuda_check")
    )
    monkeypatch.setattr(gpu_session, "PARTS", parts)
    out = tmp_path / "session.json"
    gpu_session.main(["--smoke", "--out", str(out)])
    saved = json.loads(out.read_text())["parts"]
    assert saved["probe"]["status"] == "error" and "out of memory" in saved["probe"]["error"]
    assert saved["cuda_check"]["status"] == "skipped: needs CUDA"


@pytest.mark.slow
def test_smoke_runs_every_part_on_the_cpu(tmp_path):
    out = tmp_path / "session.json"
    report = gpu_session.main(["--smoke", "--out", str(out)])
    saved = json.loads(out.read_text())
    assert saved["parts"].keys() == report["parts"].keys()
    parts = saved["parts"]
    # parity runs the kernels in Triton's interpreter here (the test suite sets TRITON_INTERPRET=1)
    assert parts["parity"]["status"] == "pass" and len(parts["parity"]["cases"]) == 4
    probe = parts["probe"]
    assert probe["status"] == "done" and probe["seeds_completed"] == 2
    assert set(probe["rows"]) == set(gpu_session.PROBE_ROWS)
    assert {c["claim"] for c in probe["claims"]} >= {"TLAM > naive (dense)", "TLAM > CLAM (50% sparse)"}
    assert all(c["test"] == "paired t over seeds" for c in probe["claims"])
    assert parts["bench"]["status"] == "done" and parts["bench"]["payload"]
    assert parts["asap"]["steps_timed"] == 3 and parts["asap"]["median_step_seconds"] > 0
    assert parts["cuda_check"]["status"] == "skipped: needs CUDA"
