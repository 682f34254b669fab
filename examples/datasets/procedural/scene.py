"""The description of one procedural scene: room, decals, objects, materials, lights, camera.

A :class:`Scene` is plain data; :func:`.render.render_scene` turns it into an image and exact
labels, and :func:`.sampling.sample_scene` draws a random one. Tests build scenes by hand to get
known configurations (a sphere of known radius in front of a wall, ...).

World frame: metres, z up, the floor is z = 0. Camera frame (labels): OpenCV convention,
+x right, +y down, +z forward.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

import numpy as np

from .geometry import ROOM_FACES, Box, Cylinder, Room, Sphere
from .materials import Material

__all__ = [
    "CLASS_NAMES",
    "CLASS_IDS",
    "Camera",
    "Decal",
    "Light",
    "Scene",
    "SceneObject",
    "room_face_class",
]

CLASS_NAMES = ("floor", "wall", "ceiling", "window", "rug", "painting", "sphere", "box", "cylinder")
"""Semantic classes, by id. ``window`` is the outdoor view through a window opening (no surface:
depth, normal and curvature are missing there)."""

CLASS_IDS = {name: i for i, name in enumerate(CLASS_NAMES)}

_SHAPE_CLASS = {Sphere: CLASS_IDS["sphere"], Box: CLASS_IDS["box"], Cylinder: CLASS_IDS["cylinder"]}


def room_face_class(face: int) -> int:
    """Semantic class of a room face id (see :data:`.geometry.ROOM_FACES`)."""
    return CLASS_IDS[ROOM_FACES[face].split("_")[0]]


@dataclass(frozen=True)
class Camera:
    """A pinhole camera with square pixels and no roll.

    Attributes:
        position: ``(3,)`` optical centre, world frame.
        yaw: Heading in the floor plane, radians (0 looks along +x, pi/2 along +y).
        pitch: Downward tilt, radians (positive looks down).
        hfov: Horizontal field of view, radians.
    """

    position: np.ndarray
    yaw: float
    pitch: float
    hfov: float

    @property
    def rotation(self) -> np.ndarray:
        """``(3, 3)`` world-from-camera rotation; its columns are the right, down, forward axes."""
        cy, sy, cp, sp = np.cos(self.yaw), np.sin(self.yaw), np.cos(self.pitch), np.sin(self.pitch)
        forward = np.array([cp * cy, cp * sy, -sp])
        right = np.array([sy, -cy, 0.0])
        down = np.cross(forward, right)
        return np.stack([right, down, forward], axis=1)

    def intrinsics(self, height: int, width: int) -> np.ndarray:
        """``(3, 3)`` matrix K for 0-based pixel indices: ``f = (W/2) / tan(hfov/2)``, centre ``(W-1)/2, (H-1)/2``."""
        f = 0.5 * width / np.tan(0.5 * self.hfov)
        return np.array([[f, 0.0, 0.5 * (width - 1)], [0.0, f, 0.5 * (height - 1)], [0.0, 0.0, 1.0]])

    def rays(self, height: int, width: int, supersample: int = 1) -> tuple[np.ndarray, np.ndarray]:
        """World-frame rays through a ``supersample x supersample`` grid inside every pixel.

        Returns:
            The shared origin ``(3, 1)`` and directions ``(3, N)`` with ``N = H*s * W*s`` in
            row-major order of the ``(H*s, W*s)`` sub-pixel grid. Directions have camera-frame
            z = 1, so the ray parameter of a hit is its z-buffer depth.
        """
        k = self.intrinsics(height, width)
        offsets = (np.arange(supersample) + 0.5) / supersample - 0.5
        cols = (np.arange(width)[:, None] + offsets[None, :]).reshape(-1)  # (W*s,)
        rows = (np.arange(height)[:, None] + offsets[None, :]).reshape(-1)  # (H*s,)
        x = np.broadcast_to((cols - k[0, 2]) / k[0, 0], (rows.size, cols.size))
        y = np.broadcast_to(((rows - k[1, 2]) / k[1, 1])[:, None], (rows.size, cols.size))
        d_cam = np.stack([x.reshape(-1), y.reshape(-1), np.ones(x.size)])  # (3, N)
        d = self.rotation @ d_cam
        return self.position[:, None], d


@dataclass(frozen=True)
class Light:
    """A point light; ``color`` is its RGB power: irradiance ``color * cos / (1 + (dist / falloff)^2)``.

    The irradiance falls off as the inverse square of the distance beyond ``falloff`` metres and
    stays finite closer in (a lamp is not a point).
    """

    position: np.ndarray
    color: np.ndarray
    falloff: float = 2.0


@dataclass(frozen=True)
class SceneObject:
    """A solid primitive with a material (an index into :attr:`Scene.materials`)."""

    shape: Sphere | Box | Cylinder
    material: int

    @property
    def semantic(self) -> int:
        return _SHAPE_CLASS[type(self.shape)]


@dataclass(frozen=True)
class Decal:
    """A rectangle on a room face that changes its class and texture but not its geometry.

    A ``window`` is an opening instead: rays that reach it leave the room and see the outdoors.

    Attributes:
        kind: ``"rug"`` (on the floor), ``"painting"`` or ``"window"`` (on a wall).
        face: Room face id (see :data:`.geometry.ROOM_FACES`).
        center: ``(2,)`` centre in the face's surface coordinates, metres.
        half_size: ``(2,)`` half width and half height, metres.
        angle: Rotation within the face, radians.
        material: Index into :attr:`Scene.materials` (ignored for windows).
    """

    kind: Literal["rug", "painting", "window"]
    face: int
    center: np.ndarray
    half_size: np.ndarray
    angle: float = 0.0
    material: int = -1

    @property
    def semantic(self) -> int:
        return CLASS_IDS[self.kind]

    def local_coords(self, uv: np.ndarray) -> np.ndarray:
        """``(2, N)`` coordinates in the decal's frame, origin at its corner (in ``[0, 2*half_size]`` inside)."""
        c, s = np.cos(self.angle), np.sin(self.angle)
        du, dv = uv[0] - self.center[0], uv[1] - self.center[1]
        return np.stack([c * du + s * dv, -s * du + c * dv]) + self.half_size[:, None]

    def contains(self, uv: np.ndarray) -> np.ndarray:
        local = self.local_coords(uv)
        return np.all((local >= 0) & (local <= 2 * self.half_size[:, None]), axis=0)


