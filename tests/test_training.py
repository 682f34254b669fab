"""The training example: every merger x generator steps, losses fall, resume is exact, DDP, CLI."""

import errno
import json
import os
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import pytest
import torch
from PIL import Image
from safetensors import safe_open
from safetensors.torch import load_file

from examples.train_asap_tlam import main as train_main
from examples.training.checkpoint import save_checkpoint
from examples.training.config import PRESETS, DataConfig, ModelConfig, OptimConfig, RunConfig, TrainConfig, parse_args
from examples.training.loop import Trainer
from tests.test_checkpoint import damage

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


@pytest.mark.parametrize("where", ["real image", "discriminator loss"])
def test_a_non_finite_loss_raises_before_any_weight_changes(tmp_path, monkeypatch, where):
    trainer = Trainer(tiny_config(tmp_path), progress=False)
    batch = next(iter(trainer._loader()))
    if where == "real image":  # every loss that sees the real image is NaN
        batch["image"][0, 0, 0, 0] = float("nan")
    else:  # only the discriminator's loss, computed after the generator's
        monkeypatch.setattr("examples.training.loop.hinge_loss_d_real", lambda outputs: torch.tensor(float("inf")))
    before_g, before_d = parameters(trainer.generator), parameters(trainer.discriminator)
    with pytest.raises(FloatingPointError, match="at step 1; no weights were updated"):
        trainer.train_step(batch)
    assert all(torch.equal(a, b) for a, b in zip(before_g, trainer.generator.parameters(), strict=True))
    assert all(torch.equal(a, b) for a, b in zip(before_d, trainer.discriminator.parameters(), strict=True))
    assert all(not state for state in trainer.opt_g.state.values())  # Adam's moments untouched too


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
    grid = Image.open(out / "samples" / "step_00000002.png")
    labels = ["semantic", "depth", "normal", "edge", "curvature"]
    assert grid.info["columns"].split(", ") == [*labels, "concept (PCA)", "generated", "real"]
    assert json.loads(grid.info["layout"])["heading"] > 0  # the titles are drawn above the columns
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
    # Settings are checked before anything is built, with the flag's name.
    with pytest.raises(ValueError, match="--log-every must be an integer >= 1, got 0"):
        Trainer(replace(config, train=replace(config.train, log_every=0)))
    with pytest.raises(ValueError, match=r"--betas must be a number in \[0, 1\) \(each of two\), got \(0\.0, 1\.0\)"):
        Trainer(replace(config, optim=replace(config.optim, betas=(0.0, 1.0))))
    with pytest.raises(ValueError, match="model.ndf must be an integer >= 1"):
        Trainer(replace(config, model=replace(config.model, ndf=0)))


# ---------------------------------------------------------------------------- faults and resumes


def crash_config(tmp_path, **train) -> RunConfig:
    """The tiny run with region dropout (so per-step randomness matters), then ``train`` changes."""
    config = tiny_config(tmp_path, sparsity=0.3)
    return replace(config, train=replace(config.train, **train))


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory):
    """The final checkpoint of a 4-step run that never stopped."""
    config = crash_config(tmp_path_factory.mktemp("uninterrupted"), steps=4)
    Trainer(config, progress=False).train()
    return Path(config.train.out) / "checkpoints" / "step_00000004.safetensors"


def assert_same_state(expected: Path, actual: Path) -> None:
    """Two checkpoints hold the same weights, optimizer and random number generator states, bit for bit."""
    a, b = load_file(str(expected)), load_file(str(actual))
    assert a.keys() == b.keys()
    for key in a:
        assert torch.equal(a[key], b[key]), key
    with safe_open(str(expected), framework="pt") as f, safe_open(str(actual), framework="pt") as g:
        for key in ("step", "optimizers", "rng_python", "rng_numpy"):
            assert f.metadata()[key] == g.metadata()[key], key


def dead_pid() -> int:
    """The id of a process that has exited."""
    done = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    return int(done.stdout)


