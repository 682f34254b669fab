"""The configuration of a training run: dataclasses, presets and the command line.

A run is fully described by :class:`RunConfig`, which is saved (as JSON) into every checkpoint,
so ``--resume`` rebuilds exactly the same models and data.
"""

from __future__ import annotations

import argparse
import math
from dataclasses import asdict, dataclass, field, fields, replace

__all__ = [
    "DataConfig",
    "ModelConfig",
    "OptimConfig",
    "TrainConfig",
    "RunConfig",
    "PRESETS",
    "parse_args",
    "check_config",
]

DATASETS = ("synthetic", "taskonomy", "cityscapes", "nyu")
MERGERS = ("tlam", "clam", "naive", "semantic")
GENERATORS = ("asap", "spade")
ADAM_IMPLS = ("default", "foreach", "fused")
CPU_ALLOCATORS = ("reuse", "system")


@dataclass
class DataConfig:
    """Which images and labels to train on."""

    dataset: str = "synthetic"
    data_root: str | None = None  # real datasets only
    resolution: int = 64  # image height; the width follows the dataset's aspect ratio
    labels: list[str] | None = None  # None: every label the dataset has
    train_samples: int = 4096  # synthetic only: size of the training set
    val_samples: int = 64  # synthetic only: held-out samples for pictures and evaluation
    workers: int = 0
    cache_dir: str | None = None  # synthetic only: keep rendered samples here (.npz) and read them back


@dataclass
class ModelConfig:
    """The label merger, the generator and the discriminator."""

    merger: str = "tlam"
    generator: str = "asap"
    dim: int = 32  # concept width (paper: 96)
    depth: int = 2  # transformer blocks (TLAM) or d->d blocks (CLAM) (paper: 3)
    heads: int = 2  # TLAM heads (paper: 3)
    drop: str = "zero"  # missing-label rule: "zero" (paper) or "exclude"
    # The baseline ladder of the studies. normalize_labels False feeds continuous labels to the
    # merger as they are (the paper's naive baseline normalises nothing); naive_presence False
    # leaves out NaiveConcat's presence channels (the paper's naive concatenates the labels only).
    normalize_labels: bool = True
    naive_presence: bool = True
    # ASAP-Net low-resolution stream and per-pixel MLPs (paper: 64, 1024, 7, 64, 5)
    asap_lr_width: int = 32
    asap_lr_max_width: int = 128
    asap_lr_depth: int = 2
    asap_hr_width: int = 32
    asap_hr_depth: int = 4
    # "hyper": ASAP-Net's init plus a working shared per-pixel MLP at step 0 (trains far faster);
    # "asap": ASAP-Net's init exactly (xavier, gain 0.02).
    asap_init: str = "hyper"
    spade_ngf: int = 16  # SPADE base width (paper: 64)
    ndf: int = 32  # discriminator base width (paper: 64)
    num_d: int = 2
    n_layers_d: int = 4


@dataclass
class OptimConfig:
    """Adam with two time-scale learning rates and the loss weights (paper Sec. 4)."""

    lr_g: float = 1e-4
    lr_d: float = 4e-4
    betas: tuple[float, float] = (0.0, 0.999)  # the paper's; SPADE's code uses (0.0, 0.9)
    lambda_feat: float = 10.0
    lambda_vgg: float = 10.0
    lambda_l1: float = 0.0  # pixel L1 (off in the paper; the demo uses it while VGG19 weights are absent)
    vgg_weights: str | None = None  # torchvision vgg19 state dict; else $LABEL_MERGE_VGG19; else off
    # Adam's implementation: "default" (PyTorch's choice: a loop over the parameters on CPU),
    # "foreach" (grouped tensor ops) or "fused" (one kernel). The same update; fused may round
    # differently in the last bits.
    adam_impl: str = "default"


@dataclass
class TrainConfig:
    """The loop: length, batch, sparsity, logging and where things go."""

    steps: int = 400
    batch_size: int = 8  # global: split across processes
    sparsity: float = 0.0  # region dropout probability S (paper: 0 or 0.5)
    seed: int = 0
    amp: bool | str = False  # bfloat16 autocast: True, False or "auto" (on where bf16 is native)
    # What "auto" became and why, filled in when the run starts and kept on resume (a resumed
    # run keeps its precision even on another machine).
    amp_resolved: bool | None = None
    amp_reason: str = ""
    channels_last: bool = False  # generator and discriminator in channels_last memory format
    compile: bool = False  # torch.compile the merger, the generator and the discriminator
    # One discriminator pass per step on [fake, real] serves both updates (changes numerics:
    # spectral norm's power iteration then runs once per step instead of twice).
    one_discriminator_pass: bool = False
    # CPU runs: "reuse" keeps freed memory in glibc's heap for the next step (no numerics
    # change), "system" leaves malloc as the process found it.
    cpu_allocator: str = "reuse"
    device: str = "auto"
    out: str = "runs/asap_tlam"
    log_every: int = 25
    sample_every: int = 100
    checkpoint_every: int = 200
    keep_checkpoints: int = 3


