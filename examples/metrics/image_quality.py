"""Paired image-quality metrics: PSNR and SSIM between generated and ground-truth images.

Both take images ``(B, C, H, W)`` and a ``data_range`` (the width of the value range: ``2.0`` for
images in [-1, 1], ``1.0`` for [0, 1], ``255.0`` for 8-bit values) and return one value per image.
Like skimage and torchmetrics, the images are used as given: PSNR does not depend on an offset,
but SSIM's luminance term does, so SSIM of images in [-1, 1] with ``data_range=2`` differs
slightly from SSIM of the same images mapped to [0, 1]. The evaluator maps images to [0, 1]
first, which gives the value of the same images stored as 8-bit files.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

__all__ = ["psnr", "ssim", "gaussian_window"]


def psnr(prediction: torch.Tensor, target: torch.Tensor, *, data_range: float = 2.0) -> torch.Tensor:
    """Peak signal-to-noise ratio per image: ``10 log10(data_range^2 / MSE)``.

    Args:
        prediction: ``(B, C, H, W)`` images.
        target: ``(B, C, H, W)`` reference images of the same shape.
        data_range: Width of the value range (``2.0`` for [-1, 1]).

    Returns:
        ``(B,)`` float64 PSNR in dB; ``inf`` where an image equals its target.

    Raises:
        ValueError: On shape mismatch, a non-4D input or a non-positive ``data_range``.

    Example:
        >>> x = torch.zeros(1, 3, 8, 8)
        >>> psnr(x + 0.1, x, data_range=1.0)  # MSE 0.01 -> 20 dB
        tensor([20.0000], dtype=torch.float64)
    """
    prediction, target = _check_pair(prediction, target, data_range)
    mse = (prediction - target).pow(2).flatten(1).mean(dim=1)  # (B,)
    return 10.0 * torch.log10(data_range**2 / mse)


def gaussian_window(size: int = 11, sigma: float = 1.5, *, dtype: torch.dtype = torch.float64) -> torch.Tensor:
    """Normalised 1-D Gaussian window ``(size,)``, centred, summing to 1.

    Example:
        >>> float(gaussian_window(11, 1.5).sum())
        1.0
    """
    if size < 1 or size % 2 == 0:
        raise ValueError(f"window size must be a positive odd int, got {size}")
    if sigma <= 0:
        raise ValueError(f"sigma must be positive, got {sigma}")
    offsets = torch.arange(size, dtype=dtype) - (size - 1) / 2
    window = torch.exp(-(offsets**2) / (2 * sigma**2))
    return window / window.sum()


def ssim(
    prediction: torch.Tensor,
    target: torch.Tensor,
    *,
    data_range: float = 2.0,
    window_size: int = 11,
    sigma: float = 1.5,
    k1: float = 0.01,
    k2: float = 0.03,
) -> torch.Tensor:
    """Structural similarity (Wang et al., 2004) per image, averaged over channels and positions.

    Local statistics use a separable Gaussian window (11 taps, sigma 1.5) over every position
    where the window fits entirely ("valid", as the original MATLAB code), per channel, with
    ``C1 = (k1 L)^2`` and ``C2 = (k2 L)^2`` for ``L = data_range``. Computed in float64.

    Args:
        prediction: ``(B, C, H, W)`` images, ``H, W >= window_size``.
        target: ``(B, C, H, W)`` reference images.
        data_range: Width of the value range ``L``.
        window_size: Gaussian window size (odd).
        sigma: Gaussian window standard deviation.
        k1: Luminance constant.
        k2: Contrast constant.

    Returns:
        ``(B,)`` float64 SSIM, 1 for identical images.

    Raises:
        ValueError: On shape mismatch, images smaller than the window, or a bad ``data_range``.

    Example:
        >>> x = torch.rand(2, 3, 16, 16)
        >>> ssim(x, x, data_range=1.0)
        tensor([1., 1.], dtype=torch.float64)
    """
    prediction, target = _check_pair(prediction, target, data_range)
    height, width = prediction.shape[-2:]
    if height < window_size or width < window_size:
        raise ValueError(f"images of {height}x{width} are smaller than the SSIM window ({window_size})")
    window = gaussian_window(window_size, sigma)

    def local_mean(images: torch.Tensor) -> torch.Tensor:
        return _separable_filter(images, window)  # (B, C, H - w + 1, W - w + 1)

    mu_x, mu_y = local_mean(prediction), local_mean(target)
    var_x = local_mean(prediction * prediction) - mu_x * mu_x
    var_y = local_mean(target * target) - mu_y * mu_y
    cov_xy = local_mean(prediction * target) - mu_x * mu_y
    c1, c2 = (k1 * data_range) ** 2, (k2 * data_range) ** 2
    ssim_map = ((2 * mu_x * mu_y + c1) * (2 * cov_xy + c2)) / ((mu_x**2 + mu_y**2 + c1) * (var_x + var_y + c2))
    return ssim_map.flatten(1).mean(dim=1)  # (B,)


def _separable_filter(images: torch.Tensor, window: torch.Tensor) -> torch.Tensor:
    """Depthwise 'valid' convolution of ``(B, C, H, W)`` with ``outer(window, window)``."""
    channels = images.shape[1]
    size = window.shape[0]
    vertical = window.view(1, 1, size, 1).expand(channels, 1, size, 1)  # (C, 1, w, 1)
    horizontal = window.view(1, 1, 1, size).expand(channels, 1, 1, size)  # (C, 1, 1, w)
    filtered = F.conv2d(images, vertical, groups=channels)
    return F.conv2d(filtered, horizontal, groups=channels)


def _check_pair(prediction: torch.Tensor, target: torch.Tensor, data_range: float) -> tuple[torch.Tensor, torch.Tensor]:
    for name, value in (("prediction", prediction), ("target", target)):
        if not isinstance(value, torch.Tensor):
            raise TypeError(f"{name} must be a torch.Tensor, got {type(value).__name__}")
        if value.ndim != 4:
            raise ValueError(f"{name} must have shape (B, C, H, W), got {tuple(value.shape)}")
    if prediction.shape != target.shape:
        raise ValueError(f"prediction {tuple(prediction.shape)} and target {tuple(target.shape)} differ in shape")
    if not (isinstance(data_range, int | float) and math.isfinite(data_range) and data_range > 0):
        raise ValueError(f"data_range must be a positive number, got {data_range!r}")
    return prediction.detach().to(torch.float64), target.detach().to(device=prediction.device, dtype=torch.float64)
