"""NYUDepthV2Dataset on a tiny v7.3 .mat written the way MATLAB stores the labeled file."""

from __future__ import annotations

from collections import Counter

import h5py
import numpy as np
import pytest
import scipy.io
import torch

from examples.datasets import NYUDepthV2Dataset
from examples.datasets.edges import label_boundaries
from examples.datasets.nyu import NYU_RGB_INTRINSICS, read_nyu_splits
from examples.datasets.nyu_classes import MAP_40_TO_13, MAP_894_TO_40, NYU13_NAMES, NYU40_NAMES, lookup_table
from examples.datasets.prepare import main as prepare_main
from label_merge import LabelSpec
from tests.realdata_fixtures import MATLAB_HEADER, write_nyu_mat, write_nyu_splits

N, H, W = 3, 12, 16
PLANE_N = np.array([0.3, -0.5, -1.0]) / np.linalg.norm([0.3, -0.5, -1.0])
NAMES = ["book", "bottle", "cabinet", "ceiling", "chair"] + [f"class{i}" for i in range(6, 895)]


def plane_depth(size) -> np.ndarray:
    """z-depth of the plane n . P = -3 through the NYU RGB camera scaled to ``size``."""
    k = NYU_RGB_INTRINSICS.resized(from_size=(480, 640), to_size=size)
    v, u = np.mgrid[0 : size[0], 0 : size[1]].astype(np.float64)
    rays = np.stack(((u - k.cx) / k.fx, (v - k.cy) / k.fy, np.ones_like(u)), -1)
    return -3.0 / (rays @ PLANE_N)


@pytest.fixture(scope="module")
def nyu(tmp_path_factory):
    root = tmp_path_factory.mktemp("nyu")
    rng = np.random.default_rng(5)
    arrays = {
        "images": rng.integers(0, 256, (N, H, W, 3)).astype(np.uint8),
        "depths": np.stack([plane_depth((H, W))] * N).astype(np.float32),
        "labels": rng.integers(0, 895, (N, H, W)).astype(np.uint16),
        "instances": rng.integers(0, 4, (N, H, W)).astype(np.uint8),
    }
    arrays["labels"][0, :2, :2] = [[0, 3], [4, 21]]
    write_nyu_mat(root / "nyu_depth_v2_labeled.mat", names=NAMES, **arrays)
    write_nyu_splits(root / "splits.mat", train=[3, 1], test=[2])
    return root, arrays


def test_fixture_is_a_v73_mat_that_scipy_refuses(nyu):
    root, _ = nyu
    path = root / "nyu_depth_v2_labeled.mat"
    assert path.read_bytes()[:128] == MATLAB_HEADER
    with pytest.raises(NotImplementedError):
        scipy.io.loadmat(path)
    with h5py.File(path, "r") as f:
        assert f["images"].shape == (N, 3, W, H) and f["depths"].shape == (N, W, H)


def test_class_tables_match_the_published_mapping():
    assert len(MAP_894_TO_40) == 894 and set(MAP_894_TO_40) == set(range(1, 41))
    counts = Counter(MAP_894_TO_40)
    assert all(counts[c] == 1 for c in range(1, 38)) and (counts[38], counts[39], counts[40]) == (68, 82, 707)
    assert MAP_894_TO_40[:5] == (40, 40, 3, 22, 5)  # book, bottle, cabinet, ceiling, chair
    assert len(NYU40_NAMES) == 40 and len(NYU13_NAMES) == 13 and len(MAP_40_TO_13) == 40
    same_name = {
        "wall": "wall",
        "floor": "floor",
        "bed": "bed",
        "chair": "chair",
        "sofa": "sofa",
        "table": "table",
        "window": "window",
        "books": "books",
        "ceiling": "ceiling",
        "picture": "picture",
        "television": "tv",
        "cabinet": "furniture",
        "lamp": "objects",
    }
    for name40, name13 in same_name.items():
        assert NYU13_NAMES[MAP_40_TO_13[NYU40_NAMES.index(name40)] - 1] == name13
    lut13 = lookup_table(13)
    assert lut13[0] == 0 and set(lut13[1:]) <= set(range(1, 14))


def test_transposes_split_and_values(nyu):
    root, arrays = nyu
    ds = NYUDepthV2Dataset(root, split="train", resolution=(H, W))
    assert len(ds) == 2 and [ds[i]["meta"]["index"] for i in range(2)] == [3, 1]
    s = ds[1]  # image 1 (1-based) = arrays[0]
    np.testing.assert_allclose(s["image"].numpy(), arrays["images"][0].transpose(2, 0, 1) / 127.5 - 1, atol=1e-6)
    np.testing.assert_allclose(s["labels"]["depth"][0].numpy(), arrays["depths"][0], rtol=1e-6)
    assert s["masks"]["depth"].all()
    raw = arrays["labels"][0].astype(np.int64)
    expected = np.concatenate([[0], MAP_894_TO_40])[raw]
    np.testing.assert_array_equal(s["labels"]["semantic"].numpy(), expected)
    assert s["labels"]["semantic"][:2, :2].tolist() == [[0, 3], [22, 1]]  # void, cabinet, ceiling, wall
    np.testing.assert_array_equal(s["masks"]["semantic"].numpy(), raw != 0)
    np.testing.assert_array_equal(s["regions"].numpy(), raw * 1000 + arrays["instances"][0])
    edge = label_boundaries(raw, arrays["instances"][0].astype(np.int64))
    np.testing.assert_array_equal(s["labels"]["edge"][0].numpy(), edge.astype(np.float32))
    np.testing.assert_allclose(
        s["meta"]["intrinsics"].numpy(),
        [
            NYU_RGB_INTRINSICS.fx * W / 640,
            NYU_RGB_INTRINSICS.fy * H / 480,
            (NYU_RGB_INTRINSICS.cx + 0.5) * W / 640 - 0.5,
            (NYU_RGB_INTRINSICS.cy + 0.5) * H / 480 - 0.5,
        ],
        rtol=1e-6,
    )
    assert ds.label_specs["semantic"] == LabelSpec.categorical(41, ignore_index=0)
    test = NYUDepthV2Dataset(root, split="test", resolution=(H, W))
    assert len(test) == 1 and test[0]["meta"]["index"] == 2
    assert len(NYUDepthV2Dataset(root / "nyu_depth_v2_labeled.mat", split="all")) == N


