"""Training runs of a study, measured at intervals, resumable: the rows of the paper's Table 1.

A run trains with the project's :class:`~examples.training.loop.Trainer` in segments that end at
the measurement steps (``budget.schedule()``): train to step 200, measure, resume from the step-200
checkpoint, train to 400, measure, and so on. Resuming is exact (the checkpoint holds the weights,
optimizer and random states; ``tests/test_training.py`` proves it), so a segmented run equals an
uninterrupted one, and the loop needs no callback. Measurements go into
``<run>/study_evaluations.json`` after every segment; a study started again skips every
measurement it has and continues training from the newest checkpoint.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path

from torch import nn

from examples.studies.budgets import Budget
from examples.studies.environment import read_json, write_json
from examples.training.builders import restore_generator
from examples.training.checkpoint import latest_checkpoint, load_checkpoint_config
from examples.training.config import DataConfig, OptimConfig, RunConfig, TrainConfig

__all__ = ["Variant", "TABLE1", "LADDER", "VARIANTS", "run_config", "run_dir", "train_and_measure", "RECORDS"]

RECORDS = "study_evaluations.json"
LABELS = ("semantic", "edge", "curvature", "depth", "normal")  # the paper's column order: S E C D N


@dataclass(frozen=True)
class Variant:
    """One row of the paper's Table 1: a generator, a label merger and a training sparsity.

    Attributes:
        name: Folder and key of the row (``asap-tlam-sparse``).
        backbone: ``SPADE`` or ``ASAP``, as in the table.
        method: The table's method name.
        generator: ``asap`` or ``spade``.
        merger: ``semantic``, ``naive``, ``clam`` or ``tlam``.
        sparsity: Region sparsity in training and in evaluation (0 or 0.5).
        normalize_labels: Continuous labels normalised by their specs (False: as they are).
        naive_presence: Presence channels in the naive concatenation.
        dim: The merger's width; None: the budget's.
    """

    name: str
    backbone: str
    method: str
    generator: str
    merger: str
    sparsity: float
    normalize_labels: bool = True
    naive_presence: bool = True
    dim: int | None = None

    def label_marks(self) -> list[str]:
        """The table's label columns S E C D N: dense (■), sparse (△) or unused (blank)."""
        mark = "△" if self.sparsity else "■"
        return [mark if self.merger != "semantic" or name == "semantic" else "" for name in LABELS]


TABLE1 = (
    Variant("spade-semantic", "SPADE", "Regular", "spade", "semantic", 0.0),
    Variant("spade-naive", "SPADE", "Naive-baseline", "spade", "naive", 0.0),
    Variant("asap-semantic", "ASAP", "Regular", "asap", "semantic", 0.0),
    Variant("asap-naive", "ASAP", "Naive-baseline", "asap", "naive", 0.0),
    Variant("asap-clam-sparse", "ASAP", "CLAM-baseline", "asap", "clam", 0.5),
    Variant("asap-tlam-sparse", "ASAP", "TLAM", "asap", "tlam", 0.5),
    Variant("asap-clam-dense", "ASAP", "CLAM-baseline", "asap", "clam", 0.0),
    Variant("asap-tlam-dense", "ASAP", "TLAM", "asap", "tlam", 0.0),
)
# The baseline ladder (ASAP-Net): from the paper's naive concatenation (raw labels, no presence
# channels) up to the project's (normalised, with presence channels: "asap-naive"), and TLAM
# without label normalisation, dense and 50% sparse, next to the Table 1 rows they climb to;
# and TLAM at two, four and (sparse) six times the budget's width.
LADDER = (
    Variant("asap-naive-raw", "ASAP", "Naive (paper: raw, no presence)", "asap", "naive", 0.0, False, False),
    Variant("asap-naive-norm", "ASAP", "Naive + normalisation", "asap", "naive", 0.0, True, False),
    Variant("asap-tlam-raw-dense", "ASAP", "TLAM, no normalisation", "asap", "tlam", 0.0, False),
    Variant("asap-naive-raw-sparse", "ASAP", "Naive (paper: raw, no presence)", "asap", "naive", 0.5, False, False),
    Variant("asap-naive-norm-sparse", "ASAP", "Naive + normalisation", "asap", "naive", 0.5, True, False),
    Variant("asap-naive-sparse", "ASAP", "Naive-baseline", "asap", "naive", 0.5),
    Variant("asap-tlam-raw-sparse", "ASAP", "TLAM, no normalisation", "asap", "tlam", 0.5, False),
    # Does a wider merger close TLAM's class-information gap inside the GAN (docs/choosing.md)?
    Variant("asap-tlam-w32-dense", "ASAP", "TLAM, width 32", "asap", "tlam", 0.0, dim=32),
    Variant("asap-tlam-w32-sparse", "ASAP", "TLAM, width 32", "asap", "tlam", 0.5, dim=32),
    Variant("asap-tlam-w64-dense", "ASAP", "TLAM, width 64", "asap", "tlam", 0.0, dim=64),
    Variant("asap-tlam-w64-sparse", "ASAP", "TLAM, width 64", "asap", "tlam", 0.5, dim=64),
    # The paper's width, sparse only: where TLAM won at width 32 (a row costs twice width 64's time).
    Variant("asap-tlam-w96-sparse", "ASAP", "TLAM, width 96", "asap", "tlam", 0.5, dim=96),
)
VARIANTS = {variant.name: variant for variant in TABLE1 + LADDER}


