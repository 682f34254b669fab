"""ASAP-Net generator: parameter layout, nearest tiling, positional encoding, shapes, errors."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from examples.asapnet import (
    ASAPNetConfig,
    ASAPNetGenerator,
    PixelwiseMLPs,
    TentDownsample,
    asap_downsampling,
    cosine_positional_encoding,
    num_positional_channels,
    pixelwise_mlp_num_params,
)
from examples.weight_init import init_weights

SMALL = ASAPNetConfig.small()  # S = 8, learned 4


def closed_form_num_params(c: int, s: int, w: int, d: int, out: int = 3) -> int:
    """The reference notes' formula: (C + 4 log2 S) w + w + (d - 2)(w^2 + w) + w out + out."""
    cin = c + 4 * int(math.log2(s))
    return cin * w + w + (d - 2) * (w * w + w) + w * out + out


@pytest.mark.parametrize("c", [1, 7, 35, 96])
@pytest.mark.parametrize("s,w,d", [(8, 16, 3), (16, 64, 5), (4, 8, 2), (32, 12, 4)])
def test_num_params_matches_closed_form(c, s, w, d):
    cfg = ASAPNetConfig.small(downsampling=s, learned_ds_factor=min(4, s), hr_width=w, hr_depth=d)
    g = ASAPNetGenerator(c, config=cfg)
    expected = closed_form_num_params(c, s, w, d)
    assert g.num_params == expected
    assert g.lr_stream.to_params.out_channels == expected


def test_num_params_known_values():
    # Values computed in the reference notes for ASAP's default widths.
    assert pixelwise_mlp_num_params([35 + 16, 64, 64, 64, 64, 3]) == 16003  # Cityscapes
    assert pixelwise_mlp_num_params([13 + 20, 64, 64, 64, 64, 3]) == 14851  # facades 512, S = 32
    assert pixelwise_mlp_num_params([13 + 24, 64, 64, 64, 64, 3]) == 15107  # facades 1024, S = 64
    with torch.device("meta"):
        g = ASAPNetGenerator(96)
    assert g.num_params == 19907


def test_default_lr_stream_size():
    with torch.device("meta"):
        g = ASAPNetGenerator(35)
    convs = [m for m in g.lr_stream.blocks.modules() if isinstance(m, torch.nn.Conv2d)]
    assert len(convs) == 7 and all(c.in_channels == c.out_channels == 1024 for c in convs)
    assert sum(c.weight.numel() for c in convs) == 7 * 1024 * 1024 * 9  # 66.1M
    assert sum(p.numel() for p in g.lr_stream.to_params.parameters()) == 1024 * 16003 + 16003  # 16.4M
    # Four stride-2 convs (learned factor 16): 64 wide, the last widening to 1024; no pre-downsampling.
    strides = [m.stride[0] for m in g.lr_stream.down.modules() if isinstance(m, torch.nn.Conv2d)]
    widths = [m.out_channels for m in g.lr_stream.down.modules() if isinstance(m, torch.nn.Conv2d)]
    assert strides == [2, 2, 2, 2] and widths == [64, 64, 64, 1024]
    assert isinstance(g.pre_downsample, torch.nn.Identity)


def test_lr_convs_are_bias_free_before_instance_affine_norm():
    g = ASAPNetGenerator(5, config=SMALL)
    for seq in [g.lr_stream.head, *g.lr_stream.down, *g.lr_stream.blocks]:
        conv, norm, act = seq
        assert conv.bias is None
        assert isinstance(norm, torch.nn.InstanceNorm2d) and norm.affine
        assert isinstance(act, torch.nn.ReLU)
    assert g.lr_stream.to_params.bias is not None


@pytest.mark.parametrize("s", [1, 2, 4, 8, 16, 32, 64])
def test_positional_channel_count(s):
    assert num_positional_channels(s) == 4 * round(math.log2(s))
    assert cosine_positional_encoding(2 * s, 3 * s, s).shape == (4 * round(math.log2(s)), 2 * s, 3 * s)


