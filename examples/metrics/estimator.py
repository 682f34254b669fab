"""Label estimators: networks (or plain functions) that read labels back from an image.

Controllability (:mod:`.controllability`) re-estimates each label from a generated image and
compares it with the label the image was generated from. Anything that follows the estimator
protocol can do the reading:

    estimator(images) -> {label name: prediction}

- ``images``: ``(B, 3, H, W)`` float in [-1, 1] (the generator's output range).
- ``semantic``: ``(B, K, H, W)`` class scores (logits or probabilities; the argmax is taken) or
  ``(B, H, W)`` integer class ids.
- ``depth``: ``(B, 1, H, W)`` positive depth, in metres or up to an unknown scale (each image is
  scale-aligned to its target); *not* disparity: invert a disparity network's output first.
- ``normal``: ``(B, 3, H, W)`` surface normals in the dataset's camera frame (normalised here).
- ``edge``: ``(B, 1, H, W)`` edge probability or a binary map in [0, 1].
- ``curvature``: ``(B, 2, H, W)`` principal curvatures ``(k1 >= k2)`` in 1/m.

An estimator returns the labels it can read; the others are not scored. Predictions at another
resolution than the labels are resized to the labels' size (bilinear; nearest for class ids).

This module holds :class:`LabelEstimator`, a small network trained on the synthetic scenes'
real images against their exact labels (see :mod:`.estimator_training`), its safetensors I/O,
:class:`CannyEdgeEstimator` (the Canny edges the real-dataset loaders compute, no network) and
:func:`combine_estimators` (one estimator per label, e.g. Canny edges plus a depth network).
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping
from typing import Protocol, runtime_checkable

import torch
import torch.nn.functional as F
from torch import nn

from .network_files import load_network, save_network
from .segmenter import SmallSegmenter

__all__ = [
    "LABEL_CHANNELS",
    "LabelEstimatorProtocol",
    "LabelEstimator",
    "CannyEdgeEstimator",
    "combine_estimators",
    "save_label_estimator",
    "load_label_estimator",
]

_FORMAT = "label_merge.examples.LabelEstimator"

LABEL_CHANNELS: dict[str, int | None] = {"semantic": None, "depth": 1, "normal": 3, "edge": 1, "curvature": 2}
"""The labels an estimator can read and their channels (``None``: the number of classes)."""


@runtime_checkable
class LabelEstimatorProtocol(Protocol):
    """What :func:`~examples.metrics.controllability.label_consistency` calls.

    A callable from ``(B, 3, H, W)`` images in [-1, 1] to ``{label: prediction}`` in the label's
    units (see the module docstring for each label's shape and units).
    """

    def __call__(self, images: torch.Tensor) -> Mapping[str, torch.Tensor]: ...


class LabelEstimator(nn.Module):
    """One shared encoder-decoder with a linear head per label: image to every label at once.

    The trunk is :class:`~examples.metrics.SmallSegmenter`'s (the same network class, so the
    project has one definition of it); its 1x1 output convolution has one group of channels per
    label, which is exactly one linear head per label on the shared full-resolution features.
    Each head's raw output is mapped to the label's units: class logits, ``depth = exp(raw)``
    (metres; positive), unit normals, ``edge = sigmoid(raw)`` (a probability) and curvature in
    1/m as is.

    Args:
        num_classes: Semantic classes ``K`` (ignored when ``semantic`` is not in ``labels``).
        labels: Labels to read, any subset of :data:`LABEL_CHANNELS`, in any order.
        width: Channels of the full-resolution stage.
        depth: Downsampling stages.

    Raises:
        ValueError: An unknown or duplicate label, no label, or a bad size.

    Example:
        >>> net = LabelEstimator(num_classes=5, width=4, depth=2)
        >>> {name: value.shape[1] for name, value in net(torch.zeros(2, 3, 16, 16)).items()}
        {'semantic': 5, 'depth': 1, 'normal': 3, 'edge': 1, 'curvature': 2}
    """

    def __init__(
        self,
        num_classes: int,
        *,
        labels: tuple[str, ...] = tuple(LABEL_CHANNELS),
        width: int = 16,
        depth: int = 3,
    ) -> None:
        super().__init__()
        labels = tuple(labels)
        unknown = [name for name in labels if name not in LABEL_CHANNELS]
        if unknown or not labels or len(set(labels)) != len(labels):
            raise ValueError(f"labels must be distinct names from {list(LABEL_CHANNELS)}, got {list(labels)}")
        if isinstance(num_classes, bool) or not isinstance(num_classes, int) or num_classes < 1:
            raise ValueError(f"num_classes must be a positive int, got {num_classes!r}")
        self.num_classes, self.labels = num_classes, labels
        self.channels = {name: LABEL_CHANNELS[name] or num_classes for name in labels}
        self.network = SmallSegmenter(sum(self.channels.values()), width=width, depth=depth)

    @property
    def width(self) -> int:
        return self.network.width

    @property
    def depth(self) -> int:
        return self.network.depth

    def raw_outputs(self, images: torch.Tensor) -> dict[str, torch.Tensor]:
        """Each head's output before the units are applied (what the training losses use).

        Returns:
            ``{label: (B, C_label, H, W)}``: class logits, log depth, unnormalised normals,
            edge logits, curvature.
        """
        out = self.network(images)  # (B, sum of C_label, H, W)
        return dict(zip(self.labels, out.split(list(self.channels.values()), dim=1), strict=True))

    def forward(self, images: torch.Tensor) -> dict[str, torch.Tensor]:
        """Every label read from ``images`` ``(B, 3, H, W)`` in [-1, 1], in the label's units."""
        raw = self.raw_outputs(images)
        return {name: _to_units(name, value) for name, value in raw.items()}


