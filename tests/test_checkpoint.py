"""Checkpoints: atomic writes, exact round trips, clear errors; the resumable sampler."""

import itertools
import random

import numpy as np
import pytest
import torch
from safetensors.torch import save_file

from examples.training.checkpoint import CheckpointError, latest_checkpoint, load_checkpoint, save_checkpoint
from examples.training.data import ResumableSampler


def model_and_optimizer(seed=0):
    torch.manual_seed(seed)
    model = torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.utils.spectral_norm(torch.nn.Linear(4, 2)))
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3, betas=(0.0, 0.999))
    return model, optimizer


def train(model, optimizer, steps):
    for _ in range(steps):
        x = torch.randn(5, 3)  # draws from the global RNG, so RNG restore matters
        loss = model(x).square().mean()
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()


def test_resume_continues_exactly(tmp_path):
    model, optimizer = model_and_optimizer()
    train(model, optimizer, 3)
    save_checkpoint(tmp_path, 3, modules={"m": model}, optimizers={"o": optimizer}, config={"lr": 1e-3})
    random.random(), np.random.rand()
    train(model, optimizer, 4)
    straight = [p.detach().clone() for p in model.parameters()]
    expected_draws = (random.random(), float(np.random.rand()))

    resumed, resumed_optimizer = model_and_optimizer(seed=123)  # different initial weights
    info = load_checkpoint(latest_checkpoint(tmp_path), modules={"m": resumed}, optimizers={"o": resumed_optimizer})
    assert info.step == 3 and info.config == {"lr": 1e-3}
    random.random(), np.random.rand()
    train(resumed, resumed_optimizer, 4)
    for a, b in zip(straight, resumed.parameters(), strict=True):
        assert torch.equal(a, b)
    assert (random.random(), float(np.random.rand())) == expected_draws
    assert resumed_optimizer.param_groups[0]["betas"][1] == 0.999


def test_keep_only_the_newest(tmp_path):
    model, optimizer = model_and_optimizer()
    for step in (1, 2, 3, 4):
        save_checkpoint(tmp_path, step, modules={"m": model}, optimizers={"o": optimizer}, config={}, keep=2)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["step_00000003.safetensors", "step_00000004.safetensors"]
    assert latest_checkpoint(tmp_path).name == "step_00000004.safetensors"
    assert latest_checkpoint(tmp_path / "nothing") is None


def test_a_crash_mid_write_leaves_the_last_good_checkpoint(tmp_path, monkeypatch):
    model, optimizer = model_and_optimizer()
    save_checkpoint(tmp_path, 1, modules={"m": model}, optimizers={"o": optimizer}, config={})
    import examples.training.checkpoint as ckpt

    def dies_half_way(tensors, filename, metadata=None):
        with open(filename, "wb") as f:
            f.write(b"partial")
        raise KeyboardInterrupt  # the process is killed while writing

    monkeypatch.setattr(ckpt, "save_file", dies_half_way)
    with pytest.raises(KeyboardInterrupt):
        save_checkpoint(tmp_path, 2, modules={"m": model}, optimizers={"o": optimizer}, config={})
    assert [p.name for p in tmp_path.iterdir()] == ["step_00000001.safetensors"]
    load_checkpoint(latest_checkpoint(tmp_path), modules={"m": model_and_optimizer()[0]})


def test_errors_name_the_file(tmp_path):
    model, _ = model_and_optimizer()
    with pytest.raises(FileNotFoundError, match="missing.safetensors"):
        load_checkpoint(tmp_path / "missing.safetensors", modules={"m": model})
    corrupt = tmp_path / "step_00000001.safetensors"
    corrupt.write_bytes(b"\x00" * 64)
    with pytest.raises(CheckpointError, match="step_00000001"):
        load_checkpoint(corrupt, modules={"m": model})
    foreign = tmp_path / "foreign.safetensors"
    save_file({"x": torch.zeros(1)}, str(foreign))
    with pytest.raises(CheckpointError, match="not a label-merge checkpoint"):
        load_checkpoint(foreign, modules={"m": model})
    good = save_checkpoint(tmp_path, 5, modules={"m": model}, optimizers={}, config={})
    with pytest.raises(CheckpointError, match="do not fit"):
        load_checkpoint(good, modules={"m": torch.nn.Linear(3, 3)})
    with pytest.raises(CheckpointError, match="no weights for 'generator'"):
        load_checkpoint(good, modules={"generator": model})


def test_sampler_resumes_where_it_stopped_and_shards_ranks():
    straight = list(itertools.islice(iter(ResumableSampler(10, seed=3)), 27))
    resumed = list(itertools.islice(iter(ResumableSampler(10, seed=3, start=13)), 14))
    assert resumed == straight[13:]
    assert sorted(straight[:10]) == list(range(10)) and straight[:10] != straight[10:20]
    ranks = [list(itertools.islice(iter(ResumableSampler(10, seed=3, rank=r, world_size=2)), 5)) for r in (0, 1)]
    assert sorted(ranks[0] + ranks[1]) == list(range(10))
