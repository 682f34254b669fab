"""Per-label guidance: does raising a label's guidance scale raise that label's controllability?

For each training seed, the ControlNet with TLAM of ``examples/train_controlnet_tlam.py`` is
trained with that script's own settings (tiny pixel-space UNet trained together with it, region
dropout then whole-label dropout, and 10% of the images with no labels at all, so the model has
seen one label dropped and every label dropped, the branches guidance evaluates). Held-out synthetic scenes
(the same for every seed) with 50% region-sparse labels are then generated with classifier-free
guidance ``--guidance-scale`` (its unconditional branch has no labels) and, one label at a time,
a per-label scale from ``--scales`` (``label_guidance={label: s}``, composed by
:func:`label_merge.diffusers.compose_label_guidance` from a pass with the label dropped; the
branches are those of :func:`label_merge.diffusers.guidance_branch_masks`). The initial noise is
the same across scales, so every comparison is paired per scene.

The project's label estimator (``examples.metrics.controllability``, trained and cached as the
training example does) re-reads every label from the images; each label is scored on the pixels
where it was given. For each label and scale: the mean over seeds and scenes with a two-level
bootstrap 95% interval, and the paired difference to scale 0 (plain guidance) with its interval;
a verdict only where the interval excludes zero.

Cost: each denoising step evaluates the UNet and the ControlNet on ``2 + 1`` branches per image
(unconditional, conditional, the label dropped) for a non-zero scale, 2 at scale 0.

Writes ``label_guidance.json`` (settings, machine, per-seed per-scene values), ``.md`` (the table)
and ``.png`` (one curve per label) under ``--results-dir``.

Usage (from the repository root)::

    python benchmarks/label_guidance.py                    # 5 seeds, 32 scenes, 600 training steps each
    python benchmarks/label_guidance.py --smoke            # the pipeline in seconds; numbers mean nothing
"""

from __future__ import annotations

import sys
from pathlib import Path

if __package__ in (None, ""):  # run as a script: make the repository importable
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import argparse  # noqa: E402
import time  # noqa: E402

import numpy as np  # noqa: E402
import torch  # noqa: E402

from examples.datasets.synthetic import SyntheticDataset  # noqa: E402
from examples.metrics.controllability import HIGHER_IS_BETTER, label_consistency  # noqa: E402
from examples.metrics.estimator_training import EstimatorRecipe, obtain_label_estimator  # noqa: E402
from examples.studies.environment import configure_cpu, default_cache_dir, machine_info, utc_now, write_json  # noqa: E402
from examples.studies.statistics import bootstrap_mean, compare, verdict  # noqa: E402
from examples.train_controlnet_tlam import (  # noqa: E402  # noqa: E402
    build_controlnet,
    build_parser,
    load_scenes,
    predict_noise,
    tiny_backbone,
    train,
)
from label_merge.sparsity import region_dropout  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
HELD_OUT_SEED = 2_000_003  # the evaluation scenes: never among the training scenes of any seed

# The figure each label's curve shows (all figures are kept in the JSON).
FIGURE = {"semantic": "pixel_accuracy", "depth": "abs_rel", "normal": "angle_error", "edge": "f1", "curvature": "mae"}


def guided_generate(backbone, controlnet, labels, masks, *, guidance_scale, label_guidance, steps, seed):
    """Images ``(B, 3, H, W)`` in [-1, 1] by DDIM with label-aware guidance (no text: a zero context).

    The same branches and composition as :class:`label_merge.diffusers.LabelGuidedPipeline`,
    on the training example's backbone, which has no text encoder or VAE to make a pipeline of.
    """
    import diffusers

    from label_merge.diffusers import compose_label_guidance, guidance_branch_masks

    controlnet.eval()
    backbone.unet.eval()
    sampler = diffusers.DDIMScheduler.from_config(backbone.scheduler.config)
    sampler.set_timesteps(steps)
    dropped = [name for name, scale in label_guidance.items() if scale != 0]
    unconditional = guidance_scale > 1
    branches = guidance_branch_masks(labels, masks, unconditional=unconditional, dropped=dropped)
    rows = len(branches)
    stacked_labels = {name: torch.cat([x] * rows) for name, x in labels.items()}  # (rows * B, ...)
    stacked_masks = {name: torch.cat([branch[name] for branch in branches]) for name in labels}  # (rows * B, H, W)
    B, H, W = next(iter(masks.values())).shape
    generator = torch.Generator().manual_seed(seed)
    channels = backbone.unet.config.in_channels
    x = torch.randn(B, channels, H, W, generator=generator) * sampler.init_noise_sigma  # pixel space: factor 1
    with torch.no_grad():
        for t in sampler.timesteps:
            sample = sampler.scale_model_input(torch.cat([x] * rows), t)
            noise = predict_noise(backbone, controlnet, sample, t, stacked_labels, stacked_masks)
            parts = list(noise.chunk(rows))  # branch order of guidance_branch_masks
            uncond = parts.pop(0) if unconditional else None
            without = dict(zip(dropped, parts[1:], strict=True))
            noise = compose_label_guidance(
                uncond, parts[0], without, guidance_scale=guidance_scale, label_guidance=label_guidance
            )
            x = sampler.step(noise, t, x).prev_sample
    return backbone.decode(x)


