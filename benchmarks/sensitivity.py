"""Label sensitivity study: FID against label sparsity (paper Fig. 6b) and with each label removed (Fig. 6c).

A TLAM + ASAP-Net model trained with 50% region sparsity is measured on the held-out synthetic
scenes at evaluation sparsities 0% to 70% and, at 50% sparsity, with each label removed entirely
(and with none removed, the reference). The model comes from ``--checkpoint`` files or from the
quality study's ``asap-tlam-sparse`` runs of the same budget, which are trained here if they do not
exist yet (one per seed). Writes under ``--results-dir``:

- ``sensitivity_<budget>.json``: per-model numbers, summaries over models, settings, hardware, versions;
- ``sensitivity_<budget>_sparsity.png`` (Fig. 6b) and ``sensitivity_<budget>_removal.png`` (Fig. 6c).

Usage (from the repository root)::

    python benchmarks/sensitivity.py                        # --budget cpu-hour, reusing or training the runs
    python benchmarks/sensitivity.py --budget smoke
    python benchmarks/sensitivity.py --checkpoint runs/asap_tlam/checkpoints/step_00001500.safetensors --budget cpu-hour

Measurements are cached per model; running the command again only computes what is missing.
"""

from __future__ import annotations

import sys
from pathlib import Path

if __package__ in (None, ""):  # run as a script: make the repository importable
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import argparse  # noqa: E402
import hashlib  # noqa: E402
import time  # noqa: E402
from dataclasses import replace  # noqa: E402
from itertools import pairwise  # noqa: E402

from scipy.stats import spearmanr  # noqa: E402

from examples.studies.budgets import BUDGETS, resolve_budget  # noqa: E402
from examples.studies.conditions import LabelCondition  # noqa: E402
from examples.studies.environment import (  # noqa: E402
    configure_cpu,
    default_cache_dir,
    machine_info,
    read_json,
    utc_now,
    write_json,
)
from examples.studies.plots import plot_removal, plot_sparsity  # noqa: E402
from examples.studies.report import summarize  # noqa: E402
from examples.studies.runs import VARIANTS  # noqa: E402
from examples.studies.scoring import fid_weights_from  # noqa: E402
from examples.studies.study import EVAL_SPARSITY_SEED, Study, resolve_folder  # noqa: E402
from examples.training.builders import image_size, restore_generator  # noqa: E402
from examples.training.checkpoint import load_checkpoint_config  # noqa: E402
from examples.training.config import RunConfig  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
SPARSITIES = (0.0, 0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7)
VARIANT = VARIANTS["asap-tlam-sparse"]
METRICS = ("fid", "kid_mean", "miou", "pixel_accuracy", "psnr", "ssim")


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.ArgumentDefaultsHelpFormatter
    )
    p.add_argument("--budget", default="cpu-hour", help=f"one of {sorted(BUDGETS)}, or a number of training steps")
    p.add_argument(
        "--checkpoint", nargs="+", help="checkpoints to measure (default: the budget's asap-tlam-sparse runs)"
    )
    p.add_argument("--seeds", nargs="+", type=int, help="seeds of the runs to train or reuse (default: the budget's)")
    p.add_argument("--sparsities", nargs="+", type=float, default=list(SPARSITIES), help="evaluation sparsities")
    p.add_argument(
        "--removal-sparsity", type=float, default=0.5, help="sparsity of the other labels when one is removed"
    )
    p.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N")
    p.add_argument("--threads", type=int, help="CPU threads (default: the budget's)")
    p.add_argument("--work-dir", default=str(ROOT / "runs" / "studies"), help="where runs are trained")
    p.add_argument(
        "--cache-dir",
        help="rendered scenes and trained segmenters (default: $LABEL_MERGE_CACHE or ~/.cache/label-merge)",
    )
    p.add_argument("--results-dir", default=str(ROOT / "benchmarks" / "results"), help="where the JSON and plots go")
    p.add_argument(
        "--fid-weights",
        help="FID Inception weights; default $LABEL_MERGE_FID_WEIGHTS, else the small segmenter's features",
    )
    p.add_argument(
        "--vgg-weights", help="VGG19 weights for the perceptual loss when training (default $LABEL_MERGE_VGG19)"
    )
    p.add_argument("--no-progress", action="store_true", help="no progress bars")
    return p


