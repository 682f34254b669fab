"""Time the training step on the CPU: today's code path against each speed lever and all together.

The timed unit is ``Trainer.train_step`` (merger + generator update, then discriminator update)
on batches rendered before timing starts, so scene rendering is not timed. Two settings:

- ``demo``: the README's main job, ``python examples/train_asap_tlam.py`` (64x64, the demo's
  batch and network sizes), on 2 threads;
- ``study``: the studies' CPU budgets (32x32, batch 8, the ``cpu-hour``/``cpu-2h`` network
  sizes and losses), on 1 thread as the studies run;

each for every merger (tlam, clam, naive) and both generators (asap, spade). Per case, one
trainer per variant is built from the same seed: ``baseline`` (today's defaults), each lever
alone (``torch.compile`` alone for TLAM only: each compile takes a minute or more; bf16 alone
only where ``--amp auto`` turns it on), and ``all`` (every lever of ``--new`` together).
Variants are timed round-robin, the order rotated every repeat, so a change in the machine's
load hits them all alike; each step is timed on its own and the medians are compared
(ratio = variant / baseline, below 1 is faster).
``torch.compile``'s first step (its compile time) is reported apart and charged to a 400-step
run in ``amortised_s``.

Also measured: the TLAM reference forward+backward at the demo size, its GFLOP/s and the share
of the CPU's fp32 peak (estimated from the cores, the clock and the vector width in
``/proc/cpuinfo``, see ``examples/training/cpu.py``).

Usage (from the repository root, on an otherwise idle machine)::

    python benchmarks/bench_train_step.py          # all: benchmarks/results/train_step_<cpu>.{json,md,png}
    python benchmarks/bench_train_step.py --quick  # every case against all levers; levers alone for TLAM + ASAP
    python benchmarks/bench_train_step.py --smoke  # tiny sizes, 2 repeats, into a temporary folder (the tests)
    ATEN_CPU_CAPABILITY=avx2 ONEDNN_MAX_CPU_ISA=AVX2 MKL_ENABLE_INSTRUCTIONS=AVX2 \
        python benchmarks/bench_train_step.py --quick   # AVX2 code paths: train_step_<cpu>_avx2cap.*
"""

from __future__ import annotations

import sys
from pathlib import Path

if __package__ in (None, ""):  # run as a script: make the repository importable
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import argparse  # noqa: E402
import os  # noqa: E402
import re  # noqa: E402
import statistics  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402
import warnings  # noqa: E402
from collections.abc import Callable  # noqa: E402
from dataclasses import dataclass, field, replace  # noqa: E402

import torch  # noqa: E402
from torch.utils.data import default_collate  # noqa: E402

from benchmarks.bench_merger import model_flops  # noqa: E402
from examples.studies.budgets import BUDGETS  # noqa: E402
from examples.studies.environment import machine_info, utc_now, write_json  # noqa: E402
from examples.training.config import CPU_ALLOCATORS, PRESETS, ModelConfig, RunConfig  # noqa: E402
from examples.training.cpu import fp32_lanes_per_fma, fp32_peak_gflops, read_cpu_info, resolve_amp  # noqa: E402
from examples.training.loop import Trainer  # noqa: E402
from label_merge import TLAM  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "results"
MERGERS = ("tlam", "clam", "naive")
GENERATORS = ("asap", "spade")
RUN_STEPS = 400  # the README job's length, over which compile time is charged


# ----------------------------------------------------------------------------- what is timed


@dataclass(frozen=True)
class Setting:
    """One training configuration the step is timed at."""

    name: str
    resolution: int
    batch_size: int
    threads: int
    model: ModelConfig
    lambda_l1: float
    cpu_allocator: str = "reuse"  # process-wide, so the same for every variant (see --cpu-allocator)

    def run_config(self, merger: str, generator: str, out: str) -> RunConfig:
        """The demo preset with this setting's sizes, losses and the given merger and generator."""
        demo = PRESETS["demo"]
        return replace(
            demo,
            data=replace(demo.data, resolution=self.resolution, train_samples=4 * self.batch_size, val_samples=4),
            model=replace(self.model, merger=merger, generator=generator),
            optim=replace(demo.optim, lambda_l1=self.lambda_l1),
            train=replace(
                demo.train, batch_size=self.batch_size, device="cpu", out=out, cpu_allocator=self.cpu_allocator
            ),
        )


