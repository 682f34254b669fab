"""Sample grids: one column per titled picture, each with its heading drawn above it."""

import json

import numpy as np
import pytest
import torch
from PIL import Image

from examples.label_images import save_grid

TITLES = ["semantic", "depth", "concept (PCA)", "generated", "real"]


def grey_columns(B, H, W):
    return [(title, torch.full((B, 3, H, W), 0.5)) for title in TITLES]


@pytest.mark.parametrize(("size", "factor"), [(64, 1), (32, 2), (20, 4)])
def test_each_column_has_its_heading_above_it(tmp_path, size, factor):
    save_grid(tmp_path / "grid.png", grey_columns(3, size, size))
    image = Image.open(tmp_path / "grid.png")
    assert image.info["columns"] == ", ".join(TITLES)
    layout = json.loads(image.info["layout"])
    cell, pad, heading = size * factor, layout["pad"], layout["heading"]
    assert layout["cell"] == [cell, cell] and layout["rows"] == 3 and heading > pad
    pixels = np.asarray(image.convert("L")).astype(int)  # (height, width)
    assert pixels.shape == (heading + 3 * (cell + pad) + pad, len(TITLES) * (cell + pad) + pad)
    for j in range(len(TITLES)):
        left = pad + j * (cell + pad)
        band = pixels[:heading, left : left + cell]
        assert (band < 128).sum() > 10, f"no heading over column {j}"  # dark text on white
        cells = pixels[heading + pad :, left : left + cell]
        assert (cells[:cell] == 128).all()  # the pictures themselves are untouched, only enlarged


def test_a_long_title_gets_a_smaller_font_and_wrapped_words(tmp_path):
    columns = [
        ("concept (PCA)", torch.zeros(1, 3, 64, 64)),
        ("surface_normals_of_the_scene", torch.zeros(1, 3, 64, 64)),
    ]
    save_grid(tmp_path / "grid.png", columns)
    layout = json.loads(Image.open(tmp_path / "grid.png").info["layout"])
    assert layout["heading"] < 40  # two short lines at most, not one line per letter
