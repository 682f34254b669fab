"""File reading and atomic writing for the real-dataset loaders.

Every reader checks what it opens (PNG bit depth and colour type from the file header, JSON
keys, HDF5 datasets) and raises an error that names the file, so a broken download is found at
the file that is broken rather than as a wrong number deep inside training.

16-bit PNGs are decoded through numpy, never through ``torchvision.transforms.ToTensor``: that
maps Pillow's ``I;16`` mode to ``int16`` and wraps values above 32767 (Taskonomy's 65535
"missing depth" becomes -1).
"""

from __future__ import annotations

import json
import os
import struct
import tempfile
import zipfile
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

__all__ = [
    "PngHeader",
    "read_png_header",
    "read_gray_png",
    "read_rgb_png",
    "read_json",
    "atomic_write_bytes",
    "atomic_save_npz",
    "load_npz",
    "check_label_size",
]

_PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
# PNG colour types (PNG spec, IHDR chunk).
_COLOR_TYPE_NAMES = {0: "grayscale", 2: "RGB", 3: "palette", 4: "grayscale+alpha", 6: "RGBA"}


@dataclass(frozen=True)
class PngHeader:
    """The fields of a PNG's IHDR chunk that decide how to decode it.

    Attributes:
        width: Image width in pixels.
        height: Image height in pixels.
        bit_depth: Bits per sample (1, 2, 4, 8 or 16).
        color_type: 0 grayscale, 2 RGB, 3 palette, 4 grayscale+alpha, 6 RGBA.
    """

    width: int
    height: int
    bit_depth: int
    color_type: int

    def describe(self) -> str:
        kind = _COLOR_TYPE_NAMES.get(self.color_type, f"color type {self.color_type}")
        return f"{self.bit_depth}-bit {kind}, {self.width}x{self.height}"


