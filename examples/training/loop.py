"""The adversarial training loop (paper Sec. 3.2 and 4, ASAP-Net/SPADE protocol).

Each step updates the merger and generator once, then the discriminator once, on the same
batch (SPADE's order):

- generator step: hinge adversarial loss + feature matching + VGG19 perceptual loss (+ an
  optional pixel L1), with the discriminator frozen;
- discriminator step: hinge loss on real and (detached) fake images.

The discriminator is conditioned on the concept tensor, concatenated with the image (paper
Sec. 3.2). The concept it sees is detached: the merger learns only through the generator, so
it cannot make the discriminator's conditioning uninformative.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import random
import time
import warnings
from collections import defaultdict
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader
from tqdm.auto import tqdm

from examples.label_images import image_to_rgb, label_columns, save_grid
from examples.losses import (
    VGGPerceptualLoss,
    feature_matching_loss,
    hinge_loss_d_fake,
    hinge_loss_d_real,
    hinge_loss_g,
)
from examples.training.builders import build_datasets, build_networks, label_specs_of, specs_to_dict
from examples.training.checkpoint import load_checkpoint, remove_stale_temporaries, save_checkpoint
from examples.training.config import RunConfig, check_config
from examples.training.cpu import keep_freed_memory, resolve_amp
from examples.training.data import ResumableSampler
from examples.training.distributed import DistInfo, pick_device
from examples.training.run_files import ensure_writable, trim_metrics_log
from label_merge.sparsity import region_dropout
from label_merge.viz import concept_to_rgb

__all__ = [
    "Trainer",
    "build_adam",
    "compile_networks",
    "set_adam_impl",
    "split_outputs",
    "to_device",
    "seed_everything",
    "step_generator",
    "with_amp_resolved",
]

# Independent random streams drawn per (seed, step, rank): see step_generator.
REGION_DROPOUT_STREAM = 0
DATA_LOADER_STREAM = 1


def to_device(batch: dict, device: torch.device) -> dict:
    """Move every tensor of a (nested) sample dict to ``device``."""
    out = {}
    for key, value in batch.items():
        if isinstance(value, torch.Tensor):
            out[key] = value.to(device, non_blocking=True)
        elif isinstance(value, dict):
            out[key] = to_device(value, device)
        else:
            out[key] = value
    return out


def split_outputs(outputs: list[list[torch.Tensor]], first: int) -> tuple[list, list]:
    """Split discriminator outputs of a ``cat([a, b])`` batch into the ``a`` and ``b`` parts."""
    a = [[f[:first] for f in scale] for scale in outputs]
    b = [[f[first:] for f in scale] for scale in outputs]
    return a, b


def step_generator(seed: int, step: int, rank: int, stream: int = REGION_DROPOUT_STREAM) -> torch.Generator:
    """A generator that depends only on (seed, step, rank, stream): per-step randomness needs no state.

    Args:
        seed: The run's seed.
        step: The number of completed steps.
        rank: This process's rank.
        stream: Which use the numbers are for, so two uses at one step draw independent numbers.
    """
    entropy = [seed, step, rank] if stream == REGION_DROPOUT_STREAM else [seed, step, rank, stream]
    state = np.random.SeedSequence(entropy).generate_state(2, dtype=np.uint64)
    return torch.Generator().manual_seed(int(state[0] % (2**63)))


def _update(optimizer: torch.optim.Optimizer, losses: dict[str, torch.Tensor]) -> None:
    """One step of ``optimizer`` on the sum of ``losses``."""
    optimizer.zero_grad(set_to_none=True)
    sum(losses.values()).backward()
    optimizer.step()


def seed_everything(seed: int) -> None:
    """Seed the global torch (CPU and CUDA), numpy and Python random number generators.

    Every rank seeds them alike, and checkpoints save and restore them (rank 0's states, which
    equal every rank's as long as the ranks draw alike); randomness that must differ between
    ranks or that must not depend on the history of a run comes from :func:`step_generator`.
    """
    torch.manual_seed(seed)
    np.random.seed(seed)
    random.seed(seed)


def _set_cpu_allocator(setting: str, device: torch.device) -> str:
    """Apply ``--cpu-allocator`` for a CPU run; returns what was done, for the start-up line."""
    if device.type != "cpu":
        return f"unchanged: the run is on {device.type}"
    if setting == "system":
        return "system, as asked"
    return keep_freed_memory()[1]


def with_amp_resolved(config: RunConfig, device: torch.device) -> RunConfig:
    """``config`` with ``train.amp_resolved`` and ``train.amp_reason`` filled in for ``device``.

    A configuration that already holds a resolution (a resumed run) keeps it, so a run keeps
    its precision when it continues on another machine.
    """
    t = config.train
    if t.amp_resolved is not None:
        return config
    enabled, reason = resolve_amp(t.amp, device)
    return replace(config, train=replace(t, amp_resolved=enabled, amp_reason=reason))


def adam_impl_flags(impl: str) -> dict[str, bool | None]:
    """The ``foreach`` and ``fused`` arguments of ``torch.optim.Adam`` for ``--adam-impl``."""
    flags = {"default": (None, None), "foreach": (True, None), "fused": (None, True)}
    if impl not in flags:
        raise ValueError(f"--adam-impl must be one of {list(flags)}, got {impl!r}")
    foreach, fused = flags[impl]
    return {"foreach": foreach, "fused": fused}


def build_adam(params, *, lr: float, betas: tuple[float, float], impl: str = "default") -> torch.optim.Adam:
    """Adam with the implementation ``impl`` (see :func:`adam_impl_flags`)."""
    return torch.optim.Adam(params, lr=lr, betas=betas, **adam_impl_flags(impl))


def set_adam_impl(optimizer: torch.optim.Optimizer, impl: str) -> None:
    """Set the implementation of every parameter group (a loaded state dict brings its own)."""
    for group in optimizer.param_groups:
        group.update(adam_impl_flags(impl))


def compile_networks(generator: torch.nn.Module, discriminator: torch.nn.Module) -> None:
    """``torch.compile`` the merger, the generator and the discriminator in place.

    ``Module.compile`` keeps the parameters and their names, so checkpoints are unchanged. The
    merger and the generator are compiled apart: the merger's input checks break its graph,
    which then leaves the generator's whole.
    """
    generator.merger.compile()
    generator.generator.compile()
    discriminator.compile()


class Trainer:
    """Everything a run needs, built from a :class:`RunConfig`.

    Args:
        config: The run configuration.
        dist: This process's place in a distributed run.
        resume: A checkpoint file to continue from, or None.
        progress: Show a progress bar (rank 0 only).
    """

    def __init__(
        self,
        config: RunConfig,
        *,
        dist: DistInfo | None = None,
        resume: str | os.PathLike | None = None,
        progress: bool = True,
    ) -> None:
        check_config(config)
        self.config = config
        self.dist = dist or DistInfo()
        t = config.train
        if t.batch_size % self.dist.world_size:
            raise ValueError(
                f"--batch-size {t.batch_size} must be divisible by the number of processes ({self.dist.world_size})"
            )
        self.device = pick_device(t.device, self.dist)
        if t.one_discriminator_pass and self.dist.enabled:
            raise ValueError("--one-discriminator-pass runs in a single process only; leave it out with torchrun")
        self.config = config = with_amp_resolved(config, self.device)
        t = config.train
        self.allocator_note = _set_cpu_allocator(t.cpu_allocator, self.device)
        self.out = Path(t.out)
        if self.dist.is_main:  # before any heavy work: a read-only or full disk is found at once
            ensure_writable(self.out)
        self.progress = progress and self.dist.is_main
        seed_everything(t.seed)

        self.train_set, self.val_set = build_datasets(config.data, seed=t.seed)
        self.specs = label_specs_of(self.train_set)
        self.generator, self.discriminator = build_networks(config, self.specs)
        self.generator.to(self.device)
        self.discriminator.to(self.device)
        if t.channels_last:
            # Only the convolutional networks: the merger works on per-pixel tokens.
            self.generator.generator.to(memory_format=torch.channels_last)
            self.discriminator.to(memory_format=torch.channels_last)
        o = config.optim
        self.opt_g = build_adam(self.generator.parameters(), lr=o.lr_g, betas=o.betas, impl=o.adam_impl)
        self.opt_d = build_adam(self.discriminator.parameters(), lr=o.lr_d, betas=o.betas, impl=o.adam_impl)
        self.vgg = VGGPerceptualLoss(o.vgg_weights, lambda_vgg=o.lambda_vgg).to(self.device) if o.lambda_vgg else None
        self.step = 0
        if resume is not None:
            info = load_checkpoint(
                resume,
                modules={"generator": self.generator, "discriminator": self.discriminator},
                optimizers={"generator": self.opt_g, "discriminator": self.opt_d},
            )
            self.step = info.step
            # The saved param_groups carry the implementation flags they were saved with.
            for optimizer in (self.opt_g, self.opt_d):
                set_adam_impl(optimizer, o.adam_impl)
        if t.compile:
            compile_networks(self.generator, self.discriminator)
        if self.dist.enabled:
            ids = [self.device.index] if self.device.type == "cuda" else None
            self.generator_ddp = DistributedDataParallel(self.generator, device_ids=ids)
            self.discriminator_ddp = DistributedDataParallel(self.discriminator, device_ids=ids)
        else:
            self.generator_ddp, self.discriminator_ddp = self.generator, self.discriminator
        self.per_rank_batch = t.batch_size // self.dist.world_size
        self.val_batch = self._fixed_val_batch()

    # ------------------------------------------------------------------ data

    def _loader(self) -> DataLoader:
        sampler = ResumableSampler(
            len(self.train_set),
            seed=self.config.train.seed,
            rank=self.dist.rank,
            world_size=self.dist.world_size,
            start=self.step * self.per_rank_batch,
        )
        workers = self.config.data.workers
        # The loader draws its workers' base seed once, when iterated. From its own generator,
        # it is a function of (seed, step, rank) and leaves the global RNG (saved in checkpoints) alone.
        t = self.config.train
        return DataLoader(
            self.train_set,
            batch_size=self.per_rank_batch,
            sampler=sampler,
            num_workers=workers,
            pin_memory=self.device.type == "cuda",
            persistent_workers=workers > 0,
            generator=step_generator(t.seed, self.step, self.dist.rank, stream=DATA_LOADER_STREAM),
        )

    def _fixed_val_batch(self, count: int = 4) -> dict:
        count = min(count, len(self.val_set))
        batch = torch.utils.data.default_collate([self.val_set[i] for i in range(count)])
        return to_device(batch, self.device)

    def _masks(self, batch: dict) -> dict[str, torch.Tensor]:
        masks = batch["masks"]
        if self.config.train.sparsity > 0:
            g = step_generator(self.config.train.seed, self.step, self.dist.rank)
            masks = region_dropout(masks, batch["regions"], self.config.train.sparsity, generator=g)
        return masks

    # ------------------------------------------------------------------ steps

    def _autocast(self):
        return torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=self.config.train.amp_resolved)

    def _real_images(self, batch: dict) -> torch.Tensor:
        real = batch["image"]
        return real.contiguous(memory_format=torch.channels_last) if self.config.train.channels_last else real

    def generator_losses(self, batch: dict, masks: dict) -> tuple[dict[str, torch.Tensor], torch.Tensor, torch.Tensor]:
        """The merger + generator losses (with their graph), the fake and the concept (both detached)."""
        real = self._real_images(batch)
        # The frozen discriminator is called unwrapped: no gradient sync, no parameter grads.
        d = self.discriminator
        d.requires_grad_(False)
        with self._autocast():
            fake, concept = self.generator_ddp(batch["labels"], masks)
            cond = concept.detach()
            outputs = d(torch.cat([cond, cond]), torch.cat([fake, real]))
        d.requires_grad_(True)
        fake_out, real_out = split_outputs(outputs, fake.shape[0])
        return self._generator_terms(fake_out, real_out, fake, real), fake.detach(), concept.detach()

    def _generator_terms(self, fake_out: list, real_out: list, fake: torch.Tensor, real: torch.Tensor) -> dict:
        """The generator's loss terms from the discriminator's outputs on fakes and reals, and the images."""
        o = self.config.optim
        losses = {
            "g_gan": hinge_loss_g(fake_out),
            "g_feat": feature_matching_loss(fake_out, real_out, lambda_feat=o.lambda_feat),
        }
        if self.vgg is not None and self.vgg.enabled:
            losses["g_vgg"] = self.vgg(fake.float(), real.float())
        if o.lambda_l1:
            losses["g_l1"] = o.lambda_l1 * F.l1_loss(fake.float(), real.float())
        return losses

    def discriminator_losses(self, batch: dict, fake: torch.Tensor, concept: torch.Tensor) -> dict[str, torch.Tensor]:
        """The discriminator's losses (with their graph) on real images and the generator's fakes."""
        real = self._real_images(batch)
        with self._autocast():
            outputs = self.discriminator_ddp(torch.cat([concept, concept]), torch.cat([fake, real]))
        fake_out, real_out = split_outputs(outputs, fake.shape[0])
        return {"d_fake": hinge_loss_d_fake(fake_out), "d_real": hinge_loss_d_real(real_out)}

    def one_pass_losses(self, batch: dict, masks: dict) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
        """Both networks' losses from one discriminator pass on ``[fake, real]`` (``--one-discriminator-pass``).

        The losses are those of :meth:`generator_losses` and :meth:`discriminator_losses`, but the
        discriminator runs once instead of twice, so its spectral norm's power iteration runs once
        per step and both updates see the same normalised weights: the numerics differ from the
        two-pass step. :meth:`_one_pass_update` keeps each backward to its own network.
        """
        real = self._real_images(batch)
        with self._autocast():
            fake, concept = self.generator_ddp(batch["labels"], masks)
            cond = concept.detach()
            outputs = self.discriminator_ddp(torch.cat([cond, cond]), torch.cat([fake, real]))
        fake_out, real_out = split_outputs(outputs, fake.shape[0])
        g_losses = self._generator_terms(fake_out, real_out, fake, real)
        return g_losses, {"d_fake": hinge_loss_d_fake(fake_out), "d_real": hinge_loss_d_real(real_out)}

    def _one_pass_update(self, g_losses: dict[str, torch.Tensor], d_losses: dict[str, torch.Tensor]) -> None:
        """Step both networks from :meth:`one_pass_losses`: each backward reaches only its own parameters.

        With ``inputs=``, the generator losses leave the discriminator's gradients alone and the
        discriminator losses do not reach the generator through the fake.
        """
        self.opt_g.zero_grad(set_to_none=True)
        self.opt_d.zero_grad(set_to_none=True)
        g_params = [p for p in self.generator.parameters() if p.requires_grad]
        d_params = [p for p in self.discriminator.parameters() if p.requires_grad]
        # The discriminator's backward needs the shared graph after the generator's has run.
        torch.autograd.backward(sum(g_losses.values()), inputs=g_params, retain_graph=True)
        torch.autograd.backward(sum(d_losses.values()), inputs=d_params)
        self.opt_g.step()
        self.opt_d.step()

    def _retainable_compiled_graphs(self):
        """With ``--compile``: compile backwards that may run with ``retain_graph=True``.

        A compiled backward reuses ("donates") saved buffers, so it refuses to run twice on one
        graph; the one-pass step runs two backwards through the discriminator's graph. Graphs
        compile at their first forward and backward, both inside this context.
        """
        if not self.config.train.compile:
            return contextlib.nullcontext()
        from torch._functorch import config as functorch_config

        return functorch_config.patch(donated_buffer=False)

    def train_step(self, batch: dict) -> dict[str, float]:
        """One update of merger + generator, then one of the discriminator; returns the losses.

        Both networks' losses are computed first (the discriminator's on the generator's
        detached fakes, which the generator's update does not change), so a non-finite loss
        raises ``FloatingPointError`` before either optimizer steps: the weights in memory stay
        those of the last good step.
        """
        masks = self._masks(batch)
        one_pass = self.config.train.one_discriminator_pass
        with self._retainable_compiled_graphs() if one_pass else contextlib.nullcontext():
            if one_pass:
                g_losses, d_losses = self.one_pass_losses(batch, masks)
            else:
                g_losses, fake, concept = self.generator_losses(batch, masks)
                d_losses = self.discriminator_losses(batch, fake, concept)
            values = {name: float(loss.detach()) for name, loss in {**g_losses, **d_losses}.items()}
            for name, value in values.items():
                if not math.isfinite(value):
                    raise FloatingPointError(f"loss {name} is {value} at step {self.step + 1}; no weights were updated")
            if one_pass:
                self._one_pass_update(g_losses, d_losses)
            else:
                _update(self.opt_g, g_losses)
                _update(self.opt_d, d_losses)
        return values

    # ------------------------------------------------------------------ outputs

    @torch.no_grad()
    def save_samples(self, path: Path) -> None:
        """A grid with, per held-out sample: each label, the concept (PCA), generated and real."""
        batch = self.val_batch
        self.generator.eval()
        with self._autocast():
            fake, concept = self.generator(batch["labels"], batch["masks"])
        self.generator.train()
        columns = label_columns(self.specs, batch["labels"], batch["masks"])
        columns += [
            ("concept (PCA)", concept_to_rgb(concept.float()).cpu()),
            ("generated", image_to_rgb(fake)),
            ("real", image_to_rgb(batch["image"])),
        ]
        path.parent.mkdir(parents=True, exist_ok=True)
        save_grid(path, columns)

    def save(self) -> Path:
        return save_checkpoint(
            self.out / "checkpoints",
            self.step,
            modules={"generator": self.generator, "discriminator": self.discriminator},
            optimizers={"generator": self.opt_g, "discriminator": self.opt_d},
            config={**self.config.to_dict(), "label_specs": specs_to_dict(self.specs)},
            keep=self.config.train.keep_checkpoints,
        )

    def _prepare_out(self, log: Path) -> None:
        """Rank 0, before the first step: the configuration, a consistent log, no stale temporaries."""
        self.out.mkdir(parents=True, exist_ok=True)
        (self.out / "config.json").write_text(json.dumps(self.config.to_dict(), indent=2) + "\n")
        trim_metrics_log(log, self.step)
        removed = remove_stale_temporaries(self.out / "checkpoints")
        if removed:
            warnings.warn(
                f"removed {len(removed)} temporary checkpoint file(s) left by killed writers: "
                + ", ".join(str(p) for p in removed),
                stacklevel=3,
            )

    # ------------------------------------------------------------------ the loop

    def train(self) -> dict[str, float]:
        """Run until ``config.train.steps``; returns the mean losses of the last log interval."""
        t = self.config.train
        main = self.dist.is_main
        writer = None
        log = self.out / "metrics.jsonl"
        if main:
            self._prepare_out(log)
            from torch.utils.tensorboard import SummaryWriter

            writer = SummaryWriter(str(self.out / "tensorboard"), purge_step=self.step or None)
        batches = iter(self._loader())
        window: dict[str, list[float]] = defaultdict(list)
        last: dict[str, float] = {}
        bar = tqdm(total=t.steps, initial=self.step, disable=not self.progress, desc="training", unit="step")
        started = time.perf_counter()
        try:
            while self.step < t.steps:
                batch = to_device(next(batches), self.device)
                losses = self.train_step(batch)
                self.step += 1
                bar.update(1)
                for name, value in losses.items():
                    window[name].append(value)
                if self.step % t.log_every == 0 or self.step == t.steps:
                    last = {name: float(np.mean(values)) for name, values in window.items()}
                    window.clear()
                    bar.set_postfix({k: f"{v:.3f}" for k, v in last.items()})
                    if main:
                        record = {"step": self.step, "seconds": round(time.perf_counter() - started, 2), **last}
                        with log.open("a") as f:
                            f.write(json.dumps(record) + "\n")
                        for name, value in last.items():
                            writer.add_scalar(f"loss/{name}", value, self.step)
                if main and (self.step % t.sample_every == 0 or self.step == t.steps):
                    self.save_samples(self.out / "samples" / f"step_{self.step:08d}.png")
                if main and (self.step % t.checkpoint_every == 0 or self.step == t.steps):
                    self.save()
        finally:
            bar.close()
            if writer is not None:
                writer.close()
        return last