def settings(smoke: bool) -> list[Setting]:
    """The demo and study settings; in smoke mode both at toy sizes (their numbers mean nothing)."""
    study = BUDGETS["cpu-hour"]
    if smoke:
        tiny = BUDGETS["smoke"].model
        return [Setting("demo", 32, 2, 2, tiny, 10.0), Setting("study", 32, 2, 1, tiny, 10.0)]
    demo = PRESETS["demo"]
    return [
        Setting("demo", 64, demo.train.batch_size, 2, demo.model, demo.optim.lambda_l1),
        Setting("study", study.resolution, study.batch_size, 1, study.model, study.lambda_l1),
    ]


# Each lever as a change of the run configuration; "baseline" changes nothing.
LEVERS: dict[str, Callable[[RunConfig], RunConfig]] = {
    "foreach_adam": lambda c: replace(c, optim=replace(c.optim, adam_impl="foreach")),
    "fused_adam": lambda c: replace(c, optim=replace(c.optim, adam_impl="fused")),
    "channels_last": lambda c: replace(c, train=replace(c.train, channels_last=True)),
    "one_d_pass": lambda c: replace(c, train=replace(c.train, one_discriminator_pass=True)),
    "bf16_auto": lambda c: replace(c, train=replace(c.train, amp="auto")),
    "compile": lambda c: replace(c, train=replace(c.train, compile=True)),
}
DEFAULT_NEW = ("fused_adam", "channels_last", "one_d_pass", "bf16_auto", "compile")


def with_levers(config: RunConfig, levers: tuple[str, ...]) -> RunConfig:
    for lever in levers:
        config = LEVERS[lever](config)
    return config


@dataclass
class Variant:
    """One code path of a case: its trainer and every step time measured on it."""

    name: str
    levers: tuple[str, ...]
    trainer: Trainer
    first_step_s: float = 0.0
    step_s: list[float] = field(default_factory=list)

    def summary(self, baseline_median: float | None) -> dict:
        median = statistics.median(self.step_s)
        # The first step holds torch.compile's work (and the allocator's first growth): charge
        # what it took beyond a normal step to a whole run.
        extra = max(self.first_step_s - median, 0.0)
        return {
            "levers": list(self.levers),
            "amp": self.trainer.config.train.amp_reason,
            "median_s": median,
            "first_step_s": self.first_step_s,
            "amortised_s": median + extra / RUN_STEPS,
            "ratio": median / baseline_median if baseline_median else 1.0,
            "step_s": self.step_s,
        }


def rendered_batches(trainer: Trainer, count: int) -> tuple[list[dict], float]:
    """``count`` training batches, rendered before the steps are timed, and the seconds a batch took.

    A run with ``--workers 0`` (the demo's) renders each batch between two steps, so this time
    adds to every step of a real run; it tells whether loading in worker processes could pay.
    """
    size = trainer.per_rank_batch
    started = time.perf_counter()
    samples = [trainer.train_set[i % len(trainer.train_set)] for i in range(count * size)]
    batches = [default_collate(samples[i * size : (i + 1) * size]) for i in range(count)]
    return batches, (time.perf_counter() - started) / count


def timed_step(trainer: Trainer, batch: dict) -> float:
    started = time.perf_counter()
    trainer.train_step(batch)
    return time.perf_counter() - started


def time_case(
    setting: Setting, merger: str, generator: str, variants: dict[str, tuple[str, ...]], plan: Plan, out: Path
) -> dict:
    """Every variant of one (setting, merger, generator), interleaved.

    Returns:
        ``({variant: summary}, seconds to render one batch)``.
    """
    torch.set_num_threads(setting.threads)
    if any("compile" in levers for levers in variants.values()):
        # Each case compiles from scratch: its first step then holds its own compile time, and
        # the compiled code of earlier cases cannot fill Dynamo's per-function cache (past its
        # limit, Dynamo would silently run later cases eagerly).
        torch._dynamo.reset()
    built = []
    for name, levers in variants.items():
        config = with_levers(setting.run_config(merger, generator, str(out / name)), levers)
        built.append(Variant(name, levers, Trainer(config, progress=False)))
    batches, render_s = rendered_batches(built[0].trainer, plan.batches)
    for variant in built:
        variant.first_step_s = timed_step(variant.trainer, batches[0])
        for i in range(plan.warmup):
            variant.trainer.train_step(batches[(i + 1) % len(batches)])
    for repeat in range(plan.repeats):
        shift = repeat % len(built)
        for variant in built[shift:] + built[:shift]:  # rotate who goes first
            for i in range(plan.steps_per_repeat):
                variant.step_s.append(timed_step(variant.trainer, batches[(repeat + i) % len(batches)]))
    base = statistics.median(built[0].step_s)
    return {v.name: v.summary(base) for v in built}, render_s


