"""Tiny random diffusers pipelines with a TLAMControlNetModel, built offline for CPU tests.

The text encoders are random CLIP models of width 8 with a 54-token vocabulary (letters, with and
without the end-of-word mark), written to a folder because CLIP's tokenizer reads files.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from helpers import SPECS

TEXT_LENGTH = 8  # tokens per prompt


def clip_tokenizer(folder: Path):
    from transformers import CLIPTokenizer

    folder.mkdir(parents=True, exist_ok=True)
    vocab = {"<|startoftext|>": 0, "<|endoftext|>": 1}
    for letter in "abcdefghijklmnopqrstuvwxyz":
        vocab[letter] = len(vocab)
        vocab[letter + "</w>"] = len(vocab)
    (folder / "vocab.json").write_text(json.dumps(vocab))
    (folder / "merges.txt").write_text("#version: 0.2\n")
    return CLIPTokenizer(str(folder / "vocab.json"), str(folder / "merges.txt"), model_max_length=TEXT_LENGTH)


def clip_text_config(vocab_size: int):
    from transformers import CLIPTextConfig

    return CLIPTextConfig(
        vocab_size=vocab_size,
        hidden_size=8,
        intermediate_size=16,
        num_hidden_layers=1,
        num_attention_heads=2,
        max_position_embeddings=TEXT_LENGTH,
        projection_dim=8,
        bos_token_id=0,
        eos_token_id=1,
        pad_token_id=1,
    )


def tiny_vae():
    """A VAE with two levels: images are twice the latents' size (``vae_scale_factor == 2``)."""
    from diffusers import AutoencoderKL

    return AutoencoderKL(
        block_out_channels=(8, 16),
        down_block_types=("DownEncoderBlock2D",) * 2,
        up_block_types=("UpDecoderBlock2D",) * 2,
        latent_channels=4,
        norm_num_groups=4,
        layers_per_block=1,
    )


def tiny_unet(sample_size: int = 8, *, sdxl: bool = False):
    """A two-level UNet on 4-channel latents, small enough for CPU tests (SDXL: with size ids)."""
    from diffusers import UNet2DConditionModel

    extra = {}
    if sdxl:  # pooled text (8) and six size ids of width 4 enter the time embedding
        extra = {
            "addition_embed_type": "text_time",
            "addition_time_embed_dim": 4,
            "projection_class_embeddings_input_dim": 6 * 4 + 8,
            "transformer_layers_per_block": 1,
        }
    return UNet2DConditionModel(
        sample_size=sample_size,
        in_channels=4,
        out_channels=4,
        block_out_channels=(8, 16),
        layers_per_block=1,
        norm_num_groups=4,
        down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
        up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"),
        cross_attention_dim=16 if sdxl else 8,  # SDXL: both text encoders' widths side by side
        attention_head_dim=2,
        **extra,
    )


def perturbed(controlnet):
    """Move every zero-initialised convolution off zero, so the labels change the image."""
    g = torch.Generator().manual_seed(2)
    convs = [controlnet.controlnet_mid_block, *controlnet.controlnet_down_blocks]
    convs.append(controlnet.controlnet_cond_embedding.conv_out)
    with torch.no_grad():
        for conv in convs:
            conv.weight.copy_(torch.randn(conv.weight.shape, generator=g) * 0.3)
    return controlnet


def tiny_pipeline(folder: Path, *, sdxl: bool = False, prediction_type: str = "epsilon"):
    """A Stable Diffusion (or SDXL) ControlNet pipeline with a TLAMControlNetModel, 16x16 images."""
    from diffusers import DDIMScheduler, StableDiffusionControlNetPipeline, StableDiffusionXLControlNetPipeline
    from transformers import CLIPTextModel, CLIPTextModelWithProjection

    from label_merge.diffusers import TLAMControlNetModel

    torch.manual_seed(0)
    tokenizer = clip_tokenizer(folder / "tokenizer")
    text_encoder = CLIPTextModel(clip_text_config(len(tokenizer)))
    unet = tiny_unet(sdxl=sdxl)
    controlnet = TLAMControlNetModel.from_unet(
        unet, SPECS, merger_dim=12, merger_depth=1, label_downscale_factor=2, conditioning_embedding_out_channels=(4, 4)
    )
    scheduler = DDIMScheduler(prediction_type=prediction_type)
    common = {"vae": tiny_vae(), "text_encoder": text_encoder, "tokenizer": tokenizer, "unet": unet}
    common |= {"controlnet": perturbed(controlnet), "scheduler": scheduler}
    if sdxl:
        second = CLIPTextModelWithProjection(clip_text_config(len(tokenizer)))
        pipe = StableDiffusionXLControlNetPipeline(**common, text_encoder_2=second, tokenizer_2=tokenizer)
    else:
        pipe = StableDiffusionControlNetPipeline(
            **common, safety_checker=None, feature_extractor=None, requires_safety_checker=False
        )
    pipe.set_progress_bar_config(disable=True)
    return pipe
