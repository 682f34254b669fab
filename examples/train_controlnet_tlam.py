"""Train a ControlNet whose condition is a set of sparse per-pixel labels, merged by TLAM.

    python examples/train_controlnet_tlam.py                    # tiny pixel diffusion model, CPU, minutes
    python examples/train_controlnet_tlam.py --pretrained ~/models/stable-diffusion-v1-5 --resolution 256

Without ``--pretrained``, a small ``UNet2DConditionModel`` built from a config (random weights,
no download) denoises the synthetic scenes' images directly (pixel space, so the labels stay at
the UNet's resolution), and it trains together with the ControlNet. With ``--pretrained PATH``
(a local Stable Diffusion folder with ``unet/``, ``vae/`` and ``scheduler/``), the UNet and the
VAE are frozen and only the ControlNet with TLAM trains, on latents 8x smaller than the labels.
There is no text encoder: the cross-attention context is a zero embedding.

Labels are made sparse during training (region dropout, then whole-label dropout, and every
label dropped for 10% of the images), so the model learns to follow any subset of labels at any
pixel, none included: the no-label branch of label-aware guidance. Writes into ``--out``: the ControlNet
(``controlnet/``, ``save_pretrained`` format with the merger inside), sample grids
(``samples.png``: labels, generated from all labels, generated from sparse labels, real) and
``metrics.json`` (training loss, and label controllability when the estimator is available).
"""

from __future__ import annotations

import sys
from pathlib import Path

if __package__ in (None, ""):  # run as a script: make the repository importable
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import argparse  # noqa: E402
import json  # noqa: E402
from dataclasses import dataclass  # noqa: E402

import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402

from examples.datasets.synthetic import SyntheticDataset  # noqa: E402
from examples.label_images import image_to_rgb, label_columns, save_grid  # noqa: E402
from examples.studies.environment import default_cache_dir  # noqa: E402
from label_merge.sparsity import label_dropout, region_dropout  # noqa: E402

__all__ = ["main", "build_parser", "controllability_metric"]


def _diffusers():
    """The diffusers classes this script needs, with a clear message when the extra is missing."""
    try:
        import diffusers

        from label_merge.diffusers import TLAMControlNetModel
    except ImportError as error:
        raise SystemExit(f'{error}\nthis example needs: pip install "label-merge[diffusers]"') from error
    return diffusers, TLAMControlNetModel


# ---------------------------------------------------------------- data


@dataclass
class Scenes:
    """A whole split in memory: images ``(N, 3, H, W)``, labels and masks dicts, regions ``(N, H, W)``."""

    images: torch.Tensor
    labels: dict[str, torch.Tensor]
    masks: dict[str, torch.Tensor]
    regions: torch.Tensor

    def batch(self, index: torch.Tensor, device: torch.device | str = "cpu") -> Scenes:
        return Scenes(
            self.images[index].to(device),
            {name: x[index].to(device) for name, x in self.labels.items()},
            {name: m[index].to(device) for name, m in self.masks.items()},
            self.regions[index].to(device),
        )


def load_scenes(dataset: SyntheticDataset) -> Scenes:
    samples = [dataset[i] for i in range(len(dataset))]
    names = list(dataset.label_specs)
    return Scenes(
        images=torch.stack([s["image"] for s in samples]),
        labels={n: torch.stack([s["labels"][n] for s in samples]) for n in names},
        masks={n: torch.stack([s["masks"][n] for s in samples]) for n in names},
        regions=torch.stack([s["regions"] for s in samples]),
    )


def sparsify(
    scenes: Scenes, *, region_p: float, label_p: float, generator: torch.Generator, drop_all_p: float = 0.0
) -> dict:
    """The paper's region dropout, then whole-label dropout.

    With probability ``drop_all_p`` an image loses every label: the unconditional case that
    classifier-free guidance with no labels (:class:`label_merge.diffusers.LabelGuidedPipeline`)
    evaluates, which independent per-label dropout almost never produces.
    """
    masks = region_dropout(scenes.masks, scenes.regions, region_p, generator=generator)
    return label_dropout(masks, p_keep_all=0.25, p_drop_all=drop_all_p, p_label=label_p, generator=generator)


# ---------------------------------------------------------------- models


