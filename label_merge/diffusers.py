"""TLAM as the condition encoder of a diffusers ControlNet, with per-pixel missing labels.

Optional: needs ``pip install "label-merge[diffusers]"``. Nothing else in ``label_merge``
imports this module, so the core library never needs diffusers.

- :class:`TLAMConditioningEmbedding` replaces ControlNet's ``controlnet_cond_embedding``: it takes
  labels and masks (or one tensor from :func:`label_merge.pack_labels`), merges them with a label
  merger at the image or the latent resolution, and returns the embedding that ControlNet adds to
  the UNet's input features, through a zero-initialised output convolution.
- :class:`TLAMControlNetModel` is a ``ControlNetModel`` that owns such an embedder with a
  :class:`~label_merge.TLAM`. Its label specs and merger sizes live in its config, so
  ``save_pretrained`` / ``from_pretrained`` restore it whole.

Labels always arrive at the image resolution, like ControlNet's ``controlnet_cond``; the
embedder's ``downscale_factor`` (Stable Diffusion's VAE factor 8 by default) takes them to the
latent resolution.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping
from typing import Any

import torch
from torch import nn

try:
    # diffusers saves and loads through ``safetensors.torch`` after only ``import safetensors``;
    # some versions (0.30) rely on another module having imported the submodule.
    import safetensors.torch  # noqa: F401

    # diffusers' pipeline loader finds how to load a component by looking up its loading base
    # classes (``ModelMixin``, ...) as attributes of the module that ``model_index.json`` records
    # for the component's class: this one. Without this name here, ``from_pretrained`` of a saved
    # pipeline cannot load a TLAMControlNetModel, nor check one passed as ``controlnet=``.
    from diffusers import (
        ControlNetModel,
        ModelMixin,  # noqa: F401
        UNet2DConditionModel,
    )
    from diffusers.configuration_utils import register_to_config
except ImportError as error:  # pragma: no cover - exercised only without the extra
    raise ImportError(
        'label_merge.diffusers needs the diffusers package: pip install "label-merge[diffusers]"'
    ) from error

from .blocks import TLAM
from .label_dicts import CATEGORICAL_MODES, pack_labels, packed_channels, resize_labels, unpack_labels
from .labels import LabelSpec, check_specs

__all__ = [
    "TLAMConditioningEmbedding",
    "TLAMControlNetModel",
    "CONFIG_NAME",
    "LabelGuidedPipeline",
    "LabelGuidedOutput",
    "compose_label_guidance",
    "guidance_branch_masks",
    "specs_to_config",
    "specs_from_config",
]

RESOLUTIONS = ("latent", "image")

CONFIG_NAME = "label_merge_controlnet.json"
"""The file a :class:`TLAMControlNetModel` keeps its config in, instead of ``config.json``.

