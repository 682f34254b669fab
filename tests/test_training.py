"""The training example: every merger x generator steps, losses fall, resume is exact, DDP, CLI."""

import os
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import pytest
import torch
from safetensors import safe_open

from examples.training.config import PRESETS, DataConfig, ModelConfig, OptimConfig, RunConfig, TrainConfig
from examples.training.loop import Trainer

ROOT = Path(__file__).resolve().parent.parent


def tiny_config(tmp_path, **train) -> RunConfig:
    """A run small enough for a test: 32x32 scenes, narrow networks."""
    return RunConfig(
        data=DataConfig(resolution=32, train_samples=8, val_samples=2),
        model=ModelConfig(
            dim=8,
            depth=1,
            heads=2,
            asap_lr_width=8,
            asap_lr_max_width=16,
            asap_lr_depth=1,
            asap_hr_width=8,
            asap_hr_depth=2,
            spade_ngf=4,
            ndf=8,
            n_layers_d=3,
        ),
        optim=OptimConfig(lambda_vgg=0.0),
        train=TrainConfig(
            steps=1,
            batch_size=2,
            out=str(tmp_path / "run"),
            log_every=1,
            sample_every=1000,
            checkpoint_every=1000,
            **train,
        ),
    )


def parameters(module):
    return [p.detach().clone() for p in module.parameters()]


@pytest.mark.parametrize("generator", ["asap", "spade"])
@pytest.mark.parametrize("merger", ["tlam", "clam", "naive", "semantic"])
def test_one_generator_and_one_discriminator_step(tmp_path, merger, generator):
    config = tiny_config(tmp_path)
    config = replace(config, model=replace(config.model, merger=merger, generator=generator))
    trainer = Trainer(config, progress=False)
    before_g, before_d = parameters(trainer.generator), parameters(trainer.discriminator)
    batch = next(iter(trainer._loader()))
    losses = trainer.train_step(batch)
    assert set(losses) == {"g_gan", "g_feat", "d_fake", "d_real"}
    assert all(torch.isfinite(torch.tensor(v)) for v in losses.values())
    assert any(not torch.equal(a, b) for a, b in zip(before_g, trainer.generator.parameters(), strict=True))
    assert any(not torch.equal(a, b) for a, b in zip(before_d, trainer.discriminator.parameters(), strict=True))
    if merger in ("tlam", "clam"):  # the merger learns through the generator
        assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in trainer.generator.merger.parameters())


def test_losses_fall_on_a_fixed_batch(tmp_path):
    config = tiny_config(tmp_path)
    config = replace(
        config,
        optim=replace(config.optim, lambda_l1=10.0, lr_g=1e-3),
        train=replace(config.train, sparsity=0.5),
    )
    trainer = Trainer(config, progress=False)
    batch = next(iter(trainer._loader()))
    history = [trainer.train_step(batch) for _ in range(40)]
    first = {k: sum(h[k] for h in history[:5]) / 5 for k in history[0]}
    last = {k: sum(h[k] for h in history[-5:]) / 5 for k in history[0]}
    assert last["g_l1"] < 0.8 * first["g_l1"]
    assert last["d_fake"] + last["d_real"] < first["d_fake"] + first["d_real"]


def test_resume_continues_exactly(tmp_path):
    straight = Trainer(
        replace(tiny_config(tmp_path / "a"), train=replace(tiny_config(tmp_path / "a").train, steps=4)), progress=False
    )
    straight.train()

    first = tiny_config(tmp_path / "b")
    first = replace(first, train=replace(first.train, steps=2, sparsity=0.3))
    straight_sparse = Trainer(
        replace(first, train=replace(first.train, steps=4, out=str(tmp_path / "c"))), progress=False
    )
    straight_sparse.train()
    Trainer(first, progress=False).train()
    checkpoint = Path(first.train.out) / "checkpoints" / "step_00000002.safetensors"
    resumed = Trainer(replace(first, train=replace(first.train, steps=4)), resume=checkpoint, progress=False)
    assert resumed.step == 2
    resumed.train()
    for a, b in zip(straight_sparse.generator.parameters(), resumed.generator.parameters(), strict=True):
        assert torch.equal(a, b)
    for a, b in zip(straight_sparse.discriminator.parameters(), resumed.discriminator.parameters(), strict=True):
        assert torch.equal(a, b)
    log = (Path(first.train.out) / "metrics.jsonl").read_text().splitlines()
    assert [int(line.split('"step": ')[1].split(",")[0]) for line in log] == [1, 2, 3, 4]
    # The random number generators end in the same states too, so any randomness a later
    # version draws from them (augmentation, say) resumes exactly as well.
    straight_rng = saved_rng_states(Path(straight_sparse.out) / "checkpoints" / "step_00000004.safetensors")
    resumed_rng = saved_rng_states(Path(first.train.out) / "checkpoints" / "step_00000004.safetensors")
    assert straight_rng.keys() == resumed_rng.keys() >= {"rng/torch", "rng_python", "rng_numpy"}
    for key, value in straight_rng.items():
        assert torch.equal(value, resumed_rng[key]) if isinstance(value, torch.Tensor) else value == resumed_rng[key]