@pytest.mark.parametrize("size", [(H, W), (H // 2, W // 2)])
def test_normals_of_a_plane(nyu, size):
    root, _ = nyu
    s = NYUDepthV2Dataset(root, split="all", labels=["normal"], resolution=size)[0]
    n = s["labels"]["normal"].numpy().transpose(1, 2, 0)
    ok = s["masks"]["normal"].numpy()
    assert ok.all()  # dense depth: the plane fit is valid everywhere, borders included
    np.testing.assert_allclose(n[ok], np.broadcast_to(PLANE_N, n[ok].shape), atol=1e-4)


def test_class_sets(nyu):
    root, arrays = nyu
    raw = arrays["labels"][0].astype(np.int64)
    s13 = NYUDepthV2Dataset(root, split="all", labels=["semantic"], classes=13, resolution=(H, W))
    np.testing.assert_array_equal(s13[0]["labels"]["semantic"].numpy(), lookup_table(13)[raw])
    assert s13.label_specs["semantic"] == LabelSpec.categorical(14, ignore_index=0)
    s894 = NYUDepthV2Dataset(root, split="all", labels=["semantic"], classes=894, resolution=(H, W))
    np.testing.assert_array_equal(s894[0]["labels"]["semantic"].numpy(), raw)
    assert s894.class_names()[:3] == ("book", "bottle", "cabinet") and len(s894.class_names()) == 894
    with pytest.raises(ValueError, match="classes must be 13, 40 or 894"):
        NYUDepthV2Dataset(root, classes=37)


def test_missing_files_and_datasets_are_named(nyu, tmp_path):
    root, arrays = nyu
    with pytest.raises(FileNotFoundError, match=r"nyu_depth_v2_labeled\.mat.*horatio"):
        NYUDepthV2Dataset(tmp_path, split="all")
    write_nyu_mat(tmp_path / "nyu_depth_v2_labeled.mat", names=NAMES, **arrays)
    with pytest.raises(FileNotFoundError, match=r"splits\.mat.*indoor_seg_sup/splits\.mat.*split='all'"):
        NYUDepthV2Dataset(tmp_path, split="train")
    partial = tmp_path / "partial" / "nyu_depth_v2_labeled.mat"
    write_nyu_mat(partial, names=NAMES, skip=("instances", "names"), **arrays)
    with pytest.raises(
        ValueError, match=r"partial/nyu_depth_v2_labeled\.mat.*missing dataset\(s\) \['instances', 'names'\]"
    ):
        NYUDepthV2Dataset(partial, split="all")
    v5 = tmp_path / "v5" / "nyu_depth_v2_labeled.mat"
    v5.parent.mkdir()
    scipy.io.savemat(v5, {"depths": arrays["depths"]})
    with pytest.raises(ValueError, match=r"v5/nyu_depth_v2_labeled\.mat is not an HDF5"):
        NYUDepthV2Dataset(v5, split="all")
    few = tmp_path / "few" / "nyu_depth_v2_labeled.mat"
    write_nyu_mat(few, names=NAMES[:10], **arrays)
    with pytest.raises(ValueError, match=r"'names' lists 10 classes"):
        NYUDepthV2Dataset(few, split="all")
    bad_split = write_nyu_splits(tmp_path / "bad_splits.mat", train=[1, 2], test=[2])
    with pytest.raises(ValueError, match="overlap"):
        read_nyu_splits(bad_split, num_images=N)
    out_of_range = write_nyu_splits(tmp_path / "oor.mat", train=[1, 9], test=[2])
    with pytest.raises(ValueError, match=r"oor\.mat.*1\.\.3"):
        read_nyu_splits(out_of_range, num_images=N)


def test_pickles_for_dataloader_workers(nyu):
    import pickle

    root, _ = nyu
    ds = NYUDepthV2Dataset(root, split="all", resolution=(H // 2, W // 2))
    first = ds[0]
    clone = pickle.loads(pickle.dumps(ds))
    torch.testing.assert_close(clone[0]["labels"]["depth"], first["labels"]["depth"])


def test_prepare_matches_on_the_fly(nyu, tmp_path):
    root, _ = nyu
    result = prepare_main(
        ["nyu", str(root), "--resolution", str(H // 2), str(W // 2), "--cache-dir", str(tmp_path), "--no-progress"]
    )
    assert result.written == N and (result.folder / "0001.npz").is_file()
    cached = NYUDepthV2Dataset(root, split="all", resolution=(H // 2, W // 2), cache_dir=tmp_path)
    fresh = NYUDepthV2Dataset(root, split="all", resolution=(H // 2, W // 2), cache_dir=tmp_path, use_cache=False)
    assert cached.use_cache
    for i in range(N):
        a, b = cached[i], fresh[i]
        for name in cached.labels:
            torch.testing.assert_close(a["labels"][name], b["labels"][name], rtol=0, atol=0)
            torch.testing.assert_close(a["masks"][name], b["masks"][name])
