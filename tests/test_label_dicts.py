"""pack_labels / unpack_labels and the mask-aware resize_labels."""

from __future__ import annotations

from fractions import Fraction

import numpy as np
import pytest
import torch
from helpers import SPECS, make_labels, make_masks
from hypothesis import example, given, settings
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


@pytest.mark.parametrize("bad", [NAN, INF, -INF])
def test_pack_refuses_non_finite_present_values(bad):
    labels, masks = make_labels(), make_masks()
    masks["depth"][1, 2, 3] = True
    labels["depth"][1, 0, 2, 3] = bad
    with pytest.raises(ValueError, match=r"'depth' holds NaN or inf at 1 present position"):
        pack_labels(SPECS, labels, masks)


def test_pack_refuses_values_that_overflow_its_dtype():
    labels = make_labels()
    labels["depth"][0, 0, 0, 0] = 1e5  # float16's largest value is 65504
    with pytest.raises(ValueError, match=r"'depth' holds values up to 1e\+05.*overflow torch.float16"):
        pack_labels(SPECS, labels, dtype=torch.float16)


@pytest.mark.parametrize("dtype", [torch.float8_e4m3fn, torch.float8_e5m2, torch.int32, "float32"])
def test_pack_and_unpack_take_only_dtypes_that_keep_the_values(dtype):
    # float8 changed 63 of 100 class ids in the round trip; "float32" reported "Invalid device string".
    labels = make_labels()
    with pytest.raises(TypeError, match=r"dtype must be a floating torch.dtype, one of \(torch.float16"):
        pack_labels(SPECS, labels, dtype=dtype)
    with pytest.raises(TypeError, match=r"dtype must be a floating torch.dtype, one of \(torch.float16"):
        unpack_labels(SPECS, pack_labels(SPECS, labels), dtype=dtype)


def test_unpack_refuses_an_integer_dtype():
    # int64 truncated the continuous labels.
    with pytest.raises(TypeError, match=r"dtype must be a floating torch.dtype.*got torch.int64"):
        unpack_labels(SPECS, pack_labels(SPECS, make_labels()), dtype=torch.int64)


@pytest.mark.parametrize(("dtype", "largest_id"), [(torch.float16, 2048), (torch.bfloat16, 256)])
def test_every_exact_class_id_may_be_packed(dtype, largest_id):
    spec = {"semantic": LabelSpec.categorical(largest_id + 1)}
    ids = torch.arange(largest_id + 1).reshape(1, 1, -1)
    out, _ = unpack_labels(spec, pack_labels(spec, {"semantic": ids}, dtype=dtype))
    assert torch.equal(out["semantic"], ids)
    with pytest.raises(ValueError, match=f"cannot hold class ids up to {largest_id + 1} exactly"):
        pack_labels({"semantic": LabelSpec.categorical(largest_id + 2)}, {"semantic": ids}, dtype=dtype)


@pytest.mark.parametrize("shape", [(0, 5, 7), (2, 0, 7), (2, 5, 0)], ids=["empty batch", "no rows", "no columns"])
def test_pack_and_unpack_of_no_pixels(shape):
    B, H, W = shape
    packed = pack_labels(SPECS, make_labels(B, H, W), make_masks(B, H, W, all_missing_pixel=False))
    assert packed.shape == (B, packed_channels(SPECS), H, W)
    labels, masks = unpack_labels(SPECS, packed)
    assert labels["normal"].shape == (B, 3, H, W) and masks["normal"].shape == (B, H, W)


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


@pytest.mark.parametrize("mode", ["majority", "nearest"])
def test_resize_refuses_a_class_map_that_cannot_hold_ignore_index(mode):
    # int8 cannot hold 255: missing output pixels came back as -1.
    spec = {"semantic": LabelSpec.categorical(4, ignore_index=255)}
    ids = torch.tensor([[[1, 2], [3, 3]]], dtype=torch.int8)
    mask = {"semantic": torch.tensor([[[True, True], [False, False]]])}
    with pytest.raises(ValueError, match=r"'semantic' is torch.int8, which cannot hold its ignore_index 255"):
        resize_labels(spec, {"semantic": ids}, mask, size=(2, 1), categorical=mode)
    out, masks = resize_labels(spec, {"semantic": ids.to(torch.uint8)}, mask, size=(2, 1), categorical=mode)
    assert out["semantic"].dtype == torch.uint8 and out["semantic"][0, 1, 0] == 255 and not masks["semantic"][0, 1, 0]