def read_png_header(path: str | os.PathLike) -> PngHeader:
    """Read a PNG's size, bit depth and colour type from its header without decoding it.

    Pillow silently reduces some formats (e.g. 48-bit RGB to 8-bit), so the bit depth is taken
    from the file itself.

    Args:
        path: A PNG file.

    Returns:
        The header fields.

    Raises:
        FileNotFoundError: The file does not exist.
        ValueError: The file is not a PNG (wrong signature or truncated header).

    Example:
        >>> import tempfile
        >>> path = Path(tempfile.mkdtemp()) / "x.png"
        >>> Image.fromarray(np.zeros((2, 3), np.uint16)).save(path)
        >>> read_png_header(path).describe()
        '16-bit grayscale, 3x2'
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"PNG file not found: {path}")
    with open(path, "rb") as f:
        head = f.read(33)
    # 8-byte signature, 4-byte chunk length, b"IHDR", then width, height, bit depth, colour type.
    if len(head) < 33 or head[:8] != _PNG_SIGNATURE or head[12:16] != b"IHDR":
        raise ValueError(f"{path} is not a valid PNG file (bad signature or header)")
    width, height, bit_depth, color_type = struct.unpack(">IIBB", head[16:26])
    return PngHeader(width, height, bit_depth, color_type)


def _decode(path: Path) -> np.ndarray:
    try:
        with Image.open(path) as img:
            img.load()
            return np.asarray(img)
    except (OSError, SyntaxError, ValueError) as e:
        raise ValueError(f"could not decode PNG {path}: {e}") from e


def read_gray_png(path: str | os.PathLike, *, bit_depths: Iterable[int] = (16,)) -> np.ndarray:
    """Read a single-channel PNG exactly, as integers.

    Args:
        path: A grayscale PNG.
        bit_depths: Accepted bit depths, e.g. ``(16,)`` for Taskonomy depth and Cityscapes
            disparity, ``(8,)`` for label maps, ``(8, 16)`` where both occur.

    Returns:
        ``(H, W)`` array: ``uint8`` for 8-bit files, ``uint16`` for 16-bit files.

    Raises:
        FileNotFoundError: The file does not exist.
        ValueError: Not a PNG, not single-channel, a bit depth outside ``bit_depths``, or the
            pixel data cannot be decoded (truncated or corrupt file). The message names the file.

    Example:
        >>> import tempfile
        >>> path = Path(tempfile.mkdtemp()) / "depth.png"
        >>> Image.fromarray(np.array([[510, 65535]], np.uint16)).save(path)
        >>> read_gray_png(path, bit_depths=(16,)).tolist()  # 65535 stays 65535 (no int16 wrap-around)
        [[510, 65535]]
    """
    path = Path(path)
    bit_depths = tuple(bit_depths)
    header = read_png_header(path)
    if header.color_type != 0 or header.bit_depth not in bit_depths:
        want = " or ".join(f"{b}-bit" for b in bit_depths)
        raise ValueError(f"{path}: expected a {want} single-channel (grayscale) PNG, found {header.describe()}")
    a = _decode(path)
    if a.shape != (header.height, header.width):
        raise ValueError(f"{path}: decoded to shape {a.shape}, expected ({header.height}, {header.width})")
    # Pillow 13 opens 16-bit PNGs as "I;16" (uint16), older Pillows as "I" (int32): normalise.
    return a.astype(np.uint16 if header.bit_depth == 16 else np.uint8)


def read_rgb_png(path: str | os.PathLike) -> np.ndarray:
    """Read an 8-bit RGB PNG.

    Args:
        path: An 8-bit RGB PNG (Taskonomy ``rgb``, ``normal``, ``principal_curvature``;
            Cityscapes ``leftImg8bit``).

    Returns:
        ``(H, W, 3)`` uint8 array.

    Raises:
        FileNotFoundError: The file does not exist.
        ValueError: Not an 8-bit RGB PNG, or corrupt pixel data; the message names the file.

    Example:
        >>> read_rgb_png("leftImg8bit/val/lindau/lindau_000000_000019_leftImg8bit.png").shape  # doctest: +SKIP
        (1024, 2048, 3)
    """
    path = Path(path)
    header = read_png_header(path)
    if header.color_type != 2 or header.bit_depth != 8:
        raise ValueError(f"{path}: expected an 8-bit RGB PNG, found {header.describe()}")
    a = _decode(path)
    if a.shape != (header.height, header.width, 3):
        raise ValueError(f"{path}: decoded to shape {a.shape}, expected ({header.height}, {header.width}, 3)")
    return a.astype(np.uint8)


def read_json(path: str | os.PathLike, *, required: Mapping[str, Iterable[str]] | None = None) -> dict:
    """Read a JSON file and check that nested keys exist.

    Args:
        path: A JSON file.
        required: ``{section: keys}``; ``section`` ``""`` means the top level. For example
            ``{"extrinsic": ["baseline"], "intrinsic": ["fx", "fy", "u0", "v0"]}``.

    Returns:
        The parsed object.

    Raises:
        FileNotFoundError: The file does not exist.
        ValueError: Invalid JSON or a missing key; the message names the file and the key.

    Example:
        >>> read_json("camera.json", required={"intrinsic": ["fx"]})["intrinsic"]["fx"]  # doctest: +SKIP
        2262.52
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"JSON file not found: {path}")
    try:
        with open(path, encoding="utf-8") as f:
            data = json.load(f)
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise ValueError(f"could not parse JSON {path}: {e}") from e
    for section, keys in (required or {}).items():
        node = data if section == "" else (data.get(section) if isinstance(data, dict) else None)
        if not isinstance(node, dict):
            raise ValueError(f"{path}: missing section {section!r}")
        missing = [k for k in keys if k not in node]
        if missing:
            where = "top level" if section == "" else f"section {section!r}"
            raise ValueError(f"{path}: missing key(s) {missing} in {where}")
    return data


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> None:
    """Write ``data`` to ``path`` so readers see either the old file or the whole new one.

    The bytes go to a temporary file in the same folder, which is then renamed over ``path``
    (``os.replace`` is atomic on POSIX and Windows within one file system).

    Example:
        >>> import tempfile
        >>> atomic_write_bytes(Path(tempfile.mkdtemp()) / "recipe.json", b"{}")
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def atomic_save_npz(path: str | os.PathLike, arrays: Mapping[str, np.ndarray]) -> None:
    """Save arrays to a compressed ``.npz`` atomically (see :func:`atomic_write_bytes`).

    Example:
        >>> import tempfile
        >>> atomic_save_npz(Path(tempfile.mkdtemp()) / "x.npz", {"edge": np.zeros((4, 4), np.float32)})
    """
    import io

    buf = io.BytesIO()
    np.savez_compressed(buf, **arrays)
    atomic_write_bytes(path, buf.getvalue())


def load_npz(path: str | os.PathLike, *, keys: Iterable[str]) -> dict[str, np.ndarray]:
    """Load named arrays from an ``.npz`` file.

    Args:
        path: The file.
        keys: Arrays that must be present.

    Returns:
        ``{key: array}`` for ``keys``.

    Raises:
        ValueError: The file is corrupt or lacks a key; the message names the file.

    Example:
        >>> import tempfile
        >>> path = Path(tempfile.mkdtemp()) / "x.npz"
        >>> atomic_save_npz(path, {"edge": np.zeros((4, 4), np.float32)})
        >>> load_npz(path, keys=["edge"])["edge"].shape
        (4, 4)
    """
    path = Path(path)
    keys = list(keys)
    try:
        with np.load(path, allow_pickle=False) as z:
            missing = [k for k in keys if k not in z.files]
            if missing:
                raise ValueError(f"{path}: missing array(s) {missing}; found {z.files}")
            return {k: z[k] for k in keys}
    except (OSError, EOFError, ValueError, zipfile.BadZipFile) as e:
        if isinstance(e, ValueError) and str(path) in str(e):
            raise
        raise ValueError(f"could not read {path}: {e}") from e


def check_label_size(
    label_path: str | os.PathLike,
    label_size: tuple[int, int],
    image_path: str | os.PathLike,
    image_size: tuple[int, int],
    *,
    integer_fraction: bool = False,
) -> None:
    """Refuse a label map whose size differs from its image's, rather than stretch it.

    Args:
        label_path: The label file.
        label_size: Its ``(H, W)``.
        image_path: The image it belongs to.
        image_size: The image's ``(H, W)``.
        integer_fraction: Also accept the image size divided by one integer on both sides (a
            label published at lower resolution, e.g. Taskonomy's 256x256 semantics beside a
            512x512 image).

    Raises:
        ValueError: The sizes differ; the message names both files and both sizes.

    Example:
        >>> check_label_size("depth.png", (4, 4), "rgb.png", (8, 8))
        Traceback (most recent call last):
        ...
        ValueError: label file depth.png is 4x4 (HxW) but its image rgb.png is 8x8; a label must have its image's size
    """
    (h, w), (H, W) = tuple(label_size), tuple(image_size)
    if (h, w) == (H, W):
        return
    if integer_fraction and h > 0 and w > 0 and H % h == 0 and W % w == 0 and H // h == W // w:
        return
    allowed = "its image's size or that divided by an integer" if integer_fraction else "its image's size"
    raise ValueError(
        f"label file {label_path} is {h}x{w} (HxW) but its image {image_path} is {H}x{W}; a label must have {allowed}"
    )
