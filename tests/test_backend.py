"""Backend choice: explicit argument > LABEL_MERGE_BACKEND > auto-detection."""

import pytest
import torch

from label_merge.backend import ENV_VAR, resolve_backend

CPU = torch.device("cpu")


def test_auto_on_cpu_is_the_reference(monkeypatch):
    monkeypatch.delenv(ENV_VAR, raising=False)
    assert resolve_backend("auto", CPU, torch.float32) == "torch"
    monkeypatch.setenv("TRITON_INTERPRET", "1")  # the interpreter is never chosen automatically
    assert resolve_backend("auto", CPU, torch.float32) == "torch"


def test_environment_variable_beats_auto_and_explicit_beats_it(monkeypatch):
    monkeypatch.setenv(ENV_VAR, "triton")
    monkeypatch.delenv("TRITON_INTERPRET", raising=False)
    with pytest.raises(ValueError, match=f"{ENV_VAR}=triton"):
        resolve_backend("auto", CPU, torch.float32)
    assert resolve_backend("torch", CPU, torch.float32) == "torch"
    monkeypatch.setenv(ENV_VAR, "Torch ")
    assert resolve_backend("auto", CPU, torch.float32) == "torch"


def test_invalid_environment_variable(monkeypatch):
    monkeypatch.setenv(ENV_VAR, "cuda")
    with pytest.raises(ValueError, match=f"{ENV_VAR} must be one of"):
        resolve_backend("auto", CPU, torch.float32)


def test_explicit_triton_on_plain_cpu_lists_the_reason(monkeypatch):
    monkeypatch.delenv(ENV_VAR, raising=False)
    monkeypatch.delenv("TRITON_INTERPRET", raising=False)
    with pytest.raises(ValueError, match=r"backend 'triton' \(backend argument\) cannot run: .*on the CPU"):
        resolve_backend("triton", CPU, torch.float32)


def test_unknown_backend():
    with pytest.raises(ValueError, match="backend must be one of"):
        resolve_backend("fast", CPU, torch.float32)
