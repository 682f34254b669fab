"""Process-group set-up for runs started with ``torchrun`` (one process per GPU, or gloo on CPU)."""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import torch.distributed as dist

__all__ = ["DistInfo", "setup_distributed", "teardown_distributed", "pick_device"]


@dataclass(frozen=True)
class DistInfo:
    """Where this process stands in the run."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def is_main(self) -> bool:
        """Rank 0 logs, draws samples and writes checkpoints."""
        return self.rank == 0

    @property
    def enabled(self) -> bool:
        return self.world_size > 1


def pick_device(requested: str, info: DistInfo) -> torch.device:
    """``auto`` is this process's GPU when CUDA is there, else the CPU.

    Raises:
        ValueError: CUDA asked for but not available.
    """
    if requested == "auto":
        requested = "cuda" if torch.cuda.is_available() else "cpu"
    device = torch.device(requested)
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise ValueError(f"--device {requested}: CUDA is not available on this machine")
        if device.index is None:
            device = torch.device("cuda", info.local_rank)
        torch.cuda.set_device(device)
    return device


def setup_distributed() -> DistInfo:
    """Join the process group that ``torchrun`` describes in the environment, if any.

    NCCL when CUDA is available, gloo otherwise.
    """
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    if world_size == 1:
        return DistInfo()
    info = DistInfo(int(os.environ["RANK"]), world_size, int(os.environ.get("LOCAL_RANK", "0")))
    if not dist.is_initialized():
        dist.init_process_group(backend="nccl" if torch.cuda.is_available() else "gloo")
    return info


def teardown_distributed(*, wait_for_all_ranks: bool = True) -> None:
    """Leave the process group, if one was joined.

    Args:
        wait_for_all_ranks: First meet every rank at a barrier, so that no rank tears its
            connections down while another is still using them (with gloo, a rank that exits
            early can abort a process at exit). Pass False on an error path, where another rank
            may never arrive.
    """
    if dist.is_initialized():
        if wait_for_all_ranks:
            dist.barrier()
        dist.destroy_process_group()
