"""Train (or load) the label estimator of the synthetic scenes and measure its ceiling, as JSON.

    python examples/train_label_estimator.py                      # 32x32 scenes, the default recipe
    python examples/train_label_estimator.py --resolution 64 --steps 3000 --out ceiling64.json

The estimator is trained once on the real images of the synthetic scenes and cached under
``--cache-dir`` (default ``$LABEL_MERGE_CACHE`` or ``~/.cache/label-merge``); evaluations find it
there. It is then run on held-out scenes (those a run with seed 0 is evaluated on): its score on
their real images is the ceiling of every controllability figure. Three degraded images put the
ceiling in scale: a blank grey image (what the estimator guesses from nothing), the real image
with its shading removed (every pixel's colour at the image's median brightness) and the real
image with its pixels shuffled within each semantic region (colours kept, shading and texture
destroyed).
"""

from __future__ import annotations

import sys
from pathlib import Path

if __package__ in (None, ""):  # run as a script: make the repository importable
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import argparse  # noqa: E402
import os  # noqa: E402
from dataclasses import asdict, fields  # noqa: E402

import torch  # noqa: E402
from torch.utils.data import DataLoader  # noqa: E402
from tqdm.auto import tqdm  # noqa: E402

from examples.datasets import SyntheticDataset  # noqa: E402
from examples.metrics.controllability import (  # noqa: E402
    ConsistencyAccumulator,
    remove_shading,
    shuffle_within_regions,
)
from examples.metrics.estimator_training import EstimatorRecipe, obtain_label_estimator  # noqa: E402
from examples.studies.environment import configure_cpu, default_cache_dir, machine_info, utc_now, write_json  # noqa: E402, E501
from examples.studies.segmenters import file_digest  # noqa: E402
from examples.training.builders import HELD_OUT_SEED_OFFSET  # noqa: E402

__all__ = ["measure_ceiling", "main"]

DEFAULT_OUT = Path("benchmarks/results/estimator_ceiling.json")


def held_out_scenes(resolution: int, samples: int) -> SyntheticDataset:
    """The held-out scenes a run with seed 0 is evaluated on (never seen by the estimator)."""
    return SyntheticDataset(samples, resolution=resolution, seed=HELD_OUT_SEED_OFFSET)


@torch.no_grad()
def measure_ceiling(
    estimator, scenes: SyntheticDataset, *, batch_size: int = 32, device: str = "cpu", progress: bool = True
) -> dict:
    """The estimator's figures on real, blank, shading-free and region-shuffled images of ``scenes``.

    Every label is given everywhere, so each result holds only the ``given`` split.

    Returns:
        ``{"ceiling": ..., "blank": ..., "shading_removed": ..., "region_shuffled": ...}``, each
        ``{label: {"given": {figure: value}}}``.
    """
    spec = scenes.label_specs["semantic"]
    accumulators = {
        key: ConsistencyAccumulator(estimator, num_classes=spec.num_classes, ignore_index=spec.ignore_index)
        for key in ("ceiling", "blank", "shading_removed", "region_shuffled")
    }
    generator = torch.Generator().manual_seed(0)
    loader = DataLoader(scenes, batch_size=batch_size, shuffle=False)
    for batch in tqdm(loader, desc="measuring the ceiling", unit="batch", disable=not progress):
        real = batch["image"].to(device)
        given = {name: torch.ones_like(mask) for name, mask in batch["masks"].items()}
        images = {
            "ceiling": real,
            "blank": torch.zeros_like(real),
            "shading_removed": remove_shading(real),
            "region_shuffled": shuffle_within_regions(real, batch["labels"]["semantic"], generator=generator),
        }
        for key, accumulator in accumulators.items():
            accumulator.update(images[key], batch["labels"], given, label_present=batch["masks"])
    return {key: accumulator.compute() for key, accumulator in accumulators.items()}


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.ArgumentDefaultsHelpFormatter
    )
    p.add_argument("--resolution", type=int, default=32, help="scene height = width (the generated images' size)")
    defaults = EstimatorRecipe()
    for f in fields(EstimatorRecipe):
        p.add_argument(
            f"--{f.name.replace('_', '-')}", type=type(getattr(defaults, f.name)), default=getattr(defaults, f.name)
        )
    p.add_argument("--eval-samples", type=int, default=256, help="held-out scenes the ceiling is measured on")
    p.add_argument("--cache-dir", help="where the trained estimator is kept")
    p.add_argument("--device", default="cpu", help="cpu, cuda or cuda:N")
    p.add_argument("--threads", type=int, default=1, help="CPU threads")
    p.add_argument("--out", default=str(DEFAULT_OUT), help="output JSON")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")
    return p


def main(argv: list[str] | None = None) -> dict:
    args = build_parser().parse_args(argv)
    configure_cpu(args.threads)
    recipe = EstimatorRecipe(**{f.name: getattr(args, f.name) for f in fields(EstimatorRecipe)})
    cache_dir = args.cache_dir or default_cache_dir()
    try:
        estimator, path = obtain_label_estimator(
            args.resolution, recipe, cache_dir=cache_dir, device=args.device, progress=not args.no_progress
        )
    except ValueError as err:
        raise SystemExit(f"train_label_estimator.py: {err}") from None
    scenes = held_out_scenes(args.resolution, args.eval_samples)
    figures = measure_ceiling(estimator, scenes, device=args.device, progress=not args.no_progress)
    results = {
        "estimator_file": os.path.basename(path),
        "estimator_sha256": file_digest(path),
        "recipe": asdict(recipe),
        "resolution": args.resolution,
        "scene_settings": estimator.metadata.get("scene_settings"),
        "training_seconds": estimator.metadata.get("training_seconds"),
        "final_losses": estimator.metadata.get("final_losses"),
        "evaluation_scenes": {"seed": HELD_OUT_SEED_OFFSET, "count": len(scenes)},
        **figures,
        "machine": machine_info(args.device),
        "date": utc_now(),
    }
    write_json(Path(args.out), results)
    print(f"estimator: {path}")
    for label, splits in figures["ceiling"].items():
        row = ", ".join(
            f"{key} {value:.3g} (blank {figures['blank'][label]['given'][key]:.3g}, "
            f"no shading {figures['shading_removed'][label]['given'][key]:.3g}, "
            f"shuffled {figures['region_shuffled'][label]['given'][key]:.3g})"
            for key, value in splits["given"].items()
            if key != "pixels"
        )
        print(f"  {label}: {row}")
    print(f"wrote {args.out}")
    return results


if __name__ == "__main__":
    main()