def given_scores(result: dict, names) -> dict:
    """``{label: {figure: per-image list}}`` on the pixels where each label was given (NaN: none given)."""
    return {name: {k: np.asarray(v, dtype=float).tolist() for k, v in result[name]["given"].items()} for name in names}


def held_out(args) -> tuple:
    """Evaluation scenes and their region-sparse given masks (every label given somewhere)."""
    dataset = SyntheticDataset(
        args.scenes, seed=HELD_OUT_SEED, resolution=args.resolution, labels=args.labels, cache_dir=args.cache_dir
    )
    scenes = load_scenes(dataset)
    given = region_dropout(scenes.masks, scenes.regions, args.sparsity, generator=torch.Generator().manual_seed(1))
    return dataset.label_specs, scenes, given


def run_seed(seed: int, args, specs, scenes, given, estimator) -> dict:
    """Train one ControlNet and score every (label, scale); returns per-scene values."""
    train_args = build_parser().parse_args(
        ["--seed", str(seed), "--steps", str(args.train_steps), "--resolution", str(args.resolution), "--device", "cpu"]
        + ["--labels", *args.labels, "--train-samples", str(args.train_samples), "--log-every", str(args.log_every)]
        + ["--unet-width", str(args.unet_width), "--unconditional-dropout", str(args.unconditional_dropout)]
        + (["--cache-dir", str(args.cache_dir)] if args.cache_dir else [])
    )
    torch.manual_seed(seed)
    train_set = SyntheticDataset(
        train_args.train_samples, seed=seed, resolution=args.resolution, labels=args.labels, cache_dir=args.cache_dir
    )
    backbone = tiny_backbone(args.resolution, train_args.unet_width)
    controlnet = build_controlnet(backbone, specs, train_args)
    started = time.perf_counter()
    losses = train(backbone, controlnet, load_scenes(train_set), train_args)
    train_seconds = time.perf_counter() - started
    semantic = specs.get("semantic")
    runs = [("plain", None, 0.0)] + [(f"{name}@{s:g}", name, s) for name in args.labels for s in args.scales if s]
    values, seconds = {}, {}
    for key, name, scale in runs:
        started = time.perf_counter()
        images = guided_generate(
            backbone,
            controlnet,
            scenes.labels,
            given,
            guidance_scale=args.guidance_scale,
            label_guidance={name: scale} if name else {},
            steps=args.sample_steps,
            seed=args.noise_seed,
        )
        seconds[key] = time.perf_counter() - started
        result = label_consistency(
            images,
            scenes.labels,
            given,
            estimator,
            label_present=scenes.masks,
            per_image=True,
            num_classes=semantic.num_classes if semantic else None,
            ignore_index=semantic.ignore_index if semantic else None,
        )
        values[key] = given_scores(result, args.labels)
        print(f"seed {seed} {key}: {seconds[key]:.1f}s", flush=True)
    return {"seed": seed, "final_loss": float(np.mean(losses[-25:])), "train_seconds": train_seconds,
            "sample_seconds": seconds, "values": values}  # fmt: skip


