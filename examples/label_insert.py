"""Insert a primitive object (sphere, box, cylinder) into a scene's labels, with consistent geometry.

The object is ray cast with the procedural scenes' own primitives
(:mod:`examples.datasets.procedural.geometry`) through the scene's camera, so every label it
writes agrees with the others, as in a rendered scene: depth is the z-buffer depth of the hit,
normals are the exact surface normals in the camera frame, curvatures the exact principal
curvatures, the class is the primitive's, and the edge label gets the object's occlusion
boundary and creases (:func:`examples.datasets.procedural.edges.edge_components`). The object
rests on the floor under the chosen pixel, and it is hidden wherever the scene's present depth
is nearer (so it can stand behind a table).

Synthetic scenes know their camera (``intrinsics`` and ``camera_to_world``). A label file does
not; :func:`default_camera` (the middle of the synthetic scenes' camera ranges) stands in, and
the floor is assumed where the synthetic scenes have it, at z = 0.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np
import torch

from examples.datasets.procedural import CLASS_IDS, Box, Cylinder, Sphere
from examples.datasets.procedural.edges import edge_components

from .label_edits import Labels, Masks, _copy
from .studies.editing import label_size

__all__ = ["PRIMITIVES", "CameraPose", "default_camera", "insert_primitive"]

PRIMITIVES = ("sphere", "box", "cylinder")

_FALLBACK_DISTANCE = 3.0  # metres along the ray when it never reaches the floor (looking up)
_OBJECT_PATCH = 1_000  # patch ids of the object's faces start here; the scene counts as one patch


@dataclass(frozen=True)
class CameraPose:
    """A pinhole camera: ``intrinsics`` K for a size, and ``camera_to_world`` (z up, floor at z = 0).

    Attributes:
        intrinsics: ``(3, 3)`` K for 0-based pixel indices.
        camera_to_world: ``(4, 4)`` pose; its rotation's columns are the right, down, forward axes.
    """

    intrinsics: np.ndarray
    camera_to_world: np.ndarray

    @classmethod
    def looking(cls, size: tuple[int, int], *, height: float, pitch_deg: float, hfov_deg: float) -> CameraPose:
        """A camera ``height`` metres above the floor, tilted down by ``pitch_deg``, looking along +x."""
        H, W = size
        f = 0.5 * W / np.tan(np.radians(hfov_deg) / 2)
        k = np.array([[f, 0.0, 0.5 * (W - 1)], [0.0, f, 0.5 * (H - 1)], [0.0, 0.0, 1.0]])
        pitch = np.radians(pitch_deg)
        forward = np.array([np.cos(pitch), 0.0, -np.sin(pitch)])
        right = np.array([0.0, -1.0, 0.0])
        down = np.cross(forward, right)
        pose = np.eye(4)
        pose[:3, :3], pose[:3, 3] = np.stack([right, down, forward], axis=1), [0.0, 0.0, height]
        return cls(k, pose)


def default_camera(size: tuple[int, int]) -> CameraPose:
    """The camera assumed for scenes that do not record theirs (the synthetic scenes' middle ranges)."""
    return CameraPose.looking(size, height=1.45, pitch_deg=15.0, hfov_deg=65.0)


def _rays(camera: CameraPose, size: tuple[int, int]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The shared origin ``(3, 1)``, world directions ``(3, H*W)`` (camera-frame z = 1) and the rotation."""
    H, W = size
    k = np.asarray(camera.intrinsics, dtype=np.float64)
    pose = np.asarray(camera.camera_to_world, dtype=np.float64)
    rows, cols = np.meshgrid(np.arange(H), np.arange(W), indexing="ij")  # (H, W) each
    d_cam = np.stack(
        [((cols - k[0, 2]) / k[0, 0]).ravel(), ((rows - k[1, 2]) / k[1, 1]).ravel(), np.ones(H * W)]
    )  # (3, H*W), row-major pixels
    rotation = pose[:3, :3]
    return pose[:3, 3:4], rotation @ d_cam, rotation


def _place(kind: str, foot: np.ndarray, size: float):
    """The primitive standing on ``foot`` ``(3,)``, ``size`` metres across."""
    r = size / 2
    if kind == "sphere":
        return Sphere(foot + np.array([0.0, 0.0, r]), r)
    if kind == "box":
        half = np.array([r, r, r])
        return Box(foot + np.array([0.0, 0.0, r]), half, yaw=np.pi / 6)  # turned, so two faces show
    return Cylinder(foot, np.array([0.0, 0.0, 1.0]), r, size * 1.2)


def insert_primitive(
    labels: Mapping,
    masks: Mapping,
    kind: str,
    point: tuple[int, int],
    *,
    size: float = 0.6,
    camera: CameraPose | None = None,
) -> tuple[Labels, Masks, torch.Tensor]:
    """Insert a primitive standing on the floor under pixel ``point`` ``(row, col)``.

    Where the object is visible (nearer than the scene's present depth, or where depth is
    missing), every label the scene has among ``semantic``, ``depth``, ``normal``,
    ``curvature`` and ``edge`` takes the object's exact value and becomes present; other
    labels become missing there (the object carries no information about them).

    Args:
        labels: ``{name: (H, W) or (C, H, W)}`` of one scene.
        masks: Its ``{name: bool (H, W)}``.
        kind: ``"sphere"``, ``"box"`` or ``"cylinder"``.
        point: The pixel whose floor point the object stands on.
        size: Width of the object in metres (a cylinder is 1.2 times as tall).
        camera: The scene's camera; None for :func:`default_camera`.

    Returns:
        ``(labels, masks, visible)``: the edited scene and the object's visible pixels ``(H, W)``.

    Raises:
        ValueError: An unknown kind, a bad size, a point outside the image, or an object that
            is hidden entirely (behind nearer surfaces) or off the image.
    """
    if kind not in PRIMITIVES:
        raise ValueError(f"kind must be one of {PRIMITIVES}, got {kind!r}")
    if not (isinstance(size, int | float) and size > 0):
        raise ValueError(f"size must be a positive number of metres, got {size!r}")
    labels, masks = _copy(labels, masks)
    H, W = label_size(labels)
    row, col = point
    if not (0 <= row < H and 0 <= col < W):
        raise ValueError(f"point {point} lies outside the {H}x{W} image")
    camera = camera if camera is not None else default_camera((H, W))
    origin, directions, rotation = _rays(camera, (H, W))

    ray = directions[:, row * W + col]  # (3,)
    reach = -origin[2, 0] / ray[2] if ray[2] < 0 else np.inf  # ray parameter at the floor z = 0
    foot = origin[:, 0] + (reach if np.isfinite(reach) else _FALLBACK_DISTANCE) * ray
    if not np.isfinite(reach):
        foot[2] = 0.0  # a floating foot would hang the object in the air: drop it to the floor
    shape = _place(kind, foot, float(size))
    t, face = shape.intersect(origin, directions)  # (H*W,) z-buffer depth (directions have z = 1)
    hit = np.isfinite(t)

    depth_label = labels.get("depth")
    if depth_label is not None:
        scene_depth = depth_label[0].double().numpy().ravel()
        scene_present = masks["depth"].numpy().ravel()
        hit &= ~scene_present | (t < scene_depth)  # hidden behind nearer present surfaces
    visible = torch.from_numpy(hit.reshape(H, W))
    if not bool(visible.any()):
        raise ValueError(f"a {kind} at pixel {point} would be hidden or off the image; pick another place")

    points = origin + t[hit] * directions[:, hit]  # (3, N) world hit points
    surface = shape.surface(points, face[hit])
    normal_cam = rotation.T @ surface.normal  # (3, N) world -> camera frame
    values = {
        "semantic": np.full(hit.sum(), CLASS_IDS[kind]),
        "depth": t[hit][None],
        "normal": normal_cam,
        "curvature": surface.curvature,
    }
    for name, value in values.items():
        if name not in labels:
            continue
        old = labels[name]
        flat = old.reshape(-1, H * W).clone()  # (C, H*W); a class map is (1, H*W)
        flat[:, torch.from_numpy(hit)] = torch.as_tensor(value, dtype=old.dtype).reshape(-1, int(hit.sum()))
        labels[name] = flat.reshape(old.shape)
    if "edge" in labels:
        labels["edge"] = _edges_with_object(labels, masks, t, face, hit, camera, (H, W))
    for name in labels:
        # The object gives every geometric label; anything else is unknown on it.
        known = name in values or name == "edge"
        masks[name] = masks[name] | visible if known else masks[name] & ~visible
    return labels, masks, visible


def _edges_with_object(labels, masks, t, face, hit, camera: CameraPose, size) -> torch.Tensor:
    """The edge label with the object's occlusion boundary and creases written on its pixels.

    Edges are computed on the scene with the object in it (depth and normals where known; the
    scene counts as one smooth patch, so only the object's creases and boundaries are found);
    outside the object the scene's own edges stay as they were.
    """
    H, W = size
    depth = np.full(H * W, np.inf)
    normal = np.zeros((3, H * W))
    if "depth" in labels:
        present = masks["depth"].numpy().ravel()
        depth[present] = labels["depth"][0].double().numpy().ravel()[present]
    if "normal" in labels:
        normal = labels["normal"].double().numpy().reshape(3, H * W)
    patch = np.where(np.isfinite(depth), 0, -1)
    patch[hit] = _OBJECT_PATCH + face[hit]
    depth[hit] = t[hit]
    maps = edge_components(
        depth=depth.reshape(H, W),
        normal=normal.reshape(3, H, W),
        patch=patch.reshape(H, W),
        albedo=np.zeros((3, H, W)),  # no texture edges: the object is plain
        intrinsics=np.asarray(camera.intrinsics, dtype=np.float64),
    )
    object_edges = np.maximum(maps["occlusion"], maps["crease"]).ravel()
    old = labels["edge"]
    flat = old.reshape(H * W).clone()
    flat[torch.from_numpy(hit)] = torch.from_numpy(object_edges[hit]).to(old.dtype)
    return flat.reshape(old.shape)
