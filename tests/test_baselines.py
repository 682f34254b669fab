"""CLAM and NaiveConcat against explicit computations."""

import pytest
import torch
import torch.nn.functional as F
from helpers import SPECS, make_labels, make_masks

from label_merge import CLAM, NaiveConcat


def explicit_clam(merger: CLAM, labels, masks):
    """Per-label Linear+GELU stacks on (B, H, W, C) tensors, then the (masked) mean."""
    tokens, present = [], []
    for name, spec in SPECS.items():
        mask = masks[name]
        if spec.is_categorical:
            mask = mask & (labels[name] != spec.ignore_index)
            x = F.one_hot(labels[name], spec.num_classes).float()
        else:
            x = labels[name].permute(0, 2, 3, 1)
        x = x * mask[..., None]
        e = F.gelu(merger.proj[name](x))
        for layer in merger.layers[name]:
            e = F.gelu(layer(e))
        tokens.append(e)
        present.append(mask)
    z, p = torch.stack(tokens, dim=3), torch.stack(present, dim=3).float()  # (B, H, W, N, d), (B, H, W, N)
    if merger.drop == "zero":
        out = z.mean(dim=3)
    else:
        count = p.sum(dim=3, keepdim=True)
        out = (z * p[..., None]).sum(dim=3) / count.clamp_min(1)
        out = torch.where(count > 0, out, merger.null_concept)
    return out.permute(0, 3, 1, 2)


@pytest.mark.parametrize("drop", ["zero", "exclude"])
def test_clam_matches_explicit_computation(drop):
    torch.manual_seed(0)
    merger = CLAM(SPECS, dim=8, depth=2, drop=drop)
    if drop == "exclude":
        torch.nn.init.normal_(merger.null_concept)
    labels, masks = make_labels(), make_masks()
    with torch.no_grad():
        torch.testing.assert_close(merger(labels, masks), explicit_clam(merger, labels, masks))


def test_clam_depth_zero_is_the_projection_alone():
    merger = CLAM(SPECS, dim=8, depth=0)
    assert len(merger.layers["depth"]) == 0
    assert merger(make_labels()).shape == (2, 8, 5, 7)


def test_clam_values_at_missing_positions_never_matter():
    merger = CLAM(SPECS, dim=8, drop="exclude")
    labels, masks = make_labels(), make_masks()
    poisoned = dict(labels, depth=torch.where(masks["depth"][:, None], labels["depth"], float("nan")))
    out = merger(poisoned, masks)
    assert torch.isfinite(out).all()
    torch.testing.assert_close(out, merger(labels, masks))


def test_clam_chunked_and_state_dict():
    merger = CLAM(SPECS, dim=8, chunk_pixels=11)
    other = CLAM(SPECS, dim=8)
    other.load_state_dict(merger.state_dict())
    labels = make_labels()
    torch.testing.assert_close(merger(labels), other(labels))
    assert "layers.normal.2.weight" in merger.state_dict()


def explicit_concat(labels, masks, include_masks=True):
    channels, presence = [], []
    for name, spec in SPECS.items():
        m = masks[name]
        if spec.is_categorical:
            m = m & (labels[name] != spec.ignore_index)
            x = F.one_hot(labels[name], spec.num_classes).permute(0, 3, 1, 2).float()
        else:
            x = labels[name]
        channels.append(torch.where(m[:, None], x, torch.zeros_like(x)))
        presence.append(m[:, None].float())
    return torch.cat(channels + (presence if include_masks else []), dim=1)


@pytest.mark.parametrize("include_masks", [True, False])
def test_naive_concat_equals_explicit_concatenation(include_masks):
    labels, masks = make_labels(), make_masks()
    labels["depth"][:, 0][~masks["depth"]] = float("nan")
    cat = NaiveConcat(SPECS, include_masks=include_masks)
    out = cat(labels, masks)
    assert out.shape[1] == cat.out_channels == 5 + 1 + 3 + 2 + (4 if include_masks else 0)
    assert torch.equal(out, explicit_concat(labels, masks, include_masks))


def test_naive_concat_absent_label_is_zero_with_zero_presence():
    labels, masks = make_labels(), make_masks()
    del labels["normal"], masks["normal"]
    out = NaiveConcat(SPECS)(labels, masks)
    assert (out[:, 6:9] == 0).all()  # normal's channels
    assert (out[:, -2] == 0).all()  # normal's presence channel (third of four)


def test_naive_concat_dtype():
    labels = make_labels()
    assert (
        NaiveConcat(SPECS)({k: v.to(torch.bfloat16) if v.is_floating_point() else v for k, v in labels.items()}).dtype
        == torch.bfloat16
    )
    assert NaiveConcat(SPECS, dtype=torch.float64)(labels).dtype == torch.float64
    assert NaiveConcat(SPECS)({"semantic": labels["semantic"]}).dtype == torch.get_default_dtype()