# ----------------------------------------------------------------------------- TLAM vs the peak


def cpu_clock_ghz() -> tuple[float | None, str]:
    """The highest clock this CPU reports, and where it was read."""
    try:
        khz = int(Path("/sys/devices/system/cpu/cpu0/cpufreq/cpuinfo_max_freq").read_text())
        return khz / 1e6, "cpufreq cpuinfo_max_freq"
    except (OSError, ValueError):
        pass
    info = read_cpu_info()
    if info.nominal_ghz:
        return info.nominal_ghz, "the model name"
    if info.mhz:
        return info.mhz / 1000, "cpu MHz in /proc/cpuinfo (the current clock; turbo may be higher)"
    return None, "not reported"


def tlam_peak_share(setting: Setting, threads: int, repeats: int) -> dict:
    """The TLAM reference forward+backward at ``setting``'s size: GFLOP/s and share of the fp32 peak."""
    torch.set_num_threads(threads)
    trainer_config = setting.run_config("tlam", "asap", tempfile.mkdtemp(prefix="bench_tlam_"))
    m = trainer_config.model
    from examples.training.builders import build_datasets, label_specs_of

    train_set, _ = build_datasets(trainer_config.data, seed=0)
    specs = label_specs_of(train_set)
    merger = TLAM(specs, dim=m.dim, depth=m.depth, heads=m.heads, drop=m.drop)
    batch = default_collate([train_set[i] for i in range(setting.batch_size)])

    def forward_backward() -> float:
        started = time.perf_counter()
        merger(batch["labels"], batch["masks"]).float().square().mean().backward()
        return time.perf_counter() - started

    forward_backward()  # warm-up
    seconds = statistics.median(forward_backward() for _ in range(repeats))
    shares = operator_shares(forward_backward)
    pixels = setting.batch_size * setting.resolution * setting.resolution
    hidden = merger.blocks[0].mlp.fc1.out_features if m.depth else 0
    flops = model_flops(pixels, training=True, tokens=len(specs), dim=m.dim, hidden=hidden, depth=m.depth)
    info = read_cpu_info()
    if avx2_capped():  # the capped libraries use AVX2's 8 fp32 lanes, whatever the CPU has
        info = replace(info, flags=info.flags - {"avx512f"})
    ghz, clock_source = cpu_clock_ghz()
    peak = fp32_peak_gflops(info, threads, ghz) if ghz else None
    achieved = flops / seconds / 1e9
    # If every matrix product ran at the peak and everything else took the time it takes now:
    ceiling = flops / (seconds * (1 - shares["matrix products"]) + flops / (peak * 1e9)) / 1e9 if peak else None
    return {
        "pixels": pixels,
        "tokens": len(specs),
        "dim": m.dim,
        "depth": m.depth,
        "hidden": hidden,
        "flop": flops,
        "median_s": seconds,
        "gflops": achieved,
        "threads": threads,
        "peak_gflops": peak,
        "peak_share": achieved / peak if peak else None,
        "operator_shares": shares,
        "ceiling_gflops": ceiling,
        "ceiling_share": ceiling / peak if peak else None,
        "peak_formula": (
            f"{threads} cores x {ghz} GHz ({clock_source}) x {fp32_lanes_per_fma(info)} fp32 lanes x "
            "2 FLOP per FMA x 2 FMA units (assumed; see examples/training/cpu.py)"
        ),
    }


OPERATOR_KINDS = {  # torch.profiler operator names -> the kind of work
    "matrix products": ("aten::mm", "aten::addmm", "aten::bmm", "aten::baddbmm"),
    "attention": ("aten::_scaled_dot_product_flash_attention_for_cpu",
                  "aten::_scaled_dot_product_flash_attention_for_cpu_backward"),
}  # fmt: skip


