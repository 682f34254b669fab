"""The look of a scene: materials, lights, exposure and sky for a :class:`.sampling.Layout`.

Two appearances, chosen by name in :data:`APPEARANCES`:

- ``"labelled"`` (the default): the look follows the labels, as in photographs. Each class has
  a small palette of plausible materials (wooden or tiled floors, painted walls, a white ceiling,
  deep red rugs, red or orange balls, wooden boxes, blue cylinders) with a modest random
  variation; balls and cylinders are glossy. A key light hangs under the ceiling just in front of
  the camera (a ceiling lamp in the part of the room the viewer stands in), so the light
  direction and distance at a surface point follow from its depth and normal; further lights
  are dim fills elsewhere. Ambient light, colour temperature and the (fixed) exposure vary a
  little; there is no fog. Patterns depend on the class (planks and tiles on the floor, plain
  paint on walls, wood grain on boxes, stripes on balls and cylinders) and fade on strongly
  curved surfaces (:attr:`.materials.Material.curvature_smoothing`).
- ``"random"``: the earlier look, kept for comparison: a random hue and pattern per object and
  surface, lights anywhere under the ceiling, random ambient light, fog and exposure per scene.
"""

from __future__ import annotations

import colorsys
from collections.abc import Callable

import numpy as np

from .geometry import Box, Cylinder, Sphere
from .materials import Material
from .sampling import Layout, SceneConfig
from .scene import Camera, Decal, Light, Scene, SceneObject

__all__ = ["APPEARANCES", "dress_labelled", "dress_random"]

_NOISE_WAVES = 3
_WARM_WHITE = np.array([1.0, 0.78, 0.55])
_NEUTRAL_WHITE = np.array([1.0, 0.93, 0.85])
_COOL_WHITE = np.array([0.75, 0.86, 1.0])


class _Materials:
    """Collects materials; each gets its own random smooth-noise waves."""

    def __init__(self, rng: np.random.Generator) -> None:
        self.rng = rng
        self.items: list[Material] = []

    def add(
        self, color, accent, pattern="solid", scale=0.5, angle=0.0, grain=0.0, curvature_smoothing=0.0, gloss=0.0
    ) -> int:
        rng = self.rng
        direction = rng.uniform(0, 2 * np.pi, _NOISE_WAVES)
        magnitude = rng.uniform(0.4, 3.0, _NOISE_WAVES)  # cycles per metre
        freq = np.stack([np.cos(direction), np.sin(direction)], axis=1) * magnitude[:, None]
        self.items.append(
            Material(
                color=np.clip(color, 0.02, 0.95),
                accent=np.clip(accent, 0.02, 0.95),
                pattern=pattern,
                scale=scale,
                angle=angle,
                grain=grain,
                noise_freq=freq,
                noise_phase=rng.uniform(0, 2 * np.pi, _NOISE_WAVES),
                curvature_smoothing=curvature_smoothing,
                gloss=gloss,
                shininess=_SHININESS,
            )
        )
        return len(self.items) - 1


def _build(
    layout: Layout,
    materials: _Materials,
    room_materials: tuple[int, ...],
    object_materials: list[int],
    decal_materials: list[int],
    lights: tuple[Light, ...],
    ambient: np.ndarray,
    sky: np.ndarray,
    attenuation: float,
    exposure: float,
    auto_exposure: bool = True,
) -> Scene:
    decals = tuple(
        Decal(d.kind, d.face, d.center, d.half_size, d.angle, m)
        for d, m in zip(layout.decals, decal_materials, strict=True)
    )
    objects = tuple(SceneObject(p.shape, m) for p, m in zip(layout.objects, object_materials, strict=True))
    return Scene(
        room=layout.room,
        camera=layout.camera,
        materials=tuple(materials.items),
        room_materials=room_materials,
        objects=objects,
        decals=decals,
        lights=lights,
        ambient=ambient,
        sky=sky,
        attenuation=attenuation,
        exposure=exposure,
        auto_exposure=auto_exposure,
    )


def _wraps(shape, rng: np.random.Generator) -> float:
    """A pattern period that wraps a whole number of times (4, 6 or 8) around a round object."""
    return float(2 * np.pi * shape.radius / rng.choice([4, 6, 8]))


# -- "random": a random hue per surface and object ----------------------------------------------


def _hsv(h: float, s: float, v: float) -> np.ndarray:
    return np.array(colorsys.hsv_to_rgb(h % 1.0, s, v))


