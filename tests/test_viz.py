import pytest
import torch

from label_merge.viz import concept_to_rgb


def test_shape_range_and_determinism():
    concept = torch.randn(2, 96, 9, 7)
    rgb = concept_to_rgb(concept)
    assert rgb.shape == (2, 3, 9, 7) and rgb.min() >= 0 and rgb.max() <= 1
    assert torch.equal(rgb, concept_to_rgb(concept.clone()))
    assert concept_to_rgb(concept[0]).shape == (3, 9, 7)
    assert concept_to_rgb(concept, joint=False).shape == (2, 3, 9, 7)


def test_first_component_recovers_the_dominant_direction():
    torch.manual_seed(0)
    H, W = 8, 16
    ramp = torch.linspace(-1, 1, W).expand(H, W)  # varies along x only
    u = torch.randn(32)
    concept = 5 * ramp[None] * u[:, None, None] + 0.01 * torch.randn(32, H, W)
    red = concept_to_rgb(concept, quantile=0.0)[0]
    corr = torch.corrcoef(torch.stack([red.flatten(), ramp.flatten()]))[0, 1]
    assert corr.abs() > 0.99


def test_few_channels_pad_with_zero():
    rgb = concept_to_rgb(torch.randn(1, 2, 4, 4))
    assert (rgb[:, 2] == 0).all()


def test_bad_input():
    with pytest.raises(ValueError, match="concept must be"):
        concept_to_rgb(torch.randn(4, 4))
    with pytest.raises(ValueError, match="quantile"):
        concept_to_rgb(torch.randn(3, 4, 4), quantile=0.5)