@dataclass
class RunConfig:
    """Everything a run needs; saved into each checkpoint."""

    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    train: TrainConfig = field(default_factory=TrainConfig)

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> RunConfig:
        optim = dict(d["optim"])
        optim["betas"] = tuple(optim["betas"])
        return cls(
            data=DataConfig(**d["data"]),
            model=ModelConfig(**d["model"]),
            optim=OptimConfig(**optim),
            train=TrainConfig(**d["train"]),
        )


# "demo" trains in minutes on a laptop CPU; "paper" is the paper's configuration (Sec. 4,
# supplementary B) with ASAP-Net's and SPADE's published sizes.
PRESETS = {
    # A pixel L1 loss stands in for the perceptual loss, whose VGG19 weights cannot ship. Batch 4
    # keeps the 400 steps under 8 minutes on 2 AVX2-only cores (benchmarks/main_job_time.py).
    "demo": RunConfig(optim=OptimConfig(lambda_l1=10.0), train=TrainConfig(batch_size=4)),
    "paper": RunConfig(
        data=DataConfig(resolution=256),
        model=ModelConfig(
            dim=96,
            depth=3,
            heads=3,
            asap_lr_width=64,
            asap_lr_max_width=1024,
            asap_lr_depth=7,
            asap_hr_width=64,
            asap_hr_depth=5,
            asap_init="asap",
            spade_ngf=64,
            ndf=64,
        ),
        train=TrainConfig(steps=200_000, batch_size=16, log_every=100, sample_every=2000, checkpoint_every=5000),
        optim=OptimConfig(lambda_l1=0.0),
    ),
}

# Flags that map one to one onto a config field: flag -> (section, field).
_FIELD_FLAGS = {
    "dataset": ("data", "dataset"),
    "data_root": ("data", "data_root"),
    "resolution": ("data", "resolution"),
    "labels": ("data", "labels"),
    "train_samples": ("data", "train_samples"),
    "val_samples": ("data", "val_samples"),
    "workers": ("data", "workers"),
    "merger": ("model", "merger"),
    "generator": ("model", "generator"),
    "dim": ("model", "dim"),
    "depth": ("model", "depth"),
    "heads": ("model", "heads"),
    "drop": ("model", "drop"),
    "normalize_labels": ("model", "normalize_labels"),
    "presence_channels": ("model", "naive_presence"),
    "asap_init": ("model", "asap_init"),
    "lr_g": ("optim", "lr_g"),
    "lr_d": ("optim", "lr_d"),
    "betas": ("optim", "betas"),
    "lambda_feat": ("optim", "lambda_feat"),
    "lambda_vgg": ("optim", "lambda_vgg"),
    "lambda_l1": ("optim", "lambda_l1"),
    "vgg_weights": ("optim", "vgg_weights"),
    "adam_impl": ("optim", "adam_impl"),
    "steps": ("train", "steps"),
    "batch_size": ("train", "batch_size"),
    "sparsity": ("train", "sparsity"),
    "seed": ("train", "seed"),
    "amp": ("train", "amp"),
    "channels_last": ("train", "channels_last"),
    "compile": ("train", "compile"),
    "one_discriminator_pass": ("train", "one_discriminator_pass"),
    "cpu_allocator": ("train", "cpu_allocator"),
    "device": ("train", "device"),
    "out": ("train", "out"),
    "log_every": ("train", "log_every"),
    "sample_every": ("train", "sample_every"),
    "checkpoint_every": ("train", "checkpoint_every"),
}


@dataclass(frozen=True)
class Bounds:
    """The values a numeric setting may take: an int or a finite float in an interval."""

    kind: type  # int or float
    low: float
    high: float = math.inf
    low_open: bool = False  # ``low`` itself is excluded
    high_open: bool = False  # ``high`` itself is excluded

    def describe(self) -> str:
        """E.g. ``an integer >= 1`` or ``a number in [0, 1)``."""
        what = "an integer" if self.kind is int else "a number"
        low, high = (
            (int(self.low), int(self.high)) if self.kind is int and self.high < math.inf else (self.low, self.high)
        )
        if high == math.inf:
            return f"{what} {'>' if self.low_open else '>='} {low:g}"
        left, right = "(" if self.low_open else "[", ")" if self.high_open else "]"
        return f"{what} in {left}{low}, {high}{right}"

    def admits(self, value) -> bool:
        if isinstance(value, bool) or not isinstance(value, int | float):
            return False
        if self.kind is int and not isinstance(value, int):
            return False
        if not math.isfinite(value):
            return False
        above = value > self.low if self.low_open else value >= self.low
        below = value < self.high if self.high_open else value <= self.high
        return above and below