@dataclass
class Backbone:
    """The diffusion model the ControlNet steers, and how images map to its samples."""

    unet: torch.nn.Module
    scheduler: object
    vae: torch.nn.Module | None
    downscale_factor: int  # image size over sample size
    train_unet: bool

    def encode(self, images: torch.Tensor) -> torch.Tensor:
        if self.vae is None:
            return images
        with torch.no_grad():
            latents = self.vae.encode(images).latent_dist.sample()
        return latents * self.vae.config.scaling_factor

    def decode(self, samples: torch.Tensor) -> torch.Tensor:
        if self.vae is None:
            return samples.clamp(-1, 1)
        with torch.no_grad():
            return self.vae.decode(samples / self.vae.config.scaling_factor).sample.clamp(-1, 1)


def tiny_backbone(resolution: int, width: int) -> Backbone:
    """A small pixel-space UNet from a config (random weights) and a DDPM schedule."""
    diffusers, _ = _diffusers()
    unet = diffusers.UNet2DConditionModel(
        sample_size=resolution,
        in_channels=3,
        out_channels=3,
        block_out_channels=(width, 2 * width),
        layers_per_block=1,
        norm_num_groups=8,
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"),
        cross_attention_dim=32,
        attention_head_dim=8,
    )
    scheduler = diffusers.DDPMScheduler(num_train_timesteps=1000, beta_schedule="squaredcos_cap_v2")
    return Backbone(unet, scheduler, vae=None, downscale_factor=1, train_unet=True)


def pretrained_backbone(path: Path) -> Backbone:
    """A local Stable Diffusion folder: frozen UNet and VAE, its training schedule."""
    diffusers, _ = _diffusers()
    missing = [sub for sub in ("unet", "vae", "scheduler") if not (path / sub).is_dir()]
    if missing:
        raise SystemExit(f"--pretrained {path}: expected a diffusers Stable Diffusion folder, missing {missing}")
    unet = diffusers.UNet2DConditionModel.from_pretrained(path, subfolder="unet")
    vae = diffusers.AutoencoderKL.from_pretrained(path, subfolder="vae")
    scheduler = diffusers.DDPMScheduler.from_pretrained(path, subfolder="scheduler")
    for module in (unet, vae):
        module.requires_grad_(False).eval()
    factor = 2 ** (len(vae.config.block_out_channels) - 1)
    return Backbone(unet, scheduler, vae=vae, downscale_factor=factor, train_unet=False)


def build_controlnet(backbone: Backbone, specs, args):
    _, TLAMControlNetModel = _diffusers()
    strides = backbone.downscale_factor.bit_length() - 1
    return TLAMControlNetModel.from_unet(
        backbone.unet,
        specs,
        merger_dim=args.merger_dim,
        merger_depth=args.merger_depth,
        merger_heads=args.merger_heads,
        merger_resolution=args.merger_resolution,
        label_downscale_factor=backbone.downscale_factor,
        # ControlNet's strided encoder, only used with --merger-resolution image.
        conditioning_embedding_out_channels=(16, 32, 96, 256)[: strides + 1] if strides < 4 else None,
    )


def context(backbone: Backbone, batch_size: int) -> torch.Tensor:
    """The cross-attention context without a text encoder: one zero token."""
    return torch.zeros(batch_size, 1, backbone.unet.config.cross_attention_dim, device=backbone.unet.device)


def predict_noise(backbone, controlnet, noisy, t, labels, masks):
    text = context(backbone, noisy.shape[0])
    control = controlnet(noisy, t, text, labels=labels, masks=masks)
    return backbone.unet(
        noisy,
        t,
        text,
        down_block_additional_residuals=control.down_block_res_samples,
        mid_block_additional_residual=control.mid_block_res_sample,
    ).sample


# ---------------------------------------------------------------- training and sampling


