"""Labels, masks and images as RGB pictures, and grids of them saved as PNG.

Used for the training sample grids and by the generation, editing and visualisation scripts.
Every function takes batched tensors and returns float RGB ``(B, 3, H, W)`` in [0, 1]; missing
pixels are drawn dark grey so that sparsity is visible. Grids carry a heading above each column.
"""

from __future__ import annotations

import colorsys
import json
import os
from collections.abc import Mapping, Sequence

import numpy as np
import torch
from PIL import Image, ImageDraw, ImageFont, PngImagePlugin

from label_merge import LabelSpec

__all__ = ["class_palette", "label_to_rgb", "image_to_rgb", "save_grid"]

MISSING = 0.15  # grey level of missing pixels
HEADING_SIZE = 11  # points of a grid's column headings
MIN_CELL_WIDTH = 64  # pixels: room for a heading such as "generated" at HEADING_SIZE


def class_palette(num_classes: int) -> torch.Tensor:
    """``(num_classes, 3)`` distinct colours in [0, 1] (golden-ratio hues, alternating value)."""
    colours = [
        colorsys.hsv_to_rgb((i * 0.618033988749895) % 1.0, 0.65, 0.95 if i % 2 == 0 else 0.7)
        for i in range(num_classes)
    ]
    return torch.tensor(colours, dtype=torch.float32)


def _robust_scale(x: torch.Tensor, present: torch.Tensor) -> torch.Tensor:
    """Scale each image of ``x`` ``(B, C, H, W)`` so its present values' 2-98% range is [0, 1]."""
    out = torch.zeros_like(x, dtype=torch.float32)
    for b in range(x.shape[0]):
        values = x[b][:, present[b]].float()
        if values.numel() == 0:
            continue
        lo, hi = torch.quantile(values.flatten(), torch.tensor([0.02, 0.98]))
        out[b] = ((x[b].float() - lo) / (hi - lo).clamp_min(1e-6)).clamp(0, 1)
    return out


def label_to_rgb(name: str, spec: LabelSpec, value: torch.Tensor, present: torch.Tensor | None = None) -> torch.Tensor:
    """Draw one label as RGB.

    Class maps use :func:`class_palette`; ``normal`` maps ``[-1, 1]`` to ``[0, 1]``; other
    continuous labels are scaled per image (one channel: grey; two: red/green; three or more:
    the first three as RGB).

    Args:
        name: The label's name (``"normal"`` gets the normal-map convention).
        spec: Its specification.
        value: ``(B, H, W)``/``(B, 1, H, W)`` class ids or ``(B, C, H, W)`` floats.
        present: Optional ``(B, H, W)`` bool; missing pixels are drawn grey.

    Returns:
        ``(B, 3, H, W)`` float in [0, 1].
    """
    if value.dim() == 3:
        value = value.unsqueeze(1)
    B, _, H, W = value.shape
    if present is None:
        present = torch.ones(B, H, W, dtype=torch.bool, device=value.device)
    present = present.reshape(B, H, W)
    if spec.is_categorical:
        ids = value[:, 0].long()
        if spec.ignore_index is not None:
            present = present & (ids != spec.ignore_index)
        rgb = class_palette(spec.num_classes)[ids.clamp(0, spec.num_classes - 1).cpu()].permute(0, 3, 1, 2)
    elif name == "normal" and value.shape[1] == 3:
        rgb = ((value.float().cpu() + 1) / 2).clamp(0, 1)
    else:
        scaled = _robust_scale(value.cpu(), present.cpu())
        C = scaled.shape[1]
        if C == 1:
            rgb = scaled.expand(-1, 3, -1, -1)
        elif C == 2:
            rgb = torch.cat([scaled, torch.zeros_like(scaled[:, :1])], dim=1)
        else:
            rgb = scaled[:, :3]
    return torch.where(present.cpu().unsqueeze(1), rgb, torch.full_like(rgb, MISSING))


def image_to_rgb(image: torch.Tensor) -> torch.Tensor:
    """``(B, 3, H, W)`` in [-1, 1] to [0, 1]."""
    return ((image.detach().float().cpu() + 1) / 2).clamp(0, 1)


def _font(size: int) -> ImageFont.ImageFont:
    # Pillow's own font (Aileron where FreeType is available): nothing to install or find on disk.
    return ImageFont.load_default(size=size)


def _text_width(font: ImageFont.ImageFont, text: str) -> int:
    left, _, right, _ = font.getbbox(text)
    return right - left


