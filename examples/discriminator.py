"""Multi-scale conditional patch discriminator (pix2pixHD / SPADE), conditioned on the concept tensor.

``D(concept, image)`` concatenates the concept tensor and the image on the channel axis (the
paper, Sec. 3.2: the concept tensor replaces the one-hot label map that SPADE/ASAP concatenate)
and runs ``num_scales`` identical patch discriminators, the input being average-pooled (3x3,
stride 2, padding 1, ``count_include_pad=False``) between scales.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.utils.parametrizations import spectral_norm

from ._checks import check_image_like, one_of, positive_int

__all__ = ["MultiscaleDiscriminator", "NLayerDiscriminator", "downsample_for_next_scale"]

KERNEL = 4
PADDING = math.ceil((KERNEL - 1) / 2)  # 2
NORMS = ("instance", "none")


def downsample_for_next_scale(x: torch.Tensor) -> torch.Tensor:
    """The pooling between scales: ``avg_pool2d(3, stride=2, padding=1, count_include_pad=False)``.

    Example:
        >>> downsample_for_next_scale(torch.ones(1, 2, 9, 9)).shape
        torch.Size([1, 2, 5, 5])
    """
    return F.avg_pool2d(x, kernel_size=3, stride=2, padding=1, count_include_pad=False)


class NLayerDiscriminator(nn.Module):
    """One patch discriminator; returns every stage's output, the patch logits last.

    Stages (kernel 4, padding 2, LeakyReLU 0.2), for ``n_layers = 4``, ``ndf = 64``:
    ``layer0`` conv in->64 stride 2 (no norm, no spectral norm); ``layer1..3`` conv
    64->128->256->512 (width capped at ``ndf_max``), stride 2 except the last (stride 1), each
    a spectral-normed bias-free conv + InstanceNorm2d (no affine); ``layer4`` conv 512->1 stride
    1 (no norm, no spectral norm): the logits.

    Args:
        in_channels: Input channels (concept + image).
        n_layers: Number of stages before the logit conv (>= 1).
        ndf: Width of the first stage.
        ndf_max: Cap on the width.
        spectral: Spectral norm on the middle stages.
        norm: ``"instance"`` or ``"none"`` on the middle stages (convs keep their bias with
            ``"none"``).

    Example:
        >>> d = NLayerDiscriminator(6, ndf=8)
        >>> [f.shape[1] for f in d(torch.randn(1, 6, 32, 32))]
        [8, 16, 32, 64, 1]
    """

    def __init__(
        self,
        in_channels: int,
        *,
        n_layers: int = 4,
        ndf: int = 64,
        ndf_max: int = 512,
        spectral: bool = True,
        norm: str = "instance",
    ) -> None:
        super().__init__()
        for name, value in (("in_channels", in_channels), ("n_layers", n_layers), ("ndf", ndf), ("ndf_max", ndf_max)):
            positive_int(name, value)
        one_of("norm", norm, NORMS)
        with_norm = norm == "instance"
        stages = [nn.Sequential(nn.Conv2d(in_channels, ndf, KERNEL, stride=2, padding=PADDING), nn.LeakyReLU(0.2))]
        nf = ndf
        for n in range(1, n_layers):
            nf_prev, nf = nf, min(nf * 2, ndf_max)
            stride = 1 if n == n_layers - 1 else 2
            conv = nn.Conv2d(nf_prev, nf, KERNEL, stride=stride, padding=PADDING, bias=not with_norm)
            layers = [spectral_norm(conv) if spectral else conv]
            if with_norm:
                layers.append(nn.InstanceNorm2d(nf, affine=False))
            layers.append(nn.LeakyReLU(0.2))
            stages.append(nn.Sequential(*layers))
        stages.append(nn.Sequential(nn.Conv2d(nf, 1, KERNEL, stride=1, padding=PADDING)))
        self.stages = nn.ModuleList(stages)

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        """``(B, in_channels, H, W)`` -> ``n_layers + 1`` feature maps, the last ``(B, 1, h, w)``."""
        features = []
        for stage in self.stages:
            x = stage(x)
            features.append(x)
        return features


class MultiscaleDiscriminator(nn.Module):
    """``num_scales`` patch discriminators on ``[concept, image]`` at successively halved sizes.

    Args:
        in_channels: Channels of the conditioning tensor (``merger.out_channels``, or the class
            count for a one-hot map). The first conv sees ``in_channels + image_channels``.
        num_scales: Number of discriminators (pix2pixHD/SPADE: 2).
        n_layers: Stages per discriminator (SPADE: 4).
        ndf: Width of the first stage (64).
        ndf_max: Width cap (512).
        image_channels: Image channels (3).
        spectral: Spectral norm on the middle stages (SPADE's ``spectralinstance``).
        norm: ``"instance"`` or ``"none"`` on the middle stages.

    Raises:
        ValueError: Non-positive sizes or an unknown norm.

    Example:
        >>> d = MultiscaleDiscriminator(7, ndf=8)
        >>> out = d(torch.randn(2, 7, 32, 48), torch.rand(2, 3, 32, 48) * 2 - 1)
        >>> len(out), len(out[0]), out[0][-1].shape
        (2, 5, torch.Size([2, 1, 7, 9]))
    """

    def __init__(
        self,
        in_channels: int,
        num_scales: int = 2,
        n_layers: int = 4,
        ndf: int = 64,
        *,
        ndf_max: int = 512,
        image_channels: int = 3,
        spectral: bool = True,
        norm: str = "instance",
    ) -> None:
        super().__init__()
        positive_int("in_channels", in_channels)
        positive_int("num_scales", num_scales)
        positive_int("image_channels", image_channels)
        self.in_channels = in_channels
        self.image_channels = image_channels
        self.discriminators = nn.ModuleList(
            NLayerDiscriminator(
                in_channels + image_channels, n_layers=n_layers, ndf=ndf, ndf_max=ndf_max, spectral=spectral, norm=norm
            )
            for _ in range(num_scales)
        )

    @property
    def num_scales(self) -> int:
        """Number of discriminators."""
        return len(self.discriminators)

    def forward(self, concept: torch.Tensor, image: torch.Tensor) -> list[list[torch.Tensor]]:
        """Score ``image`` given ``concept``.

        Args:
            concept: ``(B, in_channels, H, W)``.
            image: ``(B, image_channels, H, W)`` in ``[-1, 1]``.

        Returns:
            One list per scale (full resolution first) of ``n_layers + 1`` feature maps; the
            last of each is the patch logit map ``(B, 1, h_s, w_s)``.

        Raises:
            TypeError: Non-float inputs.
            ValueError: Wrong channel counts or mismatched batch/spatial sizes.
        """
        bhw_c = check_image_like("concept", concept, self.in_channels)
        bhw_i = check_image_like("image", image, self.image_channels)
        if bhw_c != bhw_i:
            raise ValueError(
                f"concept and image must share batch and spatial size, got (B, H, W) = {bhw_c} and {bhw_i}"
            )
        x = torch.cat([concept, image.to(concept.dtype)], dim=1)  # (B, C + 3, H, W)
        outputs = []
        for i, d in enumerate(self.discriminators):
            if i:
                x = downsample_for_next_scale(x)
            outputs.append(d(x))
        return outputs