def operator_shares(run: Callable[[], object]) -> dict[str, float]:
    """Shares of ``run``'s operator time (torch.profiler, self CPU time) by :data:`OPERATOR_KINDS`.

    The rest ("other": normalisation, GELU, residual sums, layout copies, reductions) streams
    whole token tensors through memory with little arithmetic per byte.
    """
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU]) as prof:
        run()
    times = {event.key: event.self_cpu_time_total for event in prof.key_averages()}
    total = sum(times.values())
    shares = {kind: sum(times.get(name, 0) for name in names) / total for kind, names in OPERATOR_KINDS.items()}
    return {**shares, "other": 1 - sum(shares.values())}


# ----------------------------------------------------------------------------- where the step goes


def step_breakdown(setting: Setting, repeats: int, out: Path) -> dict:
    """How a TLAM + ASAP-Net step divides: the merger, the generator, the rest (discriminator, Adam).

    Times, interleaved on one trainer and one batch: the merger's forward and backward alone,
    the merger and the generator's forward and backward (the generator's whole output through
    a stand-in loss), and the full training step. Medians; the shares follow by difference.
    """
    torch.set_num_threads(setting.threads)
    trainer = Trainer(setting.run_config("tlam", "asap", str(out)), progress=False)
    batch = rendered_batches(trainer, 1)[0][0]
    masks = trainer._masks(batch)
    generator = trainer.generator

    def merger_only() -> None:
        generator.merger(batch["labels"], masks).float().square().mean().backward()

    def merger_and_generator() -> None:
        fake, _ = generator(batch["labels"], masks)
        fake.float().square().mean().backward()

    parts = {
        "merger": merger_only,
        "merger_and_generator": merger_and_generator,
        "step": lambda: trainer.train_step(batch),
    }
    seconds: dict[str, list[float]] = {name: [] for name in parts}
    for run in parts.values():  # warm-up
        run()
    for _ in range(repeats):
        for name, run in parts.items():
            started = time.perf_counter()
            run()
            seconds[name].append(time.perf_counter() - started)
    median = {name: statistics.median(values) for name, values in seconds.items()}
    step = median["step"]
    return {
        "setting": setting.name,
        "threads": setting.threads,
        "median_s": median,
        "share": {
            "merger": median["merger"] / step,
            "generator": (median["merger_and_generator"] - median["merger"]) / step,
            "discriminator_adam_rest": (step - median["merger_and_generator"]) / step,
        },
        "seconds": seconds,
    }


# ----------------------------------------------------------------------------- the plan


@dataclass(frozen=True)
class Plan:
    """How much is measured: which cases, which variants, how many steps."""

    mode: str
    repeats: int
    steps_per_repeat: int
    warmup: int
    batches: int
    new: tuple[str, ...]
    levers_for: Callable[[str, str], tuple[str, ...]]  # (merger, generator) -> levers timed alone


# The variables that cap PyTorch's, oneDNN's and MKL's code paths at AVX2 (read at start-up),
# as benchmarks/main_job_time.py sets them: an AVX2-only CPU's instructions on this one.
AVX2_CAP = {"ATEN_CPU_CAPABILITY": "avx2", "ONEDNN_MAX_CPU_ISA": "AVX2", "MKL_ENABLE_INSTRUCTIONS": "AVX2"}


def avx2_capped() -> bool:
    """Whether this process runs with :data:`AVX2_CAP` (then bf16 has no native path here either)."""
    return all(os.environ.get(name, "").lower() == value.lower() for name, value in AVX2_CAP.items())


def levers_that_apply() -> tuple[str, ...]:
    """Every lever, less bf16 autocast where ``--amp auto`` turns it off (it would time the baseline again).

    Under the AVX2 cap bf16 is left out too: ``auto`` reads the CPU's flags, not the cap, and
    would time bf16 emulated through fp32, which an AVX2-only CPU's ``auto`` never runs. So is
    ``torch.compile``: under the cap its compiled steps failed or gave NaN losses on an AVX-512
    Xeon (torch 2.13), an artefact of capping one process's libraries rather than a measurement
    of an AVX2 CPU.
    """
    bf16_on, _ = resolve_amp("auto", torch.device("cpu"))
    capped = avx2_capped()
    left_out = {"compile"} if capped else set()
    if not bf16_on or capped:
        left_out.add("bf16_auto")
    return tuple(lever for lever in LEVERS if lever not in left_out)


