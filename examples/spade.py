"""SPADE generator (Park et al., CVPR 2019) taking a concept tensor as its input.

The paper's second backbone (Table 1). The concept tensor takes the place of the one-hot
segmentation map: every SPADE layer normalises its activations without parameters and then
modulates them with a per-pixel scale and shift computed from the concept tensor resized to
the layer's resolution.

Resizing a *continuous* concept tensor: SPADE resizes its one-hot map with nearest neighbour,
which for a continuous tensor keeps one pixel out of every ``k x k`` block and aliases (at the
head, ``k = 32``). The default here is ``"area"``: the exact mean over each block (sizes always
divide, see :class:`SPADEGenerator`), a box low-pass that keeps every pixel's contribution and
every pixel's gradient to the label merger. ``"nearest"`` reproduces SPADE; ``"bilinear"`` uses
an antialiased bilinear filter.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.utils.parametrizations import spectral_norm

from ._checks import check_image_like, one_of, positive_int

__all__ = ["SPADEConfig", "SPADEGenerator", "SPADE", "SPADEResnetBlock", "resize_concept"]

RESIZE_MODES = ("area", "nearest", "bilinear")
PARAM_FREE_NORMS = ("batch", "instance")
UPSAMPLING_LAYERS = {"normal": 5, "more": 6, "most": 7}


def resize_concept(concept: torch.Tensor, size: tuple[int, int], mode: str = "area") -> torch.Tensor:
    """Resize a ``(B, C, H, W)`` concept tensor to ``size``; a no-op when the size already matches.

    Args:
        concept: ``(B, C, H, W)``.
        size: Target ``(h, w)``.
        mode: ``"area"`` (block mean), ``"nearest"`` (SPADE's choice for one-hot maps) or
            ``"bilinear"`` (antialiased, ``align_corners=False``).

    Returns:
        ``(B, C, h, w)``.

    Raises:
        ValueError: Unknown ``mode``.

    Example:
        >>> resize_concept(torch.arange(16.0).view(1, 1, 4, 4), (2, 2)).flatten().tolist()
        [2.5, 4.5, 10.5, 12.5]
    """
    one_of("mode", mode, RESIZE_MODES)
    size = tuple(int(s) for s in size)
    if tuple(concept.shape[-2:]) == size:
        return concept
    if mode == "bilinear":
        return F.interpolate(concept, size=size, mode="bilinear", align_corners=False, antialias=True)
    return F.interpolate(concept, size=size, mode=mode)


@dataclass(frozen=True)
class SPADEConfig:
    """Hyper-parameters of :class:`SPADEGenerator`; the defaults are SPADE's (``ngf=64``).

    Attributes:
        ngf: Base width; the blocks run at ``16, 16, 16, 8, 4, 2, 1 (, 1/2)`` times ``ngf``.
        num_upsampling_layers: ``"normal"`` (5 doublings: the head is ``H/32 x W/32``),
            ``"more"`` (6) or ``"most"`` (7, adds a block at ``ngf // 2``).
        param_free_norm: ``"batch"`` (SPADE's default, which is synchronised BatchNorm there)
            or ``"instance"``; both without affine parameters.
        spectral_norm: Spectral norm on the residual blocks' convolutions (SPADE's default).
        hidden_channels: Width of each SPADE layer's shared conv (SPADE: 128).
        concept_resize: How the concept tensor is resized to each block: ``"area"``,
            ``"nearest"`` or ``"bilinear"`` (see :func:`resize_concept`).
    """

    ngf: int = 64
    num_upsampling_layers: str = "normal"
    param_free_norm: str = "batch"
    spectral_norm: bool = True
    hidden_channels: int = 128
    concept_resize: str = "area"

    def __post_init__(self) -> None:
        positive_int("ngf", self.ngf)
        positive_int("hidden_channels", self.hidden_channels)
        one_of("num_upsampling_layers", self.num_upsampling_layers, tuple(UPSAMPLING_LAYERS))
        one_of("param_free_norm", self.param_free_norm, PARAM_FREE_NORMS)
        one_of("concept_resize", self.concept_resize, RESIZE_MODES)
        if self.num_upsampling_layers == "most" and self.ngf < 2:
            raise ValueError(f"num_upsampling_layers='most' needs ngf >= 2 (last block has ngf // 2), got {self.ngf}")

    @classmethod
    def small(cls, **overrides) -> SPADEConfig:
        """A tiny configuration for CPU demos and tests: ``ngf=4, hidden_channels=16``."""
        base = dict(ngf=4, hidden_channels=16)
        base.update(overrides)
        return cls(**base)

    def replace(self, **changes) -> SPADEConfig:
        """A copy with some fields changed."""
        return dataclasses.replace(self, **changes)


class SPADE(nn.Module):
    """Spatially-adaptive normalisation: ``norm(x) * (1 + gamma(c)) + beta(c)``.

    ``norm`` is BatchNorm2d or InstanceNorm2d without affine parameters; ``c`` is the concept
    tensor resized to ``x``'s resolution, passed through a shared 3x3 conv + ReLU, then two 3x3
    convs giving ``gamma`` and ``beta``.

    Args:
        norm_channels: Channels of ``x``.
        concept_channels: Channels of the concept tensor.
        hidden_channels: Width of the shared conv.
        param_free_norm: ``"batch"`` or ``"instance"``.
        concept_resize: See :func:`resize_concept`.

    Example:
        >>> layer = SPADE(8, 5, hidden_channels=4)
        >>> layer(torch.randn(2, 8, 4, 6), torch.randn(2, 5, 16, 24)).shape
        torch.Size([2, 8, 4, 6])
    """

    def __init__(
        self,
        norm_channels: int,
        concept_channels: int,
        *,
        hidden_channels: int = 128,
        param_free_norm: str = "batch",
        concept_resize: str = "area",
    ) -> None:
        super().__init__()
        one_of("param_free_norm", param_free_norm, PARAM_FREE_NORMS)
        one_of("concept_resize", concept_resize, RESIZE_MODES)
        norm_cls = nn.BatchNorm2d if param_free_norm == "batch" else nn.InstanceNorm2d
        self.norm = norm_cls(norm_channels, affine=False)
        self.concept_resize = concept_resize
        self.shared = nn.Sequential(nn.Conv2d(concept_channels, hidden_channels, 3, padding=1), nn.ReLU(inplace=True))
        self.gamma = nn.Conv2d(hidden_channels, norm_channels, 3, padding=1)
        self.beta = nn.Conv2d(hidden_channels, norm_channels, 3, padding=1)

    def forward(self, x: torch.Tensor, concept: torch.Tensor) -> torch.Tensor:
        """``x (B, C_x, h, w)``, ``concept (B, C, H, W)`` -> ``(B, C_x, h, w)``."""
        actv = self.shared(resize_concept(concept, x.shape[-2:], self.concept_resize))
        return self.norm(x) * (1 + self.gamma(actv)) + self.beta(actv)


class SPADEResnetBlock(nn.Module):
    """SPADE residual block: ``(SPADE, LeakyReLU 0.2, 3x3 conv) x 2`` plus a shortcut.

    The shortcut is learned (SPADE + bias-free 1x1 conv, no activation) when ``fin != fout``,
    the identity otherwise. The middle width is ``min(fin, fout)``.

    Args:
        fin: Input channels.
        fout: Output channels.
        concept_channels: Channels of the concept tensor.
        config: Norm, spectral norm, hidden width and resize mode.

    Example:
        >>> block = SPADEResnetBlock(8, 4, 5, SPADEConfig.small())
        >>> block(torch.randn(2, 8, 4, 6), torch.randn(2, 5, 16, 24)).shape
        torch.Size([2, 4, 4, 6])
    """

    def __init__(self, fin: int, fout: int, concept_channels: int, config: SPADEConfig) -> None:
        super().__init__()
        fmid = min(fin, fout)
        self.learned_shortcut = fin != fout
        self.concept_resize = config.concept_resize
        sn = spectral_norm if config.spectral_norm else (lambda m: m)
        spade = dict(
            hidden_channels=config.hidden_channels,
            param_free_norm=config.param_free_norm,
            concept_resize=config.concept_resize,
        )
        self.conv_0 = sn(nn.Conv2d(fin, fmid, 3, padding=1))
        self.conv_1 = sn(nn.Conv2d(fmid, fout, 3, padding=1))
        self.norm_0 = SPADE(fin, concept_channels, **spade)
        self.norm_1 = SPADE(fmid, concept_channels, **spade)
        if self.learned_shortcut:
            self.conv_s = sn(nn.Conv2d(fin, fout, 1, bias=False))
            self.norm_s = SPADE(fin, concept_channels, **spade)

    def forward(self, x: torch.Tensor, concept: torch.Tensor) -> torch.Tensor:
        """``x (B, fin, h, w)``, ``concept (B, C, H, W)`` -> ``(B, fout, h, w)``."""
        # Resize once for the block's (up to) three SPADE layers, which share its resolution.
        concept = resize_concept(concept, x.shape[-2:], self.concept_resize)
        shortcut = self.conv_s(self.norm_s(x, concept)) if self.learned_shortcut else x
        dx = self.conv_0(F.leaky_relu(self.norm_0(x, concept), 0.2))
        dx = self.conv_1(F.leaky_relu(self.norm_1(dx, concept), 0.2))
        return shortcut + dx


class SPADEGenerator(nn.Module):
    """SPADE generator without the VAE encoder: ``generator(concept) -> image``.

    The concept tensor, resized to ``(H, W) / 2**n`` (``n`` = 5, 6 or 7 doublings), goes through
    a 3x3 conv to ``16 ngf`` channels; then SPADE residual blocks ``head_0``, ``G_middle_0``,
    ``G_middle_1`` (``16 ngf``), ``up_0 .. up_3`` (``8, 4, 2, 1`` x ``ngf``; ``up_4`` at
    ``ngf // 2`` for ``"most"``) with nearest x2 upsampling in between, then LeakyReLU 0.2, a
    3x3 conv to the image and tanh. Works for any batch size and any ``H, W`` divisible by
    ``2**n``.

    Args:
        in_channels: Channels of the input (``merger.out_channels``, or classes for one-hot).
        out_channels: Image channels (3).
        config: :class:`SPADEConfig` (default: SPADE's sizes).

    Raises:
        ValueError: Bad channel counts or config.

    Example:
        >>> g = SPADEGenerator(7, config=SPADEConfig.small())
        >>> g(torch.randn(2, 7, 64, 96)).shape
        torch.Size([2, 3, 64, 96])
    """

    def __init__(self, in_channels: int, out_channels: int = 3, *, config: SPADEConfig | None = None) -> None:
        super().__init__()
        positive_int("in_channels", in_channels)
        positive_int("out_channels", out_channels)
        cfg = config if config is not None else SPADEConfig()
        if not isinstance(cfg, SPADEConfig):
            raise TypeError(f"config must be a SPADEConfig, got {type(cfg).__name__}")
        self.config = cfg
        self.in_channels = in_channels
        self.out_channels = out_channels
        nf, c = cfg.ngf, in_channels
        self.fc = nn.Conv2d(in_channels, 16 * nf, 3, padding=1)
        self.head_0 = SPADEResnetBlock(16 * nf, 16 * nf, c, cfg)
        self.G_middle_0 = SPADEResnetBlock(16 * nf, 16 * nf, c, cfg)
        self.G_middle_1 = SPADEResnetBlock(16 * nf, 16 * nf, c, cfg)
        self.up_0 = SPADEResnetBlock(16 * nf, 8 * nf, c, cfg)
        self.up_1 = SPADEResnetBlock(8 * nf, 4 * nf, c, cfg)
        self.up_2 = SPADEResnetBlock(4 * nf, 2 * nf, c, cfg)
        self.up_3 = SPADEResnetBlock(2 * nf, nf, c, cfg)
        final = nf
        if cfg.num_upsampling_layers == "most":
            self.up_4 = SPADEResnetBlock(nf, nf // 2, c, cfg)
            final = nf // 2
        self.conv_img = nn.Conv2d(final, out_channels, 3, padding=1)

    @property
    def num_upsampling(self) -> int:
        """Number of x2 upsamplings between the head and the image (5, 6 or 7)."""
        return UPSAMPLING_LAYERS[self.config.num_upsampling_layers]

    @staticmethod
    def _up(x: torch.Tensor) -> torch.Tensor:
        return F.interpolate(x, scale_factor=2, mode="nearest")

    def forward(self, concept: torch.Tensor) -> torch.Tensor:
        """Generate an image from a concept tensor.

        Args:
            concept: ``(B, in_channels, H, W)`` float tensor, ``H`` and ``W`` divisible by
                ``2**num_upsampling`` (32 for ``"normal"``).

        Returns:
            ``(B, out_channels, H, W)`` in ``[-1, 1]``.

        Raises:
            TypeError: Not a floating-point tensor.
            ValueError: Wrong rank or channel count, or ``H``/``W`` not divisible.
        """
        _, H, W = check_image_like("concept", concept, self.in_channels)
        n = self.num_upsampling
        if H % (1 << n) or W % (1 << n):
            raise ValueError(
                f"image size {H}x{W} must be divisible by 2**{n} = {1 << n} "
                f"(num_upsampling_layers={self.config.num_upsampling_layers!r})"
            )
        mode = self.config.concept_resize
        x = self.fc(resize_concept(concept, (H >> n, W >> n), mode))  # (B, 16 ngf, H / 2**n, W / 2**n)
        x = self._up(self.head_0(x, concept))
        x = self.G_middle_0(x, concept)
        if n >= 6:
            x = self._up(x)
        x = self.G_middle_1(x, concept)
        for block in (self.up_0, self.up_1, self.up_2, self.up_3):
            x = block(self._up(x), concept)
        if n == 7:
            x = self.up_4(self._up(x), concept)
        return torch.tanh(self.conv_img(F.leaky_relu(x, 0.2)))
