"""A small segmentation network trained on a dataset's real images, for the segmentation score.

The paper scores Cityscapes images with DRN-D-105 and NYU images with DeepLabv3+; those weights
are not shipped here. :class:`SmallSegmenter` (a compact U-Net-style encoder-decoder) and
:func:`train_segmenter` make the protocol work on any dataset with no download: train it on the
real images, then score generated images with it. Its numbers rank models against each other;
they are not comparable with published mIoU values. Its pooled bottleneck features can also serve
as a (non-standard) FID feature extractor.
"""

from __future__ import annotations

import functools
import os
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader, Dataset, IterableDataset

from .network_files import load_network, save_network
from .samples import cycle_batches, image_and_label_collate, split_batch

__all__ = ["SmallSegmenter", "SegmenterTraining", "train_segmenter", "save_segmenter", "load_segmenter"]

_FORMAT = "label_merge.examples.SmallSegmenter"


def _group_norm(channels: int) -> nn.GroupNorm:
    groups = next(g for g in (8, 4, 2, 1) if channels % g == 0)
    return nn.GroupNorm(groups, channels)


class _ConvBlock(nn.Sequential):
    """Two 3x3 convolutions with GroupNorm and GELU; the first may downsample by 2."""

    def __init__(self, in_channels: int, out_channels: int, *, stride: int = 1) -> None:
        super().__init__(
            nn.Conv2d(in_channels, out_channels, 3, stride=stride, padding=1),
            _group_norm(out_channels),
            nn.GELU(),
            nn.Conv2d(out_channels, out_channels, 3, padding=1),
            _group_norm(out_channels),
            nn.GELU(),
        )


class SmallSegmenter(nn.Module):
    """Compact conv encoder-decoder with skip connections: images to per-pixel class logits.

    Channels double at each of ``depth`` stride-2 stages (``width, 2 width, ..., 2^depth width``);
    the decoder upsamples bilinearly to each skip's exact size, so any ``H, W`` works. GroupNorm
    keeps training and evaluation identical whatever the batch size.

    Args:
        num_classes: Number of output classes ``K``.
        width: Channels of the full-resolution stage.
        depth: Number of downsampling stages.

    Raises:
        ValueError: If an argument is not a positive int.

    Example:
        >>> net = SmallSegmenter(num_classes=5, width=8, depth=2)
        >>> net(torch.zeros(2, 3, 17, 30)).shape
        torch.Size([2, 5, 17, 30])
    """

    def __init__(self, num_classes: int, *, width: int = 32, depth: int = 3) -> None:
        super().__init__()
        for name, value in (("num_classes", num_classes), ("width", width), ("depth", depth)):
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be a positive int, got {value!r}")
        self.num_classes, self.width, self.depth = num_classes, width, depth
        channels = [width * 2**level for level in range(depth + 1)]
        self.stem = _ConvBlock(3, channels[0])
        self.down = nn.ModuleList(_ConvBlock(channels[i], channels[i + 1], stride=2) for i in range(depth))
        self.up = nn.ModuleList(_ConvBlock(channels[i + 1] + channels[i], channels[i]) for i in reversed(range(depth)))
        self.head = nn.Conv2d(channels[0], num_classes, 1)

    @property
    def feature_dim(self) -> int:
        """Size of :meth:`pooled_features` vectors."""
        return self.width * 2**self.depth

    def _encode(self, images: torch.Tensor) -> list[torch.Tensor]:
        if images.ndim != 4 or images.shape[1] != 3:
            raise ValueError(f"images must have shape (B, 3, H, W), got {tuple(images.shape)}")
        skips = [self.stem(images)]  # (B, width, H, W)
        for stage in self.down:
            skips.append(stage(skips[-1]))  # (B, C_i, ~H / 2^i, ~W / 2^i)
        return skips

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """Per-pixel class logits.

        Args:
            images: ``(B, 3, H, W)`` in [-1, 1].

        Returns:
            ``(B, num_classes, H, W)`` logits.
        """
        skips = self._encode(images)
        x = skips.pop()
        for stage in self.up:
            skip = skips.pop()
            x = F.interpolate(x, size=skip.shape[-2:], mode="bilinear", align_corners=False)
            x = stage(torch.cat([x, skip], dim=1))  # (B, C_skip, H_skip, W_skip)
        return self.head(x)

    def pooled_features(self, images: torch.Tensor) -> torch.Tensor:
        """Global average of the bottleneck: ``(B, 3, H, W) -> (B, feature_dim)`` features.

        Example:
            >>> SmallSegmenter(3, width=4, depth=2).pooled_features(torch.zeros(1, 3, 8, 8)).shape
            torch.Size([1, 16])
        """
        return self._encode(images)[-1].mean(dim=(2, 3))  # (B, feature_dim)


