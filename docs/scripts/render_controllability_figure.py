"""Draw what controllability compares: each label re-read from a real and a generated image, beside its target.

Usage (from the repository root)::

    python docs/scripts/render_controllability_figure.py --checkpoint RUN/checkpoints/step_00000400.safetensors \\
        --out docs/images/controllability.png

For each held-out scene, three rows: the true labels (with the real image), the labels the
label estimator reads from the real image (the ceiling), and the labels it reads from the image
the checkpoint generated (with its sparse labels: pixels where a label was not given to the
generator are hatched in the first row). Without ``--checkpoint`` only the first two rows are
drawn. The estimator is the cached one for the scenes' size (trained first if missing).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

if __package__ in (None, ""):  # run as a script: make the repository importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

import matplotlib  # noqa: E402

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402

from examples.datasets import SyntheticDataset  # noqa: E402
from examples.metrics import EstimatorRecipe, obtain_label_estimator  # noqa: E402
from examples.studies.conditions import LabelCondition, apply_condition  # noqa: E402
from examples.studies.environment import default_cache_dir  # noqa: E402
from examples.training.builders import HELD_OUT_SEED_OFFSET, restore_generator  # noqa: E402

_PALETTE = plt.get_cmap("tab20")(np.arange(20))[:, :3]
_MISSING = 0.5  # grey: no true value here
_COLUMNS = ("image", "semantic", "depth", "normal", "edge", "curvature")


def _panels(image: torch.Tensor, labels: dict, masks: dict, max_depth: float) -> dict[str, np.ndarray]:
    """``(H, W, 3)`` pictures of an image ``(3, H, W)`` and its labels (semantic ids or logits)."""
    semantic = labels["semantic"]
    if semantic.ndim == 3:  # logits (K, H, W)
        semantic = semantic.argmax(0)
    depth = plt.get_cmap("magma_r")(np.clip(labels["depth"][0].numpy() / max_depth, 0, 1))[..., :3]
    normal = (labels["normal"].permute(1, 2, 0).numpy() + 1) / 2  # x -> red, y (down) -> green, z -> blue
    edge = np.repeat(labels["edge"][0].numpy()[..., None], 3, axis=-1)
    curvature = np.zeros((*labels["curvature"].shape[1:], 3))
    curvature[..., :2] = np.moveaxis(np.tanh(np.maximum(labels["curvature"].numpy(), 0) / 3.0), 0, -1)
    panels = {
        "image": (image.permute(1, 2, 0).numpy() + 1) / 2,
        "semantic": _PALETTE[semantic.numpy() % len(_PALETTE)],
        "depth": depth,
        "normal": normal,
        "edge": edge,
        "curvature": curvature,
    }
    for name, mask in masks.items():
        panels[name][~mask.numpy()] = _MISSING
    return panels


def _hatch(picture: np.ndarray, given: np.ndarray) -> np.ndarray:
    """Darken every other diagonal of the pixels where the label was not given."""
    height, width = given.shape
    stripes = ((np.arange(height)[:, None] + np.arange(width)[None, :]) // 2) % 2 == 0
    out = picture.copy()
    out[~given & stripes] *= 0.35
    return out


@torch.no_grad()
def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--checkpoint", type=Path, help="a synthetic-scene checkpoint for the generated row")
    parser.add_argument("--out", type=Path, default=Path("docs/images/controllability.png"))
    parser.add_argument("--num", type=int, default=2, help="number of scenes")
    parser.add_argument("--resolution", type=int, default=32, help="scene size without a checkpoint")
    parser.add_argument("--sparsity", type=float, default=0.5, help="region sparsity of the generator's labels")
    parser.add_argument("--cache-dir", help="where the label estimator is kept")
    args = parser.parse_args()
    torch.set_num_threads(1)

    generator, resolution = None, args.resolution
    if args.checkpoint is not None:
        generator, config, specs = restore_generator(args.checkpoint)
        resolution = config.data.resolution
    estimator, path = obtain_label_estimator(
        resolution, EstimatorRecipe(), cache_dir=args.cache_dir or default_cache_dir()
    )
    scenes = SyntheticDataset(args.num, resolution=resolution, seed=HELD_OUT_SEED_OFFSET)
    batch = torch.utils.data.default_collate([scenes[i] for i in range(args.num)])
    rows, titles = [], []
    given = {name: torch.ones_like(mask) for name, mask in batch["masks"].items()}
    if generator is not None:
        condition = LabelCondition(sparsity=args.sparsity)
        given = apply_condition(batch["masks"], batch["regions"], condition, labels=batch["labels"], first_position=0)
        fake, _ = generator(batch["labels"], given)
        given = {name: mask if name in specs else torch.zeros_like(mask) for name, mask in given.items()}
    read_real = estimator(batch["image"])
    read_fake = estimator(fake.clamp(-1, 1)) if generator is not None else None
    for i in range(args.num):
        masks = {name: mask[i] for name, mask in batch["masks"].items()}
        truth = _panels(batch["image"][i], {k: v[i] for k, v in batch["labels"].items()}, masks, scenes.max_depth)
        if generator is not None:
            truth = {
                name: _hatch(picture, given[name][i].numpy()) if name != "image" else picture
                for name, picture in truth.items()
            }
        rows.append(truth)
        titles.append("true labels" + (" (hatched: not given)" if generator is not None else ""))
        rows.append(_panels(batch["image"][i], {k: v[i] for k, v in read_real.items()}, masks, scenes.max_depth))
        titles.append("read from the real image")
        if generator is not None:
            rows.append(_panels(fake[i].clamp(-1, 1), {k: v[i] for k, v in read_fake.items()}, masks, scenes.max_depth))
            titles.append("read from the generated image")

    fig, axes = plt.subplots(len(rows), len(_COLUMNS), figsize=(1.6 * len(_COLUMNS), 1.75 * len(rows)), squeeze=False)
    for r, (panels, title) in enumerate(zip(rows, titles, strict=True)):
        for c, name in enumerate(_COLUMNS):
            ax = axes[r, c]
            ax.imshow(np.clip(panels[name], 0, 1), interpolation="nearest")
            ax.set_xticks([])
            ax.set_yticks([])
            if r == 0:
                ax.set_title(name, fontsize=9)
            if c == 0:
                ax.set_ylabel(title, fontsize=6.5)
    fig.tight_layout(pad=0.3)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(args.out, dpi=120)
    print(f"estimator: {path}")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