def train(backbone: Backbone, controlnet, scenes: Scenes, args) -> list[float]:
    params = list(controlnet.parameters()) + (list(backbone.unet.parameters()) if backbone.train_unet else [])
    optimizer = torch.optim.AdamW(params, lr=args.lr, weight_decay=0.0)
    generator = torch.Generator().manual_seed(args.seed)
    scheduler = backbone.scheduler
    losses = []
    controlnet.train()
    backbone.unet.train(backbone.train_unet)
    for step in range(1, args.steps + 1):
        index = torch.randint(0, scenes.images.shape[0], (args.batch_size,), generator=generator)
        batch = scenes.batch(index, args.device)
        masks = sparsify(
            batch,
            region_p=args.sparsity,
            label_p=args.label_dropout,
            drop_all_p=args.unconditional_dropout,
            generator=generator,
        )
        samples = backbone.encode(batch.images)
        noise = torch.randn(samples.shape, generator=generator).to(args.device)
        t = torch.randint(0, scheduler.config.num_train_timesteps, (samples.shape[0],), generator=generator)
        t = t.to(args.device)
        noisy = scheduler.add_noise(samples, noise, t)
        loss = F.mse_loss(predict_noise(backbone, controlnet, noisy, t, batch.labels, masks), noise)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
        if step % args.log_every == 0 or step == args.steps:
            recent = losses[-args.log_every :]
            print(f"step {step}/{args.steps}: loss {sum(recent) / len(recent):.4f}", flush=True)
    return losses