def logged_steps(out: Path) -> list[int]:
    return [json.loads(line)["step"] for line in (out / "metrics.jsonl").read_text().splitlines()]


def test_resume_after_a_crash_while_logging_and_saving(tmp_path, uninterrupted):
    """A torn last log line and a killed save's temporary file: both cleaned up, same result."""
    config = crash_config(tmp_path, steps=2)
    Trainer(config, progress=False).train()
    out = Path(config.train.out)
    with (out / "metrics.jsonl").open("a") as f:
        f.write('{"step": 3, "seconds": 0.41, "g_ga')  # killed mid-line
    stale = out / "checkpoints" / f".step_00000003.safetensors.{dead_pid()}.tmp"
    stale.write_bytes(b"partial")
    with pytest.warns(UserWarning) as caught:
        train_main(["--resume", "--out", str(out), "--steps", "4"])
    messages = [str(w.message) for w in caught]
    assert any(f"{out / 'metrics.jsonl'}: dropped unreadable line(s) [3]" in m for m in messages), messages
    assert any(f"removed 1 temporary checkpoint file(s) left by killed writers: {stale}" in m for m in messages)
    assert not stale.exists()
    assert logged_steps(out) == [1, 2, 3, 4]
    assert_same_state(uninterrupted, out / "checkpoints" / "step_00000004.safetensors")


def test_resume_skips_a_damaged_newest_checkpoint_and_keeps_it(tmp_path, uninterrupted, capsys):
    config = crash_config(tmp_path, steps=3, checkpoint_every=1)
    Trainer(config, progress=False).train()
    folder = Path(config.train.out) / "checkpoints"
    newest = folder / "step_00000003.safetensors"
    damage(newest, "model/generator/merger.label_embed")
    train_main(["--resume", "--out", config.train.out, "--steps", "4"])
    err = capsys.readouterr().err
    assert f"skipped {newest}: {newest}: tensor 'model/generator/merger.label_embed' does not match" in err
    assert f"kept it as {newest}.corrupt" in err
    assert (folder / "step_00000003.safetensors.corrupt").is_file()
    assert logged_steps(Path(config.train.out)) == [1, 2, 3, 4]
    assert_same_state(uninterrupted, folder / "step_00000004.safetensors")


@pytest.mark.parametrize(
    "flags",
    [
        ["--log-every", "0"],
        ["--checkpoint-every", "0"],
        ["--sample-every", "0"],
        ["--steps", "0"],
        ["--steps", "-5"],
        ["--steps", "2.5"],
        ["--batch-size", "0"],
        ["--resolution", "0"],
        ["--train-samples", "0"],
        ["--workers", "-1"],
        ["--dim", "0"],
        ["--heads", "0"],
        ["--depth", "-1"],
        ["--lr-g", "0"],
        ["--lr-d", "nan"],
        ["--betas", "0", "1"],
        ["--lambda-l1", "-1"],
        ["--lambda-feat", "inf"],
        ["--sparsity", "1.5"],
        ["--seed", "-1"],
    ],
)
def test_numeric_flags_are_checked_when_parsed(flags, capsys):
    with pytest.raises(SystemExit) as exit_:
        parse_args(flags)
    assert exit_.value.code == 2
    assert f"argument {flags[0]}: " in capsys.readouterr().err


def test_flag_combinations_are_checked_when_parsed(capsys):
    with pytest.raises(SystemExit):
        parse_args(["--dim", "10", "--heads", "3"])
    assert "--dim 10 must be divisible by --heads 3" in capsys.readouterr().err
    assert parse_args(["--steps", "1", "--sparsity", "0.5"])[0].train.steps == 1
    with pytest.raises(SystemExit):
        parse_args(["--merger", "tlam", "--no-presence-channels"])
    assert "--no-presence-channels applies to --merger naive only, not 'tlam'" in capsys.readouterr().err


