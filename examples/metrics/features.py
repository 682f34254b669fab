"""Feature extractors for FID/KID: the standard FID Inception, or any network the user supplies.

An FID is only comparable with another FID computed with the same network, weights and
preprocessing. Every :class:`FeatureExtractor` therefore carries a ``name`` (written next to
every FID and into saved statistics) and a ``standard`` flag that is True only for the pytorch-fid
Inception with its published weights: an FID from any other extractor (a random network, the
project's small segmenter, ...) is useful to compare models with each other, never with
published numbers.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable

import torch

from .inception import FID_WEIGHTS_FILENAME, load_fid_inception, resolve_fid_weights
from .statistics import FeatureStatistics

__all__ = ["FeatureExtractor", "fid_inception_extractor", "compute_statistics"]

_RANGE_TOLERANCE = 1e-3  # images may overshoot [-1, 1] by rounding, not by more


class FeatureExtractor:
    """Images in [-1, 1] to ``(B, D)`` feature vectors, with a name that labels the results.

    Args:
        network: Callable ``images (B, 3, H, W) in [-1, 1] -> (B, D)`` (``(B, D, 1, 1)`` is
            flattened). An ``nn.Module`` is put in eval mode.
        name: Human-readable description of network and weights; FIDs are labelled with it.
        standard: True only for the standard FID network and weights (pytorch-fid's), i.e. when
            the numbers are comparable with published FIDs.
        quantize: Round images to 256 levels first, as if they had been saved as 8-bit PNGs
            (what file-based FID tools, pytorch-fid included, measure).
        device: Where to run the network (images are moved there); None leaves them where they are.

    Example:
        >>> net = torch.nn.Sequential(torch.nn.Conv2d(3, 8, 3), torch.nn.AdaptiveAvgPool2d(1))
        >>> extractor = FeatureExtractor(net, name="random conv (test only)")
        >>> extractor(torch.rand(4, 3, 16, 16) * 2 - 1).shape
        torch.Size([4, 8])
    """

    def __init__(
        self,
        network: Callable[[torch.Tensor], torch.Tensor],
        *,
        name: str,
        standard: bool = False,
        quantize: bool = False,
        device: torch.device | str | None = None,
    ) -> None:
        if not callable(network):
            raise TypeError(f"network must be callable, got {type(network).__name__}")
        if not isinstance(name, str) or not name:
            raise ValueError("a feature extractor needs a non-empty name: it labels every FID computed with it")
        self.network = network
        self.name = name
        self.standard = standard
        self.quantize = quantize
        self.device = device
        if isinstance(network, torch.nn.Module):
            network.eval()
            if device is not None:
                network.to(device)

    def __repr__(self) -> str:
        return f"FeatureExtractor(name={self.name!r}, standard={self.standard}, quantize={self.quantize})"

    def __call__(self, images: torch.Tensor) -> torch.Tensor:
        """Features of a batch.

        Args:
            images: ``(B, 3, H, W)`` floats in [-1, 1].

        Returns:
            ``(B, D)`` float32 features on the CPU.

        Raises:
            ValueError: If the images are not ``(B, 3, H, W)`` floats in [-1, 1] or the network
                does not return ``(B, D)``.
        """
        images = _check_images(images)
        if self.device is not None:
            images = images.to(self.device)
        if self.quantize:
            images = (images + 1).mul(127.5).round().div(127.5).sub(1)  # 256 levels in [-1, 1]
        with torch.no_grad():
            features = self.network(images)
        if isinstance(features, torch.Tensor) and features.ndim == 4 and features.shape[2:] == (1, 1):
            features = features.flatten(1)  # (B, D)
        if not isinstance(features, torch.Tensor) or features.ndim != 2 or features.shape[0] != images.shape[0]:
            shape = tuple(features.shape) if isinstance(features, torch.Tensor) else type(features).__name__
            raise ValueError(f"feature extractor {self.name!r} must return ({images.shape[0]}, D), got {shape}")
        return features.detach().to("cpu", torch.float32)


def fid_inception_extractor(
    weights: str | os.PathLike | None = None, *, device: torch.device | str = "cpu", quantize: bool = True
) -> FeatureExtractor:
    """The standard FID feature extractor: pytorch-fid's InceptionV3, 2048-d pool3, 299x299 bilinear.

    Args:
        weights: Path to ``pt_inception-2015-12-05-6726825d.pth``; None reads ``$LABEL_MERGE_FID_WEIGHTS``.
        device: Where to run the network.
        quantize: Round to 8-bit levels first (default True, matching FIDs computed from PNG files).

    Returns:
        A :class:`FeatureExtractor` with ``standard=True``.

    Raises:
        FileNotFoundError: If the weights file is not given or missing (the message says which
            file is needed and where it is published).

    Example:
        >>> extractor = fid_inception_extractor("/path/to/pt_inception-2015-12-05-6726825d.pth")  # doctest: +SKIP
    """
    path = resolve_fid_weights(weights)
    network = load_fid_inception(path, device=device)
    name = f"pytorch-fid InceptionV3 pool3 (2048-d, 299x299 bilinear, {FID_WEIGHTS_FILENAME})"
    return FeatureExtractor(network, name=name, standard=True, quantize=quantize, device=device)


def compute_statistics(
    extractor: FeatureExtractor, image_batches: Iterable[torch.Tensor], *, keep_features: bool = False
) -> FeatureStatistics:
    """Stream image batches through ``extractor`` into :class:`FeatureStatistics`.

    Args:
        extractor: The feature extractor.
        image_batches: Iterable of ``(B, 3, H, W)`` images in [-1, 1].
        keep_features: Also keep the features (needed for KID).

    Returns:
        Statistics named after the extractor.

    Raises:
        ValueError: If no image was seen, or an image batch is invalid.

    Example:
        >>> net = torch.nn.Sequential(torch.nn.Conv2d(3, 8, 3), torch.nn.AdaptiveAvgPool2d(1))
        >>> extractor = FeatureExtractor(net, name="random conv (test only)")
        >>> stats = compute_statistics(extractor, [torch.rand(4, 3, 16, 16) * 2 - 1] * 3)
        >>> stats.count, stats.dim
        (12, 8)
    """
    stats: FeatureStatistics | None = None
    for images in image_batches:
        features = extractor(images)  # (B, D)
        if stats is None:
            stats = FeatureStatistics(features.shape[1], extractor=extractor.name, keep_features=keep_features)
        stats.update(features)
    if stats is None or stats.count == 0:
        raise ValueError("no images were given to compute feature statistics from")
    return stats


def _check_images(images: torch.Tensor) -> torch.Tensor:
    """Check ``(B, 3, H, W)`` floats in [-1, 1] (up to rounding) and clamp the rounding away."""
    if not isinstance(images, torch.Tensor):
        raise TypeError(f"images must be a torch.Tensor, got {type(images).__name__}")
    if images.ndim != 4 or images.shape[1] != 3:
        raise ValueError(f"images must have shape (B, 3, H, W), got {tuple(images.shape)}")
    if not images.dtype.is_floating_point:
        raise ValueError(f"images must be floats in [-1, 1], got dtype {images.dtype}")
    if images.numel() == 0:
        return images.float()
    low, high = float(images.min()), float(images.max())
    if not (low >= -1 - _RANGE_TOLERANCE and high <= 1 + _RANGE_TOLERANCE):
        raise ValueError(f"images must lie in [-1, 1], got values in [{low:.4g}, {high:.4g}]")
    return images.float().clamp(-1, 1)
