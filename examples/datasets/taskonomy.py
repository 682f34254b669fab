"""Taskonomy (Zamir et al., CVPR 2018) read from its published folder layouts.

Layouts (all three found in the wild; detected automatically):

* building-first, the original per-building release: ``{root}/{building}/{domain}/*.png``
* domain-first, the Omnidata download tool: ``{root}/{domain}/taskonomy/{building}/*.png``
* domain-first without the component level (Stanford tars reorganised): ``{root}/{domain}/{building}/*.png``

Files are ``point_{P}_view_{V}_domain_{domain}.png`` and are matched across domains by
``(building, P, V)``. The semantic domain is spelled ``segment_semantic`` or ``segmentsemantic``
(folder and file suffix); both are accepted.

Labels and decodings (see ``docs/datasets/taskonomy.md``):

* ``semantic`` (``segment_semantic``, 8-bit, often 256x256): 0 = uncertain (ignored), 1 = background,
  2..17 the 16 COCO object classes; nearest-upsampled to the RGB size.
* ``depth`` (``depth_zbuffer``, 16-bit): metres = raw / 512; 65535 (and 0) = missing.
* ``normal`` (8-bit RGB): ``n = 2 p / 255 - 1`` renormalised, camera frame x right, y down,
  z forward, pointing toward the camera; (128, 128, 128) = missing.
* ``edge`` (``edge_texture``, 16-bit): raw / 65535, in [0, 1]; defined everywhere.
* ``curvature`` (``principal_curvature``, 8-bit RGB, R = k1, G = k2): ``2 p / 254 - 1``, i.e. the
  principal curvatures times 0.03 m (the generator's clipping radius), in [-1, 1]; (0, 0, 0) = missing.
* ``regions``: 4-connected components of the semantic map (derived; cached by ``prepare``).
"""

from __future__ import annotations

import os
import re
import warnings
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import torch

from label_merge import LabelSpec

from .base import RealDataset
from .cache import CACHE_DIRNAME
from .io import check_label_size, read_gray_png, read_png_header, read_rgb_png
from .regions import connected_regions
from .transforms import as_size, image_to_tensor, resize_continuous, resize_depth, resize_nearest, resize_normals

__all__ = ["TaskonomyDataset", "DOMAIN_SPELLINGS", "SEMANTIC_CLASS_NAMES"]

# Label name -> accepted spellings of its domain (folder name and file-name suffix).
DOMAIN_SPELLINGS: dict[str, tuple[str, ...]] = {
    "rgb": ("rgb",),
    "semantic": ("segment_semantic", "segmentsemantic"),
    "depth": ("depth_zbuffer",),
    "normal": ("normal",),
    "edge": ("edge_texture",),
    "curvature": ("principal_curvature",),
}

# Pixel value v of segment_semantic: 0 = uncertain, v >= 1 -> name SEMANTIC_CLASS_NAMES[v - 1].
# fmt: off
SEMANTIC_CLASS_NAMES: tuple[str, ...] = (
    "background", "bottle", "chair", "couch", "potted plant", "bed", "dining table", "toilet", "tv",
    "microwave", "oven", "toaster", "sink", "refrigerator", "book", "clock", "vase",
)
# fmt: on
NUM_SEMANTIC = len(SEMANTIC_CLASS_NAMES) + 1  # 18 ids: 0 (uncertain) .. 17

DEPTH_UNITS_PER_METRE = 512.0
DEPTH_MISSING = 65535
NORMAL_MISSING = (128, 128, 128)
# principal_curvature stores p = round((k r + 1) / 2 * 254) with r = 0.03 m (Omnidata annotator).
CURVATURE_RADIUS_M = 0.03

_FILE_RE = re.compile(r"^point_(?P<point>\d+)_view_(?P<view>\d+)_domain_(?P<domain>\w+)\.png$")


def _decode_semantic(raw: np.ndarray, path: Path) -> np.ndarray:
    if raw.size and int(raw.max()) >= NUM_SEMANTIC:
        raise ValueError(f"{path}: semantic ids must lie in 0..{NUM_SEMANTIC - 1}, found {int(raw.max())}")
    return raw.astype(np.int64)


