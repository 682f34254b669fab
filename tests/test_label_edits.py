"""The studio's label edits: plain functions on labels and masks dicts, and their undo history."""

import numpy as np
import pytest
import torch

from examples.datasets import SyntheticDataset
from examples.datasets.procedural import CLASS_IDS
from examples.label_edits import (
    EditHistory,
    brush_mask,
    drop_label,
    erase,
    object_mask,
    paint_class,
    remove_object,
    restore,
    shift_depth,
)
from examples.label_insert import CameraPose, insert_primitive
from label_merge import TLAM, LabelSpec

SPECS = {
    "semantic": LabelSpec.categorical(9),
    "depth": LabelSpec.continuous(1),
    "normal": LabelSpec.continuous(3),
}


def scene(H=8, W=10, seed=0):
    g = torch.Generator().manual_seed(seed)
    labels = {
        "semantic": torch.randint(0, 9, (H, W), generator=g),
        "depth": torch.rand(1, H, W, generator=g) * 4 + 1,
        "normal": torch.nn.functional.normalize(torch.randn(3, H, W, generator=g), dim=0),
    }
    masks = {name: torch.rand(H, W, generator=g) > 0.2 for name in labels}
    return labels, masks


def copies(labels, masks):
    return {k: v.clone() for k, v in labels.items()}, {k: v.clone() for k, v in masks.items()}


def assert_same(a, b):
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), k


@pytest.mark.parametrize("edit", ["erase", "restore", "paint", "shift", "remove", "drop"])
def test_edits_leave_their_inputs_alone_and_nothing_outside_the_region(edit):
    labels, masks = scene()
    kept_labels, kept_masks = copies(labels, masks)
    region = brush_mask((8, 10), (3, 4), 2)
    original_labels, original_masks = scene(seed=1)
    new_labels, new_masks = {
        "erase": lambda: erase(labels, masks, "depth", region),
        "restore": lambda: restore(
            labels, masks, "depth", region, original_labels=original_labels, original_masks=original_masks
        ),
        "paint": lambda: paint_class(labels, masks, region, 7),
        "shift": lambda: shift_depth(labels, masks, region, 0.5),
        "remove": lambda: remove_object(labels, masks, region),
        "drop": lambda: drop_label(labels, masks, "normal"),
    }[edit]()
    assert_same(labels, kept_labels)
    assert_same(masks, kept_masks)
    outside = ~region if edit != "drop" else torch.ones_like(region)
    for name in labels:
        if edit == "drop" and name == "normal":
            continue
        assert torch.equal(new_labels[name][..., outside], labels[name][..., outside]), name
        assert torch.equal(new_masks[name][outside], masks[name][outside]), name


def test_erase_makes_the_label_missing_under_the_brush_only():
    labels, masks = scene()
    region = brush_mask((8, 10), (4, 5), 1.5)
    new_labels, new_masks = erase(labels, masks, "depth", region)
    assert not new_masks["depth"][region].any()
    assert torch.equal(new_masks["semantic"], masks["semantic"])
    assert torch.equal(new_labels["depth"], labels["depth"])  # values kept, for restore


def test_restore_brings_back_the_original_exactly():
    labels, masks = scene()
    everything = torch.ones(8, 10, dtype=torch.bool)
    edited = remove_object(labels, masks, everything)  # zeroes values too
    edited = erase(*edited, "depth", everything)
    back_labels, back_masks = restore(*edited, "depth", everything, original_labels=labels, original_masks=masks)
    assert torch.equal(back_labels["depth"], labels["depth"]) and torch.equal(back_masks["depth"], masks["depth"])
    assert not back_masks["normal"].any()  # only the restored label comes back


def test_paint_class_and_shift_depth_values():
    labels, masks = scene()
    region = brush_mask((8, 10), (0, 0), 2)
    painted_labels, painted_masks = paint_class(labels, masks, region, 4)
    assert (painted_labels["semantic"][region] == 4).all() and painted_masks["semantic"][region].all()
    pushed, _ = shift_depth(labels, masks, region, 0.75)
    present = region & masks["depth"]
    assert torch.allclose(pushed["depth"][0][present], labels["depth"][0][present] + 0.75)
    assert torch.equal(pushed["depth"][0][region & ~masks["depth"]], labels["depth"][0][region & ~masks["depth"]])
    pulled, _ = shift_depth(labels, masks, region, -100.0)
    assert (pulled["depth"][0][present] > 0).all()  # never behind the camera


def test_object_mask_uses_regions_or_connected_classes():
    semantic = torch.tensor([[1, 1, 0, 1], [0, 1, 0, 1]])
    by_class = object_mask((0, 0), regions=None, semantic=semantic)
    assert by_class.int().tolist() == [[1, 1, 0, 0], [0, 1, 0, 0]]  # the other 1s are not connected
    regions = torch.tensor([[5, 5, 0, 5], [0, 5, 0, 5]])
    assert object_mask((0, 0), regions=regions, semantic=semantic).sum() == 5


def test_history_undoes_every_edit_in_order():
    labels, masks = scene()
    history = EditHistory(labels, masks)
    history.apply(*erase(*history.current, "depth", brush_mask((8, 10), (2, 2), 2)), description="a")
    history.apply(*drop_label(*history.current, "semantic"), description="b")
    assert history.descriptions == ["a", "b"]
    assert history.undo() == "b" and history.current[1]["semantic"].equal(masks["semantic"])
    history.reset()
    assert_same(history.current[1], masks)
    assert history.undo() is None


