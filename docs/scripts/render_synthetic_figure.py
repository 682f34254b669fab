"""Draw a few SyntheticDataset samples, image and every label side by side.

Usage (from the repository root)::

    python docs/scripts/render_synthetic_figure.py --out docs/images/synthetic_samples.png

Each row is one sample: image, semantic classes, depth, normals, edges, curvature, regions.
Missing values are drawn grey.
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

from examples.datasets import SyntheticDataset  # noqa: E402

_PALETTE = np.array(
    [
        [0.55, 0.42, 0.30],  # floor
        [0.78, 0.78, 0.70],  # wall
        [0.95, 0.95, 0.95],  # ceiling
        [0.55, 0.80, 1.00],  # window
        [0.85, 0.25, 0.35],  # rug
        [0.95, 0.75, 0.15],  # painting
        [0.20, 0.55, 0.95],  # sphere
        [0.30, 0.75, 0.35],  # box
        [0.65, 0.35, 0.85],  # cylinder
    ]
)
_MISSING = 0.5  # grey marks missing values
_COLUMNS = ("image", "semantic", "depth", "normal", "edge", "curvature", "regions")


def _panels(sample: dict, max_depth: float) -> dict[str, np.ndarray]:
    """RGB (H, W, 3) or grey (H, W) pictures of every part of one sample."""
    labels, masks = sample["labels"], sample["masks"]
    image = (sample["image"].permute(1, 2, 0).numpy() + 1) / 2
    semantic = _PALETTE[labels["semantic"].numpy()]
    depth = plt.get_cmap("magma_r")(labels["depth"][0].numpy() / max_depth)[..., :3]
    depth[~masks["depth"].numpy()] = _MISSING
    normal = (labels["normal"].permute(1, 2, 0).numpy() + 1) / 2  # x -> red, y (down) -> green, z -> blue
    normal[~masks["normal"].numpy()] = _MISSING
    edge = labels["edge"][0].numpy()
    # Curvature: red = k1, green = k2 (so flat is black, a cylinder red, a sphere yellow).
    k = labels["curvature"].numpy()
    curvature = np.zeros((*k.shape[1:], 3))
    curvature[..., :2] = np.moveaxis(np.tanh(np.maximum(k, 0) / 3.0), 0, -1)
    curvature[~masks["curvature"].numpy()] = _MISSING
    regions = sample["regions"].numpy()
    region_colors = np.random.default_rng(7).uniform(0.15, 1.0, (regions.max() + 1, 3))
    return {
        "image": image,
        "semantic": semantic,
        "depth": depth,
        "normal": normal,
        "edge": edge,
        "curvature": curvature,
        "regions": region_colors[regions],
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("docs/images/synthetic_samples.png"))
    parser.add_argument("--num", type=int, default=5, help="number of samples (rows)")
    parser.add_argument("--resolution", type=int, default=128)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--first", type=int, default=0, help="index of the first sample")
    args = parser.parse_args()

    dataset = SyntheticDataset(num_samples=args.first + args.num, resolution=args.resolution, seed=args.seed)
    fig, axes = plt.subplots(args.num, len(_COLUMNS), figsize=(1.9 * len(_COLUMNS), 1.9 * args.num), squeeze=False)
    for row in range(args.num):
        panels = _panels(dataset[args.first + row], dataset.max_depth)
        for col, name in enumerate(_COLUMNS):
            ax = axes[row, col]
            ax.imshow(panels[name], cmap="gray", vmin=0, vmax=1, interpolation="nearest")
            ax.set_xticks([])
            ax.set_yticks([])
            if row == 0:
                ax.set_title(name, fontsize=10)
    fig.tight_layout(pad=0.3)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(args.out, dpi=110)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
