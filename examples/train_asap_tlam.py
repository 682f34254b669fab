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
from pathlib import Path

if __package__ in (None, ""):  # run as a script: make the repository importable
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from examples.training.checkpoint import latest_checkpoint, load_checkpoint_config  # noqa: E402
from examples.training.config import RunConfig, apply_flags, changed_by_flags, parse_args  # noqa: E402
from examples.training.distributed import setup_distributed, teardown_distributed  # noqa: E402
from examples.training.loop import Trainer  # noqa: E402

# Flags that may change when a run is resumed; any other flag must match the saved configuration.
RESUMABLE_FLAGS = {"steps", "out", "device", "workers", "log_every", "sample_every", "checkpoint_every"}


def resolve_resume(config: RunConfig, args) -> tuple[RunConfig, Path | None]:
    """The configuration and checkpoint to start from, honouring ``--resume``."""
    if args.resume is None:
        return config, None
    path = latest_checkpoint(Path(config.train.out) / "checkpoints") if args.resume == "latest" else Path(args.resume)
    if path is None:
        raise SystemExit(f"--resume: no checkpoint in {Path(config.train.out) / 'checkpoints'}")
    saved = RunConfig.from_dict(load_checkpoint_config(path))
    conflicts = [f"--{flag.replace('_', '-')}" for flag in changed_by_flags(saved, args) if flag not in RESUMABLE_FLAGS]
    if conflicts:
        raise SystemExit(
            f"--resume continues the saved configuration of {path}; these flags would change it: {conflicts}"
        )
    return apply_flags(saved, args), path


def main(argv: list[str] | None = None) -> dict[str, float]:
    config, args = parse_args(argv)
    config, checkpoint = resolve_resume(config, args)
    dist = setup_distributed()
    try:
        trainer = Trainer(config, dist=dist, resume=checkpoint)
        if dist.is_main:
            where = f"resuming from {checkpoint} at step {trainer.step}" if checkpoint else "starting"
            print(
                f"{where}: {config.model.merger} + {config.model.generator} on {config.data.dataset} "
                f"({len(trainer.train_set)} training samples, labels {list(trainer.specs)}), "
                f"{config.train.steps} steps on {trainer.device}, writing to {config.train.out}",
                flush=True,
            )
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
