"""Mergers plug into the generators and the discriminator; gradients reach merger, G and D."""

from __future__ import annotations

import pytest
import torch

from examples.asapnet import ASAPNetConfig, ASAPNetGenerator
from examples.discriminator import MultiscaleDiscriminator
from examples.losses import feature_matching_loss, hinge_loss_d_fake, hinge_loss_d_real, hinge_loss_g
from examples.spade import SPADEConfig, SPADEGenerator
from examples.weight_init import init_weights
from label_merge import CLAM, TLAM, LabelSpec, NaiveConcat

SPECS = {
    "semantic": LabelSpec.categorical(5, ignore_index=0),
    "depth": LabelSpec.continuous(1),
    "normal": LabelSpec.continuous(3),
}


def make_generator(kind: str, in_channels: int):
    if kind == "asap":
        return ASAPNetGenerator(in_channels, config=ASAPNetConfig.small())
    return SPADEGenerator(in_channels, config=SPADEConfig.small())


def random_labels(B: int, H: int, W: int) -> dict[str, torch.Tensor]:
    return {
        "semantic": torch.randint(0, 5, (B, H, W)),
        "depth": torch.rand(B, 1, H, W),
        "normal": torch.randn(B, 3, H, W),
    }


@pytest.mark.parametrize("kind", ["asap", "spade"])
@pytest.mark.parametrize("in_channels", [7, 96])
def test_generators_and_discriminator_accept_any_channel_count(kind, in_channels):
    g = make_generator(kind, in_channels)
    d = MultiscaleDiscriminator(in_channels, ndf=4)
    concept = torch.randn(2, in_channels, 32, 64)
    img = g(concept)
    assert img.shape == (2, 3, 32, 64)
    assert len(d(concept, img)) == 2


@pytest.mark.parametrize("kind", ["asap", "spade"])
@pytest.mark.parametrize(
    "make_merger",
    [
        lambda: TLAM(SPECS, dim=12, depth=1, heads=3, backend="torch"),
        lambda: CLAM(SPECS, dim=12, depth=1),
        lambda: NaiveConcat(SPECS),
    ],
    ids=["tlam", "clam", "naive"],
)
def test_one_training_step_reaches_merger_generator_and_discriminator(kind, make_merger):
    torch.manual_seed(0)
    merger = make_merger()
    g = init_weights(make_generator(kind, merger.out_channels))
    d = init_weights(MultiscaleDiscriminator(merger.out_channels, ndf=4))
    B, H, W = 2, 32, 64
    labels = random_labels(B, H, W)
    real = torch.rand(B, 3, H, W) * 2 - 1

    # Generator step: hinge + feature matching (the D conditioning sees the same concept).
    concept = merger(labels)
    fake = g(concept)
    fake_out, real_out = d(concept, fake), d(concept, real)
    loss_g = hinge_loss_g(fake_out) + feature_matching_loss(fake_out, real_out)
    loss_g.backward()
    for name, p in list(g.named_parameters()) + list(merger.named_parameters()):
        assert p.grad is not None and torch.isfinite(p.grad).all(), name
    assert any(p.grad.abs().sum() > 0 for p in g.parameters())

    # Discriminator step on a detached fake.
    d.zero_grad()
    with torch.no_grad():
        concept = merger(labels)
        fake = g(concept)
    loss_d = hinge_loss_d_fake(d(concept, fake)) + hinge_loss_d_real(d(concept, real))
    loss_d.backward()
    for name, p in d.named_parameters():
        assert p.grad is not None and torch.isfinite(p.grad).all(), name
