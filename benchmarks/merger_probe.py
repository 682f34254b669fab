"""Merger-capacity probe: which merger extracts more of the image from the labels, without a GAN?

Each row trains one merger (semantics only, naive concatenation, CLAM, TLAM; dense or 50%
region-sparse labels) with the same small convolutional decoder to predict the real image of
synthetic scenes from their labels, with a squared-error loss, over ``--seeds`` seeds. It then
measures, on held-out scenes with fixed evaluation masks:

- R² (the share of pixel variance explained) and PSNR, from per-scene errors;
- for each claim (e.g. TLAM > CLAM), the difference of means with a two-level bootstrap 95%
  interval (scenes resampled jointly; seeds resampled jointly too, since every row trains seed
  ``i`` on the same batches and masks) and a paired t-test over seeds; a verdict only when the
  interval excludes zero.

Every setting (:class:`examples.studies.probe.ProbeConfig`) is the same for every row and fixed
before the runs. Writes ``merger_probe.json`` (raw per-seed, per-scene numbers), ``.md`` and
``.png`` under ``--results-dir``.

Usage (from the repository root)::

    python benchmarks/merger_probe.py                 # 7 rows x 10 seeds
    python benchmarks/merger_probe.py --smoke         # the pipeline in seconds; numbers mean nothing
"""

from __future__ import annotations

import sys
from pathlib import Path

if __package__ in (None, ""):  # run as a script: make the repository importable
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import argparse  # noqa: E402
import time  # noqa: E402
from dataclasses import replace  # noqa: E402

import numpy as np  # noqa: E402
from tqdm.auto import tqdm  # noqa: E402

from examples.studies.environment import configure_cpu, machine_info, utc_now, write_json  # noqa: E402
from examples.studies.probe import (  # noqa: E402
    ROWS,
    ProbeConfig,
    evaluate_probe,
    load_probe,
    probe_masks,
    render_scenes,
    save_probe,
    total_variance,
    train_probe,
)
from examples.studies.statistics import compare, verdict  # noqa: E402
from examples.training.builders import HELD_OUT_SEED_OFFSET  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent

# (better row, worse row, what the claim says); the direction is the claim, not a result.
CLAIMS = (
    ("tlam-dense", "clam-dense", "TLAM > CLAM (dense)"),
    ("tlam-sparse", "clam-sparse", "TLAM > CLAM (50% sparse)"),
    ("clam-dense", "naive-dense", "CLAM > naive (dense)"),
    ("tlam-dense", "naive-dense", "TLAM > naive (dense)"),
    ("tlam-sparse", "naive-sparse", "TLAM > naive (50% sparse)"),
    ("naive-dense", "semantic-dense", "all labels > semantics only"),
)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.ArgumentDefaultsHelpFormatter
    )
    p.add_argument("--seeds", type=int, default=10, help="runs per row (seeds 0..N-1)")
    p.add_argument("--rows", nargs="+", choices=[r.name for r in ROWS], help="rows (default: all)")
    p.add_argument("--steps", type=int, help=f"optimiser steps per run (default {ProbeConfig.steps})")
    p.add_argument("--smoke", action="store_true", help="tiny settings: checks the pipeline in seconds")
    p.add_argument("--threads", type=int, default=1, help="CPU threads")
    p.add_argument("--results-dir", default=str(ROOT / "benchmarks" / "results"))
    p.add_argument(
        "--work-dir",
        default=str(ROOT / "runs" / "probe"),
        help="trained runs are kept here and reused when the script runs again with the same settings",
    )
    p.add_argument("--name", default="merger_probe", help="stem of the result files")
    p.add_argument("--no-progress", action="store_true")
    return p


def psnr(sse: np.ndarray, values_per_scene: int) -> np.ndarray:
    """PSNR per scene for images in [-1, 1] (peak-to-peak 2)."""
    return 10 * np.log10(4.0 / np.maximum(sse / values_per_scene, 1e-12))


def explained(row: dict) -> np.ndarray:
    """Per-scene ``1 - sse_j / mean(sst)``, ``(seeds, N)``: its mean over scenes is the row's R²."""
    sse = np.array([run["scene_sse"] for run in row["runs"]])  # (seeds, N)
    return 1.0 - sse / row["mean_sst"]


def cached_run(row, train, config: ProbeConfig, *, seed: int, folder: Path):
    """Train one run, or load it from ``folder`` when an earlier run with the same settings saved it."""
    path = folder / row.name / f"seed{seed}.safetensors"
    if path.exists():
        return load_probe(path, row, train.specs, config)
    model = train_probe(row, train, config, seed=seed)
    save_probe(model, path)
    return model