def ceiling(args, specs, scenes, given, estimator) -> dict:
    """The estimator's score on the real images, same pixels: what a perfect generator would reach."""
    semantic = specs.get("semantic")
    result = label_consistency(
        scenes.images,
        scenes.labels,
        given,
        estimator,
        label_present=scenes.masks,
        num_classes=semantic.num_classes if semantic else None,
        ignore_index=semantic.ignore_index if semantic else None,
    )
    return {name: result[name]["given"] for name in args.labels}


def summarise(per_seed: list[dict], args) -> dict:
    """Per label and scale: mean with interval, and the paired difference to scale 0."""
    curves = {}
    for name in args.labels:
        figure = FIGURE[name]

        def matrix(key, name=name, figure=figure):
            return np.array([run["values"][key][name][figure] for run in per_seed], dtype=float)  # (seeds, scenes)

        plain = matrix("plain")
        points = [{"scale": 0.0, **bootstrap_mean(plain)}]
        for scale in (s for s in args.scales if s):
            row = matrix(f"{name}@{scale:g}")
            comparison = compare(row, plain, paired_seeds=True)
            points.append(
                {
                    "scale": float(scale),
                    **bootstrap_mean(row),
                    "difference_to_0": comparison.to_dict(),
                    "verdict": verdict(comparison, higher_is_better=HIGHER_IS_BETTER[figure]),
                }
            )
        curves[name] = {"figure": figure, "higher_is_better": HIGHER_IS_BETTER[figure], "points": points}
    return curves


def table(report: dict) -> str:
    lines = [
        "| label (figure) | scale | mean [95% CI] | difference to 0 [95% CI] | verdict |",
        "|---|---|---|---|---|",
    ]
    for name, curve in report["curves"].items():
        arrow = "higher is better" if curve["higher_is_better"] else "lower is better"
        for point in curve["points"]:
            mean = f"{point['mean']:.4f} [{point['low']:.4f}, {point['high']:.4f}]" if point["low"] is not None else "-"
            diff = point.get("difference_to_0")
            change = f"{diff['difference']:+.4f} [{diff['low']:+.4f}, {diff['high']:+.4f}]" if diff else "-"
            label = f"{name} ({curve['figure']}, {arrow}; ceiling {report['ceiling'][name][curve['figure']]:.4f})"
            lines.append(f"| {label} | {point['scale']:g} | {mean} | {change} | {point.get('verdict', '-')} |")
    return "\n".join(lines)


def markdown(report: dict) -> str:
    """The report's page: what was run, the table, and where."""
    s, machine = report["settings"], report["machine"]
    note = "SMOKE RUN: tiny sizes, the numbers mean nothing.\n\n" if s["smoke"] else ""
    setup = (
        f"{s['seeds']} training seeds; per seed the ControlNet (UNet width {s['unet_width']}) is trained "
        f"{s['train_steps']} steps on {s['train_samples']} scenes at {s['resolution']}x{s['resolution']}, "
        f"{100 * s['unconditional_dropout']:g}% of them with no labels. {s['scenes']} held-out scenes with "
        f"{100 * s['sparsity']:g}% region-sparse labels, {s['sample_steps']} DDIM steps, "
        f"`guidance_scale={s['guidance_scale']:g}`, one label's scale at a time. Each label is scored on the "
        "pixels where it was given; the ceiling is the estimator on the real images. Mean over seeds and "
        "scenes with a two-level bootstrap 95% interval; the difference to scale 0 is paired per seed and "
        "scene, with a verdict only where its interval excludes zero."
    )
    run = (
        f"Machine: {machine['cpu']} ({machine['logical_cpus']} logical CPUs, {machine['torch_threads']} "
        f"threads), torch {machine['torch']}, label-merge {machine['label_merge']}; "
        f"{report['seconds'] / 60:.0f} min, finished {report['finished']}."
    )
    return f"# Per-label guidance\n\n{note}{setup}\n\n{table(report)}\n\n{run}\n"


