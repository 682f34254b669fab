"""Writers of tiny Taskonomy, Cityscapes and NYU Depth v2 fixtures in the publishers' exact formats.

16-bit PNGs are written from uint16 arrays (Pillow mode ``I;16``), label PNGs as 8-bit ``L``,
images as 8-bit RGB; the NYU ``.mat`` is HDF5 with a 512-byte MATLAB v7.3 header and MATLAB's
reversed axis order.
"""

from __future__ import annotations

import json
from pathlib import Path

import h5py
import numpy as np
import scipy.io
from PIL import Image


def write_png(path: Path, array: np.ndarray) -> Path:
    """uint16 (H, W) -> 16-bit gray; uint8 (H, W) -> 8-bit gray; uint8 (H, W, 3) -> 8-bit RGB."""
    path.parent.mkdir(parents=True, exist_ok=True)
    assert array.dtype in (np.uint8, np.uint16), array.dtype
    Image.fromarray(array).save(path)
    return path


# ------------------------------------------------------------------------------------ Taskonomy
def taskonomy_view_arrays(rng: np.random.Generator, size: int = 8) -> dict[str, np.ndarray]:
    """Raw arrays of one view: 512-like domains at ``size``, semantic at ``size // 2``."""
    depth = rng.integers(200, 6000, (size, size)).astype(np.uint16)
    depth[0, :3] = 65535  # missing
    normal = rng.integers(0, 256, (size, size, 3)).astype(np.uint8)
    normal[0, :3] = 128  # missing where depth is missing, as in the release
    curvature = rng.integers(1, 255, (size, size, 3)).astype(np.uint8)
    curvature[..., 2] = 0
    curvature[0, :3] = 0
    return {
        "rgb": rng.integers(0, 256, (size, size, 3)).astype(np.uint8),
        "depth_zbuffer": depth,
        "normal": normal,
        "principal_curvature": curvature,
        "edge_texture": rng.integers(0, 12000, (size, size)).astype(np.uint16),
        "segment_semantic": rng.integers(0, 18, (size // 2, size // 2)).astype(np.uint8),
    }


def write_taskonomy(
    root: Path,
    *,
    layout: str,
    building: str,
    views: dict[tuple[int, int], dict[str, np.ndarray]],
    semantic_spelling: str = "segment_semantic",
    fov: float = 1.0,
) -> None:
    """Write views in ``layout`` ``"building-first"``, ``"domain-first"`` or ``"domain-first-flat"``."""
    for (point, view), arrays in views.items():
        for domain, array in arrays.items():
            spelling = semantic_spelling if domain == "segment_semantic" else domain
            if layout == "building-first":
                folder = root / building / spelling
            elif layout == "domain-first":
                folder = root / spelling / "taskonomy" / building
            else:
                folder = root / spelling / building
            write_png(folder / f"point_{point}_view_{view}_domain_{spelling}.png", array)
        info = {"field_of_view_rads": fov, "resolution": arrays["rgb"].shape[0], "point_uuid": str(point)}
        folder = root / building / "point_info" if layout == "building-first" else root / "point_info" / building
        folder.mkdir(parents=True, exist_ok=True)
        (folder / f"point_{point}_view_{view}_domain_point_info.json").write_text(json.dumps(info))


# ----------------------------------------------------------------------------------- Cityscapes
def write_cityscapes_frame(
    root: Path,
    *,
    split: str,
    city: str,
    seq: int,
    frame: int,
    image: np.ndarray,
    label_ids: np.ndarray,
    instance_ids: np.ndarray,
    disparity: np.ndarray,
    camera: dict,
) -> str:
    stem = f"{city}_{seq:06d}_{frame:06d}"
    write_png(root / "leftImg8bit" / split / city / f"{stem}_leftImg8bit.png", image)
    write_png(root / "gtFine" / split / city / f"{stem}_gtFine_labelIds.png", label_ids.astype(np.uint8))
    write_png(root / "gtFine" / split / city / f"{stem}_gtFine_instanceIds.png", instance_ids.astype(np.uint16))
    write_png(root / "disparity" / split / city / f"{stem}_disparity.png", disparity.astype(np.uint16))
    cam_path = root / "camera" / split / city / f"{stem}_camera.json"
    cam_path.parent.mkdir(parents=True, exist_ok=True)
    cam_path.write_text(json.dumps(camera))
    return stem


def cityscapes_camera(*, baseline: float, fx: float, fy: float, u0: float, v0: float) -> dict:
    return {
        "extrinsic": {"baseline": baseline, "pitch": 0.05, "roll": 0.0, "x": 1.7, "y": -0.1, "yaw": 0.007, "z": 1.18},
        "intrinsic": {"fx": fx, "fy": fy, "u0": u0, "v0": v0},
    }


# ------------------------------------------------------------------------------------------ NYU
MATLAB_HEADER = (
    (b"MATLAB 7.3 MAT-file, Platform: GLNXA64, Created on: Mon Jan  1 00:00:00 2024 HDF5 schema 1.00 .").ljust(
        116, b" "
    )
    + b"\x00" * 8
    + b"\x00\x02IM"
)


def write_nyu_mat(
    path: Path,
    *,
    images: np.ndarray,
    depths: np.ndarray,
    labels: np.ndarray,
    instances: np.ndarray,
    names: list[str],
    skip: tuple[str, ...] = (),
) -> Path:
    """Write a labeled-NYU-style v7.3 .mat from (N, H, W[, 3]) arrays (stored as MATLAB does: reversed axes)."""
    assert len(MATLAB_HEADER) == 128
    path.parent.mkdir(parents=True, exist_ok=True)
    with h5py.File(path, "w", userblock_size=512) as f:
        data = {
            "images": (images.transpose(0, 3, 2, 1).astype(np.uint8), "uint8"),  # (N, 3, W, H)
            "depths": (depths.transpose(0, 2, 1).astype(np.float32), "single"),  # (N, W, H)
            "labels": (labels.transpose(0, 2, 1).astype(np.uint16), "uint16"),
            "instances": (instances.transpose(0, 2, 1).astype(np.uint8), "uint8"),
        }
        for key, (array, matlab_class) in data.items():
            if key in skip:
                continue
            ds = f.create_dataset(key, data=array)
            ds.attrs["MATLAB_class"] = np.bytes_(matlab_class)
        if "names" not in skip:
            refs = f.create_group("#refs#")
            ref_list = []
            for i, name in enumerate(names):
                chars = np.array([[ord(c)] for c in name], dtype=np.uint16)  # MATLAB 1xL char -> (L, 1)
                ds = refs.create_dataset(f"n{i}", data=chars)
                ds.attrs["MATLAB_class"] = np.bytes_("char")
                ds.attrs["MATLAB_int_decode"] = np.int32(2)
                ref_list.append(ds.ref)
            names_ds = f.create_dataset("names", shape=(1, len(names)), dtype=h5py.ref_dtype)
            names_ds[0, :] = ref_list
            names_ds.attrs["MATLAB_class"] = np.bytes_("cell")
    with open(path, "r+b") as fh:
        fh.write(MATLAB_HEADER)
    return path


def write_nyu_splits(path: Path, *, train: list[int], test: list[int]) -> Path:
    """``splits.mat`` (MATLAB v5) with 1-based (k, 1) double index columns."""
    scipy.io.savemat(
        path,
        {
            "trainNdxs": np.array(train, dtype=np.float64)[:, None],
            "testNdxs": np.array(test, dtype=np.float64)[:, None],
        },
    )
    return path
