"""TLAM against independent references and the properties that follow from its definition."""

import math

import pytest
import torch
import torch.nn.functional as F
from helpers import SPECS, make_labels, make_masks
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

from label_merge import TLAM, LabelSpec


def small_tlam(drop="zero", **kw):
    torch.manual_seed(0)
    args = dict(dim=12, depth=2, heads=3, mlp_ratio=2.0, drop=drop, backend="torch")
    args.update(kw)
    m = TLAM(SPECS, **args)
    if m.null_concept is not None:
        nn.init.normal_(m.null_concept)  # a non-zero null concept, so tests can tell it apart
    return m


# ---------------------------------------------------------------- independent reference


def torch_encoder_layers(merger: TLAM) -> list[nn.TransformerEncoderLayer]:
    """``nn.TransformerEncoderLayer`` copies of the merger's blocks (weights copied by name)."""
    layers = []
    for block in merger.blocks:
        layer = nn.TransformerEncoderLayer(
            merger.dim,
            merger.heads,
            dim_feedforward=block.mlp.fc1.out_features,
            dropout=0.0,
            activation="gelu",
            batch_first=True,
            norm_first=True,
        )
        with torch.no_grad():
            layer.norm1.load_state_dict(block.norm1.state_dict())
            layer.norm2.load_state_dict(block.norm2.state_dict())
            layer.self_attn.in_proj_weight.copy_(block.attn.qkv.weight)
            layer.self_attn.in_proj_bias.copy_(block.attn.qkv.bias)
            layer.self_attn.out_proj.load_state_dict(block.attn.proj.state_dict())
            layer.linear1.load_state_dict(block.mlp.fc1.state_dict())
            layer.linear2.load_state_dict(block.mlp.fc2.state_dict())
        layers.append(layer.eval())
    return layers


def independent_tlam(merger: TLAM, labels, masks):
    """TLAM written out from the paper with one-hot vectors and PyTorch's own encoder layer.

    Returns ``(B, d, H, W)`` and the ``(B, H, W)`` pixels where at least one label is present.
    """
    B, H, W = labels["depth"].shape[0], *labels["depth"].shape[-2:]
    tokens, present = [], []
    for k, (name, spec) in enumerate(merger.specs.items()):
        mask = masks[name] if name in masks else torch.ones(B, H, W, dtype=torch.bool)
        if spec.is_categorical:
            ids = labels[name]
            mask = mask & (ids != spec.ignore_index)
            x = F.one_hot(ids.clamp(0, spec.num_classes - 1), spec.num_classes).float()  # (B, H, W, C)
        else:
            x = labels[name].permute(0, 2, 3, 1)  # (B, H, W, C)
        x = torch.where(mask[..., None], x, torch.zeros_like(x))  # missing token input = 0 (paper Sec. 3.1)
        e = F.gelu(merger.proj[name](x)) + merger.label_embed[k]
        tokens.append(e.reshape(B * H * W, -1))
        present.append(mask.reshape(-1))
    z = torch.stack(tokens, dim=1)  # (P, N, d)
    present = torch.stack(present, dim=1)  # (P, N)
    any_present = present.any(dim=1)
    if merger.drop == "zero":
        for layer in torch_encoder_layers(merger):
            z = layer(z)
        out = z.mean(dim=1)
    else:
        z, p = z[any_present], present[any_present]
        for layer in torch_encoder_layers(merger):
            z = layer(z, src_key_padding_mask=~p)
        out = torch.zeros(B * H * W, merger.dim)
        out[any_present] = (z * p[..., None]).sum(1) / p.sum(1, keepdim=True)
    return out.reshape(B, H, W, -1).permute(0, 3, 1, 2), any_present.reshape(B, H, W)


@pytest.mark.parametrize("drop", ["zero", "exclude"])
def test_matches_pytorch_transformer_encoder_layer(drop):
    merger = small_tlam(drop).eval()
    labels, masks = make_labels(), make_masks()
    with torch.no_grad():
        expected, any_present = independent_tlam(merger, labels, masks)
        got = merger(labels, masks)
    on = any_present.unsqueeze(1).expand_as(got)  # pixels with at least one label
    torch.testing.assert_close(got[on], expected[on], rtol=1e-5, atol=1e-5)
    if drop == "exclude":
        assert not any_present[0, 0, 0]
        torch.testing.assert_close(got[0, :, 0, 0], merger.null_concept.detach())


