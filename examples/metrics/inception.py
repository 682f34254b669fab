"""The InceptionV3 network of the standard FID (TensorFlow's 2015-12-05 graph, as ported by pytorch-fid).

The architecture is InceptionV3 (Szegedy et al., 2016) with the three quirks of the TensorFlow
graph that FID was defined on: average pools in the A, C and first E blocks leave the zero padding
out of the mean (``count_include_pad=False``), the last E block pools with a max instead of an
average, and the classifier has 1008 outputs. Module and parameter names are those of the
pytorch-fid weights file ``pt_inception-2015-12-05-6726825d.pth`` (``Conv2d_1a_3x3.conv.weight``,
``Mixed_5b.branch_pool.bn.running_var``, ..., ``fc.bias``), so that file loads as is.

No weights are shipped or downloaded: :func:`load_fid_inception` reads the file from a path given
by argument or by the ``LABEL_MERGE_FID_WEIGHTS`` environment variable.
"""

from __future__ import annotations

import os
from typing import Literal

import torch
import torch.nn.functional as F
from torch import nn

__all__ = [
    "FIDInceptionV3",
    "load_fid_inception",
    "resolve_fid_weights",
    "FID_WEIGHTS_FILENAME",
    "FID_WEIGHTS_URL",
    "FID_WEIGHTS_ENV",
]

FID_WEIGHTS_FILENAME = "pt_inception-2015-12-05-6726825d.pth"
FID_WEIGHTS_URL = f"https://github.com/mseitzer/pytorch-fid/releases/download/fid_weights/{FID_WEIGHTS_FILENAME}"
FID_WEIGHTS_ENV = "LABEL_MERGE_FID_WEIGHTS"
FID_INPUT_SIZE = (299, 299)


class BasicConv2d(nn.Module):
    """Convolution without bias, BatchNorm (eps 1e-3, TensorFlow's), ReLU."""

    def __init__(self, in_channels: int, out_channels: int, **conv_kwargs) -> None:
        super().__init__()
        self.conv = nn.Conv2d(in_channels, out_channels, bias=False, **conv_kwargs)
        self.bn = nn.BatchNorm2d(out_channels, eps=0.001)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.relu(self.bn(self.conv(x)))


def _tf_avg_pool(x: torch.Tensor) -> torch.Tensor:
    """3x3 stride-1 average pool that, like TensorFlow's, leaves the zero padding out of the mean."""
    return F.avg_pool2d(x, kernel_size=3, stride=1, padding=1, count_include_pad=False)