@torch.no_grad()
def generate(backbone: Backbone, controlnet, labels, masks, *, steps: int, seed: int) -> torch.Tensor:
    """Images ``(B, 3, H, W)`` in [-1, 1] from labels, with DDIM sampling."""
    import diffusers

    controlnet.eval()
    backbone.unet.eval()
    sampler = diffusers.DDIMScheduler.from_config(backbone.scheduler.config)
    sampler.set_timesteps(steps)
    B, H, W = next(iter(masks.values())).shape
    factor = backbone.downscale_factor
    channels = backbone.unet.config.in_channels
    generator = torch.Generator().manual_seed(seed)
    x = torch.randn(B, channels, H // factor, W // factor, generator=generator).to(backbone.unet.device)
    x = x * sampler.init_noise_sigma
    for t in sampler.timesteps:
        noise = predict_noise(backbone, controlnet, sampler.scale_model_input(x, t), t, labels, masks)
        x = sampler.step(noise, t, x).prev_sample
    return backbone.decode(x)


def controllability_metric(*, specs, resolution: int, cache_dir: Path, estimator_steps: int, estimator_samples: int):
    """``(images, labels, present, given, real) -> dict``: how well images follow their labels.

    The label estimator of ``examples.metrics.controllability`` re-reads each label from the
    images; it is trained once on the synthetic scenes of this size and cached (shared with the
    studies when ``cache_dir`` is the default). Each label is scored where it was given to the
    model and where it was missing, with the real images' scores as the ceiling.
    """
    from examples.metrics.controllability import flatten_consistency, label_consistency
    from examples.metrics.estimator_training import EstimatorRecipe, obtain_label_estimator

    recipe = EstimatorRecipe(steps=estimator_steps, samples=estimator_samples)
    estimator, _ = obtain_label_estimator(resolution, recipe, cache_dir=cache_dir, progress=False)
    semantic = specs.get("semantic")

    def score(images, labels, present, given, real):
        result = label_consistency(
            images,
            labels,
            given,
            estimator,
            label_present=present,
            real_images=real,
            num_classes=semantic.num_classes if semantic is not None else None,
            ignore_index=semantic.ignore_index if semantic is not None else None,
        )
        return flatten_consistency(result)

    return score


# ---------------------------------------------------------------- script


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--out", type=Path, default=Path("runs/controlnet_tlam"), help="output folder")
    p.add_argument(
        "--pretrained", type=Path, default=None, help="local Stable Diffusion folder (unet/, vae/, scheduler/)"
    )
    p.add_argument("--resolution", type=int, default=32, help="image size of the synthetic scenes")
    p.add_argument("--labels", nargs="+", default=["semantic", "depth", "normal", "edge"], help="labels to use")
    p.add_argument("--train-samples", type=int, default=64, help="synthetic training scenes")
    p.add_argument("--test-samples", type=int, default=4, help="held-out scenes to draw")
    p.add_argument("--steps", type=int, default=200, help="optimiser steps")
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--lr", type=float, default=5e-4)
    p.add_argument("--unet-width", type=int, default=32, help="channels of the tiny UNet's first block")
    p.add_argument("--merger-dim", type=int, default=24)
    p.add_argument("--merger-depth", type=int, default=1)
    p.add_argument("--merger-heads", type=int, default=3)
    p.add_argument("--merger-resolution", choices=["latent", "image"], default="latent")
    p.add_argument("--sparsity", type=float, default=0.5, help="region dropout probability (paper: 0.5)")
    p.add_argument("--label-dropout", type=float, default=0.2, help="whole-label dropout probability")
    p.add_argument(
        "--unconditional-dropout",
        type=float,
        default=0.1,
        help="probability that an image loses every label, so that guidance without labels is trained",
    )
    p.add_argument("--sample-steps", type=int, default=20, help="DDIM steps for the sample grid")
    p.add_argument("--log-every", type=int, default=25)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu", help="torch device")
    p.add_argument(
        "--cache-dir",
        type=Path,
        default=None,
        help="cache for rendered scenes and the label estimator (default: $LABEL_MERGE_CACHE or ~/.cache/label-merge)",
    )
    p.add_argument(
        "--estimator-steps", type=int, default=800, help="training steps of the controllability label estimator"
    )
    p.add_argument("--estimator-samples", type=int, default=1024, help="scenes the label estimator learns from")
    return p


def main(argv: list[str] | None = None) -> dict:
    args = build_parser().parse_args(argv)
    _diffusers()
    torch.manual_seed(args.seed)
    args.out.mkdir(parents=True, exist_ok=True)
    dataset_args = {"resolution": args.resolution, "labels": args.labels, "cache_dir": args.cache_dir}
    train_set = SyntheticDataset(args.train_samples, seed=args.seed, **dataset_args)
    test_set = SyntheticDataset(args.test_samples, seed=args.seed + 1_000_000, **dataset_args)
    specs = train_set.label_specs
    print(f"rendering {len(train_set)} + {len(test_set)} synthetic scenes at {args.resolution}px", flush=True)
    scenes, held_out = load_scenes(train_set), load_scenes(test_set)

    backbone = (
        pretrained_backbone(args.pretrained) if args.pretrained else tiny_backbone(args.resolution, args.unet_width)
    )
    if args.resolution % backbone.downscale_factor:
        raise SystemExit(f"--resolution must be a multiple of {backbone.downscale_factor} for this model")
    controlnet = build_controlnet(backbone, specs, args).to(args.device)
    for module in (backbone.unet, backbone.vae):
        if module is not None:
            module.to(args.device)
    trained = "UNet + ControlNet" if backbone.train_unet else "ControlNet (UNet frozen)"
    print(f"training {trained} with TLAM on labels {list(specs)} for {args.steps} steps", flush=True)
    losses = train(backbone, controlnet, scenes, args)

    sparse = sparsify(
        held_out, region_p=args.sparsity, label_p=args.label_dropout, generator=torch.Generator().manual_seed(1)
    )
    on_device = held_out.batch(torch.arange(len(test_set)), args.device)
    images = {}
    for name, masks in (("all", held_out.masks), ("sparse", sparse)):
        masks = {label: m.to(args.device) for label, m in masks.items()}
        found = generate(backbone, controlnet, on_device.labels, masks, steps=args.sample_steps, seed=args.seed)
        images[name] = found.cpu()
    dense_images, sparse_images = images["all"], images["sparse"]
    columns = label_columns(specs, held_out.labels, held_out.masks)
    columns += [("generated (all labels)", image_to_rgb(dense_images))]
    columns += label_columns(specs, held_out.labels, sparse)
    columns += [("generated (sparse labels)", image_to_rgb(sparse_images)), ("real", image_to_rgb(held_out.images))]
    save_grid(args.out / "samples.png", columns)
    controlnet.save_pretrained(args.out / "controlnet")

    metrics = {"steps": args.steps, "final_loss": sum(losses[-args.log_every :]) / len(losses[-args.log_every :])}
    score = controllability_metric(
        specs=specs,
        resolution=args.resolution,
        cache_dir=args.cache_dir or default_cache_dir(),
        estimator_steps=args.estimator_steps,
        estimator_samples=args.estimator_samples,
    )
    truth, real = held_out.masks, held_out.images
    metrics["controllability_all_labels"] = score(dense_images, held_out.labels, truth, held_out.masks, real)
    metrics["controllability_sparse_labels"] = score(sparse_images, held_out.labels, truth, sparse, real)
    (args.out / "metrics.json").write_text(json.dumps(metrics, indent=2, default=float))
    print(
        f"samples: {args.out / 'samples.png'}; model: {args.out / 'controlnet'}; metrics: {args.out / 'metrics.json'}"
    )
    return metrics


if __name__ == "__main__":
    main()