def make_plan(mode: str, new: tuple[str, ...]) -> Plan:
    every = levers_that_apply()
    if mode == "full":
        # Compiling costs a minute or more per variant: compile alone is timed for TLAM only
        # (``all`` compiles in every case when it is among --new).
        without_compile = tuple(lever for lever in every if lever != "compile")
        return Plan(
            mode,
            repeats=5,
            steps_per_repeat=3,
            warmup=2,
            batches=4,
            new=new,
            levers_for=lambda m, g: every if m == "tlam" else without_compile,
        )
    if mode == "quick":
        return Plan(
            mode,
            repeats=3,
            steps_per_repeat=2,
            warmup=1,
            batches=2,
            new=new,
            levers_for=lambda m, g: every if (m, g) == ("tlam", "asap") else (),
        )
    # Smoke: torch.compile takes minutes to compile; leave it out unless asked for.
    smoke_new = tuple(lever for lever in new if lever != "compile")
    smoke_levers = tuple(lever for lever in LEVERS if lever != "compile")  # bf16 too: the script is checked
    return Plan(
        mode, repeats=2, steps_per_repeat=1, warmup=0, batches=1, new=smoke_new, levers_for=lambda m, g: smoke_levers
    )


def variants_of(plan: Plan, merger: str, generator: str) -> dict[str, tuple[str, ...]]:
    variants = {"baseline": ()}
    variants.update({lever: (lever,) for lever in plan.levers_for(merger, generator)})
    variants["all"] = plan.new
    return variants


# ----------------------------------------------------------------------------- reports


def lever_table(result: dict, levers: list[str]) -> list[str]:
    """Markdown rows: each lever's ratio to the baseline, per case that timed levers alone."""
    lines = ["", "Each lever alone (ratio to baseline; compile: after its first step, which is listed apart):", ""]
    lines += ["| setting | merger | generator | " + " | ".join(levers) + " | all |"]
    lines += ["| --- " * (4 + len(levers)) + "|"]
    for case in result["cases"]:
        v = case["variants"]
        if not any(name in v for name in levers):
            continue
        cells = [f"{v[name]['ratio']:.2f}" if name in v else "" for name in levers]
        lines.append(
            f"| {case['setting']} | {case['merger']} | {case['generator']} | {' | '.join(cells)} | "
            f"{v['all']['ratio']:.2f} |"
        )
    return lines