@pytest.mark.parametrize(
    "call, pattern",
    [
        (lambda lab, m: erase(lab, m, "height", brush_mask((8, 10), (0, 0), 1)), "no label 'height'"),
        (lambda lab, m: erase(lab, m, "depth", torch.ones(8, 9, dtype=torch.bool)), r"shape \(8, 10\)"),
        (lambda lab, m: paint_class(lab, m, brush_mask((8, 10), (0, 0), 1), 2, name="depth"), "class map"),
        (lambda lab, m: paint_class(lab, m, brush_mask((8, 10), (0, 0), 1), -1), "non-negative"),
        (lambda lab, m: brush_mask((8, 10), (0, 0), -1), "radius"),
    ],
)
def test_bad_edits_say_what_was_wrong(call, pattern):
    with pytest.raises(ValueError, match=pattern):
        call(*scene())


@pytest.mark.parametrize("drop", ["zero", "exclude"])
def test_a_value_at_an_erased_position_never_reaches_the_image(drop):
    """Erasing keeps the values; whatever they are (even NaN or inf), the concept is the same."""
    torch.manual_seed(0)
    merger = TLAM(SPECS, dim=16, depth=1, heads=2, drop=drop).eval()
    labels, masks = scene()
    region = brush_mask((8, 10), (4, 4), 3)
    edited_labels, edited_masks = erase(labels, masks, "depth", region)
    edited_labels, edited_masks = erase(edited_labels, edited_masks, "normal", region)
    poisoned = dict(edited_labels)
    poisoned["depth"] = edited_labels["depth"].masked_fill(region, float("nan"))
    poisoned["normal"] = edited_labels["normal"].masked_fill(region.expand(3, -1, -1), float("inf"))
    batch = lambda d: {k: v[None] for k, v in d.items()}  # noqa: E731
    with torch.no_grad():
        clean = merger(batch(edited_labels), batch(edited_masks))
        dirty = merger(batch(poisoned), batch(edited_masks))
    assert torch.isfinite(dirty).all()
    assert torch.equal(clean, dirty)


def synthetic_scene():
    sample = SyntheticDataset(1, resolution=48, seed=7)[0]
    camera = CameraPose(sample["meta"]["intrinsics"].numpy(), sample["meta"]["camera_to_world"].numpy())
    return sample, camera


@pytest.mark.parametrize("kind", ["sphere", "box", "cylinder"])
def test_inserted_primitives_have_consistent_labels(kind):
    sample, camera = synthetic_scene()
    labels, masks, visible = insert_primitive(
        sample["labels"], sample["masks"], kind, (40, 24), size=0.8, camera=camera
    )
    assert visible.any()
    assert (labels["semantic"][visible] == CLASS_IDS[kind]).all()
    for name in ("depth", "normal", "curvature", "edge", "semantic"):
        assert masks[name][visible].all(), name
        assert torch.equal(labels[name][..., ~visible], sample["labels"][name][..., ~visible]), name
    # The object is in front of every present surface it covers.
    before = sample["masks"]["depth"] & visible
    assert (labels["depth"][0][before] <= sample["labels"]["depth"][0][before]).all()
    # Unit normals that face the camera: against the viewing ray of their pixel (camera frame).
    normals = labels["normal"][:, visible]
    assert torch.allclose(normals.norm(dim=0), torch.ones(normals.shape[1]), atol=1e-5)
    k = torch.from_numpy(camera.intrinsics).float()
    rows, cols = torch.nonzero(visible, as_tuple=True)
    rays = torch.stack([(cols - k[0, 2]) / k[0, 0], (rows - k[1, 2]) / k[1, 1], torch.ones(len(rows))])  # (3, N)
    assert ((normals * rays).sum(0) < 0).all()
    if kind == "sphere":  # curvature 1/r everywhere on a sphere
        assert torch.allclose(
            labels["curvature"][:, visible], torch.full_like(labels["curvature"][:, visible], 1 / 0.4)
        )
    # The silhouette is an edge: some of the object's border pixels carry an edge.
    assert labels["edge"][0][visible].max() == 1


def test_insert_without_a_camera_uses_the_default_one_and_rejects_hidden_objects():
    sample, _ = synthetic_scene()
    labels, masks, visible = insert_primitive(sample["labels"], sample["masks"], "box", (40, 24))
    assert visible.any()
    wall = {"depth": torch.full((1, 48, 48), 0.2)}  # a surface right in front of the camera
    with pytest.raises(ValueError, match="hidden or off the image"):
        insert_primitive(wall, {}, "sphere", (40, 24))
    with pytest.raises(ValueError, match="kind must be one of"):
        insert_primitive(wall, {}, "pyramid", (40, 24))


def test_label_only_in_masks_is_rejected_with_a_clear_error():
    labels, masks = scene()
    masks = {**masks, "depth": np.ones((8, 10), dtype=bool)}
    with pytest.raises(ValueError, match="bool tensor"):
        erase(labels, masks, "depth", brush_mask((8, 10), (0, 0), 1))
