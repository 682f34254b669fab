"""Cityscapes (Cordts et al., CVPR 2016) read from the official package layout.

``{root}/leftImg8bit/{split}/{city}/{city}_{seq}_{frame}_leftImg8bit.png`` (8-bit RGB) plus, for the
same ``{city}_{seq}_{frame}`` stem:

* ``gtFine/{split}/{city}/{stem}_gtFine_labelIds.png`` (8-bit, ids 0..33) -> ``semantic``
* ``gtFine/{split}/{city}/{stem}_gtFine_instanceIds.png`` (16-bit; ``class * 1000 + k`` for instances,
  the plain class id otherwise) -> ``regions``
* ``disparity/{split}/{city}/{stem}_disparity.png`` (16-bit) and ``camera/{split}/{city}/{stem}_camera.json``
  -> ``depth`` and ``normal``

Labels (the paper's four Cityscapes labels; see ``docs/datasets/cityscapes.md``):

* ``semantic``: the 35 label ids (no ignore id), or with ``train_ids=True`` the 19 train ids with
  255 = ignore.
* ``depth``: ``baseline * fx / d`` with disparity ``d = (p - 1) / 256``; ``p <= 1`` is missing, and so
  are the ego vehicle and the rectification border (label ids 1 and 2). Disparity is averaged
  when resizing (affine in pixel coordinates on a plane), then turned into depth.
* ``normal``: least-squares plane normals over a ``normal_window`` patch of the resized depth,
  with the JSON intrinsics rescaled to the output size; camera frame (x right, y down, z forward),
  pointing toward the camera.
* ``edge``: binary Canny edges of the resized image (numpy/scipy implementation).
"""

from __future__ import annotations

import os
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from label_merge import LabelSpec

from .base import RealDataset
from .cityscapes_labels import IGNORE_TRAIN_ID, NON_SCENE_IDS, NUM_LABEL_IDS, train_id_lut
from .edges import canny
from .geometry import normals_from_depth
from .io import check_label_size, read_gray_png, read_json, read_png_header, read_rgb_png
from .transforms import (
    Intrinsics,
    as_size,
    image_to_tensor,
    resize_continuous,
    resize_nearest,
    resize_rgb,
    rgb_tensor_to_gray,
)

__all__ = ["CityscapesDataset", "CameraCalibration", "read_camera", "decode_disparity", "disparity_to_depth"]

_STEM_RE = re.compile(r"^(?P<city>.+)_(?P<seq>\d{6})_(?P<frame>\d{6})$")
_IMAGE_SUFFIX = "_leftImg8bit.png"


@dataclass(frozen=True)
class CameraCalibration:
    """Stereo baseline and left-camera intrinsics of one Cityscapes image.

    Attributes:
        baseline: Stereo baseline in metres (``extrinsic.baseline``).
        intrinsics: ``fx, fy, u0, v0`` of the full-resolution image (``intrinsic``).
    """

    baseline: float
    intrinsics: Intrinsics


def read_camera(path: str | os.PathLike) -> CameraCalibration:
    """Read a ``*_camera.json``.

    Raises:
        FileNotFoundError: The file does not exist.
        ValueError: Invalid JSON, a missing key or a non-positive value; the message names the file.

    Example:
        >>> read_camera("camera/val/lindau/lindau_000000_000019_camera.json").baseline  # doctest: +SKIP
        0.222126
    """
    data = read_json(path, required={"extrinsic": ["baseline"], "intrinsic": ["fx", "fy", "u0", "v0"]})
    try:
        baseline = float(data["extrinsic"]["baseline"])
        k = {key: float(data["intrinsic"][key]) for key in ("fx", "fy", "u0", "v0")}
    except (TypeError, ValueError) as e:
        raise ValueError(f"{path}: camera values must be numbers: {e}") from e
    if not (baseline > 0 and k["fx"] > 0 and k["fy"] > 0):
        raise ValueError(f"{path}: baseline, fx and fy must be positive, got {baseline}, {k['fx']}, {k['fy']}")
    return CameraCalibration(baseline, Intrinsics(k["fx"], k["fy"], k["u0"], k["v0"]))


