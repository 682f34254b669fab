"""Checkpoints: atomic writes, exact round trips, clear errors; the resumable sampler."""

import itertools
import json
import os
import random
import struct
import subprocess
import sys

import numpy as np
import pytest
import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file

from examples.training.checkpoint import (
    CheckpointError,
    find_resumable_checkpoint,
    latest_checkpoint,
    load_checkpoint,
    remove_stale_temporaries,
    save_checkpoint,
    set_aside,
    verify_checkpoint,
)
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


def tensor_byte_range(path, key):
    """The file offsets ``[start, stop)`` of one tensor's bytes in a safetensors file."""
    with open(path, "rb") as f:
        (header_length,) = struct.unpack("<Q", f.read(8))
        header = json.loads(f.read(header_length))
    start, stop = header[key]["data_offsets"]
    return 8 + header_length + start, 8 + header_length + stop


def damage(path, key, offset=0):
    """Flip the bits of a few bytes of tensor ``key``, as a bad disk or copy would."""
    start, stop = tensor_byte_range(path, key)
    data = bytearray(path.read_bytes())
    for i in range(start + offset, min(start + offset + 3, stop)):
        data[i] ^= 0xFF
    path.write_bytes(bytes(data))


def test_a_damaged_tensor_is_named_on_load(tmp_path):
    model, optimizer = model_and_optimizer()
    train(model, optimizer, 1)
    path = save_checkpoint(tmp_path, 1, modules={"m": model}, optimizers={"o": optimizer}, config={"lr": 1e-3})
    assert verify_checkpoint(path).step == 1
    damage(path, "model/m/1.weight_orig", offset=4)
    for read in (
        lambda: load_checkpoint(path, modules={"m": model_and_optimizer()[0]}),
        lambda: verify_checkpoint(path),
    ):
        with pytest.raises(
            CheckpointError, match=r"step_00000001\.safetensors: tensor 'model/m/1\.weight_orig' does not match"
        ):
            read()


def test_damaged_metadata_is_refused(tmp_path):
    model, _ = model_and_optimizer()
    path = save_checkpoint(tmp_path, 1, modules={"m": model}, optimizers={}, config={"lr": 0.001})
    data = path.read_bytes()
    assert data.count(b"0.001") == 1
    path.write_bytes(data.replace(b"0.001", b"0.003"))  # still valid JSON: only the digest can tell
    with pytest.raises(CheckpointError, match=r"step_00000001\.safetensors: the metadata .* does not match its digest"):
        load_checkpoint(path, modules={"m": model})


def test_a_checkpoint_without_digests_loads_with_a_warning(tmp_path):
    model, optimizer = model_and_optimizer()
    path = save_checkpoint(tmp_path, 2, modules={"m": model}, optimizers={"o": optimizer}, config={})
    with safe_open(str(path), framework="pt") as f:
        meta = dict(f.metadata())
    meta["format"] = "label-merge-checkpoint/1"  # as written before digests existed
    del meta["digests"], meta["metadata_digest"]
    save_file(load_file(str(path)), str(path), metadata=meta)
    fresh = model_and_optimizer(seed=5)[0]
    with pytest.warns(UserWarning, match="without digests"):
        assert load_checkpoint(path, modules={"m": fresh}).step == 2
    assert all(torch.equal(a, b) for a, b in zip(model.state_dict().values(), fresh.state_dict().values(), strict=True))


def test_the_newest_good_checkpoint_is_found_past_damaged_ones(tmp_path):
    model, optimizer = model_and_optimizer()
    paths = [
        save_checkpoint(tmp_path, step, modules={"m": model}, optimizers={"o": optimizer}, config={}, keep=None)
        for step in (1, 2, 3, 4)
    ]
    damage(paths[3], "model/m/0.bias")
    paths[2].write_bytes(paths[2].read_bytes()[:100])  # truncated
    found, skipped = find_resumable_checkpoint(tmp_path)
    assert found.path == paths[1] and found.step == 2
    assert [p for p, _ in skipped] == [paths[3], paths[2]]
    assert "'model/m/0.bias' does not match" in skipped[0][1]
    assert all(p.is_file() for p in paths)  # nothing deleted
    for path in paths[:2]:
        damage(path, "model/m/0.weight")
    found, skipped = find_resumable_checkpoint(tmp_path)
    assert found is None and len(skipped) == 4
    assert find_resumable_checkpoint(tmp_path / "nothing") == (None, [])


def test_a_set_aside_checkpoint_is_kept_and_never_pruned_or_resumed(tmp_path):
    model, optimizer = model_and_optimizer()
    bad = save_checkpoint(tmp_path, 3, modules={"m": model}, optimizers={}, config={})
    kept = set_aside(bad)
    assert kept.name == "step_00000003.safetensors.corrupt" and kept.is_file() and not bad.exists()
    bad = save_checkpoint(tmp_path, 3, modules={"m": model}, optimizers={}, config={})
    assert set_aside(bad).name == "step_00000003.safetensors.corrupt.1"
    for step in (4, 5):
        save_checkpoint(tmp_path, step, modules={"m": model}, optimizers={}, config={}, keep=1)
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        "step_00000003.safetensors.corrupt",
        "step_00000003.safetensors.corrupt.1",
        "step_00000005.safetensors",
    ]
    assert latest_checkpoint(tmp_path).name == "step_00000005.safetensors"


def test_stale_temporaries_of_dead_writers_are_removed(tmp_path):
    finished = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    dead_pid, live_pid = int(finished.stdout), os.getppid()  # the parent (pytest's launcher) runs on
    dead = tmp_path / f".step_00000007.safetensors.{dead_pid}.tmp"
    live = tmp_path / f".step_00000008.safetensors.{live_pid}.tmp"
    others = [tmp_path / "step_00000006.safetensors", tmp_path / ".other.123.tmp", tmp_path / "notes.txt"]
    for path in [dead, live, *others]:
        path.write_bytes(b"x")
    assert remove_stale_temporaries(tmp_path) == [dead]
    assert not dead.exists() and live.exists() and all(p.exists() for p in others)
    assert remove_stale_temporaries(tmp_path / "missing") == []
