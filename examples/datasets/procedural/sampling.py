"""Random indoor scenes: a furnished-looking room seen by a camera standing near one wall.

Every random choice comes from the ``numpy.random.Generator`` that is passed in, so a scene is a
deterministic function of the generator's seed. Objects rest on the floor (or on top of a box),
never overlap each other, and keep clear of the camera.
"""

from __future__ import annotations

import colorsys
from dataclasses import dataclass, fields

import numpy as np

from .geometry import Box, Cylinder, Room, Sphere
from .materials import Material
from .scene import Camera, Decal, Light, Scene, SceneObject

__all__ = ["SceneConfig", "sample_scene"]

_WALL_FACES = (2, 3, 4, 5)
_CAMERA_CLEARANCE = 0.6  # metres between the camera and any object's footprint
_OBJECT_GAP = 0.08  # metres between object footprints
_MAX_TRIES = 40


@dataclass(frozen=True)
class SceneConfig:
    """Ranges of the random scene parameters (all lengths in metres, angles in degrees).

    Attributes:
        room_size_min: Smallest room ``(L_x, L_y, height)``.
        room_size_max: Largest room ``(L_x, L_y, height)``.
        num_objects: Inclusive range of the number of objects (stacked ones included).
        num_lights: Inclusive range of the number of point lights.
        max_windows: Windows per room are drawn from ``0 .. max_windows``.
        max_paintings: Paintings per room are drawn from ``0 .. max_paintings``.
        rug_probability: Chance that the floor has a rug.
        stack_probability: Chance that an object is put on top of a low box when one exists.
        hfov_deg: Range of the horizontal field of view.
        camera_height: Range of the camera height.
        pitch_deg: Range of the camera's downward tilt.
    """

    room_size_min: tuple[float, float, float] = (4.0, 4.0, 2.5)
    room_size_max: tuple[float, float, float] = (7.5, 7.5, 3.2)
    num_objects: tuple[int, int] = (3, 7)
    num_lights: tuple[int, int] = (1, 2)
    max_windows: int = 2
    max_paintings: int = 2
    rug_probability: float = 0.6
    stack_probability: float = 0.35
    hfov_deg: tuple[float, float] = (55.0, 75.0)
    camera_height: tuple[float, float] = (1.1, 1.8)
    pitch_deg: tuple[float, float] = (5.0, 25.0)

    def __post_init__(self) -> None:
        for f in fields(self):
            value = getattr(self, f.name)
            if isinstance(value, tuple) and len(value) == 2 and value[0] > value[1]:
                raise ValueError(f"SceneConfig.{f.name} must be an increasing range (low, high), got {value}")
        if any(lo > hi for lo, hi in zip(self.room_size_min, self.room_size_max, strict=True)):
            raise ValueError(f"room_size_min {self.room_size_min} exceeds room_size_max {self.room_size_max}")
        if self.room_size_min[0] < 3.0 or self.room_size_min[1] < 3.0 or self.room_size_min[2] < 2.2:
            raise ValueError(f"rooms must be at least 3 x 3 x 2.2 m, got room_size_min={self.room_size_min}")
        if self.num_objects[0] < 0 or self.num_lights[0] < 1:
            raise ValueError("num_objects must be >= 0 and num_lights >= 1")
        if not (0 < self.hfov_deg[0] and self.hfov_deg[1] < 150):
            raise ValueError(f"hfov_deg must lie in (0, 150), got {self.hfov_deg}")
        if not (0.3 <= self.camera_height[0] and self.camera_height[1] <= self.room_size_min[2] - 0.3):
            raise ValueError(f"camera_height {self.camera_height} must stay 0.3 m clear of floor and ceiling")


def _hsv(h: float, s: float, v: float) -> np.ndarray:
    return np.array(colorsys.hsv_to_rgb(h % 1.0, s, v))