_COUNT = Bounds(int, 1)
_FLOOR0 = Bounds(int, 0)
_WEIGHT = Bounds(float, 0)
_RATE = Bounds(float, 0, low_open=True)

# Every numeric setting, by (section, field), with its bounds. Loops with an interval of 0
# would divide by zero, and 0 steps would train nothing, so both are refused.
NUMERIC_BOUNDS: dict[tuple[str, str], Bounds] = {
    ("data", "resolution"): _COUNT,
    ("data", "train_samples"): _COUNT,
    ("data", "val_samples"): _COUNT,
    ("data", "workers"): _FLOOR0,
    ("model", "dim"): _COUNT,
    ("model", "depth"): _FLOOR0,
    ("model", "heads"): _COUNT,
    ("model", "asap_lr_width"): _COUNT,
    ("model", "asap_lr_max_width"): _COUNT,
    ("model", "asap_lr_depth"): _COUNT,
    ("model", "asap_hr_width"): _COUNT,
    ("model", "asap_hr_depth"): _COUNT,
    ("model", "spade_ngf"): _COUNT,
    ("model", "ndf"): _COUNT,
    ("model", "num_d"): _COUNT,
    ("model", "n_layers_d"): _COUNT,
    ("optim", "lr_g"): _RATE,
    ("optim", "lr_d"): _RATE,
    ("optim", "betas"): Bounds(float, 0, 1, high_open=True),  # each of the two
    ("optim", "lambda_feat"): _WEIGHT,
    ("optim", "lambda_vgg"): _WEIGHT,
    ("optim", "lambda_l1"): _WEIGHT,
    ("train", "steps"): _COUNT,
    ("train", "batch_size"): _COUNT,
    ("train", "sparsity"): Bounds(float, 0, 1),
    ("train", "seed"): Bounds(int, 0, 2**32 - 1),  # numpy's global generator takes 32 bits
    ("train", "log_every"): _COUNT,
    ("train", "sample_every"): _COUNT,
    ("train", "checkpoint_every"): _COUNT,
    ("train", "keep_checkpoints"): _COUNT,
}

_FLAG_OF = {where: flag for flag, where in _FIELD_FLAGS.items()}
_CHOICES = {
    ("data", "dataset"): DATASETS,
    ("model", "merger"): MERGERS,
    ("model", "generator"): GENERATORS,
    ("model", "drop"): ("zero", "exclude"),
    ("model", "asap_init"): ("hyper", "asap"),
    ("model", "normalize_labels"): (True, False),
    ("model", "naive_presence"): (True, False),
    ("optim", "adam_impl"): ADAM_IMPLS,
    ("train", "amp"): (True, False, "auto"),
    ("train", "amp_resolved"): (None, True, False),
    ("train", "channels_last"): (True, False),
    ("train", "compile"): (True, False),
    ("train", "one_discriminator_pass"): (True, False),
    ("train", "cpu_allocator"): CPU_ALLOCATORS,
}


def _is_one_of(value, allowed) -> bool:
    """``value in allowed``, except that True and False match only themselves (not 1 and 0)."""
    exact = (bool, type(None))
    return any(
        value is choice if isinstance(choice, exact) or isinstance(value, exact) else value == choice
        for choice in allowed
    )


def _setting_name(section: str, name: str) -> str:
    """The flag that sets a field (``--log-every``), or ``section.field`` for one without a flag."""
    flag = _FLAG_OF.get((section, name))
    return f"--{flag.replace('_', '-')}" if flag else f"{section}.{name}"


