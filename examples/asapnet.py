"""ASAP-Net generator (Shaham et al., CVPR 2021) taking a concept tensor as its input.

The paper (Sec. 3.2) feeds the concept tensor ``Z`` of a label merger to ASAP-Net in place of
the one-hot segmentation map. Two streams:

* **Low-resolution stream** (:class:`LowResStream`): convolutions on ``Z`` that end at a grid
  ``S`` times smaller than the image and predict, per grid cell, the weights and biases of a
  small MLP (the final 1x1 convolution has :attr:`PixelwiseMLPs.num_params` output channels).
* **Full-resolution stream** (:class:`PixelwiseMLPs`): every pixel runs the MLP of its grid cell
  on ``[Z, cosine positional encoding]``. The parameter maps are *not* interpolated: all pixels of
  one ``S x S`` tile share its cell's MLP (nearest-neighbour upsampling of the parameters).

``S`` (``ASAPNetConfig.downsampling``) is ASAP's ``crop_size // (16 * aspect_ratio)``, i.e. a
parameter grid 16 rows high: ``S = H // 16`` (:func:`asap_downsampling`). The strided
convolutions learn a factor ``learned_ds_factor`` of it; the rest is a fixed separable tent
filter applied first (:class:`TentDownsample`).
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from einops import rearrange
from torch import nn

from ._checks import check_image_like, one_of, positive_int, power_of_two

__all__ = [
    "ASAPNetConfig",
    "ASAPNetGenerator",
    "LowResStream",
    "PixelwiseMLPs",
    "TentDownsample",
    "asap_downsampling",
    "cosine_positional_encoding",
    "num_positional_channels",
    "pixelwise_mlp_num_params",
]

PADDING_MODES = ("zeros", "reflect", "replicate")
LR_NORMS = ("instance", "none")


def asap_downsampling(height: int, width: int, *, grid_rows: int = 16) -> int:
    """ASAP's total downsampling ``S = W // (16 * W / H) = H // 16`` (a 16-row parameter grid).

    Args:
        height: Image height ``H``.
        width: Image width ``W``.
        grid_rows: Rows of the parameter grid (ASAP: 16).

    Returns:
        ``S = height // grid_rows``.

    Raises:
        ValueError: ``height`` not a multiple of ``grid_rows``, ``S`` not a power of two, or
            ``width`` not divisible by ``S``.

    Example:
        >>> asap_downsampling(256, 512), asap_downsampling(512, 512), asap_downsampling(1024, 1024)
        (16, 32, 64)
    """
    positive_int("height", height)
    positive_int("width", width)
    positive_int("grid_rows", grid_rows)
    if height % grid_rows:
        raise ValueError(f"image height {height} must be a multiple of grid_rows={grid_rows}")
    s = height // grid_rows
    if s & (s - 1):
        raise ValueError(f"height {height} / grid_rows {grid_rows} = {s} is not a power of two")
    if width % s:
        raise ValueError(f"image width {width} must be divisible by the downsampling S={s}")
    return s


def num_positional_channels(downsampling: int) -> int:
    """Channels of the cosine encoding: 4 per period ``S, S/2, ..., 2``, i.e. ``4 * log2(S)``."""
    power_of_two("downsampling", downsampling)
    return 4 * (downsampling.bit_length() - 1)


def cosine_positional_encoding(height: int, width: int, downsampling: int, *, device=None, dtype=None) -> torch.Tensor:
    """ASAP's cosine encoding of the position inside each ``S x S`` tile (no batch dimension).

    For each period ``f = S, S/2, ..., 2`` four channels, in this order:
    ``cos(2 pi (x mod f) / f)``, ``sin(...x...)``, ``cos(2 pi (y mod f) / f)``, ``sin(...y...)``,
    with ``x`` the column and ``y`` the row index. The largest period is the tile size, so the
    code is the same in every tile. (At ``f = 2`` the sine channels are ~0, as in ASAP.)

    Args:
        height: ``H``.
        width: ``W``.
        downsampling: ``S``, a power of two.
        device: Device of the result.
        dtype: Dtype of the result (default float32).

    Returns:
        ``(4 * log2(S), H, W)``; expand it to the batch with ``.expand(B, -1, -1, -1)``.

    Raises:
        ValueError: ``downsampling`` not a power of two.

    Example:
        >>> cosine_positional_encoding(32, 48, 16).shape
        torch.Size([16, 32, 48])
    """
    channels = num_positional_channels(downsampling)
    dtype = dtype or torch.float32
    if channels == 0:
        return torch.zeros(0, height, width, device=device, dtype=dtype)
    # Angles in float64 (exact remainders, accurate cos/sin), except where the device has none.
    work = torch.float32 if torch.device(device or "cpu").type == "mps" else torch.float64
    x = torch.arange(width, device=device, dtype=work)
    y = torch.arange(height, device=device, dtype=work)
    planes = []
    f = downsampling
    while f > 1:
        ax = 2 * math.pi * torch.remainder(x, f) / f  # (W,)
        ay = 2 * math.pi * torch.remainder(y, f) / f  # (H,)
        for row in (torch.cos(ax), torch.sin(ax)):
            planes.append(row.expand(height, width))  # (H, W), constant along y
        for col in (torch.cos(ay), torch.sin(ay)):
            planes.append(col[:, None].expand(height, width))  # (H, W), constant along x
        f //= 2
    return torch.stack(planes).to(dtype)  # (4 log2 S, H, W)


def pixelwise_mlp_num_params(channels: list[int]) -> int:
    """Parameters of an MLP with layer widths ``channels``: ``sum(c_in * c_out + c_out)``.

    Example:
        >>> pixelwise_mlp_num_params([51, 64, 64, 64, 64, 3])  # Cityscapes: 35 labels + 16 coords
        16003
    """
    return sum(ci * co + co for ci, co in zip(channels[:-1], channels[1:], strict=True))


@dataclass(frozen=True)
class ASAPNetConfig:
    """Hyper-parameters of :class:`ASAPNetGenerator`; the defaults are ASAP-Net's.

    Attributes:
        lr_width: Width of the first low-res convolutions (ASAP: 64).
        lr_max_width: Width after the last strided convolution and of the blocks (ASAP: 1024).
        lr_depth: Non-residual 3x3 conv + norm + ReLU blocks at the grid resolution (ASAP: 7).
        hr_width: Hidden width of the per-pixel MLPs (ASAP: 64).
        hr_depth: Linear layers of the per-pixel MLPs (ASAP: 5, i.e. in->64->64->64->64->out).
        learned_ds_factor: Part of ``S`` learned by stride-2 convolutions (ASAP: 16).
        downsampling: Total downsampling ``S`` (image / parameter grid). ASAP uses
            ``S = H // 16``; the default 16 fits 256-pixel-high images. See :meth:`for_image_size`.
        positional_encoding: Append the cosine encoding to the MLP input (ASAP: ``hr_coor="cosine"``).
        lr_norm: ``"instance"`` (InstanceNorm2d with affine parameters after bias-free convs,
            ASAP's ``instanceaffine``) or ``"none"`` (convs with bias).
        padding_mode: Padding of the 3x3 convs: ``"zeros"`` (default), ``"reflect"``
            (ASAP's ``--reflection_pad``) or ``"replicate"``.
    """

    lr_width: int = 64
    lr_max_width: int = 1024
    lr_depth: int = 7
    hr_width: int = 64
    hr_depth: int = 5
    learned_ds_factor: int = 16
    downsampling: int = 16
    positional_encoding: bool = True
    lr_norm: str = "instance"
    padding_mode: str = "zeros"

    def __post_init__(self) -> None:
        for name in ("lr_width", "lr_max_width", "hr_width", "hr_depth"):
            positive_int(name, getattr(self, name))
        if isinstance(self.lr_depth, bool) or not isinstance(self.lr_depth, int) or self.lr_depth < 0:
            raise ValueError(f"lr_depth must be a non-negative int, got {self.lr_depth!r}")
        power_of_two("learned_ds_factor", self.learned_ds_factor)
        power_of_two("downsampling", self.downsampling)
        if self.learned_ds_factor > self.downsampling:
            raise ValueError(
                f"learned_ds_factor ({self.learned_ds_factor}) must not exceed downsampling ({self.downsampling})"
            )
        one_of("lr_norm", self.lr_norm, LR_NORMS)
        one_of("padding_mode", self.padding_mode, PADDING_MODES)

    @classmethod
    def small(cls, **overrides) -> ASAPNetConfig:
        """A tiny configuration for CPU demos and tests (about 0.13M parameters for 8 inputs).

        ``lr_width=16, lr_max_width=64, lr_depth=2, hr_width=16, hr_depth=3,
        learned_ds_factor=4, downsampling=8``; keyword arguments override any field.
        """
        base = dict(
            lr_width=16, lr_max_width=64, lr_depth=2, hr_width=16, hr_depth=3, learned_ds_factor=4, downsampling=8
        )
        base.update(overrides)
        return cls(**base)

    @classmethod
    def for_image_size(cls, height: int, width: int, *, grid_rows: int = 16, **overrides) -> ASAPNetConfig:
        """Config with ASAP's ``S = H // grid_rows`` for ``height x width`` images.

        Unless given, ``learned_ds_factor`` becomes ``min(16, S)`` so small images still work.

        Raises:
            ValueError: See :func:`asap_downsampling`.

        Example:
            >>> ASAPNetConfig.for_image_size(512, 1024).downsampling
            32
        """
        s = asap_downsampling(height, width, grid_rows=grid_rows)
        overrides.setdefault("learned_ds_factor", min(cls.learned_ds_factor, s))
        return cls(downsampling=s, **overrides)

    def replace(self, **changes) -> ASAPNetConfig:
        """A copy with some fields changed."""
        return dataclasses.replace(self, **changes)


class TentDownsample(nn.Module):
    """Fixed separable tent (bilinear) downsampling by ``factor``, applied per channel.

    The 1-D kernel is ``[1, 3, ..., 2f-1, 2f-1, ..., 3, 1]`` normalised to sum 1 (``f = 2``:
    ``[1, 3, 3, 1] / 8``), with stride ``f`` and reflection padding ``f // 2``, so ``(H, W)``
    becomes ``(H / f, W / f)``. ASAP applies it before the strided convolutions when
    ``S > learned_ds_factor``.

    Args:
        factor: A power of two >= 2.

    Raises:
        ValueError: ``factor`` not a power of two >= 2.

    Example:
        >>> TentDownsample(2)(torch.ones(1, 3, 8, 8)).shape
        torch.Size([1, 3, 4, 4])
    """

    def __init__(self, factor: int) -> None:
        super().__init__()
        power_of_two("factor", factor)
        if factor < 2:
            raise ValueError(f"factor must be at least 2, got {factor}")
        self.factor = factor
        half = torch.arange(1, 2 * factor + 1, 2, dtype=torch.float64)  # 1, 3, ..., 2f-1
        kernel = torch.cat([half, half.flip(0)])
        self.register_buffer("kernel", (kernel / kernel.sum()).float(), persistent=False)  # (2f,)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``(B, C, H, W) -> (B, C, H / factor, W / factor)``."""
        c, f = x.shape[1], self.factor
        k = self.kernel.to(x.dtype)
        x = F.pad(x, (f // 2,) * 4, mode="reflect")
        x = F.conv2d(x, k.view(1, 1, -1, 1).expand(c, 1, -1, 1), stride=(f, 1), groups=c)  # rows
        return F.conv2d(x, k.view(1, 1, 1, -1).expand(c, 1, 1, -1), stride=(1, f), groups=c)  # columns


def _conv_norm_relu(cin: int, cout: int, stride: int, cfg: ASAPNetConfig) -> nn.Sequential:
    """3x3 conv (bias-free when a norm follows) + optional instance-affine norm + ReLU."""
    with_norm = cfg.lr_norm == "instance"
    layers = [nn.Conv2d(cin, cout, 3, stride=stride, padding=1, padding_mode=cfg.padding_mode, bias=not with_norm)]
    if with_norm:
        layers.append(nn.InstanceNorm2d(cout, affine=True))
    layers.append(nn.ReLU(inplace=True))
    return nn.Sequential(*layers)


class LowResStream(nn.Module):
    """ASAP's convolutional stream: concept ``(B, C, H', W')`` -> MLP parameters per grid cell.

    A 3x3 conv to ``lr_width``, ``log2(learned_ds_factor)`` stride-2 3x3 convs (``lr_width``
    wide, the last one widening to ``lr_max_width``), ``lr_depth`` non-residual 3x3 blocks at
    ``lr_max_width``, each followed by instance-affine norm and ReLU; then a 1x1 conv with bias
    to ``num_params`` channels (no norm, no activation).

    Args:
        in_channels: Channels of the (pre-downsampled) input.
        num_params: Output channels: the per-pixel MLP's parameter count.
        config: Widths, depths, norm and padding.

    Example:
        >>> s = LowResStream(8, 100, ASAPNetConfig.small())
        >>> s(torch.randn(2, 8, 16, 24)).shape
        torch.Size([2, 100, 4, 6])
    """

    def __init__(self, in_channels: int, num_params: int, config: ASAPNetConfig) -> None:
        super().__init__()
        positive_int("in_channels", in_channels)
        positive_int("num_params", num_params)
        n_down = config.learned_ds_factor.bit_length() - 1
        # widths[i] -> widths[i + 1] is stride-2 conv i; only the last one widens to lr_max_width.
        widths = [config.lr_width] * n_down + [config.lr_max_width]
        self.head = _conv_norm_relu(in_channels, widths[0], 1, config)
        self.down = nn.Sequential(
            *[_conv_norm_relu(a, b, 2, config) for a, b in zip(widths[:-1], widths[1:], strict=True)]
        )
        self.blocks = nn.Sequential(
            *[_conv_norm_relu(config.lr_max_width, config.lr_max_width, 1, config) for _ in range(config.lr_depth)]
        )
        self.to_params = nn.Conv2d(config.lr_max_width, num_params, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``(B, C, H', W') -> (B, num_params, H' / learned_ds_factor, W' / learned_ds_factor)``."""
        return self.to_params(self.blocks(self.down(self.head(x))))


class PixelwiseMLPs(nn.Module):
    """Per-pixel MLPs whose parameters come from a coarse map, shared within ``S x S`` tiles.

    Layer widths ``channels = [c_0, ..., c_L]``. Parameter layout along the channel axis of the
    map, layer by layer: ``[bias_l (c_{l+1}), weight_l (c_l * c_{l+1})]``, the weight being
    input-major (``W[i, o]`` at ``i * c_{l+1} + o``) and the layer ``y = x @ W + b``.
    Leaky ReLU (slope 0.01) after every layer but the last, tanh after the last. This module
    has no parameters of its own.

    Args:
        channels: Widths, at least two entries.

    Raises:
        ValueError: Fewer than two widths or a non-positive width.

    Example:
        >>> mlp = PixelwiseMLPs([5, 4, 3])
        >>> mlp.num_params
        39
        >>> mlp(torch.randn(2, 5, 8, 12), torch.randn(2, 39, 2, 3), tile=4).shape
        torch.Size([2, 3, 8, 12])
    """

    def __init__(self, channels: list[int]) -> None:
        super().__init__()
        channels = list(channels)
        if len(channels) < 2:
            raise ValueError(f"channels needs at least an input and an output width, got {channels}")
        for i, c in enumerate(channels):
            positive_int(f"channels[{i}]", c)
        self.channels = channels
        self.layers: list[tuple[int, int, int]] = []  # (c_in, c_out, offset of the bias)
        offset = 0
        for ci, co in zip(channels[:-1], channels[1:], strict=True):
            self.layers.append((ci, co, offset))
            offset += co + ci * co
        self.num_params = offset

    def prior_params(self, *, generator: torch.Generator | None = None) -> torch.Tensor:
        """One parameter vector ``(num_params,)`` of a randomly initialised MLP of these widths.

        Weights are Kaiming-normal for leaky ReLU (std ``sqrt(2 / c_in)``), biases zero, in the
        layout :meth:`forward` reads. Used as the parameter head's bias, it makes every tile start
        from the same working MLP (see :meth:`ASAPNetGenerator.init_mlp_prior`).
        """
        parts = []
        for ci, co, _ in self.layers:
            parts.append(torch.zeros(co))  # bias_l
            parts.append(torch.randn(ci * co, generator=generator) * math.sqrt(2.0 / ci))  # weight_l, input-major
        return torch.cat(parts)

    def forward(self, x: torch.Tensor, params: torch.Tensor, *, tile: int) -> torch.Tensor:
        """Run the MLPs.

        Args:
            x: ``(B, channels[0], H, W)`` per-pixel inputs.
            params: ``(B, num_params, H / tile, W / tile)``.
            tile: ``S``: the side of the tile sharing one parameter vector.

        Returns:
            ``(B, channels[-1], H, W)`` in ``[-1, 1]``.

        Raises:
            ValueError: Shapes that do not match.
        """
        B, H, W = check_image_like("MLP input", x, self.channels[0])
        positive_int("tile", tile)
        if H % tile or W % tile:
            raise ValueError(f"input size {H}x{W} is not divisible by the tile size {tile}")
        if params.dim() != 4 or params.shape[:2] != (B, self.num_params) or params.shape[2:] != (H // tile, W // tile):
            raise ValueError(
                f"params must have shape {(B, self.num_params, H // tile, W // tile)} for an input of "
                f"{H}x{W} and tile {tile}, got {tuple(params.shape)}"
            )
        h, w = H // tile, W // tile
        z = rearrange(x, "b c (h s1) (w s2) -> (b h w) (s1 s2) c", s1=tile, s2=tile)  # (B*h*w, S*S, c_0)
        p = rearrange(params, "b p h w -> (b h w) p")  # (B*h*w, P)
        last = len(self.layers) - 1
        for i, (ci, co, off) in enumerate(self.layers):
            bias = p[:, off : off + co].unsqueeze(1)  # (B*h*w, 1, c_out)
            weight = p[:, off + co : off + co + ci * co].reshape(-1, ci, co)  # (B*h*w, c_in, c_out)
            z = torch.baddbmm(bias, z, weight)  # (B*h*w, S*S, c_out)
            z = torch.tanh(z) if i == last else F.leaky_relu(z, 0.01)
        return rearrange(z, "(b h w) (s1 s2) c -> b c (h s1) (w s2)", b=B, h=h, w=w, s1=tile, s2=tile)


class ASAPNetGenerator(nn.Module):
    """ASAP-Net generator: ``generator(concept) -> image``.

    Args:
        in_channels: Channels ``C`` of the input: ``merger.out_channels`` for a concept tensor,
            the number of classes for a one-hot map.
        out_channels: Image channels (3).
        config: :class:`ASAPNetConfig` (default: ASAP-Net's sizes, ``S = 16``).

    Attributes:
        num_params: Parameters of one per-pixel MLP (output channels of the LR stream):
            ``(C + 4 log2 S) w + w + (d - 2)(w^2 + w) + w o + o`` for hidden width ``w``, depth
            ``d >= 2`` and ``o`` output channels.

    Raises:
        ValueError: Bad channel counts or config.

    Example:
        >>> g = ASAPNetGenerator(7, config=ASAPNetConfig.small())
        >>> g(torch.randn(2, 7, 32, 48)).shape
        torch.Size([2, 3, 32, 48])
    """

    def __init__(self, in_channels: int, out_channels: int = 3, *, config: ASAPNetConfig | None = None) -> None:
        super().__init__()
        positive_int("in_channels", in_channels)
        positive_int("out_channels", out_channels)
        cfg = config if config is not None else ASAPNetConfig()
        if not isinstance(cfg, ASAPNetConfig):
            raise TypeError(f"config must be an ASAPNetConfig, got {type(cfg).__name__}")
        self.config = cfg
        self.in_channels = in_channels
        self.out_channels = out_channels
        self.num_coords = num_positional_channels(cfg.downsampling) if cfg.positional_encoding else 0
        self.mlp = PixelwiseMLPs([in_channels + self.num_coords] + [cfg.hr_width] * (cfg.hr_depth - 1) + [out_channels])
        pre = cfg.downsampling // cfg.learned_ds_factor
        self.pre_downsample = TentDownsample(pre) if pre > 1 else nn.Identity()
        self.lr_stream = LowResStream(in_channels, self.mlp.num_params, cfg)

    @torch.no_grad()
    def init_mlp_prior(self, *, generator: torch.Generator | None = None) -> ASAPNetGenerator:
        """Start the per-pixel MLPs as one working random MLP shared by all tiles.

        With ASAP-Net's initialisation (xavier, gain 0.02, biases 0) the predicted MLP weights
        have a standard deviation of a few thousandths, so the per-pixel MLPs pass almost
        nothing of the concept at first: the output is a constant per tile, and Adam needs
        thousands of steps to grow the weights. Setting the parameter head's bias to
        :meth:`PixelwiseMLPs.prior_params` (its weights stay small) gives every tile the same
        Kaiming-initialised MLP at step 0, which the low-res stream then modulates per tile, as
        hypernetwork initialisations do. Call it after the usual weight initialisation.
        """
        self.lr_stream.to_params.bias.copy_(self.mlp.prior_params(generator=generator))
        return self

    @property
    def downsampling(self) -> int:
        """Total downsampling ``S`` (tile side)."""
        return self.config.downsampling

    @property
    def num_params(self) -> int:
        """Parameters of one per-pixel MLP."""
        return self.mlp.num_params

    def _check(self, concept: torch.Tensor) -> tuple[int, int, int]:
        B, H, W = check_image_like("concept", concept, self.in_channels)
        s = self.downsampling
        if H % s or W % s:
            raise ValueError(
                f"image size {H}x{W} must be divisible by the total downsampling S={s} "
                f"(ASAPNetConfig.downsampling; ASAPNetConfig.for_image_size(H, W) picks ASAP's S = H // 16)"
            )
        if self.config.lr_norm == "instance" and H * W == s * s:
            raise ValueError(
                f"a {H}x{W} image gives a 1x1 parameter grid (S={s}); the LR stream's instance norm needs "
                f"more than one cell: use a larger image or a smaller S"
            )
        return B, H, W

    def predict_params(self, concept: torch.Tensor) -> torch.Tensor:
        """The LR stream: ``(B, C, H, W) -> (B, num_params, H / S, W / S)``.

        Raises:
            TypeError, ValueError: See :meth:`forward`.
        """
        self._check(concept)
        return self.lr_stream(self.pre_downsample(concept))

    def render(self, concept: torch.Tensor, params: torch.Tensor) -> torch.Tensor:
        """The full-resolution stream: per-pixel MLPs on ``[concept, positional encoding]``.

        Args:
            concept: ``(B, C, H, W)``.
            params: ``(B, num_params, H / S, W / S)``, e.g. from :meth:`predict_params`.

        Returns:
            ``(B, out_channels, H, W)`` in ``[-1, 1]``.

        Raises:
            TypeError, ValueError: See :meth:`forward`, or ``params`` of the wrong shape.
        """
        B, H, W = self._check(concept)
        x = concept
        if self.num_coords:
            coords = cosine_positional_encoding(H, W, self.downsampling, device=x.device, dtype=x.dtype)
            x = torch.cat([x, coords.expand(B, -1, -1, -1)], dim=1)  # (B, C + 4 log2 S, H, W)
        return self.mlp(x, params, tile=self.downsampling)

    def forward_with_params(self, concept: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Image and the predicted parameter map (ASAP's ``lr_features``, for a weight-decay loss)."""
        params = self.predict_params(concept)
        return self.render(concept, params), params

    def forward(self, concept: torch.Tensor) -> torch.Tensor:
        """Generate an image from a concept tensor (any batch size; ``H, W`` divisible by ``S``).

        Args:
            concept: ``(B, in_channels, H, W)`` float tensor.

        Returns:
            ``(B, out_channels, H, W)`` in ``[-1, 1]``.

        Raises:
            TypeError: Not a floating-point tensor.
            ValueError: Wrong rank or channel count, or ``H``/``W`` not divisible by ``S``.
        """
        return self.forward_with_params(concept)[0]
