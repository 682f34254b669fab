"""Run under torchrun by test_training: train 2 steps with 2 processes, then compare weights."""

import sys
from dataclasses import replace
from pathlib import Path

import torch
import torch.distributed as dist

from examples.training.config import DataConfig, ModelConfig, OptimConfig, RunConfig, TrainConfig
from examples.training.distributed import setup_distributed, teardown_distributed
from examples.training.loop import Trainer

out = Path(sys.argv[1])
config = RunConfig(
    data=DataConfig(resolution=32, train_samples=8, val_samples=2),
    model=ModelConfig(
        dim=8,
        depth=1,
        heads=2,
        asap_lr_width=8,
        asap_lr_max_width=16,
        asap_lr_depth=1,
        asap_hr_width=8,
        asap_hr_depth=2,
        ndf=8,
        n_layers_d=3,
    ),
    optim=OptimConfig(lambda_vgg=0.0),
    train=TrainConfig(
        steps=2, batch_size=4, out=str(out / "run"), log_every=1, sample_every=1000, checkpoint_every=1000
    ),
)
info = setup_distributed()
assert info.world_size == 2
trainer = Trainer(replace(config), dist=info, progress=False)
trainer.train()
flat = torch.cat(
    [p.detach().flatten() for p in trainer.generator.parameters()]
    + [p.detach().flatten() for p in trainer.discriminator.parameters()]
)
gathered = [torch.empty_like(flat) for _ in range(info.world_size)]
dist.all_gather(gathered, flat)
if info.is_main:
    assert all(torch.equal(gathered[0], g) for g in gathered[1:]), "ranks diverged"
    (out / "ddp_ok").write_text(str(info.world_size))
teardown_distributed()
