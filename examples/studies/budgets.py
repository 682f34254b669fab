"""How much compute a study spends: steps, image size, seeds, model sizes, evaluation size.

``--budget`` takes a name or a number:

- ``smoke``: the whole pipeline in seconds with tiny networks and one seed (what the tests run);
  its numbers mean nothing.
- ``cpu-hour``: 32x32 scenes and small networks, 400 steps, 5 seeds; all eight rows of the
  quality study in about an hour on 2 CPU cores (estimated from the step times in ``docs/studies.md``).
- ``cpu-2h`` (default): the same with 1,000 steps; about two hours on 2 CPU cores for the six
  ASAP-Net rows (pick rows with ``--rows``).
- ``paper``: the paper's configuration (256x256, TLAM 96/3/3, ASAP-Net and SPADE at their
  published sizes, 3 seeds): days on one GPU per row.
- a positive integer ``N``: ``cpu-2h`` with ``N`` training steps per run (measured at five
  evenly spaced checkpoints).

Every row of a study gets the same budget: the same steps, seeds, losses (including the pixel L1
term of the CPU budgets) and evaluation, fixed before any run.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, replace

from examples.metrics.estimator_training import EstimatorRecipe
from examples.studies.segmenters import SegmenterRecipe
from examples.training.config import PRESETS, ModelConfig

__all__ = ["Budget", "BUDGETS", "resolve_budget"]


@dataclass(frozen=True)
class Budget:
    """Everything a study's compute depends on; every run of a study gets the same.

    Attributes:
        name: The name results are filed under.
        steps: Training steps per run.
        eval_every: Steps between FID measurements (the convergence curve); ``steps`` is always measured.
        resolution: Image height (synthetic scenes are square).
        batch_size: Training batch.
        seeds: One run per seed and configuration.
        train_samples: Synthetic training scenes.
        eval_samples: Held-out scenes every model is measured on.
        eval_batch_size: Batch for generation during evaluation.
        model: Network sizes (merger, generators, discriminator); the merger and generator kind
            are set per run.
        segmenter: How the small segmenter is trained.
        estimator: How the label estimator of the controllability metrics is trained.
        workers: DataLoader worker processes.
        threads: CPU threads (None: PyTorch's default). One thread is fastest on a busy 2-core machine.
        cache_scenes: Keep rendered scenes on disk (worth it when they are small and reused by
            every configuration; at 256x256 a scene takes 3.8 MB).
        expected: What the budget costs, in words.
        lambda_vgg: Weight of the VGG19 perceptual loss (on only when its weights file is given).
        lambda_l1: Weight of the pixel L1 reconstruction loss, the same for every row.
        averaged_checkpoints: The table and the paired comparisons use the mean over this many
            last measured checkpoints, never a single one (checkpoint-to-checkpoint swings of a
            GAN are as large as the gaps between rows).
    """

    name: str
    steps: int
    eval_every: int
    resolution: int
    batch_size: int
    seeds: tuple[int, ...]
    train_samples: int
    eval_samples: int
    eval_batch_size: int
    model: ModelConfig
    segmenter: SegmenterRecipe
    estimator: EstimatorRecipe = EstimatorRecipe()
    workers: int = 0
    threads: int | None = 1
    cache_scenes: bool = True
    expected: str = ""
    lambda_vgg: float = 10.0
    lambda_l1: float = 10.0
    averaged_checkpoints: int = 3

    def __post_init__(self) -> None:
        for name in (
            "steps",
            "eval_every",
            "resolution",
            "batch_size",
            "train_samples",
            "eval_samples",
            "averaged_checkpoints",
        ):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"budget {self.name!r}: {name} must be a positive int, got {value!r}")
        if not self.seeds:
            raise ValueError(f"budget {self.name!r} needs at least one seed")
        if self.eval_samples < 2:
            raise ValueError(f"budget {self.name!r}: FID needs at least 2 evaluation samples")

    def schedule(self) -> list[int]:
        """The steps at which FID is measured: every ``eval_every`` steps, and the last step.

        Example:
            >>> BUDGETS["smoke"].schedule()
            [1, 2]
        """
        steps = list(range(self.eval_every, self.steps, self.eval_every))
        return [*steps, self.steps]

    def averaged_steps(self) -> list[int]:
        """The last ``averaged_checkpoints`` steps of the schedule, whose mean the results report.

        Example:
            >>> BUDGETS["cpu-2h"].averaged_steps()
            [600, 800, 1000]
        """
        return self.schedule()[-self.averaged_checkpoints :]

    def to_dict(self) -> dict:
        return asdict(self)


_TINY = ModelConfig(
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
)
_SMALL = ModelConfig(
    dim=16,
    depth=2,
    heads=2,
    asap_lr_width=16,
    asap_lr_max_width=64,
    asap_lr_depth=2,
    asap_hr_width=16,
    asap_hr_depth=3,
    spade_ngf=8,
    ndf=16,
    n_layers_d=3,
)
_PAPER = PRESETS["paper"].model  # the training example's paper preset: one definition of the paper's sizes

# cpu-2h is cpu-hour run longer: only its steps, FID schedule and cost differ.
_CPU_HOUR = Budget(
    name="cpu-hour",
    steps=400,
    eval_every=80,
    resolution=32,
    batch_size=8,
    seeds=(0, 1, 2, 3, 4),
    train_samples=2048,
    eval_samples=256,
    eval_batch_size=32,
    model=_SMALL,
    segmenter=SegmenterRecipe(steps=1000, width=16, depth=3, batch_size=16, samples=2048),
    expected="about an hour for all eight rows of the quality study on 2 CPU cores (estimated)",
)

BUDGETS: dict[str, Budget] = {
    "smoke": Budget(
        name="smoke",
        steps=2,
        eval_every=1,
        resolution=32,  # SPADE needs sides divisible by 32
        batch_size=2,
        seeds=(0,),
        train_samples=8,
        eval_samples=8,
        eval_batch_size=8,
        model=_TINY,
        segmenter=SegmenterRecipe(steps=2, width=4, depth=2, batch_size=4, samples=8),
        estimator=EstimatorRecipe(steps=2, width=4, depth=1, batch_size=4, samples=8),
        cache_scenes=False,
        expected="seconds; checks the pipeline, its numbers mean nothing",
        lambda_vgg=0.0,
    ),
    "cpu-hour": _CPU_HOUR,
    "cpu-2h": replace(
        _CPU_HOUR,
        name="cpu-2h",
        steps=1000,
        eval_every=200,
        expected="about two hours on 2 CPU cores for the six ASAP-Net rows (estimated)",
    ),
    "paper": Budget(
        name="paper",
        steps=200_000,
        eval_every=20_000,
        resolution=256,
        batch_size=16,
        seeds=(0, 1, 2),
        train_samples=14_630,  # the paper's Taskonomy split: 14,630 / 3,619
        eval_samples=3_619,
        eval_batch_size=32,
        model=_PAPER,
        # 4,096 scenes of 256x256 held in memory take 3.5 GB; 14,630 would take 12 GB.
        segmenter=SegmenterRecipe(steps=20_000, width=32, depth=4, batch_size=16, samples=4_096),
        estimator=EstimatorRecipe(steps=20_000, width=32, depth=4, batch_size=16, samples=4_096),
        workers=12,  # rendering a 256x256 scene takes about 0.36 s of one core: data-bound below ~12 workers
        threads=None,
        cache_scenes=False,
        expected="one to two days per run on one GPU (rendering-bound); 24 runs for the quality table",
        lambda_l1=0.0,  # the paper's losses: adversarial, feature matching, VGG19
    ),
}


def resolve_budget(value: str | int) -> Budget:
    """A budget by name, or ``cpu-2h`` with ``value`` training steps per run.

    Raises:
        ValueError: An unknown name or a number below 1.

    Example:
        >>> b = resolve_budget("500")
        >>> b.name, b.steps, b.eval_every, b.resolution
        ('cpu-2h-500', 500, 100, 32)
    """
    if isinstance(value, str) and value in BUDGETS:
        return BUDGETS[value]
    try:
        steps = int(value)
    except (TypeError, ValueError):
        raise ValueError(f"--budget must be one of {sorted(BUDGETS)} or a number of steps, got {value!r}") from None
    if steps < 1:
        raise ValueError(f"--budget as a number is the training steps per run and must be >= 1, got {steps}")
    base = BUDGETS["cpu-2h"]
    return replace(
        base,
        name=f"{base.name}-{steps}",
        steps=steps,
        eval_every=max(1, steps // 5),
        expected=f"{base.name} settings with {steps} steps per run",
    )
