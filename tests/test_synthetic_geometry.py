"""The procedural renderer against closed forms: intersections, normals, curvatures, edges."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import assume, given, settings
from hypothesis import strategies as st

from examples.datasets.procedural import (
    CLASS_IDS,
    Box,
    Camera,
    Cylinder,
    Light,
    Material,
    Room,
    Scene,
    SceneConfig,
    SceneObject,
    Sphere,
    render_scene,
    sample_scene,
)
from examples.datasets.procedural.edges import edge_components

ROOM = Room(np.array([6.0, 6.0, 3.0]))


def _plain(rgb=(0.6, 0.6, 0.6)) -> Material:
    color = np.array(rgb, dtype=np.float64)
    return Material(color=color, accent=color)


def one_object_scene(shape, camera: Camera | None = None) -> Scene:
    """A plain grey room with one plain red object: no texture, so every edge is geometric."""
    if camera is None:
        camera = Camera(np.array([1.0, 3.0, 1.5]), yaw=0.0, pitch=0.0, hfov=np.radians(60))
    return Scene(
        room=ROOM,
        camera=camera,
        materials=(_plain(), _plain((0.8, 0.2, 0.2))),
        room_materials=(0,) * 6,
        objects=(SceneObject(shape, 1),),
        lights=(Light(np.array([3.0, 3.0, 2.8]), np.full(3, 3.0)),),
    )


def backproject(out) -> np.ndarray:
    """``(3, H, W)`` world-frame points from the rendered depth, intrinsics and pose (independent of the renderer)."""
    k, pose = out.intrinsics, out.camera_to_world
    h, w = out.depth.shape
    v, u = np.mgrid[0:h, 0:w].astype(np.float64)
    z = np.where(np.isfinite(out.depth), out.depth, 0.0)
    cam = np.stack([(u - k[0, 2]) / k[0, 0] * z, (v - k[1, 2]) / k[1, 1] * z, z])  # (3, H, W)
    return np.einsum("ij,jhw->ihw", pose[:3, :3], cam) + pose[:3, 3, None, None]


def world_normals(out) -> np.ndarray:
    return np.einsum("ij,jhw->ihw", out.camera_to_world[:3, :3], out.normal)


def test_sphere_depth_normal_curvature_and_silhouette():
    center, radius = np.array([4.0, 3.0, 1.5]), 0.5
    scene = one_object_scene(Sphere(center, radius))
    out = render_scene(scene, 48, 48, supersample=1)
    on_sphere = out.regions == scene.object_region(0)
    assert on_sphere.sum() > 100
    assert np.all(out.semantic[on_sphere] == CLASS_IDS["sphere"])

    # Back-projected depth lies on the sphere and the normal is the radial direction.
    p = backproject(out)[:, on_sphere]
    radial = p - center[:, None]
    np.testing.assert_allclose(np.linalg.norm(radial, axis=0), radius, atol=1e-9)
    np.testing.assert_allclose(world_normals(out)[:, on_sphere], radial / radius, atol=1e-9)
    # Both principal curvatures are 1/r on the sphere, 0 on the planar room.
    np.testing.assert_allclose(out.curvature[:, on_sphere], 1 / radius, rtol=1e-12)
    assert np.all(out.curvature[:, ~on_sphere] == 0)

    # Silhouette from the closed form: a pixel's ray sees the sphere iff its angle to the centre
    # direction is below asin(r / distance).
    k = out.intrinsics
    v, u = np.mgrid[0:48, 0:48].astype(np.float64)
    rays = np.stack([(u - k[0, 2]) / k[0, 0], (v - k[1, 2]) / k[1, 1], np.ones_like(u)])
    to_center = out.camera_to_world[:3, :3].T @ (center - scene.camera.position)
    cos = np.einsum("i,ihw->hw", to_center, rays) / np.linalg.norm(to_center) / np.linalg.norm(rays, axis=0)
    half_angle = np.arcsin(radius / np.linalg.norm(to_center))
    angle = np.arccos(np.clip(cos, -1, 1))
    assert np.all(on_sphere[angle < half_angle - 1e-9])
    assert not np.any(on_sphere[angle > half_angle + 1e-9])


def test_cylinder_side_and_cap_curvatures():
    base, radius, height = np.array([3.5, 3.0, 0.0]), 0.4, 1.0
    camera = Camera(np.array([1.0, 3.0, 2.2]), yaw=0.0, pitch=np.radians(30), hfov=np.radians(60))
    scene = one_object_scene(Cylinder(base, np.array([0.0, 0.0, 1.0]), radius, height), camera)
    out = render_scene(scene, 48, 48, supersample=1)
    on_cylinder = out.regions == scene.object_region(0)
    n_z = world_normals(out)[2]
    side, cap = on_cylinder & (np.abs(n_z) < 1e-9), on_cylinder & (np.abs(n_z - 1) < 1e-9)
    assert side.sum() > 50 and cap.sum() > 20 and (side | cap).sum() == on_cylinder.sum()
    p = backproject(out)
    np.testing.assert_allclose(np.hypot(*(p[:2] - base[:2, None, None]))[side], radius, atol=1e-9)
    np.testing.assert_allclose(p[2][cap], height, atol=1e-9)
    np.testing.assert_allclose(out.curvature[0][side], 1 / radius, rtol=1e-12)
    assert np.all(out.curvature[1][side] == 0) and np.all(out.curvature[:, cap] == 0)


def test_lying_cylinder_and_box_curvatures():
    lying = Cylinder(np.array([3.5, 2.4, 0.3]), np.array([0.0, 1.0, 0.0]), 0.3, 1.2)
    out = render_scene(one_object_scene(lying), 40, 40, supersample=1)
    on_side = (out.semantic == CLASS_IDS["cylinder"]) & (np.abs(world_normals(out)[1]) < 1e-9)
    assert on_side.sum() > 20
    np.testing.assert_allclose(out.curvature[:, on_side], np.array([[1 / 0.3], [0.0]]) * np.ones(on_side.sum()))

    box = Box(np.array([3.5, 3.0, 0.4]), np.array([0.3, 0.5, 0.4]), yaw=0.5)
    camera = Camera(np.array([1.0, 3.0, 1.8]), yaw=0.0, pitch=np.radians(25), hfov=np.radians(60))
    scene = one_object_scene(box, camera)
    out = render_scene(scene, 40, 40, supersample=1)
    on_box = out.regions == scene.object_region(0)
    assert on_box.sum() > 50 and np.all(out.curvature[:, on_box] == 0)
    # Back-projected points lie on the box surface: max |local coordinate / half size| is 1.
    p = backproject(out)[:, on_box] - box.center[:, None]
    local = box.rotation.T @ p / box.half_size[:, None]
    np.testing.assert_allclose(np.abs(local).max(axis=0), 1.0, atol=1e-9)


def test_room_normals_match_normals_from_depth():
    """On planar patches, the cross product of back-projected neighbours gives the label normal."""
    for seed in range(3):
        out = render_scene(sample_scene(np.random.default_rng(seed)), 40, 40, supersample=1)
        p = backproject(out)
        regions = out.regions
        interior = np.zeros_like(regions, dtype=bool)
        same = (regions[1:-1, 1:-1] == regions[2:, 1:-1]) & (regions[1:-1, 1:-1] == regions[1:-1, 2:])
        interior[1:-1, 1:-1] = same & (regions[1:-1, 1:-1] < 6) & np.isfinite(out.depth[1:-1, 1:-1])
        du = p[:, 1:-1, 2:] - p[:, 1:-1, 1:-1]
        dv = p[:, 2:, 1:-1] - p[:, 1:-1, 1:-1]
        inner = interior[1:-1, 1:-1]
        n = np.cross(dv[:, inner], du[:, inner], axis=0)  # (down x right) points towards the camera
        n /= np.linalg.norm(n, axis=0)
        cos = (n * world_normals(out)[:, 1:-1, 1:-1][:, inner]).sum(axis=0)
        assert cos.size > 500
        assert np.all(cos > np.cos(np.radians(0.01)))


def test_occlusion_edges_on_sphere_silhouette_and_nothing_inside():
    scene = one_object_scene(Sphere(np.array([4.0, 3.0, 1.5]), 0.5))
    out = render_scene(scene, 48, 48, supersample=1)
    on_sphere = out.regions == scene.object_region(0)
    wall = out.semantic == CLASS_IDS["wall"]
    silhouette = np.zeros_like(on_sphere)
    silhouette[:, :-1] |= on_sphere[:, :-1] & wall[:, 1:]
    silhouette[:, 1:] |= on_sphere[:, 1:] & wall[:, :-1]
    silhouette[:-1] |= on_sphere[:-1] & wall[1:]
    silhouette[1:] |= on_sphere[1:] & wall[:-1]
    assert silhouette.sum() > 20
    assert np.all(out.edge[silhouette] == 1) and np.all(out.edge_components["occlusion"][silhouette] == 1)
    # Edges sit on the nearer side: the wall pixels just outside the silhouette are not edges.
    outside = np.zeros_like(on_sphere)
    outside[:, 1:] |= wall[:, 1:] & on_sphere[:, :-1]
    assert np.all(out.edge[outside] == 0)
    # No edge inside a smooth, untextured patch: pixels whose 3x3 neighbourhood is one region.
    r = out.regions
    uniform = np.zeros_like(on_sphere)
    uniform[1:-1, 1:-1] = np.all(
        [
            r[1 + dy : r.shape[0] - 1 + dy, 1 + dx : r.shape[1] - 1 + dx] == r[1:-1, 1:-1]
            for dy in (-1, 0, 1)
            for dx in (-1, 0, 1)
        ],
        axis=0,
    )
    assert uniform.sum() > 1000
    assert np.all(out.edge[uniform] == 0)


def test_occlusion_edges_in_random_scenes():
    """Wherever an object pixel borders a room pixel that is 1.5x farther, the object pixel is an edge;
    and no occlusion is ever reported between two room pixels (creases are continuous)."""
    checked = 0
    for seed in range(12):
        out = render_scene(sample_scene(np.random.default_rng(seed)), 40, 40, supersample=1)
        z, obj = out.depth, out.semantic >= CLASS_IDS["sphere"]
        room_classes = [CLASS_IDS[name] for name in ("floor", "wall", "ceiling", "rug", "painting")]
        room = np.isin(out.semantic, room_classes)
        pairs = (
            ((slice(None), slice(None, -1)), (slice(None), slice(1, None))),  # horizontal neighbours
            ((slice(None, -1),), (slice(1, None),)),  # vertical neighbours
        )
        for a, b in pairs:
            for near, far in ((a, b), (b, a)):
                jump = obj[near] & room[far] & (z[far] > 1.5 * z[near])
                checked += jump.sum()
                assert np.all(out.edge[near][jump] == 1)
        # Room pixels whose four neighbours are room pixels too: never an occlusion.
        inner = np.pad(room, 1)
        inner = room & inner[:-2, 1:-1] & inner[2:, 1:-1] & inner[1:-1, :-2] & inner[1:-1, 2:]
        assert not np.any(out.edge_components["occlusion"][inner])
    assert checked > 200


def _two_planes(w0, slope_left, slope_right, slope_v, kink, step):
    """Inverse depth of two planes that meet (step=0) or jump by ``step * w0`` along the image line u = kink.

    Returns the occlusion map, the inverse depth ``w`` (12, 16) and the column left of the line.
    """
    k = np.array([[12.0, 0.0, 7.5], [0.0, 12.0, 5.5], [0.0, 0.0, 1.0]])
    v, u = np.mgrid[0:12, 0:16].astype(np.float64)
    left = u < kink
    # On a plane, w = 1/z is affine in (u, v): w = a + b u + c v with plane n . X = 1 and
    # n = (b fx, c fy, a + b cx + c cy). Any positive affine w is a plane.
    w_left = w0 + slope_left * (u - kink) + slope_v * (v - 5.5)
    w_right = w0 * (1 + step) + slope_right * (u - kink) + slope_v * (v - 5.5)
    w = np.where(left, w_left, w_right)
    assume(np.all(w > 0.02))

    def plane_normal(w_map, b):
        a = w_map[0, 0] - b * u[0, 0] - slope_v * v[0, 0]
        n = np.array([b * k[0, 0], slope_v * k[1, 1], a + b * k[0, 2] + slope_v * k[1, 2]])
        return -n / np.linalg.norm(n)  # facing the camera

    normal = np.where(
        left, plane_normal(w_left, slope_left)[:, None, None], plane_normal(w_right, slope_right)[:, None, None]
    )
    maps = edge_components(
        depth=1.0 / w, normal=normal, patch=np.where(left, 0, 1), albedo=np.zeros((3, 12, 16)), intrinsics=k
    )
    return maps["occlusion"], w, int(np.ceil(kink)) - 1


_PLANES = dict(
    w0=st.floats(0.05, 2.0),
    slope_left=st.floats(-0.04, 0.04),
    slope_right=st.floats(-0.04, 0.04),
    slope_v=st.floats(-0.04, 0.04),
    kink=st.floats(0.5, 14.5),
)


@settings(max_examples=60, deadline=None)
@given(**_PLANES)
def test_no_occlusion_on_a_crease(w0, slope_left, slope_right, slope_v, kink):
    """Two planes meeting along an image line (a crease, seen at any slope): never an occlusion."""
    occlusion, _, _ = _two_planes(w0, slope_left, slope_right, slope_v, kink, step=0.0)
    assert np.all(occlusion == 0)


@settings(max_examples=60, deadline=None)
@given(**_PLANES, step=st.floats(0.15, 1.0), sign=st.sampled_from([-1.0, 1.0]))
def test_occlusion_on_a_depth_step(w0, slope_left, slope_right, slope_v, kink, step, sign):
    """Inverse depth that steps by much more than the slopes: an occlusion on the nearer pixel, nowhere else."""
    step = sign * step if sign > 0 else -step / (1 + step)  # near->far or far->near by the same ratio
    occlusion, w, col = _two_planes(w0, slope_left, slope_right, slope_v, kink, step)
    jump = np.abs(w[:, col + 1] - w[:, col])
    assume(np.all(jump > 2.5 * max(abs(slope_left), abs(slope_right))))
    nearer_left = w[:, col] > w[:, col + 1]
    assert np.all(np.where(nearer_left, occlusion[:, col], occlusion[:, col + 1]) == 1)
    assert np.all(np.where(nearer_left, occlusion[:, col + 1], occlusion[:, col]) == 0)
    away = np.ones(16, dtype=bool)
    away[col : col + 2] = False
    assert np.all(occlusion[:, away] == 0)


def _footprint(shape) -> float:
    """Radius of the circle that contains the shape's floor footprint."""
    if isinstance(shape, Sphere):
        return shape.radius
    if isinstance(shape, Box):
        return float(np.hypot(*shape.half_size[:2]))
    if abs(shape.axis[2]) > 0.5:  # upright cylinder
        return shape.radius
    return float(np.hypot(shape.radius, 0.5 * shape.height))