class _Builder:
    """Accumulates materials, objects and decals while a scene is drawn."""

    def __init__(self, rng: np.random.Generator) -> None:
        self.rng = rng
        self.materials: list[Material] = []
        self.objects: list[SceneObject] = []
        self.footprints: list[tuple[np.ndarray, float]] = []  # (xy centre, radius) on the floor
        self.decals: list[Decal] = []

    def material(self, color, accent, pattern="solid", scale=0.5, angle=0.0, grain=0.0) -> int:
        rng = self.rng
        k = 3
        direction = rng.uniform(0, 2 * np.pi, k)
        magnitude = rng.uniform(0.4, 3.0, k)  # cycles per metre
        freq = np.stack([np.cos(direction), np.sin(direction)], axis=1) * magnitude[:, None]
        self.materials.append(
            Material(
                color=np.clip(color, 0.02, 0.95),
                accent=np.clip(accent, 0.02, 0.95),
                pattern=pattern,
                scale=scale,
                angle=angle,
                grain=grain,
                noise_freq=freq,
                noise_phase=rng.uniform(0, 2 * np.pi, k),
            )
        )
        return len(self.materials) - 1


def _floor_material(b: _Builder) -> int:
    rng = b.rng
    kind = rng.choice(["planks", "tiles", "checker", "carpet"], p=[0.35, 0.25, 0.15, 0.25])
    if kind == "planks":
        wood = _hsv(rng.uniform(0.05, 0.11), rng.uniform(0.4, 0.7), rng.uniform(0.35, 0.75))
        return b.material(wood, wood * rng.uniform(0.5, 0.8), "planks", rng.uniform(0.12, 0.25), grain=0.15)
    if kind == "tiles":
        tile = _hsv(rng.uniform(0, 1), rng.uniform(0.0, 0.3), rng.uniform(0.5, 0.9))
        return b.material(tile, tile * 0.55, "tiles", rng.uniform(0.3, 0.6), grain=0.05)
    if kind == "checker":
        light, dark = rng.uniform(0.75, 0.9), rng.uniform(0.08, 0.3)
        hue = rng.uniform(0, 1)
        return b.material(_hsv(hue, 0.1, light), _hsv(hue, 0.2, dark), "checker", rng.uniform(0.3, 0.6))
    pile = _hsv(rng.uniform(0, 1), rng.uniform(0.1, 0.6), rng.uniform(0.25, 0.7))
    return b.material(pile, pile * 0.75, "noise", 1.0, grain=0.1)


def _wall_material(b: _Builder) -> int:
    rng = b.rng
    paint = _hsv(rng.uniform(0, 1), rng.uniform(0.02, 0.35), rng.uniform(0.6, 0.95))
    kind = rng.choice(["solid", "stripes", "noise"], p=[0.6, 0.2, 0.2])
    if kind == "stripes":
        accent = _hsv(rng.uniform(0, 1), rng.uniform(0.1, 0.5), rng.uniform(0.5, 0.9))
        return b.material(paint, accent, "stripes", rng.uniform(0.15, 0.4), grain=0.03)
    if kind == "noise":
        return b.material(paint, paint * rng.uniform(0.7, 0.9), "noise", 1.0, grain=0.05)
    return b.material(paint, paint, "solid", grain=0.04)


def _ceiling_material(b: _Builder) -> int:
    rng = b.rng
    white = _hsv(rng.uniform(0, 1), rng.uniform(0.0, 0.08), rng.uniform(0.8, 0.95))
    if rng.random() < 0.3:
        return b.material(white, white * 0.7, "tiles", 0.6)
    return b.material(white, white, "solid", grain=0.02)


def _object_material(b: _Builder, period: float) -> int:
    """A random coloured material; ``period`` is a pattern size that fits the object."""
    rng = b.rng
    color = _hsv(rng.uniform(0, 1), rng.uniform(0.3, 0.9), rng.uniform(0.35, 0.95))
    accent = _hsv(rng.uniform(0, 1), rng.uniform(0.2, 0.9), rng.uniform(0.2, 0.95))
    kind = rng.choice(["solid", "checker", "stripes", "noise"], p=[0.4, 0.2, 0.2, 0.2])
    angle = float(rng.choice([0.0, np.pi / 2]))
    return b.material(color, accent, str(kind), period, angle=angle, grain=0.05)