def test_parameter_names_follow_the_design():
    merger = small_tlam("exclude")
    names = set(merger.state_dict())
    for expected in [
        "proj.semantic.weight",
        "proj.depth.bias",
        "label_embed",
        "null_concept",
        "blocks.0.norm1.weight",
        "blocks.0.attn.qkv.weight",
        "blocks.0.attn.proj.bias",
        "blocks.1.norm2.bias",
        "blocks.1.mlp.fc1.weight",
        "blocks.1.mlp.fc2.weight",
    ]:
        assert expected in names
    assert merger.proj["semantic"].weight.shape == (12, 5)  # Linear(num_classes, dim)
    assert merger.label_embed.shape == (len(SPECS), 12)
    assert "null_concept" not in small_tlam("zero").state_dict()


# ---------------------------------------------------------------- gradients


@pytest.mark.parametrize("drop", ["zero", "exclude"])
def test_gradcheck_float64(drop):
    specs = {"c": LabelSpec.categorical(3), "x": LabelSpec.continuous(2)}
    torch.manual_seed(0)
    merger = TLAM(specs, dim=4, depth=1, heads=2, mlp_ratio=1.5, drop=drop, backend="torch", dtype=torch.float64)
    ids = torch.tensor([[[0, 2, 1]]])
    masks = {"c": torch.tensor([[[True, False, False]]]), "x": torch.tensor([[[True, True, False]]])}
    names = [n for n, _ in merger.named_parameters()]

    def f(x, *params):
        state = dict(zip(names, params, strict=True))
        return torch.func.functional_call(merger, state, ({"c": ids, "x": x}, masks))

    x = torch.randn(1, 2, 1, 3, dtype=torch.float64, requires_grad=True)
    params = [p.detach().clone().requires_grad_(True) for p in merger.parameters()]
    assert torch.autograd.gradcheck(f, (x, *params), eps=1e-6, atol=1e-5)


def test_gradients_are_finite_with_nan_and_all_missing_pixels():
    for drop in ("zero", "exclude"):
        merger = small_tlam(drop)
        labels, masks = make_labels(), make_masks()
        labels["depth"] = labels["depth"].clone().requires_grad_(True)
        with torch.no_grad():
            labels["depth"][:, 0][~masks["depth"]] = float("nan")
        merger(labels, masks).square().sum().backward()
        assert torch.isfinite(labels["depth"].grad).all()
        assert (labels["depth"].grad[:, 0][~masks["depth"]] == 0).all()
        for name, p in merger.named_parameters():
            assert torch.isfinite(p.grad).all(), name


# ---------------------------------------------------------------- properties


@settings(max_examples=15, deadline=None)
@given(
    B=st.integers(1, 2),
    H=st.integers(1, 4),
    W=st.integers(1, 4),
    drop=st.sampled_from(["zero", "exclude"]),
    data=st.data(),
)
def test_pixels_are_independent(B, H, W, drop, data):
    merger = small_tlam(drop)
    labels, masks = make_labels(B, H, W), make_masks(B, H, W, all_missing_pixel=False)
    b, i, j = data.draw(st.integers(0, B - 1)), data.draw(st.integers(0, H - 1)), data.draw(st.integers(0, W - 1))
    changed = {k: v.clone() for k, v in labels.items()}
    changed["depth"][b, :, i, j] += 3.0
    changed["normal"][b, :, i, j] -= 2.0
    changed_masks = {k: v.clone() for k, v in masks.items()}
    changed_masks["depth"][b, i, j] = changed_masks["normal"][b, i, j] = True
    with torch.no_grad():
        before, after = merger(labels, changed_masks), merger(changed, changed_masks)
    others = torch.ones(B, H, W, dtype=torch.bool)
    others[b, i, j] = False
    torch.testing.assert_close(after.permute(0, 2, 3, 1)[others], before.permute(0, 2, 3, 1)[others])
    assert (after[b, :, i, j] - before[b, :, i, j]).abs().max() > 1e-4


def test_order_of_label_keys_does_not_matter():
    merger = small_tlam("exclude")
    labels, masks = make_labels(), make_masks()
    reversed_labels = dict(reversed(list(labels.items())))
    reversed_masks = dict(reversed(list(masks.items())))
    assert torch.equal(merger(labels, masks), merger(reversed_labels, reversed_masks))


@pytest.mark.parametrize("drop", ["zero", "exclude"])
def test_absent_label_equals_all_false_mask(drop):
    merger = small_tlam(drop)
    labels, masks = make_labels(), make_masks()
    without = {k: v for k, v in labels.items() if k != "normal"}
    masks_without = {k: v for k, v in masks.items() if k != "normal"}
    all_false = dict(masks, normal=torch.zeros_like(masks["normal"]))
    torch.testing.assert_close(merger(without, masks_without), merger(labels, all_false))