def _random_floor(m: _Materials) -> int:
    rng = m.rng
    kind = rng.choice(["planks", "tiles", "checker", "carpet"], p=[0.35, 0.25, 0.15, 0.25])
    if kind == "planks":
        wood = _hsv(rng.uniform(0.05, 0.11), rng.uniform(0.4, 0.7), rng.uniform(0.35, 0.75))
        return m.add(wood, wood * rng.uniform(0.5, 0.8), "planks", rng.uniform(0.12, 0.25), grain=0.15)
    if kind == "tiles":
        tile = _hsv(rng.uniform(0, 1), rng.uniform(0.0, 0.3), rng.uniform(0.5, 0.9))
        return m.add(tile, tile * 0.55, "tiles", rng.uniform(0.3, 0.6), grain=0.05)
    if kind == "checker":
        light, dark = rng.uniform(0.75, 0.9), rng.uniform(0.08, 0.3)
        hue = rng.uniform(0, 1)
        return m.add(_hsv(hue, 0.1, light), _hsv(hue, 0.2, dark), "checker", rng.uniform(0.3, 0.6))
    pile = _hsv(rng.uniform(0, 1), rng.uniform(0.1, 0.6), rng.uniform(0.25, 0.7))
    return m.add(pile, pile * 0.75, "noise", 1.0, grain=0.1)


def _random_wall(m: _Materials) -> int:
    rng = m.rng
    paint = _hsv(rng.uniform(0, 1), rng.uniform(0.02, 0.35), rng.uniform(0.6, 0.95))
    kind = rng.choice(["solid", "stripes", "noise"], p=[0.6, 0.2, 0.2])
    if kind == "stripes":
        accent = _hsv(rng.uniform(0, 1), rng.uniform(0.1, 0.5), rng.uniform(0.5, 0.9))
        return m.add(paint, accent, "stripes", rng.uniform(0.15, 0.4), grain=0.03)
    if kind == "noise":
        return m.add(paint, paint * rng.uniform(0.7, 0.9), "noise", 1.0, grain=0.05)
    return m.add(paint, paint, "solid", grain=0.04)


def _random_ceiling(m: _Materials) -> int:
    rng = m.rng
    white = _hsv(rng.uniform(0, 1), rng.uniform(0.0, 0.08), rng.uniform(0.8, 0.95))
    if rng.random() < 0.3:
        return m.add(white, white * 0.7, "tiles", 0.6)
    return m.add(white, white, "solid", grain=0.02)


def _random_object(m: _Materials, shape, stacked: bool) -> int:
    """A random coloured material with a pattern size that fits the object."""
    rng = m.rng
    if isinstance(shape, Box):
        period = rng.uniform(0.05, 0.15) if stacked else rng.uniform(0.08, 0.3)
    else:
        period = _wraps(shape, rng)
    color = _hsv(rng.uniform(0, 1), rng.uniform(0.3, 0.9), rng.uniform(0.35, 0.95))
    accent = _hsv(rng.uniform(0, 1), rng.uniform(0.2, 0.9), rng.uniform(0.2, 0.95))
    kind = rng.choice(["solid", "checker", "stripes", "noise"], p=[0.4, 0.2, 0.2, 0.2])
    angle = float(rng.choice([0.0, np.pi / 2]))
    return m.add(color, accent, str(kind), period, angle=angle, grain=0.05)


def _random_decal(m: _Materials, kind: str) -> int:
    rng = m.rng
    if kind == "window":
        return -1
    if kind == "painting":
        color = _hsv(rng.uniform(0, 1), rng.uniform(0.4, 1.0), rng.uniform(0.4, 1.0))
        accent = _hsv(rng.uniform(0, 1), rng.uniform(0.4, 1.0), rng.uniform(0.2, 0.9))
        pattern = str(rng.choice(["stripes", "checker", "noise"]))
        return m.add(color, accent, pattern, rng.uniform(0.08, 0.3), rng.choice([0, np.pi / 2]), 0.1)
    color = _hsv(rng.uniform(0, 1), rng.uniform(0.3, 0.9), rng.uniform(0.3, 0.9))
    accent = _hsv(rng.uniform(0, 1), rng.uniform(0.2, 0.9), rng.uniform(0.15, 0.9))
    pattern = str(rng.choice(["stripes", "checker", "noise"]))
    return m.add(color, accent, pattern, rng.uniform(0.1, 0.35), grain=0.1)


def _random_lights(rng: np.random.Generator, layout: Layout, config: SceneConfig) -> tuple[Light, ...]:
    room = layout.room
    count = int(rng.integers(config.num_lights[0], config.num_lights[1] + 1))
    lights = []
    for _ in range(count):
        position = np.array([*rng.uniform(0.15, 0.85, 2) * room.size[:2], room.size[2] - rng.uniform(0.15, 0.4)])
        mix = rng.uniform()
        color = (_WARM_WHITE * (1 - mix) + _COOL_WHITE * mix) * rng.uniform(0.9, 1.1, 3)
        lights.append(Light(position, color * rng.uniform(2.0, 5.0) / count))
    return tuple(lights)