def plot(report: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = list(report["curves"])
    fig, axes = plt.subplots(1, len(names), figsize=(3.2 * len(names), 3.0), squeeze=False)
    for ax, name in zip(axes[0], names, strict=True):
        curve = report["curves"][name]
        scales = [p["scale"] for p in curve["points"]]
        means = np.array([p["mean"] for p in curve["points"]])
        low = np.array([p["low"] if p["low"] is not None else p["mean"] for p in curve["points"]])
        high = np.array([p["high"] if p["high"] is not None else p["mean"] for p in curve["points"]])
        ax.errorbar(scales, means, yerr=[means - low, high - means], marker="o", capsize=3)
        ax.axhline(report["ceiling"][name][curve["figure"]], color="grey", linestyle="--", label="real images")
        ax.set_title(f"{name}: {curve['figure']} ({'higher' if curve['higher_is_better'] else 'lower'} is better)")
        ax.set_xlabel(f"label_guidance[{name!r}]")
        ax.legend(fontsize=7)
    title = f"guidance_scale {report['settings']['guidance_scale']:g}, {report['settings']['seeds']} seeds"
    fig.suptitle(title + (" (SMOKE: numbers mean nothing)" if report["settings"]["smoke"] else ""), fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def build_argparser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--seeds", type=int, default=5, help="ControlNets trained, one per seed")
    p.add_argument("--scenes", type=int, default=32, help="held-out scenes")
    p.add_argument("--scales", type=float, nargs="+", default=[0.0, 2.0, 4.0], help="per-label scales")
    p.add_argument("--guidance-scale", type=float, default=2.0, help="classifier-free guidance scale (all scales)")
    p.add_argument("--labels", nargs="+", default=["semantic", "depth", "normal", "edge"])
    p.add_argument("--resolution", type=int, default=32)
    p.add_argument("--train-steps", type=int, default=600, help="3x the training example's default (200)")
    p.add_argument(
        "--train-samples", type=int, default=1024, help="16x the example's default (64): held-out scenes in reach"
    )
    p.add_argument("--unet-width", type=int, default=32, help="the training example's default")
    p.add_argument(
        "--unconditional-dropout", type=float, default=0.1, help="images trained with no labels (the example's default)"
    )
    p.add_argument("--sample-steps", type=int, default=10, help="DDIM steps (the training example's default: 20)")
    p.add_argument("--sparsity", type=float, default=0.5, help="region dropout of the held-out labels")
    p.add_argument("--noise-seed", type=int, default=0, help="initial noise, shared by every scale")
    p.add_argument("--estimator-steps", type=int, default=800)
    p.add_argument("--estimator-samples", type=int, default=1024)
    p.add_argument("--log-every", type=int, default=50)
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    p.add_argument("--cache-dir", type=Path, default=None, help="scenes and label estimator cache")
    p.add_argument("--results-dir", type=Path, default=ROOT / "benchmarks" / "results")
    p.add_argument("--name", default="label_guidance", help="file name stem of the results")
    p.add_argument("--smoke", action="store_true", help="tiny everything, in seconds; the numbers mean nothing")
    return p


def main(argv: list[str] | None = None) -> dict:
    args = build_argparser().parse_args(argv)
    if args.smoke:
        args.seeds, args.scenes, args.scales, args.resolution = 2, 3, [0.0, 2.0], 16
        args.train_steps, args.train_samples, args.unet_width, args.sample_steps = 2, 4, 8, 2
        args.estimator_steps, args.estimator_samples, args.log_every = 2, 4, 1
        args.name = args.name + "_smoke"
    if 0.0 not in args.scales:
        args.scales = [0.0, *args.scales]
    configure_cpu(args.threads)
    cache_dir = args.cache_dir or default_cache_dir()
    started = time.perf_counter()
    specs, scenes, given = held_out(args)
    recipe = EstimatorRecipe(steps=args.estimator_steps, samples=args.estimator_samples)
    estimator, _ = obtain_label_estimator(args.resolution, recipe, cache_dir=cache_dir, progress=False)
    per_seed = [run_seed(seed, args, specs, scenes, given, estimator) for seed in range(args.seeds)]
    report = {
        "settings": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()},
        "machine": machine_info(),
        "finished": utc_now(),
        "seconds": time.perf_counter() - started,
        "ceiling": ceiling(args, specs, scenes, given, estimator),
        "curves": summarise(per_seed, args),
        "per_seed": per_seed,
    }
    out = args.results_dir
    write_json(out / f"{args.name}.json", report)
    (out / f"{args.name}.md").write_text(markdown(report))
    plot(report, out / f"{args.name}.png")
    print(table(report))
    print(f"wrote {out / args.name}.json, .md, .png in {report['seconds']:.0f}s")
    return report


if __name__ == "__main__":
    main()
