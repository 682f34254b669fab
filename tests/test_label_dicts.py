"""pack_labels / unpack_labels and the mask-aware resize_labels."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from helpers import SPECS, make_labels, make_masks
from hypothesis import given, settings
from hypothesis import strategies as st

from label_merge import LabelSpec, pack_labels, resize_labels, unpack_labels
from label_merge.label_dicts import packed_channels

NAN, INF = float("nan"), float("inf")


def poison_missing(labels, masks):
    """Copies of ``labels`` holding NaN / inf / huge ids wherever they are missing."""
    out = {}
    for name, x in labels.items():
        missing = ~masks[name]
        if SPECS[name].is_categorical:
            out[name] = torch.where(missing, 12345, x)
        else:
            poison = torch.full_like(x, NAN)
            poison[:, :, ::2] = INF
            out[name] = torch.where(missing.unsqueeze(1), poison, x)
    return out


# ---------------------------------------------------------------- pack / unpack


def test_pack_unpack_round_trip_with_nan_at_missing_positions():
    labels, masks = make_labels(B=3, H=6, W=5), make_masks(B=3, H=6, W=5)
    poisoned = poison_missing(labels, masks)
    packed = pack_labels(SPECS, poisoned, masks)
    assert packed.shape == (3, packed_channels(SPECS), 6, 5) == (3, 11, 6, 5)
    assert torch.isfinite(packed).all()
    out_labels, out_masks = unpack_labels(SPECS, packed)
    for name, spec in SPECS.items():
        present = masks[name]
        if spec.is_categorical:
            present = present & (labels[name] != spec.ignore_index)
            # A missing categorical pixel comes back as ignore_index.
            assert (out_labels[name][~present] == spec.ignore_index).all()
            assert out_labels[name].dtype == torch.int64
            assert torch.equal(out_labels[name][present], labels[name][present])
        else:
            keep = present.unsqueeze(1).expand_as(labels[name])
            assert torch.equal(out_labels[name][keep], labels[name][keep])
            assert (out_labels[name][~keep] == 0).all()
        assert torch.equal(out_masks[name], present), name


def test_pack_is_a_fixed_point_of_unpack():
    labels, masks = make_labels(), make_masks()
    packed = pack_labels(SPECS, labels, masks)
    assert torch.equal(pack_labels(SPECS, *unpack_labels(SPECS, packed)), packed)


def test_pack_layout_values_then_presence_per_label_in_spec_order():
    specs = {"depth": LabelSpec.continuous(1), "semantic": LabelSpec.categorical(4)}
    depth = torch.tensor([[[[2.0, NAN]]]])
    semantic = torch.tensor([[[3, 1]]])
    packed = pack_labels(specs, {"semantic": semantic, "depth": depth}, {"depth": torch.tensor([[[True, False]]])})
    expected = torch.tensor([[2.0, 0.0], [1.0, 0.0], [3.0, 1.0], [1.0, 1.0]])  # (C, W)
    assert torch.equal(packed[0, :, 0], expected)


def test_absent_label_is_packed_missing_everywhere():
    labels = make_labels()
    del labels["normal"]
    _, masks = unpack_labels(SPECS, pack_labels(SPECS, labels))
    assert not masks["normal"].any()
    assert masks["depth"].all()


def test_unpack_survives_a_half_precision_cast():
    labels, masks = make_labels(), make_masks()
    packed = pack_labels(SPECS, labels, masks, dtype=torch.float16)
    out_labels, out_masks = unpack_labels(SPECS, packed, dtype=torch.float32)
    assert out_labels["depth"].dtype == torch.float32
    assert torch.equal(out_masks["depth"], masks["depth"])
    assert torch.equal(out_labels["semantic"], unpack_labels(SPECS, pack_labels(SPECS, labels, masks))[0]["semantic"])


def test_pack_and_unpack_errors():
    labels = make_labels()
    with pytest.raises(ValueError, match="cannot hold class ids"):
        pack_labels({"semantic": LabelSpec.categorical(300)}, {"semantic": labels["semantic"]}, dtype=torch.bfloat16)
    with pytest.raises(TypeError, match="floating"):
        pack_labels(SPECS, labels, dtype=torch.int32)
    with pytest.raises(ValueError, match="unknown label"):
        pack_labels(SPECS, {"colour": torch.zeros(2, 3, 5, 7)})
    with pytest.raises(ValueError, match=r"\(B, 11, H, W\)"):
        unpack_labels(SPECS, torch.zeros(2, 10, 5, 7))
    with pytest.raises(TypeError, match="floating"):
        unpack_labels(SPECS, torch.zeros(2, 11, 5, 7, dtype=torch.long))


# ---------------------------------------------------------------- resize: hand-computed cases

DEPTH = {"depth": LabelSpec.continuous(1)}


def test_continuous_mean_over_present_pixels_only():
    # 4x4 -> 2x2; windows: top-left 4 present, top-right 1 present, bottom-left none, bottom-right 2 present.
    depth = torch.tensor(
        [
            [1.0, 3.0, NAN, 7.0],
            [5.0, 7.0, INF, NAN],
            [NAN, NAN, 2.0, NAN],
            [NAN, NAN, 4.0, NAN],
        ]
    ).reshape(1, 1, 4, 4)
    present = torch.tensor(
        [
            [1, 1, 0, 1],
            [1, 1, 0, 0],
            [0, 0, 1, 0],
            [0, 0, 1, 0],
        ],
        dtype=torch.bool,
    ).reshape(1, 4, 4)
    labels, masks = resize_labels(DEPTH, {"depth": depth}, {"depth": present}, size=2, min_present=0.5)
    assert torch.equal(masks["depth"][0], torch.tensor([[True, False], [False, True]]))
    assert torch.equal(labels["depth"][0, 0], torch.tensor([[4.0, 0.0], [0.0, 3.0]]))
    # A quarter present is enough at min_present=0.25: the top-right window keeps its one value.
    labels, masks = resize_labels(DEPTH, {"depth": depth}, {"depth": present}, size=(2, 2), min_present=0.25)
    assert torch.equal(masks["depth"][0], torch.tensor([[True, True], [False, True]]))
    assert torch.equal(labels["depth"][0, 0], torch.tensor([[4.0, 7.0], [0.0, 3.0]]))
    # min_present=0 still needs one present pixel: the all-missing window stays missing.
    _, masks = resize_labels(DEPTH, {"depth": depth}, {"depth": present}, size=2, min_present=0.0)
    assert not masks["depth"][0, 1, 0]


def test_categorical_majority_and_nearest():
    spec = {"semantic": LabelSpec.categorical(4, ignore_index=0)}
    ids = torch.tensor(
        [
            [1, 1, 2, 3],
            [2, 0, 3, 2],
            [0, 0, 1, 0],
            [0, 3, 0, 0],
        ]
    ).reshape(1, 4, 4)
    # 0 is ignore_index (missing). Windows: {1,1,2} -> 1; {2,3,3,2} -> tie, lowest id 2;
    # {3} is a quarter present; nothing present bottom-right apart from one 1.
    labels, masks = resize_labels(spec, {"semantic": ids}, size=2, categorical="majority", min_present=0.5)
    assert torch.equal(masks["semantic"][0], torch.tensor([[True, True], [False, False]]))
    assert torch.equal(labels["semantic"][0], torch.tensor([[1, 2], [0, 0]]))
    labels, masks = resize_labels(spec, {"semantic": ids}, size=2, categorical="majority", min_present=0.25)
    assert torch.equal(labels["semantic"][0], torch.tensor([[1, 2], [3, 1]]))
    assert masks["semantic"].all()
    # Nearest samples the source pixel nearest to each output pixel's centre: rows/columns 1 and 3.
    labels, masks = resize_labels(spec, {"semantic": ids.unsqueeze(1)}, size=2, categorical="nearest")
    assert labels["semantic"].shape == (1, 1, 2, 2)
    assert torch.equal(labels["semantic"][0, 0], torch.tensor([[0, 2], [3, 0]]))
    assert torch.equal(masks["semantic"][0], torch.tensor([[False, True], [True, False]]))


def test_upsampling_replicates_pixels():
    labels, masks = make_labels(H=3, W=4), make_masks(H=3, W=4)
    out, out_masks = resize_labels(SPECS, labels, masks, size=(6, 8))
    for name in SPECS:
        assert torch.equal(
            out_masks[name], masks_effective(name, labels, masks).repeat_interleave(2, 1).repeat_interleave(2, 2)
        )
    expected = torch.where(masks["depth"].unsqueeze(1), labels["depth"], 0)
    assert torch.equal(out["depth"], expected.repeat_interleave(2, 2).repeat_interleave(2, 3))


def masks_effective(name, labels, masks):
    spec = SPECS[name]
    if spec.is_categorical and spec.ignore_index is not None:
        return masks[name] & (labels[name] != spec.ignore_index)
    return masks[name]


def test_output_keeps_shape_convention_and_dtype():
    specs = {"depth": LabelSpec.continuous(1), "semantic": LabelSpec.categorical(3)}
    labels = {"depth": torch.rand(2, 8, 8, dtype=torch.float64), "semantic": torch.randint(0, 3, (2, 8, 8)).int()}
    out, masks = resize_labels(specs, labels, size=(4, 2))
    assert out["depth"].shape == (2, 4, 2) and out["depth"].dtype == torch.float64
    assert out["semantic"].shape == (2, 4, 2) and out["semantic"].dtype == torch.int32
    assert masks["depth"].shape == (2, 4, 2) and masks["depth"].all()


def test_resize_errors():
    labels = make_labels()
    with pytest.raises(ValueError, match="size"):
        resize_labels(SPECS, labels, size=0)
    with pytest.raises(ValueError, match="size"):
        resize_labels(SPECS, labels)
    with pytest.raises(ValueError, match="categorical"):
        resize_labels(SPECS, labels, size=2, categorical="bilinear")
    with pytest.raises(ValueError, match="min_present"):
        resize_labels(SPECS, labels, size=2, min_present=1.5)
    with pytest.raises(TypeError, match="bool"):
        resize_labels(SPECS, labels, {"depth": torch.ones(2, 5, 7)}, size=2)


# ---------------------------------------------------------------- resize: properties


def block_reference(x, present, k, min_present):
    """Independent numpy reference for shrinking by an integer factor k: present-only block means."""
    B, C, H, W = x.shape
    xb = np.where(present[:, None], x, 0.0).reshape(B, C, H // k, k, W // k, k)
    pb = present.reshape(B, 1, H // k, k, W // k, k).astype(np.float64)
    count = pb.sum(axis=(3, 5))
    fraction = count / (k * k)
    with np.errstate(invalid="ignore", divide="ignore"):
        mean = xb.sum(axis=(3, 5)) / count
    keep = (fraction >= min_present) & (count > 0)
    return np.where(keep, mean, 0.0), keep[:, 0]


@settings(max_examples=25, deadline=None)
@given(
    k=st.sampled_from([1, 2, 3]),
    h=st.integers(1, 3),
    w=st.integers(1, 3),
    min_present=st.sampled_from([0.0, 0.25, 0.5, 1.0]),
    seed=st.integers(0, 1000),
)
def test_continuous_matches_block_reference(k, h, w, min_present, seed):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(2, 3, h * k, w * k, generator=g, dtype=torch.float64)
    present = torch.rand(2, h * k, w * k, generator=g) < 0.6
    specs = {"normal": LabelSpec.continuous(3)}
    out, masks = resize_labels(specs, {"normal": x}, {"normal": present}, size=(h, w), min_present=min_present)
    mean, keep = block_reference(x.numpy(), present.numpy(), k, min_present)
    np.testing.assert_array_equal(masks["normal"].numpy(), keep)
    np.testing.assert_allclose(out["normal"].numpy(), mean, rtol=1e-12, atol=1e-12)


@settings(max_examples=20, deadline=None)
@given(
    size=st.tuples(st.integers(1, 9), st.integers(1, 9)),
    mode=st.sampled_from(["majority", "nearest"]),
    seed=st.integers(0, 1000),
)
def test_values_at_missing_positions_never_matter(size, mode, seed):
    labels, masks = make_labels(H=6, W=7, seed=seed), make_masks(H=6, W=7, seed=seed + 1)
    clean = resize_labels(SPECS, labels, masks, size=size, categorical=mode)
    poisoned = resize_labels(SPECS, poison_missing(labels, masks), masks, size=size, categorical=mode)
    for name in SPECS:
        assert torch.equal(clean[0][name], poisoned[0][name]), name
        assert torch.equal(clean[1][name], poisoned[1][name]), name
        assert torch.isfinite(poisoned[0][name].float()).all()


@settings(max_examples=15, deadline=None)
@given(seed=st.integers(0, 1000), mode=st.sampled_from(["majority", "nearest"]))
def test_same_size_is_the_identity_on_present_values(seed, mode):
    labels, masks = make_labels(H=4, W=5, seed=seed), make_masks(H=4, W=5, seed=seed + 1)
    out, out_masks = resize_labels(SPECS, labels, masks, size=(4, 5), categorical=mode, min_present=1.0)
    for name in SPECS:
        present = masks_effective(name, labels, masks)
        assert torch.equal(out_masks[name], present)
        if SPECS[name].is_categorical:
            assert torch.equal(out[name][present], labels[name][present])
        else:
            keep = present.unsqueeze(1).expand_as(labels[name])
            assert torch.equal(out[name][keep], labels[name][keep])