def dress_random(rng: np.random.Generator, layout: Layout, config: SceneConfig) -> Scene:
    """The ``"random"`` look: random hues and patterns, lights, ambient light, fog and exposure.

    Args:
        rng: The source of randomness for the look.
        layout: The geometry to dress.
        config: Scene ranges (the number of lights).

    Returns:
        The :class:`.scene.Scene`.
    """
    m = _Materials(rng)
    floor, ceiling, wall = _random_floor(m), _random_ceiling(m), _random_wall(m)
    walls = [wall] * 4
    if rng.random() < 0.3:  # an accent wall
        walls[int(rng.integers(4))] = _random_wall(m)
    objects = [_random_object(m, p.shape, p.stacked) for p in layout.objects]
    decals = [_random_decal(m, d.kind) for d in layout.decals]
    lights = _random_lights(rng, layout, config)
    ambient = rng.uniform(0.04, 0.2) * rng.uniform(0.9, 1.1, 3)
    zenith = _hsv(rng.uniform(0.55, 0.65), rng.uniform(0.3, 0.7), rng.uniform(0.7, 1.0))
    horizon = _hsv(rng.uniform(0.5, 0.65), rng.uniform(0.0, 0.2), rng.uniform(0.85, 1.0))
    ground = _hsv(rng.uniform(0.1, 0.35), rng.uniform(0.3, 0.6), rng.uniform(0.3, 0.6))
    return _build(
        layout,
        m,
        (floor, ceiling, *walls),
        objects,
        decals,
        lights,
        ambient,
        np.stack([zenith, horizon, ground]),
        attenuation=float(rng.uniform(0.0, 0.12)),
        exposure=float(rng.uniform(0.85, 1.15)),
    )


# -- "labelled": the look follows the class, the geometry and a light near the camera ------------

# Linear reflectances (before gamma). A material draws one palette entry, then a modest variation.
_WOODS = ((0.50, 0.36, 0.22), (0.46, 0.32, 0.19))
_TILES = ((0.55, 0.53, 0.50),)
_PAINTS = ((0.72, 0.70, 0.65), (0.70, 0.68, 0.60))
_CEILING = ((0.80, 0.80, 0.78),)
_RUGS = ((0.40, 0.06, 0.05), (0.32, 0.05, 0.06), (0.45, 0.10, 0.06))
_RUG_ACCENT = (0.72, 0.62, 0.45)
_CANVASES = ((0.05, 0.10, 0.25), (0.30, 0.20, 0.08), (0.06, 0.12, 0.05))
_BALLS = ((0.75, 0.10, 0.05), (0.80, 0.25, 0.05), (0.70, 0.12, 0.10))
_BOX_WOODS = ((0.30, 0.19, 0.10), (0.26, 0.16, 0.08))
_CYLINDERS = ((0.05, 0.15, 0.45), (0.04, 0.18, 0.40), (0.07, 0.14, 0.50))
_TRIM = (0.85, 0.82, 0.75)  # the light stripes of balls and cylinders
_CURVATURE_SMOOTHING = 0.5  # metres: stripes fade to exp(-0.5 * H) on a surface of mean curvature H
_KEY_POWER = 4.0
_GLOSS = {Sphere: 0.3, Cylinder: 0.2}  # balls and cylinders are glossy (painted, glazed); the rest is matte
_SHININESS = 16.0
_FALLOFF = 1.0  # metres (see Light)
_KEY_FORWARD = (0.5, 1.2)  # metres ahead of the camera
_KEY_RIGHT = (-0.4, 0.4)  # metres to the right of the camera
_KEY_BELOW_CEILING = (0.1, 0.3)  # metres
_FILL_POWER = (0.03, 0.06)  # of the key light's power
_AMBIENT = (0.02, 0.03)  # of the key light's power
_SKY = ((0.80, 0.88, 0.98), (0.93, 0.95, 0.98), (0.74, 0.77, 0.70))  # bright, as windows are in indoor photos
_EXPOSURE = 2.5  # fixed, as on a camera set for the key light


def _pick(rng: np.random.Generator, palette) -> np.ndarray:
    """One palette colour with a modest variation: +-6 % brightness, +-3 % per channel."""
    base = np.array(palette[int(rng.integers(len(palette)))])
    return base * rng.uniform(0.94, 1.06) * rng.uniform(0.97, 1.03, 3)


def _labelled_floor(m: _Materials) -> int:
    rng = m.rng
    if rng.random() < 0.7:
        wood = _pick(rng, _WOODS)
        return m.add(wood, wood * 0.85, "planks", rng.uniform(0.15, 0.22), rng.choice([0, np.pi / 2]), grain=0.08)
    tile = _pick(rng, _TILES)
    return m.add(tile, tile * 0.5, "tiles", rng.uniform(0.4, 0.6), grain=0.03)