def _to_units(name: str, raw: torch.Tensor) -> torch.Tensor:
    if name == "depth":
        return raw.clamp(max=20.0).exp()  # log depth -> metres; the clamp keeps an untrained net finite
    if name == "normal":
        return F.normalize(raw, dim=1, eps=1e-6)
    if name == "edge":
        return torch.sigmoid(raw)
    return raw  # semantic logits, curvature in 1/m


class CannyEdgeEstimator:
    """Edges read from an image by Canny, exactly as the real-dataset loaders compute the edge label.

    The image goes back to [0, 255], to ITU-R 601 luma in [0, 1], and through
    :func:`examples.datasets.edges.canny` with the loaders' defaults, so a real image read by a
    loader reproduces that loader's edge label exactly. No network, no weights.

    Args:
        sigma: Gaussian blur in pixels.
        low_threshold: Weak-edge gradient threshold (intensity change per pixel).
        high_threshold: Strong-edge gradient threshold.

    Example:
        >>> image = -torch.ones(1, 3, 8, 8); image[..., 4:] = 1.0
        >>> CannyEdgeEstimator()(image)["edge"][0, 0, 4].tolist()
        [0.0, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0, 0.0]
    """

    def __init__(self, *, sigma: float = 1.0, low_threshold: float = 0.03, high_threshold: float = 0.06) -> None:
        self.sigma, self.low_threshold, self.high_threshold = sigma, low_threshold, high_threshold

    def __call__(self, images: torch.Tensor) -> dict[str, torch.Tensor]:
        from examples.datasets.edges import canny
        from examples.datasets.transforms import rgb_tensor_to_gray

        _check_images(images)
        rgb = (images.detach().to("cpu", torch.float64) + 1.0) * 127.5  # (B, 3, H, W) in [0, 255]
        edges = [
            torch.from_numpy(
                canny(
                    rgb_tensor_to_gray(image),
                    sigma=self.sigma,
                    low_threshold=self.low_threshold,
                    high_threshold=self.high_threshold,
                )
            )
            for image in rgb
        ]
        return {"edge": torch.stack(edges)[:, None].to(images.device, torch.float32)}  # (B, 1, H, W)

    def __repr__(self) -> str:
        return f"CannyEdgeEstimator(sigma={self.sigma}, low={self.low_threshold}, high={self.high_threshold})"


def combine_estimators(*estimators: Callable[[torch.Tensor], Mapping[str, torch.Tensor]]) -> Callable:
    """One estimator that runs several and merges their predictions (each label from one of them).

    Args:
        *estimators: Estimators following the protocol.

    Returns:
        A callable ``images -> {label: prediction}``.

    Raises:
        ValueError: No estimator, or (when called) two estimators that read the same label.

    Example:
        >>> both = combine_estimators(CannyEdgeEstimator(), lambda x: {"depth": x[:, :1].exp()})
        >>> sorted(both(torch.zeros(1, 3, 8, 8)))
        ['depth', 'edge']
    """
    if not estimators:
        raise ValueError("combine_estimators needs at least one estimator")

    def combined(images: torch.Tensor) -> dict[str, torch.Tensor]:
        merged: dict[str, torch.Tensor] = {}
        for estimator in estimators:
            for name, value in estimator(images).items():
                if name in merged:
                    raise ValueError(f"two estimators read the label {name!r}; give each label to one of them")
                merged[name] = value
        return merged

    return combined


def save_label_estimator(model: LabelEstimator, path: str | os.PathLike, *, metadata: Mapping | None = None) -> None:
    """Write a :class:`LabelEstimator`'s weights and architecture to a ``.safetensors`` file.

    Args:
        model: The network.
        path: Output file.
        metadata: Extra JSON-serialisable information (recipe, scenes, final losses, ...).

    Raises:
        TypeError: If ``model`` is not a :class:`LabelEstimator`.

    Example:
        >>> import tempfile, pathlib
        >>> path = pathlib.Path(tempfile.mkdtemp()) / "estimator.safetensors"
        >>> save_label_estimator(LabelEstimator(4, labels=("semantic", "depth"), width=4, depth=1), path)
        >>> load_label_estimator(path).labels
        ('semantic', 'depth')
    """
    if not isinstance(model, LabelEstimator):
        raise TypeError(f"model must be a LabelEstimator, got {type(model).__name__}")
    architecture = {
        "num_classes": model.num_classes,
        "labels": list(model.labels),
        "width": model.width,
        "depth": model.depth,
    }
    save_network(model, path, file_format=_FORMAT, architecture=architecture, metadata=metadata)


def load_label_estimator(path: str | os.PathLike, *, device: torch.device | str = "cpu") -> LabelEstimator:
    """Rebuild a :class:`LabelEstimator` from a file written by :func:`save_label_estimator`.

    Args:
        path: The ``.safetensors`` file.
        device: Where to put the network.

    Returns:
        The network in eval mode; ``model.metadata`` holds the saved extra information.

    Raises:
        FileNotFoundError: If the file does not exist.
        ValueError: If it was not written by :func:`save_label_estimator` or its tensors do not fit.
    """
    model = load_network(
        path,
        file_format=_FORMAT,
        kind_name="LabelEstimator",
        missing_name="label estimator",
        build=lambda arch: LabelEstimator(
            arch["num_classes"], labels=tuple(arch["labels"]), width=arch["width"], depth=arch["depth"]
        ),
    )
    return model.eval().to(device)


def _check_images(images: object) -> None:
    if not isinstance(images, torch.Tensor):
        raise TypeError(f"images must be a torch.Tensor, got {type(images).__name__}")
    if images.ndim != 4 or images.shape[1] != 3:
        raise ValueError(f"images must have shape (B, 3, H, W), got {tuple(images.shape)}")
