"""Label-aware classifier-free guidance around diffusers' ControlNet pipelines.

Imported by :mod:`label_merge.diffusers`, which re-exports :class:`LabelGuidedPipeline` and
:func:`compose_label_guidance`; see ``docs/diffusion.md`` for the guide.

Stock ControlNet pipelines give the unconditional branch of classifier-free guidance the same
condition as the conditional one, so guidance pushes towards the prompt but never towards the
condition. With a :class:`~label_merge.diffusers.TLAMControlNetModel`, "no labels" is a valid
input (every label missing), so the unconditional branch here has neither text nor labels, and a
label can be guided on its own by comparing the prediction with all labels to one without it.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch

from .label_dicts import pack_labels, resize_labels

__all__ = ["LabelGuidedPipeline", "LabelGuidedOutput", "compose_label_guidance", "guidance_branch_masks"]


def compose_label_guidance(
    noise_uncond: torch.Tensor | None,
    noise_cond: torch.Tensor,
    noise_without: Mapping[str, torch.Tensor],
    *,
    guidance_scale: float,
    label_guidance: Mapping[str, float] | None = None,
) -> torch.Tensor:
    """Combine the guidance branches' noise predictions into one.

    ``eps = eps_u + w * (eps_c - eps_u) + sum_k s_k * (eps_c - eps_without_k)``, where ``eps_u``
    has neither text nor labels, ``eps_c`` has both, and ``eps_without_k`` has the text and every
    label but ``k``. With every ``s_k`` zero (or ``label_guidance`` None) this is plain
    classifier-free guidance, exactly; with ``noise_uncond`` None (no classifier-free guidance,
    ``w <= 1``) the first two terms are ``eps_c``.

    Args:
        noise_uncond: ``(N, C, h, w)`` prediction without text and labels, or None.
        noise_cond: ``(N, C, h, w)`` prediction with text and all labels.
        noise_without: ``{label: (N, C, h, w)}`` predictions with label ``k`` dropped, for every
            label with a non-zero scale.
        guidance_scale: ``w``, the classifier-free guidance scale.
        label_guidance: ``{label: s_k}``.

    Returns:
        ``(N, C, h, w)``.

    Raises:
        ValueError: A label with a non-zero scale but no prediction without it.

    Example:
        >>> u, c, d = torch.zeros(1, 1), torch.ones(1, 1), torch.full((1, 1), 0.5)
        >>> compose_label_guidance(u, c, {"depth": d}, guidance_scale=2.0, label_guidance={"depth": 4.0}).item()
        4.0
    """
    noise = noise_cond if noise_uncond is None else noise_uncond + guidance_scale * (noise_cond - noise_uncond)
    for name, scale in (label_guidance or {}).items():
        if scale == 0:
            continue  # no branch was run for it: a zero scale costs nothing and changes nothing
        if name not in noise_without:
            raise ValueError(f"label_guidance[{name!r}] = {scale} needs the prediction without {name!r}")
        noise = noise + scale * (noise_cond - noise_without[name])
    return noise


@dataclass
class LabelGuidedOutput:
    """What :class:`LabelGuidedPipeline` returns.

    Attributes:
        images: As the wrapped pipeline's ``output_type`` gives them (a list of PIL images, a
            ``(B, H, W, 3)`` NumPy array, a ``(B, 3, H, W)`` tensor), or the latents
            ``(B, C, h, w)`` with ``output_type="latent"``.
    """

    images: Any


def guidance_branch_masks(
    labels: Mapping[str, torch.Tensor],
    masks: Mapping[str, torch.Tensor] | None,
    *,
    unconditional: bool,
    dropped: Sequence[str],
) -> list[dict[str, torch.Tensor]]:
    """The masks of every guidance branch, in the order :func:`compose_label_guidance` combines them.

    ``[no label anywhere] (if unconditional) + [masks] + [masks with label k missing, for k in dropped]``.
    A mask of all False makes a label missing everywhere, exactly as if it were not given.

    Args:
        labels: ``{name: tensor}``, batch ``B`` and size ``(H, W)``.
        masks: ``{name: bool (B, H, W)}`` or None (every label present where it is valid).
        unconditional: Whether the first branch, without any label, is wanted.
        dropped: Labels to drop one at a time (each must be in ``labels``).

    Returns:
        One masks dict per branch, each for every label in ``labels``.

    Raises:
        ValueError: A dropped label that is not in ``labels``.

    Example:
        >>> labels = {"depth": torch.ones(1, 1, 2, 2), "edge": torch.ones(1, 1, 2, 2)}
        >>> branches = guidance_branch_masks(labels, None, unconditional=True, dropped=["edge"])
        >>> tuple(sum(bool(m.any()) for m in branch.values()) for branch in branches)  # labels present
        (0, 2, 1)
    """
    batch, (height, width) = _check_labels(labels, masks)
    unknown = [name for name in dropped if name not in labels]
    if unknown:
        raise ValueError(f"cannot drop {unknown}: they are not among the labels given, {list(labels)}")
    first = next(iter(labels.values()))
    nothing = torch.zeros(batch, height, width, dtype=torch.bool, device=first.device)
    given = {}
    for name, x in labels.items():
        if masks is not None and name in masks:
            given[name] = masks[name].reshape(batch, height, width).bool()
        else:  # present wherever the value is valid; pack_labels still drops ignore_index pixels
            given[name] = torch.ones(batch, height, width, dtype=torch.bool, device=x.device)
    branches = [dict.fromkeys(labels, nothing)] if unconditional else []
    branches.append(given)
    branches += [{**given, name: nothing} for name in dropped]
    return branches


def _check_labels(labels: Any, masks: Any) -> tuple[int, tuple[int, int]]:
    """The batch size and ``(H, W)`` shared by every label, or a clear error."""
    if not isinstance(labels, Mapping) or not labels or not all(isinstance(x, torch.Tensor) for x in labels.values()):
        raise TypeError(f"labels must be a non-empty dict {{name: tensor}}, got {type(labels).__name__}")
    if masks is not None and not isinstance(masks, Mapping):
        raise TypeError(f"masks must be a dict {{name: bool tensor}} or None, got {type(masks).__name__}")
    sizes = {name: (x.shape[0], tuple(x.shape[-2:])) for name, x in labels.items()}
    if len(set(sizes.values())) > 1:
        raise ValueError(f"labels must share one batch size and (H, W); got (batch, (H, W)) = {sizes}")
    batch, size = next(iter(sizes.values()))
    return batch, size


def _repeat_for_prompts(tensors: Mapping[str, torch.Tensor], batch: int, prompts: int, per_prompt: int) -> dict:
    """Row ``i`` of the result belongs to prompt ``i // per_prompt`` (the order of ``encode_prompt``)."""
    if batch not in (1, prompts):
        raise ValueError(f"labels have batch size {batch}; give 1 (for every prompt) or one per prompt ({prompts})")
    repeats = prompts * per_prompt if batch == 1 else per_prompt
    return {name: x.repeat_interleave(repeats, dim=0) for name, x in tensors.items()}