@pytest.mark.parametrize("size", [(3, 4), (1, 1)])
def test_resize_of_no_pixels(size):
    labels = make_labels(0, 5, 7)
    out, masks = resize_labels(SPECS, labels, make_masks(0, 5, 7, all_missing_pixel=False), size=size)
    assert out["normal"].shape == (0, 3, *size) and masks["semantic"].shape == (0, *size)
    # A source without rows: every window is empty, so every output pixel is missing.
    for mode in ("majority", "nearest"):
        out, masks = resize_labels(SPECS, make_labels(2, 0, 7), size=size, categorical=mode)
        assert not any(m.any() for m in masks.values())
        assert out["normal"].shape == (2, 3, *size) and not out["normal"].any()
        assert (out["semantic"] == SPECS["semantic"].ignore_index).all()


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


# ---------------------------------------------------------------- resize: the min_present boundary


def windows(n_in, n_out):
    """adaptive_avg_pool2d's source windows along one axis, by its definition."""
    return [(i * n_in // n_out, -(-(i + 1) * n_in // n_out)) for i in range(n_out)]


def kept_by_count(present, size, numerator, denominator):
    """Present at an output pixel: a pixel and at least numerator/denominator of its window, in integers."""
    B = present.shape[0]
    keep = np.zeros((B, *size), dtype=bool)
    for i, (top, bottom) in enumerate(windows(present.shape[1], size[0])):
        for j, (left, right) in enumerate(windows(present.shape[2], size[1])):
            count = present[:, top:bottom, left:right].sum(axis=(1, 2))  # (B,) integer counts
            area = (bottom - top) * (right - left)
            keep[:, i, j] = (count > 0) & (count * denominator >= numerator * area)
    return keep


BOTH_KINDS = {"semantic": LabelSpec.categorical(3), "depth": LabelSpec.continuous(1)}


@settings(max_examples=60, deadline=None)
@given(
    source=st.tuples(st.integers(1, 11), st.integers(1, 11)),
    size=st.tuples(st.integers(1, 4), st.integers(1, 4)),
    fraction=st.tuples(st.integers(0, 12), st.integers(1, 12)).filter(lambda f: f[0] <= f[1]),
    data=st.data(),
)
@example(source=(5, 5), size=(1, 1), fraction=(1, 5), data=None)  # 5 of 25 at 0.2
@example(source=(3, 3), size=(1, 1), fraction=(5, 9), data=None)  # 5 of 9 at 5/9
@example(source=(10, 10), size=(1, 1), fraction=(1, 2), data=None)  # 50 of 100 at 0.5
def test_presence_is_decided_on_integer_counts_for_both_kinds(source, size, fraction, data):
    numerator, denominator = fraction
    H, W = source
    if data is None:  # the explicit examples: exactly the boundary count present, classes at random
        count = H * W * numerator // denominator
        rng = np.random.default_rng(count)
        present = np.zeros(H * W, dtype=bool)
        present[rng.permutation(H * W)[:count]] = True
        classes = rng.integers(0, 3, H * W)
    else:
        present = np.array(data.draw(st.lists(st.booleans(), min_size=H * W, max_size=H * W)))
        classes = np.array(data.draw(st.lists(st.integers(0, 2), min_size=H * W, max_size=H * W)))
    present = present.reshape(1, H, W)
    # Several classes in a window: their float shares used to sum to just below the boundary.
    labels = {"semantic": torch.from_numpy(classes).reshape(1, H, W), "depth": torch.rand(1, 1, H, W)}
    masks = {name: torch.from_numpy(present) for name in BOTH_KINDS}
    _, out_masks = resize_labels(BOTH_KINDS, labels, masks, size=size, min_present=numerator / denominator)
    expected = kept_by_count(present, size, numerator, denominator)
    np.testing.assert_array_equal(out_masks["semantic"].numpy(), expected)
    np.testing.assert_array_equal(out_masks["depth"].numpy(), expected)
    assert Fraction(numerator, denominator) == Fraction(numerator / denominator).limit_denominator(2**24)