def main(argv: list[str] | None = None) -> dict:
    args = build_parser().parse_args(argv)
    config = ProbeConfig()
    if args.smoke:
        config = replace(config, resolution=16, train_scenes=16, test_scenes=8, steps=3, batch_size=4, dim=8, heads=2)
    if args.steps:
        config = replace(config, steps=args.steps)
    configure_cpu(args.threads)
    rows = [r for r in ROWS if args.rows is None or r.name in args.rows]
    seeds = list(range(2 if args.smoke else args.seeds))
    started = time.perf_counter()

    bar = (lambda it, **kw: tqdm(it, **kw)) if not args.no_progress else (lambda it, **kw: it)
    train = render_scenes(
        config.train_scenes,
        config.resolution,
        config.scene_seed,
        progress=lambda it: bar(it, desc="training scenes", leave=False),
    )
    test = render_scenes(
        config.test_scenes,
        config.resolution,
        config.scene_seed + HELD_OUT_SEED_OFFSET,
        progress=lambda it: bar(it, desc="held-out scenes", leave=False),
    )
    sst = total_variance(test.images)  # (N,)
    values_per_scene = int(np.prod(test.images.shape[1:]))
    eval_masks = {
        False: probe_masks(test, 0.0, seed=config.eval_mask_seed),
        True: probe_masks(test, config.sparsity, seed=config.eval_mask_seed),
    }

    results: dict[str, dict] = {}
    for row in rows:
        per_seed = []
        for seed in bar(seeds, desc=row.name, unit="run"):
            t0 = time.perf_counter()
            model = cached_run(row, train, config, seed=seed, folder=Path(args.work_dir) / config.digest())
            out = evaluate_probe(model, test, eval_masks[row.sparse])
            per_seed.append(
                {
                    "seed": seed,
                    "train_seconds": time.perf_counter() - t0,
                    "parameters": sum(p.numel() for p in model.parameters()),
                    "r2": float(1 - out["sse"].sum() / sst.sum()),
                    "psnr": float(psnr(out["sse"], values_per_scene).mean()),
                    "scene_sse": out["sse"].tolist(),
                }
            )
        r2 = np.array([s["r2"] for s in per_seed])
        results[row.name] = {
            "row": row.__dict__,
            "mean_sst": float(sst.mean()),
            "r2_mean": float(r2.mean()),
            "r2_std": float(r2.std(ddof=1)) if len(r2) > 1 else 0.0,
            "psnr_mean": float(np.mean([s["psnr"] for s in per_seed])),
            "runs": per_seed,
        }
        summary = results[row.name]
        print(f"{row.name:15s} R² {r2.mean():.4f} ± {summary['r2_std']:.4f}  PSNR {summary['psnr_mean']:.2f} dB")

    report = {
        "benchmark": "merger probe: labels -> image with a shared decoder, no GAN",
        "config": config.to_dict(),
        "seeds": seeds,
        "rows": results,
        "claims": probe_claims(results, CLAIMS),
        "scene_sst": sst.tolist(),
        "machine": machine_info("cpu"),
        "date": utc_now(),
        "wall_seconds": time.perf_counter() - started,
    }
    out_dir = Path(args.results_dir)
    write_json(out_dir / f"{args.name}.json", report)
    (out_dir / f"{args.name}.md").write_text(probe_markdown(report))
    plot_probe(report, out_dir / f"{args.name}.png")
    print(probe_markdown(report))
    return report


def probe_claims(rows: dict, claims=CLAIMS) -> list[dict]:
    """Each claim ``(better row, worse row, text)`` whose rows ran: difference of R², interval, test, verdict.

    Rows trained with the same seeds are compared seed-paired (same batches and masks per seed).
    """
    found = []
    for better, worse, text in claims:
        if better not in rows or worse not in rows:
            continue
        a, b = explained(rows[better]), explained(rows[worse])  # (seeds, N) each
        paired = [r["seed"] for r in rows[better]["runs"]] == [r["seed"] for r in rows[worse]["runs"]]
        comparison = compare(a, b, paired_seeds=paired, seed=0)
        found.append(
            {
                "claim": text,
                "better": better,
                "worse": worse,
                "metric": "R² (higher is better)",
                **comparison.to_dict(),
                "verdict": verdict(comparison, higher_is_better=True),
            }
        )
    return found


def probe_markdown(report: dict) -> str:
    lines = [
        "# Merger probe",
        "",
        f"Settings (every row): {report['config']}; seeds {report['seeds']}.",
        "",
        "| row | R² mean ± sd over seeds | PSNR (dB) | parameters |",
        "| --- | --- | --- | --- |",
    ]
    for name, r in report["rows"].items():
        lines.append(
            f"| {name} | {r['r2_mean']:.4f} ± {r['r2_std']:.4f} | {r['psnr_mean']:.2f} | {r['runs'][0]['parameters']} |"
        )
    lines += [
        "",
        "| claim | difference of R² | 95% interval | p | test | verdict |",
        "| --- | --- | --- | --- | --- | --- |",
    ]
    for c in report["claims"]:
        interval = f"[{c['low']:+.4f}, {c['high']:+.4f}]"
        p = "n/a" if c["p_value"] is None else f"{c['p_value']:.2g}"
        lines.append(f"| {c['claim']} | {c['difference']:+.4f} | {interval} | {p} | {c['test']} | {c['verdict']} |")
    lines += [
        "",
        "Interval: two-level bootstrap, scenes resampled jointly; seeds resampled jointly when both rows "
        "ran the same seeds (seed i trains on the same batches and masks in every row), otherwise per row. "
        "p: a t-test over the per-seed R² (paired with paired seeds); the seed is the unit of replication.",
    ]
    return "\n".join(lines) + "\n"


def plot_probe(report: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = list(report["rows"])
    fig, ax = plt.subplots(figsize=(7, 3.2))
    for i, name in enumerate(names):
        r2 = [s["r2"] for s in report["rows"][name]["runs"]]
        ax.scatter(np.full(len(r2), i) + np.linspace(-0.15, 0.15, len(r2)), r2, s=10, color="grey")
        ax.errorbar(i, np.mean(r2), yerr=np.std(r2, ddof=1) if len(r2) > 1 else 0, fmt="o", color="black", capsize=4)
    ax.set_xticks(range(len(names)), names, rotation=20, ha="right")
    ax.set_ylabel("held-out R² (image from labels)")
    ax.set_title("Merger probe: one dot per seed, mean ± sd")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


if __name__ == "__main__":
    main()