def test_zero_mode_false_mask_equals_zero_input():
    merger = small_tlam("zero")
    labels, masks = make_labels(), make_masks()
    zeroed = dict(labels, depth=torch.where(masks["depth"][:, None], labels["depth"], 0.0))
    dense_depth = dict(masks, depth=torch.ones_like(masks["depth"]))
    torch.testing.assert_close(merger(labels, masks), merger(zeroed, dense_depth))


@pytest.mark.parametrize("drop", ["zero", "exclude"])
def test_ignore_index_equals_false_mask(drop):
    merger = small_tlam(drop)
    labels, masks = make_labels(), make_masks()
    ignored = labels["semantic"] == 0
    explicit = dict(masks, semantic=masks["semantic"] & ~ignored)
    relabelled = dict(labels, semantic=torch.where(ignored, 3, labels["semantic"]))
    torch.testing.assert_close(merger(labels, masks), merger(relabelled, explicit))


@pytest.mark.parametrize("drop", ["zero", "exclude"])
def test_values_at_missing_positions_never_matter(drop):
    merger = small_tlam(drop)
    labels, masks = make_labels(), make_masks()
    poisoned = {k: v.clone() for k, v in labels.items()}
    for name in ("depth", "normal", "curvature"):
        missing = ~masks[name][:, None].expand_as(poisoned[name])
        poisoned[name][missing] = torch.tensor([float("nan"), float("inf"), -float("inf")]).repeat(
            int(missing.sum()) // 3 + 1
        )[: int(missing.sum())]
    poisoned["semantic"] = torch.where(masks["semantic"], labels["semantic"], 999)  # out of range, but masked
    out = merger(poisoned, masks)
    assert torch.isfinite(out).all()
    torch.testing.assert_close(out, merger(labels, masks))


def test_exclude_mode_equals_a_merger_without_the_missing_label():
    """A token excluded at a pixel acts there as if its label did not exist in the model."""
    merger = small_tlam("exclude")
    labels, masks = make_labels(), make_masks(all_missing_pixel=False)
    masks["normal"][:] = False
    masks["normal"][0, 1, 1] = True
    smaller_specs = {k: v for k, v in SPECS.items() if k != "normal"}
    smaller = TLAM(smaller_specs, dim=12, depth=2, heads=3, mlp_ratio=2.0, drop="exclude", backend="torch")
    state = merger.state_dict()
    keep = [i for i, n in enumerate(SPECS) if n != "normal"]
    state["label_embed"] = state["label_embed"][keep]
    smaller.load_state_dict({k: v for k, v in state.items() if not k.startswith("proj.normal")})
    got = merger(labels, masks)
    expected = smaller({k: v for k, v in labels.items() if k != "normal"}, {k: masks[k] for k in smaller_specs})
    where = ~masks["normal"]
    torch.testing.assert_close(got.permute(0, 2, 3, 1)[where], expected.permute(0, 2, 3, 1)[where])
    assert not torch.allclose(got[0, :, 1, 1], expected[0, :, 1, 1])


def test_pixel_with_nothing_present_gets_null_concept_and_its_gradient():
    merger = small_tlam("exclude")
    labels = make_labels(1, 1, 2)
    masks = {name: torch.tensor([[[False, True]]]) for name in SPECS}
    out = merger(labels, masks)
    torch.testing.assert_close(out[0, :, 0, 0], merger.null_concept.detach())
    out[0, :, 0, 0].sum().backward()
    torch.testing.assert_close(merger.null_concept.grad, torch.ones(12))
    assert all(torch.isfinite(p.grad).all() for p in merger.parameters() if p.grad is not None)


# ---------------------------------------------------------------- layouts, sizes, dtypes


def test_chunked_equals_unchunked():
    merger = small_tlam("exclude")
    labels, masks = make_labels(2, 5, 7), make_masks(2, 5, 7)
    full = merger(labels, masks)
    merger.chunk_pixels = 9  # 70 pixels: 7 full chunks and one of 7
    torch.testing.assert_close(merger(labels, masks), full)


