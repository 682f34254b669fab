"""Random indoor scenes: a furnished-looking room seen by a camera standing near one wall.

Every random choice comes from the ``numpy.random.Generator`` that is passed in, so a scene is a
deterministic function of the generator's seed. Objects rest on the floor (or on top of a box),
never overlap each other, and keep clear of the camera.

A scene is drawn in two independent parts: the :class:`Layout` (room, camera, object shapes,
decal rectangles: everything the labels depend on) from the generator itself, then its look
(materials, lights, exposure) from a child generator, by one of the :data:`.appearance.APPEARANCES`.
So the same seed gives the same layout, hence the same labels, under every appearance.
"""

from __future__ import annotations

from dataclasses import dataclass, field, fields

import numpy as np

from .geometry import Box, Cylinder, Room, Sphere
from .scene import Camera, Decal, Scene

__all__ = ["Layout", "SceneConfig", "sample_layout", "sample_scene"]

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


@dataclass(frozen=True)
class PlacedObject:
    """An object shape of a :class:`Layout`; ``stacked`` is True when it stands on a box."""

    shape: Sphere | Box | Cylinder
    stacked: bool = False


@dataclass
class Layout:
    """The geometry of a scene before it gets a look: what every label depends on.

    Attributes:
        room: The room.
        camera: The camera.
        objects: The object shapes, in scene order.
        decals: Rugs, paintings and windows (``material`` still unset, -1).
        footprints: ``(xy centre, radius)`` of every object on the floor, to keep new ones clear.
    """

    room: Room
    camera: Camera
    objects: list[PlacedObject] = field(default_factory=list)
    decals: list[Decal] = field(default_factory=list)
    footprints: list[tuple[np.ndarray, float]] = field(default_factory=list)  # (xy centre, radius)


def _free_spot(rng: np.random.Generator, layout: Layout, radius: float) -> np.ndarray | None:
    """A floor point for a footprint of ``radius``: in view most of the time, clear of everything."""
    room, camera = layout.room, layout.camera
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
        if any(np.linalg.norm(xy - c) < radius + r + _OBJECT_GAP for c, r in layout.footprints):
            continue
        return xy
    return None


def _random_object(rng: np.random.Generator, layout: Layout) -> Sphere | Box | Cylinder | None:
    """Place one object on the floor; return its shape, or None if no free spot was found."""
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
    xy = _free_spot(rng, layout, footprint)
    if xy is None:
        return None
    layout.footprints.append((xy, footprint))
    if kind == "sphere":
        shape = Sphere(np.array([*xy, r]), r)
    elif kind == "box":
        shape = Box(np.array([*xy, half[2]]), half, yaw=rng.uniform(0, np.pi / 2))
    elif kind == "cylinder":
        shape = Cylinder(np.array([*xy, 0.0]), np.array([0.0, 0.0, 1.0]), r, h)
    else:
        heading = rng.uniform(0, np.pi)
        axis = np.array([np.cos(heading), np.sin(heading), 0.0])
        shape = Cylinder(np.array([*xy, r]) - 0.5 * length * axis, axis, r, length)
    layout.objects.append(PlacedObject(shape))
    return shape


def _stack_on(rng: np.random.Generator, layout: Layout, base: Box) -> None:
    """Put a small sphere, box or upright cylinder on top of ``base``, inside its top face."""
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
    elif kind == "box":
        half_xy = rng.uniform(0.07, fit / np.sqrt(2), 2)
        half = np.array([*half_xy, 0.5 * rng.uniform(0.1, min(room_above, 0.6))])
        shape = Box(np.array([*xy, top + half[2]]), half, yaw=rng.uniform(0, np.pi / 2))
    else:
        r = rng.uniform(0.05, min(fit, 0.25))
        shape = Cylinder(np.array([*xy, top]), np.array([0.0, 0.0, 1.0]), r, rng.uniform(0.1, min(room_above, 0.6)))
    layout.objects.append(PlacedObject(shape, stacked=True))


def _wall_length(room: Room, face: int) -> float:
    return float(room.size[1] if face in (2, 3) else room.size[0])


