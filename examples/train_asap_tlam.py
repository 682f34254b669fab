"""Train an image generator conditioned on several per-pixel labels through a label merger.

    python examples/train_asap_tlam.py                       # TLAM + ASAP-Net, synthetic data, CPU demo
    python examples/train_asap_tlam.py --preset paper --dataset taskonomy --data-root /data/taskonomy
    torchrun --nproc_per_node 4 examples/train_asap_tlam.py --preset paper ...
    python examples/train_asap_tlam.py --resume              # continue the run in --out

Writes into ``--out``: ``checkpoints/`` (safetensors), ``samples/`` (PNG grids: labels,
concept, generated, real), ``tensorboard/``, ``metrics.jsonl`` and ``config.json``.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass, field
from pathlib import Path

if __package__ in (None, ""):  # run as a script: make the repository importable
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from examples.training.checkpoint import (  # noqa: E402
    CheckpointError,
    find_resumable_checkpoint,
    read_checkpoint_info,
    set_aside,
)
from examples.training.config import (  # noqa: E402
    PRESETS,
    RunConfig,
    apply_flags,
    changed_by_flags,
    check_config,
    parse_args,
)
from examples.training.distributed import setup_distributed, teardown_distributed  # noqa: E402
from examples.training.loop import Trainer  # noqa: E402
from examples.training.run_files import ensure_writable  # noqa: E402

# Flags that may change when a run is resumed; any other flag must match the saved configuration.
RESUMABLE_FLAGS = {
    "steps", "out", "device", "workers", "cpu_allocator", "log_every", "sample_every", "checkpoint_every"
}  # fmt: skip
# Fields a run fills in when it starts (what --amp auto became): a preset never sets them.
RESOLVED_AT_START = {"amp_resolved", "amp_reason"}


@dataclass
class StartPoint:
    """Where a run starts: its configuration and, when resuming, the checkpoint and its step."""

    config: RunConfig
    checkpoint: Path | None = None
    step: int = 0
    skipped: list[tuple[Path, str]] = field(default_factory=list)  # damaged newer checkpoints


def _differences(a: RunConfig, b: RunConfig, *, ignore: set[str]) -> list[str]:
    """``section.field: a -> b`` for each field that differs, leaving out the fields in ``ignore``."""
    out = []
    for section, values in a.to_dict().items():
        for name, value in values.items():
            other = b.to_dict()[section][name]
            if name not in ignore and value != other:
                out.append(f"{section}.{name} {value!r} -> {other!r}")
    return out


def resolve_resume(config: RunConfig, args) -> StartPoint:
    """The configuration and checkpoint to start from, honouring ``--resume``.

    With ``--resume`` (no file), the newest checkpoint in ``--out`` that reads and verifies;
    newer damaged ones are listed in ``skipped``.

    Raises:
        SystemExit: No usable checkpoint; a flag (or ``--preset``) that would change the saved
            configuration; or ``--steps`` below the saved step.
    """
    if args.resume is None:
        return StartPoint(config)
    folder = Path(config.train.out) / "checkpoints"
    skipped: list[tuple[Path, str]] = []
    try:
        if args.resume == "latest":
            found, skipped = find_resumable_checkpoint(folder)
            if found is None and not skipped:
                raise SystemExit(f"--resume: no checkpoint in {folder}")
            if found is None:
                why = "".join(f"\n  {path}: {reason}" for path, reason in skipped)
                raise SystemExit(f"--resume: no checkpoint in {folder} reads and verifies:{why}")
        else:
            found = read_checkpoint_info(args.resume)
    except (CheckpointError, FileNotFoundError) as err:
        raise SystemExit(f"--resume: {err}") from err
    path = found.path
    saved = RunConfig.from_dict(found.config)
    if args.preset is not None:
        # A preset describes a whole configuration: it may only restate the saved one.
        differences = _differences(
            saved, apply_flags(PRESETS[args.preset], args), ignore=RESUMABLE_FLAGS | RESOLVED_AT_START
        )
        if differences:
            raise SystemExit(
                f"--resume continues the saved configuration of {path}; --preset {args.preset} would change "
                f"{', '.join(differences)}. Leave --preset out to continue the saved run."
            )
    conflicts = [f"--{flag.replace('_', '-')}" for flag in changed_by_flags(saved, args) if flag not in RESUMABLE_FLAGS]
    if conflicts:
        raise SystemExit(
            f"--resume continues the saved configuration of {path}; these flags would change it: {conflicts}"
        )
    config = apply_flags(saved, args)
    try:
        check_config(config)
    except ValueError as err:
        raise SystemExit(f"--resume: {err}") from err
    if config.train.steps < found.step:
        raise SystemExit(
            f"--resume: {path} is at step {found.step}, past --steps {config.train.steps}; "
            f"a run cannot go back (pass --steps above {found.step} to train further)"
        )
    return StartPoint(config, path, found.step, skipped)


def main(argv: list[str] | None = None) -> dict[str, float]:
    config, args = parse_args(argv)
    start = resolve_resume(config, args)
    config, checkpoint = start.config, start.checkpoint
    if checkpoint is not None and start.step == config.train.steps:
        print(
            f"nothing to do: {checkpoint} is at step {start.step}, the run's length (--steps {config.train.steps}); "
            f"pass a larger --steps to train further",
            flush=True,
        )
        return {}
    dist = setup_distributed()  # every rank has chosen its checkpoint once this returns
    try:
        if dist.is_main:
            ensure_writable(config.train.out)  # before renaming anything in it
            for path, reason in start.skipped:
                kept = set_aside(path)
                print(f"--resume: skipped {path}: {reason}; kept it as {kept}", file=sys.stderr, flush=True)
        trainer = Trainer(config, dist=dist, resume=checkpoint)
        if dist.is_main:
            where = f"resuming from {checkpoint} at step {trainer.step}" if checkpoint else "starting"
            print(
                f"{where}: {config.model.merger} + {config.model.generator} on {config.data.dataset} "
                f"({len(trainer.train_set)} training samples, labels {list(trainer.specs)}), "
                f"{config.train.steps} steps on {trainer.device}, writing to {config.train.out}",
                flush=True,
            )
            print(f"bfloat16 autocast: {trainer.config.train.amp_reason}", flush=True)
            print(f"CPU allocator: {trainer.allocator_note}", flush=True)
        losses = trainer.train()
    except BaseException:
        teardown_distributed(wait_for_all_ranks=False)  # another rank may never reach a barrier
        raise
    teardown_distributed()
    if dist.is_main:
        print(f"done: step {trainer.step}, losses {', '.join(f'{k} {v:.3f}' for k, v in losses.items())}")
        print(f"samples: {Path(config.train.out) / 'samples'}; checkpoints: {Path(config.train.out) / 'checkpoints'}")
    return losses


if __name__ == "__main__":
    main()