def test_positional_encoding_values_and_periodicity():
    s, H, W = 16, 32, 48
    enc = cosine_positional_encoding(H, W, s, dtype=torch.float64)
    # Each group of 4 channels has period f = S, S/2, ..., 2 in x (columns) and y (rows).
    for g, f in enumerate([16, 8, 4, 2]):
        group = enc[4 * g : 4 * g + 4]
        assert torch.allclose(group[:, :, f:], group[:, :, :-f])
        assert torch.allclose(group[:, f:, :], group[:, :-f, :])
        for y, x in [(0, 0), (5, 11), (31, 47), (17, 3)]:
            ref = [
                math.cos(2 * math.pi * (x % f) / f),
                math.sin(2 * math.pi * (x % f) / f),
                math.cos(2 * math.pi * (y % f) / f),
                math.sin(2 * math.pi * (y % f) / f),
            ]
            assert torch.allclose(group[:, y, x], torch.tensor(ref, dtype=torch.float64), atol=1e-12)
    # Same code in every tile: the encoding only sees the position inside the S x S tile.
    assert torch.equal(enc[:, :s, :s], enc[:, s:, 2 * s :])
    # x channels are constant along rows (y), y channels along columns.
    assert torch.equal(enc[0], enc[0, :1].expand(H, W))
    assert torch.equal(enc[2], enc[2, :, :1].expand(H, W))


def test_tent_kernel_and_constant_preservation():
    assert torch.allclose(TentDownsample(2).kernel, torch.tensor([1.0, 3, 3, 1]) / 8)
    assert torch.allclose(TentDownsample(4).kernel, torch.tensor([1.0, 3, 5, 7, 7, 5, 3, 1]) / 32)
    x = torch.full((2, 3, 16, 24), 0.7)
    y = TentDownsample(4)(x)
    assert y.shape == (2, 3, 4, 6)
    assert torch.allclose(y, torch.full_like(y, 0.7))


def test_tent_matches_2d_outer_product_filter():
    torch.manual_seed(0)
    x = torch.randn(1, 2, 8, 12, dtype=torch.float64)
    k1 = torch.tensor([1.0, 3, 3, 1], dtype=torch.float64) / 8
    k2 = torch.outer(k1, k1).expand(2, 1, 4, 4)  # (C, 1, 4, 4) depthwise
    ref = F.conv2d(F.pad(x, (1, 1, 1, 1), mode="reflect"), k2, stride=2, groups=2)
    assert torch.allclose(TentDownsample(2).double()(x), ref)