A stock ``ControlNetModel`` (and ``MultiControlNetModel``, which builds them) reads
``config.json``; a TLAM folder has none, so every stock loader fails on it with "no file named
config.json" instead of building a ``ControlNetModel`` that ignores the merger, whatever the sizes.
"""


def specs_to_config(specs: Mapping[str, LabelSpec]) -> list[dict[str, Any]]:
    """Label specs as JSON-ready data: a list, in token order, of ``{"name": ..., field: value}``.

    A list, not a dict: diffusers writes configs with sorted keys, which would reorder the
    labels (and with them the tokens and packed channels).

    Example:
        >>> from label_merge import LabelSpec
        >>> (entry,) = specs_to_config({"semantic": LabelSpec.categorical(4, ignore_index=0)})
        >>> entry["name"], entry["channels"]
        ('semantic', 4)
    """
    return [{"name": name, **dataclasses.asdict(spec)} for name, spec in check_specs(specs).items()]


def specs_from_config(config: Mapping[str, Any] | list[Mapping[str, Any]]) -> dict[str, LabelSpec]:
    """Inverse of :func:`specs_to_config`; also takes ``{name: LabelSpec}``.

    JSON turns tuples into lists; they are turned back, since specs are frozen (hashable).

    Raises:
        TypeError: Neither a mapping ``{name: LabelSpec}`` nor a list of field dicts with a name.
    """
    if isinstance(config, Mapping):
        return check_specs(config)
    if not isinstance(config, (list, tuple)) or not all(isinstance(e, Mapping) and "name" in e for e in config):
        raise TypeError(
            'label_specs must be {name: LabelSpec} or a list of {"name": ..., "kind": ..., ...} dicts, '
            f"got {config!r}"
        )
    specs = {}
    for entry in config:
        fields = {k: tuple(v) if isinstance(v, list) else v for k, v in entry.items() if k != "name"}
        specs[entry["name"]] = LabelSpec(**fields)
    return check_specs(specs)


def _zero_conv(in_channels: int, out_channels: int) -> nn.Conv2d:
    conv = nn.Conv2d(in_channels, out_channels, kernel_size=3, padding=1)
    nn.init.zeros_(conv.weight)
    nn.init.zeros_(conv.bias)
    return conv


class TLAMConditioningEmbedding(nn.Module):
    """ControlNet's condition encoder, with a label merger in front.

    ``resolution="latent"`` (the default) first shrinks the labels to the latent size with
    :func:`label_merge.resize_labels` (mask-aware: a region is present at the latent resolution
    when at least ``min_present`` of it was), runs the merger there, and maps the concept to
    the UNet's width with one zero-initialised 3x3 convolution. The merger then costs
    ``downscale_factor ** 2`` times less than at the image resolution (64x fewer pixels for
    Stable Diffusion).

    ``resolution="image"`` runs the merger at the image resolution and shrinks the concept with
    ControlNet's own stack of strided convolutions (``block_out_channels``, SiLU between, last
    convolution zero-initialised); fine structure thinner than a latent pixel survives, at the
    merger's full cost.

    Either way the output is exactly zero at initialisation, so the ControlNet starts from the
    UNet's own behaviour, and the merger receives zero gradients until the output convolution
    has moved away from zero (the warm-up of ControlNet's zero convolutions).

    Args:
        merger: A label merger (:class:`~label_merge.TLAM`, or any module with ``specs`` and
            ``out_channels`` called as ``merger(labels, masks)``).
        embedding_channels: Output channels (the UNet's ``block_out_channels[0]``).
        resolution: ``"latent"`` or ``"image"``.
        downscale_factor: Image size over latent size (a power of two; 8 for Stable Diffusion,
            1 for a diffusion model on pixels).
        block_out_channels: Widths of the strided convolutions with ``resolution="image"``;
            ``log2(downscale_factor) + 1`` entries, like ControlNet's
            ``conditioning_embedding_out_channels``. Unused at ``"latent"``.
        categorical_resize: ``"majority"`` or ``"nearest"`` for categorical labels at ``"latent"``.
        min_present: Fraction of a latent pixel's window that must be present.

    Raises:
        ValueError: Bad arguments.

    Example:
        >>> import torch
        >>> from label_merge import TLAM, LabelSpec
        >>> merger = TLAM({"semantic": LabelSpec.categorical(4), "depth": LabelSpec.continuous(1)}, dim=12, heads=3)
        >>> embed = TLAMConditioningEmbedding(merger, embedding_channels=32)
        >>> labels = {"semantic": torch.randint(0, 4, (2, 64, 64)), "depth": torch.rand(2, 1, 64, 64)}
        >>> embed(labels).shape
        torch.Size([2, 32, 8, 8])
    """

    def __init__(
        self,
        merger: nn.Module,
        embedding_channels: int,
        *,
        resolution: str = "latent",
        downscale_factor: int = 8,
        block_out_channels: tuple[int, ...] = (16, 32, 96, 256),
        categorical_resize: str = "majority",
        min_present: float = 0.5,
    ) -> None:
        super().__init__()
        if not isinstance(merger, nn.Module) or not hasattr(merger, "specs") or not hasattr(merger, "out_channels"):
            raise TypeError(f"merger must be a label merger module (e.g. TLAM), got {type(merger).__name__}")
        if resolution not in RESOLUTIONS:
            raise ValueError(f"resolution must be one of {RESOLUTIONS}, got {resolution!r}")
        if isinstance(downscale_factor, bool) or not isinstance(downscale_factor, int) or downscale_factor < 1:
            raise ValueError(f"downscale_factor must be a positive int, got {downscale_factor!r}")
        if downscale_factor & (downscale_factor - 1):
            raise ValueError(f"downscale_factor must be a power of two, got {downscale_factor}")
        if categorical_resize not in CATEGORICAL_MODES:
            raise ValueError(f"categorical_resize must be one of {CATEGORICAL_MODES}, got {categorical_resize!r}")
        if isinstance(min_present, bool) or not isinstance(min_present, (int, float)) or not 0 <= min_present <= 1:
            raise ValueError(f"min_present must be a fraction in [0, 1], got {min_present!r}")
        self.merger = merger
        self.resolution = resolution
        self.downscale_factor = downscale_factor
        self.categorical_resize = categorical_resize
        self.min_present = min_present
        if resolution == "latent":
            self.conv_in = None
            self.blocks = nn.ModuleList()
            self.conv_out = _zero_conv(merger.out_channels, embedding_channels)
            return
        block_out_channels = tuple(block_out_channels)
        strides = int(math.log2(downscale_factor))
        if len(block_out_channels) != strides + 1:
            raise ValueError(
                f"block_out_channels needs log2(downscale_factor) + 1 = {strides + 1} entries for "
                f"downscale_factor={downscale_factor}, got {block_out_channels}"
            )
        # The layout of diffusers' ControlNetConditioningEmbedding, fed by the concept.
        self.conv_in = nn.Conv2d(merger.out_channels, block_out_channels[0], kernel_size=3, padding=1)
        self.blocks = nn.ModuleList()
        for channels_in, channels_out in zip(block_out_channels[:-1], block_out_channels[1:], strict=True):
            self.blocks.append(nn.Conv2d(channels_in, channels_in, kernel_size=3, padding=1))
            self.blocks.append(nn.Conv2d(channels_in, channels_out, kernel_size=3, padding=1, stride=2))
        self.conv_out = _zero_conv(block_out_channels[-1], embedding_channels)

    @property
    def specs(self) -> dict[str, LabelSpec]:
        return self.merger.specs

    def _labels(self, condition, masks):
        """Labels and masks from a labels dict or a packed tensor."""
        if isinstance(condition, torch.Tensor):
            if masks is not None:
                raise ValueError("masks are part of a packed condition tensor; pass masks only with a labels dict")
            # Continuous labels in the merger's dtype (NaiveConcat has no parameters: keep the input's).
            weight = next(self.merger.parameters(), None)
            return unpack_labels(self.specs, condition, dtype=None if weight is None else weight.dtype)
        if isinstance(condition, Mapping):
            return condition, masks
        raise TypeError(
            f"the condition must be a labels dict or a tensor from pack_labels, got {type(condition).__name__}"
        )

    def forward(
        self,
        condition: torch.Tensor | Mapping[str, torch.Tensor],
        masks: Mapping[str, torch.Tensor] | None = None,
    ) -> torch.Tensor:
        """Merge the labels and embed them at the latent resolution.

        Args:
            condition: ``{name: tensor}`` labels at the image resolution ``(H, W)``, or their
                packed form ``(B, packed_channels, H, W)`` from :func:`label_merge.pack_labels`.
            masks: ``{name: bool (B, H, W)}``, True where present (only with a labels dict).

        Returns:
            ``(B, embedding_channels, H / downscale_factor, W / downscale_factor)``.

        Raises:
            TypeError: A condition of the wrong type (or anything the merger rejects).
            ValueError: ``H`` or ``W`` not divisible by ``downscale_factor``, masks next to a
                packed tensor, or anything the merger rejects.
        """
        labels, masks = self._labels(condition, masks)
        if not isinstance(labels, Mapping) or len(labels) == 0:
            raise ValueError(f"labels must be a non-empty dict; this merger knows {list(self.specs)}")
        height, width = next(iter(labels.values())).shape[-2:]
        factor = self.downscale_factor
        if height % factor or width % factor:
            raise ValueError(f"label size {height}x{width} is not divisible by downscale_factor={factor}")
        if self.resolution == "latent":
            if factor > 1:
                labels, masks = resize_labels(
                    self.specs,
                    labels,
                    masks,
                    size=(height // factor, width // factor),
                    categorical=self.categorical_resize,
                    min_present=self.min_present,
                )
            return self.conv_out(self.merger(labels, masks))  # (B, C_emb, h, w)
        embedding = nn.functional.silu(self.conv_in(self.merger(labels, masks)))  # (B, c0, H, W)
        for block in self.blocks:
            embedding = nn.functional.silu(block(embedding))
        return self.conv_out(embedding)  # (B, C_emb, H / factor, W / factor)


class TLAMControlNetModel(ControlNetModel):
    """A ControlNet whose condition is a set of sparse per-pixel labels, merged by TLAM.

    Everything of ``diffusers.ControlNetModel`` stays (its arguments, forward, pipelines,
    ``save_pretrained`` / ``from_pretrained`` with ``torch_dtype`` and friends); its
    ``controlnet_cond_embedding`` is a :class:`TLAMConditioningEmbedding`. The condition is
    the packed labels tensor (``controlnet_cond``, what pipelines pass along) or, as keyword
    arguments of :meth:`forward`, a ``labels`` dict with ``masks``. The arguments not listed
    below are those of ``diffusers.ControlNetModel``; ``conditioning_embedding_out_channels`` is
    used with ``merger_resolution="image"`` only.

    Args:
        label_specs: ``{name: LabelSpec}`` (stored in the config as the list of
            :func:`specs_to_config`, which is accepted here too).
        merger_dim: TLAM width ``d``.
        merger_depth: TLAM transformer blocks.
        merger_heads: TLAM attention heads.
        merger_mlp_ratio: TLAM MLP width over ``d``.
        merger_drop: ``"zero"`` or ``"exclude"`` (see :class:`~label_merge.TLAM`).
        merger_resolution: ``"latent"`` or ``"image"`` (see :class:`TLAMConditioningEmbedding`).
        label_downscale_factor: Image size over latent size (8 for Stable Diffusion; 1 on pixels).
        label_resize: ``"majority"`` or ``"nearest"`` for categorical labels.
        label_min_present: Fraction of a latent pixel's window that must be present.
        conditioning_channels: Must be None or ``packed_channels(label_specs)`` (it is derived).
        controlnet_conditioning_channel_order: Must be ``"rgb"``: packed labels have no colour
            channels to flip.

    Raises:
        ValueError: Bad label specs or merger settings.

    Example:
        >>> from diffusers import UNet2DConditionModel
        >>> from label_merge import LabelSpec
        >>> unet = UNet2DConditionModel(
        ...     sample_size=8, block_out_channels=(8, 16), layers_per_block=1, norm_num_groups=4,
        ...     down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
        ...     up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"), cross_attention_dim=8, attention_head_dim=2)
        >>> specs = {"semantic": LabelSpec.categorical(4), "depth": LabelSpec.continuous(1)}
        >>> controlnet = TLAMControlNetModel.from_unet(unet, specs, merger_dim=12, merger_depth=1)
        >>> controlnet.merger.out_channels
        12
    """

    config_name = CONFIG_NAME  # never config.json: see CONFIG_NAME

    @register_to_config
    def __init__(
        self,
        label_specs: Mapping[str, LabelSpec] | list[dict[str, Any]],
        merger_dim: int = 96,
        merger_depth: int = 3,
        merger_heads: int = 3,
        merger_mlp_ratio: float = 4.0,
        merger_drop: str = "zero",
        merger_resolution: str = "latent",
        label_downscale_factor: int = 8,
        label_resize: str = "majority",
        label_min_present: float = 0.5,
        in_channels: int = 4,
        conditioning_channels: int | None = None,
        flip_sin_to_cos: bool = True,
        freq_shift: int = 0,
        down_block_types: tuple[str, ...] = (
            "CrossAttnDownBlock2D",
            "CrossAttnDownBlock2D",
            "CrossAttnDownBlock2D",
            "DownBlock2D",
        ),
        mid_block_type: str | None = "UNetMidBlock2DCrossAttn",
        only_cross_attention: bool | tuple[bool] = False,
        block_out_channels: tuple[int, ...] = (320, 640, 1280, 1280),
        layers_per_block: int = 2,
        downsample_padding: int = 1,
        mid_block_scale_factor: float = 1,
        act_fn: str = "silu",
        norm_num_groups: int | None = 32,
        norm_eps: float = 1e-5,
        cross_attention_dim: int = 1280,
        transformer_layers_per_block: int | tuple[int, ...] = 1,
        encoder_hid_dim: int | None = None,
        encoder_hid_dim_type: str | None = None,
        attention_head_dim: int | tuple[int, ...] = 8,
        num_attention_heads: int | tuple[int, ...] | None = None,
        use_linear_projection: bool = False,
        class_embed_type: str | None = None,
        addition_embed_type: str | None = None,
        addition_time_embed_dim: int | None = None,
        num_class_embeds: int | None = None,
        upcast_attention: bool = False,
        resnet_time_scale_shift: str = "default",
        projection_class_embeddings_input_dim: int | None = None,
        controlnet_conditioning_channel_order: str = "rgb",
        conditioning_embedding_out_channels: tuple[int, ...] | None = (16, 32, 96, 256),
        global_pool_conditions: bool = False,
        addition_embed_type_num_heads: int = 64,
    ) -> None:
        specs = specs_from_config(label_specs)
        channels = packed_channels(specs)
        if conditioning_channels is not None and conditioning_channels != channels:
            raise ValueError(
                f"conditioning_channels is derived from the label specs ({channels} packed channels), "
                f"got {conditioning_channels}"
            )
        if controlnet_conditioning_channel_order != "rgb":
            raise ValueError("controlnet_conditioning_channel_order must be 'rgb': packed labels have no colour order")
        super().__init__(
            in_channels=in_channels,
            conditioning_channels=channels,
            flip_sin_to_cos=flip_sin_to_cos,
            freq_shift=freq_shift,
            down_block_types=down_block_types,
            mid_block_type=mid_block_type,
            only_cross_attention=only_cross_attention,
            block_out_channels=block_out_channels,
            layers_per_block=layers_per_block,
            downsample_padding=downsample_padding,
            mid_block_scale_factor=mid_block_scale_factor,
            act_fn=act_fn,
            norm_num_groups=norm_num_groups,
            norm_eps=norm_eps,
            cross_attention_dim=cross_attention_dim,
            transformer_layers_per_block=transformer_layers_per_block,
            encoder_hid_dim=encoder_hid_dim,
            encoder_hid_dim_type=encoder_hid_dim_type,
            attention_head_dim=attention_head_dim,
            num_attention_heads=num_attention_heads,
            use_linear_projection=use_linear_projection,
            class_embed_type=class_embed_type,
            addition_embed_type=addition_embed_type,
            addition_time_embed_dim=addition_time_embed_dim,
            num_class_embeds=num_class_embeds,
            upcast_attention=upcast_attention,
            resnet_time_scale_shift=resnet_time_scale_shift,
            projection_class_embeddings_input_dim=projection_class_embeddings_input_dim,
            controlnet_conditioning_channel_order=controlnet_conditioning_channel_order,
            # The stock embedding built here is replaced below; in "latent" mode its widths are unused.
            conditioning_embedding_out_channels=conditioning_embedding_out_channels,
            global_pool_conditions=global_pool_conditions,
            addition_embed_type_num_heads=addition_embed_type_num_heads,
        )
        # The config must stay JSON-ready and keep the label order: see specs_to_config.
        self.register_to_config(label_specs=specs_to_config(specs))
        merger = TLAM(
            specs, dim=merger_dim, depth=merger_depth, heads=merger_heads, mlp_ratio=merger_mlp_ratio, drop=merger_drop
        )
        self.controlnet_cond_embedding = TLAMConditioningEmbedding(
            merger,
            embedding_channels=block_out_channels[0],
            resolution=merger_resolution,
            downscale_factor=label_downscale_factor,
            block_out_channels=conditioning_embedding_out_channels or (),
            categorical_resize=label_resize,
            min_present=label_min_present,
        )

    @property
    def merger(self) -> TLAM:
        """The label merger inside the condition encoder."""
        return self.controlnet_cond_embedding.merger

    @property
    def label_specs(self) -> dict[str, LabelSpec]:
        """``{name: LabelSpec}`` in token (and packing) order."""
        return self.merger.specs

    def pack(self, labels: Mapping[str, torch.Tensor], masks: Mapping[str, torch.Tensor] | None = None) -> torch.Tensor:
        """:func:`label_merge.pack_labels` with this model's specs: the ``controlnet_cond`` tensor."""
        return pack_labels(self.label_specs, labels, masks)

    @classmethod
    def from_unet(
        cls,
        unet: UNet2DConditionModel,
        label_specs: Mapping[str, LabelSpec] | list[dict[str, Any]],
        *,
        load_weights_from_unet: bool = True,
        **config: Any,
    ) -> TLAMControlNetModel:
        """Build a label ControlNet from a UNet, like ``ControlNetModel.from_unet``.

        The UNet's encoder (input convolution, time embeddings, down and mid blocks) is copied;
        the condition encoder and the zero convolutions start fresh.

        Args:
            unet: The ``UNet2DConditionModel`` to copy.
            label_specs: ``{name: LabelSpec}``.
            load_weights_from_unet: Copy the UNet's weights (else only its configuration).
            **config: Further arguments of :class:`TLAMControlNetModel` (``merger_dim``,
                ``merger_resolution``, ``label_downscale_factor``, ...).

        Returns:
            The model, in float32 like ``ControlNetModel.from_unet``.

        Raises:
            TypeError: ``unet`` is not a ``UNet2DConditionModel``.
            ValueError: Bad label specs or settings.
        """
        if not isinstance(unet, UNet2DConditionModel):
            raise TypeError(f"unet must be a diffusers UNet2DConditionModel, got {type(unet).__name__}")
        copied = (
            "in_channels", "flip_sin_to_cos", "freq_shift", "down_block_types", "only_cross_attention",
            "block_out_channels", "layers_per_block", "downsample_padding", "mid_block_scale_factor", "act_fn",
            "norm_num_groups", "norm_eps", "cross_attention_dim", "attention_head_dim", "num_attention_heads",
            "use_linear_projection", "class_embed_type", "num_class_embeds", "upcast_attention",
            "resnet_time_scale_shift", "projection_class_embeddings_input_dim", "mid_block_type",
            "transformer_layers_per_block", "encoder_hid_dim", "encoder_hid_dim_type", "addition_embed_type",
            "addition_time_embed_dim",
        )  # fmt: skip
        unet_config = {key: unet.config[key] for key in copied if key in unet.config}
        controlnet = cls(label_specs=label_specs, **{**unet_config, **config})
        if load_weights_from_unet:
            for name in ("conv_in", "time_proj", "time_embedding", "down_blocks", "mid_block"):
                getattr(controlnet, name).load_state_dict(getattr(unet, name).state_dict())
            if controlnet.class_embedding is not None:
                controlnet.class_embedding.load_state_dict(unet.class_embedding.state_dict())
            if hasattr(controlnet, "add_embedding"):
                controlnet.add_embedding.load_state_dict(unet.add_embedding.state_dict())
        return controlnet

    def forward(
        self,
        sample: torch.Tensor,
        timestep: torch.Tensor | float | int,
        encoder_hidden_states: torch.Tensor,
        controlnet_cond: torch.Tensor | None = None,
        *args: Any,
        labels: Mapping[str, torch.Tensor] | None = None,
        masks: Mapping[str, torch.Tensor] | None = None,
        **kwargs: Any,
    ) -> Any:
        """``ControlNetModel.forward`` with the condition as packed labels or a labels dict.

        Args:
            sample: Noisy latents ``(B, in_channels, h, w)``.
            timestep: Diffusion timestep(s).
            encoder_hidden_states: ``(B, L, cross_attention_dim)``.
            controlnet_cond: Packed labels ``(B, packed_channels, H, W)`` at the image resolution
                (``H = h * label_downscale_factor``), from :meth:`pack` or
                :func:`label_merge.pack_labels`; or None when ``labels`` is given.
            *args: Further positional arguments of ``ControlNetModel.forward``.
            labels: ``{name: tensor}`` at the image resolution, instead of ``controlnet_cond``.
            masks: ``{name: bool (B, H, W)}``, True where present (with ``labels``).
            **kwargs: Keyword arguments of ``ControlNetModel.forward`` (``conditioning_scale``,
                ``return_dict``, ...).

        Returns:
            The ``ControlNetOutput`` of ``ControlNetModel.forward`` (a tuple with
            ``return_dict=False``), holding the residuals for the UNet's down and mid blocks.

        Raises:
            ValueError: Both or neither of ``controlnet_cond`` and ``labels``, or bad labels.
        """
        if (controlnet_cond is None) == (labels is None):
            raise ValueError("give the condition either as controlnet_cond (packed labels) or as labels=, not both")
        if labels is not None:
            controlnet_cond = self.pack(labels, masks)
        elif masks is not None:
            raise ValueError("masks are part of the packed controlnet_cond; pass masks only with labels=")
        self.check_sizes(controlnet_cond.shape[-2:], sample.shape[-2:])
        return super().forward(sample, timestep, encoder_hidden_states, controlnet_cond, *args, **kwargs)

    def check_sizes(
        self, label_size: tuple[int, int], latent_size: tuple[int, int], *, vae_scale_factor: int | None = None
    ) -> None:
        """Raise a clear error when labels of ``label_size`` cannot steer latents of ``latent_size``.

        The condition encoder shrinks the labels by ``label_downscale_factor``; the result must be
        the latents' size, or the ControlNet fails deep inside diffusers with a bare shape error.

        Args:
            label_size: ``(H, W)`` of the labels (the image resolution).
            latent_size: ``(h, w)`` of the latents the UNet denoises.
            vae_scale_factor: The pipeline's factor from images to latents, when it is known; it
                is named in the error as the factor to build the ControlNet with.

        Raises:
            ValueError: The sizes do not fit, naming the label size, the factor and both latent sizes.
        """
        height, width = (int(s) for s in label_size)
        factor = self.config.label_downscale_factor
        expected = (height // factor, width // factor)
        if height % factor == 0 and width % factor == 0 and expected == tuple(int(s) for s in latent_size):
            return
        if vae_scale_factor is None and latent_size[0] and height % latent_size[0] == 0:
            vae_scale_factor = height // latent_size[0]
        hint = (
            f"; the pipeline's VAE shrinks images by {vae_scale_factor}, so build the ControlNet with "
            f"label_downscale_factor={vae_scale_factor}"
            if vae_scale_factor is not None and vae_scale_factor != factor
            else ""
        )
        raise ValueError(
            f"labels of {height}x{width} with label_downscale_factor={factor} give "
            f"{height / factor:g}x{width / factor:g} latents, but the latents are "
            f"{latent_size[0]}x{latent_size[1]}{hint}"
        )


# Label-aware guidance lives in its own file; it is part of this module's API.
from ._diffusers_guidance import (  # noqa: E402
    LabelGuidedOutput,
    LabelGuidedPipeline,
    compose_label_guidance,
    guidance_branch_masks,
)