def _free_spot(b: _Builder, room: Room, camera: Camera, radius: float) -> np.ndarray | None:
    """A floor point for a footprint of ``radius``: in view most of the time, clear of everything."""
    rng = b.rng
    cam_xy = camera.position[:2]
    for _ in range(_MAX_TRIES):
        if rng.random() < 0.8:  # in front of the camera, within the field of view
            heading = camera.yaw + rng.uniform(-0.45, 0.45) * camera.hfov
            dist = rng.uniform(1.3, 6.0)
            xy = cam_xy + dist * np.array([np.cos(heading), np.sin(heading)])
        else:
            xy = rng.uniform([0, 0], room.size[:2])
        margin = radius + 0.05
        if np.any(xy < margin) or np.any(xy > room.size[:2] - margin):
            continue
        if np.linalg.norm(xy - cam_xy) < radius + _CAMERA_CLEARANCE:
            continue
        if any(np.linalg.norm(xy - c) < radius + r + _OBJECT_GAP for c, r in b.footprints):
            continue
        return xy
    return None


def _random_object(b: _Builder, room: Room, camera: Camera) -> Sphere | Box | Cylinder | None:
    """Place one object on the floor; return its shape, or None if no free spot was found."""
    rng = b.rng
    kind = rng.choice(["sphere", "box", "cylinder", "lying_cylinder"], p=[0.28, 0.34, 0.24, 0.14])
    if kind == "sphere":
        r = rng.uniform(0.15, 0.5)
        footprint = r
    elif kind == "box":
        half = np.array([rng.uniform(0.15, 0.6), rng.uniform(0.15, 0.6), 0.5 * rng.uniform(0.2, 1.2)])
        footprint = float(np.hypot(half[0], half[1]))
    elif kind == "cylinder":
        r, h = rng.uniform(0.1, 0.45), rng.uniform(0.3, 1.5)
        footprint = r
    else:
        r, length = rng.uniform(0.1, 0.3), rng.uniform(0.6, 1.6)
        footprint = float(np.hypot(r, 0.5 * length))
    xy = _free_spot(b, room, camera, footprint)
    if xy is None:
        return None
    b.footprints.append((xy, footprint))
    if kind == "sphere":
        shape = Sphere(np.array([*xy, r]), r)
        period = 2 * np.pi * r / rng.choice([4, 6, 8])  # whole periods around the sphere
    elif kind == "box":
        shape = Box(np.array([*xy, half[2]]), half, yaw=rng.uniform(0, np.pi / 2))
        period = rng.uniform(0.08, 0.3)
    elif kind == "cylinder":
        shape = Cylinder(np.array([*xy, 0.0]), np.array([0.0, 0.0, 1.0]), r, h)
        period = 2 * np.pi * r / rng.choice([4, 6, 8])
    else:
        heading = rng.uniform(0, np.pi)
        axis = np.array([np.cos(heading), np.sin(heading), 0.0])
        shape = Cylinder(np.array([*xy, r]) - 0.5 * length * axis, axis, r, length)
        period = 2 * np.pi * r / rng.choice([4, 6, 8])
    b.objects.append(SceneObject(shape, _object_material(b, period)))
    return shape