class LabelGuidedPipeline:
    """Label-aware classifier-free guidance around a diffusers ControlNet pipeline.

    Wraps a ``StableDiffusionControlNetPipeline`` (Stable Diffusion 1.x and 2.x) or a
    ``StableDiffusionXLControlNetPipeline`` whose ``controlnet`` is a
    :class:`~label_merge.diffusers.TLAMControlNetModel`, and generates text-to-image from labels
    and masks dicts with its components (text encoders, UNet, scheduler, VAE) and its own helpers
    (``encode_prompt``, ``prepare_latents``, ``image_processor``). Differences from calling the
    pipeline with ``image=pack_labels(...)``:

    - labels are resized to ``(height, width)`` mask-aware with :func:`label_merge.resize_labels`
      (the ControlNet's ``label_resize`` and ``label_min_present``), never with the pipeline's
      nearest-neighbour image resize;
    - the unconditional branch of classifier-free guidance has neither the text nor any label
      (every label missing), so guidance pushes towards the labels as well as the prompt;
    - ``label_guidance={"depth": 3.0}`` guides single labels: one more branch per label with a
      non-zero scale, with that label dropped (see :func:`compose_label_guidance`).

    Cost per denoising step and image, in UNet (and ControlNet) evaluations: 1 without guidance
    (``guidance_scale <= 1``), 2 with classifier-free guidance, plus 1 for every label with a
    non-zero scale. All branches run as one batch, so memory grows with them too.

    Args:
        pipeline: The diffusers pipeline to wrap (it is used, not copied).

    Raises:
        TypeError: The pipeline has no ``TLAMControlNetModel`` as its ``controlnet``, or lacks
            what text-to-image generation needs.

    Example:
        ``pipe = StableDiffusionControlNetPipeline.from_pretrained(folder)``, then
        ``LabelGuidedPipeline(pipe)("a kitchen", labels={"depth": depth}, masks={"depth": known},
        guidance_scale=7.5, label_guidance={"depth": 2.0}).images``.
    """

    def __init__(self, pipeline: Any) -> None:
        from .diffusers import TLAMControlNetModel

        controlnet = getattr(pipeline, "controlnet", None)
        if not isinstance(controlnet, TLAMControlNetModel):
            raise TypeError(
                "LabelGuidedPipeline needs a diffusers ControlNet pipeline whose controlnet is a "
                f"TLAMControlNetModel, got controlnet of type {type(controlnet).__name__}"
            )
        needed = ("unet", "vae", "scheduler", "encode_prompt", "prepare_latents", "image_processor")
        missing = [name for name in needed if getattr(pipeline, name, None) is None]
        if missing:
            raise TypeError(f"{type(pipeline).__name__} lacks {missing}: wrap a text-to-image ControlNet pipeline")
        self.pipeline = pipeline

    @property
    def controlnet(self):
        return self.pipeline.controlnet

    @property
    def is_sdxl(self) -> bool:
        """Whether the UNet takes SDXL's pooled text embeddings and size ids."""
        return self.pipeline.unet.config.addition_embed_type == "text_time"

    def _resized_labels(self, labels, masks, size):
        """Labels and masks at the generated image's size, resized mask-aware."""
        _, label_size = _check_labels(labels, masks)
        if label_size == size:
            return dict(labels), None if masks is None else dict(masks)
        config = self.controlnet.config
        return resize_labels(
            self.controlnet.label_specs,
            labels,
            masks,
            size=size,
            categorical=config.label_resize,
            min_present=config.label_min_present,
        )

    def _branch_conditions(self, labels, masks, *, unconditional: bool, dropped: Sequence[str]) -> torch.Tensor:
        """Packed conditions of every branch, stacked: ``[uncond] + [cond] + [without k for k in dropped]``."""
        specs, dtype = self.controlnet.label_specs, self.controlnet.dtype
        branches = guidance_branch_masks(labels, masks, unconditional=unconditional, dropped=dropped)
        packed = [pack_labels(specs, labels, branch, dtype=dtype) for branch in branches]
        return torch.cat(packed)  # (branches * N, packed_channels, H, W)

    def _text(self, prompt, negative_prompt, per_prompt, unconditional, branches, size, device):
        """Text embeddings (and SDXL's added ids) for every branch, stacked like the conditions."""
        pipe = self.pipeline
        if not self.is_sdxl:
            cond, uncond = pipe.encode_prompt(prompt, device, per_prompt, unconditional, negative_prompt)
            return torch.cat(([uncond] if unconditional else []) + [cond] * branches), None
        cond, uncond, pooled, uncond_pooled = pipe.encode_prompt(
            prompt=prompt,
            device=device,
            num_images_per_prompt=per_prompt,
            do_classifier_free_guidance=unconditional,
            negative_prompt=negative_prompt,
        )
        height, width = size
        projection = int(pooled.shape[-1]) if pipe.text_encoder_2 is None else pipe.text_encoder_2.config.projection_dim
        # The pipeline's own (private) helper, so the ids match what its UNet was trained with.
        time_ids = pipe._get_add_time_ids(
            (height, width), (0, 0), (height, width), dtype=cond.dtype, text_encoder_projection_dim=projection
        ).to(device)  # (1, 6): original size, crop corner, target size
        text = torch.cat(([uncond] if unconditional else []) + [cond] * branches)
        pooled = torch.cat(([uncond_pooled] if unconditional else []) + [pooled] * branches)
        return text, {"text_embeds": pooled, "time_ids": time_ids.repeat(pooled.shape[0], 1)}

    def _decode(self, latents: torch.Tensor, output_type: str):
        """Latents to images as the SDXL pipeline decodes them (which covers Stable Diffusion's case)."""
        if output_type == "latent":
            return latents
        vae = self.pipeline.vae
        # SDXL's VAE overflows in float16; diffusers decodes it in float32 when it says so.
        upcast = vae.dtype == torch.float16 and getattr(vae.config, "force_upcast", False)
        dtype = torch.float32 if upcast else vae.dtype
        mean, std = getattr(vae.config, "latents_mean", None), getattr(vae.config, "latents_std", None)
        if mean is not None and std is not None:
            channels = latents.shape[1]
            mean = torch.tensor(mean).view(1, channels, 1, 1).to(latents)
            std = torch.tensor(std).view(1, channels, 1, 1).to(latents)
            latents = latents * std / vae.config.scaling_factor + mean
        else:
            latents = latents / vae.config.scaling_factor
        if upcast:
            vae.to(torch.float32)
        try:
            image = vae.decode(latents.to(dtype), return_dict=False)[0]
        finally:
            if upcast:
                vae.to(torch.float16)
        return self.pipeline.image_processor.postprocess(image, output_type=output_type)

    @torch.no_grad()
    def __call__(
        self,
        prompt: str | list[str],
        labels: Mapping[str, torch.Tensor],
        masks: Mapping[str, torch.Tensor] | None = None,
        *,
        height: int | None = None,
        width: int | None = None,
        num_inference_steps: int = 50,
        guidance_scale: float = 7.5,
        label_guidance: Mapping[str, float] | None = None,
        negative_prompt: str | list[str] | None = None,
        num_images_per_prompt: int = 1,
        controlnet_conditioning_scale: float = 1.0,
        eta: float = 0.0,
        generator: torch.Generator | list[torch.Generator] | None = None,
        latents: torch.Tensor | None = None,
        output_type: str = "pil",
    ) -> LabelGuidedOutput:
        """Generate images from a prompt and labels, with label-aware guidance.

        Args:
            prompt: One prompt or a list of ``P`` prompts.
            labels: ``{name: tensor}`` as :func:`label_merge.pack_labels` takes them, batch 1
                (shared by every prompt) or ``P``, at any size (resized mask-aware).
            masks: ``{name: bool (B, H, W)}``, True where the label is present.
            height: Image height (default: the labels'); a multiple of the VAE's factor.
            width: Image width (default: the labels').
            num_inference_steps: Denoising steps.
            guidance_scale: Classifier-free guidance scale ``w`` (no unconditional branch at 1 or below).
            label_guidance: ``{label: scale}``, per-label guidance; zero scales, and labels not in
                ``labels`` (there is nothing to drop), cost nothing and change nothing.
            negative_prompt: Text of the unconditional branch (it still has no labels).
            num_images_per_prompt: Images per prompt.
            controlnet_conditioning_scale: The ControlNet residuals' scale.
            eta: DDIM's eta (for schedulers that take it).
            generator: Random generator(s) for the initial noise and the scheduler.
            latents: Initial noise ``(P * num_images_per_prompt, C, h, w)`` instead of drawing it.
            output_type: ``"pil"``, ``"np"``, ``"pt"`` or ``"latent"``.

        Returns:
            :class:`LabelGuidedOutput` with ``P * num_images_per_prompt`` images, prompt-major.

        Raises:
            ValueError: Unknown labels in ``label_guidance``, labels whose batch fits neither 1
                nor ``P``, a size that is not a multiple of the VAE's factor, or a ControlNet whose
                ``label_downscale_factor`` does not match the pipeline's ``vae_scale_factor``.
            TypeError: Labels or masks that are not dicts of tensors.
        """
        pipe, controlnet = self.pipeline, self.controlnet
        batch, label_size = _check_labels(labels, masks)
        height, width = height or label_size[0], width or label_size[1]
        factor = pipe.vae_scale_factor
        if height % factor or width % factor:
            raise ValueError(f"height and width must be multiples of the VAE's factor {factor}, got {height}x{width}")
        controlnet.check_sizes((height, width), (height // factor, width // factor), vae_scale_factor=factor)
        label_guidance = dict(label_guidance or {})
        unknown = sorted(set(label_guidance) - set(controlnet.label_specs))
        if unknown:
            raise ValueError(
                f"label_guidance names unknown labels {unknown}; this ControlNet knows {list(controlnet.label_specs)}"
            )
        # A label that is not given has nothing to drop: its branch would equal the conditional one.
        label_guidance = {name: scale for name, scale in label_guidance.items() if name in labels}
        dropped = [name for name, scale in label_guidance.items() if scale != 0]
        unconditional = guidance_scale > 1
        prompts = 1 if isinstance(prompt, str) else len(prompt)
        device = pipe._execution_device

        labels, masks = self._resized_labels(labels, masks, (height, width))
        labels = _repeat_for_prompts(
            {k: v.to(device) for k, v in labels.items()}, batch, prompts, num_images_per_prompt
        )
        if masks is not None:
            masks = _repeat_for_prompts(
                {k: v.to(device) for k, v in masks.items()}, batch, prompts, num_images_per_prompt
            )
        conditions = self._branch_conditions(labels, masks, unconditional=unconditional, dropped=dropped)
        branches = 1 + len(dropped)  # those with the text
        text, added = self._text(
            prompt, negative_prompt, num_images_per_prompt, unconditional, branches, (height, width), device
        )

        images = prompts * num_images_per_prompt
        pipe.scheduler.set_timesteps(num_inference_steps, device=device)
        channels = pipe.unet.config.in_channels
        latents = pipe.prepare_latents(images, channels, height, width, text.dtype, device, generator, latents)
        step_kwargs = pipe.prepare_extra_step_kwargs(generator, eta)
        rows = conditions.shape[0] // images  # branches per image: (1 if unconditional) + 1 + len(dropped)
        with pipe.progress_bar(total=len(pipe.scheduler.timesteps)) as progress:
            for t in pipe.scheduler.timesteps:
                sample = pipe.scheduler.scale_model_input(torch.cat([latents] * rows), t)  # (rows * N, C, h, w)
                down, mid = controlnet(
                    sample,
                    t,
                    encoder_hidden_states=text,
                    controlnet_cond=conditions,
                    conditioning_scale=controlnet_conditioning_scale,
                    added_cond_kwargs=added,
                    return_dict=False,
                )
                noise = pipe.unet(
                    sample,
                    t,
                    encoder_hidden_states=text,
                    down_block_additional_residuals=down,
                    mid_block_additional_residual=mid,
                    added_cond_kwargs=added,
                    return_dict=False,
                )[0]
                parts = list(noise.chunk(rows))  # each (N, C, h, w), in branch order
                uncond = parts.pop(0) if unconditional else None
                cond, without = parts[0], dict(zip(dropped, parts[1:], strict=True))
                noise = compose_label_guidance(
                    uncond, cond, without, guidance_scale=guidance_scale, label_guidance=label_guidance
                )
                latents = pipe.scheduler.step(noise, t, latents, **step_kwargs, return_dict=False)[0]
                progress.update()
        return LabelGuidedOutput(images=self._decode(latents, output_type))