@dataclass
class SegmenterTraining:
    """Result of :func:`train_segmenter`.

    Attributes:
        model: The trained network, in eval mode.
        losses: Cross-entropy of every step (over non-ignored pixels; 0 for a batch without any).
        config: The training settings, for the record (also stored with saved weights).
    """

    model: SmallSegmenter
    losses: list[float]
    config: dict = field(default_factory=dict)


def train_segmenter(
    data: Dataset | DataLoader | Iterable,
    num_classes: int,
    steps: int,
    *,
    ignore_index: int | None = None,
    label_name: str = "semantic",
    width: int = 32,
    depth: int = 3,
    batch_size: int = 8,
    lr: float = 1e-3,
    weight_decay: float = 1e-4,
    flip: bool = True,
    seed: int = 0,
    device: torch.device | str = "cpu",
) -> SegmenterTraining:
    """Train a :class:`SmallSegmenter` on real images and their semantic maps.

    Cross-entropy over non-ignored pixels with AdamW; the data is cycled until ``steps`` steps
    were taken.

    Args:
        data: A map-style dataset of sample dicts (``image`` ``(3, H, W)`` in [-1, 1],
            ``labels[label_name]`` ``(H, W)`` int), batched here with shuffling; or a loader /
            iterable of batches: sample-dict batches or ``(images, semantic)`` pairs.
        num_classes: Number of classes ``K`` (ids ``0 .. K-1``).
        steps: Optimisation steps.
        ignore_index: Ground-truth id that is not trained on, or None.
        label_name: Key of the semantic map in ``sample["labels"]``.
        width: Segmenter width.
        depth: Segmenter depth.
        batch_size: Batch size when ``data`` is a dataset.
        lr: AdamW learning rate.
        weight_decay: AdamW weight decay.
        flip: Random horizontal flips of image and map together.
        seed: Seed of initialisation, shuffling and flips.
        device: Training device.

    Returns:
        A :class:`SegmenterTraining` with the model (eval mode) and the per-step losses.

    Raises:
        ValueError: If ``steps < 1``, the data yields no batch, or a label id is out of range.

    Example:
        >>> data = [(torch.rand(2, 3, 16, 16) * 2 - 1, torch.randint(0, 3, (2, 16, 16)))]
        >>> result = train_segmenter(data, num_classes=3, steps=2, width=4, depth=1)
        >>> len(result.losses)
        2
    """
    if isinstance(steps, bool) or not isinstance(steps, int) or steps < 1:
        raise ValueError(f"steps must be a positive int, got {steps!r}")
    torch.manual_seed(seed)
    model = SmallSegmenter(num_classes, width=width, depth=depth).to(device)
    loader = _as_loader(data, batch_size=batch_size, label_name=label_name, seed=seed)
    optimizer = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=weight_decay)
    flip_generator = torch.Generator().manual_seed(seed + 1)
    losses: list[float] = []
    model.train()
    for batch in cycle_batches(loader):
        images, semantic = split_batch(batch, label_name=label_name, ignore_index=ignore_index)
        images, semantic = images.to(device).float(), semantic.to(device).long()
        if flip and bool(torch.rand((), generator=flip_generator) < 0.5):
            images, semantic = images.flip(-1), semantic.flip(-1)
        _check_targets(semantic, num_classes=num_classes, ignore_index=ignore_index)
        logits = model(images)  # (B, K, H, W)
        loss = _masked_cross_entropy(logits, semantic, ignore_index=ignore_index)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        losses.append(float(loss.detach()))
        if len(losses) == steps:
            break
    config = {
        "num_classes": num_classes,
        "width": width,
        "depth": depth,
        "ignore_index": ignore_index,
        "label_name": label_name,
        "steps": steps,
        "batch_size": batch_size,
        "lr": lr,
        "weight_decay": weight_decay,
        "flip": flip,
        "seed": seed,
    }
    return SegmenterTraining(model=model.eval(), losses=losses, config=config)