def _stack_on(b: _Builder, base: Box) -> None:
    """Put a small sphere, box or upright cylinder on top of ``base``, inside its top face."""
    rng = b.rng
    top = base.center[2] + base.half_size[2]
    room_above = 1.9 - top
    fit = 0.9 * min(base.half_size[0], base.half_size[1])  # radius that fits on the top face
    if room_above < 0.2 or fit < 0.1:
        return
    kind = rng.choice(["sphere", "box", "cylinder"])
    xy = base.center[:2]
    if kind == "sphere":
        r = rng.uniform(0.1, min(fit, 0.5 * room_above, 0.35))
        shape = Sphere(np.array([*xy, top + r]), r)
        period = 2 * np.pi * r / rng.choice([4, 6, 8])
    elif kind == "box":
        half_xy = rng.uniform(0.07, fit / np.sqrt(2), 2)
        half = np.array([*half_xy, 0.5 * rng.uniform(0.1, min(room_above, 0.6))])
        shape = Box(np.array([*xy, top + half[2]]), half, yaw=rng.uniform(0, np.pi / 2))
        period = rng.uniform(0.05, 0.15)
    else:
        r = rng.uniform(0.05, min(fit, 0.25))
        shape = Cylinder(np.array([*xy, top]), np.array([0.0, 0.0, 1.0]), r, rng.uniform(0.1, min(room_above, 0.6)))
        period = 2 * np.pi * r / rng.choice([4, 6, 8])
    b.objects.append(SceneObject(shape, _object_material(b, period)))


def _wall_length(room: Room, face: int) -> float:
    return float(room.size[1] if face in (2, 3) else room.size[0])


def _wall_decals(b: _Builder, room: Room, config: SceneConfig) -> None:
    """Windows and paintings, never overlapping on the same wall."""
    rng = b.rng
    taken: dict[int, list[tuple[float, float]]] = {f: [] for f in _WALL_FACES}
    height = float(room.size[2])
    wishes = ["window"] * int(rng.integers(0, config.max_windows + 1))
    wishes += ["painting"] * int(rng.integers(0, config.max_paintings + 1))
    for kind in wishes:
        if kind == "window":
            w, h = rng.uniform(0.8, 1.8), rng.uniform(0.9, min(1.5, height - 1.2))
            bottom = rng.uniform(0.7, height - h - 0.3)
            material = -1
        else:
            w, h = rng.uniform(0.4, 1.3), rng.uniform(0.3, 0.9)
            bottom = rng.uniform(max(0.8, 1.2 - 0.5 * h), height - h - 0.3)
            color = _hsv(rng.uniform(0, 1), rng.uniform(0.4, 1.0), rng.uniform(0.4, 1.0))
            accent = _hsv(rng.uniform(0, 1), rng.uniform(0.4, 1.0), rng.uniform(0.2, 0.9))
            pattern = str(rng.choice(["stripes", "checker", "noise"]))
            material = b.material(color, accent, pattern, rng.uniform(0.08, 0.3), rng.choice([0, np.pi / 2]), 0.1)
        for _ in range(_MAX_TRIES):
            face = int(rng.choice(_WALL_FACES))
            length = _wall_length(room, face)
            if w > length - 0.6:
                continue
            u = rng.uniform(0.3 + w / 2, length - 0.3 - w / 2)
            if all(u + w / 2 + 0.2 < lo or u - w / 2 - 0.2 > hi for lo, hi in taken[face]):
                taken[face].append((u - w / 2, u + w / 2))
                center, half = np.array([u, bottom + h / 2]), np.array([w / 2, h / 2])
                b.decals.append(Decal(kind, face, center, half, material=material))
                break


def _rug(b: _Builder, room: Room) -> None:
    rng = b.rng
    half = np.array([rng.uniform(0.5, 1.4), rng.uniform(0.4, 1.1)])
    reach = float(np.linalg.norm(half))
    if np.any(room.size[:2] < 2 * reach + 0.2):
        half *= 0.5
        reach *= 0.5
    center = rng.uniform(reach + 0.1, room.size[:2] - reach - 0.1)
    color = _hsv(rng.uniform(0, 1), rng.uniform(0.3, 0.9), rng.uniform(0.3, 0.9))
    accent = _hsv(rng.uniform(0, 1), rng.uniform(0.2, 0.9), rng.uniform(0.15, 0.9))
    pattern = str(rng.choice(["stripes", "checker", "noise"]))
    material = b.material(color, accent, pattern, rng.uniform(0.1, 0.35), grain=0.1)
    b.decals.append(Decal("rug", 0, center, half, angle=rng.uniform(-0.3, 0.3), material=material))


