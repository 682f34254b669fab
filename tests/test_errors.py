"""Bad input gets a clear error that names the label and what was expected."""

import pytest
import torch
from helpers import SPECS, make_labels, make_masks

from label_merge import CLAM, TLAM, LabelSpec, NaiveConcat

MERGERS = [
    lambda: TLAM(SPECS, dim=6, heads=2, depth=1, backend="torch"),
    lambda: CLAM(SPECS, dim=6, depth=1),
    lambda: NaiveConcat(SPECS),
]


def cases():
    labels, masks = make_labels(), make_masks()
    yield "unknown", dict(labels, height=torch.rand(2, 1, 5, 7)), None, ValueError, r"unknown label.*'height'"
    yield "unknown mask", labels, dict(masks, height=masks["depth"]), ValueError, r"unknown label.*'height'"
    yield "empty", {}, None, ValueError, "labels is empty"
    yield (
        "channels",
        dict(labels, normal=torch.rand(2, 2, 5, 7)),
        None,
        ValueError,
        r"'normal'.*\(B, 3, H, W\).*\(2, 2, 5, 7\)",
    )
    yield "rank", dict(labels, normal=torch.rand(2, 3, 5)), None, ValueError, r"'normal'.*got shape \(2, 3, 5\)"
    yield (
        "spatial",
        dict(labels, depth=torch.rand(2, 1, 5, 8)),
        None,
        ValueError,
        r"'depth'.*\(2, 5, 8\).*'semantic'.*\(2, 5, 7\)",
    )
    yield "batch", dict(labels, depth=torch.rand(3, 1, 5, 7)), None, ValueError, r"'depth'.*\(3, 5, 7\)"
    yield (
        "float ids",
        dict(labels, semantic=labels["semantic"].float()),
        None,
        TypeError,
        r"'semantic' is categorical.*integer",
    )
    yield (
        "int values",
        dict(labels, depth=torch.ones(2, 1, 5, 7, dtype=torch.long)),
        None,
        TypeError,
        r"'depth' is continuous.*floating",
    )
    yield "not tensor", dict(labels, depth=[[0.0]]), None, TypeError, r"'depth' must be a torch.Tensor"
    too_big = labels["semantic"].clone()
    too_big[0, 0, 0] = 5
    yield "class range", dict(labels, semantic=too_big), None, ValueError, r"'semantic'.*\[0, 4\].*\[.*5\]"
    negative = labels["semantic"].clone()
    negative[1, 2, 3] = -1
    yield "negative id", dict(labels, semantic=negative), None, ValueError, r"'semantic'.*-1"
    yield (
        "mask shape",
        labels,
        dict(masks, depth=masks["depth"][:, :4]),
        ValueError,
        r"masks\['depth'\].*\(2, 5, 7\).*\(2, 4, 7\)",
    )
    yield "mask dtype", labels, dict(masks, depth=masks["depth"].float()), TypeError, r"masks\['depth'\] must be a bool"
    without = {k: v for k, v in labels.items() if k != "normal"}
    yield "orphan mask", without, masks, ValueError, r"masks given for label.*'normal'.*not in labels"
    yield "labels type", [labels["depth"]], None, TypeError, "labels must be a mapping"


@pytest.mark.parametrize("make", MERGERS, ids=["TLAM", "CLAM", "NaiveConcat"])
@pytest.mark.parametrize("case", list(cases()), ids=lambda c: c[0])
def test_bad_input_raises_a_named_error(make, case):
    _, labels, masks, error, pattern = case
    with pytest.raises(error, match=pattern):
        make()(labels, masks)


def test_out_of_range_id_is_fine_where_masked_or_ignored():
    labels, masks = make_labels(), make_masks()
    labels["semantic"][0, 0, 0] = 255
    masks["semantic"][0, 0, 0] = False
    for make in MERGERS:
        make()(labels, masks)
    spec = {"s": LabelSpec.categorical(3, ignore_index=255)}
    TLAM(spec, dim=4, heads=2)({"s": torch.tensor([[[0, 255], [2, 1]]])})


def test_mask_may_carry_a_channel_dim():
    labels, masks = make_labels(), make_masks()
    merger = MERGERS[0]()
    torch.testing.assert_close(merger(labels, {k: v[:, None] for k, v in masks.items()}), merger(labels, masks))


@pytest.mark.parametrize(
    "build, pattern",
    [
        (lambda: LabelSpec.categorical(0), "positive int"),
        (lambda: LabelSpec.continuous(2.0), "positive int"),
        (lambda: LabelSpec("ordinal", 3), "'categorical' or 'continuous'"),
        (lambda: LabelSpec("continuous", 3, ignore_index=0), "only applies to categorical"),
        (lambda: TLAM({}, dim=4), "non-empty mapping"),
        (lambda: TLAM({"a b": LabelSpec.continuous(1)}), "identifier"),
        (lambda: TLAM({"a": 3}), "must be a LabelSpec"),
        (lambda: TLAM(SPECS, dim=10, heads=3), r"dim \(10\) must be divisible by heads \(3\)"),
        (lambda: TLAM(SPECS, drop="mean"), "drop must be one of"),
        (lambda: TLAM(SPECS, depth=0), "depth must be a positive int"),
        (lambda: TLAM(SPECS, chunk_pixels=0), "chunk_pixels"),
        (lambda: TLAM(SPECS, mlp_ratio=0), "mlp_ratio"),
        (lambda: TLAM(SPECS, backend="cuda"), "backend must be one of"),
        (lambda: CLAM(SPECS, depth=-1), "depth must be a non-negative int"),
    ],
)
def test_bad_construction_raises(build, pattern):
    with pytest.raises((ValueError, TypeError), match=pattern):
        build()


def test_contributions_layer_out_of_range():
    merger = MERGERS[0]()
    with pytest.raises(ValueError, match="layer must be in"):
        merger.contributions(make_labels(), layer=3)


@pytest.mark.parametrize("ratio", [float("inf"), float("nan"), -1.0, "4"])
def test_mlp_ratio_must_be_a_finite_positive_number(ratio):
    # inf used to raise an OverflowError from int(round(dim * inf)).
    with pytest.raises(ValueError, match=r"mlp_ratio must be a finite positive number"):
        TLAM(SPECS, dim=6, heads=2, mlp_ratio=ratio)


@pytest.mark.parametrize("dtype", [torch.int64, torch.bool, torch.float8_e4m3fn])
def test_naive_concat_refuses_a_dtype_that_loses_values(dtype):
    # An integer dtype truncated the normalised values to 0.
    with pytest.raises(TypeError, match="NaiveConcat dtype must be None or one of"):
        NaiveConcat(SPECS, dtype=dtype)


@pytest.mark.parametrize("shape", [(0, 5, 7), (2, 0, 7), (2, 5, 0)], ids=["empty batch", "no rows", "no columns"])
def test_contributions_of_no_pixels(shape):
    B, H, W = shape
    merger = MERGERS[0]()
    out = merger.contributions(make_labels(B, H, W), make_masks(B, H, W, all_missing_pixel=False))
    assert out.shape == (B, len(SPECS), H, W)
    assert merger(make_labels(B, H, W)).shape == (B, 6, H, W)  # as the forward pass