class TaskonomyDataset(RealDataset):
    """Taskonomy views with semantic, depth, normal, edge and curvature labels.

    Args:
        root: Dataset root, in one of the layouts in the module docstring.
        buildings: Building names to use; None means every building found under ``root``.
        labels: Label names to load (subset of ``semantic, depth, normal, edge, curvature``);
            None means all.
        resolution: Output size, an int (square) or ``(H, W)``.
        cache_dir: Root of the derived-label cache (default ``{root}/label_merge_cache``).
        use_cache: Read derived labels (region ids) from the cache when present.
        transform: Optional callable applied to each finished sample (e.g.
            :class:`~examples.datasets.transforms.RandomHorizontalFlip`).

    A sample is ``{"image": (3, H, W) float in [-1, 1], "labels": {...}, "masks": {...},
    "regions": (H, W) int64, "meta": {"building", "point", "view", "index", "hflip"}}`` with
    ``labels["semantic"]`` int64 ``(H, W)`` and the others float32 ``(C, H, W)``.

    Views that lack a file for one of the needed domains are left out with a warning that
    counts them. Region ids need the semantic domain even when ``semantic`` is not selected.

    Raises:
        FileNotFoundError: ``root``, a building, or a domain folder is missing (the message names
            the paths looked for).
        ValueError: Unknown labels or no views at all.

    Example:
        >>> ds = TaskonomyDataset("/data/taskonomy", buildings=["cauthron"], resolution=256)  # doctest: +SKIP
        >>> ds[0]["labels"]["depth"].shape  # doctest: +SKIP
        torch.Size([1, 256, 256])
    """

    name = "taskonomy"
    all_labels = ("semantic", "depth", "normal", "edge", "curvature")
    derived_keys = {"regions": ("regions",)}

    def __init__(
        self,
        root: str | os.PathLike,
        buildings: Sequence[str] | None = None,
        labels: Sequence[str] | None = None,
        resolution: int | tuple[int, int] = 256,
        *,
        cache_dir: str | os.PathLike | None = None,
        use_cache: bool = True,
        transform: Callable[[dict], dict] | None = None,
    ) -> None:
        super().__init__(
            root=root,
            labels=labels,
            size=as_size(resolution),
            cache_dir=cache_dir,
            use_cache=use_cache,
            transform=transform,
        )
        if not self.root.is_dir():
            raise FileNotFoundError(f"Taskonomy root folder not found: {self.root}")
        self.layout = "domain-first" if (self.root / "rgb").is_dir() else "building-first"
        if isinstance(buildings, str):
            raise TypeError(f"buildings must be a list of names such as [{buildings!r}], not a string")
        self.buildings = list(buildings) if buildings is not None else self._discover_buildings()
        if not self.buildings:
            raise FileNotFoundError(
                f"no Taskonomy buildings found under {self.root}: expected {self.root}/{{building}}/rgb/, "
                f"{self.root}/rgb/taskonomy/{{building}}/ or {self.root}/rgb/{{building}}/"
            )
        # Domains needed: rgb, semantic (region ids come from it) and each selected label's domain.
        self.domains = ("rgb", "semantic", *(name for name in self.labels if name != "semantic"))
        self.views: list[tuple[str, int, int]] = []
        self.files: dict[tuple[str, int, int], dict[str, Path]] = {}
        dropped: list[tuple[tuple[str, int, int], list[str]]] = []
        for building in self.buildings:
            per_domain = {d: self._index_domain(building, d) for d in self.domains}
            for key in sorted(set().union(*per_domain.values())):
                missing = [d for d in self.domains if key not in per_domain[d]]
                view = (building, *key)
                if missing:
                    dropped.append((view, missing))
                    continue
                self.views.append(view)
                self.files[view] = {d: per_domain[d][key] for d in self.domains}
        if dropped:
            (b, p, v), missing = dropped[0]
            warnings.warn(
                f"Taskonomy: left out {len(dropped)} view(s) that lack files for some domains, e.g. building "
                f"{b!r} point {p} view {v} has no {missing}",
                stacklevel=2,
            )
        if not self.views:
            raise ValueError(f"no Taskonomy view under {self.root} has files for all of {list(self.domains)}")

    # ----------------------------------------------------------------------------------- layout
    def _discover_buildings(self) -> list[str]:
        if self.layout == "building-first":
            return sorted(p.name for p in self.root.iterdir() if (p / "rgb").is_dir() and p.name != CACHE_DIRNAME)
        rgb = self.root / "rgb"
        base = rgb / "taskonomy" if (rgb / "taskonomy").is_dir() else rgb
        return sorted(p.name for p in base.iterdir() if p.is_dir())

    def _domain_dirs(self, building: str, domain: str) -> list[Path]:
        """Candidate folders for one building's domain, in the detected layout."""
        out = []
        for spelling in DOMAIN_SPELLINGS[domain]:
            if self.layout == "building-first":
                out.append(self.root / building / spelling)
            else:
                out += [self.root / spelling / "taskonomy" / building, self.root / spelling / building]
        return out

    def _index_domain(self, building: str, domain: str) -> dict[tuple[int, int], Path]:
        candidates = self._domain_dirs(building, domain)
        folder = next((c for c in candidates if c.is_dir()), None)
        if folder is None:
            why = " (region ids are derived from it)" if domain == "semantic" and "semantic" not in self.labels else ""
            raise FileNotFoundError(
                f"Taskonomy {domain!r} folder for building {building!r} not found{why}; looked for: "
                + ", ".join(str(c) for c in candidates)
            )
        spellings = DOMAIN_SPELLINGS[domain]
        found: dict[tuple[int, int], Path] = {}
        for entry in os.scandir(folder):
            m = _FILE_RE.match(entry.name)
            if m is None or m["domain"] not in spellings:
                continue  # not a file of this domain (e.g. a thumbnail or stray file)
            found[(int(m["point"]), int(m["view"]))] = Path(entry.path)
        return found

    # ------------------------------------------------------------------------------ label specs
    def all_label_specs(self) -> dict[str, LabelSpec]:
        return {
            "semantic": LabelSpec.categorical(NUM_SEMANTIC, ignore_index=0),
            # Indoor depth of the published sample (valid 1-8 m).
            "depth": LabelSpec.continuous(1, shift=3.0, scale=1.5),
            "normal": LabelSpec.continuous(3),
            "edge": LabelSpec.continuous(1),
            # taskbank's curvature statistics (pixel mean [123.572, 120.1], std [31.922, 21.658])
            # decoded to 1/m with k = (2 p / 254 - 1) / 0.03.
            "curvature": LabelSpec.continuous(2, shift=(-0.90, -1.81), scale=(8.38, 5.68)),
        }

    def derived_recipe(self) -> dict:
        return {"version": 1, "regions": "4-connected components of the nearest-resized semantic map"}

    def __len__(self) -> int:
        return len(self.views)

    def sample_key(self, index: int) -> str:
        building, point, view = self.views[index]
        return f"{building}/point_{point}_view_{view}"

    # ------------------------------------------------------------------------------- decoding
    def _semantic(self, index: int, rgb_size: tuple[int, int]) -> torch.Tensor:
        files = self.files[self.views[index]]
        path = files["semantic"]
        sem = torch.from_numpy(_decode_semantic(read_gray_png(path, bit_depths=(8,)), path))
        check_label_size(path, sem.shape, files["rgb"], rgb_size, integer_fraction=True)
        # Semantic maps are often half resolution: upsample to the RGB size first (nearest).
        return resize_nearest(resize_nearest(sem, rgb_size), self.size)  # (H, W) int64

    def compute_derived(self, index: int, *, keys: Sequence[str] | None = None) -> dict[str, np.ndarray]:
        rgb_path = self.files[self.views[index]]["rgb"]
        header = read_png_header(rgb_path)
        semantic = self._semantic(index, (header.height, header.width))
        return {"regions": connected_regions(semantic.numpy())}

    def _read_label(self, name: str, path: Path, rgb_path: Path, rgb_size: tuple[int, int]) -> np.ndarray:
        """The raw array of a continuous label's file, checked to be the size of its RGB image."""
        raw = read_gray_png(path, bit_depths=(16,)) if name in ("depth", "edge") else read_rgb_png(path)
        check_label_size(path, raw.shape[:2], rgb_path, rgb_size)
        return raw

    def _decode_label(self, name: str, raw: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
        """One continuous label at output size: ``((C, H, W) float32, (H, W) bool)``."""
        if name == "depth":
            valid = torch.from_numpy((raw != DEPTH_MISSING) & (raw != 0))
            depth = torch.from_numpy(raw.astype(np.float32) / DEPTH_UNITS_PER_METRE)
            d, m = resize_depth(depth, self.size, valid=valid)
            return d[None], m
        if name == "normal":
            rgb = raw
            valid = torch.from_numpy(~np.all(rgb == np.array(NORMAL_MISSING, np.uint8), axis=-1))
            n = torch.from_numpy(rgb.transpose(2, 0, 1).astype(np.float32) * (2.0 / 255.0) - 1.0)  # (3, H, W)
            length = n.norm(dim=0)
            valid &= length > 1e-6
            n = n / length.clamp_min(1e-6)
            return resize_normals(n, self.size, valid=valid)
        if name == "edge":
            e, m = resize_continuous(torch.from_numpy(raw.astype(np.float32) / 65535.0), self.size)
            return e[None], m
        if name == "curvature":
            rgb = raw
            valid = torch.from_numpy(rgb.any(axis=-1))
            k = torch.from_numpy(rgb[..., :2].transpose(2, 0, 1).astype(np.float32) * (2.0 / 254.0) - 1.0)
            return resize_continuous(k, self.size, valid=valid)
        raise AssertionError(name)

    def __getitem__(self, index: int) -> dict:
        index = self._check_index(index)
        view = self.views[index]
        files = self.files[view]
        rgb = read_rgb_png(files["rgb"])
        rgb_size = rgb.shape[:2]
        labels: dict[str, torch.Tensor] = {}
        masks: dict[str, torch.Tensor] = {}
        for name in self.labels:
            if name == "semantic":
                semantic = self._semantic(index, rgb_size)
                labels[name], masks[name] = semantic, semantic != 0
            else:
                raw = self._read_label(name, files[name], files["rgb"], rgb_size)
                labels[name], masks[name] = self._decode_label(name, raw)
        regions = torch.from_numpy(self.derived(index)["regions"]).long()
        building, point, view_id = view
        sample = {
            "image": image_to_tensor(rgb, self.size),
            "labels": labels,
            "masks": masks,
            "regions": regions,
            "meta": {"building": building, "point": point, "view": view_id, "index": index},
        }
        return self._finish(sample)
