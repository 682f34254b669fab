"""Camera geometry: back-projection and surface normals from metric depth.

Camera frame (OpenCV convention, the one Taskonomy's stored normals use): +x image right,
+y image down, +z forward into the scene. Normals are unit vectors in that frame, oriented
toward the camera (``n . P < 0`` for the surface point ``P``), so a wall facing the camera has
``n ~ (0, 0, -1)`` and a floor below the camera has ``n ~ (0, -1, 0)``.
"""

from __future__ import annotations

from typing import Literal

import numpy as np
from scipy import ndimage

from .transforms import Intrinsics

__all__ = ["backproject", "normals_from_depth"]


def backproject(depth: np.ndarray, intrinsics: Intrinsics) -> np.ndarray:
    """Camera-frame 3-D points of a z-depth map.

    ``P(v, u) = ((u - cx) Z / fx, (v - cy) Z / fy, Z)`` for 0-based pixel indices.

    Args:
        depth: ``(H, W)`` z-depth (distance to the camera plane) in metres.
        intrinsics: Pinhole intrinsics of this image size.

    Returns:
        ``(H, W, 3)`` float64 points.

    Example:
        >>> backproject(np.full((1, 3), 2.0), Intrinsics(1.0, 1.0, 1.0, 0.0))[0, 0].tolist()
        [-2.0, 0.0, 2.0]
    """
    if depth.ndim != 2:
        raise ValueError(f"backproject: expected (H, W) depth, got shape {depth.shape}")
    H, W = depth.shape
    v, u = np.mgrid[0:H, 0:W].astype(np.float64)  # (H, W) each
    z = depth.astype(np.float64)
    k = intrinsics
    return np.stack(((u - k.cx) * z / k.fx, (v - k.cy) * z / k.fy, z), axis=-1)


