"""Add column headings to a sample grid saved before the grids had them.

Usage (from the repository root)::

    python docs/scripts/add_grid_headings.py docs/images/demo_step400.png docs/images/edit_remove_demo.png

A grid written by ``examples.label_images.save_grid`` without headings holds its column titles in
its PNG metadata (``columns``), square cells and 2 white pixels between them. This script cuts
the cells out and saves the same pixels again with ``save_grid``, which now writes each title
above its column. Grids that already have headings (a ``layout`` entry) are left alone.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

if __package__ in (None, ""):  # run as a script: make the repository importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

import numpy as np  # noqa: E402
import torch  # noqa: E402
from PIL import Image  # noqa: E402

from examples.label_images import save_grid  # noqa: E402

PAD = 2  # save_grid's default padding, which every grid without headings used


def split_grid(path: Path) -> list[tuple[str, torch.Tensor]]:
    """The ``[(title, rgb (B, 3, H, W))]`` columns of a grid without headings."""
    image = Image.open(path)
    titles = image.info["columns"].split(", ")
    pixels = torch.from_numpy(np.array(image.convert("RGB"))).permute(2, 0, 1).float() / 255  # (3, height, width)
    width = (pixels.shape[2] - PAD) // len(titles) - PAD
    rows = (pixels.shape[1] - PAD) // (width + PAD)  # square cells
    if (width + PAD) * len(titles) + PAD != pixels.shape[2] or (width + PAD) * rows + PAD != pixels.shape[1]:
        raise ValueError(f"{path} is not a grid of {len(titles)} columns of square cells with {PAD}-pixel gaps")
    columns = []
    for j, title in enumerate(titles):
        left = PAD + j * (width + PAD)
        cells = [pixels[:, PAD + i * (width + PAD) :][:, :width, left : left + width] for i in range(rows)]
        columns.append((title, torch.stack(cells)))  # (B, 3, H, W)
    return columns


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("grids", nargs="+", type=Path, help="grid PNGs to rewrite in place")
    args = parser.parse_args(argv)
    for path in args.grids:
        if "layout" in Image.open(path).info:
            print(f"{path}: has headings already")
            continue
        save_grid(path, split_grid(path), pad=PAD)
        print(f"{path}: headings added")


if __name__ == "__main__":
    main()