def save_segmenter(model: SmallSegmenter, path: str | os.PathLike, *, metadata: Mapping | None = None) -> None:
    """Write the weights and architecture to a ``.safetensors`` file.

    Args:
        model: The network.
        path: Output file.
        metadata: Extra JSON-serialisable information (training settings, dataset, ...).

    Raises:
        TypeError: If ``model`` is not a :class:`SmallSegmenter`.

    Example:
        >>> import tempfile, pathlib
        >>> path = pathlib.Path(tempfile.mkdtemp()) / "segmenter.safetensors"
        >>> save_segmenter(SmallSegmenter(4, width=4, depth=1), path)
        >>> load_segmenter(path).num_classes
        4
    """
    if not isinstance(model, SmallSegmenter):
        raise TypeError(f"model must be a SmallSegmenter, got {type(model).__name__}")
    architecture = {"num_classes": model.num_classes, "width": model.width, "depth": model.depth}
    save_network(model, path, file_format=_FORMAT, architecture=architecture, metadata=metadata)


def load_segmenter(path: str | os.PathLike, *, device: torch.device | str = "cpu") -> SmallSegmenter:
    """Rebuild a :class:`SmallSegmenter` from a file written by :func:`save_segmenter`.

    Args:
        path: The ``.safetensors`` file.
        device: Where to put the network.

    Returns:
        The network in eval mode; ``model.metadata`` holds the saved extra information.

    Raises:
        FileNotFoundError: If the file does not exist.
        ValueError: If it was not written by :func:`save_segmenter` or its tensors do not fit.
    """
    model = load_network(
        path,
        file_format=_FORMAT,
        kind_name="SmallSegmenter",
        missing_name="segmenter",
        build=lambda arch: SmallSegmenter(arch["num_classes"], width=arch["width"], depth=arch["depth"]),
    )
    return model.eval().to(device)


def _as_loader(data: Dataset | DataLoader | Iterable, *, batch_size: int, label_name: str, seed: int) -> Iterable:
    """A dataset is batched here (shuffled, only image and label collated); anything else is used as is."""
    if isinstance(data, DataLoader) or isinstance(data, IterableDataset):
        return data
    if isinstance(data, Dataset) or (hasattr(data, "__getitem__") and hasattr(data, "__len__") and _is_sample(data)):
        return DataLoader(
            data,
            batch_size=batch_size,
            shuffle=True,
            drop_last=len(data) >= batch_size,
            collate_fn=functools.partial(image_and_label_collate, label_name=label_name),
            generator=torch.Generator().manual_seed(seed),
        )
    return data


def _is_sample(data) -> bool:
    return len(data) > 0 and isinstance(data[0], Mapping) and "image" in data[0]


def _check_targets(semantic: torch.Tensor, *, num_classes: int, ignore_index: int | None) -> None:
    valid = semantic if ignore_index is None else semantic[semantic != ignore_index]
    if valid.numel() and (int(valid.min()) < 0 or int(valid.max()) >= num_classes):
        bad = int(valid.min()) if int(valid.min()) < 0 else int(valid.max())
        raise ValueError(
            f"semantic map contains class id {bad}; expected [0, {num_classes}) or ignore_index={ignore_index}"
        )


def _masked_cross_entropy(logits: torch.Tensor, semantic: torch.Tensor, *, ignore_index: int | None) -> torch.Tensor:
    """Mean cross-entropy over non-ignored pixels; exactly 0 (not NaN) when every pixel is ignored."""
    if ignore_index is None:
        return F.cross_entropy(logits, semantic)
    summed = F.cross_entropy(logits, semantic, ignore_index=ignore_index, reduction="sum")
    return summed / (semantic != ignore_index).sum().clamp_min(1)
