"""CityscapesDataset on tiny fixtures in the official package's exact formats."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from scipy import ndimage

from examples.datasets import CityscapesDataset, RandomHorizontalFlip
from examples.datasets.cityscapes import decode_disparity, disparity_to_depth, read_camera
from examples.datasets.cityscapes_labels import LABEL_NAMES, TRAIN_NAMES, train_id_lut
from examples.datasets.edges import canny
from examples.datasets.prepare import main as prepare_main
from examples.datasets.transforms import Intrinsics, resize_rgb, rgb_tensor_to_gray
from label_merge import LabelSpec
from tests.realdata_fixtures import cityscapes_camera, write_cityscapes_frame, write_png

H, W = 16, 32
# A tiny image has a tiny focal length; a wide baseline keeps disparities (about 20 px) large enough
# that the 1/256 px quantisation of the PNG stays negligible, as it is for the real 2048x1024 images.
BASELINE, FX, FY, U0, V0 = 5.0, 40.0, 41.0, 15.7, 7.4
PLANE_N = np.array([0.3, -0.5, -1.0]) / np.linalg.norm([0.3, -0.5, -1.0])


def plane_disparity_png() -> np.ndarray:
    """16-bit disparity PNG values of the plane n . P = -10 (p = 256 d + 1)."""
    v, u = np.mgrid[0:H, 0:W].astype(np.float64)
    rays = np.stack(((u - U0) / FX, (v - V0) / FY, np.ones_like(u)), -1)
    depth = -10.0 / (rays @ PLANE_N)
    return np.round(BASELINE * FX / depth * 256 + 1).astype(np.uint16)


def frame_arrays(rng):
    image = np.zeros((H, W, 3), np.uint8)
    image[:, 12:] = 220  # one vertical step: a Canny edge
    label_ids = rng.integers(3, 34, (H, W)).astype(np.uint8)
    label_ids[-2:, :] = 1  # ego vehicle
    label_ids[:, 0] = 2  # rectification border
    label_ids[0, 1:4] = [0, 7, 26]
    instance_ids = np.full((H, W), 7, np.uint16)
    instance_ids[:4, :4], instance_ids[4:8, :4], instance_ids[8:, :4], instance_ids[:, -3:] = 26000, 26001, 24000, 0
    disparity = plane_disparity_png()
    disparity[5, 20] = 0  # invalid
    disparity[6, 20] = 1  # zero disparity: invalid too
    return {"image": image, "label_ids": label_ids, "instance_ids": instance_ids, "disparity": disparity}


@pytest.fixture(scope="module")
def city(tmp_path_factory):
    root = tmp_path_factory.mktemp("cityscapes")
    rng = np.random.default_rng(3)
    frames = []
    for frame in (19, 20):
        arrays = frame_arrays(rng)
        camera = cityscapes_camera(baseline=BASELINE, fx=FX, fy=FY, u0=U0, v0=V0)
        write_cityscapes_frame(root, split="train", city="aachen", seq=0, frame=frame, camera=camera, **arrays)
        frames.append(arrays)
    return root, frames


def angle_deg(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return np.degrees(np.arccos(np.clip(np.sum(a * b, axis=-1), -1, 1)))


def test_disparity_to_depth_follows_the_official_rule():
    raw = np.array([[0, 1, 2, 257, 2561]], np.uint16)
    d, ok = decode_disparity(raw)
    np.testing.assert_allclose(d, [[0, 0, 1 / 256, 1.0, 10.0]])
    assert ok.tolist() == [[False, False, True, True, True]]
    depth, ok = disparity_to_depth(d, ok, baseline=0.2, fx=2000.0)
    np.testing.assert_allclose(depth, [[0, 0, 0.2 * 2000 * 256, 400.0, 40.0]])


def test_camera_json(city, tmp_path):
    root, _ = city
    cam = read_camera(root / "camera/train/aachen/aachen_000000_000019_camera.json")
    assert cam.baseline == BASELINE and cam.intrinsics == Intrinsics(FX, FY, U0, V0)
    bad = tmp_path / "x_camera.json"
    bad.write_text(json.dumps({"extrinsic": {"baseline": 0.2}, "intrinsic": {"fx": 1.0, "fy": 1.0, "u0": 1.0}}))
    with pytest.raises(ValueError, match=r"x_camera\.json.*\['v0'\]"):
        read_camera(bad)


def test_native_resolution_decoding(city):
    root, frames = city
    ds = CityscapesDataset(root, split="train", resolution=(H, W), use_cache=False)
    assert len(ds) == 2
    s = ds[0]
    raw = frames[0]
    assert s["meta"]["city"] == "aachen" and s["meta"]["stem"] == "aachen_000000_000019"
    np.testing.assert_allclose(s["meta"]["intrinsics"].numpy(), [FX, FY, U0, V0], rtol=1e-6)

    # semantic: label ids as stored, 35 classes, nothing ignored.
    np.testing.assert_array_equal(s["labels"]["semantic"].numpy(), raw["label_ids"])
    assert s["masks"]["semantic"].all() and ds.label_specs["semantic"] == LabelSpec.categorical(35)

    # regions: instance ids as stored (values above 32767 must not wrap).
    np.testing.assert_array_equal(s["regions"].numpy(), raw["instance_ids"])

    # depth = baseline * fx / ((p - 1) / 256); p <= 1, ego vehicle and border are missing.
    p = raw["disparity"].astype(np.float64)
    valid = (p > 1) & ~np.isin(raw["label_ids"], [1, 2])
    np.testing.assert_array_equal(s["masks"]["depth"].numpy(), valid)
    np.testing.assert_allclose(s["labels"]["depth"][0].numpy()[valid], BASELINE * FX * 256 / (p[valid] - 1), rtol=1e-6)
    assert not s["masks"]["depth"][5, 20] and not s["masks"]["depth"][6, 20]

    # normals of the plane: its normal, up to the 1/256 px disparity quantisation.
    n = s["labels"]["normal"].numpy().transpose(1, 2, 0)
    ok = s["masks"]["normal"].numpy()
    assert ok.sum() > 0.5 * ok.size and not ok[-1].any()
    assert angle_deg(n[ok], PLANE_N).max() < 0.2

    # edge: Canny finds the vertical step, one pixel wide.
    edge = s["labels"]["edge"][0].numpy()
    assert set(np.unique(edge)) <= {0.0, 1.0}
    assert np.nonzero(edge.any(axis=0))[0].tolist() in ([11], [12])


def test_train_ids_and_half_resolution(city):
    root, frames = city
    ds = CityscapesDataset(root, resolution=(H // 2, W // 2), train_ids=True, use_cache=False)
    s = ds[0]
    assert ds.label_specs["semantic"] == LabelSpec.categorical(19, ignore_index=255)
    ids = frames[0]["label_ids"][1::2, 1::2]  # nearest picks the second pixel of each 2x2 block
    expected = train_id_lut()[ids]
    np.testing.assert_array_equal(s["labels"]["semantic"].numpy(), expected)
    np.testing.assert_array_equal(s["masks"]["semantic"].numpy(), expected != 255)
    assert train_id_lut()[[0, 7, 26]].tolist() == [255, 0, 13]
    assert TRAIN_NAMES[13] == "car" and LABEL_NAMES[26] == "car" and len(TRAIN_NAMES) == 19
    # Intrinsics follow the resize; the plane's normals are still right (disparity is area-averaged).
    k = s["meta"]["intrinsics"].numpy()
    np.testing.assert_allclose(k, [FX / 2, FY / 2, (U0 + 0.5) / 2 - 0.5, (V0 + 0.5) / 2 - 0.5], rtol=1e-6)
    n = s["labels"]["normal"].numpy().transpose(1, 2, 0)
    ok = s["masks"]["normal"].numpy()
    assert ok.sum() > 0.3 * ok.size
    # Where every native pixel under the 5x5 plane-fit window is valid, the plane is exact; next to
    # holes a block averages only its valid pixels, which shifts its sample point a little.
    raw = frames[0]
    native_valid = (raw["disparity"] > 1) & ~np.isin(raw["label_ids"], [1, 2])
    block_valid = native_valid.reshape(H // 2, 2, W // 2, 2).all(axis=(1, 3))
    clean = ndimage.binary_erosion(block_valid, np.ones((5, 5)), border_value=0)
    assert clean.sum() >= 10
    assert angle_deg(n[clean], PLANE_N).max() < 0.1
    assert angle_deg(n[ok], PLANE_N).max() < 3.0
    # Edges are computed on the resized image.
    img = resize_rgb(frames[0]["image"], (H // 2, W // 2))
    np.testing.assert_array_equal(
        s["labels"]["edge"][0].numpy(),
        canny(rgb_tensor_to_gray(img), sigma=1.0, low_threshold=0.03, high_threshold=0.06),
    )


def test_hflip_transform_keeps_normals_consistent(city):
    root, _ = city
    plain = CityscapesDataset(root, labels=["normal"], resolution=(H, W), use_cache=False)[0]
    flipped = CityscapesDataset(
        root, labels=["normal"], resolution=(H, W), use_cache=False, transform=RandomHorizontalFlip(p=1.0)
    )[0]
    mirrored = PLANE_N * [-1, 1, 1]
    ok = flipped["masks"]["normal"].numpy()
    assert angle_deg(flipped["labels"]["normal"].numpy().transpose(1, 2, 0)[ok], mirrored).max() < 1.0
    assert flipped["meta"]["intrinsics"][2].item() == pytest.approx(W - 1 - U0)
    torch.testing.assert_close(flipped["regions"], plain["regions"].flip(-1))


def test_missing_and_bad_files_are_named(city, tmp_path):
    root, frames = city
    with pytest.raises(FileNotFoundError, match=r"leftImg8bit/val.*splits present: \['train'\]"):
        CityscapesDataset(root, split="val")
    import shutil

    copy = tmp_path / "cs"
    shutil.copytree(root, copy)
    cam = copy / "camera/train/aachen/aachen_000000_000020_camera.json"
    cam.unlink()
    with pytest.raises(FileNotFoundError, match=r"camera file missing for 1 of 2.*aachen_000000_000020_camera\.json"):
        CityscapesDataset(copy)
    assert len(CityscapesDataset(copy, labels=["semantic", "edge"])) == 2  # no camera needed
    write_png(copy / "disparity/train/aachen/aachen_000000_000019_disparity.png", np.zeros((H, W), np.uint8))
    cam.write_text("{}")
    ds = CityscapesDataset(copy, labels=["depth"], use_cache=False)
    with pytest.raises(ValueError, match=r"aachen_000000_000019_disparity\.png.*16-bit"):
        ds[0]
    with pytest.raises(ValueError, match=r"aachen_000000_000020_camera\.json.*missing section 'extrinsic'"):
        ds[1]
    bad_ids = frames[0]["label_ids"].copy()
    bad_ids[0, 0] = 40
    write_png(copy / "gtFine/train/aachen/aachen_000000_000019_gtFine_labelIds.png", bad_ids)
    with pytest.raises(ValueError, match=r"aachen_000000_000019_gtFine_labelIds\.png.*0\.\.33.*40"):
        CityscapesDataset(copy, labels=["semantic"])[0]


def test_prepare_matches_on_the_fly(city, tmp_path):
    root, _ = city
    cache_dir = tmp_path / "cache"
    half = (H // 2, W // 2)
    args = ["cityscapes", str(root), "--resolution", str(half[0]), str(half[1]), "--cache-dir", str(cache_dir)]
    result = prepare_main([*args, "--no-progress"])
    assert result.written == 2
    assert (result.folder / "train/aachen/aachen_000000_000019.npz").is_file()
    cached = CityscapesDataset(root, resolution=half, cache_dir=cache_dir)
    fresh = CityscapesDataset(root, resolution=half, cache_dir=cache_dir, use_cache=False)
    assert cached.use_cache
    for i in range(2):
        a, b = cached[i], fresh[i]
        for name in cached.labels:
            torch.testing.assert_close(a["labels"][name], b["labels"][name], rtol=0, atol=0)
            torch.testing.assert_close(a["masks"][name], b["masks"][name])
    # Other parameters: the cache is refused with a message naming the recipe file...
    with pytest.raises(ValueError, match=r"recipe\.json.*other parameters"):
        CityscapesDataset(root, resolution=half, cache_dir=cache_dir, canny_high=0.2)
    # ... and prepare replaces it only when asked to.
    with pytest.raises(ValueError, match=r"recipe\.json"):
        prepare_main([*args, "--canny-high", "0.2", "--no-progress"])
    redone = prepare_main([*args, "--canny-high", "0.2", "--overwrite", "--no-progress"])
    assert redone.written == 2
    assert CityscapesDataset(root, resolution=half, cache_dir=cache_dir, canny_high=0.2).use_cache


@pytest.mark.parametrize(
    ("kind", "shape", "labels"),
    [
        ("gtFine_labelIds", (H // 2, W // 2), ["semantic"]),
        ("gtFine_labelIds", (H // 2, W // 2), ["depth"]),  # depth masks the ego vehicle by label id
        ("disparity", (H // 2, W // 2), ["depth"]),
        ("disparity", (H, W // 2), ["normal"]),
        ("gtFine_instanceIds", (5, 7), ["edge"]),
    ],
)
def test_a_label_of_another_size_than_its_image_is_refused(city, tmp_path, kind, shape, labels):
    import shutil

    root, frames = city
    copy = tmp_path / "cs"
    shutil.copytree(root, copy)
    label = copy / f"{kind.split('_')[0]}/train/aachen/aachen_000000_000019_{kind}.png"
    dtype = np.uint8 if kind == "gtFine_labelIds" else np.uint16
    write_png(label, np.full(shape, 7 if kind != "disparity" else 5000, dtype))
    ds = CityscapesDataset(copy, labels=labels, use_cache=False)
    h, w = shape
    with pytest.raises(
        ValueError,
        match=rf"{label.name} is {h}x{w} \(HxW\) but its image .*aachen_000000_000019_leftImg8bit\.png is {H}x{W}",
    ):
        ds[0]
    ds[1]  # the other frame is fine
