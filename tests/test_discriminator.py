"""Multi-scale patch discriminator: output structure, sizes, spectral norm placement, conditioning."""

from __future__ import annotations

import pytest
import torch
from torch.nn.utils import parametrize

from examples.discriminator import MultiscaleDiscriminator, downsample_for_next_scale


def conv_out(n: int, stride: int) -> int:
    """Output size of a kernel-4, padding-2 convolution."""
    return (n + 2 * 2 - 4) // stride + 1


def pool_out(n: int) -> int:
    """Output size of avg_pool2d(3, stride 2, padding 1)."""
    return (n + 2 - 3) // 2 + 1


def expected_sizes(n: int, n_layers: int) -> list[int]:
    sizes = []
    for i in range(n_layers + 1):
        stride = 2 if i < n_layers - 1 else 1
        n = conv_out(n, stride)
        sizes.append(n)
    return sizes


def convs_of(stage):
    return [m for m in stage.modules() if isinstance(m, torch.nn.Conv2d)]


@pytest.mark.parametrize("num_scales,n_layers", [(2, 4), (3, 3), (1, 2)])
def test_output_structure_and_sizes(num_scales, n_layers):
    torch.manual_seed(0)
    ndf = 4
    d = MultiscaleDiscriminator(7, num_scales=num_scales, n_layers=n_layers, ndf=ndf)
    B, H, W = 2, 48, 40
    out = d(torch.randn(B, 7, H, W), torch.rand(B, 3, H, W) * 2 - 1)
    assert len(out) == num_scales == d.num_scales
    h, w = H, W
    for s, feats in enumerate(out):
        if s:
            h, w = pool_out(h), pool_out(w)
        assert len(feats) == n_layers + 1
        widths = [ndf * 2**i for i in range(n_layers)] + [1]
        assert [f.shape[1] for f in feats] == widths
        assert [f.shape[2] for f in feats] == expected_sizes(h, n_layers)
        assert [f.shape[3] for f in feats] == expected_sizes(w, n_layers)
        assert all(f.shape[0] == B for f in feats)


def test_default_widths_and_cap():
    with torch.device("meta"):
        d = MultiscaleDiscriminator(96)
    widths = [convs_of(s)[0].out_channels for s in d.discriminators[0].stages]
    assert widths == [64, 128, 256, 512, 1]
    assert convs_of(d.discriminators[0].stages[0])[0].in_channels == 96 + 3
    d = MultiscaleDiscriminator(5, n_layers=5, ndf=8, ndf_max=16)
    assert [convs_of(s)[0].out_channels for s in d.discriminators[0].stages] == [8, 16, 16, 16, 16, 1]


def test_spectral_and_instance_norm_on_exactly_the_middle_layers():
    d = MultiscaleDiscriminator(4, num_scales=2, n_layers=4, ndf=8)
    for D in d.discriminators:
        stages = list(D.stages)
        for i, stage in enumerate(stages):
            (conv,) = convs_of(stage)
            middle = 0 < i < len(stages) - 1
            assert parametrize.is_parametrized(conv, "weight") == middle, i
            norms = [m for m in stage.modules() if isinstance(m, torch.nn.InstanceNorm2d)]
            assert len(norms) == (1 if middle else 0), i
            assert all(not n.affine for n in norms)
            assert (conv.bias is None) == middle, i
            assert conv.kernel_size == (4, 4) and conv.padding == (2, 2)
            assert conv.stride == ((2, 2) if i < len(stages) - 2 else (1, 1)), i
            acts = [m for m in stage.modules() if isinstance(m, torch.nn.LeakyReLU)]
            assert len(acts) == (0 if i == len(stages) - 1 else 1)
            assert all(a.negative_slope == 0.2 for a in acts)
    plain = MultiscaleDiscriminator(4, ndf=8, spectral=False, norm="none")
    assert not any(parametrize.is_parametrized(m) for m in plain.modules())
    assert not any(isinstance(m, torch.nn.InstanceNorm2d) for m in plain.modules())


def test_pooling_between_scales_excludes_padding():
    x = torch.full((1, 2, 9, 7), 0.25)
    y = downsample_for_next_scale(x)
    assert y.shape == (1, 2, 5, 4)
    assert torch.allclose(y, torch.full_like(y, 0.25))  # corners too: padding is not counted
    z = torch.arange(16.0).view(1, 1, 4, 4)
    assert downsample_for_next_scale(z)[0, 0, 0, 0] == pytest.approx((0 + 1 + 4 + 5) / 4)


def test_second_scale_sees_pooled_concatenation():
    torch.manual_seed(1)
    d = MultiscaleDiscriminator(3, ndf=4).eval()
    c, img = torch.randn(2, 3, 32, 32), torch.rand(2, 3, 32, 32)
    with torch.no_grad():
        out = d(c, img)
        ref = d.discriminators[1](downsample_for_next_scale(torch.cat([c, img], 1)))
    for a, b in zip(out[1], ref, strict=True):
        assert torch.allclose(a, b)


def test_conditioning_on_concept_matters_and_gradients_flow():
    torch.manual_seed(2)
    d = MultiscaleDiscriminator(3, ndf=4)
    c, img = torch.randn(2, 3, 32, 32, requires_grad=True), torch.rand(2, 3, 32, 32, requires_grad=True)
    d.eval()
    with torch.no_grad():
        assert not torch.allclose(d(c, img)[0][-1], d(c + 1, img)[0][-1])
    d.train()
    sum(o[-1].mean() for o in d(c, img)).backward()
    assert c.grad.abs().sum() > 0 and img.grad.abs().sum() > 0
    for name, p in d.named_parameters():
        assert p.grad is not None, name


def test_errors():
    d = MultiscaleDiscriminator(3, ndf=4)
    with pytest.raises(ValueError, match="share batch and spatial size"):
        d(torch.randn(2, 3, 32, 32), torch.rand(2, 3, 32, 16))
    with pytest.raises(ValueError, match="concept must have 3 channels, got 4"):
        d(torch.randn(2, 4, 32, 32), torch.rand(2, 3, 32, 32))
    with pytest.raises(ValueError, match="image must have 3 channels, got 1"):
        d(torch.randn(2, 3, 32, 32), torch.rand(2, 1, 32, 32))
    with pytest.raises(ValueError, match="norm"):
        MultiscaleDiscriminator(3, norm="batch")
    with pytest.raises(ValueError, match="num_scales"):
        MultiscaleDiscriminator(3, num_scales=0)