@dataclass(frozen=True)
class Scene:
    """Everything needed to render one view.

    Region ids (the ``regions`` map) follow the scene order: the six room faces are ``0..5``,
    then one id per decal, then one per object.

    Attributes:
        room: The room.
        camera: The camera, inside the room.
        materials: All materials; faces, decals and objects refer to them by index.
        room_materials: Six material indices, one per room face.
        objects: Solid primitives inside the room.
        decals: Rugs, paintings and windows on the room faces (later ones are drawn on top).
        lights: Point lights inside the room (shadows are cast by the objects).
        ambient: ``(3,)`` ambient irradiance.
        sky: ``(3, 3)`` outdoor colours (zenith, horizon, ground) as seen through windows, in [0, 1].
        attenuation: Depth attenuation of the image, 1/m (radiance is scaled by ``exp(-a * depth)``).
        exposure: Multiplier on the automatic exposure, or with ``auto_exposure=False`` the
            exposure itself (display value before gamma = ``exposure * radiance``).
        auto_exposure: Scale the image so that the 90th luminance percentile of the surfaces
            maps to a fixed value (as a camera's automatic exposure does).
    """

    room: Room
    camera: Camera
    materials: tuple[Material, ...]
    room_materials: tuple[int, ...]
    objects: tuple[SceneObject, ...] = ()
    decals: tuple[Decal, ...] = ()
    lights: tuple[Light, ...] = ()
    ambient: np.ndarray = field(default_factory=lambda: np.full(3, 0.2))
    sky: np.ndarray = field(default_factory=lambda: np.array([[0.45, 0.65, 0.95], [0.85, 0.9, 0.95], [0.4, 0.5, 0.3]]))
    attenuation: float = 0.0
    exposure: float = 1.0
    auto_exposure: bool = True

    def __post_init__(self) -> None:
        if len(self.room_materials) != 6:
            raise ValueError(f"room_materials needs one material per room face (6), got {len(self.room_materials)}")
        if not self.room.contains(self.camera.position):
            raise ValueError(f"camera position {self.camera.position} is outside the room of size {self.room.size}")

    def decal_region(self, j: int) -> int:
        return 6 + j

    def object_region(self, k: int) -> int:
        return 6 + len(self.decals) + k

    @property
    def num_regions(self) -> int:
        return 6 + len(self.decals) + len(self.objects)