def test_checkpointing_gives_the_same_values_and_gradients():
    labels, masks = make_labels(), make_masks()
    results = []
    for checkpoint in (False, True):
        merger = small_tlam("exclude", checkpoint=checkpoint)
        out = merger(labels, masks)
        out.square().sum().backward()
        results.append((out.detach(), [p.grad for p in merger.parameters()]))
    torch.testing.assert_close(results[0][0], results[1][0])
    for a, b in zip(results[0][1], results[1][1], strict=True):
        torch.testing.assert_close(a, b)


@pytest.mark.parametrize("size", [(1, 1, 1), (1, 3, 1), (3, 1, 5), (2, 7, 9)])
def test_any_spatial_size(size):
    B, H, W = size
    merger = small_tlam("exclude")
    out = merger(make_labels(B, H, W), make_masks(B, H, W))
    assert out.shape == (B, 12, H, W) and torch.isfinite(out).all()


def test_output_is_channels_last_and_channels_last_inputs_give_the_same_result():
    merger = small_tlam()
    labels = make_labels(2, 6, 5)
    out = merger(labels)
    assert out.is_contiguous(memory_format=torch.channels_last)
    cl = {k: v.contiguous(memory_format=torch.channels_last) if v.dim() == 4 else v for k, v in labels.items()}
    torch.testing.assert_close(merger(cl), out)


def test_one_channel_continuous_label_may_drop_its_channel_dim():
    merger = small_tlam()
    labels = make_labels()
    torch.testing.assert_close(merger(dict(labels, depth=labels["depth"][:, 0])), merger(labels))


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_low_precision_parameters(dtype):
    merger = small_tlam("exclude")
    labels, masks = make_labels(), make_masks()
    reference = merger(labels, masks)
    low = merger.to(dtype)(labels, masks)
    assert low.dtype == dtype and torch.isfinite(low).all()
    err = (low.float() - reference).norm() / reference.norm()
    assert err < 3e-2


def test_autocast_bfloat16():
    merger = small_tlam("exclude")
    labels, masks = make_labels(), make_masks()
    reference = merger(labels, masks)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = merger(labels, masks)
    assert torch.isfinite(out).all()
    assert (out.float() - reference).norm() / reference.norm() < 3e-2


def test_float64_inputs_are_cast_to_the_parameter_dtype():
    merger = small_tlam()
    labels = make_labels()
    doubled = {k: v.double() if v.is_floating_point() else v for k, v in labels.items()}
    out = merger(doubled)
    assert out.dtype == torch.float32
    torch.testing.assert_close(out, merger(labels))


def test_factory_arguments():
    merger = TLAM(SPECS, dim=6, heads=2, depth=1, device="cpu", dtype=torch.float64, drop="exclude")
    assert all(p.dtype == torch.float64 and p.device.type == "cpu" for p in merger.parameters())
    out = merger(make_labels(dtype=torch.float64), make_masks())
    assert out.dtype == torch.float64


def test_state_dict_round_trip():
    a = small_tlam("exclude")
    b = TLAM(SPECS, dim=12, depth=2, heads=3, mlp_ratio=2.0, drop="exclude", backend="torch")
    b.load_state_dict(a.state_dict())
    labels, masks = make_labels(), make_masks()
    assert torch.equal(a(labels, masks), b(labels, masks))


def test_out_channels_and_paper_defaults():
    merger = TLAM(SPECS)
    assert merger.out_channels == 96 and merger.depth == 3 and merger.heads == 3
    assert merger.blocks[0].mlp.fc1.out_features == 384
    assert merger.label_names == list(SPECS)


def test_empty_batch():
    merger = small_tlam()
    out = merger(make_labels(0, 3, 4))
    assert out.shape == (0, 12, 3, 4)


def test_torch_compile_fullgraph():
    merger = small_tlam("exclude")
    labels, masks = make_labels(), make_masks()
    compiled = torch.compile(merger, fullgraph=True)
    out = compiled(labels, masks)
    torch.testing.assert_close(out, merger(labels, masks), rtol=1e-4, atol=1e-5)
    out.sum().backward()
    assert all(torch.isfinite(p.grad).all() for p in merger.parameters())


# ---------------------------------------------------------------- contributions


@pytest.mark.parametrize("drop", ["zero", "exclude"])
def test_contributions_sum_to_one_over_present_labels(drop):
    merger = small_tlam(drop)
    labels, masks = make_labels(), make_masks()
    c = merger.contributions(labels, masks)
    assert c.shape == (2, len(SPECS), 5, 7)
    present = torch.stack([masks[n] & (labels[n] != 0 if n == "semantic" else True) for n in SPECS], dim=1)
    assert (c[~present] == 0).all()
    sums = c.sum(dim=1)
    any_present = present.any(dim=1)
    torch.testing.assert_close(sums[any_present], torch.ones_like(sums[any_present]))
    assert (sums[~any_present] == 0).all()
    last = merger.contributions(labels, masks, layer=-1)
    assert not torch.allclose(last, c)


