"""SyntheticDataset: procedural indoor scenes with exact multi-label geometry, no download needed.

Each sample is a room with furniture-like primitives, rug, paintings and windows, seen by a
pinhole camera and rendered by vectorised ray casting (:mod:`examples.datasets.procedural`).
The labels are exact: semantic classes, metric depth, camera-frame normals, principal
curvatures, edges and instance regions. Sample ``i`` is a deterministic function of
``(seed, i)``, so the dataset needs no files and gives identical samples in any DataLoader worker.
"""

from __future__ import annotations

import dataclasses
import hashlib
import operator
import os
import tempfile
import zipfile
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import Dataset

from label_merge import LabelSpec

from .procedural import APPEARANCES, CLASS_NAMES, SceneConfig, render_scene, sample_scene

__all__ = ["LABEL_NAMES", "SyntheticDataset"]

LABEL_NAMES = ("semantic", "depth", "normal", "edge", "curvature")
"""All labels, in the order of :attr:`SyntheticDataset.label_specs`."""

_CACHE_FORMAT = 3  # bump when the rendered content changes, so old caches are not reused
_ARRAY_KEYS = (
    "image",
    "semantic",
    "depth",
    "normal",
    "edge",
    "curvature",
    "regions",
    "depth_valid",
    "surface",
    "intrinsics",
    "camera_to_world",
    "num_objects",
    "num_lights",
)


def _check_positive_int(name: str, value) -> int:
    if isinstance(value, bool) or not isinstance(value, int | np.integer) or value < 1:
        raise ValueError(f"{name} must be a positive int, got {value!r}")
    return int(value)


def _parse_resolution(resolution) -> tuple[int, int]:
    if isinstance(resolution, int | np.integer) and not isinstance(resolution, bool):
        size = _check_positive_int("resolution", resolution)
        return size, size
    if isinstance(resolution, Sequence) and not isinstance(resolution, str) and len(resolution) == 2:
        return _check_positive_int("resolution[0] (height)", resolution[0]), _check_positive_int(
            "resolution[1] (width)", resolution[1]
        )
    raise ValueError(f"resolution must be an int or a (height, width) pair, got {resolution!r}")


def _parse_labels(labels) -> tuple[str, ...]:
    if labels is None:
        return LABEL_NAMES
    if isinstance(labels, str) or not isinstance(labels, Sequence):
        raise TypeError(f"labels must be None or a list of label names from {list(LABEL_NAMES)}, got {labels!r}")
    unknown = [name for name in labels if name not in LABEL_NAMES]
    if unknown:
        raise ValueError(f"unknown label(s) {unknown}; valid labels are {list(LABEL_NAMES)}")
    if len(labels) == 0:
        raise ValueError(f"labels is empty: choose at least one of {list(LABEL_NAMES)} (or None for all)")
    if len(set(labels)) != len(labels):
        raise ValueError(f"labels contains duplicates: {list(labels)}")
    return tuple(name for name in LABEL_NAMES if name in labels)  # the fixed order


def _depth_holes(rng: np.random.Generator, height: int, width: int) -> np.ndarray:
    """``(H, W)`` bool, True inside a few random elliptical sensor-dropout holes (often none)."""
    holes = np.zeros((height, width), dtype=bool)
    v = (np.arange(height)[:, None] + 0.5) / height  # normalised image coordinates
    u = (np.arange(width)[None, :] + 0.5) / width
    for _ in range(min(int(rng.poisson(1.0)), 4)):
        cu, cv = rng.uniform(0, 1, 2)
        ru, rv = rng.uniform(0.02, 0.1, 2)
        angle = rng.uniform(0, np.pi)
        c, s = np.cos(angle), np.sin(angle)
        a, b = c * (u - cu) + s * (v - cv), -s * (u - cu) + c * (v - cv)
        holes |= (a / ru) ** 2 + (b / rv) ** 2 <= 1.0
    return holes