def conditions(labels: list[str], sparsities, removal_sparsity: float) -> dict[str, LabelCondition]:
    """Every condition measured, by key: one per sparsity, one per removed label, and the reference."""
    out = {f"sparsity={s:g}": LabelCondition(sparsity=s, seed=EVAL_SPARSITY_SEED) for s in sparsities}
    out[f"sparsity={removal_sparsity:g}"] = LabelCondition(sparsity=removal_sparsity, seed=EVAL_SPARSITY_SEED)
    for name in labels:
        out[f"sparsity={removal_sparsity:g},without={name}"] = LabelCondition(
            sparsity=removal_sparsity, seed=EVAL_SPARSITY_SEED, drop_labels=(name,)
        )
    return out


def models(study: Study, args) -> list[tuple[str, Path, Path]]:
    """``(name, checkpoint, cache file)`` of every model to measure; trains missing runs."""
    if args.checkpoint:
        found = []
        for value in args.checkpoint:
            path = Path(value)
            if not path.is_file():
                raise FileNotFoundError(f"checkpoint not found: {path}")
            key = hashlib.sha1(str(path.resolve()).encode()).hexdigest()[:12]
            cache = study.work_dir / study.budget.name / "sensitivity-external" / f"{path.stem}-{key}.json"
            found.append((str(path), path, cache))
        return found
    found = []
    for seed in study.budget.seeds:
        study.run(VARIANT, seed)
        found.append(
            (
                f"{VARIANT.name}/seed{seed}",
                study.final_checkpoint(VARIANT, seed),
                study.run_dir(VARIANT, seed) / "study_sensitivity.json",
            )
        )
    return found


def measure_model(study: Study, name: str, checkpoint: Path, cache: Path, args) -> dict:
    """All conditions for one model, reusing cached measurements of the same checkpoint and protocol."""
    config = load_checkpoint_config(checkpoint)
    size = (study.budget.resolution, study.budget.resolution)
    run = RunConfig.from_dict(config)
    if run.data.dataset != "synthetic" or image_size(run.data) != size:
        raise ValueError(
            f"{checkpoint} generates {run.data.dataset} images of {image_size(run.data)}, but budget "
            f"{study.budget.name!r} measures on synthetic scenes of {size}; pass a matching --budget"
        )
    generator, _, specs = restore_generator(checkpoint, device=study.device)
    identity = {
        "checkpoint": str(checkpoint.resolve()),
        "size": checkpoint.stat().st_size,
        "protocol": study.protocol(),
    }
    records = read_json(cache)
    if not records or records.get("identity") != identity:
        records = {"identity": identity, "results": {}}
    for key, condition in conditions(list(specs), args.sparsities, args.removal_sparsity).items():
        if key not in records["results"]:
            records["results"][key] = study.measure(generator, condition, desc=f"{name}: {condition.describe()}")
            write_json(cache, records)
    return {
        "name": name,
        "checkpoint": str(checkpoint),
        "step": int(checkpoint.stem.split("_")[1]),
        "labels": list(specs),
        "results": records["results"],
    }


def _summaries(per_model: list[dict], key: str) -> dict:
    return {m: summarize([model["results"][key].get(m) for model in per_model]) for m in METRICS}


