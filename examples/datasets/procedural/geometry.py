"""Ray intersection and exact surface attributes of the primitives of a procedural room.

Vectors are stored component-major, ``(3, N)``; a ray origin shared by all rays (a camera) may
be a ``(3, 1)`` column that broadcasts. A ray is ``o + t * d`` with ``d`` *not* normalised: camera
rays have a camera-frame z component of 1, so the hit parameter ``t`` is the z-buffer depth.

Every primitive offers two vectorised steps:

- ``intersect(o, d) -> (t, face)``: the nearest hit with ``t > T_MIN`` (``inf`` where the ray
  misses) and the face that was hit (an int per ray, meaning depends on the primitive);
- ``surface(p, face) -> Surface``: the exact outward unit normal, the two principal curvatures
  (``k1 >= k2``, positive where the surface bulges towards the outside) and 2-D surface
  coordinates in metres (for textures) at hit points ``p``.

All objects are convex and seen from outside; the room is seen from inside (normals point into
the room).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

__all__ = ["T_MIN", "Surface", "Sphere", "Box", "Cylinder", "Room", "dot", "ROOM_FACES"]

T_MIN = 1e-6
"""Hits closer than this (in units of the ray parameter) are ignored (self-intersection guard)."""

ROOM_FACES = ("floor", "ceiling", "wall_x0", "wall_x1", "wall_y0", "wall_y1")
"""Face ids of :class:`Room`, in order: 0 floor (z=0), 1 ceiling, 2..5 the walls x=0, x=L_x, y=0, y=L_y."""


def dot(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Dot product of ``(3, N)`` vector arrays (either may be a ``(3, 1)`` constant): ``(N,)``."""
    return np.einsum("i...,i...->...", a, b)


def _safe_reciprocal(x: np.ndarray) -> np.ndarray:
    """``1 / x`` with zeros nudged to a tiny value of the same sign (slab tests need no NaN)."""
    return 1.0 / np.where(np.abs(x) < 1e-300, 1e-300, x)


@dataclass
class Surface:
    """Exact attributes at N hit points.

    Attributes:
        normal: ``(3, N)`` outward unit normals (world frame).
        curvature: ``(2, N)`` principal curvatures ``(k1, k2)`` in 1/m, ``k1 >= k2``.
        uv: ``(2, N)`` surface coordinates in metres (arc length on curved faces).
    """

    normal: np.ndarray
    curvature: np.ndarray
    uv: np.ndarray


def _flat(normal: np.ndarray, uv: np.ndarray) -> Surface:
    return Surface(normal, np.zeros((2, normal.shape[1])), uv)


