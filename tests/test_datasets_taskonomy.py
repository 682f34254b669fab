"""TaskonomyDataset on tiny fixtures in the release's exact formats and folder layouts."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader

from examples.datasets import TaskonomyDataset
from examples.datasets.prepare import main as prepare_main
from examples.datasets.regions import connected_regions
from label_merge import TLAM, LabelSpec
from tests.realdata_fixtures import taskonomy_view_arrays, write_png, write_taskonomy

VIEWS = [(0, 0), (3, 12)]


@pytest.fixture(scope="module")
def views():
    rng = np.random.default_rng(7)
    return {key: taskonomy_view_arrays(rng, size=8) for key in VIEWS}


@pytest.fixture(scope="module")
def building_first(tmp_path_factory, views):
    root = tmp_path_factory.mktemp("taskonomy_bf")
    write_taskonomy(
        root, layout="building-first", building="cauthron", views=views, semantic_spelling="segmentsemantic"
    )
    return root


@pytest.fixture(scope="module")
def domain_first(tmp_path_factory, views):
    root = tmp_path_factory.mktemp("taskonomy_df")
    write_taskonomy(root, layout="domain-first", building="cauthron", views=views, semantic_spelling="segment_semantic")
    return root


def test_decodes_every_label_at_native_resolution(building_first, views):
    ds = TaskonomyDataset(building_first, resolution=8)
    assert len(ds) == 2 and ds.layout == "building-first" and ds.buildings == ["cauthron"]
    s = ds[1]
    raw = views[VIEWS[1]]
    assert s["meta"] == {"building": "cauthron", "point": 3, "view": 12, "index": 1, "hflip": False}

    np.testing.assert_allclose(s["image"].numpy(), raw["rgb"].transpose(2, 0, 1) / 127.5 - 1, atol=1e-6)

    # depth: metres = raw / 512; 65535 missing.
    depth_raw = raw["depth_zbuffer"]
    valid = depth_raw != 65535
    assert s["labels"]["depth"].shape == (1, 8, 8) and s["labels"]["depth"].dtype == torch.float32
    np.testing.assert_array_equal(s["masks"]["depth"].numpy(), valid)
    np.testing.assert_allclose(s["labels"]["depth"][0].numpy()[valid], depth_raw[valid] / 512.0, rtol=1e-6)
    assert not s["masks"]["depth"][0, :3].any()

    # normal: 2 p / 255 - 1, unit length; (128, 128, 128) missing.
    n = raw["normal"].astype(np.float64) * 2 / 255 - 1
    n /= np.linalg.norm(n, axis=-1, keepdims=True)
    n_valid = ~np.all(raw["normal"] == 128, axis=-1)
    np.testing.assert_array_equal(s["masks"]["normal"].numpy(), n_valid)
    np.testing.assert_allclose(s["labels"]["normal"].numpy().transpose(1, 2, 0)[n_valid], n[n_valid], atol=1e-6)

    # edge_texture: raw / 65535.
    np.testing.assert_allclose(s["labels"]["edge"][0].numpy(), raw["edge_texture"] / 65535.0, rtol=1e-6)
    assert s["masks"]["edge"].all()

    # curvature: R, G -> 2 p / 254 - 1; (0, 0, 0) missing.
    c_valid = raw["principal_curvature"].any(axis=-1)
    np.testing.assert_array_equal(s["masks"]["curvature"].numpy(), c_valid)
    expected = raw["principal_curvature"][..., :2].transpose(2, 0, 1).astype(np.float64) * 2 / 254 - 1
    np.testing.assert_allclose(s["labels"]["curvature"].numpy()[:, c_valid], expected[:, c_valid], atol=1e-6)

    # semantic: half-resolution map upsampled by nearest (each id covers a 2x2 block); 0 ignored.
    sem = s["labels"]["semantic"]
    assert sem.dtype == torch.int64 and sem.shape == (8, 8)
    np.testing.assert_array_equal(sem.numpy(), np.kron(raw["segment_semantic"], np.ones((2, 2), np.uint8)))
    np.testing.assert_array_equal(s["masks"]["semantic"].numpy(), sem.numpy() != 0)

    # regions: connected components of the semantic map.
    np.testing.assert_array_equal(s["regions"].numpy(), connected_regions(sem.numpy()))


def test_both_layouts_and_semantic_spellings_give_identical_samples(building_first, domain_first, tmp_path, views):
    flat = tmp_path / "flat"
    write_taskonomy(flat, layout="domain-first-flat", building="cauthron", views=views)
    a = TaskonomyDataset(building_first, resolution=4)
    b = TaskonomyDataset(domain_first, resolution=4)
    c = TaskonomyDataset(flat, resolution=4)
    assert b.layout == c.layout == "domain-first"
    for i in range(2):
        sa, sb, sc = a[i], b[i], c[i]
        for other in (sb, sc):
            torch.testing.assert_close(sa["image"], other["image"])
            torch.testing.assert_close(sa["regions"], other["regions"])
            for name in a.labels:
                torch.testing.assert_close(sa["labels"][name], other["labels"][name])
                torch.testing.assert_close(sa["masks"][name], other["masks"][name])


def test_downsampling_uses_valid_pixels_only(building_first, views):
    s = TaskonomyDataset(building_first, resolution=4)[0]
    raw = views[VIEWS[0]]["depth_zbuffer"].astype(np.float64)
    valid = raw != 65535
    # Block (0, 0) holds two missing pixels: depth is the harmonic mean of the two valid ones.
    block = raw[:2, :2][valid[:2, :2]] / 512
    assert s["masks"]["depth"][0, 0]
    assert s["labels"]["depth"][0, 0, 0].item() == pytest.approx(len(block) / np.sum(1 / block), rel=1e-5)
    # The semantic map at 4x4 is the original half-resolution map.
    np.testing.assert_array_equal(s["labels"]["semantic"].numpy(), views[VIEWS[0]]["segment_semantic"])
    n = s["labels"]["normal"]
    np.testing.assert_allclose(n.norm(dim=0)[s["masks"]["normal"]].numpy(), 1.0, atol=1e-5)


def test_label_subset_specs_and_unknown_label(building_first):
    ds = TaskonomyDataset(building_first, labels=["curvature", "semantic"], resolution=4)
    assert ds.labels == ("semantic", "curvature")
    assert ds.label_specs == {
        "semantic": LabelSpec.categorical(18, ignore_index=0),
        # taskbank's curvature statistics, decoded to 1/m (see the dataset's label_specs).
        "curvature": LabelSpec.continuous(2, shift=(-0.90, -1.81), scale=(8.38, 5.68)),
    }
    s = ds[0]
    assert set(s["labels"]) == set(s["masks"]) == {"semantic", "curvature"}
    with pytest.raises(ValueError, match=r"unknown label\(s\) \['rgb'\].*valid labels are \['semantic', 'depth'"):
        TaskonomyDataset(building_first, labels=["rgb"])


def test_samples_feed_a_merger_through_a_dataloader(building_first):
    ds = TaskonomyDataset(building_first, resolution=4)
    batch = next(iter(DataLoader(ds, batch_size=2)))
    assert batch["image"].shape == (2, 3, 4, 4) and batch["meta"]["building"] == ["cauthron", "cauthron"]
    merger = TLAM(ds.label_specs, dim=8, depth=1, heads=2)
    out = merger(batch["labels"], batch["masks"])
    assert out.shape == (2, 8, 4, 4) and torch.isfinite(out).all()


def test_view_missing_a_domain_is_left_out_with_a_warning(tmp_path, views):
    write_taskonomy(tmp_path, layout="building-first", building="b1", views=views)
    (tmp_path / "b1" / "normal" / "point_3_view_12_domain_normal.png").unlink()
    with pytest.warns(UserWarning, match=r"left out 1 view.*point 3 view 12 has no \['normal'\]"):
        ds = TaskonomyDataset(tmp_path, resolution=4)
    assert len(ds) == 1
    # Without normals selected, the view is complete again.
    assert len(TaskonomyDataset(tmp_path, labels=["depth"], resolution=4)) == 2


def test_missing_folders_and_bad_files_are_named(tmp_path, views):
    with pytest.raises(FileNotFoundError, match=r"root folder not found.*nowhere"):
        TaskonomyDataset(tmp_path / "nowhere")
    write_taskonomy(tmp_path, layout="building-first", building="b1", views=views)
    with pytest.raises(FileNotFoundError, match=r"rgb.*building 'b2'.*b2/rgb"):
        TaskonomyDataset(tmp_path, buildings=["b2"])
    depth_png = tmp_path / "b1" / "depth_zbuffer" / "point_0_view_0_domain_depth_zbuffer.png"
    write_png(depth_png, np.zeros((8, 8), np.uint8))  # wrong bit depth
    ds = TaskonomyDataset(tmp_path, resolution=8)
    with pytest.raises(ValueError, match=r"point_0_view_0_domain_depth_zbuffer\.png.*16-bit"):
        ds[0]
    depth_png.write_bytes(b"\x89PNG\r\n\x1a\n" + b"\x00" * 10)  # corrupt
    with pytest.raises(ValueError, match=r"point_0_view_0_domain_depth_zbuffer\.png"):
        ds[0]
    semantic_png = tmp_path / "b1" / "segment_semantic" / "point_3_view_12_domain_segment_semantic.png"
    write_png(semantic_png, np.full((4, 4), 40, np.uint8))
    with pytest.raises(ValueError, match=r"point_3_view_12_domain_segment_semantic\.png.*0\.\.17.*40"):
        ds[1]
    import shutil

    shutil.rmtree(tmp_path / "b1" / "segment_semantic")
    with pytest.raises(FileNotFoundError, match=r"'semantic' folder.*region ids are derived from it"):
        TaskonomyDataset(tmp_path, labels=["depth"])


def test_prepare_matches_on_the_fly_and_is_used(domain_first, tmp_path):
    cache_dir = tmp_path / "cache"
    args = ["taskonomy", str(domain_first), "--resolution", "4", "--cache-dir", str(cache_dir), "--no-progress"]
    result = prepare_main(args)
    assert result.written == 2 and result.folder == cache_dir / "taskonomy" / "4x4"
    assert (result.folder / "recipe.json").is_file() and not (result.folder / "recipe.pending.json").exists()
    assert sorted(p.name for p in (result.folder / "cauthron").iterdir()) == [
        "point_0_view_0.npz",
        "point_3_view_12.npz",
    ]
    cached = TaskonomyDataset(domain_first, resolution=4, cache_dir=cache_dir)
    fresh = TaskonomyDataset(domain_first, resolution=4, cache_dir=cache_dir, use_cache=False)
    assert cached.use_cache and not fresh.use_cache
    for i in range(2):
        torch.testing.assert_close(cached[i]["regions"], fresh[i]["regions"])
    # The cache is really read: tamper with a file and see it.
    path = cached.cache.path(cached.sample_key(0))
    np.savez_compressed(path, regions=np.full((4, 4), 99, np.int64))
    assert (cached[0]["regions"] == 99).all()
    again = prepare_main(args)
    assert (again.written, again.skipped) == (0, 2)


def test_interrupted_prepare_is_not_used_and_resumes(domain_first, tmp_path, monkeypatch):
    from examples.datasets.prepare import prepare_cache

    ds = TaskonomyDataset(domain_first, resolution=4, cache_dir=tmp_path, use_cache=False)
    original = ds.compute_derived

    def fail_on_second(index, *, keys=None):
        if index == 1:
            raise KeyboardInterrupt
        return original(index, keys=keys)

    monkeypatch.setattr(ds, "compute_derived", fail_on_second)
    with pytest.raises(KeyboardInterrupt):
        prepare_cache(ds, progress=False)
    folder = ds.cache.folder
    assert (folder / "recipe.pending.json").is_file() and not (folder / "recipe.json").exists()
    assert not TaskonomyDataset(domain_first, resolution=4, cache_dir=tmp_path).use_cache  # unfinished: unused
    assert not list(folder.rglob("*.tmp"))  # no half-written files
    monkeypatch.undo()
    result = prepare_cache(TaskonomyDataset(domain_first, resolution=4, cache_dir=tmp_path), progress=False)
    assert (result.written, result.skipped) == (1, 1)
    assert TaskonomyDataset(domain_first, resolution=4, cache_dir=tmp_path).use_cache


@pytest.mark.parametrize(
    ("domain", "array"),
    [
        ("depth_zbuffer", np.full((4, 4), 1000, np.uint16)),
        ("depth_zbuffer", np.full((8, 5), 1000, np.uint16)),
        ("normal", np.full((8, 4, 3), 200, np.uint8)),
        ("edge_texture", np.zeros((16, 16), np.uint16)),
        ("principal_curvature", np.full((7, 8, 3), 100, np.uint8)),
        ("segment_semantic", np.ones((3, 3), np.uint8)),  # not an integer fraction of 8x8
        ("segment_semantic", np.ones((4, 8), np.uint8)),  # another aspect ratio
    ],
)
def test_a_label_of_another_size_than_its_image_is_refused(tmp_path, views, domain, array):
    write_taskonomy(tmp_path, layout="building-first", building="b1", views=views)
    label = tmp_path / "b1" / domain / f"point_0_view_0_domain_{domain}.png"
    write_png(label, array)
    ds = TaskonomyDataset(tmp_path, resolution=8, use_cache=False)
    h, w = array.shape[:2]
    with pytest.raises(
        ValueError, match=rf"{label.name} is {h}x{w} \(HxW\) but its image .*point_0_view_0_domain_rgb\.png is 8x8"
    ):
        ds[0]
    ds[1]  # the other view is fine


def test_semantics_at_an_integer_fraction_of_the_image_size_are_accepted(tmp_path, views):
    write_taskonomy(tmp_path, layout="building-first", building="b1", views=views)
    write_png(
        tmp_path / "b1" / "segment_semantic" / "point_0_view_0_domain_segment_semantic.png", np.ones((2, 2), np.uint8)
    )
    assert (TaskonomyDataset(tmp_path, resolution=8, labels=["semantic"])[0]["labels"]["semantic"] == 1).all()
