"""Run under torchrun by test_training: train 2 steps with 2 processes, then compare weights."""

import os
import sys
from dataclasses import replace
from pathlib import Path

import torch
import torch.distributed as dist
from test_training import tiny_config

from examples.training.distributed import setup_distributed, teardown_distributed
from examples.training.loop import Trainer

out = Path(sys.argv[1])
base = tiny_config(out)  # the training tests' tiny run, with 2 steps of global batch 4
config = replace(base, train=replace(base.train, steps=2, batch_size=4))
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
# Everything this test checks is done. Leave without interpreter finalization, where gloo's
# worker threads can rarely abort a CPU process ("terminate called without an active exception").
sys.stdout.flush()
sys.stderr.flush()
os._exit(0)
