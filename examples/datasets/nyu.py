"""NYU Depth v2, labeled subset (Silberman et al., ECCV 2012), read from ``nyu_depth_v2_labeled.mat``.

The file is MATLAB v7.3, i.e. HDF5 behind a 512-byte header, read with h5py. HDF5 stores MATLAB
arrays with their axes reversed, so ``images`` is ``(N, 3, W, H)`` and is transposed back to
``(H, W, 3)``; ``depths``, ``labels`` and ``instances`` are ``(N, W, H)`` -> ``(H, W)``.

Labels (see ``docs/datasets/nyu.md``):

* ``semantic``: the 894 raw classes mapped to the 40 classes of Gupta et al. (CVPR 2013),
  ``0`` = void (ignored), ``1..40``; or the 13-class set, or the raw 894 (``classes=``).
* ``depth``: ``depths`` (metres, in-painted by the dataset authors).
* ``normal``: least-squares plane normals over a ``normal_window`` patch of the resized depth,
  with the RGB camera intrinsics of the NYU toolbox (0-based); camera frame x right, y down,
  z forward, pointing toward the camera.
* ``edge``: boundaries of the (894-class label, instance) map, two pixels wide.
* ``regions``: one id per (label, instance) pair: ``label894 * 1000 + instance``.

Splits: ``"train"`` (795) and ``"test"`` (654) from the official ``splits.mat``, which this
package does not ship: put it next to the ``.mat`` or pass ``splits_file``. ``"all"`` is all 1449.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from pathlib import Path

import h5py
import numpy as np
import scipy.io
import torch

from label_merge import LabelSpec

from .base import RealDataset
from .cache import CACHE_DIRNAME
from .edges import label_boundaries
from .geometry import normals_from_depth
from .nyu_classes import NYU13_NAMES, NYU40_NAMES, lookup_table
from .transforms import Intrinsics, as_size, image_to_tensor, resize_depth, resize_nearest

__all__ = ["NYUDepthV2Dataset", "NYU_RGB_INTRINSICS", "read_nyu_splits", "MAT_FILENAME", "SPLITS_URL"]

MAT_FILENAME = "nyu_depth_v2_labeled.mat"
MAT_URL = "http://horatio.cs.nyu.edu/mit/silberman/nyu_depth_v2/nyu_depth_v2_labeled.mat"
SPLITS_FILENAME = "splits.mat"
SPLITS_URL = "http://horatio.cs.nyu.edu/mit/silberman/indoor_seg_sup/splits.mat"

# RGB camera of the NYU toolbox (camera_params.m). The toolbox back-projects MATLAB's 1-based
# pixel grid, so 0-based pixel indices need cx - 1, cy - 1.
NYU_RGB_INTRINSICS = Intrinsics(
    fx=5.1885790117450188e02,
    fy=5.1946961112127485e02,
    cx=3.2558244941119034e02 - 1.0,
    cy=2.5373616633400465e02 - 1.0,
)
NYU_SIZE = (480, 640)
REQUIRED_DATASETS = ("images", "depths", "labels", "instances", "names")
NUM_RAW_CLASSES = 894
# Region id = raw label * REGION_STRIDE + instance (instances are uint8, so < 256).
REGION_STRIDE = 1000


def read_nyu_splits(path: str | os.PathLike, *, num_images: int) -> dict[str, np.ndarray]:
    """Read ``splits.mat``: 1-based ``trainNdxs`` and ``testNdxs`` -> 0-based index arrays.

    Args:
        path: The split file (MATLAB v5 or v7.3).
        num_images: Number of images in the labeled file (1449), for range checks.

    Returns:
        ``{"train": (795,) int64, "test": (654,) int64}`` 0-based indices, sorted as stored.

    Raises:
        FileNotFoundError: The file does not exist (the message says where it comes from).
        ValueError: Unreadable, missing keys, indices out of range or overlapping.

    Example:
        >>> read_nyu_splits("splits.mat", num_images=1449)["train"][:3]  # doctest: +SKIP
        array([2, 3, 4])
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(
            f"NYU split file not found: {path}. The standard 795/654 train/test split is the official "
            f"splits.mat ({SPLITS_URL}; keys trainNdxs, testNdxs, 1-based). Put it next to {MAT_FILENAME} or "
            f"pass splits_file=; split='all' needs no split file."
        )
    keys = ("trainNdxs", "testNdxs")
    try:
        mat = scipy.io.loadmat(path)
        raw = {k: mat[k] for k in keys if k in mat}
    except NotImplementedError:  # MATLAB v7.3 -> HDF5
        with h5py.File(path, "r") as f:
            raw = {k: f[k][()] for k in keys if k in f}
    except (ValueError, OSError) as e:
        raise ValueError(f"could not read NYU split file {path}: {e}") from e
    missing = [k for k in keys if k not in raw]
    if missing:
        raise ValueError(f"{path}: missing {missing}; expected trainNdxs and testNdxs (1-based image indices)")
    out = {}
    for split, key in (("train", "trainNdxs"), ("test", "testNdxs")):
        idx = np.asarray(raw[key]).ravel()
        if idx.size == 0 or not np.all(idx == np.round(idx)) or idx.min() < 1 or idx.max() > num_images:
            raise ValueError(f"{path}: {key} must hold 1-based indices in 1..{num_images}")
        out[split] = idx.astype(np.int64) - 1
    if np.intersect1d(out["train"], out["test"]).size:
        raise ValueError(f"{path}: trainNdxs and testNdxs overlap")
    return out