def _orthonormal_basis(axis: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Two unit vectors that complete ``axis`` to a right-handed orthonormal frame."""
    helper = np.array([1.0, 0.0, 0.0]) if abs(axis[0]) < 0.9 else np.array([0.0, 1.0, 0.0])
    e1 = np.cross(axis, helper)
    e1 /= np.linalg.norm(e1)
    return e1, np.cross(axis, e1)


@dataclass(frozen=True)
class Sphere:
    """A sphere (curvatures ``(1/r, 1/r)`` everywhere). ``face`` is always 0."""

    center: np.ndarray  # (3,)
    radius: float

    def intersect(self, o: np.ndarray, d: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        oc = o - self.center[:, None]
        a = dot(d, d)
        b = dot(oc, d)
        c = dot(oc, oc) - self.radius**2
        disc = b * b - a * c
        t = (-b - np.sqrt(np.maximum(disc, 0.0))) / a  # the entry point: rays start outside
        t = np.where((disc >= 0) & (t > T_MIN), t, np.inf)
        return t, np.zeros(t.shape, dtype=np.int64)

    def surface(self, p: np.ndarray, face: np.ndarray) -> Surface:
        normal = (p - self.center[:, None]) / self.radius
        normal /= np.sqrt(dot(normal, normal))
        azimuth = np.arctan2(normal[1], normal[0])
        polar = np.arccos(np.clip(normal[2], -1.0, 1.0))
        uv = np.stack([azimuth * self.radius, polar * self.radius])  # (2, N) arc lengths
        curvature = np.full((2, p.shape[1]), 1.0 / self.radius)
        return Surface(normal, curvature, uv)

    def bounding_sphere(self) -> tuple[np.ndarray, float]:
        return self.center, self.radius


@dataclass(frozen=True)
class Box:
    """A box rotated by ``yaw`` about the world z axis. Faces ``2*axis + (0 for +, 1 for -)``."""

    center: np.ndarray  # (3,)
    half_size: np.ndarray  # (3,) half extents along the box's local x, y, z
    yaw: float = 0.0
    rotation: np.ndarray = field(init=False, repr=False)  # (3, 3) world-from-local

    def __post_init__(self) -> None:
        c, s = np.cos(self.yaw), np.sin(self.yaw)
        object.__setattr__(self, "rotation", np.array([[c, -s, 0.0], [s, c, 0.0], [0.0, 0.0, 1.0]]))

    def _to_local(self, v: np.ndarray) -> np.ndarray:
        return self.rotation.T @ v

    def intersect(self, o: np.ndarray, d: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        o_local = self._to_local(o - self.center[:, None])
        d_local = self._to_local(d)
        inv = _safe_reciprocal(d_local)
        h = self.half_size[:, None]
        t_a, t_b = (-h - o_local) * inv, (h - o_local) * inv  # (3, N) slab crossings
        t_near, t_far = np.minimum(t_a, t_b), np.maximum(t_a, t_b)
        axis = np.argmax(t_near, axis=0)
        t_enter, t_exit = t_near.max(axis=0), t_far.min(axis=0)
        t = np.where((t_enter <= t_exit) & (t_enter > T_MIN), t_enter, np.inf)
        # Entering through the + face of an axis means travelling in the - direction along it.
        entering_plus = np.take_along_axis(d_local, axis[None], axis=0)[0] < 0
        return t, 2 * axis + np.where(entering_plus, 0, 1)

    def surface(self, p: np.ndarray, face: np.ndarray) -> Surface:
        axis, sign = face // 2, np.where(face % 2 == 0, 1.0, -1.0)
        n = p.shape[1]
        normal_local = np.zeros((3, n))
        normal_local[axis, np.arange(n)] = sign
        p_local = self._to_local(p - self.center[:, None]) + self.half_size[:, None]  # in [0, 2h]
        # The two in-face coordinates, in axis order (x, y, z) with the normal axis removed.
        u_axis = np.where(axis == 0, 1, 0)
        v_axis = np.where(axis == 2, 1, 2)
        uv = np.stack([p_local[u_axis, np.arange(n)], p_local[v_axis, np.arange(n)]])
        return _flat(self.rotation @ normal_local, uv)

    def bounding_sphere(self) -> tuple[np.ndarray, float]:
        return self.center, float(np.linalg.norm(self.half_size))


@dataclass(frozen=True)
class Cylinder:
    """A closed cylinder from ``base`` along unit ``axis`` for ``height``.

    Faces: 0 the side (curvatures ``(1/r, 0)``), 1 the cap at ``base``, 2 the cap at
    ``base + height * axis`` (flat).
    """

    base: np.ndarray  # (3,) centre of the first cap
    axis: np.ndarray  # (3,) unit vector
    radius: float
    height: float

    def __post_init__(self) -> None:
        axis = np.asarray(self.axis, dtype=np.float64)
        object.__setattr__(self, "axis", axis / np.linalg.norm(axis))

    def intersect(self, o: np.ndarray, d: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        a = self.axis[:, None]
        ob = o - self.base[:, None]
        o_along, d_along = dot(ob, a), dot(d, a)
        o_perp, d_perp = ob - o_along * a, d - d_along * a  # (3, N) components across the axis
        qa = dot(d_perp, d_perp)
        qb = dot(o_perp, d_perp)
        qc = dot(o_perp, o_perp) - self.radius**2
        disc = qb * qb - qa * qc
        with np.errstate(divide="ignore", invalid="ignore"):
            t_side = (-qb - np.sqrt(np.maximum(disc, 0.0))) / qa
            s_side = o_along + t_side * d_along
            side_ok = (qa > 1e-18) & (disc >= 0) & (t_side > T_MIN) & (s_side >= 0) & (s_side <= self.height)
            t = np.where(side_ok, t_side, np.inf)
            face = np.zeros(t.shape, dtype=np.int64)
            inv_along = _safe_reciprocal(d_along)
            for cap_face, s_cap in ((1, 0.0), (2, self.height)):
                t_cap = (s_cap - o_along) * inv_along
                q = o_perp + t_cap * d_perp
                cap_ok = (t_cap > T_MIN) & (dot(q, q) <= self.radius**2) & (t_cap < t)
                t = np.where(cap_ok, t_cap, t)
                face = np.where(cap_ok, cap_face, face)
        return t, face

    def surface(self, p: np.ndarray, face: np.ndarray) -> Surface:
        a = self.axis[:, None]
        e1, e2 = _orthonormal_basis(self.axis)
        pb = p - self.base[:, None]
        s = dot(pb, a)
        radial = pb - s * a  # (3, N)
        x, y = dot(radial, e1[:, None]), dot(radial, e2[:, None])
        on_side = face == 0
        side_normal = radial / np.maximum(np.sqrt(dot(radial, radial)), 1e-12)
        cap_normal = np.where(face == 1, -1.0, 1.0) * a
        normal = np.where(on_side, side_normal, cap_normal)
        uv = np.where(on_side, np.stack([np.arctan2(y, x) * self.radius, s]), np.stack([x, y]))
        curvature = np.zeros((2, p.shape[1]))
        curvature[0] = np.where(on_side, 1.0 / self.radius, 0.0)
        return Surface(normal, curvature, uv)

    def bounding_sphere(self) -> tuple[np.ndarray, float]:
        center = self.base + 0.5 * self.height * self.axis
        return center, float(np.hypot(self.radius, 0.5 * self.height))


@dataclass(frozen=True)
class Room:
    """The inside of the box ``[0, L_x] x [0, L_y] x [0, L_z]`` (z up, floor at z = 0).

    Faces are numbered as in :data:`ROOM_FACES`. Surface coordinates: ``(x, y)`` on the floor and
    ceiling, ``(y, z)`` on the x walls, ``(x, z)`` on the y walls.
    """

    size: np.ndarray  # (3,) L_x, L_y, L_z

    def contains(self, point: np.ndarray, margin: float = 0.0) -> bool:
        return bool(np.all(point > margin) and np.all(point < self.size - margin))

    def intersect(self, o: np.ndarray, d: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Exit point of rays that start inside the room (always finite)."""
        positive = d > 0
        with np.errstate(divide="ignore", invalid="ignore"):
            t_axes = np.where(positive, self.size[:, None] - o, -o) / d  # (3, N) >= 0
        t_axes = np.where(d == 0, np.inf, t_axes)  # a ray parallel to a wall never meets it
        axis = np.argmin(t_axes, axis=0)
        t = t_axes.min(axis=0)
        going_up = np.take_along_axis(positive, axis[None], axis=0)[0]
        # axis z -> faces 0/1 (floor, ceiling); axis x -> 2/3; axis y -> 4/5.
        first_face = np.array([2, 4, 0])[axis]
        return t, first_face + going_up.astype(np.int64)

    def surface(self, p: np.ndarray, face: np.ndarray) -> Surface:
        n = p.shape[1]
        axis = np.array([2, 2, 0, 0, 1, 1])[face]
        normal = np.zeros((3, n))
        normal[axis, np.arange(n)] = np.where(face % 2 == 0, 1.0, -1.0)  # into the room
        horizontal = face < 2
        u = np.where(horizontal, p[0], np.where(axis == 0, p[1], p[0]))
        v = np.where(horizontal, p[1], p[2])
        return _flat(normal, np.stack([u, v]))