def test_contributions_of_a_single_present_label_are_one():
    merger = small_tlam("zero")
    labels = make_labels(1, 2, 2)
    masks = {n: torch.zeros(1, 2, 2, dtype=torch.bool) for n in SPECS}
    masks["depth"][:] = True
    c = merger.contributions(labels, masks)
    torch.testing.assert_close(c[:, 1], torch.ones(1, 2, 2))


def test_contributions_by_hand_for_one_layer():
    """Attention received, mean over heads and queries, computed directly from q and k."""
    torch.manual_seed(3)
    merger = TLAM({"a": LabelSpec.continuous(1), "b": LabelSpec.continuous(1)}, dim=4, depth=1, heads=2)
    labels = {"a": torch.randn(1, 1, 1, 1), "b": torch.randn(1, 1, 1, 1)}
    block = merger.blocks[0]
    z = torch.stack(
        [F.gelu(merger.proj[n](labels[n].view(1, 1))) + merger.label_embed[i] for i, n in enumerate("ab")], dim=1
    )  # (1, 2, 4)
    q, k, _ = block.attn.qkv(block.norm1(z)).chunk(3, dim=-1)
    probs = []
    for h in range(2):
        s = q[..., 2 * h : 2 * h + 2] @ k[..., 2 * h : 2 * h + 2].transpose(1, 2) / math.sqrt(2)
        probs.append(s.softmax(-1))
    received = torch.stack(probs).mean(0).mean(1)  # (1, 2): mean over heads, then queries
    c = merger.contributions(labels)
    torch.testing.assert_close(c.view(1, 2), received.detach())


def test_cpu_fused_attention_equals_the_explicit_form():
    """On the CPU the reference uses PyTorch's fused attention unless weights are asked for."""
    from label_merge import reference

    torch.manual_seed(0)
    block = small_tlam().blocks[0]
    x = torch.randn(50, 5, 12, dtype=torch.float64, requires_grad=True)
    key_mask = reference.attention_keys(torch.rand(50, 5) > 0.5)
    a = block.attn.double()
    args = (x, key_mask, a.qkv.weight, a.qkv.bias, a.proj.weight, a.proj.bias, a.heads)
    fused = reference.attention(*args)
    explicit, _ = reference.attention(*args, return_weights=True)
    torch.testing.assert_close(fused, explicit)
    (g_fused,) = torch.autograd.grad(fused.square().sum(), x)
    (g_explicit,) = torch.autograd.grad(explicit.square().sum(), x)
    torch.testing.assert_close(g_fused, g_explicit)


def test_token_states_end_in_the_concept_and_follow_the_equations():
    from label_merge import TLAM, LabelSpec

    torch.manual_seed(0)
    specs = {"semantic": LabelSpec.categorical(5, ignore_index=0), "depth": LabelSpec.continuous(1)}
    for drop in ("zero", "exclude"):
        m = TLAM(specs, dim=8, depth=2, heads=2, drop=drop, chunk_pixels=7).eval()
        labels = {"semantic": torch.randint(0, 5, (2, 3, 5)), "depth": torch.rand(2, 1, 3, 5)}
        masks = {"depth": torch.rand(2, 3, 5) > 0.5}
        states = m.token_states(labels, masks)
        assert len(states) == 3 and all(s.shape == (2, 2, 8, 3, 5) for s in states)
        if drop == "zero":
            torch.testing.assert_close(states[-1].mean(dim=1), m(labels, masks), rtol=1e-5, atol=1e-6)
        # The embedded semantic token is Eq. (1) plus the label encoding: GELU(A[:, id] + b) + p_0.
        ids = labels["semantic"]
        proj = m.proj["semantic"]
        expected = torch.nn.functional.gelu(proj.weight.t()[ids] + proj.bias) + m.label_embed[0]  # (B, H, W, d)
        expected = torch.where((ids > 0)[..., None], expected, torch.nn.functional.gelu(proj.bias) + m.label_embed[0])
        torch.testing.assert_close(states[0][:, 0], expected.permute(0, 3, 1, 2))
    empty = m.token_states({"semantic": torch.zeros(0, 3, 5, dtype=torch.long)})
    assert empty[0].shape == (0, 2, 8, 3, 5)
