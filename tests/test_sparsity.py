"""Region dropout (paper Sec. 4) and whole-label dropout."""

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from label_merge.sparsity import dense_masks, label_dropout, region_dropout

NAMES = ("semantic", "depth", "normal")


def full(B=2, H=6, W=6):
    return {n: torch.ones(B, H, W, dtype=torch.bool) for n in NAMES}


@settings(max_examples=25, deadline=None)
@given(
    B=st.integers(1, 3),
    H=st.integers(1, 6),
    W=st.integers(1, 6),
    regions_count=st.integers(1, 5),
    p=st.floats(0, 1),
    seed=st.integers(0, 2**16),
)
def test_region_dropout_decides_once_per_region_and_label(B, H, W, regions_count, p, seed):
    g = torch.Generator().manual_seed(seed)
    regions = torch.randint(0, regions_count, (B, H, W), generator=g)
    masks = {n: torch.rand(B, H, W, generator=g) > 0.2 for n in NAMES}
    out = region_dropout(masks, regions, p, generator=torch.Generator().manual_seed(seed))
    for n in NAMES:
        assert not (out[n] & ~masks[n]).any()  # only ever removes
        kept = out[n] | ~masks[n]  # the per-region decision, where the input was present
        for b in range(B):
            for r in regions[b].unique():
                decision = kept[b][(regions[b] == r) & masks[n][b]]
                assert decision.all() or not decision.any()


def test_region_dropout_is_reproducible_and_independent_across_labels_and_images():
    regions = torch.arange(400).view(1, 20, 20).repeat(2, 1, 1)  # 400 one-pixel regions, same ids in both images
    a = region_dropout(full(2, 20, 20), regions, 0.5, generator=torch.Generator().manual_seed(7))
    b = region_dropout(full(2, 20, 20), regions, 0.5, generator=torch.Generator().manual_seed(7))
    assert all(torch.equal(a[n], b[n]) for n in NAMES)
    assert not torch.equal(a["depth"], a["normal"])
    assert not torch.equal(a["depth"][0], a["depth"][1])  # same ids, different images: separate draws


def test_region_dropout_rate_is_p():
    regions = torch.arange(10000).view(1, 100, 100)
    masks = {"x": torch.ones(1, 100, 100, dtype=torch.bool)}
    for p in (0.1, 0.5, 0.7):
        kept = region_dropout(masks, regions, p, generator=torch.Generator().manual_seed(0))["x"].float().mean()
        assert abs(kept.item() - (1 - p)) < 0.02  # 4 standard deviations of a 10,000-draw binomial


def test_region_dropout_extremes_and_single_image():
    regions = torch.randint(0, 4, (6, 6))
    masks = {n: m[0] for n, m in full(1).items()}
    assert all(region_dropout(masks, regions, 0.0)[n].all() for n in NAMES)
    assert not any(region_dropout(masks, regions, 1.0)[n].any() for n in NAMES)


@pytest.mark.parametrize(
    "call, error, pattern",
    [
        (lambda: region_dropout(full(), torch.zeros(2, 6, 6, dtype=torch.long), 1.5), ValueError, r"p must be"),
        (lambda: region_dropout(full(), torch.zeros(2, 6, 6), 0.5), TypeError, "regions must be an integer"),
        (lambda: region_dropout(full(), torch.zeros(2, 5, 6, dtype=torch.long), 0.5), ValueError, "regions has shape"),
        (lambda: region_dropout({"a": torch.ones(2, 2)}, torch.zeros(2, 2, dtype=torch.long), 0.5), TypeError, "bool"),
        (lambda: region_dropout({}, torch.zeros(2, 2, dtype=torch.long), 0.5), ValueError, "non-empty"),
        (lambda: label_dropout(full(), p_keep_all=0.6, p_drop_all=0.6), ValueError, "at most 1"),
        (lambda: label_dropout(full(), p_label={"height": 0.5}), ValueError, "unknown label"),
        (lambda: label_dropout(dict(full(), depth=torch.ones(2, 5, 6, dtype=torch.bool))), ValueError, "has shape"),
    ],
)
def test_sparsity_errors(call, error, pattern):
    with pytest.raises(error, match=pattern):
        call()


def test_label_dropout_modes():
    masks = full(8)
    assert all(label_dropout(masks, p_keep_all=1.0, p_label=1.0)[n].all() for n in NAMES)
    assert not any(label_dropout(masks, p_drop_all=1.0)[n].any() for n in NAMES)
    only_depth = label_dropout(masks, p_label={"depth": 1.0})
    assert not only_depth["depth"].any() and only_depth["normal"].all() and only_depth["semantic"].all()


def test_label_dropout_is_per_image_and_whole_label():
    masks = {n: torch.rand(64, 4, 4) > 0.3 for n in NAMES}
    out = label_dropout(masks, p_keep_all=0.2, p_drop_all=0.2, p_label=0.5, generator=torch.Generator().manual_seed(1))
    for n in NAMES:
        kept = out[n].flatten(1).any(1) | ~masks[n].flatten(1).any(1)
        for b in range(64):
            # Either the image keeps its whole mask or loses it entirely.
            assert torch.equal(out[n][b], masks[n][b]) or not out[n][b].any()
    all_dropped = torch.stack([~out[n].flatten(1).any(1) for n in NAMES]).all(0)
    assert 0 < all_dropped.sum() < 64
    assert kept.dtype == torch.bool


def test_label_dropout_rates():
    masks = {n: torch.ones(20000, 1, 1, dtype=torch.bool) for n in NAMES}
    out = label_dropout(masks, p_keep_all=0.1, p_drop_all=0.1, p_label=0.5, generator=torch.Generator().manual_seed(0))
    kept = torch.stack([out[n].view(-1) for n in NAMES])  # (3, 20000)
    none_kept = (~kept.any(0)).float().mean().item()
    # P(all dropped) = 0.1 + 0.8 * 0.5**3 = 0.2; P(label kept) = 0.1 + 0.8 * 0.5 = 0.5
    assert abs(none_kept - 0.2) < 0.012
    assert abs(kept.float().mean().item() - 0.5) < 0.012


def test_dense_masks():
    masks = dense_masks({"s": torch.zeros(3, 4, 5, dtype=torch.long), "n": torch.zeros(3, 3, 4, 5)})
    assert masks["s"].shape == masks["n"].shape == (3, 4, 5) and all(m.all() for m in masks.values())
