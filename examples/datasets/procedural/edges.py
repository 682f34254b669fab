"""The edge label: occlusion boundaries, creases and texture edges from exact geometry.

Edges live between two 4-neighbouring pixels A and B. Each pair gets three strengths in [0, 1]:

- **occlusion** (0 or 1): the inverse depth ``w = 1/z`` jumps from A to B by much more than the
  surfaces on either side change over one pixel. For a continuous surface, even one with a
  crease or seen at a grazing angle, the jump across a pair is bounded by the slopes on the two
  sides (``w`` is affine in pixel coordinates on a plane), so only true discontinuities pass.
  A side's slope is the difference to its next pixel on the same smooth patch, or, where that
  pixel is off the image or on another patch, the exact slope of the tangent plane
  (``|n_x| / (f_x |n . P|)`` along x). Windows (no surface) have ``w = 0``, so window frames are
  occlusion edges too.
- **crease** (0 or 1): two different smooth patches (faces of a box, cap and side of a cylinder,
  walls and floor, an object and the floor it stands on) whose normals differ by more than
  :data:`CREASE_ANGLE_DEG`, and no occlusion.
- **texture** (soft): the albedo difference (max over RGB), ramped linearly from 0 at
  :data:`TEXTURE_FLOOR` to 1 at ``TEXTURE_FLOOR + TEXTURE_RANGE``.

A pair's strength is written on its *nearer* pixel (larger ``w``), so edges are one pixel wide
and an occlusion boundary lies on the occluding object's silhouette. The edge label is the
maximum of the three components.
"""

from __future__ import annotations

import numpy as np

__all__ = [
    "CREASE_ANGLE_DEG",
    "OCCLUSION_MIN_JUMP",
    "OCCLUSION_RATIO",
    "TEXTURE_FLOOR",
    "TEXTURE_RANGE",
    "edge_components",
    "edge_map",
]

OCCLUSION_RATIO = 2.0
"""A jump in inverse depth is an occlusion when it exceeds this many times the slopes beside it ..."""
OCCLUSION_MIN_JUMP = 0.03
"""... and when the farther pixel is at least this fraction farther away (relative jump of ``w``)."""
CREASE_ANGLE_DEG = 20.0
TEXTURE_FLOOR = 0.03
TEXTURE_RANGE = 0.25