def _camera(rng: np.random.Generator, room: Room, config: SceneConfig) -> Camera:
    """A camera near a random wall, looking roughly across the room and slightly down."""
    back = int(rng.integers(4))
    axis, other = (0, 1) if back < 2 else (1, 0)
    position = np.zeros(3)
    dist = rng.uniform(0.3, 0.3 * room.size[axis])
    position[axis] = dist if back % 2 == 0 else room.size[axis] - dist
    position[other] = rng.uniform(0.6, room.size[other] - 0.6)
    position[2] = rng.uniform(*config.camera_height)
    to_center = 0.5 * room.size[:2] - position[:2]
    yaw = np.arctan2(to_center[1], to_center[0]) + rng.uniform(-0.4, 0.4)
    pitch = np.radians(rng.uniform(*config.pitch_deg))
    return Camera(position, float(yaw), float(pitch), float(np.radians(rng.uniform(*config.hfov_deg))))


def _lights(rng: np.random.Generator, room: Room, config: SceneConfig) -> tuple[Light, ...]:
    count = int(rng.integers(config.num_lights[0], config.num_lights[1] + 1))
    warm, cool = np.array([1.0, 0.78, 0.55]), np.array([0.75, 0.86, 1.0])
    lights = []
    for _ in range(count):
        position = np.array([*rng.uniform(0.15, 0.85, 2) * room.size[:2], room.size[2] - rng.uniform(0.15, 0.4)])
        mix = rng.uniform()
        color = (warm * (1 - mix) + cool * mix) * rng.uniform(0.9, 1.1, 3)
        lights.append(Light(position, color * rng.uniform(2.0, 5.0) / count))
    return tuple(lights)


def sample_scene(rng: np.random.Generator, config: SceneConfig | None = None) -> Scene:
    """Draw a random room, camera, furniture-like objects, decals, materials and lights.

    Args:
        rng: The source of randomness (the scene is a deterministic function of its state).
        config: Parameter ranges; defaults to :class:`SceneConfig`.

    Returns:
        A :class:`.scene.Scene`.

    Example:
        >>> scene = sample_scene(np.random.default_rng(0))
        >>> len(scene.room_materials)
        6
    """
    config = SceneConfig() if config is None else config
    room = Room(rng.uniform(config.room_size_min, config.room_size_max))
    camera = _camera(rng, room, config)
    b = _Builder(rng)
    floor, ceiling, wall = _floor_material(b), _ceiling_material(b), _wall_material(b)
    walls = [wall] * 4
    if rng.random() < 0.3:  # an accent wall
        walls[int(rng.integers(4))] = _wall_material(b)
    room_materials = (floor, ceiling, *walls)

    target = int(rng.integers(config.num_objects[0], config.num_objects[1] + 1))
    for _ in range(_MAX_TRIES):
        if len(b.objects) >= target:
            break
        placed = _random_object(b, room, camera)
        if isinstance(placed, Box) and len(b.objects) < target and rng.random() < config.stack_probability:
            _stack_on(b, placed)
    _wall_decals(b, room, config)
    if rng.random() < config.rug_probability:
        _rug(b, room)

    ambient = rng.uniform(0.04, 0.2) * rng.uniform(0.9, 1.1, 3)
    zenith = _hsv(rng.uniform(0.55, 0.65), rng.uniform(0.3, 0.7), rng.uniform(0.7, 1.0))
    horizon = _hsv(rng.uniform(0.5, 0.65), rng.uniform(0.0, 0.2), rng.uniform(0.85, 1.0))
    ground = _hsv(rng.uniform(0.1, 0.35), rng.uniform(0.3, 0.6), rng.uniform(0.3, 0.6))
    return Scene(
        room=room,
        camera=camera,
        materials=tuple(b.materials),
        room_materials=room_materials,
        objects=tuple(b.objects),
        decals=tuple(b.decals),
        lights=_lights(rng, room, config),
        ambient=ambient,
        sky=np.stack([zenith, horizon, ground]),
        attenuation=float(rng.uniform(0.0, 0.12)),
        exposure=float(rng.uniform(0.85, 1.15)),
    )