def _heading_font(titles: Sequence[str], width: int) -> ImageFont.ImageFont:
    """The largest font, from HEADING_SIZE down to 6 points, in which every word of every title fits ``width``."""
    words = [word for title in titles for word in title.split()]
    for size in range(HEADING_SIZE, 5, -1):
        font = _font(size)
        if all(_text_width(font, word) <= width for word in words):
            return font
    return font  # still too wide at 6 points: the longest words overrun their column


def _wrap(title: str, font: ImageFont.ImageFont, width: int) -> list[str]:
    """``title`` as lines no wider than ``width``, broken between words."""
    lines: list[str] = []
    for word in title.split():
        if lines and _text_width(font, f"{lines[-1]} {word}") <= width:
            lines[-1] = f"{lines[-1]} {word}"
        else:
            lines.append(word)
    return lines or [""]


def _draw_headings(image: Image.Image, titles: Sequence[str], cell_width: int, pad: int, font, line_height: int):
    """Each title, wrapped and centred, above its column."""
    draw = ImageDraw.Draw(image)
    for j, title in enumerate(titles):
        left = pad + j * (cell_width + pad)
        for k, line in enumerate(_wrap(title, font, cell_width)):
            x = left + (cell_width - _text_width(font, line)) / 2
            draw.text((x, pad + k * line_height), line, fill=(0, 0, 0), font=font)


def _enlarged(rgb: torch.Tensor, factor: int) -> torch.Tensor:
    """``(B, 3, H, W)`` with every pixel repeated ``factor`` times along both axes (nearest)."""
    return rgb.repeat_interleave(factor, dim=2).repeat_interleave(factor, dim=3)


def save_grid(
    path: str | os.PathLike,
    columns: Sequence[tuple[str, torch.Tensor]],
    *,
    pad: int = 2,
) -> None:
    """Save a grid with one row per image and one column per titled ``(B, 3, H, W)`` tensor.

    Each column's title is written above it (wrapped between words, in a smaller font when a
    word is wider than the column), and stored in the PNG's metadata (``columns``, comma
    separated, and ``layout``: rows, cell size, padding and heading height as JSON). Columns
    narrower than 64 pixels are enlarged by a whole factor (nearest) so that their headings
    stay legible.

    Args:
        path: Output PNG path (written to a temporary name, then renamed).
        columns: ``[(title, rgb)]`` with every ``rgb`` ``(B, 3, H, W)`` in [0, 1], same sizes.
        pad: White pixels between cells.
    """
    if not columns:
        raise ValueError("save_grid needs at least one column")
    B, _, H, W = columns[0][1].shape
    for title, rgb in columns:
        if tuple(rgb.shape) != (B, 3, H, W):
            raise ValueError(f"column {title!r} has shape {tuple(rgb.shape)}, expected {(B, 3, H, W)}")
    factor = -(-MIN_CELL_WIDTH // W) if W < MIN_CELL_WIDTH else 1
    columns = [(title, _enlarged(rgb.detach().float().cpu(), factor)) for title, rgb in columns]
    H, W = H * factor, W * factor
    titles = [title for title, _ in columns]
    font = _heading_font(titles, W)
    line_height = font.getbbox("Ag")[3] + 2
    heading = pad + max(len(_wrap(title, font, W)) for title in titles) * line_height
    n = len(columns)
    canvas = torch.ones(3, heading + B * (H + pad) + pad, n * (W + pad) + pad)  # (3, height, width)
    for j, (_, rgb) in enumerate(columns):
        for i in range(B):
            top, left = heading + pad + i * (H + pad), pad + j * (W + pad)
            canvas[:, top : top + H, left : left + W] = rgb[i]
    array = (canvas.permute(1, 2, 0).numpy() * 255).round().astype(np.uint8)  # (height, width, 3)
    image = Image.fromarray(array)
    _draw_headings(image, titles, W, pad, font, line_height)
    info = PngImagePlugin.PngInfo()
    info.add_text("columns", ", ".join(titles))
    # Where the cells are, for whoever reads the grid back.
    info.add_text("layout", json.dumps({"rows": B, "cell": [H, W], "pad": pad, "heading": heading}))
    path = os.fspath(path)
    temporary = f"{path}.{os.getpid()}.tmp"
    image.save(temporary, format="PNG", pnginfo=info)
    os.replace(temporary, path)


def label_columns(
    specs: Mapping[str, LabelSpec], labels: Mapping[str, torch.Tensor], masks: Mapping[str, torch.Tensor]
) -> list[tuple[str, torch.Tensor]]:
    """One ``(title, rgb)`` column per label given, in spec order."""
    return [
        (name, label_to_rgb(name, spec, labels[name], masks.get(name)))
        for name, spec in specs.items()
        if name in labels
    ]