def _plane_slopes(depth: np.ndarray, normal: np.ndarray, intrinsics: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``|dw/du|`` and ``|dw/dv|`` per pixel of the tangent plane, ``(H, W)`` each (0 without a surface)."""
    height, width = depth.shape
    fx, fy, cx, cy = intrinsics[0, 0], intrinsics[1, 1], intrinsics[0, 2], intrinsics[1, 2]
    x = ((np.arange(width) - cx) / fx)[None, :]
    y = ((np.arange(height) - cy) / fy)[:, None]
    has_surface = np.isfinite(depth)
    n_dot_ray = normal[0] * x + normal[1] * y + normal[2]  # n . (x, y, 1)
    # On the plane n . X = n . P, w(u, v) = n . ray(u, v) / (n . P), so dw/du = n_x / (fx * n . P).
    n_dot_p = np.abs(np.where(has_surface, depth, 1.0) * n_dot_ray)
    with np.errstate(divide="ignore", invalid="ignore"):
        slope_u, slope_v = np.abs(normal[0]) / (fx * n_dot_p), np.abs(normal[1]) / (fy * n_dot_p)
    # A plane seen exactly edge-on (0 / 0) has an unbounded slope; no surface, no slope.
    slope_u = np.where(has_surface, np.nan_to_num(slope_u, nan=np.inf), 0.0)
    slope_v = np.where(has_surface, np.nan_to_num(slope_v, nan=np.inf), 0.0)
    return slope_u, slope_v


def _row_pairs(w, plane_slope, normal, patch, albedo) -> tuple[dict[str, np.ndarray], np.ndarray]:
    """Strengths of the horizontal pairs ``(i, j)-(i, j+1)``, each ``(H, W-1)``, and whether ``(i, j)`` is nearer."""
    jump = np.abs(np.diff(w, axis=-1))  # (H, W-1)
    patch_a, patch_b = patch[:, :-1], patch[:, 1:]
    # Slope beside a pair, from the neighbouring pair when that one stays on one smooth patch.
    smooth = np.where(patch_a == patch_b, jump, np.nan)
    nan_column = np.full((w.shape[0], 1), np.nan)
    before = np.concatenate([nan_column, smooth[:, :-1]], axis=1)  # pair (j-1, j)
    after = np.concatenate([smooth[:, 1:], nan_column], axis=1)  # pair (j+1, j+2)
    before = np.where(np.isnan(before), plane_slope[:, :-1], before)
    after = np.where(np.isnan(after), plane_slope[:, 1:], after)
    w_a, w_b = w[:, :-1], w[:, 1:]
    occlusion = (jump > OCCLUSION_RATIO * np.maximum(before, after)) & (
        jump > OCCLUSION_MIN_JUMP * np.maximum(w_a, w_b)
    )

    cos = (normal[:, :, :-1] * normal[:, :, 1:]).sum(axis=0)
    crease = (
        ~occlusion
        & (patch_a != patch_b)
        & (patch_a >= 0)
        & (patch_b >= 0)
        & (cos < np.cos(np.radians(CREASE_ANGLE_DEG)))
    )
    contrast = np.abs(np.diff(albedo, axis=-1)).max(axis=0)  # (H, W-1)
    texture = np.clip((contrast - TEXTURE_FLOOR) / TEXTURE_RANGE, 0.0, 1.0)
    strengths = {"occlusion": occlusion.astype(np.float64), "crease": crease.astype(np.float64), "texture": texture}
    return strengths, w_a >= w_b


def _accumulate_rows(maps, w, plane_slope, normal, patch, albedo) -> None:
    """Max the horizontal pairs' strengths into ``maps`` ({name: (H, W)}) on each pair's nearer pixel."""
    if w.shape[1] < 2:
        return
    strengths, first_nearer = _row_pairs(w, plane_slope, normal, patch, albedo)
    for name, strength in strengths.items():
        out = maps[name]
        np.maximum(out[:, :-1], np.where(first_nearer, strength, 0.0), out=out[:, :-1])
        np.maximum(out[:, 1:], np.where(first_nearer, 0.0, strength), out=out[:, 1:])


def edge_components(
    *, depth: np.ndarray, normal: np.ndarray, patch: np.ndarray, albedo: np.ndarray, intrinsics: np.ndarray
) -> dict[str, np.ndarray]:
    """The occlusion, crease and texture edge maps (see the module docstring).

    Args:
        depth: ``(H, W)`` z-buffer depth, ``inf`` where there is no surface.
        normal: ``(3, H, W)`` unit normals in the camera frame (0 where there is no surface).
        patch: ``(H, W)`` int ids of smooth geometric patches, -1 where there is no surface.
        albedo: ``(3, H, W)`` reflectance (shading-free colour) in [0, 1].
        intrinsics: ``(3, 3)`` camera matrix K for 0-based pixel indices.

    Returns:
        ``{"occlusion", "crease", "texture"}``: ``(H, W)`` float64 maps in [0, 1].
    """
    w = 1.0 / depth  # inf depth -> 0
    slope_u, slope_v = _plane_slopes(depth, normal, intrinsics)
    maps = {name: np.zeros(depth.shape) for name in ("occlusion", "crease", "texture")}
    _accumulate_rows(maps, w, slope_u, normal, patch, albedo)
    # Vertical pairs: the same computation on transposed maps, written back through views.
    _accumulate_rows(
        {name: m.T for name, m in maps.items()},
        w.T,
        slope_v.T,
        normal.transpose(0, 2, 1),
        patch.T,
        albedo.transpose(0, 2, 1),
    )
    return maps


def edge_map(
    *, depth: np.ndarray, normal: np.ndarray, patch: np.ndarray, albedo: np.ndarray, intrinsics: np.ndarray
) -> np.ndarray:
    """Edge strength per pixel: the maximum of :func:`edge_components`.

    Args:
        depth: ``(H, W)`` z-buffer depth, ``inf`` where there is no surface.
        normal: ``(3, H, W)`` unit normals in the camera frame (0 where there is no surface).
        patch: ``(H, W)`` int ids of smooth geometric patches, -1 where there is no surface.
        albedo: ``(3, H, W)`` reflectance in [0, 1].
        intrinsics: ``(3, 3)`` camera matrix K.

    Returns:
        ``(H, W)`` float64 edge strength in [0, 1].

    Example:
        >>> depth = np.array([[2.0, 2.0, 5.0, 5.0]])
        >>> normal = np.zeros((3, 1, 4)); normal[2] = -1
        >>> k = np.array([[2.0, 0, 1.5], [0, 2.0, 0], [0, 0, 1]])
        >>> edge_map(depth=depth, normal=normal, patch=np.array([[1, 1, 0, 0]]),
        ...          albedo=np.zeros((3, 1, 4)), intrinsics=k)
        array([[0., 1., 0., 0.]])
    """
    components = edge_components(depth=depth, normal=normal, patch=patch, albedo=albedo, intrinsics=intrinsics)
    return np.maximum.reduce(list(components.values()))