def test_sampled_scenes_are_physically_plausible():
    """Objects rest on the floor or on a box, never overlap, stay in the room and clear of the camera."""
    config = SceneConfig()
    for seed in range(150):
        scene = sample_scene(np.random.default_rng(seed), config)
        cam = scene.camera.position
        assert scene.room.contains(cam, margin=0.2)
        tops = [0.0]
        for obj in scene.objects:
            if isinstance(obj.shape, Box):
                tops.append(obj.shape.center[2] + obj.shape.half_size[2])
        for obj in scene.objects:
            shape = obj.shape
            if isinstance(shape, Sphere):
                lowest = shape.center[2] - shape.radius
            elif isinstance(shape, Box):
                lowest = shape.center[2] - shape.half_size[2]
            else:
                ends = [shape.base[2], shape.base[2] + shape.height * shape.axis[2]]
                lowest = min(ends) - shape.radius * np.hypot(shape.axis[0], shape.axis[1])
            assert min(abs(lowest - top) for top in tops) < 1e-9, f"seed {seed}: object floats at z={lowest}"
            center, radius = shape.bounding_sphere()
            assert np.linalg.norm(center - cam) > radius, f"seed {seed}: camera inside an object"
            assert np.all(center[:2] > 0) and np.all(center[:2] < scene.room.size[:2])
            for light in scene.lights:
                assert np.linalg.norm(center - light.position) > radius
        for a in range(len(scene.objects)):
            for b in range(a + 1, len(scene.objects)):
                sa, sb = scene.objects[a].shape, scene.objects[b].shape
                ca, cb = sa.bounding_sphere()[0], sb.bounding_sphere()[0]
                stacked = np.allclose(ca[:2], cb[:2], atol=1e-12)  # a stacked object is centred on its box
                assert stacked or np.linalg.norm(ca[:2] - cb[:2]) > _footprint(sa) + _footprint(sb)


def test_scene_and_render_reject_bad_input():
    camera = Camera(np.array([7.0, 3.0, 1.5]), yaw=0.0, pitch=0.0, hfov=1.0)
    with pytest.raises(ValueError, match="outside the room"):
        Scene(room=ROOM, camera=camera, materials=(_plain(),), room_materials=(0,) * 6)
    with pytest.raises(ValueError, match="one material per room face"):
        Scene(
            room=ROOM,
            camera=Camera(np.array([1.0, 3.0, 1.5]), 0.0, 0.0, 1.0),
            materials=(_plain(),),
            room_materials=(0,),
        )
    scene = one_object_scene(Sphere(np.array([4.0, 3.0, 1.5]), 0.5))
    with pytest.raises(ValueError, match="height must be a positive int"):
        render_scene(scene, 0, 8)
    with pytest.raises(ValueError, match="pattern must be one of"):
        Material(color=np.ones(3), accent=np.ones(3), pattern="zigzag")
    with pytest.raises(ValueError, match="increasing range"):
        SceneConfig(num_objects=(5, 2))