def main(argv: list[str] | None = None) -> dict:
    args = build_parser().parse_args(argv)
    try:
        budget = resolve_budget(args.budget)
        if args.seeds:
            budget = replace(budget, seeds=tuple(args.seeds))
        for s in [*args.sparsities, args.removal_sparsity]:
            LabelCondition(sparsity=s)  # checks the range
    except ValueError as err:
        raise SystemExit(f"sensitivity.py: {err}") from None
    configure_cpu(args.threads or budget.threads)
    started = time.perf_counter()
    study = Study(
        budget=budget,
        work_dir=Path(args.work_dir),
        cache_dir=resolve_folder(args.cache_dir, default_cache_dir()),
        device=args.device,
        fid_weights=fid_weights_from(args.fid_weights),
        vgg_weights=args.vgg_weights,
        progress=not args.no_progress,
    )
    per_model = [measure_model(study, *model, args) for model in models(study, args)]
    labels = per_model[0]["labels"]
    if any(model["labels"] != labels for model in per_model):
        raise SystemExit("sensitivity.py: the models condition on different labels; measure them separately")
    removal = f"sparsity={args.removal_sparsity:g}"
    sparsity_points = [
        {"sparsity": s, **_summaries(per_model, f"sparsity={s:g}")} for s in sorted(set(args.sparsities))
    ]
    removal_bars = [{"removed": None, **_summaries(per_model, removal)}] + [
        {"removed": name, **_summaries(per_model, f"{removal},without={name}")} for name in labels
    ]
    report = {
        "benchmark": "sensitivity: paper Fig. 6b (sparsity) and Fig. 6c (removed labels) on SyntheticDataset",
        "budget": budget.to_dict(),
        "protocol": study.protocol(),
        "removal_sparsity": args.removal_sparsity,
        "models": per_model,
        "sparsity": sparsity_points,
        "removal": removal_bars,
        "findings": findings(sparsity_points, removal_bars),
        "machine": machine_info(study.device),
        "date": utc_now(),
        "wall_seconds": time.perf_counter() - started,
    }
    results = Path(args.results_dir)
    stem = f"sensitivity_{budget.name}"
    write_json(results / f"{stem}.json", report)
    fid_label = "FID" + ("" if study.scorer.feature_extractor.standard else " (small-segmenter features)")
    trained = training_sparsity(per_model[0]["checkpoint"])
    plot_sparsity(
        sparsity_points,
        results / f"{stem}_sparsity.png",
        title=f"Label sparsity ({budget.name})",
        fid_label=fid_label,
        trained_at=trained,
    )
    plot_removal(
        removal_bars,
        results / f"{stem}_removal.png",
        title=f"Removing one label at {100 * args.removal_sparsity:g}% sparsity ({budget.name})",
        fid_label=fid_label,
    )
    for line in describe(report):
        print(line)
    print(f"wrote {results / stem}.json, _sparsity.png and _removal.png")
    return report


def training_sparsity(checkpoint: str) -> float:
    """The region sparsity a checkpoint was trained with."""
    return float(load_checkpoint_config(checkpoint)["train"]["sparsity"])


def findings(sparsity_points: list[dict], removal_bars: list[dict]) -> dict:
    """What the numbers say about the paper's claims (no thresholds beyond the paper's own)."""
    xs = [p["sparsity"] for p in sparsity_points if p["fid"]["mean"] is not None]
    ys = [p["fid"]["mean"] for p in sparsity_points if p["fid"]["mean"] is not None]
    steady = all(b > a for a, b in pairwise(ys)) if len(ys) > 1 else None
    rho = float(spearmanr(xs, ys).statistic) if len(ys) > 2 else None
    reference = removal_bars[0]["fid"]["mean"]
    ratios = {
        bar["removed"]: (bar["fid"]["mean"] / reference if reference and bar["fid"]["mean"] is not None else None)
        for bar in removal_bars[1:]
    }
    return {
        "fid_rises_at_every_sparsity_step": steady,
        "spearman_sparsity_vs_fid": rho,
        "fid_ratio_removed_over_all_present": ratios,
        "every_removal_hurts": all(r is not None and r > 1 for r in ratios.values()) if ratios else None,
        "paper": "FID degrades steadily from 10% to 70%; removing any label worsens FID by a factor of at least 1.3",
    }


def describe(report: dict) -> list[str]:
    lines = [f"FID against evaluation sparsity ({report['protocol']['feature_extractor']}):"]
    for p in report["sparsity"]:
        lines.append(
            f"  {100 * p['sparsity']:4.0f}%  {p['fid']['mean']:.4g}"
            + (f" ± {p['fid']['std']:.2g}" if p["fid"]["std"] else "")
        )
    lines.append(f"Removing one label at {100 * report['removal_sparsity']:g}% sparsity:")
    for bar in report["removal"]:
        lines.append(f"  {bar['removed'] or 'none':10s}  {bar['fid']['mean']:.4g}")
    f = report["findings"]
    lines.append(
        f"FID rises at every sparsity step: {f['fid_rises_at_every_sparsity_step']}; "
        f"Spearman rho {f['spearman_sparsity_vs_fid']}; every removal hurts: {f['every_removal_hurts']}"
    )
    return lines


if __name__ == "__main__":
    main()