# Label normalisation (LabelSpec shift and scale): the mean and standard deviation of the
# present pixels of 300 default scenes (examples.datasets.statistics.label_statistics).
# Normals (unit vectors) and edges (in [0, 1]) are already of unit range and stay as they are.
DEPTH_SHIFT, DEPTH_SCALE = 3.4, 1.4  # metres
CURVATURE_SHIFT, CURVATURE_SCALE = (0.3, 0.1), (1.1, 0.56)  # 1/m, (k1, k2)


class SyntheticDataset(Dataset):
    """Procedurally rendered indoor scenes with exact semantic and geometric labels.

    A sample is a dict:

    - ``image``: float32 ``(3, H, W)`` RGB in [-1, 1].
    - ``labels``: ``{name: tensor}`` for the chosen labels: ``semantic`` int64 ``(H, W)`` (class
      ids, see :attr:`class_names`; every pixel has a class), ``depth`` float32 ``(1, H, W)``
      z-buffer depth in metres, ``normal`` float32 ``(3, H, W)`` unit normals in the camera frame
      (+x right, +y down, +z forward, facing the camera), ``edge`` float32 ``(1, H, W)`` in
      [0, 1], ``curvature`` float32 ``(2, H, W)`` principal curvatures ``(k1 >= k2)`` in 1/m.
      Missing values are 0.
    - ``masks``: ``{name: bool (H, W)}``, True where the label is present. Depth is missing where
      there is no surface (outdoors, through windows), beyond ``max_depth`` and in random
      sensor-like holes; normal and curvature are missing where there is no surface; semantic
      and edge are present everywhere.
    - ``regions``: int64 ``(H, W)`` region ids: 0 floor, 1 ceiling, 2-5 the walls, then one id
      per rug, painting or window, then one per object.
    - ``meta``: ``seed``, ``index``, ``intrinsics`` float32 ``(3, 3)`` (K for 0-based pixel
      indices), ``camera_to_world`` float32 ``(4, 4)``, ``max_depth``, ``num_objects``,
      ``num_lights``.

    Args:
        num_samples: Length of the dataset.
        resolution: ``H = W`` as an int, or ``(H, W)``.
        seed: Non-negative int; sample ``i`` depends only on ``(seed, i)`` and the settings below.
        labels: Label names to return (any subset of :data:`LABEL_NAMES`), or None for all.
        max_depth: Depth beyond this many metres is reported missing.
        depth_holes: Punch random elliptical holes into the depth mask.
        supersample: Image rays per pixel along each axis (anti-aliasing); labels always use one
            ray through the pixel centre.
        scene_config: Ranges of the random scenes (room size, object and light counts, camera).
        appearance: How scenes look: ``"labelled"`` (colours from a small palette per class,
            class- and curvature-dependent patterns, a key light near the camera; the look
            follows the labels, as in photographs) or ``"random"`` (a random hue and pattern per
            object and surface, random lights, ambient light, fog and exposure per scene). The
            geometric labels of sample ``i`` are the same under both (texture edges follow the
            materials).
        cache_dir: If given, rendered samples are stored there as ``.npz`` files (one per sample,
            in a sub-folder named after the settings) and read back instead of rendering again.

    Raises:
        ValueError: A bad size, seed, label name or setting.
        TypeError: ``labels`` that is not a list of names, or a bad ``scene_config``.

    Example:
        >>> ds = SyntheticDataset(num_samples=4, resolution=32, labels=["semantic", "depth"])
        >>> sample = ds[0]
        >>> sample["image"].shape, sample["labels"]["depth"].shape, sorted(ds.label_specs)
        (torch.Size([3, 32, 32]), torch.Size([1, 32, 32]), ['depth', 'semantic'])
    """

    class_names: tuple[str, ...] = CLASS_NAMES
    """Semantic class names, by id."""

    def __init__(
        self,
        num_samples: int,
        resolution: int | tuple[int, int] = 64,
        seed: int = 0,
        labels: Sequence[str] | None = None,
        *,
        max_depth: float = 10.0,
        depth_holes: bool = True,
        supersample: int = 2,
        scene_config: SceneConfig | None = None,
        appearance: str = "labelled",
        cache_dir: str | os.PathLike | None = None,
    ) -> None:
        self.num_samples = _check_positive_int("num_samples", num_samples)
        self.height, self.width = _parse_resolution(resolution)
        if isinstance(seed, bool) or not isinstance(seed, int | np.integer) or seed < 0:
            raise ValueError(f"seed must be a non-negative int, got {seed!r}")
        self.seed = int(seed)
        self.labels = _parse_labels(labels)
        if isinstance(max_depth, bool) or not isinstance(max_depth, int | float) or not max_depth > 0:
            raise ValueError(f"max_depth must be a positive number of metres, got {max_depth!r}")
        self.max_depth = float(max_depth)
        self.depth_holes = bool(depth_holes)
        self.supersample = _check_positive_int("supersample", supersample)
        if scene_config is not None and not isinstance(scene_config, SceneConfig):
            raise TypeError(f"scene_config must be a SceneConfig or None, got {type(scene_config).__name__}")
        self.scene_config = SceneConfig() if scene_config is None else scene_config
        if appearance not in APPEARANCES:
            raise ValueError(f"appearance must be one of {sorted(APPEARANCES)}, got {appearance!r}")
        self.appearance = appearance
        self.cache_dir = None if cache_dir is None else Path(cache_dir) / f"synthetic-{self._settings_key()}"

    @property
    def num_classes(self) -> int:
        return len(CLASS_NAMES)

    @property
    def label_specs(self) -> dict[str, LabelSpec]:
        """``{name: LabelSpec}`` of the chosen labels, in the order semantic, depth, normal, edge, curvature."""
        all_specs = {
            "semantic": LabelSpec.categorical(len(CLASS_NAMES)),
            "depth": LabelSpec.continuous(1, shift=DEPTH_SHIFT, scale=DEPTH_SCALE),
            "normal": LabelSpec.continuous(3),
            "edge": LabelSpec.continuous(1),
            "curvature": LabelSpec.continuous(2, shift=CURVATURE_SHIFT, scale=CURVATURE_SCALE),
        }
        return {name: spec for name, spec in all_specs.items() if name in self.labels}

    def __len__(self) -> int:
        return self.num_samples

    def __repr__(self) -> str:
        return (
            f"SyntheticDataset(num_samples={self.num_samples}, resolution=({self.height}, {self.width}), "
            f"seed={self.seed}, labels={list(self.labels)}, appearance={self.appearance!r})"
        )

    def __getitem__(self, index) -> dict:
        try:
            i = operator.index(index)
        except TypeError:
            raise TypeError(f"SyntheticDataset index must be an int, got {type(index).__name__}") from None
        if not -self.num_samples <= i < self.num_samples:
            raise IndexError(f"index {i} is out of range for a SyntheticDataset of {self.num_samples} samples")
        i %= self.num_samples
        arrays = self._cached_arrays(i) if self.cache_dir is not None else self.render_arrays(i)
        return self._to_sample(i, arrays)

    # -- rendering -----------------------------------------------------------------------------

    def render_arrays(self, index: int) -> dict[str, np.ndarray]:
        """Render sample ``index`` as plain numpy arrays (all labels, before label selection).

        Returns:
            A dict with keys ``image`` (3, H, W), ``semantic`` (H, W), ``depth`` (1, H, W),
            ``normal`` (3, H, W), ``edge`` (1, H, W), ``curvature`` (2, H, W), ``regions`` (H, W),
            ``depth_valid`` and ``surface`` bool (H, W), ``intrinsics`` (3, 3),
            ``camera_to_world`` (4, 4), ``num_objects`` and ``num_lights`` (0-d).
        """
        scene_seed, holes_seed = np.random.SeedSequence([self.seed, index]).spawn(2)
        scene = sample_scene(np.random.default_rng(scene_seed), self.scene_config, self.appearance)
        out = render_scene(scene, self.height, self.width, supersample=self.supersample)
        surface = out.has_surface
        depth_valid = surface & (out.depth <= self.max_depth)
        if self.depth_holes:
            depth_valid &= ~_depth_holes(np.random.default_rng(holes_seed), self.height, self.width)
        return {
            "image": out.image,
            "semantic": out.semantic.astype(np.int64),
            "depth": np.where(depth_valid, out.depth, 0.0)[None].astype(np.float32),
            "normal": out.normal.astype(np.float32),
            "edge": out.edge[None].astype(np.float32),
            "curvature": out.curvature.astype(np.float32),
            "regions": out.regions.astype(np.int64),
            "depth_valid": depth_valid,
            "surface": surface,
            "intrinsics": out.intrinsics.astype(np.float32),
            "camera_to_world": out.camera_to_world.astype(np.float32),
            "num_objects": np.array(len(scene.objects)),
            "num_lights": np.array(len(scene.lights)),
        }

    def _to_sample(self, index: int, arrays: dict[str, np.ndarray]) -> dict:
        everywhere = np.ones((self.height, self.width), dtype=bool)
        mask_arrays = {
            "semantic": everywhere,
            "depth": arrays["depth_valid"],
            "normal": arrays["surface"],
            "edge": everywhere,
            "curvature": arrays["surface"],
        }
        return {
            "image": torch.from_numpy(arrays["image"]),
            "labels": {name: torch.from_numpy(arrays[name]) for name in self.labels},
            "masks": {name: torch.from_numpy(mask_arrays[name].copy()) for name in self.labels},
            "regions": torch.from_numpy(arrays["regions"]),
            "meta": {
                "seed": self.seed,
                "index": index,
                "intrinsics": torch.from_numpy(arrays["intrinsics"]),
                "camera_to_world": torch.from_numpy(arrays["camera_to_world"]),
                "max_depth": self.max_depth,
                "num_objects": int(arrays["num_objects"]),
                "num_lights": int(arrays["num_lights"]),
            },
        }

    # -- cache ---------------------------------------------------------------------------------

    def _settings_key(self) -> str:
        """A short hash of everything that changes the rendered content."""
        settings = (
            _CACHE_FORMAT,
            self.height,
            self.width,
            self.seed,
            self.max_depth,
            self.depth_holes,
            self.supersample,
            dataclasses.astuple(self.scene_config),
            self.appearance,
        )
        return hashlib.sha1(repr(settings).encode()).hexdigest()[:12]

    def cache_path(self, index: int) -> Path:
        """The ``.npz`` file that caches sample ``index`` (only with ``cache_dir``)."""
        if self.cache_dir is None:
            raise ValueError("this SyntheticDataset has no cache_dir")
        return self.cache_dir / f"{index:07d}.npz"

    def _cached_arrays(self, index: int) -> dict[str, np.ndarray]:
        path = self.cache_path(index)
        if path.exists():
            return self._read_cache(path)
        arrays = self.render_arrays(index)
        path.parent.mkdir(parents=True, exist_ok=True)
        # Write to a temporary file in the same folder, then rename: readers (other workers) never
        # see a partial file, and concurrent writers of the same sample write identical content.
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.stem}-", suffix=".tmp")
        try:
            with os.fdopen(fd, "wb") as fh:
                np.savez(fh, **arrays)
            os.replace(tmp, path)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise
        return arrays

    def _read_cache(self, path: Path) -> dict[str, np.ndarray]:
        expected = {"image": (3, self.height, self.width), "semantic": (self.height, self.width)}
        try:
            with np.load(path, allow_pickle=False) as data:
                arrays = {key: data[key] for key in _ARRAY_KEYS}
        except (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile) as err:
            raise ValueError(
                f"corrupt cache file {path} ({type(err).__name__}: {err}); delete it to render the sample again"
            ) from err
        for key, shape in expected.items():
            if arrays[key].shape != shape:
                raise ValueError(
                    f"corrupt cache file {path}: {key} has shape {arrays[key].shape}, expected {shape}; "
                    "delete it to render the sample again"
                )
        return arrays