def run_dir(work_dir: str | Path, budget: Budget, variant: Variant, seed: int) -> Path:
    """``<work_dir>/<budget>/<variant>/seed<k>``: shared by every study, so each reuses the others' runs."""
    return Path(work_dir) / budget.name / variant.name / f"seed{seed}"


def run_config(
    variant: Variant,
    budget: Budget,
    *,
    seed: int,
    out: str | Path,
    device: str = "auto",
    scene_cache: str | Path | None = None,
    vgg_weights: str | None = None,
) -> RunConfig:
    """The training configuration of one run: equal for every row but the merger, generator and sparsity.

    The run keeps the checkpoints of the steps the results average over
    (``budget.averaged_checkpoints``), so later studies can measure the same ones.
    """
    return RunConfig(
        data=DataConfig(
            dataset="synthetic",
            resolution=budget.resolution,
            train_samples=budget.train_samples,
            val_samples=4,  # the training loop's sample grids; evaluation uses its own set
            workers=budget.workers,
            cache_dir=str(scene_cache) if scene_cache is not None else None,
        ),
        model=replace(
            budget.model,
            merger=variant.merger,
            generator=variant.generator,
            normalize_labels=variant.normalize_labels,
            naive_presence=variant.naive_presence,
            dim=variant.dim or budget.model.dim,
        ),
        optim=OptimConfig(lambda_vgg=budget.lambda_vgg, vgg_weights=vgg_weights, lambda_l1=budget.lambda_l1),
        train=TrainConfig(
            steps=budget.steps,
            batch_size=budget.batch_size,
            sparsity=variant.sparsity,
            seed=seed,
            device=device,
            out=str(out),
            log_every=max(1, min(50, budget.eval_every)),
            sample_every=budget.eval_every,
            checkpoint_every=budget.eval_every,
            keep_checkpoints=max(2, budget.averaged_checkpoints),
        ),
    )


# Settings that may differ between the segments of one run (or when it is continued elsewhere).
_FREE = {("train", "steps"), ("train", "out"), ("train", "device"), ("data", "workers"), ("data", "cache_dir")}


# What a run fills in when it starts (what ``amp`` became on its machine): a configuration that
# has not started yet leaves them unset, and they are no difference then.
_RESOLVED_AT_START = {("train", "amp_resolved"), ("train", "amp_reason")}


def _differences(saved: dict, config: RunConfig) -> list[str]:
    wanted = config.to_dict()
    found = RunConfig.from_dict(saved).to_dict()
    free = _FREE | (_RESOLVED_AT_START if config.train.amp_resolved is None else set())
    return [
        f"{section}.{key}: {found[section][key]!r} there, {value!r} here"
        for section, values in wanted.items()
        for key, value in values.items()
        if (section, key) not in free and found[section][key] != value
    ]


def train_and_measure(
    config: RunConfig,
    *,
    schedule: list[int],
    measure: Callable[[nn.Module], dict],
    protocol: dict,
    progress: bool = True,
) -> dict:
    """Train ``config`` to each step of ``schedule`` in turn and measure the generator there.

    Args:
        config: The run (its ``train.out`` holds checkpoints, samples and the records).
        schedule: Increasing steps; the last is the run's length.
        measure: ``generator -> metrics``; called in eval mode.
        protocol: What the measurements depend on (evaluation set, networks, condition); kept
            with them, and a later call with another protocol is refused rather than mixing numbers.
        progress: Show progress bars.

    Returns:
        The records: ``{"protocol", "config", "train_seconds", "perceptual_loss",
        "evaluations": {step: metrics}}``.

    Raises:
        ValueError: The run folder holds measurements with another protocol, or a checkpoint of
            another configuration; or a measurement step whose checkpoint is gone.
    """
    from examples.training.loop import Trainer

    out = Path(config.train.out)
    path = out / RECORDS
    records = read_json(path) or {
        "protocol": protocol,
        "config": config.to_dict(),
        "train_seconds": 0.0,
        "perceptual_loss": None,
        "evaluations": {},
    }
    if records["protocol"] != protocol:
        changed = sorted(k for k in {*protocol, *records["protocol"]} if protocol.get(k) != records["protocol"].get(k))
        raise ValueError(
            f"{path} holds measurements made with another protocol (differences in {changed}); "
            f"delete {out} or choose another work folder"
        )
    for target in schedule:
        if str(target) in records["evaluations"]:
            continue
        folder = out / "checkpoints"
        latest = latest_checkpoint(folder)
        if latest is not None:
            differences = _differences(load_checkpoint_config(latest), config)
            if differences:
                raise ValueError(f"{latest} was trained with another configuration: {'; '.join(differences)}")
        exact = folder / f"step_{target:08d}.safetensors"
        if exact.is_file():  # trained earlier, but the measurement was interrupted
            generator, _, _ = restore_generator(exact, device=_device(config))
        else:
            done = int(latest.stem.split("_")[1]) if latest is not None else 0
            if done > target:
                raise ValueError(
                    f"{out}: step {target} was never measured and its checkpoint is gone (the newest is step {done}); "
                    f"delete {out} to train this run again"
                )
            trainer = Trainer(
                replace(config, train=replace(config.train, steps=target)), resume=latest, progress=progress
            )
            started = time.perf_counter()
            trainer.train()
            records["train_seconds"] += time.perf_counter() - started
            records["perceptual_loss"] = bool(trainer.vgg is not None and trainer.vgg.enabled)
            generator = trainer.generator
        records["evaluations"][str(target)] = measure(generator.eval())
        write_json(path, records)
    return records


def _device(config: RunConfig) -> str:
    import torch

    requested = config.train.device
    if requested == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    return requested
