"""SPADE generator: structure, SPADE modulation, concept resizing, shapes, errors."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch.nn.utils import parametrize

from examples.spade import SPADE, SPADEConfig, SPADEGenerator, SPADEResnetBlock, resize_concept
from examples.weight_init import init_weights

SMALL = SPADEConfig.small()


@pytest.mark.parametrize("norm", ["batch", "instance"])
def test_shapes_ranges_and_changing_batch(norm):
    torch.manual_seed(0)
    g = init_weights(SPADEGenerator(5, config=SMALL.replace(param_free_norm=norm)))
    for B, H, W in [(2, 64, 96), (3, 64, 64), (2, 32, 128), (4, 64, 96)]:
        y = g(torch.randn(B, 5, H, W))
        assert y.shape == (B, 3, H, W)
        assert torch.isfinite(y).all() and y.abs().max() <= 1
    g.eval()
    assert g(torch.randn(1, 5, 64, 96)).shape == (1, 3, 64, 96)


@pytest.mark.parametrize("mode,size", [("more", (64, 128)), ("most", (128, 128))])
def test_more_and_most_upsampling(mode, size):
    g = SPADEGenerator(3, config=SPADEConfig(ngf=2, hidden_channels=4, num_upsampling_layers=mode))
    assert g.num_upsampling == {"more": 6, "most": 7}[mode]
    assert hasattr(g, "up_4") == (mode == "most")
    assert g(torch.randn(2, 3, *size)).shape == (2, 3, *size)


def test_structure_widths_shortcuts_and_spectral_norm():
    g = SPADEGenerator(6, config=SMALL)  # ngf = 4
    widths = [
        (b.conv_0.in_channels, b.conv_1.out_channels)
        for b in (g.head_0, g.G_middle_0, g.G_middle_1, g.up_0, g.up_1, g.up_2, g.up_3)
    ]
    assert widths == [(64, 64), (64, 64), (64, 64), (64, 32), (32, 16), (16, 8), (8, 4)]
    for block in g.modules():
        if isinstance(block, SPADEResnetBlock):
            fin, fout = block.conv_0.in_channels, block.conv_1.out_channels
            assert block.learned_shortcut == (fin != fout)
            assert hasattr(block, "conv_s") == (fin != fout)
            if block.learned_shortcut:
                assert block.conv_s.bias is None and block.conv_s.kernel_size == (1, 1)
            for conv in [block.conv_0, block.conv_1] + ([block.conv_s] if block.learned_shortcut else []):
                assert parametrize.is_parametrized(conv, "weight")
    # Spectral norm only on the residual blocks' convs: not on fc, conv_img or SPADE's own convs.
    sn = {n for n, m in g.named_modules() if parametrize.is_parametrized(m)}
    assert sn and all(".conv_" in n for n in sn)
    assert not any(
        parametrize.is_parametrized(m) for m in SPADEGenerator(6, config=SMALL.replace(spectral_norm=False)).modules()
    )
    for m in g.modules():
        if isinstance(m, SPADE):
            assert isinstance(m.norm, torch.nn.BatchNorm2d) and not m.norm.affine


def test_spade_modulation_formula():
    torch.manual_seed(1)
    layer = SPADE(3, 2, hidden_channels=4, param_free_norm="instance")
    for conv in (layer.gamma, layer.beta):
        torch.nn.init.zeros_(conv.weight)
    torch.nn.init.constant_(layer.gamma.bias, 1.0)  # gamma = 1 everywhere
    torch.nn.init.constant_(layer.beta.bias, 0.5)  # beta = 0.5 everywhere
    x = torch.randn(2, 3, 4, 6) * 3 + 2
    out = layer(x, torch.randn(2, 2, 8, 12))
    mean = x.mean(dim=(2, 3), keepdim=True)
    var = x.var(dim=(2, 3), unbiased=False, keepdim=True)
    expected = (x - mean) / torch.sqrt(var + 1e-5) * 2 + 0.5
    assert torch.allclose(out, expected, atol=1e-5)


def test_spade_depends_on_concept_only_through_its_resized_version():
    torch.manual_seed(2)
    layer = SPADE(3, 2, hidden_channels=4, concept_resize="area")
    x = torch.randn(2, 3, 4, 6)
    c = torch.randn(2, 2, 8, 12)
    # A zero-mean perturbation inside each 2x2 block leaves the block means, hence the output, unchanged.
    bump = torch.tensor([[1.0, -1.0], [-1.0, 1.0]]).repeat(4, 6)
    assert torch.allclose(layer(x, c), layer(x, c + bump), atol=1e-6)
    assert not torch.allclose(layer(x, c), layer(x, c + 1.0), atol=1e-3)


def test_resize_modes():
    torch.manual_seed(3)
    c = torch.randn(2, 3, 16, 24)
    assert resize_concept(c, (16, 24)) is c
    assert torch.allclose(resize_concept(c, (4, 6), "area"), F.avg_pool2d(c, 4))
    assert torch.equal(resize_concept(c, (4, 6), "nearest"), c[..., ::4, ::4])
    const = torch.full((1, 2, 16, 16), 0.3)
    assert torch.allclose(resize_concept(const, (4, 4), "bilinear"), torch.full((1, 2, 4, 4), 0.3))
    with pytest.raises(ValueError, match="mode"):
        resize_concept(c, (4, 6), "bicubic")


def test_gradients_reach_every_parameter_and_the_concept():
    torch.manual_seed(4)
    g = init_weights(SPADEGenerator(4, config=SMALL))
    x = torch.randn(2, 4, 64, 64, requires_grad=True)
    g(x).square().mean().backward()
    assert x.grad is not None and x.grad.abs().sum() > 0
    for name, p in g.named_parameters():
        assert p.grad is not None and torch.isfinite(p.grad).all(), name


def test_errors():
    g = SPADEGenerator(4, config=SMALL)
    with pytest.raises(ValueError, match=r"48x64 must be divisible by 2\*\*5 = 32"):
        g(torch.randn(1, 4, 48, 64))
    with pytest.raises(ValueError, match="4 channels, got 3"):
        g(torch.randn(1, 3, 64, 64))
    with pytest.raises(TypeError, match="floating-point"):
        g(torch.zeros(1, 4, 64, 64, dtype=torch.int64))
    with pytest.raises(ValueError, match="param_free_norm"):
        SPADEConfig(param_free_norm="syncbatch")
    with pytest.raises(ValueError, match="num_upsampling_layers"):
        SPADEConfig(num_upsampling_layers="many")
    with pytest.raises(ValueError, match="ngf"):
        SPADEConfig(ngf=0)