def check_config(config: RunConfig) -> None:
    """Check every setting of a run before anything is built.

    Args:
        config: The run configuration.

    Raises:
        ValueError: A setting out of range or not a known choice; the message names its flag
            (or ``section.field`` for a setting without one) and the allowed values.

    Example:
        >>> check_config(RunConfig(train=TrainConfig(log_every=0)))
        Traceback (most recent call last):
        ...
        ValueError: --log-every must be an integer >= 1, got 0
    """
    for (section, name), bounds in NUMERIC_BOUNDS.items():
        value = getattr(getattr(config, section), name)
        values = value if name == "betas" else (value,)
        if (name == "betas" and len(values) != 2) or not all(bounds.admits(v) for v in values):
            each = " (each of two)" if name == "betas" else ""
            raise ValueError(f"{_setting_name(section, name)} must be {bounds.describe()}{each}, got {value!r}")
    for (section, name), allowed in _CHOICES.items():
        value = getattr(getattr(config, section), name)
        if not _is_one_of(value, allowed):
            raise ValueError(f"{_setting_name(section, name)} must be one of {list(allowed)}, got {value!r}")
    m = config.model
    if m.merger == "tlam" and m.dim % m.heads:
        raise ValueError(f"--dim {m.dim} must be divisible by --heads {m.heads} (TLAM splits the width across heads)")
    if not m.naive_presence and m.merger != "naive":
        raise ValueError(f"--no-presence-channels applies to --merger naive only, not {m.merger!r}")


def _parsed(bounds: Bounds):
    """An argparse ``type`` that reads a number and checks it against ``bounds``."""

    def parse(text: str):
        try:
            value = bounds.kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected {bounds.describe()}, got {text!r}") from None
        if not bounds.admits(value):
            raise argparse.ArgumentTypeError(f"must be {bounds.describe()}, got {text}")
        return value

    return parse


def _amp_setting(text: str) -> bool | str:
    """``--amp`` on, off or auto: True, False or ``"auto"``."""
    settings = {"on": True, "off": False, "auto": "auto"}
    if text not in settings:
        raise argparse.ArgumentTypeError(f"expected one of {list(settings)}, got {text!r}")
    return settings[text]