def test_the_papers_naive_baseline_sees_raw_labels_without_presence_channels():
    from examples.datasets import SyntheticDataset
    from examples.training.builders import build_merger

    specs = SyntheticDataset(2, seed=0, resolution=8).label_specs
    ours, _ = parse_args(["--merger", "naive"])
    paper, _ = parse_args(["--merger", "naive", "--no-normalize-labels", "--no-presence-channels"])
    assert (paper.model.normalize_labels, paper.model.naive_presence) == (False, False)
    sample = SyntheticDataset(2, seed=0, resolution=8)[0]
    labels = {name: x[None] for name, x in sample["labels"].items()}
    masks = {name: m[None] for name, m in sample["masks"].items()}
    raw, normalised = build_merger(paper.model, specs), build_merger(ours.model, specs)
    assert normalised(labels, masks).shape[1] == raw(labels, masks).shape[1] + len(specs)  # one presence channel each
    depth = slice(specs["semantic"].num_classes, specs["semantic"].num_classes + 1)  # semantic one-hot, then depth
    assert list(specs)[:2] == ["semantic", "depth"]
    assert torch.equal(raw(labels, masks)[:, depth], labels["depth"] * masks["depth"][:, None])


def saved_run(out: Path, config: RunConfig, step: int) -> Path:
    """A checkpoint of ``config`` at ``step`` in ``out`` (tiny weights: only what resuming reads)."""
    config = replace(config, train=replace(config.train, out=str(out)))
    return save_checkpoint(
        out / "checkpoints", step, modules={"m": torch.nn.Linear(1, 1)}, optimizers={}, config=config.to_dict()
    )


def test_resume_refuses_or_explains_what_would_do_nothing(tmp_path, capsys):
    out = tmp_path / "run"
    saved_run(out, crash_config(tmp_path, steps=3), 3)
    assert train_main(["--resume", "--out", str(out)]) == {}  # the saved run is complete
    assert "nothing to do" in capsys.readouterr().out
    with pytest.raises(SystemExit, match=r"at step 3, past --steps 2; a run cannot go back"):
        train_main(["--resume", "--out", str(out), "--steps", "2"])
    with pytest.raises(SystemExit, match=r"--preset paper would change .*model\.dim 8 -> 96"):
        train_main(["--resume", "--out", str(out), "--preset", "paper", "--steps", "5"])
    # A preset that restates the saved configuration is fine.
    demo = tmp_path / "demo"
    saved_run(demo, PRESETS["demo"], PRESETS["demo"].train.steps)
    assert train_main(["--resume", "--preset", "demo", "--out", str(demo)]) == {}


def test_resume_with_no_good_checkpoint_names_each_one(tmp_path):
    out = tmp_path / "run"
    paths = [saved_run(out, crash_config(tmp_path, steps=9), step) for step in (1, 2)]
    for path in paths:
        damage(path, "model/m/weight")
    with pytest.raises(SystemExit, match=r"(?s)no checkpoint in .* reads and verifies:.*step_00000002.*step_00000001"):
        train_main(["--resume", "--out", str(out)])
    assert all(p.is_file() for p in paths)


def test_an_unwritable_output_folder_is_found_before_anything_is_built(tmp_path, monkeypatch):
    import examples.training.loop as loop

    monkeypatch.setattr(loop, "build_datasets", lambda *a, **k: pytest.fail("built before checking --out"))
    blocker = tmp_path / "a_file"
    blocker.write_text("")
    config = tiny_config(tmp_path)
    with pytest.raises(OSError, match=rf"--out {blocker / 'run'} cannot be written to"):
        Trainer(replace(config, train=replace(config.train, out=str(blocker / "run"))))

    def disk_full(fd):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    with monkeypatch.context() as m:
        m.setattr(os, "fsync", disk_full)
        with pytest.raises(OSError, match=rf"--out {config.train.out} cannot be written to: No space left on device"):
            Trainer(config)
    assert list(Path(config.train.out).iterdir()) == []  # the probe is gone
    if os.name == "posix" and os.geteuid() != 0:  # root writes anywhere
        os.chmod(config.train.out, 0o500)
        try:
            with pytest.raises(OSError, match="Permission denied"):
                Trainer(config)
        finally:
            os.chmod(config.train.out, 0o700)