class InceptionA(nn.Module):
    """35x35 block: 1x1, 5x5, double 3x3 and pooled branches (64 + 64 + 96 + pool_features channels)."""

    def __init__(self, in_channels: int, pool_features: int) -> None:
        super().__init__()
        self.branch1x1 = BasicConv2d(in_channels, 64, kernel_size=1)
        self.branch5x5_1 = BasicConv2d(in_channels, 48, kernel_size=1)
        self.branch5x5_2 = BasicConv2d(48, 64, kernel_size=5, padding=2)
        self.branch3x3dbl_1 = BasicConv2d(in_channels, 64, kernel_size=1)
        self.branch3x3dbl_2 = BasicConv2d(64, 96, kernel_size=3, padding=1)
        self.branch3x3dbl_3 = BasicConv2d(96, 96, kernel_size=3, padding=1)
        self.branch_pool = BasicConv2d(in_channels, pool_features, kernel_size=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        branch5x5 = self.branch5x5_2(self.branch5x5_1(x))
        branch3x3dbl = self.branch3x3dbl_3(self.branch3x3dbl_2(self.branch3x3dbl_1(x)))
        branch_pool = self.branch_pool(_tf_avg_pool(x))
        return torch.cat([self.branch1x1(x), branch5x5, branch3x3dbl, branch_pool], dim=1)


class InceptionB(nn.Module):
    """Grid reduction 35 -> 17: strided 3x3, strided double 3x3 and max-pool branches."""

    def __init__(self, in_channels: int) -> None:
        super().__init__()
        self.branch3x3 = BasicConv2d(in_channels, 384, kernel_size=3, stride=2)
        self.branch3x3dbl_1 = BasicConv2d(in_channels, 64, kernel_size=1)
        self.branch3x3dbl_2 = BasicConv2d(64, 96, kernel_size=3, padding=1)
        self.branch3x3dbl_3 = BasicConv2d(96, 96, kernel_size=3, stride=2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        branch3x3dbl = self.branch3x3dbl_3(self.branch3x3dbl_2(self.branch3x3dbl_1(x)))
        branch_pool = F.max_pool2d(x, kernel_size=3, stride=2)
        return torch.cat([self.branch3x3(x), branch3x3dbl, branch_pool], dim=1)


class InceptionC(nn.Module):
    """17x17 block with factorised 7x7 convolutions (4 x 192 channels)."""

    def __init__(self, in_channels: int, channels_7x7: int) -> None:
        super().__init__()
        c7 = channels_7x7
        self.branch1x1 = BasicConv2d(in_channels, 192, kernel_size=1)
        self.branch7x7_1 = BasicConv2d(in_channels, c7, kernel_size=1)
        self.branch7x7_2 = BasicConv2d(c7, c7, kernel_size=(1, 7), padding=(0, 3))
        self.branch7x7_3 = BasicConv2d(c7, 192, kernel_size=(7, 1), padding=(3, 0))
        self.branch7x7dbl_1 = BasicConv2d(in_channels, c7, kernel_size=1)
        self.branch7x7dbl_2 = BasicConv2d(c7, c7, kernel_size=(7, 1), padding=(3, 0))
        self.branch7x7dbl_3 = BasicConv2d(c7, c7, kernel_size=(1, 7), padding=(0, 3))
        self.branch7x7dbl_4 = BasicConv2d(c7, c7, kernel_size=(7, 1), padding=(3, 0))
        self.branch7x7dbl_5 = BasicConv2d(c7, 192, kernel_size=(1, 7), padding=(0, 3))
        self.branch_pool = BasicConv2d(in_channels, 192, kernel_size=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        branch7x7 = self.branch7x7_3(self.branch7x7_2(self.branch7x7_1(x)))
        branch7x7dbl = x
        for layer in (self.branch7x7dbl_1, self.branch7x7dbl_2, self.branch7x7dbl_3, self.branch7x7dbl_4):
            branch7x7dbl = layer(branch7x7dbl)
        branch7x7dbl = self.branch7x7dbl_5(branch7x7dbl)
        branch_pool = self.branch_pool(_tf_avg_pool(x))
        return torch.cat([self.branch1x1(x), branch7x7, branch7x7dbl, branch_pool], dim=1)


class InceptionD(nn.Module):
    """Grid reduction 17 -> 8: strided 3x3, strided 7x7x3 and max-pool branches."""

    def __init__(self, in_channels: int) -> None:
        super().__init__()
        self.branch3x3_1 = BasicConv2d(in_channels, 192, kernel_size=1)
        self.branch3x3_2 = BasicConv2d(192, 320, kernel_size=3, stride=2)
        self.branch7x7x3_1 = BasicConv2d(in_channels, 192, kernel_size=1)
        self.branch7x7x3_2 = BasicConv2d(192, 192, kernel_size=(1, 7), padding=(0, 3))
        self.branch7x7x3_3 = BasicConv2d(192, 192, kernel_size=(7, 1), padding=(3, 0))
        self.branch7x7x3_4 = BasicConv2d(192, 192, kernel_size=3, stride=2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        branch3x3 = self.branch3x3_2(self.branch3x3_1(x))
        branch7x7x3 = x
        for layer in (self.branch7x7x3_1, self.branch7x7x3_2, self.branch7x7x3_3, self.branch7x7x3_4):
            branch7x7x3 = layer(branch7x7x3)
        branch_pool = F.max_pool2d(x, kernel_size=3, stride=2)
        return torch.cat([branch3x3, branch7x7x3, branch_pool], dim=1)


class InceptionE(nn.Module):
    """8x8 block with split 1x3/3x1 branches (320 + 768 + 768 + 192 = 2048 channels).

    Args:
        in_channels: Input channels.
        pool: ``"avg"`` (TensorFlow-style average, ``Mixed_7b``) or ``"max"`` (``Mixed_7c`` of the
            FID graph, which pools with a max here).
    """

    def __init__(self, in_channels: int, *, pool: Literal["avg", "max"]) -> None:
        super().__init__()
        if pool not in ("avg", "max"):
            raise ValueError(f"pool must be 'avg' or 'max', got {pool!r}")
        self.pool = pool
        self.branch1x1 = BasicConv2d(in_channels, 320, kernel_size=1)
        self.branch3x3_1 = BasicConv2d(in_channels, 384, kernel_size=1)
        self.branch3x3_2a = BasicConv2d(384, 384, kernel_size=(1, 3), padding=(0, 1))
        self.branch3x3_2b = BasicConv2d(384, 384, kernel_size=(3, 1), padding=(1, 0))
        self.branch3x3dbl_1 = BasicConv2d(in_channels, 448, kernel_size=1)
        self.branch3x3dbl_2 = BasicConv2d(448, 384, kernel_size=3, padding=1)
        self.branch3x3dbl_3a = BasicConv2d(384, 384, kernel_size=(1, 3), padding=(0, 1))
        self.branch3x3dbl_3b = BasicConv2d(384, 384, kernel_size=(3, 1), padding=(1, 0))
        self.branch_pool = BasicConv2d(in_channels, 192, kernel_size=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        branch3x3 = self.branch3x3_1(x)
        branch3x3 = torch.cat([self.branch3x3_2a(branch3x3), self.branch3x3_2b(branch3x3)], dim=1)
        branch3x3dbl = self.branch3x3dbl_2(self.branch3x3dbl_1(x))
        branch3x3dbl = torch.cat([self.branch3x3dbl_3a(branch3x3dbl), self.branch3x3dbl_3b(branch3x3dbl)], dim=1)
        if self.pool == "avg":
            pooled = _tf_avg_pool(x)
        else:
            pooled = F.max_pool2d(x, kernel_size=3, stride=1, padding=1)
        return torch.cat([self.branch1x1(x), branch3x3, branch3x3dbl, self.branch_pool(pooled)], dim=1)


class FIDInceptionV3(nn.Module):
    """InceptionV3 as in the FID reference graph; ``forward`` returns the 2048-d pool3 features.

    Args:
        resize_input: Resize inputs bilinearly (``align_corners=False``) to 299x299 first, as
            pytorch-fid does. Without it the input must be at least 75x75.

    Example:
        >>> net = FIDInceptionV3().eval()  # random weights; see load_fid_inception for the real ones
        >>> net(torch.zeros(1, 3, 75, 75)).shape
        torch.Size([1, 2048])
    """

    feature_dim = 2048

    def __init__(self, *, resize_input: bool = True) -> None:
        super().__init__()
        self.resize_input = resize_input
        self.Conv2d_1a_3x3 = BasicConv2d(3, 32, kernel_size=3, stride=2)
        self.Conv2d_2a_3x3 = BasicConv2d(32, 32, kernel_size=3)
        self.Conv2d_2b_3x3 = BasicConv2d(32, 64, kernel_size=3, padding=1)
        self.Conv2d_3b_1x1 = BasicConv2d(64, 80, kernel_size=1)
        self.Conv2d_4a_3x3 = BasicConv2d(80, 192, kernel_size=3)
        self.Mixed_5b = InceptionA(192, pool_features=32)
        self.Mixed_5c = InceptionA(256, pool_features=64)
        self.Mixed_5d = InceptionA(288, pool_features=64)
        self.Mixed_6a = InceptionB(288)
        self.Mixed_6b = InceptionC(768, channels_7x7=128)
        self.Mixed_6c = InceptionC(768, channels_7x7=160)
        self.Mixed_6d = InceptionC(768, channels_7x7=160)
        self.Mixed_6e = InceptionC(768, channels_7x7=192)
        self.Mixed_7a = InceptionD(768)
        self.Mixed_7b = InceptionE(1280, pool="avg")
        self.Mixed_7c = InceptionE(2048, pool="max")
        # The classifier is not used for features; it is here so the weights file loads strictly.
        self.fc = nn.Linear(2048, 1008)
        # He initialisation keeps activations O(1) through the ~50 layers, so that a randomly
        # initialised network (tests, smoke runs) gives informative rather than vanishing features.
        for module in self.modules():
            if isinstance(module, nn.Conv2d):
                nn.init.kaiming_normal_(module.weight, mode="fan_in", nonlinearity="relu")

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """Pool3 features.

        Args:
            images: ``(B, 3, H, W)`` in [-1, 1] (the range the TensorFlow graph was trained on).

        Returns:
            ``(B, 2048)`` features (after the global average pool, before the classifier).

        Raises:
            ValueError: If the input is not ``(B, 3, H, W)``.
        """
        if images.ndim != 4 or images.shape[1] != 3:
            raise ValueError(f"images must have shape (B, 3, H, W), got {tuple(images.shape)}")
        x = images
        if self.resize_input:
            x = F.interpolate(x, size=FID_INPUT_SIZE, mode="bilinear", align_corners=False)  # (B, 3, 299, 299)
        x = self.Conv2d_2b_3x3(self.Conv2d_2a_3x3(self.Conv2d_1a_3x3(x)))  # (B, 64, 147, 147)
        x = F.max_pool2d(x, kernel_size=3, stride=2)  # (B, 64, 73, 73)
        x = self.Conv2d_4a_3x3(self.Conv2d_3b_1x1(x))  # (B, 192, 71, 71)
        x = F.max_pool2d(x, kernel_size=3, stride=2)  # (B, 192, 35, 35)
        for block in (self.Mixed_5b, self.Mixed_5c, self.Mixed_5d, self.Mixed_6a):
            x = block(x)  # ends (B, 768, 17, 17)
        for block in (self.Mixed_6b, self.Mixed_6c, self.Mixed_6d, self.Mixed_6e, self.Mixed_7a):
            x = block(x)  # ends (B, 1280, 8, 8)
        x = self.Mixed_7c(self.Mixed_7b(x))  # (B, 2048, 8, 8)
        return x.mean(dim=(2, 3))  # (B, 2048), global average pool


def resolve_fid_weights(weights: str | os.PathLike | None = None) -> str:
    """Path of the FID Inception weights: the argument, else ``$LABEL_MERGE_FID_WEIGHTS``.

    Args:
        weights: Path to ``pt_inception-2015-12-05-6726825d.pth`` (or a ``.safetensors`` export of
            it), or None to use the environment variable.

    Returns:
        The path, checked to be an existing file.

    Raises:
        FileNotFoundError: If no path is given or the file does not exist; the message names the
            file and where it is published.
    """
    source = "argument" if weights is not None else f"${FID_WEIGHTS_ENV}"
    path = os.fspath(weights) if weights is not None else os.environ.get(FID_WEIGHTS_ENV)
    how_to = (
        f"FID needs the Inception weights file {FID_WEIGHTS_FILENAME} (the TensorFlow FID graph "
        f"ported by pytorch-fid, published at {FID_WEIGHTS_URL}). Nothing is downloaded: fetch it "
        f"yourself and pass its path (weights=...) or set {FID_WEIGHTS_ENV}=/path/to/{FID_WEIGHTS_FILENAME}."
    )
    if not path:
        raise FileNotFoundError(f"no FID Inception weights given. {how_to}")
    if not os.path.isfile(path):
        raise FileNotFoundError(f"FID Inception weights not found at {path!r} (from the {source}). {how_to}")
    return path


def load_fid_inception(
    weights: str | os.PathLike | None = None, *, device: torch.device | str = "cpu"
) -> FIDInceptionV3:
    """Build :class:`FIDInceptionV3` and load the standard FID weights from a local file.

    Args:
        weights: Path to ``pt_inception-2015-12-05-6726825d.pth`` (a ``torch.save``d state dict)
            or a ``.safetensors`` file with the same keys; None reads ``$LABEL_MERGE_FID_WEIGHTS``.
        device: Where to put the network.

    Returns:
        The network in eval mode with gradients disabled.

    Raises:
        FileNotFoundError: If the file is not given or does not exist (see :func:`resolve_fid_weights`).
        ValueError: If the file's keys or shapes do not match the FID Inception architecture.

    Example:
        >>> import os
        >>> path = os.environ.get("LABEL_MERGE_FID_WEIGHTS")
        >>> net = load_fid_inception(path) if path else None  # doctest: +SKIP
    """
    path = resolve_fid_weights(weights)
    if path.endswith(".safetensors"):
        from safetensors.torch import load_file

        state_dict = load_file(path, device="cpu")
    else:
        state_dict = torch.load(path, map_location="cpu", weights_only=True)
    if not isinstance(state_dict, dict):
        raise ValueError(f"{path!r} does not hold a state dict (got {type(state_dict).__name__})")
    network = FIDInceptionV3()
    expected = network.state_dict()
    # BatchNorm's num_batches_tracked counter only matters in training; old files may lack it.
    missing = [key for key in expected if key not in state_dict and not key.endswith("num_batches_tracked")]
    unexpected = [key for key in state_dict if key not in expected]
    wrong_shape = [
        f"{key}: file {tuple(state_dict[key].shape)} vs expected {tuple(expected[key].shape)}"
        for key in expected
        if key in state_dict and state_dict[key].shape != expected[key].shape
    ]
    if missing or unexpected or wrong_shape:
        raise ValueError(
            f"{path!r} does not match the FID Inception architecture: missing keys {missing[:5]} "
            f"({len(missing)} in all), unexpected keys {unexpected[:5]} ({len(unexpected)} in all), "
            f"wrong shapes {wrong_shape[:5]}"
        )
    network.load_state_dict(state_dict, strict=False)
    network.requires_grad_(False)
    return network.eval().to(device)