def _orient_and_normalise(n: np.ndarray, points: np.ndarray, ok: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    length = np.linalg.norm(n, axis=-1)  # (H, W)
    ok = ok & (length > 1e-12)
    n = n / np.where(ok, length, 1.0)[..., None]
    # Orient toward the camera: the normal and the ray to the point face opposite ways.
    flip = np.einsum("hwc,hwc->hw", n, points) > 0
    n = np.where(flip[..., None], -n, n)
    return np.where(ok[..., None], n, 0.0), ok


def _normals_cross(points: np.ndarray, valid: np.ndarray, step: int) -> tuple[np.ndarray, np.ndarray]:
    H, W = valid.shape
    k = step
    du = np.zeros_like(points)
    dv = np.zeros_like(points)
    du[:, k:-k] = points[:, 2 * k :] - points[:, : -2 * k]  # central difference along columns
    dv[k:-k] = points[2 * k :] - points[: -2 * k]  # central difference along rows
    ok = np.zeros((H, W), dtype=bool)
    if H > 2 * k and W > 2 * k:
        ok[k:-k, k:-k] = (
            valid[k:-k, k:-k]
            & valid[k:-k, 2 * k :]
            & valid[k:-k, : -2 * k]
            & valid[2 * k :, k:-k]
            & valid[: -2 * k, k:-k]
        )
    # cross(dP/dv, dP/du) points toward the camera for a surface seen from the front.
    return _orient_and_normalise(np.cross(dv, du), points, ok)


def _normals_plane(
    points: np.ndarray, valid: np.ndarray, window: int, min_valid_fraction: float
) -> tuple[np.ndarray, np.ndarray]:
    w = valid.astype(np.float64)

    def box(a: np.ndarray) -> np.ndarray:  # window sum over valid pixels, zero outside the image
        return ndimage.uniform_filter(a, size=window, mode="constant") * window**2

    count = box(w)  # (H, W)
    inside = box(np.ones_like(w))  # window pixels inside the image (fewer at the border)
    ok = valid & (count >= np.maximum(3.0, min_valid_fraction * inside) - 1e-9)
    safe = np.maximum(count, 1.0)
    p = np.where(valid[..., None], points, 0.0)
    mean = np.stack([box(p[..., i]) for i in range(3)], axis=-1) / safe[..., None]  # (H, W, 3)
    cov = np.empty(valid.shape + (3, 3))
    for i in range(3):
        for j in range(i, 3):
            # E[p_i p_j] - E[p_i] E[p_j], in float64: metre-scale points square to large numbers.
            cov[..., i, j] = cov[..., j, i] = box(p[..., i] * p[..., j]) / safe - mean[..., i] * mean[..., j]
    cov = np.where(ok[..., None, None], cov, np.eye(3))
    _, vectors = np.linalg.eigh(cov)  # eigenvalues ascending
    n = vectors[..., :, 0]  # (H, W, 3): direction of least spread = plane normal
    return _orient_and_normalise(n, points, ok)


def normals_from_depth(
    depth: np.ndarray,
    intrinsics: Intrinsics,
    *,
    valid: np.ndarray | None = None,
    method: Literal["cross", "plane"] = "cross",
    step: int = 1,
    window: int = 5,
    min_valid_fraction: float = 0.5,
) -> tuple[np.ndarray, np.ndarray]:
    """Surface normals of a z-depth map in the camera frame, oriented toward the camera.

    Two estimators (both exact on a plane):

    * ``"cross"``: back-project, take central differences ``dP/du``, ``dP/dv`` over ``step``
      pixels and normalise ``cross(dP/dv, dP/du)``. A normal is valid where the pixel and its
      four stencil neighbours are valid (the image border is invalid). Best for clean depth.
    * ``"plane"``: least-squares plane through the valid points in a ``window x window`` patch
      (smallest-eigenvalue eigenvector of their covariance), the "patch-wise" normals used for
      noisy stereo or sensor depth. Valid where the centre is valid and at least
      ``min_valid_fraction`` of the patch's pixels inside the image (and at least 3) are valid.

    Args:
        depth: ``(H, W)`` z-depth in metres.
        intrinsics: Pinhole intrinsics for this image size.
        valid: ``(H, W)`` bool, True where depth is valid; None means finite and > 0.
        method: ``"cross"`` or ``"plane"``.
        step: Half-width of the central differences (``"cross"``).
        window: Odd patch size (``"plane"``).
        min_valid_fraction: Minimum valid share of a patch (``"plane"``).

    Returns:
        ``(normals, valid_out)``: ``(H, W, 3)`` float64 unit vectors (0 where invalid) and
        ``(H, W)`` bool.

    Raises:
        ValueError: Bad shapes or parameters.

    Example:
        >>> n, ok = normals_from_depth(np.full((5, 5), 3.0), Intrinsics(5.0, 5.0, 2.0, 2.0))
        >>> n[2, 2].round(6).tolist(), bool(ok[2, 2])
        ([0.0, 0.0, -1.0], True)
    """
    if depth.ndim != 2:
        raise ValueError(f"normals_from_depth: expected (H, W) depth, got shape {depth.shape}")
    finite = np.isfinite(depth) & (depth > 0)
    if valid is None:
        valid = finite
    else:
        if valid.shape != depth.shape or valid.dtype != bool:
            raise ValueError(f"normals_from_depth: valid must be bool {depth.shape}, got {valid.dtype} {valid.shape}")
        valid = valid & finite
    points = backproject(np.where(valid, depth, 1.0), intrinsics)  # (H, W, 3)
    if method == "cross":
        if not isinstance(step, int) or step < 1:
            raise ValueError(f"step must be a positive int, got {step!r}")
        return _normals_cross(points, valid, step)
    if method == "plane":
        if not isinstance(window, int) or window < 3 or window % 2 == 0:
            raise ValueError(f"window must be an odd int >= 3, got {window!r}")
        if not 0.0 < min_valid_fraction <= 1.0:
            raise ValueError(f"min_valid_fraction must lie in (0, 1], got {min_valid_fraction!r}")
        return _normals_plane(points, valid, window, min_valid_fraction)
    raise ValueError(f"method must be 'cross' or 'plane', got {method!r}")