def saved_rng_states(path: Path) -> dict:
    """The random number generator states a checkpoint holds (tensors and metadata entries)."""
    with safe_open(str(path), framework="pt") as f:
        states = {k: f.get_tensor(k) for k in f.keys() if k.startswith("rng/")}
        states.update({k: v for k, v in f.metadata().items() if k.startswith("rng_")})
    return states


def test_run_writes_samples_checkpoints_and_logs(tmp_path):
    config = tiny_config(tmp_path)
    config = replace(config, train=replace(config.train, steps=2, sample_every=2))
    Trainer(config, progress=False).train()
    out = Path(config.train.out)
    assert (out / "samples" / "step_00000002.png").is_file()
    assert (out / "checkpoints" / "step_00000002.safetensors").is_file()
    assert (out / "config.json").is_file() and (out / "metrics.jsonl").is_file()
    assert any((out / "tensorboard").iterdir())


def script(*args, env=None, **kw):
    return subprocess.run(
        [sys.executable, *args], cwd=ROOT, capture_output=True, text=True, env={**os.environ, **(env or {})}, **kw
    )


def test_cli_help():
    done = script("examples/train_asap_tlam.py", "--help")
    assert done.returncode == 0, done.stderr
    for flag in (
        "--dataset",
        "--data-root",
        "--merger",
        "--generator",
        "--sparsity",
        "--steps",
        "--batch-size",
        "--resolution",
        "--out",
        "--resume",
        "--device",
        "--seed",
        "--amp",
        "--preset",
    ):
        assert flag in done.stdout


TINY_FLAGS = [
    "--resolution",
    "32",
    "--train-samples",
    "8",
    "--val-samples",
    "2",
    "--dim",
    "8",
    "--depth",
    "1",
    "--heads",
    "2",
    "--batch-size",
    "2",
    "--log-every",
    "1",
    "--lambda-vgg",
    "0",
]


def test_cli_trains_resumes_and_refuses_conflicting_flags(tmp_path):
    out = str(tmp_path / "run")
    done = script("examples/train_asap_tlam.py", *TINY_FLAGS, "--steps", "1", "--out", out)
    assert done.returncode == 0, done.stderr
    done = script("examples/train_asap_tlam.py", "--resume", "--steps", "2", "--out", out)
    assert done.returncode == 0, done.stderr
    assert "resuming from" in done.stdout and "step 2" in done.stdout
    done = script("examples/train_asap_tlam.py", "--resume", "--merger", "clam", "--out", out)
    assert done.returncode != 0 and "--merger" in done.stderr
    done = script("examples/train_asap_tlam.py", "--resume", "--out", str(tmp_path / "empty"))
    assert done.returncode != 0 and "no checkpoint" in done.stderr


def test_two_process_ddp_on_cpu(tmp_path):
    """torchrun with 2 processes (gloo): ranks end with identical weights; only rank 0 writes."""
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "torch.distributed.run",
            "--standalone",
            "--nproc_per_node",
            "2",
            str(ROOT / "tests" / "ddp_worker.py"),
            str(tmp_path),
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
        env={**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)},
    )
    assert done.returncode == 0, done.stdout + done.stderr
    assert (tmp_path / "ddp_ok").read_text() == "2"
    assert sorted(p.name for p in (tmp_path / "run" / "checkpoints").iterdir()) == ["step_00000002.safetensors"]
    assert len((tmp_path / "run" / "metrics.jsonl").read_text().splitlines()) == 2  # rank 0 alone logs


def test_presets():
    paper = PRESETS["paper"]
    assert (paper.model.dim, paper.model.depth, paper.model.heads) == (96, 3, 3)
    assert paper.optim.betas == (0.0, 0.999) and (paper.optim.lr_g, paper.optim.lr_d) == (1e-4, 4e-4)
    assert RunConfig.from_dict(paper.to_dict()) == paper


def test_bad_configuration(tmp_path):
    config = tiny_config(tmp_path)
    with pytest.raises(ValueError, match="batch-size 3 must be divisible"):
        from examples.training.distributed import DistInfo

        Trainer(replace(config, train=replace(config.train, batch_size=3)), dist=DistInfo(0, 2, 0))
    with pytest.raises(ValueError, match="sparsity"):
        Trainer(replace(config, train=replace(config.train, sparsity=2.0)))
    with pytest.raises(ValueError, match="needs --data-root"):
        Trainer(replace(config, data=replace(config.data, dataset="cityscapes")))