def _type(flag: str):
    """The argparse ``type`` of a numeric flag."""
    return _parsed(NUMERIC_BOUNDS[_FIELD_FLAGS[flag]])


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="train_asap_tlam.py",
        description="Train an image generator conditioned on several per-pixel labels through a label merger "
        "(TLAM by default) on the built-in synthetic dataset or a real one. Run with torchrun for several "
        "processes or machines.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    p.add_argument(
        "--preset", choices=sorted(PRESETS), help="starting configuration (demo when not given; not with --resume)"
    )
    g = p.add_argument_group("data")
    g.add_argument("--dataset", choices=DATASETS, help="dataset (default: synthetic)")
    g.add_argument("--data-root", help="folder of a real dataset in its original layout")
    g.add_argument("--resolution", type=_type("resolution"), help="image height in pixels")
    g.add_argument("--labels", nargs="+", help="labels to condition on (default: all the dataset has)")
    g.add_argument("--train-samples", type=_type("train_samples"), help="synthetic training set size")
    g.add_argument("--val-samples", type=_type("val_samples"), help="synthetic held-out samples")
    g.add_argument("--workers", type=_type("workers"), help="DataLoader worker processes")
    g = p.add_argument_group("model")
    g.add_argument("--merger", choices=MERGERS, help="label merger (semantic: one-hot semantics only)")
    g.add_argument("--generator", choices=GENERATORS, help="generator backbone")
    g.add_argument("--dim", type=_type("dim"), help="concept width")
    g.add_argument("--depth", type=_type("depth"), help="merger depth")
    g.add_argument("--heads", type=_type("heads"), help="TLAM attention heads")
    g.add_argument("--drop", choices=("zero", "exclude"), help="how missing labels are dropped")
    g.add_argument("--asap-init", choices=("hyper", "asap"), help="ASAP-Net initialisation (see docs/training.md)")
    g.add_argument(
        "--normalize-labels",
        action=argparse.BooleanOptionalAction,
        help="normalise continuous labels with their specs' shift and scale (default); --no-normalize-labels "
        "feeds them as they are, as the paper's naive baseline does",
    )
    g.add_argument(
        "--presence-channels",
        action=argparse.BooleanOptionalAction,
        help="naive merger: append one presence channel per label (default); --no-presence-channels is the "
        "paper's naive concatenation",
    )
    g = p.add_argument_group("optimisation")
    g.add_argument("--lr-g", type=_type("lr_g"), help="generator (and merger) learning rate")
    g.add_argument("--lr-d", type=_type("lr_d"), help="discriminator learning rate")
    g.add_argument("--betas", type=_type("betas"), nargs=2, help="Adam betas (SPADE's code: 0 0.9)")
    g.add_argument("--lambda-feat", type=_type("lambda_feat"), help="feature matching weight")
    g.add_argument("--lambda-vgg", type=_type("lambda_vgg"), help="VGG19 perceptual loss weight")
    g.add_argument("--lambda-l1", type=_type("lambda_l1"), help="pixel L1 loss weight")
    g.add_argument("--vgg-weights", help="torchvision VGG19 state dict (.pth); else $LABEL_MERGE_VGG19")
    g.add_argument(
        "--adam-impl",
        choices=ADAM_IMPLS,
        help="Adam implementation: default (PyTorch's choice, a per-parameter loop on CPU), foreach or fused "
        "(one kernel; may round differently in the last bits)",
    )
    g = p.add_argument_group("run")
    g.add_argument("--steps", type=_type("steps"), help="training steps (generator + discriminator updates)")
    g.add_argument("--batch-size", type=_type("batch_size"), help="global batch size, split across processes")
    g.add_argument("--sparsity", type=_type("sparsity"), help="region dropout probability S in [0, 1]")
    g.add_argument("--seed", type=_type("seed"), help="random seed")
    g.add_argument(
        "--amp",
        nargs="?",
        const=True,
        type=_amp_setting,
        metavar="{on,off,auto}",
        help="bfloat16 autocast (changes numerics); auto turns it on only where bf16 is native (a CPU with "
        "AMX-BF16 or AVX512-BF16, or a GPU) and prints the choice at start-up; --amp alone means on",
    )
    g = p.add_argument_group("speed (see 'Speed on CPUs' in docs/training.md)")
    g.add_argument(
        "--channels-last",
        action=argparse.BooleanOptionalAction,
        help="generator and discriminator convolutions in channels_last memory format (other kernels: results "
        "differ in the last bits)",
    )
    g.add_argument(
        "--compile",
        action=argparse.BooleanOptionalAction,
        help="torch.compile the merger, generator and discriminator (compiles at the first step; fused "
        "kernels: results differ in the last bits)",
    )
    g.add_argument(
        "--one-discriminator-pass",
        action=argparse.BooleanOptionalAction,
        help="one discriminator forward per step serves both updates instead of two (changes numerics: "
        "spectral norm's power iteration runs once per step instead of twice, and both updates see the "
        "same normalised weights)",
    )
    g.add_argument(
        "--cpu-allocator",
        choices=CPU_ALLOCATORS,
        help="CPU runs: reuse (default) keeps freed memory in glibc's heap for the next step instead of "
        "returning it to the system, so large tensors do not page-fault every step (no numerics change); "
        "system leaves malloc as it is",
    )
    g.add_argument("--device", help="auto, cpu, cuda or cuda:N")
    g.add_argument("--out", help="output folder (checkpoints, samples, logs)")
    g.add_argument("--log-every", type=_type("log_every"), help="steps between log lines")
    g.add_argument("--sample-every", type=_type("sample_every"), help="steps between sample grids")
    g.add_argument("--checkpoint-every", type=_type("checkpoint_every"), help="steps between checkpoints")
    g.add_argument(
        "--resume",
        nargs="?",
        const="latest",
        help="resume from a checkpoint file, or (no value) from the newest one in --out",
    )
    return p


DEFAULT_PRESET = "demo"


def parse_args(argv: list[str] | None = None) -> tuple[RunConfig, argparse.Namespace]:
    """Parse the command line into a :class:`RunConfig` (preset, then the flags given).

    Every numeric flag is checked here, so a bad value stops the program (exit status 2) with a
    message that names the flag before anything is built.
    """
    parser = build_parser()
    args = parser.parse_args(argv)
    config = apply_flags(PRESETS[args.preset or DEFAULT_PRESET], args)
    if args.resume is None:  # a resumed run applies the flags to its saved configuration instead
        try:
            check_config(config)
        except ValueError as err:  # a combination of flags, e.g. --dim and --heads
            parser.error(str(err))
    return config, args


def apply_flags(config: RunConfig, args: argparse.Namespace) -> RunConfig:
    """``config`` with every flag that was given on the command line applied."""
    sections = {f.name: getattr(config, f.name) for f in fields(config)}
    for flag, (section, name) in _FIELD_FLAGS.items():
        value = getattr(args, flag, None)
        if value is not None:
            sections[section] = replace(sections[section], **{name: tuple(value) if name == "betas" else value})
    return RunConfig(**sections)


def changed_by_flags(config: RunConfig, args: argparse.Namespace) -> list[str]:
    """The flags given on the command line whose value differs from ``config``'s."""
    changed = []
    for flag, (section, name) in _FIELD_FLAGS.items():
        value = getattr(args, flag, None)
        if value is not None and (tuple(value) if name == "betas" else value) != getattr(
            getattr(config, section), name
        ):
            changed.append(flag)
    return changed
