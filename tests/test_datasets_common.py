"""Shared pieces of the real-dataset loaders: PNG reading, resizing, flips, normals, edges, regions."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from PIL import Image
from scipy import ndimage

from examples.datasets.cache import DerivedCache
from examples.datasets.edges import canny, label_boundaries
from examples.datasets.geometry import backproject, normals_from_depth
from examples.datasets.io import atomic_save_npz, load_npz, read_gray_png, read_json, read_rgb_png
from examples.datasets.regions import connected_regions
from examples.datasets.transforms import (
    Intrinsics,
    RandomHorizontalFlip,
    hflip_sample,
    resize_continuous,
    resize_depth,
    resize_nearest,
    resize_normals,
)
from tests.realdata_fixtures import write_png


def plane_depth(normal, offset, intrinsics: Intrinsics, size) -> np.ndarray:
    """z-depth of the plane {P : n . P = offset} seen through a pinhole camera."""
    H, W = size
    v, u = np.mgrid[0:H, 0:W].astype(np.float64)
    rays = np.stack(((u - intrinsics.cx) / intrinsics.fx, (v - intrinsics.cy) / intrinsics.fy, np.ones_like(u)), -1)
    return offset / (rays @ np.asarray(normal, dtype=np.float64))


def unit(v) -> np.ndarray:
    v = np.asarray(v, dtype=np.float64)
    return v / np.linalg.norm(v)


K = Intrinsics(fx=20.0, fy=22.0, cx=11.3, cy=7.6)
# A tilted plane facing the camera: n . P = -10 with n pointing toward the camera (n_z < 0).
PLANE_N = unit([0.3, -0.5, -1.0])


# ------------------------------------------------------------------------------------------ io
def test_read_gray_png_keeps_16_bit_values_above_32767(tmp_path):
    raw = np.array([[0, 1, 32767], [32768, 40000, 65535]], dtype=np.uint16)
    path = write_png(tmp_path / "d.png", raw)
    assert Image.open(path).mode == "I;16"
    out = read_gray_png(path, bit_depths=(16,))
    assert out.dtype == np.uint16
    np.testing.assert_array_equal(out, raw)


def test_read_gray_png_rejects_wrong_bit_depth_naming_the_file(tmp_path):
    path = write_png(tmp_path / "depth8.png", np.zeros((4, 4), np.uint8))
    with pytest.raises(ValueError, match=r"depth8\.png.*16-bit.*found 8-bit grayscale"):
        read_gray_png(path, bit_depths=(16,))
    rgb = write_png(tmp_path / "rgb.png", np.zeros((4, 4, 3), np.uint8))
    with pytest.raises(ValueError, match=r"rgb\.png.*single-channel.*8-bit RGB"):
        read_gray_png(rgb, bit_depths=(8,))


def test_corrupt_and_missing_png_errors_name_the_file(tmp_path):
    good = write_png(tmp_path / "good.png", np.arange(64, dtype=np.uint16).reshape(8, 8) * 999)
    truncated = tmp_path / "truncated.png"
    truncated.write_bytes(good.read_bytes()[:60])
    with pytest.raises(ValueError, match=r"truncated\.png"):
        read_gray_png(truncated)
    garbage = tmp_path / "garbage.png"
    garbage.write_bytes(b"not a png at all, just text" * 3)
    with pytest.raises(ValueError, match=r"garbage\.png is not a valid PNG"):
        read_gray_png(garbage)
    with pytest.raises(FileNotFoundError, match=r"absent\.png"):
        read_rgb_png(tmp_path / "absent.png")


def test_read_rgb_png_rejects_rgba(tmp_path):
    path = tmp_path / "rgba.png"
    Image.fromarray(np.zeros((2, 2, 4), np.uint8)).save(path)
    with pytest.raises(ValueError, match=r"rgba\.png.*8-bit RGB.*RGBA"):
        read_rgb_png(path)


def test_read_json_names_file_and_missing_key(tmp_path):
    path = tmp_path / "cam.json"
    path.write_text('{"intrinsic": {"fx": 1}}')
    with pytest.raises(ValueError, match=r"cam\.json.*\['fy'\].*'intrinsic'"):
        read_json(path, required={"intrinsic": ["fx", "fy"]})
    path.write_text("{broken")
    with pytest.raises(ValueError, match=r"cam\.json"):
        read_json(path)


def test_atomic_npz_roundtrip_leaves_no_temporary_files(tmp_path):
    arrays = {"a": np.arange(6, dtype=np.float32).reshape(2, 3), "m": np.array([True, False])}
    atomic_save_npz(tmp_path / "sub" / "x.npz", arrays)
    assert [p.name for p in (tmp_path / "sub").iterdir()] == ["x.npz"]
    out = load_npz(tmp_path / "sub" / "x.npz", keys=["a", "m"])
    np.testing.assert_array_equal(out["a"], arrays["a"])
    np.testing.assert_array_equal(out["m"], arrays["m"])
    with pytest.raises(ValueError, match=r"x\.npz.*missing array"):
        load_npz(tmp_path / "sub" / "x.npz", keys=["b"])
    (tmp_path / "bad.npz").write_bytes(b"PK\x03\x04broken")
    with pytest.raises(ValueError, match=r"bad\.npz"):
        load_npz(tmp_path / "bad.npz", keys=["a"])


def test_cache_refuses_other_parameters(tmp_path):
    cache = DerivedCache(tmp_path, dataset="x", size=(4, 8), recipe={"sigma": 1.0})
    assert cache.folder == tmp_path / "x" / "4x8"
    assert cache.check_recipe() is False  # nothing there yet
    cache.write_pending()
    assert cache.check_recipe() is False  # unfinished
    cache.finish()
    assert cache.check_recipe() is True
    other = DerivedCache(tmp_path, dataset="x", size=(4, 8), recipe={"sigma": 2.0})
    with pytest.raises(ValueError, match=r"recipe\.json.*'sigma': \(1\.0, 2\.0\)"):
        other.check_recipe()


# ---------------------------------------------------------------------------------- resizing
def test_resize_nearest_is_pixel_centre_exact_and_keeps_dtype():
    x = torch.arange(12, dtype=torch.int64).view(3, 4) + 70000
    up = resize_nearest(x, (6, 8))
    assert up.dtype == torch.int64
    np.testing.assert_array_equal(up.numpy(), np.repeat(np.repeat(x.numpy(), 2, 0), 2, 1))
    np.testing.assert_array_equal(resize_nearest(up, (3, 4)).numpy(), x.numpy())
    # 3x downsampling picks the centre pixel of each block.
    big = torch.arange(81).view(9, 9)
    np.testing.assert_array_equal(resize_nearest(big, (3, 3)).numpy(), big.numpy()[1::3, 1::3])


def test_resize_continuous_ignores_missing_values_and_sentinels():
    x = torch.tensor([[1.0, 65535.0, 5.0, 7.0], [3.0, float("nan"), 9.0, float("inf")]])
    valid = torch.tensor([[True, False, True, True], [True, False, True, False]])
    y, ok = resize_continuous(x, (1, 2), valid=valid)
    # Left block: valid values 1 and 3 (2 of 4 valid -> valid); right block: 5, 7, 9.
    np.testing.assert_allclose(y.numpy(), [[2.0, 7.0]])
    assert ok.tolist() == [[True, True]]
    y, ok = resize_continuous(
        x, (1, 2), valid=valid & torch.tensor([[False, True, True, True], [True, True, True, True]])
    )
    assert ok.tolist() == [[False, True]] and y[0, 0] == 0  # 1 of 4 valid is not enough


def test_resize_continuous_upsampling_and_non_integer_factors_stay_finite():
    x = torch.rand(2, 5, 7)
    valid = torch.rand(5, 7) > 0.3
    for size in ((10, 14), (3, 4), (8, 5)):
        y, ok = resize_continuous(torch.where(valid, x, float("nan")), size, valid=valid)
        assert y.shape == (2, *size) and torch.isfinite(y).all()
        assert (y[:, ok] >= x[:, valid].min() - 1e-5).all() and (y[:, ok] <= x[:, valid].max() + 1e-5).all()


def test_resize_depth_keeps_a_plane_planar_so_normals_survive_resizing():
    depth = plane_depth(PLANE_N, -10.0, K, (16, 24))
    small, ok = resize_depth(torch.from_numpy(depth), (8, 12))
    assert ok.all()
    k_small = K.resized(from_size=(16, 24), to_size=(8, 12))
    for method in ("cross", "plane"):
        n, valid = normals_from_depth(small.numpy(), k_small, method=method, window=3)
        np.testing.assert_allclose(n[valid], np.broadcast_to(PLANE_N, n[valid].shape), atol=1e-9)


def test_resize_normals_renormalises():
    n = torch.zeros(3, 2, 2)
    n[0, :, 0], n[2, :, 1] = 1.0, -1.0
    out, ok = resize_normals(n, (1, 1))
    np.testing.assert_allclose(out[:, 0, 0].numpy(), unit([1.0, 0.0, -1.0]), atol=1e-6)
    assert ok.item()


@given(
    H=st.integers(2, 40),
    W=st.integers(2, 40),
    h=st.integers(1, 40),
    w=st.integers(1, 40),
    u=st.floats(-0.5, 1.0),
    v=st.floats(-0.5, 1.0),
)
@settings(max_examples=50, deadline=None)
def test_intrinsics_rescaling_keeps_rays(H, W, h, w, u, v):
    """A point at a fraction of the image width/height has the same ray before and after resizing."""
    k = Intrinsics(fx=30.0, fy=25.0, cx=W / 2 - 0.3, cy=H / 2 + 0.2)
    k2 = k.resized(from_size=(H, W), to_size=(h, w))
    # Continuous position (image edges at -0.5 and size - 0.5) at fractions (u, v) of the extent.
    x1, y1 = u * W - 0.5, v * H - 0.5
    x2, y2 = u * w - 0.5, v * h - 0.5
    assert (x1 - k.cx) / k.fx == pytest.approx((x2 - k2.cx) / k2.fx, abs=1e-9)
    assert (y1 - k.cy) / k.fy == pytest.approx((y2 - k2.cy) / k2.fy, abs=1e-9)


# -------------------------------------------------------------------------------------- flips
def _sample(normals: torch.Tensor, size) -> dict:
    H, W = size
    return {
        "image": torch.rand(3, H, W),
        "labels": {"normal": normals, "semantic": torch.randint(0, 5, (H, W))},
        "masks": {"normal": torch.rand(H, W) > 0.5, "semantic": torch.ones(H, W, dtype=torch.bool)},
        "regions": torch.randint(0, 9, (H, W)),
        "meta": {"intrinsics": K.as_tensor(), "hflip": False},
    }


def test_hflip_negates_normal_x_as_geometry_demands():
    """Normals of the mirrored depth map (with mirrored intrinsics) equal the flipped normals."""
    size = (16, 24)
    depth = plane_depth(PLANE_N, -10.0, K, size)
    n, _ = normals_from_depth(depth, K, method="cross")
    sample = _sample(torch.from_numpy(n.transpose(2, 0, 1)).float(), size)
    flipped = hflip_sample(sample)
    n_mirror, ok = normals_from_depth(depth[:, ::-1].copy(), K.hflipped(width=size[1]), method="cross")
    np.testing.assert_allclose(flipped["labels"]["normal"].numpy().transpose(1, 2, 0)[ok], n_mirror[ok], atol=1e-6)
    np.testing.assert_allclose(flipped["meta"]["intrinsics"].numpy(), [K.fx, K.fy, size[1] - 1 - K.cx, K.cy], rtol=1e-6)
    assert flipped["meta"]["hflip"] is True
    torch.testing.assert_close(flipped["regions"], sample["regions"].flip(-1))
    torch.testing.assert_close(flipped["masks"]["normal"], sample["masks"]["normal"].flip(-1))
    twice = hflip_sample(flipped)
    for name in ("normal", "semantic"):
        torch.testing.assert_close(twice["labels"][name], sample["labels"][name])
    torch.testing.assert_close(twice["image"], sample["image"])


def test_random_horizontal_flip_probability_bounds():
    s = _sample(torch.rand(3, 4, 6), (4, 6))
    assert RandomHorizontalFlip(p=0.0)(s) is s
    assert RandomHorizontalFlip(p=1.0)(s)["meta"]["hflip"] is True
    with pytest.raises(ValueError, match="probability"):
        RandomHorizontalFlip(p=1.5)


# ------------------------------------------------------------------------------------ normals
@pytest.mark.parametrize("method", ["cross", "plane"])
def test_normals_of_a_tilted_plane_are_its_normal(method):
    depth = plane_depth(PLANE_N, -10.0, K, (16, 24))
    n, ok = normals_from_depth(depth, K, method=method)
    assert ok[3:-3, 3:-3].all()
    np.testing.assert_allclose(n[ok], np.broadcast_to(PLANE_N, n[ok].shape), atol=1e-9)
    # Toward the camera: n . P < 0.
    assert (np.einsum("hwc,hwc->hw", n, backproject(depth, K))[ok] < 0).all()


def test_normals_of_a_floor_point_up_and_a_wall_faces_the_camera():
    floor = plane_depth([0.0, 1.0, 0.0], 1.5, K, (16, 24))  # y = 1.5 m below the camera (+y is down)
    rows = slice(int(np.ceil(K.cy)) + 2, 16)
    n, ok = normals_from_depth(np.where(np.isfinite(floor) & (floor > 0), floor, 0), K, method="cross")
    np.testing.assert_allclose(n[rows][ok[rows]], np.broadcast_to([0.0, -1.0, 0.0], n[rows][ok[rows]].shape), atol=1e-9)
    assert not ok[: int(K.cy)].any()  # above the horizon there is no floor (depth <= 0 -> invalid)
    wall = np.full((8, 8), 4.0)
    n, ok = normals_from_depth(wall, Intrinsics(10.0, 10.0, 3.5, 3.5), method="plane", window=3)
    np.testing.assert_allclose(n[ok], np.broadcast_to([0.0, 0.0, -1.0], n[ok].shape), atol=1e-12)


def test_normals_are_invalid_next_to_missing_depth():
    depth = plane_depth(PLANE_N, -10.0, K, (16, 24))
    valid = np.ones_like(depth, dtype=bool)
    valid[8, 12] = False
    depth[8, 12] = 65535.0  # a sentinel that must not be used
    n, ok = normals_from_depth(depth, K, valid=valid, method="cross")
    assert not ok[8, 12] and not ok[7, 12] and not ok[9, 12] and not ok[8, 11] and not ok[8, 13]
    assert ok[7, 11]  # diagonal neighbours are not in the stencil
    n, ok = normals_from_depth(depth, K, valid=valid, method="plane", window=3)
    assert not ok[8, 12] and ok[7, 12]
    np.testing.assert_allclose(n[ok], np.broadcast_to(PLANE_N, n[ok].shape), atol=1e-9)


def test_normals_from_depth_rejects_bad_arguments():
    with pytest.raises(ValueError, match="method"):
        normals_from_depth(np.ones((4, 4)), K, method="sobel")
    with pytest.raises(ValueError, match="window"):
        normals_from_depth(np.ones((4, 4)), K, method="plane", window=4)


# -------------------------------------------------------------------------------------- edges
def test_canny_on_a_step_is_one_pixel_wide_at_the_step():
    img = np.zeros((20, 30))
    img[:, 13:] = 0.8
    edges = canny(img, sigma=1.0, low_threshold=0.05, high_threshold=0.1)
    cols = np.nonzero(edges.any(axis=0))[0]
    assert cols.tolist() in ([12], [13])  # one of the two pixels touching the step
    assert edges[1:-1, cols[0]].all() and edges.sum() == 18  # every row but the border rows
    # Low contrast: below the thresholds, nothing.
    assert not canny(img * 0.1, sigma=1.0, low_threshold=0.05, high_threshold=0.1).any()


def test_canny_hysteresis_keeps_weak_edges_only_when_linked_to_strong_ones():
    rows = np.arange(40, dtype=float)[:, None]
    contrast = 1.0 - 0.8 * rows / 39  # fades slowly from 1.0 (strong) to 0.2 (weak) down the image
    img = np.zeros((40, 30))
    img[:, 10:] = contrast  # edge A: strong at the top, weak at the bottom, one connected line
    img[:, 20:] += 0.3  # edge B: weak everywhere (gradient about 0.32 * 0.3 = 0.096)
    edges = canny(img, sigma=1.0, low_threshold=0.05, high_threshold=0.3)
    a_cols = np.nonzero(edges[:, 5:15].any(axis=0))[0] + 5
    assert a_cols.tolist() in ([9], [10])
    assert edges[1:-1, a_cols[0]].all()  # the weak bottom of edge A survives through the strong top
    assert not edges[:, 15:].any()  # edge B has no strong pixel: dropped
    loose = canny(img, sigma=1.0, low_threshold=0.05, high_threshold=0.08)
    assert loose[1:-1, 15:].any(axis=1).all()  # ... but kept once it counts as strong


def test_canny_circle_lies_on_the_circle():
    v, u = np.mgrid[0:64, 0:64]
    r = np.hypot(u - 31.5, v - 31.5)
    edges = canny((r < 20).astype(float), sigma=1.5, low_threshold=0.05, high_threshold=0.1)
    assert edges.sum() > 0.8 * 2 * np.pi * 20  # closed-ish thin curve
    assert np.abs(r[edges] - 20).max() <= 1.0


def test_label_boundaries_mark_both_sides_of_each_change():
    labels = np.array([[1, 1, 2], [1, 1, 2], [3, 3, 3]])
    instances = np.array([[0, 5, 0], [0, 5, 0], [0, 0, 0]])
    np.testing.assert_array_equal(
        label_boundaries(labels),
        [[False, True, True], [True, True, True], [True, True, True]],
    )
    both = label_boundaries(labels, instances)
    assert both[0, 0] and both[0, 1]  # the instance change inside class 1 is an edge too


# ------------------------------------------------------------------------------------ regions
def _flood_fill_regions(a: np.ndarray) -> int:
    """Independent count of 4-connected equal-value components."""
    seen = np.zeros(a.shape, bool)
    count = 0
    for start in np.ndindex(a.shape):
        if seen[start]:
            continue
        count += 1
        stack = [start]
        seen[start] = True
        while stack:
            i, j = stack.pop()
            for di, dj in ((1, 0), (-1, 0), (0, 1), (0, -1)):
                y, x = i + di, j + dj
                if 0 <= y < a.shape[0] and 0 <= x < a.shape[1] and not seen[y, x] and a[y, x] == a[i, j]:
                    seen[y, x] = True
                    stack.append((y, x))
    return count


@given(st.integers(1, 8), st.integers(1, 8), st.integers(1, 4), st.integers(0, 2**31 - 1))
@settings(max_examples=60, deadline=None)
def test_connected_regions_match_flood_fill(H, W, classes, seed):
    a = np.random.default_rng(seed).integers(0, classes, (H, W))
    regions = connected_regions(a)
    assert regions.dtype == np.int64
    assert regions.max() + 1 == len(np.unique(regions)) == _flood_fill_regions(a)
    assert regions.ravel()[0] == 0
    for r in np.unique(regions):
        inside = regions == r
        assert len(np.unique(a[inside])) == 1  # constant label
        assert ndimage.label(inside)[1] == 1  # connected


def test_resize_depth_accepts_a_channel_dimension():
    depth = torch.tensor([[[1.0, 1.0], [2.0, 2.0]]])
    out, ok = resize_depth(depth, (1, 1))
    assert out.shape == (1, 1, 1) and ok.shape == (1, 1)
    assert out.item() == pytest.approx(4 / 3)


def test_select_labels_rejects_strings_and_duplicates():
    from examples.datasets.base import select_labels

    with pytest.raises(TypeError, match=r"\['depth'\]"):
        select_labels("depth", available=("depth",), dataset="x")
    with pytest.raises(ValueError, match="duplicate"):
        select_labels(["depth", "depth"], available=("depth",), dataset="x")
    with pytest.raises(ValueError, match="empty"):
        select_labels([], available=("depth",), dataset="x")