def markdown(result: dict) -> str:
    """The main table (baseline against all levers, every case) and the per-lever table."""
    cpu = result["cpu"]
    cap = result.get("avx2_cap")
    capped = (
        f"**capped at AVX2 code paths** ({', '.join(f'{k}={v}' for k, v in cap.items())}; the clock and caches "
        "are this CPU's own; bf16 and torch.compile left out); "
        if cap
        else ""
    )
    lines = [
        f"# Training step on the CPU: {cpu['model']}",
        "",
        f"Vector extensions: {', '.join(cpu['flags']) or 'none read'}; native bf16: {cpu['native_bf16']}; "
        f"{capped}torch {result['torch']}; mode {result['mode']}; `all` = {', '.join(result['new'])}; "
        f"`--amp auto` here: {result['amp_auto']}; `--cpu-allocator` {result.get('cpu_allocator', 'system')} "
        "for every variant. Medians of single steps; ratio = new / baseline (below 1 is faster). Written by "
        "`python benchmarks/bench_train_step.py`.",
        "",
        "| setting | threads | merger | generator | baseline s/step | all s/step | all, 400-step amortised | ratio "
        "| rendering s/batch (not in the step) |",
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for case in result["cases"]:
        v = case["variants"]
        lines.append(
            f"| {case['setting']} | {case['threads']} | {case['merger']} | {case['generator']} | "
            f"{v['baseline']['median_s']:.3f} | {v['all']['median_s']:.3f} | {v['all']['amortised_s']:.3f} | "
            f"{v['all']['ratio']:.2f} | {case['render_s_per_batch']:.3f} |"
        )
    levers = [name for name in LEVERS if any(name in c["variants"] for c in result["cases"])]
    if levers:
        lines += lever_table(result, levers)
    compiled = [c for c in result["cases"] if "compile" in c["variants"]]
    if compiled:
        lines += [
            "",
            "torch.compile's first step (compile included), s: "
            + ", ".join(
                f"{c['setting']}/{c['merger']}/{c['generator']} {c['variants']['compile']['first_step_s']:.1f}"
                for c in compiled
            ),
        ]
    if result.get("breakdown"):
        lines += [
            "",
            "Where a TLAM + ASAP-Net step goes (baseline; medians of interleaved timings, shares by difference):",
            "",
            "| setting | threads | step s | merger fwd+bwd | generator fwd+bwd | discriminator, Adam, losses |",
            "| --- | --- | --- | --- | --- | --- |",
        ]
        for b in result["breakdown"]:
            share = b["share"]
            lines.append(
                f"| {b['setting']} | {b['threads']} | {b['median_s']['step']:.3f} | {100 * share['merger']:.0f}% | "
                f"{100 * share['generator']:.0f}% | {100 * share['discriminator_adam_rest']:.0f}% |"
            )
    t = result.get("tlam_peak")
    if t:
        share = f"{100 * t['peak_share']:.1f}%" if t["peak_share"] is not None else "unknown (no clock read)"
        lines += [
            "",
            f"TLAM reference forward+backward at the demo size ({t['pixels']} pixels, {t['tokens']} tokens, "
            f"width {t['dim']}, {t['depth']} blocks): {t['median_s'] * 1000:.1f} ms, {t['gflops']:.1f} GFLOP/s, "
            f"{share} of the fp32 peak, estimated as {t['peak_formula']}.",
        ]
        if t.get("operator_shares"):
            kinds = ", ".join(f"{kind} {100 * value:.0f}%" for kind, value in t["operator_shares"].items())
            ceiling = (
                f"{t['ceiling_gflops']:.1f} GFLOP/s ({100 * t['ceiling_share']:.0f}% of the peak)"
                if t["ceiling_gflops"]
                else "unknown"
            )
            lines += [
                "",
                f"Its operator time (torch.profiler): {kinds}. Were every matrix product at the peak and the rest as "
                f"it is, it would reach {ceiling}: the peak target needs the other operators fused into the products.",
            ]
    return "\n".join(lines) + "\n"


def plot(result: dict, path: Path) -> None:
    """Bars of the ratio all/baseline per case, one panel per setting."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = sorted({c["setting"] for c in result["cases"]})
    fig, axes = plt.subplots(1, len(names), figsize=(5 * len(names), 3.5), squeeze=False)
    for ax, name in zip(axes[0], names, strict=True):
        cases = [c for c in result["cases"] if c["setting"] == name]
        labels = [f"{c['merger']}\n{c['generator']}" for c in cases]
        ax.bar(labels, [c["variants"]["all"]["ratio"] for c in cases], color="tab:blue")
        ax.axhline(1.0, color="grey", linewidth=0.8)
        ax.axhline(0.5, color="tab:green", linewidth=0.8, linestyle="--")
        ax.set_title(f"{name} ({cases[0]['threads']} thread(s))")
        ax.set_ylabel("step time, all levers / baseline")
    fig.suptitle(result["cpu"]["model"], fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def result_stem(cpu_model: str) -> str:
    """``train_step_<cpu>``: the CPU model in lower case, runs of other characters as one dash."""
    return "train_step_" + re.sub(r"[^a-z0-9]+", "-", cpu_model.lower()).strip("-")


# ----------------------------------------------------------------------------- main


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    mode = p.add_mutually_exclusive_group()
    mode.add_argument("--quick", action="store_true", help="fewer repeats; each lever alone for TLAM + ASAP-Net only")
    mode.add_argument("--smoke", action="store_true", help="tiny sizes, 2 repeats, no compile (checks the script)")
    p.add_argument(
        "--new", nargs="+", choices=tuple(LEVERS), default=list(DEFAULT_NEW), help="the levers of the 'all' variant"
    )
    p.add_argument("--settings", nargs="+", choices=("demo", "study"), default=["demo", "study"])
    p.add_argument("--mergers", nargs="+", choices=MERGERS, default=list(MERGERS))
    p.add_argument("--generators", nargs="+", choices=GENERATORS, default=list(GENERATORS))
    p.add_argument(
        "--cpu-allocator",
        choices=CPU_ALLOCATORS,
        default="reuse",
        help="the training runs' --cpu-allocator, for every variant (it is process-wide; "
        "benchmarks/main_job_time.py compares the two in fresh processes)",
    )
    p.add_argument(
        "--out-dir", type=Path, help="where the results go (default: benchmarks/results, smoke: a temporary folder)"
    )
    return p


def main(argv: list[str] | None = None) -> dict:
    args = build_parser().parse_args(argv)
    if "fused_adam" in args.new and "foreach_adam" in args.new:
        raise SystemExit("--new: fused_adam and foreach_adam are two implementations of Adam; pick one")
    mode = "smoke" if args.smoke else "quick" if args.quick else "full"
    capped = avx2_capped()
    plan = make_plan(mode, tuple(lever for lever in args.new if lever in levers_that_apply()))
    out_dir = args.out_dir or (Path(tempfile.mkdtemp(prefix="bench_train_step_")) if args.smoke else RESULTS)
    scratch = Path(tempfile.mkdtemp(prefix="bench_train_step_runs_"))
    info = read_cpu_info()
    result = {
        "created": utc_now(),
        "mode": mode,
        "machine": machine_info("cpu"),
        "cpu": {**info.to_dict(), "logical_cpus": os.cpu_count()},
        "torch": torch.__version__,
        "mkldnn": torch.backends.mkldnn.is_available(),
        "new": list(plan.new),
        "amp_auto": resolve_amp("auto", torch.device("cpu"))[1],
        "cpu_allocator": args.cpu_allocator,
        "avx2_cap": AVX2_CAP if capped else None,
        "plan": {"repeats": plan.repeats, "steps_per_repeat": plan.steps_per_repeat, "warmup": plan.warmup},
        "cases": [],
    }
    suffix = ("_avx2cap" if capped else "") + ("_smoke" if args.smoke else "")
    path = out_dir / f"{result_stem(info.model)}{suffix}.json"
    warnings.filterwarnings("ignore", message=".*VGG19.*")  # the demo's perceptual loss is off without weights
    chosen = [replace(s, cpu_allocator=args.cpu_allocator) for s in settings(args.smoke) if s.name in args.settings]
    for setting in chosen:
        for merger in args.mergers:
            for generator in args.generators:
                started = time.perf_counter()
                variants = variants_of(plan, merger, generator)
                where = scratch / f"{setting.name}_{merger}_{generator}"
                timed, render_s = time_case(setting, merger, generator, variants, plan, where)
                result["cases"].append(
                    {
                        "setting": setting.name,
                        "resolution": setting.resolution,
                        "batch_size": setting.batch_size,
                        "threads": setting.threads,
                        "merger": merger,
                        "generator": generator,
                        "render_s_per_batch": render_s,
                        "variants": timed,
                    }
                )
                write_json(path, result)  # after every case: a run cut short keeps what it measured
                print(
                    f"{setting.name:5s} {merger:5s} {generator:5s}: baseline {timed['baseline']['median_s']:.3f} s, "
                    f"all {timed['all']['median_s']:.3f} s (ratio {timed['all']['ratio']:.2f}); "
                    f"{time.perf_counter() - started:.0f} s to measure",
                    flush=True,
                )
    result["breakdown"] = [
        step_breakdown(setting, plan.repeats * plan.steps_per_repeat, scratch / f"breakdown_{setting.name}")
        for setting in chosen
    ]
    write_json(path, result)
    demo = next((s for s in chosen if s.name == "demo"), None)
    if demo is not None:
        result["tlam_peak"] = tlam_peak_share(demo, demo.threads, repeats=plan.repeats * plan.steps_per_repeat)
    write_json(path, result)
    path.with_suffix(".md").write_text(markdown(result))
    plot(result, path.with_suffix(".png"))
    print(markdown(result))
    print(f"wrote {path}, {path.with_suffix('.md')} and {path.with_suffix('.png')}")
    return result


if __name__ == "__main__":
    main()