class NYUDepthV2Dataset(RealDataset):
    """NYU Depth v2 labeled images with semantic, depth, normal and edge labels.

    Args:
        root: Folder holding ``nyu_depth_v2_labeled.mat`` (and ``splits.mat``), or the ``.mat`` itself.
        split: ``"train"`` (795), ``"test"`` (654) or ``"all"`` (1449).
        labels: Subset of ``semantic, depth, normal, edge``; None means all.
        resolution: Output ``(H, W)`` (or an int for square); the images are 480x640.
        classes: Semantic class set: 40 (default), 13 or 894; 0 = void (ignored) in each.
        splits_file: The official ``splits.mat``; default ``splits.mat`` next to the ``.mat``.
        normal_window: Patch size of the plane fit for normals (odd, in output pixels).
        cache_dir: Root of the derived-label cache (default ``label_merge_cache`` next to the ``.mat``).
        use_cache: Read derived labels from the cache when present.
        transform: Optional callable applied to each finished sample.

    A sample: ``image`` ``(3, H, W)`` in [-1, 1]; ``labels``: ``semantic`` int64 ``(H, W)``,
    ``depth`` ``(1, H, W)`` metres, ``normal`` ``(3, H, W)``, ``edge`` ``(1, H, W)`` in {0, 1};
    ``masks`` for each; ``regions`` ``(H, W)`` int64; ``meta`` with ``index`` (1-based image number
    in the ``.mat``, as in ``splits.mat``), ``intrinsics`` ``[fx, fy, cx, cy]`` at the output size, ``hflip``.

    Raises:
        FileNotFoundError: The ``.mat`` or (for train/test) ``splits.mat`` is missing.
        ValueError: The ``.mat`` is not HDF5 or lacks a dataset, shapes disagree, unknown labels or split.

    Example:
        >>> ds = NYUDepthV2Dataset("/data/nyu", split="test")  # doctest: +SKIP
        >>> len(ds)  # doctest: +SKIP
        654
    """

    name = "nyu"
    all_labels = ("semantic", "depth", "normal", "edge")
    derived_keys = {"normal": ("normal", "normal_valid"), "edge": ("edge",)}

    def __init__(
        self,
        root: str | os.PathLike,
        split: str = "train",
        labels: Sequence[str] | None = None,
        resolution: int | tuple[int, int] = (240, 320),
        *,
        classes: int = 40,
        splits_file: str | os.PathLike | None = None,
        normal_window: int = 5,
        cache_dir: str | os.PathLike | None = None,
        use_cache: bool = True,
        transform: Callable[[dict], dict] | None = None,
    ) -> None:
        root = Path(root)
        self.mat_path = root if root.suffix == ".mat" else root / MAT_FILENAME
        if split not in ("train", "test", "all"):
            raise ValueError(f"split must be 'train', 'test' or 'all', got {split!r}")
        if classes not in (13, 40, 894):
            raise ValueError(f"classes must be 13, 40 or 894, got {classes!r}")
        if not isinstance(normal_window, int) or normal_window < 3 or normal_window % 2 == 0:
            raise ValueError(f"normal_window must be an odd int >= 3, got {normal_window!r}")
        self.split = split
        self.classes = classes
        self.normal_window = normal_window
        self._lut = torch.from_numpy(lookup_table(classes))  # (895,)
        super().__init__(
            root=self.mat_path.parent,
            labels=labels,
            size=as_size(resolution),
            cache_dir=cache_dir,
            use_cache=use_cache,
            transform=transform,
        )
        self.num_images, self.native_size = self._check_mat()
        if split == "all":
            self.indices = np.arange(self.num_images, dtype=np.int64)
        else:
            path = Path(splits_file) if splits_file is not None else self.mat_path.parent / SPLITS_FILENAME
            self.indices = read_nyu_splits(path, num_images=self.num_images)[split]
        self._h5: h5py.File | None = None
        self._h5_pid: int | None = None

    def default_cache_dir(self) -> Path:
        return self.mat_path.parent / CACHE_DIRNAME

    # ------------------------------------------------------------------------------ the file
    def _open(self) -> h5py.File:
        if not self.mat_path.is_file():
            raise FileNotFoundError(
                f"NYU Depth v2 labeled file not found: {self.mat_path} (download {MAT_FILENAME} from {MAT_URL})"
            )
        try:
            return h5py.File(self.mat_path, "r")
        except OSError as e:
            raise ValueError(f"{self.mat_path} is not an HDF5 (MATLAB v7.3) file that h5py can open: {e}") from e

    def _check_mat(self) -> tuple[int, tuple[int, int]]:
        with self._open() as f:
            missing = [k for k in REQUIRED_DATASETS if k not in f]
            if missing:
                raise ValueError(f"{self.mat_path}: missing dataset(s) {missing}; expected {list(REQUIRED_DATASETS)}")
            images = f["images"]
            if images.ndim != 4 or images.shape[1] != 3:
                raise ValueError(
                    f"{self.mat_path}: 'images' must be (N, 3, W, H) as stored by MATLAB, got {images.shape}"
                )
            n, _, w, h = images.shape
            for key in ("depths", "labels", "instances"):
                if f[key].shape != (n, w, h):
                    raise ValueError(f"{self.mat_path}: {key!r} has shape {f[key].shape}, expected {(n, w, h)}")
            num_names = int(np.prod(f["names"].shape))
            if num_names != NUM_RAW_CLASSES:
                raise ValueError(
                    f"{self.mat_path}: 'names' lists {num_names} classes, but the class mapping is for the "
                    f"{NUM_RAW_CLASSES} classes of nyu_depth_v2_labeled.mat"
                )
        return n, (h, w)

    def _file(self) -> h5py.File:
        # One handle per process: h5py handles must not cross fork() into DataLoader workers.
        if self._h5 is None or self._h5_pid != os.getpid():
            self._h5, self._h5_pid = self._open(), os.getpid()
        return self._h5

    def __getstate__(self) -> dict:
        state = dict(self.__dict__)
        state["_h5"], state["_h5_pid"] = None, None
        return state

    def class_names(self) -> tuple[str, ...]:
        """Names of class ids ``1..C`` (id 0 is void) for the chosen class set."""
        if self.classes == 40:
            return NYU40_NAMES
        if self.classes == 13:
            return NYU13_NAMES
        f = self._file()
        # Each name is a uint16 char array behind an object reference.
        return tuple("".join(chr(c) for c in f[ref][()].ravel()) for ref in f["names"][()].ravel())

    # ------------------------------------------------------------------------------ label specs
    def all_label_specs(self) -> dict[str, LabelSpec]:
        return {
            "semantic": LabelSpec.categorical(self.classes + 1, ignore_index=0),
            # Indoor Kinect depth (0.5-10 m; mean about 2.7 m).
            "depth": LabelSpec.continuous(1, shift=2.7, scale=1.2),
            "normal": LabelSpec.continuous(3),
            "edge": LabelSpec.continuous(1),
        }

    def derived_recipe(self) -> dict:
        return {
            "version": 1,
            "normal": {"method": "plane", "window": self.normal_window, "min_valid_fraction": 0.5},
            "edge": "4-neighbour boundaries of the nearest-resized (label894, instance) map",
        }

    def __len__(self) -> int:
        return len(self.indices)

    def sample_key(self, index: int) -> str:
        return f"{int(self.indices[index]) + 1:04d}"

    # ------------------------------------------------------------------------------ decoding
    def _read(self, key: str, index: int) -> np.ndarray:
        """One image's array from the .mat, back in (H, W[, 3]) orientation."""
        a = self._file()[key][int(self.indices[index])]
        return a.transpose(2, 1, 0) if a.ndim == 3 else a.T  # (3, W, H) -> (H, W, 3); (W, H) -> (H, W)

    def _label_maps(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Raw 894-class labels and instance ids at output size, int64 ``(h, w)`` each."""
        labels = self._read("labels", index).astype(np.int64)
        if labels.size and (labels.min() < 0 or labels.max() > NUM_RAW_CLASSES):
            raise ValueError(
                f"{self.mat_path}: 'labels' of image {self.sample_key(index)} hold ids outside 0..{NUM_RAW_CLASSES}"
            )
        instances = self._read("instances", index).astype(np.int64)
        return resize_nearest(torch.from_numpy(labels), self.size), resize_nearest(
            torch.from_numpy(instances), self.size
        )

    def _depth(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        depth = torch.from_numpy(self._read("depths", index).astype(np.float32))
        return resize_depth(depth, self.size)

    def intrinsics(self) -> Intrinsics:
        """The RGB camera intrinsics at the output size (the toolbox values are for 480x640)."""
        return NYU_RGB_INTRINSICS.resized(from_size=NYU_SIZE, to_size=self.size)

    def compute_derived(self, index: int, *, keys: Sequence[str] | None = None) -> dict[str, np.ndarray]:
        keys = self.all_derived_keys() if keys is None else tuple(keys)
        out: dict[str, np.ndarray] = {}
        if "normal" in keys or "normal_valid" in keys:
            depth, valid = self._depth(index)
            n, ok = normals_from_depth(
                depth.double().numpy(),
                self.intrinsics(),
                valid=valid.numpy(),
                method="plane",
                window=self.normal_window,
            )
            out["normal"], out["normal_valid"] = n.transpose(2, 0, 1).astype(np.float32), ok  # (3, h, w)
        if "edge" in keys:
            labels, instances = self._label_maps(index)
            out["edge"] = label_boundaries(labels.numpy(), instances.numpy())
        return {k: out[k] for k in keys}

    def __getitem__(self, index: int) -> dict:
        index = self._check_index(index)
        labels_894, instances = self._label_maps(index)
        derived = self.derived(index)
        labels: dict[str, torch.Tensor] = {}
        masks: dict[str, torch.Tensor] = {}
        if "semantic" in self.labels:
            semantic = self._lut[labels_894]
            labels["semantic"], masks["semantic"] = semantic, semantic != 0
        if "depth" in self.labels:
            depth, valid = self._depth(index)
            labels["depth"], masks["depth"] = depth[None], valid
        if "normal" in self.labels:
            labels["normal"] = torch.from_numpy(derived["normal"]).float()
            masks["normal"] = torch.from_numpy(derived["normal_valid"]).bool()
        if "edge" in self.labels:
            labels["edge"] = torch.from_numpy(derived["edge"]).float()[None]
            masks["edge"] = torch.ones(self.size, dtype=torch.bool)
        rgb = np.ascontiguousarray(self._read("images", index))
        sample = {
            "image": image_to_tensor(rgb.astype(np.uint8), self.size),
            "labels": labels,
            "masks": masks,
            "regions": labels_894 * REGION_STRIDE + instances,
            "meta": {"index": int(self.indices[index]) + 1, "intrinsics": self.intrinsics().as_tensor()},
        }
        return self._finish(sample)
