"""What the quality and sensitivity studies share: budget, folders, evaluation set and networks.

Both studies measure every model on the same held-out synthetic scenes with the same segmenter,
FID features and per-scene scorers, and both file their runs under
``<work_dir>/<budget>/<row>/seed<k>``, so the sensitivity study reuses the quality study's sparse
TLAM runs (and the other way round).
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import nn

from examples.datasets import SyntheticDataset
from examples.metrics.estimator_training import obtain_label_estimator
from examples.studies.budgets import Budget
from examples.studies.conditions import LabelCondition
from examples.studies.controllability import controllability_scorer
from examples.studies.environment import read_json
from examples.studies.runs import RECORDS, Variant, run_config, run_dir, train_and_measure
from examples.studies.scoring import (
    SceneScorer,
    Scorer,
    build_scorer,
    evaluate_generator,
    evaluation_loader,
    real_floor,
)
from examples.studies.segmenters import obtain_segmenter
from examples.training.builders import HELD_OUT_SEED_OFFSET
from examples.training.checkpoint import latest_checkpoint
from examples.training.config import DataConfig

__all__ = ["Study", "EVAL_SPARSITY_SEED", "FLOOR_SET_SEED", "extra_scene_scorers", "study_from_args"]

EVAL_SPARSITY_SEED = 0  # every model sees the same evaluation masks
# The real-vs-real floor compares the evaluation scenes with the held-out scenes of the seed-1
# runs: other scenes of the same distribution, which no run trains on.
FLOOR_SET_SEED = HELD_OUT_SEED_OFFSET + 1


def extra_scene_scorers(study: Study) -> list[SceneScorer]:
    """The per-scene scorers every study applies besides the built-in ones.

    Today: the controllability scorer (:mod:`examples.studies.controllability`), with the label
    estimator of the budget's recipe (trained once and cached). Scorers are callables
    ``(fake, batch, masks) -> {name: (B,) values}`` (see
    :data:`~examples.studies.scoring.SceneScorer`); a nested per-image result such as
    ``{label: {"given": {metric: (B,)}, "missing": {...}}}`` becomes flat names with
    :func:`~examples.studies.scoring.flatten_scene_metrics`. Name metrics ``<label>.<...>`` so the
    sensitivity study can find each label's own metrics, and give their direction in
    :data:`examples.studies.report.METRIC_DIRECTIONS`. Adding a scorer changes the protocol,
    so existing measurements are refused rather than mixed with new ones.

    Args:
        study: The study being set up (its ``eval_set``, ``device`` and ``budget`` are ready).
    """
    estimator, _ = obtain_label_estimator(
        study.budget.resolution,
        study.budget.estimator,
        cache_dir=study.cache_dir,
        device=study.device,
        progress=study.progress,
    )
    semantic = study.eval_set.label_specs["semantic"]
    return [controllability_scorer(estimator, num_classes=semantic.num_classes, ignore_index=semantic.ignore_index)]


@dataclass
class Study:
    """The common set-up of a study run.

    Args:
        budget: The compute budget.
        work_dir: Where runs (checkpoints, samples, measurements) go.
        cache_dir: Where rendered scenes and trained segmenters are kept.
        device: ``cpu``, ``cuda``, ``cuda:N`` (``auto``: CUDA when there is one).
        fid_weights: The FID Inception weights, or None for the small segmenter's features.
        vgg_weights: VGG19 weights for the perceptual loss, or None (then the loss is off unless
            ``$LABEL_MERGE_VGG19`` names them).
        progress: Show progress bars.
        scene_scorers: Extra per-scene scorers (None: :func:`extra_scene_scorers`).
    """

    budget: Budget
    work_dir: Path
    cache_dir: Path
    device: str = "auto"
    fid_weights: str | None = None
    vgg_weights: str | None = None
    progress: bool = True
    scene_scorers: Sequence[SceneScorer] | None = None
    scorer: Scorer = field(init=False)
    segmenter_path: Path = field(init=False)

    def __post_init__(self) -> None:
        self.work_dir, self.cache_dir = Path(self.work_dir), Path(self.cache_dir)
        if self.device == "auto":
            self.device = "cuda" if torch.cuda.is_available() else "cpu"
        self.scene_cache = self.cache_dir / "scenes" if self.budget.cache_scenes else None
        data = DataConfig(
            resolution=self.budget.resolution,
            workers=self.budget.workers,
            cache_dir=str(self.scene_cache) if self.scene_cache else None,
        )
        segmenter, self.segmenter_path = obtain_segmenter(
            data, self.budget.segmenter, cache_dir=self.cache_dir, device=self.device, progress=self.progress
        )
        self.eval_set = SyntheticDataset(
            num_samples=self.budget.eval_samples,
            resolution=self.budget.resolution,
            seed=HELD_OUT_SEED_OFFSET,  # the held-out scenes of the seed-0 runs, for every run
            cache_dir=self.scene_cache,
        )
        self.scorer = build_scorer(
            segmenter=segmenter,
            segmenter_path=self.segmenter_path,
            semantic_spec=self.eval_set.label_specs["semantic"],
            fid_weights=self.fid_weights,
            device=self.device,
            scene_scorers=extra_scene_scorers(self) if self.scene_scorers is None else self.scene_scorers,
        )
        self._floor: dict | None = None

    # ------------------------------------------------------------------ evaluation

    def describe_eval_set(self) -> str:
        return f"{self.eval_set!r}, the held-out scenes of the seed-0 runs"

    def protocol(self, condition: LabelCondition | None = None) -> dict:
        """What a measurement depends on besides the model."""
        protocol = {
            "eval_set": self.describe_eval_set(),
            "eval_samples": self.budget.eval_samples,
            **self.scorer.describe(),
        }
        if condition is not None:
            protocol["condition"] = condition.describe()
        return protocol

    def _loader(self, dataset):
        return evaluation_loader(dataset, batch_size=self.budget.eval_batch_size, workers=self.budget.workers)

    def measure(self, generator: nn.Module, condition: LabelCondition, *, desc: str = "evaluating") -> dict:
        """All metrics of ``generator`` on the evaluation set under ``condition``."""
        return evaluate_generator(
            generator,
            self._loader(self.eval_set),
            self.scorer,
            condition,
            device=self.device,
            progress=self.progress,
            desc=desc,
        )

    def floor(self) -> dict:
        """FID and KID of the evaluation scenes' real images against as many other real scenes.

        What a perfect generator would score with these features and this set size (computed once).
        """
        if self._floor is None:
            other = SyntheticDataset(
                num_samples=self.budget.eval_samples,
                resolution=self.budget.resolution,
                seed=FLOOR_SET_SEED,
                cache_dir=self.scene_cache,
            )
            self._floor = {
                **real_floor(self._loader(self.eval_set), self._loader(other), self.scorer),
                "other_set": repr(other),
            }
        return self._floor

    @staticmethod
    def training_condition(variant: Variant) -> LabelCondition:
        """The condition a row is measured under: its training sparsity, with fixed masks."""
        return LabelCondition(sparsity=variant.sparsity, seed=EVAL_SPARSITY_SEED)

    # ------------------------------------------------------------------ runs

    def run_dir(self, variant: Variant, seed: int) -> Path:
        return run_dir(self.work_dir, self.budget, variant, seed)

    def run(self, variant: Variant, seed: int) -> dict:
        """Train (or continue) one run and measure it along the way; returns its records."""
        config = run_config(
            variant,
            self.budget,
            seed=seed,
            out=self.run_dir(variant, seed),
            device=self.device,
            scene_cache=self.scene_cache,
            vgg_weights=self.vgg_weights,
        )
        condition = self.training_condition(variant)
        return train_and_measure(
            config,
            schedule=self.budget.schedule(),
            measure=lambda generator: self.measure(generator, condition, desc=f"measuring {variant.name}"),
            protocol=self.protocol(condition),
            progress=self.progress,
        )

    def measured(self, variant: Variant, seed: int) -> dict | None:
        """The records of a run measured at every step of the schedule with this protocol, else None.

        Trains and measures nothing: what :meth:`run` would return without doing any work.
        """
        records = read_json(self.run_dir(variant, seed) / RECORDS)
        if not records or records["protocol"] != self.protocol(self.training_condition(variant)):
            return None
        done = all(str(step) in records["evaluations"] for step in self.budget.schedule())
        return records if done else None

    def averaged_checkpoints(self, variant: Variant, seed: int) -> list[Path]:
        """The checkpoints of the steps the results average over (``budget.averaged_steps()``).

        Raises:
            FileNotFoundError: One of them is missing.
        """
        folder = self.run_dir(variant, seed) / "checkpoints"
        paths = [folder / f"step_{step:08d}.safetensors" for step in self.budget.averaged_steps()]
        missing = [str(path) for path in paths if not path.is_file()]
        if missing:
            raise FileNotFoundError(f"missing checkpoints {missing}; train the run again (delete its folder)")
        return paths

    def final_checkpoint(self, variant: Variant, seed: int) -> Path:
        """The newest checkpoint of a finished run.

        Raises:
            FileNotFoundError: The run has no checkpoint.
        """
        folder = self.run_dir(variant, seed) / "checkpoints"
        path = latest_checkpoint(folder)
        if path is None:
            raise FileNotFoundError(f"no checkpoint in {folder}")
        return path


def resolve_folder(value: str | os.PathLike | None, default: Path) -> Path:
    """``value`` as a path, or ``default``."""
    return Path(value).expanduser() if value else default


def study_from_args(args, program: str) -> Study:
    """The study a script's command line asks for, with the CPU configured for its budget.

    ``args`` has the study scripts' shared flags: ``budget``, ``seeds``, ``threads``, ``work_dir``,
    ``cache_dir``, ``device``, ``fid_weights``, ``vgg_weights`` and ``no_progress``.

    Raises:
        SystemExit: An unknown budget, named with ``program``.
    """
    from dataclasses import replace

    from examples.studies.budgets import resolve_budget
    from examples.studies.environment import configure_cpu, default_cache_dir
    from examples.studies.scoring import fid_weights_from

    try:
        budget = resolve_budget(args.budget)
        if args.seeds:
            budget = replace(budget, seeds=tuple(args.seeds))
    except ValueError as err:
        raise SystemExit(f"{program}: {err}") from None
    configure_cpu(args.threads or budget.threads)
    return Study(
        budget=budget,
        work_dir=Path(args.work_dir),
        cache_dir=resolve_folder(args.cache_dir, default_cache_dir()),
        device=args.device,
        fid_weights=fid_weights_from(args.fid_weights),
        vgg_weights=args.vgg_weights,
        progress=not args.no_progress,
    )