def _labelled_object(m: _Materials, shape) -> int:
    rng = m.rng
    if isinstance(shape, Box):  # flat wooden faces with a fine grain
        wood = _pick(rng, _BOX_WOODS)
        return m.add(wood, wood * 0.8, "stripes", rng.uniform(0.03, 0.06), rng.choice([0, np.pi / 2]), grain=0.05)
    palette = _BALLS if isinstance(shape, Sphere) else _CYLINDERS
    color = _pick(rng, palette)
    accent = color + 0.4 * (np.array(_TRIM) - color)
    angle = float(rng.choice([0.0, np.pi / 2]))
    return m.add(
        color, accent, "stripes", _wraps(shape, rng), angle, 0.03, _CURVATURE_SMOOTHING, gloss=_GLOSS[type(shape)]
    )


def _labelled_decal(m: _Materials, kind: str) -> int:
    rng = m.rng
    if kind == "window":
        return -1
    if kind == "painting":
        color = _pick(rng, _CANVASES)
        return m.add(color, color * 0.6, "noise", 1.0, grain=0.05)
    color = _pick(rng, _RUGS)
    accent = color + 0.35 * (np.array(_RUG_ACCENT) - color)
    return m.add(color, accent, "stripes", rng.uniform(0.12, 0.25), grain=0.05)


def _camera_axes(camera: Camera) -> tuple[np.ndarray, np.ndarray]:
    """Unit vectors in the floor plane: the camera's forward and right."""
    forward = np.array([np.cos(camera.yaw), np.sin(camera.yaw), 0.0])
    right = np.array([np.sin(camera.yaw), -np.cos(camera.yaw), 0.0])
    return forward, right


def _labelled_lights(rng: np.random.Generator, layout: Layout, config: SceneConfig) -> tuple[Light, ...]:
    """A key light under the ceiling 0.5-1.2 m in front of the camera, then dim fills anywhere."""
    room, camera = layout.room, layout.camera
    forward, right = _camera_axes(camera)
    xy = camera.position[:2] + rng.uniform(*_KEY_FORWARD) * forward[:2] + rng.uniform(*_KEY_RIGHT) * right[:2]
    xy = np.clip(xy, 0.25, room.size[:2] - 0.25)
    key_position = np.array([*xy, room.size[2] - rng.uniform(*_KEY_BELOW_CEILING)])
    tint = _WARM_WHITE + rng.uniform(0.0, 0.5) * (_NEUTRAL_WHITE - _WARM_WHITE)
    lights = [Light(key_position, tint * _KEY_POWER, _FALLOFF)]
    count = int(rng.integers(config.num_lights[0], config.num_lights[1] + 1))
    for _ in range(count - 1):
        position = np.array([*rng.uniform(0.15, 0.85, 2) * room.size[:2], room.size[2] - rng.uniform(0.15, 0.4)])
        lights.append(Light(position, tint * _KEY_POWER * rng.uniform(*_FILL_POWER), _FALLOFF))
    return tuple(lights)


def dress_labelled(rng: np.random.Generator, layout: Layout, config: SceneConfig) -> Scene:
    """The ``"labelled"`` look: class palettes, class- and curvature-dependent patterns, a key light near the camera.

    Args:
        rng: The source of randomness for the look.
        layout: The geometry to dress.
        config: Scene ranges (the number of lights: the key light and ``count - 1`` fills).

    Returns:
        The :class:`.scene.Scene`.
    """
    m = _Materials(rng)
    floor = _labelled_floor(m)
    wall = m.add(_pick(rng, _PAINTS), _pick(rng, _PAINTS), "solid", grain=0.03)
    ceiling = m.add(_pick(rng, _CEILING), _pick(rng, _CEILING), "solid", grain=0.02)
    objects = [_labelled_object(m, p.shape) for p in layout.objects]
    decals = [_labelled_decal(m, d.kind) for d in layout.decals]
    lights = _labelled_lights(rng, layout, config)
    ambient = lights[0].color * rng.uniform(*_AMBIENT)
    sky = np.array(_SKY) * rng.uniform(0.97, 1.03)
    return _build(
        layout,
        m,
        (floor, ceiling, wall, wall, wall, wall),
        objects,
        decals,
        lights,
        ambient,
        sky,
        attenuation=0.0,
        exposure=_EXPOSURE * float(rng.uniform(0.95, 1.05)),
        auto_exposure=False,
    )


APPEARANCES: dict[str, Callable[[np.random.Generator, Layout, SceneConfig], Scene]] = {
    "labelled": dress_labelled,
    "random": dress_random,
}
"""Appearance name -> function ``(rng, layout, config) -> Scene``."""
