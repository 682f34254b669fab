"""An endless, resumable, rank-sharded stream of sample indices for step-based training."""

from __future__ import annotations

from collections.abc import Iterator

from torch.utils.data import DistributedSampler, Sampler

__all__ = ["ResumableSampler"]


class _Sized:
    """Stands in for a dataset where DistributedSampler only needs ``len``."""

    def __init__(self, length: int) -> None:
        self.length = length

    def __len__(self) -> int:
        return self.length


class ResumableSampler(Sampler[int]):
    """Epoch after epoch of ``DistributedSampler`` orders, starting after ``start`` samples.

    Epoch ``e`` is ``DistributedSampler(shuffle=True, seed=seed)`` after ``set_epoch(e)``, so
    each rank sees its shard and the order depends only on ``(seed, e)``. Resuming a run after
    it consumed ``start`` samples on this rank yields exactly the indices it would have seen
    next, without loading the skipped samples.

    Args:
        length: Dataset size.
        seed: Shuffling seed, shared by all ranks.
        rank: This process's rank.
        world_size: Number of processes.
        start: Samples this rank has already consumed.
        shuffle: Shuffle each epoch (otherwise sequential order).
    """

    def __init__(
        self, length: int, *, seed: int, rank: int = 0, world_size: int = 1, start: int = 0, shuffle: bool = True
    ) -> None:
        if length < 1:
            raise ValueError("the dataset is empty")
        self.epoch_sampler = DistributedSampler(
            _Sized(length), num_replicas=world_size, rank=rank, shuffle=shuffle, seed=seed
        )
        self.start = start

    def __iter__(self) -> Iterator[int]:
        per_epoch = len(self.epoch_sampler)  # samples per rank per epoch
        epoch, skip = divmod(self.start, per_epoch)
        while True:
            self.epoch_sampler.set_epoch(epoch)
            order = list(self.epoch_sampler)
            yield from order[skip:]
            epoch, skip = epoch + 1, 0

    def __len__(self) -> int:  # pragma: no cover - the stream is endless
        raise TypeError("ResumableSampler is endless")
