"""Vectorised ray casting of a :class:`.scene.Scene`: image and exact per-pixel labels.

Two sets of rays are cast. Labels come from one ray through each pixel centre, so they are exact
point samples of the geometry. The image averages ``supersample**2`` rays per pixel (anti-aliased
textures and silhouettes), each shaded as Lambertian with ambient light and point lights with
cast shadows (a shadow ray against every object), plus a Blinn-Phong highlight on glossy
materials, attenuated with depth, exposed (automatically or with a fixed exposure) and
gamma-encoded.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .edges import edge_components
from .geometry import dot
from .scene import Scene, room_face_class

__all__ = ["Hits", "RenderedScene", "cast_rays", "render_scene"]

_SHADOW_OFFSET = 1e-4  # metres along the normal, so a shadow ray does not re-hit its own surface
_EXPOSURE_KEY = 0.85  # the 90th luminance percentile of surfaces maps to this (before gamma)
_GAMMA = 2.2


@dataclass
class Hits:
    """What N rays hit. Rays that leave the room through a window have ``t = inf``.

    Attributes:
        t: ``(N,)`` ray parameter of the hit (z-buffer depth for camera rays); ``inf`` if none.
        point: ``(3, N)`` world-frame hit points (undefined where ``t`` is inf).
        normal: ``(3, N)`` unit normals facing the ray origin, world frame (0 where ``t`` is inf).
        curvature: ``(2, N)`` principal curvatures ``(k1 >= k2)`` in 1/m (0 where ``t`` is inf).
        uv: ``(2, N)`` texture coordinates in metres.
        semantic: ``(N,)`` class ids (see :data:`.scene.CLASS_NAMES`).
        region: ``(N,)`` region ids (see :class:`.scene.Scene`).
        patch: ``(N,)`` id of the smooth geometric patch (room face or object face); -1 if none.
        material: ``(N,)`` material index; -1 for the outdoors.
    """

    t: np.ndarray
    point: np.ndarray
    normal: np.ndarray
    curvature: np.ndarray
    uv: np.ndarray
    semantic: np.ndarray
    region: np.ndarray
    patch: np.ndarray
    material: np.ndarray

    @property
    def has_surface(self) -> np.ndarray:
        return np.isfinite(self.t)


def _may_hit(shape, o: np.ndarray, d: np.ndarray, dd: np.ndarray, t_max: np.ndarray) -> np.ndarray:
    """Indices of rays that pass through the shape's bounding sphere before ``t_max`` (a cheap cull).

    ``o`` is ``(3, N)`` or a shared ``(3, 1)`` origin, ``d`` is ``(3, N)`` and ``dd = dot(d, d)``.
    """
    center, radius = shape.bounding_sphere()
    oc = center[:, None] - o
    b = dot(oc, d)  # dd * (ray parameter of the closest approach)
    dist2 = dot(oc, oc) - b * b / dd  # squared distance of the line from the centre
    idx = np.flatnonzero(dist2 <= radius * radius)
    # The bounding sphere's ray-parameter interval (b -+ reach) / dd must overlap (0, t_max).
    a, b = dd[idx], b[idx]
    reach = np.sqrt((radius * radius - dist2[idx]) * a)
    return idx[(b + reach > 0) & (b - reach < t_max[idx] * a)]


def cast_rays(scene: Scene, o: np.ndarray, d: np.ndarray) -> Hits:
    """Nearest hit of every ray, with exact surface attributes.

    Args:
        scene: The scene; ray origins must lie inside its room and outside its objects.
        o: ``(3, N)`` ray origins, or one shared ``(3, 1)`` origin, world frame.
        d: ``(3, N)`` ray directions (any non-zero length), world frame.

    Returns:
        The :class:`Hits`.
    """
    n = d.shape[1]
    shared_origin = o.shape[1] == 1
    t, face = scene.room.intersect(o, d)
    owner = np.full(n, -1)  # -1: the room; k: scene.objects[k]
    dd = dot(d, d)
    for k, obj in enumerate(scene.objects):
        idx = _may_hit(obj.shape, o, d, dd, t)
        if idx.size == 0:
            continue
        t_k, face_k = obj.shape.intersect(o if shared_origin else o[:, idx], d[:, idx])
        closer = t_k < t[idx]
        idx = idx[closer]
        t[idx], face[idx], owner[idx] = t_k[closer], face_k[closer], k

    point = o + t * d
    normal, curvature, uv = np.zeros((3, n)), np.zeros((2, n)), np.zeros((2, n))
    semantic, region, patch, material = (np.zeros(n, dtype=np.int64) for _ in range(4))

    on_room = np.flatnonzero(owner == -1)
    surface = scene.room.surface(point[:, on_room], face[on_room])
    normal[:, on_room], uv[:, on_room] = surface.normal, surface.uv
    room_face = face[on_room]
    semantic[on_room] = np.array([room_face_class(f) for f in range(6)])[room_face]
    region[on_room] = patch[on_room] = room_face
    material[on_room] = np.asarray(scene.room_materials)[room_face]

    room_uv = surface.uv
    for j, decal in enumerate(scene.decals):
        on_face = room_face == decal.face
        covered = on_face & decal.contains(room_uv)  # (len(on_room),)
        inside = on_room[covered]
        semantic[inside], region[inside] = decal.semantic, scene.decal_region(j)
        if decal.kind == "window":
            t[inside], patch[inside], material[inside] = np.inf, -1, -1
            normal[:, inside] = 0.0
        else:
            material[inside] = decal.material
            uv[:, inside] = decal.local_coords(room_uv[:, covered])

    for k, obj in enumerate(scene.objects):
        idx = np.flatnonzero(owner == k)
        if idx.size == 0:
            continue
        surface = obj.shape.surface(point[:, idx], face[idx])
        normal[:, idx], curvature[:, idx], uv[:, idx] = surface.normal, surface.curvature, surface.uv
        semantic[idx], region[idx], material[idx] = obj.semantic, scene.object_region(k), obj.material
        patch[idx] = 8 + 8 * k + face[idx]  # room faces use 0..5

    return Hits(t, point, normal, curvature, uv, semantic, region, patch, material)


def _albedo(scene: Scene, hits: Hits) -> np.ndarray:
    """``(3, N)`` surface albedo (0 for the outdoors)."""
    albedo = np.zeros((3, hits.t.size))
    for m in np.unique(hits.material):
        if m < 0:
            continue
        idx = np.flatnonzero(hits.material == m)
        mean_curvature = hits.curvature[:, idx].mean(axis=0)
        albedo[:, idx] = scene.materials[m].albedo(hits.uv[:, idx], mean_curvature)
    return albedo


def _in_shadow(scene: Scene, o: np.ndarray, to_light: np.ndarray) -> np.ndarray:
    """``(N,)`` True where an object blocks the segment ``o -> o + to_light``."""
    blocked = np.zeros(o.shape[1], dtype=bool)
    segment_end = np.ones(o.shape[1])
    dd = dot(to_light, to_light)
    for obj in scene.objects:
        idx = _may_hit(obj.shape, o, to_light, dd, segment_end)
        if idx.size:
            t_k, _ = obj.shape.intersect(o[:, idx], to_light[:, idx])
            blocked[idx[t_k < 1.0]] = True
    return blocked


def _gloss(scene: Scene, hits: Hits) -> tuple[np.ndarray, np.ndarray]:
    """``(N,)`` specular reflectance and ``(N,)`` shininess exponent of each hit (0 and 1 where matte)."""
    gloss, shininess = np.zeros(hits.t.size), np.ones(hits.t.size)
    for m in np.unique(hits.material):
        if m >= 0 and scene.materials[m].gloss > 0:
            idx = hits.material == m
            gloss[idx], shininess[idx] = scene.materials[m].gloss, scene.materials[m].shininess
    return gloss, shininess


def _shade(scene: Scene, hits: Hits, albedo: np.ndarray, eye: np.ndarray) -> np.ndarray:
    """``(3, N)`` radiance towards ``eye``: Lambertian (ambient plus point lights with cast shadows)
    plus a white Blinn-Phong highlight ``gloss * (n . h)^shininess`` on glossy materials."""
    irradiance = np.broadcast_to(scene.ambient[:, None], hits.normal.shape).copy()
    highlight = np.zeros_like(irradiance)
    surf = np.flatnonzero(hits.has_surface)
    p, n = hits.point[:, surf], hits.normal[:, surf]
    gloss, shininess = (g[surf] for g in _gloss(scene, hits))
    to_eye = eye - p
    to_eye /= np.sqrt(dot(to_eye, to_eye))
    for light in scene.lights:
        to_light = light.position[:, None] - p
        dist2 = dot(to_light, to_light)
        cos = dot(n, to_light) / np.sqrt(dist2)
        lit = np.flatnonzero(cos > 0)
        origins = p[:, lit] + _SHADOW_OFFSET * n[:, lit]
        visible = ~_in_shadow(scene, origins, light.position[:, None] - origins)
        lit, cos_lit = lit[visible], cos[lit[visible]]
        falloff = 1.0 / (1.0 + dist2[lit] / light.falloff**2)
        irradiance[:, surf[lit]] += light.color[:, None] * (cos_lit * falloff)
        shiny = lit[gloss[lit] > 0]
        if shiny.size:
            half = to_light[:, shiny] / np.sqrt(dist2[shiny]) + to_eye[:, shiny]  # (3, S) half vectors
            cos_half = np.clip(dot(n[:, shiny], half) / np.sqrt(dot(half, half)), 0.0, 1.0)
            strength = gloss[shiny] * cos_half ** shininess[shiny] / (1.0 + dist2[shiny] / light.falloff**2)
            highlight[:, surf[shiny]] += light.color[:, None] * strength
    return albedo * irradiance + highlight


def _outdoor_color(scene: Scene, d: np.ndarray) -> np.ndarray:
    """``(3, N)`` display colour in [0, 1] of the outdoors seen along world directions ``d``."""
    elevation = d[2] / np.sqrt(dot(d, d))  # sine of the elevation angle
    zenith, horizon, ground = scene.sky
    up = np.clip(elevation, 0.0, 1.0) ** 0.6
    sky = horizon[:, None] * (1 - up) + zenith[:, None] * up
    return np.where(elevation >= 0, sky, ground[:, None] * (0.8 + 0.2 * np.exp(8 * elevation)))


def _block_mean(x: np.ndarray, height: int, width: int, s: int) -> np.ndarray:
    """``(C, H*s*W*s)`` sub-pixel values -> ``(C, H, W)`` pixel means."""
    c = x.shape[0]
    return x.reshape(c, height, s, width, s).mean(axis=(2, 4))


@dataclass
class RenderedScene:
    """One rendered view; all maps are ``(..., H, W)`` numpy arrays.

    Attributes:
        image: ``(3, H, W)`` float32 RGB in [-1, 1].
        semantic: ``(H, W)`` int64 class ids.
        depth: ``(H, W)`` z-buffer depth in metres, ``inf`` where no surface (windows).
        normal: ``(3, H, W)`` unit normals, camera frame (+x right, +y down, +z forward), facing
            the camera; 0 where no surface.
        curvature: ``(2, H, W)`` principal curvatures ``(k1 >= k2)`` in 1/m; 0 where no surface.
        edge: ``(H, W)`` edge strength in [0, 1] (see :mod:`.edges`).
        edge_components: ``{"occlusion", "crease", "texture"}`` ``(H, W)`` maps whose maximum is ``edge``.
        regions: ``(H, W)`` int64 region ids.
        albedo: ``(3, H, W)`` pixel-averaged albedo (outdoor colour at windows), in [0, 1].
        intrinsics: ``(3, 3)`` camera matrix K.
        camera_to_world: ``(4, 4)`` camera pose.
    """

    image: np.ndarray
    semantic: np.ndarray
    depth: np.ndarray
    normal: np.ndarray
    curvature: np.ndarray
    edge: np.ndarray
    edge_components: dict[str, np.ndarray]
    regions: np.ndarray
    albedo: np.ndarray
    intrinsics: np.ndarray
    camera_to_world: np.ndarray

    @property
    def has_surface(self) -> np.ndarray:
        """``(H, W)`` True where a surface was hit (normal and curvature are defined)."""
        return np.isfinite(self.depth)


def render_scene(scene: Scene, height: int, width: int, *, supersample: int = 2) -> RenderedScene:
    """Render an image and exact labels of a scene.

    Args:
        scene: What to render.
        height: Image height in pixels.
        width: Image width in pixels.
        supersample: The image averages ``supersample**2`` rays per pixel (labels always use one
            ray through the pixel centre).

    Returns:
        The :class:`RenderedScene`.

    Raises:
        ValueError: A size or ``supersample`` that is not a positive int.

    Example:
        >>> import numpy as np
        >>> from examples.datasets.procedural import sample_scene
        >>> out = render_scene(sample_scene(np.random.default_rng(0)), 32, 48)
        >>> out.image.shape, out.semantic.shape
        ((3, 32, 48), (32, 48))
    """
    for name, value in (("height", height), ("width", width), ("supersample", supersample)):
        if isinstance(value, bool) or not isinstance(value, int | np.integer) or value < 1:
            raise ValueError(f"{name} must be a positive int, got {value!r}")
    camera = scene.camera
    rotation = camera.rotation

    o, d = camera.rays(height, width)
    label_hits = cast_rays(scene, o, d)
    if supersample == 1:
        image_hits, d_image = label_hits, d
    else:
        o_image, d_image = camera.rays(height, width, supersample)
        image_hits = cast_rays(scene, o_image, d_image)

    albedo = _albedo(scene, image_hits)
    radiance = _shade(scene, image_hits, albedo, camera.position[:, None])
    radiance *= np.exp(-scene.attenuation * np.where(image_hits.has_surface, image_hits.t, 0.0))
    surf = image_hits.has_surface
    luminance = radiance[:, surf].T @ np.array([0.2126, 0.7152, 0.0722])
    key = np.percentile(luminance, 90) if luminance.size else 1.0
    exposure = scene.exposure * _EXPOSURE_KEY / max(key, 1e-6) if scene.auto_exposure else scene.exposure
    outdoor = _outdoor_color(scene, d_image[:, ~surf])
    radiance[:, ~surf] = outdoor**_GAMMA / exposure  # the outdoors keeps its display colour
    albedo[:, ~surf] = outdoor

    radiance_px = _block_mean(radiance, height, width, supersample)
    image = np.clip(radiance_px * exposure, 0.0, 1.0) ** (1.0 / _GAMMA) * 2.0 - 1.0
    albedo_px = _block_mean(albedo, height, width, supersample)

    def to_map(x: np.ndarray) -> np.ndarray:
        return x.reshape(*x.shape[:-1], height, width)  # (..., N) -> (..., H, W)

    normal_cam = rotation.T @ label_hits.normal  # (3, N), world -> camera frame
    depth = to_map(label_hits.t)
    normal = to_map(normal_cam)
    intrinsics = camera.intrinsics(height, width)
    edges = edge_components(
        depth=depth, normal=normal, patch=to_map(label_hits.patch), albedo=albedo_px, intrinsics=intrinsics
    )
    pose = np.eye(4)
    pose[:3, :3], pose[:3, 3] = rotation, camera.position
    return RenderedScene(
        image=image.astype(np.float32),
        semantic=to_map(label_hits.semantic),
        depth=depth,
        normal=normal,
        curvature=to_map(label_hits.curvature),
        edge=np.maximum.reduce(list(edges.values())),
        edge_components=edges,
        regions=to_map(label_hits.region),
        albedo=albedo_px,
        intrinsics=intrinsics,
        camera_to_world=pose,
    )
