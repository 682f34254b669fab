"""Resizing and flipping that keep labels, masks and camera intrinsics consistent.

Conventions (used by every loader here):

* Pixel centres: pixel ``(v, u)`` (0-based row, column) has its centre at ``(v, u)``; the image
  spans ``[-0.5, W - 0.5]``. Resizing from ``W`` to ``w`` columns maps ``u -> (u + 0.5) * w / W - 0.5``
  (PyTorch's ``align_corners=False``), so ``cx' = (cx + 0.5) * w / W - 0.5`` and ``fx' = fx * w / W``.
* Categorical maps, instance/region ids and masks use nearest neighbour (pixel-centre exact,
  PyTorch's ``nearest-exact``), never interpolation: a blend of class 3 and 5 is not class 4.
* Images and continuous labels use area averaging for integer downsampling factors and
  antialiased bilinear otherwise. With a validity mask, missing pixels get zero weight
  (normalised convolution: ``resize(x * m) / resize(m)``), so sentinel values such as 65535 never
  leak into valid pixels; an output pixel is valid where at least half its weight is valid.
* Depth is resized as inverse depth: ``1/Z`` is an affine function of pixel coordinates on any
  plane, so averaging it keeps planes exactly planar (normals computed after resizing stay right).
* A horizontal flip negates the x component of surface normals and moves ``cx`` to ``W - 1 - cx``.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

__all__ = [
    "Intrinsics",
    "resize_nearest",
    "resize_continuous",
    "resize_depth",
    "resize_normals",
    "resize_rgb",
    "image_to_tensor",
    "rgb_tensor_to_gray",
    "hflip_sample",
    "RandomHorizontalFlip",
    "as_size",
]

# A pixel is valid after resizing where at least this fraction of its weight came from valid pixels.
MIN_VALID_WEIGHT = 0.5


def as_size(resolution: int | tuple[int, int] | list[int], *, name: str = "resolution") -> tuple[int, int]:
    """Turn ``resolution`` (an int for square, or ``(H, W)``) into a checked ``(H, W)`` tuple.

    Raises:
        ValueError: Not a positive int or a pair of positive ints.

    Example:
        >>> as_size(256)
        (256, 256)
    """
    if isinstance(resolution, int) and not isinstance(resolution, bool):
        size = (resolution, resolution)
    elif isinstance(resolution, (tuple, list)) and len(resolution) == 2:
        size = tuple(resolution)
    else:
        raise ValueError(f"{name} must be an int or an (H, W) pair, got {resolution!r}")
    if not all(isinstance(s, (int, np.integer)) and not isinstance(s, bool) and s > 0 for s in size):
        raise ValueError(f"{name} must hold positive ints, got {resolution!r}")
    return int(size[0]), int(size[1])


@dataclass(frozen=True)
class Intrinsics:
    """Pinhole intrinsics in pixels, for 0-based pixel indices with centres at integers.

    Attributes:
        fx: Focal length along x (columns), pixels.
        fy: Focal length along y (rows), pixels.
        cx: Principal point column.
        cy: Principal point row.
    """

    fx: float
    fy: float
    cx: float
    cy: float

    def resized(self, *, from_size: tuple[int, int], to_size: tuple[int, int]) -> Intrinsics:
        """Intrinsics of the image resized from ``from_size`` to ``to_size`` (both ``(H, W)``).

        Example:
            >>> Intrinsics(100.0, 100.0, 49.5, 49.5).resized(from_size=(100, 100), to_size=(50, 50))
            Intrinsics(fx=50.0, fy=50.0, cx=24.5, cy=24.5)
        """
        sy, sx = to_size[0] / from_size[0], to_size[1] / from_size[1]
        return Intrinsics(self.fx * sx, self.fy * sy, (self.cx + 0.5) * sx - 0.5, (self.cy + 0.5) * sy - 0.5)

    def hflipped(self, *, width: int) -> Intrinsics:
        """Intrinsics after mirroring an image of ``width`` columns left-right.

        Example:
            >>> Intrinsics(1.0, 1.0, 10.0, 5.0).hflipped(width=30).cx
            19.0
        """
        return Intrinsics(self.fx, self.fy, width - 1 - self.cx, self.cy)

    def as_tensor(self) -> torch.Tensor:
        """``(4,)`` float32 tensor ``[fx, fy, cx, cy]`` (how samples carry it in ``meta``)."""
        return torch.tensor([self.fx, self.fy, self.cx, self.cy], dtype=torch.float32)


def _check_map(x: torch.Tensor, what: str) -> None:
    if not isinstance(x, torch.Tensor) or x.dim() not in (2, 3):
        shape = tuple(x.shape) if isinstance(x, torch.Tensor) else type(x).__name__
        raise ValueError(f"{what}: expected a (H, W) or (C, H, W) tensor, got {shape}")


def resize_nearest(x: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """Nearest-neighbour resize of a label map, id map or mask; keeps the dtype exactly.

    Output pixel ``i`` takes input pixel ``floor((i + 0.5) * H / h)`` (pixel-centre exact), so a
    2x upsampling repeats each pixel twice and the 2x downsampling after it returns the original.

    Args:
        x: ``(H, W)`` or ``(C, H, W)`` tensor of any dtype.
        size: Output ``(h, w)``.

    Returns:
        ``(h, w)`` or ``(C, h, w)`` tensor of the same dtype.

    Raises:
        ValueError: ``x`` is not 2-D or 3-D.

    Example:
        >>> resize_nearest(torch.tensor([[1, 2], [3, 4]]), (4, 4))[0].tolist()
        [1, 1, 2, 2]
    """
    _check_map(x, "resize_nearest")
    H, W = x.shape[-2:]
    h, w = as_size(size, name="size")
    if (h, w) == (H, W):
        return x
    rows = torch.div((torch.arange(h) * 2 + 1) * H, 2 * h, rounding_mode="floor").clamp_(max=H - 1)
    cols = torch.div((torch.arange(w) * 2 + 1) * W, 2 * w, rounding_mode="floor").clamp_(max=W - 1)
    return x[..., rows[:, None], cols[None, :]]


def _linear_resize(x: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """``(N, C, H, W)`` float -> ``(N, C, h, w)``: area for integer downsampling, else antialiased bilinear."""
    H, W = x.shape[-2:]
    h, w = size
    if (h, w) == (H, W):
        return x
    if H % h == 0 and W % w == 0:
        # Integer factors: area = plain block mean, exactly centred on the output pixel.
        return F.avg_pool2d(x, kernel_size=(H // h, W // w))
    return F.interpolate(x, size=(h, w), mode="bilinear", align_corners=False, antialias=True)


def resize_continuous(
    x: torch.Tensor, size: tuple[int, int], *, valid: torch.Tensor | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """Resize a continuous map, averaging only over valid pixels.

    Args:
        x: ``(C, H, W)`` or ``(H, W)`` float tensor. Values at invalid pixels are ignored (they
            may be NaN, inf or sentinels).
        size: Output ``(h, w)``.
        valid: ``(H, W)`` bool, True where ``x`` is valid; None means everywhere.

    Returns:
        ``(y, valid_out)``: ``y`` with ``x``'s layout at ``(h, w)`` (0 where invalid) and
        ``valid_out`` ``(h, w)`` bool, True where at least half of the pixel's weight was valid.

    Raises:
        ValueError: Wrong ranks or a mask of the wrong size.

    Example:
        >>> x = torch.tensor([[1.0, 9.0], [3.0, 5.0]])
        >>> y, m = resize_continuous(x, (1, 1), valid=torch.tensor([[True, False], [True, True]]))
        >>> y.item(), m.item()
        (3.0, True)
    """
    _check_map(x, "resize_continuous")
    size = as_size(size, name="size")
    squeeze = x.dim() == 2
    xc = x.unsqueeze(0) if squeeze else x  # (C, H, W)
    if not xc.is_floating_point():
        raise ValueError(f"resize_continuous: expected a floating-point tensor, got {x.dtype}")
    H, W = xc.shape[-2:]
    if valid is None:
        valid = torch.ones((H, W), dtype=torch.bool)
    if valid.shape != (H, W) or valid.dtype != torch.bool:
        raise ValueError(f"resize_continuous: valid must be bool ({H}, {W}), got {valid.dtype} {tuple(valid.shape)}")
    m = valid.to(xc.dtype)[None, None]  # (1, 1, H, W)
    # torch.where, not a product: 0 * inf or 0 * NaN at a missing pixel would still poison the sum.
    num = _linear_resize(torch.where(valid, xc, 0.0)[None], size)[0]  # (C, h, w)
    den = _linear_resize(m, size)[0, 0]  # (h, w)
    valid_out = den >= MIN_VALID_WEIGHT - 1e-6
    y = torch.where(valid_out, num / den.clamp_min(1e-12), 0.0)
    return (y[0] if squeeze else y), valid_out


def resize_depth(
    depth: torch.Tensor, size: tuple[int, int], *, valid: torch.Tensor | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """Resize a metric depth map through inverse depth (keeps planes planar).

    Args:
        depth: ``(1, H, W)`` or ``(H, W)`` float depth; pixels with depth <= 0 are treated as
            missing in addition to ``valid``.
        size: Output ``(h, w)``.
        valid: ``(H, W)`` bool, True where depth is valid; None means wherever depth > 0.

    Returns:
        ``(depth_out, valid_out)`` as in :func:`resize_continuous` (0 where invalid).

    Example:
        >>> d, m = resize_depth(torch.tensor([[1.0, 1.0], [2.0, 2.0]]), (1, 1))
        >>> round(d.item(), 4)  # harmonic mean of 1, 1, 2, 2
        1.3333
    """
    _check_map(depth, "resize_depth")
    if depth.dim() == 3 and depth.shape[0] != 1:
        raise ValueError(f"resize_depth: expected (1, H, W) or (H, W) depth, got {tuple(depth.shape)}")
    d = depth.reshape(depth.shape[-2:])  # (H, W)
    ok = torch.isfinite(d) & (d > 0)
    valid = ok if valid is None else (valid & ok)
    inv = torch.where(valid, 1.0 / torch.where(valid, d, 1.0), 0.0)  # (H, W)
    inv_out, valid_out = resize_continuous(inv, size, valid=valid)
    valid_out = valid_out & (inv_out > 0)
    out = torch.where(valid_out, 1.0 / inv_out.clamp_min(1e-30), 0.0)  # (h, w)
    return out.reshape(*depth.shape[:-2], *out.shape), valid_out


def resize_normals(
    normals: torch.Tensor, size: tuple[int, int], *, valid: torch.Tensor | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """Resize unit normals ``(3, H, W)``: masked average, then renormalise to unit length.

    Pixels whose averaged vector nearly cancels (length < 1e-3) become invalid.

    Example:
        >>> n = torch.zeros(3, 2, 2); n[2] = -1
        >>> resize_normals(n, (1, 1))[0][:, 0, 0].tolist()
        [0.0, 0.0, -1.0]
    """
    if normals.dim() != 3 or normals.shape[0] != 3:
        raise ValueError(f"resize_normals: expected (3, H, W), got {tuple(normals.shape)}")
    n, valid_out = resize_continuous(normals, size, valid=valid)
    length = n.norm(dim=0)
    valid_out = valid_out & (length > 1e-3)
    return torch.where(valid_out, n / length.clamp_min(1e-12), 0.0), valid_out


def resize_rgb(rgb: np.ndarray, size: tuple[int, int]) -> torch.Tensor:
    """``(H, W, 3)`` uint8 RGB -> ``(3, h, w)`` float32 in [0, 255], area/antialiased-bilinear resized.

    Raises:
        ValueError: Not an ``(H, W, 3)`` uint8 array.

    Example:
        >>> resize_rgb(np.full((4, 4, 3), 200, np.uint8), (2, 2)).shape
        torch.Size([3, 2, 2])
    """
    if not isinstance(rgb, np.ndarray) or rgb.ndim != 3 or rgb.shape[2] != 3 or rgb.dtype != np.uint8:
        got = f"{rgb.dtype} {rgb.shape}" if isinstance(rgb, np.ndarray) else type(rgb).__name__
        raise ValueError(f"expected an (H, W, 3) uint8 RGB array, got {got}")
    x = torch.from_numpy(np.ascontiguousarray(rgb.transpose(2, 0, 1))).float()  # (3, H, W)
    return _linear_resize(x[None], as_size(size, name="size"))[0].clamp_(0.0, 255.0)


def image_to_tensor(rgb: np.ndarray, size: tuple[int, int]) -> torch.Tensor:
    """``(H, W, 3)`` uint8 RGB -> ``(3, h, w)`` float32 in [-1, 1] (resized as :func:`resize_rgb`).

    Example:
        >>> image_to_tensor(np.full((4, 4, 3), 255, np.uint8), (2, 2)).max().item()
        1.0
    """
    return resize_rgb(rgb, size) / 127.5 - 1.0


def rgb_tensor_to_gray(rgb: torch.Tensor) -> np.ndarray:
    """``(3, H, W)`` RGB in [0, 255] -> ``(H, W)`` float64 luma in [0, 1] (ITU-R 601, as Pillow's "L").

    Example:
        >>> rgb_tensor_to_gray(torch.full((3, 1, 1), 255.0)).item()
        1.0
    """
    weights = torch.tensor([0.299, 0.587, 0.114], dtype=torch.float64)
    return (torch.einsum("chw,c->hw", rgb.double(), weights) / 255.0).numpy()


def hflip_sample(sample: dict, *, normal_labels: Iterable[str] = ("normal",)) -> dict:
    """Mirror a sample left-right: image, labels, masks, regions, and ``meta["intrinsics"]``.

    The x component (channel 0) of every label in ``normal_labels`` is negated: normals are in
    the camera frame (+x right), and mirroring the image mirrors the scene in x.

    Args:
        sample: A sample dict (``image`` ``(3, H, W)``, ``labels``, ``masks``, ``regions``, ``meta``).
        normal_labels: Names of labels that hold surface normals.

    Returns:
        A new dict; the input is not modified.

    Example:
        >>> s = {"image": torch.zeros(3, 2, 2), "labels": {"normal": torch.ones(3, 2, 2)},
        ...      "masks": {"normal": torch.ones(2, 2, dtype=torch.bool)},
        ...      "regions": torch.zeros(2, 2, dtype=torch.long), "meta": {}}
        >>> hflip_sample(s)["labels"]["normal"][:, 0, 0].tolist()
        [-1.0, 1.0, 1.0]
    """
    normal_labels = set(normal_labels)
    out = dict(sample)
    out["image"] = sample["image"].flip(-1)
    labels = {}
    for name, x in sample["labels"].items():
        x = x.flip(-1)
        if name in normal_labels:
            x = x.clone()
            x[0] = -x[0]
        labels[name] = x
    out["labels"] = labels
    out["masks"] = {name: m.flip(-1) for name, m in sample["masks"].items()}
    out["regions"] = sample["regions"].flip(-1)
    meta = dict(sample.get("meta", {}))
    if "intrinsics" in meta:
        fx, fy, cx, cy = (float(v) for v in meta["intrinsics"])
        width = sample["image"].shape[-1]
        meta["intrinsics"] = Intrinsics(fx, fy, cx, cy).hflipped(width=width).as_tensor()
    meta["hflip"] = not bool(meta.get("hflip", False))
    out["meta"] = meta
    return out


class RandomHorizontalFlip:
    """Apply :func:`hflip_sample` with probability ``p`` (pass as a dataset's ``transform``).

    Args:
        p: Flip probability in [0, 1].
        normal_labels: Names of labels that hold surface normals.
        generator: Optional ``torch.Generator`` for reproducible flips.

    Example:
        >>> flip = RandomHorizontalFlip(p=1.0)
        >>> flip({"image": torch.arange(2.0).view(1, 1, 2).expand(3, 1, 2), "labels": {}, "masks": {},
        ...       "regions": torch.zeros(1, 2, dtype=torch.long), "meta": {}})["image"][0, 0].tolist()
        [1.0, 0.0]
    """

    def __init__(self, p: float = 0.5, *, normal_labels: Iterable[str] = ("normal",), generator=None) -> None:
        if not (isinstance(p, (int, float)) and 0.0 <= p <= 1.0) or math.isnan(p):
            raise ValueError(f"p must be a probability in [0, 1], got {p!r}")
        self.p = float(p)
        self.normal_labels = tuple(normal_labels)
        self.generator = generator

    def __call__(self, sample: dict) -> dict:
        if torch.rand((), generator=self.generator).item() < self.p:
            return hflip_sample(sample, normal_labels=self.normal_labels)
        return sample