def _wall_decals(rng: np.random.Generator, layout: Layout, config: SceneConfig) -> None:
    """Windows and paintings, never overlapping on the same wall."""
    room = layout.room
    taken: dict[int, list[tuple[float, float]]] = {f: [] for f in _WALL_FACES}
    height = float(room.size[2])
    wishes = ["window"] * int(rng.integers(0, config.max_windows + 1))
    wishes += ["painting"] * int(rng.integers(0, config.max_paintings + 1))
    for kind in wishes:
        if kind == "window":
            w, h = rng.uniform(0.8, 1.8), rng.uniform(0.9, min(1.5, height - 1.2))
            bottom = rng.uniform(0.7, height - h - 0.3)
        else:
            w, h = rng.uniform(0.4, 1.3), rng.uniform(0.3, 0.9)
            bottom = rng.uniform(max(0.8, 1.2 - 0.5 * h), height - h - 0.3)
        for _ in range(_MAX_TRIES):
            face = int(rng.choice(_WALL_FACES))
            length = _wall_length(room, face)
            if w > length - 0.6:
                continue
            u = rng.uniform(0.3 + w / 2, length - 0.3 - w / 2)
            if all(u + w / 2 + 0.2 < lo or u - w / 2 - 0.2 > hi for lo, hi in taken[face]):
                taken[face].append((u - w / 2, u + w / 2))
                center, half = np.array([u, bottom + h / 2]), np.array([w / 2, h / 2])
                layout.decals.append(Decal(kind, face, center, half))
                break


def _rug(rng: np.random.Generator, layout: Layout) -> None:
    room = layout.room
    half = np.array([rng.uniform(0.5, 1.4), rng.uniform(0.4, 1.1)])
    reach = float(np.linalg.norm(half))
    if np.any(room.size[:2] < 2 * reach + 0.2):
        half *= 0.5
        reach *= 0.5
    center = rng.uniform(reach + 0.1, room.size[:2] - reach - 0.1)
    layout.decals.append(Decal("rug", 0, center, half, angle=rng.uniform(-0.3, 0.3)))


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


def sample_layout(rng: np.random.Generator, config: SceneConfig | None = None) -> Layout:
    """Draw a random room, camera, furniture-like objects and decals (no materials or lights).

    Args:
        rng: The source of randomness.
        config: Parameter ranges; defaults to :class:`SceneConfig`.

    Returns:
        The :class:`Layout`.
    """
    config = SceneConfig() if config is None else config
    room = Room(rng.uniform(config.room_size_min, config.room_size_max))
    layout = Layout(room, _camera(rng, room, config))
    target = int(rng.integers(config.num_objects[0], config.num_objects[1] + 1))
    for _ in range(_MAX_TRIES):
        if len(layout.objects) >= target:
            break
        placed = _random_object(rng, layout)
        if isinstance(placed, Box) and len(layout.objects) < target and rng.random() < config.stack_probability:
            _stack_on(rng, layout, placed)
    _wall_decals(rng, layout, config)
    if rng.random() < config.rug_probability:
        _rug(rng, layout)
    return layout


def sample_scene(rng: np.random.Generator, config: SceneConfig | None = None, appearance: str = "labelled") -> Scene:
    """Draw a random room, camera, furniture-like objects, decals, materials and lights.

    Args:
        rng: The source of randomness (the scene is a deterministic function of its state).
        config: Parameter ranges; defaults to :class:`SceneConfig`.
        appearance: How the scene looks, one of :data:`.appearance.APPEARANCES`: ``"labelled"``
            (colours from the class, light near the camera) or ``"random"`` (random colours
            and lights). The layout, hence every label, does not depend on it.

    Returns:
        A :class:`.scene.Scene`.

    Raises:
        ValueError: An unknown ``appearance``.

    Example:
        >>> scene = sample_scene(np.random.default_rng(0))
        >>> len(scene.room_materials)
        6
    """
    from .appearance import APPEARANCES  # appearance imports this module's Layout

    if appearance not in APPEARANCES:
        raise ValueError(f"appearance must be one of {sorted(APPEARANCES)}, got {appearance!r}")
    config = SceneConfig() if config is None else config
    look_rng = np.random.default_rng(int(rng.integers(2**63)))  # a separate stream for the look
    layout = sample_layout(rng, config)
    return APPEARANCES[appearance](look_rng, layout, config)