def decode_disparity(raw: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Cityscapes 16-bit disparity PNG values -> disparity in pixels.

    ``d = (p - 1) / 256`` for ``p > 0`` (the official rule); ``p = 0`` is invalid, and ``p = 1``
    (zero disparity, a point at infinity) is treated as invalid too.

    Args:
        raw: ``(H, W)`` uint16 PNG values.

    Returns:
        ``(disparity, valid)``: ``(H, W)`` float64 pixels (0 where invalid) and bool.

    Example:
        >>> d, ok = decode_disparity(np.array([[0, 1, 257]], np.uint16))
        >>> d.tolist(), ok.tolist()
        ([[0.0, 0.0, 1.0]], [[False, False, True]])
    """
    valid = raw > 1
    return np.where(valid, (raw.astype(np.float64) - 1.0) / 256.0, 0.0), valid


def disparity_to_depth(
    disparity: np.ndarray, valid: np.ndarray, *, baseline: float, fx: float
) -> tuple[np.ndarray, np.ndarray]:
    """Metric depth ``baseline * fx / d`` from disparity ``d`` in pixels.

    Args:
        disparity: ``(H, W)`` disparity in pixels of the image whose focal length is ``fx``.
        valid: ``(H, W)`` bool; pixels with ``d <= 0`` become invalid too.
        baseline: Stereo baseline, metres.
        fx: Focal length in pixels.

    Returns:
        ``(depth, valid)``: ``(H, W)`` float64 metres (0 where invalid) and bool.

    Example:
        >>> d, ok = disparity_to_depth(np.array([[0.0, 1.0]]), np.array([[True, True]]), baseline=0.2, fx=2000.0)
        >>> d.tolist(), ok.tolist()
        ([[0.0, 400.0]], [[False, True]])
    """
    valid = valid & (disparity > 0)
    return np.where(valid, baseline * fx / np.where(valid, disparity, 1.0), 0.0), valid


class CityscapesDataset(RealDataset):
    """Cityscapes images with semantic, depth, normal and edge labels and instance regions.

    Args:
        root: Folder holding ``leftImg8bit/``, ``gtFine/``, ``disparity/`` and ``camera/``.
        split: ``"train"``, ``"val"``, ``"test"`` or any other folder under ``leftImg8bit/``.
        labels: Subset of ``semantic, depth, normal, edge``; None means all.
        resolution: Output ``(H, W)`` (or an int for square).
        train_ids: Semantic ids as the 19 train ids (255 = ignore) instead of the 35 label ids.
        canny_sigma: Gaussian sigma of the Canny edge detector, in output pixels.
        canny_low: Canny low threshold (gradient per pixel, intensities in [0, 1]).
        canny_high: Canny high threshold.
        normal_window: Patch size of the plane fit for normals (odd, in output pixels).
        cache_dir: Root of the derived-label cache (default ``{root}/label_merge_cache``).
        use_cache: Read derived labels from the cache when present.
        transform: Optional callable applied to each finished sample.

    A sample: ``image`` ``(3, H, W)`` in [-1, 1]; ``labels``: ``semantic`` int64 ``(H, W)``,
    ``depth`` ``(1, H, W)`` metres, ``normal`` ``(3, H, W)``, ``edge`` ``(1, H, W)`` in {0, 1};
    ``masks`` for each; ``regions`` the instance ids ``(H, W)`` int64; ``meta`` with ``city``,
    ``stem``, ``index``, ``hflip`` and, when depth or normal is selected, ``intrinsics``
    ``[fx, fy, cx, cy]`` at the output size.

    Raises:
        FileNotFoundError: The split folder, or a file some selected label needs, is missing
            (checked for every sample at construction; the message names the first missing file).
        ValueError: Unknown labels, a bad file name, or bad parameters.

    Example:
        >>> ds = CityscapesDataset("/data/cityscapes", split="val", resolution=(256, 512))  # doctest: +SKIP
        >>> ds[0]["labels"]["semantic"].shape  # doctest: +SKIP
        torch.Size([256, 512])
    """

    name = "cityscapes"
    all_labels = ("semantic", "depth", "normal", "edge")
    derived_keys = {
        "depth": ("depth", "depth_valid"),
        "normal": ("normal", "normal_valid"),
        "edge": ("edge",),
    }

    def __init__(
        self,
        root: str | os.PathLike,
        split: str = "train",
        labels: Sequence[str] | None = None,
        resolution: int | tuple[int, int] = (256, 512),
        *,
        train_ids: bool = False,
        canny_sigma: float = 1.0,
        canny_low: float = 0.03,
        canny_high: float = 0.06,
        normal_window: int = 5,
        cache_dir: str | os.PathLike | None = None,
        use_cache: bool = True,
        transform: Callable[[dict], dict] | None = None,
    ) -> None:
        if not 0 <= canny_low <= canny_high:
            raise ValueError(f"need 0 <= canny_low <= canny_high, got {canny_low}, {canny_high}")
        if not isinstance(normal_window, int) or normal_window < 3 or normal_window % 2 == 0:
            raise ValueError(f"normal_window must be an odd int >= 3, got {normal_window!r}")
        self.split = split
        self.train_ids = bool(train_ids)
        self.canny = {
            "sigma": float(canny_sigma),
            "low_threshold": float(canny_low),
            "high_threshold": float(canny_high),
        }
        self.normal_window = normal_window
        super().__init__(
            root=root,
            labels=labels,
            size=as_size(resolution),
            cache_dir=cache_dir,
            use_cache=use_cache,
            transform=transform,
        )
        image_dir = self.root / "leftImg8bit" / split
        if not image_dir.is_dir():
            have = (
                sorted(p.name for p in (self.root / "leftImg8bit").iterdir())
                if (self.root / "leftImg8bit").is_dir()
                else []
            )
            raise FileNotFoundError(f"Cityscapes image folder not found: {image_dir} (splits present: {have})")
        self.samples: list[tuple[str, str]] = []  # (city, stem)
        for city_dir in sorted(p for p in image_dir.iterdir() if p.is_dir()):
            for name in sorted(os.listdir(city_dir)):
                if not name.endswith(_IMAGE_SUFFIX):
                    continue
                stem = name[: -len(_IMAGE_SUFFIX)]
                if _STEM_RE.match(stem) is None:
                    raise ValueError(
                        f"{city_dir / name}: expected a name {{city}}_{{seq:06}}_{{frame:06}}_leftImg8bit.png"
                    )
                self.samples.append((city_dir.name, stem))
        if not self.samples:
            raise ValueError(f"no *_leftImg8bit.png images found under {image_dir}")
        self._check_files()

    # ----------------------------------------------------------------------------------- files
    def path(self, index: int, kind: str) -> Path:
        """Path of one file of sample ``index``; ``kind`` in image, label_ids, instance_ids, disparity, camera."""
        city, stem = self.samples[index]
        folder, suffix = {
            "image": ("leftImg8bit", _IMAGE_SUFFIX),
            "label_ids": ("gtFine", "_gtFine_labelIds.png"),
            "instance_ids": ("gtFine", "_gtFine_instanceIds.png"),
            "disparity": ("disparity", "_disparity.png"),
            "camera": ("camera", "_camera.json"),
        }[kind]
        return self.root / folder / self.split / city / f"{stem}{suffix}"

    def _needed_kinds(self) -> list[str]:
        kinds = ["image", "instance_ids"]
        if "semantic" in self.labels or "depth" in self.labels or "normal" in self.labels:
            kinds.append("label_ids")  # depth masks the ego vehicle and rectification border by label id
        if "depth" in self.labels or "normal" in self.labels:
            kinds += ["disparity", "camera"]
        return kinds

    def _check_files(self) -> None:
        listings: dict[Path, set[str]] = {}
        for kind in self._needed_kinds():
            missing = []
            for i in range(len(self.samples)):
                p = self.path(i, kind)
                if p.parent not in listings:
                    listings[p.parent] = set(os.listdir(p.parent)) if p.parent.is_dir() else set()
                if p.name not in listings[p.parent]:
                    missing.append(p)
            if missing:
                raise FileNotFoundError(
                    f"Cityscapes {kind} file missing for {len(missing)} of {len(self.samples)} {self.split!r} "
                    f"images, e.g. {missing[0]}"
                )

    # ------------------------------------------------------------------------------ label specs
    def all_label_specs(self) -> dict[str, LabelSpec]:
        semantic = (
            LabelSpec.categorical(19, ignore_index=IGNORE_TRAIN_ID)
            if self.train_ids
            else LabelSpec.categorical(NUM_LABEL_IDS)
        )
        return {
            "semantic": semantic,
            # Street depth from disparity: a rough range; measure yours with label_statistics.
            "depth": LabelSpec.continuous(1, shift=15.0, scale=15.0),
            "normal": LabelSpec.continuous(3),
            "edge": LabelSpec.continuous(1),
        }

    def derived_recipe(self) -> dict:
        return {
            "version": 1,
            "depth": "baseline*fx/((p-1)/256), p<=1 and label ids 1,2 missing, disparity area-resized",
            "normal": {"method": "plane", "window": self.normal_window, "min_valid_fraction": 0.5},
            "edge": {"canny": self.canny, "gray": "ITU-R 601 luma of the resized image"},
        }

    def __len__(self) -> int:
        return len(self.samples)

    def sample_key(self, index: int) -> str:
        city, stem = self.samples[index]
        return f"{self.split}/{city}/{stem}"

    # ------------------------------------------------------------------------------ decoding
    def _image_size(self, index: int) -> tuple[int, int]:
        """``(H, W)`` of sample ``index``'s image, from its PNG header."""
        header = read_png_header(self.path(index, "image"))
        return header.height, header.width

    def _read_label_png(self, index: int, kind: str, bit_depths: tuple[int, ...], image_size: tuple[int, int]):
        """A label PNG of sample ``index``, checked to be the size of its image (never stretched)."""
        path = self.path(index, kind)
        raw = read_gray_png(path, bit_depths=bit_depths)
        check_label_size(path, raw.shape, self.path(index, "image"), image_size)
        return raw

    def _label_ids(self, index: int, image_size: tuple[int, int]) -> np.ndarray:
        ids = self._read_label_png(index, "label_ids", (8,), image_size)
        if ids.size and int(ids.max()) > 33:
            raise ValueError(
                f"{self.path(index, 'label_ids')}: Cityscapes label ids must lie in 0..33, found {int(ids.max())}"
            )
        return ids

    def output_intrinsics(self, index: int, native_size: tuple[int, int]) -> tuple[CameraCalibration, Intrinsics]:
        camera = read_camera(self.path(index, "camera"))
        return camera, camera.intrinsics.resized(from_size=native_size, to_size=self.size)

    def _depth(self, index: int) -> tuple[np.ndarray, np.ndarray, Intrinsics]:
        """Depth at output size: ``((h, w) float32 metres, (h, w) bool, output intrinsics)``."""
        image_size = self._image_size(index)
        raw = self._read_label_png(index, "disparity", (16,), image_size)
        ids = self._label_ids(index, image_size)
        camera, k_out = self.output_intrinsics(index, raw.shape)
        disparity, valid = decode_disparity(raw)  # native pixels
        valid &= ~np.isin(ids, NON_SCENE_IDS)
        # Resize disparity, not depth: it is affine in pixel coordinates on a plane. It stays in
        # native pixels, so the native fx converts it.
        d, ok = resize_continuous(torch.from_numpy(disparity), self.size, valid=torch.from_numpy(valid))
        depth, ok = disparity_to_depth(d.numpy(), ok.numpy(), baseline=camera.baseline, fx=camera.intrinsics.fx)
        return depth.astype(np.float32), ok, k_out

    def compute_derived(self, index: int, *, keys: Sequence[str] | None = None) -> dict[str, np.ndarray]:
        keys = self.all_derived_keys() if keys is None else tuple(keys)
        out: dict[str, np.ndarray] = {}
        if any(k.startswith(("depth", "normal")) for k in keys):
            depth, valid, k_out = self._depth(index)
            out["depth"], out["depth_valid"] = depth, valid
            if any(k.startswith("normal") for k in keys):
                n, n_ok = normals_from_depth(
                    depth.astype(np.float64), k_out, valid=valid, method="plane", window=self.normal_window
                )
                out["normal"] = n.transpose(2, 0, 1).astype(np.float32)  # (3, h, w)
                out["normal_valid"] = n_ok
        if "edge" in keys:
            rgb = resize_rgb(read_rgb_png(self.path(index, "image")), self.size)
            out["edge"] = canny(rgb_tensor_to_gray(rgb), **self.canny)
        return {k: out[k] for k in keys}

    def __getitem__(self, index: int) -> dict:
        index = self._check_index(index)
        rgb = read_rgb_png(self.path(index, "image"))
        city, stem = self.samples[index]
        meta: dict = {"city": city, "stem": stem, "index": index}
        derived = self.derived(index)
        labels: dict[str, torch.Tensor] = {}
        masks: dict[str, torch.Tensor] = {}
        if "semantic" in self.labels:
            ids = torch.from_numpy(self._label_ids(index, rgb.shape[:2]).astype(np.int64))
            if self.train_ids:
                ids = torch.from_numpy(train_id_lut().astype(np.int64))[ids]
            semantic = resize_nearest(ids, self.size)
            labels["semantic"] = semantic
            masks["semantic"] = (
                semantic != IGNORE_TRAIN_ID if self.train_ids else torch.ones_like(semantic, dtype=torch.bool)
            )
        if "depth" in self.labels:
            labels["depth"] = torch.from_numpy(derived["depth"]).float()[None]
            masks["depth"] = torch.from_numpy(derived["depth_valid"]).bool()
        if "normal" in self.labels:
            labels["normal"] = torch.from_numpy(derived["normal"]).float()
            masks["normal"] = torch.from_numpy(derived["normal_valid"]).bool()
        if "edge" in self.labels:
            edge = torch.from_numpy(derived["edge"])
            labels["edge"] = edge.float()[None]
            masks["edge"] = torch.ones(self.size, dtype=torch.bool)
        if "depth" in self.labels or "normal" in self.labels:
            native = rgb.shape[:2]
            meta["intrinsics"] = self.output_intrinsics(index, native)[1].as_tensor()
        instances = torch.from_numpy(
            self._read_label_png(index, "instance_ids", (8, 16), rgb.shape[:2]).astype(np.int64)
        )
        sample = {
            "image": image_to_tensor(rgb, self.size),
            "labels": labels,
            "masks": masks,
            "regions": resize_nearest(instances, self.size),
            "meta": meta,
        }
        return self._finish(sample)