def test_pixelwise_mlp_against_per_pixel_loop():
    torch.manual_seed(1)
    mlp = PixelwiseMLPs([5, 4, 3])
    B, H, W, S = 2, 4, 6, 2
    x = torch.randn(B, 5, H, W, dtype=torch.float64)
    params = torch.randn(B, mlp.num_params, H // S, W // S, dtype=torch.float64)
    out = mlp(x, params, tile=S)
    for b in range(B):
        for i in range(H):
            for j in range(W):
                p = params[b, :, i // S, j // S]
                z = x[b, :, i, j]
                # Layout: [bias_l (c_out), weight_l (c_in * c_out), input-major], layer by layer.
                b0, w0 = p[0:4], p[4:24].reshape(5, 4)
                b1, w1 = p[24:27], p[27:39].reshape(4, 3)
                h = F.leaky_relu(z @ w0 + b0, 0.01)
                ref = torch.tanh(h @ w1 + b1)
                assert torch.allclose(out[b, :, i, j], ref)


def test_tiling_is_nearest_one_cell_changes_one_tile():
    torch.manual_seed(2)
    g = init_weights(ASAPNetGenerator(6, config=SMALL)).eval()
    S = g.downsampling
    concept = torch.randn(2, 6, 4 * S, 3 * S)
    with torch.no_grad():
        params = g.predict_params(concept)
        assert params.shape == (2, g.num_params, 4, 3)
        base = g.render(concept, params)
        bumped = params.clone()
        bumped[1, :, 2, 1] += torch.randn(g.num_params)
        out = g.render(concept, bumped)
    changed = (out - base).abs().amax(dim=1) > 0  # (B, H, W)
    expected = torch.zeros_like(changed)
    expected[1, 2 * S : 3 * S, 1 * S : 2 * S] = True
    assert torch.equal(changed, expected)


@pytest.mark.parametrize("channels_last", [False, True])
def test_shapes_ranges_and_changing_batch(channels_last):
    torch.manual_seed(3)
    g = init_weights(ASAPNetGenerator(7, config=SMALL))
    for B, H, W in [(2, 32, 48), (3, 16, 64), (1, 64, 8), (5, 8, 16), (2, 32, 48)]:
        x = torch.randn(B, 7, H, W)
        if channels_last:
            x = x.to(memory_format=torch.channels_last)
        y = g(x)
        assert y.shape == (B, 3, H, W)
        assert torch.isfinite(y).all() and y.abs().max() <= 1


def test_channels_last_gives_same_result():
    torch.manual_seed(4)
    g = ASAPNetGenerator(4, config=SMALL).eval()
    x = torch.randn(2, 4, 16, 24)
    with torch.no_grad():
        assert torch.allclose(g(x), g(x.to(memory_format=torch.channels_last)), atol=1e-6)


def test_forward_with_params_and_out_channels():
    g = ASAPNetGenerator(3, out_channels=1, config=SMALL)
    img, params = g.forward_with_params(torch.randn(2, 3, 16, 32))
    assert img.shape == (2, 1, 16, 32) and params.shape == (2, g.num_params, 2, 4)


def test_pre_downsampling_when_learned_factor_is_smaller():
    cfg = ASAPNetConfig.small(downsampling=8, learned_ds_factor=2)
    g = ASAPNetGenerator(4, config=cfg)
    assert isinstance(g.pre_downsample, TentDownsample) and g.pre_downsample.factor == 4
    assert g.predict_params(torch.randn(2, 4, 32, 16)).shape == (2, g.num_params, 4, 2)


def test_no_positional_encoding_and_reflect_padding():
    cfg = ASAPNetConfig.small(positional_encoding=False, padding_mode="reflect", lr_norm="none")
    g = ASAPNetGenerator(4, config=cfg)
    assert g.num_params == closed_form_num_params(4, 1, 16, 3)  # log2(1) = 0 coordinate channels
    assert g(torch.randn(1, 4, 16, 16)).shape == (1, 3, 16, 16)


def test_gradients_reach_every_parameter_and_the_concept():
    torch.manual_seed(5)
    g = init_weights(ASAPNetGenerator(5, config=SMALL))
    x = torch.randn(2, 5, 16, 24, requires_grad=True)
    g(x).square().mean().backward()
    assert x.grad is not None and x.grad.abs().sum() > 0
    for name, p in g.named_parameters():
        assert p.grad is not None and torch.isfinite(p.grad).all(), name


def test_asap_downsampling_rule():
    assert asap_downsampling(256, 512) == 16  # Cityscapes 512 x 256: grid 16 x 32
    assert asap_downsampling(256, 256) == 16
    assert asap_downsampling(512, 512) == 32  # facades 512
    assert asap_downsampling(1024, 1024) == 64  # facades 1024
    cfg = ASAPNetConfig.for_image_size(64, 128)
    assert (cfg.downsampling, cfg.learned_ds_factor) == (4, 4)
    assert ASAPNetConfig.for_image_size(256, 512).learned_ds_factor == 16
    with pytest.raises(ValueError, match="multiple of grid_rows"):
        asap_downsampling(250, 512)
    with pytest.raises(ValueError, match="power of two"):
        asap_downsampling(16 * 12, 16 * 12)
    with pytest.raises(ValueError, match="width 100"):
        asap_downsampling(256, 100)


def test_size_not_divisible_by_s_is_a_clear_error():
    g = ASAPNetGenerator(4, config=SMALL)
    with pytest.raises(ValueError, match=r"20x24 must be divisible by the total downsampling S=8"):
        g(torch.randn(1, 4, 20, 24))


def test_one_cell_grid_is_a_clear_error_unless_norm_is_off():
    with pytest.raises(ValueError, match="1x1 parameter grid"):
        ASAPNetGenerator(4, config=SMALL)(torch.randn(2, 4, 8, 8))
    g = ASAPNetGenerator(4, config=SMALL.replace(lr_norm="none"))
    assert g(torch.randn(2, 4, 8, 8)).shape == (2, 3, 8, 8)


def test_bad_inputs_and_configs():
    g = ASAPNetGenerator(4, config=SMALL)
    with pytest.raises(ValueError, match="4 channels, got 5"):
        g(torch.randn(1, 5, 16, 16))
    with pytest.raises(TypeError, match="floating-point"):
        g(torch.zeros(1, 4, 16, 16, dtype=torch.long))
    with pytest.raises(ValueError, match="shape"):
        g(torch.randn(4, 16, 16))
    with pytest.raises(ValueError, match="params must have shape"):
        g.render(torch.randn(1, 4, 16, 16), torch.randn(1, g.num_params, 3, 2))
    with pytest.raises(ValueError, match="learned_ds_factor"):
        ASAPNetConfig(downsampling=8, learned_ds_factor=16)
    with pytest.raises(ValueError, match="downsampling must be a power of two"):
        ASAPNetConfig(downsampling=12, learned_ds_factor=4)
    with pytest.raises(ValueError, match="padding_mode"):
        ASAPNetConfig(padding_mode="circular")
    with pytest.raises(ValueError, match="in_channels"):
        ASAPNetGenerator(0, config=SMALL)
    with pytest.raises(TypeError, match="ASAPNetConfig"):
        ASAPNetGenerator(3, config={"lr_width": 8})


def test_init_weights_xavier_gain():
    torch.manual_seed(6)
    g = init_weights(ASAPNetGenerator(8, config=ASAPNetConfig.small(lr_max_width=128)), gain=0.02)
    w = g.lr_stream.blocks[0][0].weight  # (128, 128, 3, 3)
    fan = 128 * 9
    expected_std = 0.02 * math.sqrt(2.0 / (fan + fan))
    assert w.std().item() == pytest.approx(expected_std, rel=0.05)
    assert torch.count_nonzero(g.lr_stream.to_params.bias) == 0
    with pytest.raises(ValueError, match="init_type"):
        init_weights(g, init_type="glorot")


def test_mlp_prior_makes_the_per_pixel_mlps_work_from_step_zero():
    """ASAP-Net's init leaves the per-pixel MLPs nearly dead; the prior gives them a real signal."""
    torch.manual_seed(0)
    concept = torch.randn(2, 6, 32, 32)

    def within_tile_std(g):
        out = g(concept)
        tile_mean = F.avg_pool2d(out, 8).repeat_interleave(8, 2).repeat_interleave(8, 3)
        return (out - tile_mean).std().item()

    config = ASAPNetConfig.small()
    asap = init_weights(ASAPNetGenerator(6, config=config))
    hyper = init_weights(ASAPNetGenerator(6, config=config)).init_mlp_prior(generator=torch.Generator().manual_seed(1))
    assert within_tile_std(asap) < 1e-3
    assert within_tile_std(hyper) > 0.05
    prior = hyper.mlp.prior_params(generator=torch.Generator().manual_seed(1))
    torch.testing.assert_close(hyper.lr_stream.to_params.bias, prior)
    for ci, co, offset in hyper.mlp.layers:  # biases zero, weights at the Kaiming scale
        assert (prior[offset : offset + co] == 0).all()
        weights = prior[offset + co : offset + co + ci * co]
        assert abs(weights.std().item() - (2.0 / ci) ** 0.5) < 0.35 * (2.0 / ci) ** 0.5
