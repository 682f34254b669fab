"""Argument and input checks shared by the example networks (clear errors, never bare asserts)."""

from __future__ import annotations

import torch


def positive_int(name: str, value) -> None:
    """Raise ValueError unless ``value`` is an int >= 1 (bools rejected)."""
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"{name} must be a positive int, got {value!r}")


def power_of_two(name: str, value) -> None:
    """Raise ValueError unless ``value`` is 1, 2, 4, 8, ..."""
    positive_int(name, value)
    if value & (value - 1):
        raise ValueError(f"{name} must be a power of two, got {value}")


def one_of(name: str, value, choices: tuple) -> None:
    """Raise ValueError unless ``value`` is in ``choices``."""
    if value not in choices:
        raise ValueError(f"{name} must be one of {choices}, got {value!r}")


def check_image_like(name: str, x, channels: int) -> tuple[int, int, int]:
    """Check a float ``(B, channels, H, W)`` tensor and return ``(B, H, W)``.

    Raises:
        TypeError: Not a floating-point tensor.
        ValueError: Wrong number of dimensions or channels, or an empty tensor.
    """
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(x).__name__}")
    if not x.is_floating_point():
        raise TypeError(f"{name} must be a floating-point tensor, got {x.dtype}")
    if x.dim() != 4:
        raise ValueError(f"{name} must have shape (B, {channels}, H, W), got {tuple(x.shape)}")
    if x.shape[1] != channels:
        raise ValueError(f"{name} must have {channels} channels, got {x.shape[1]} (shape {tuple(x.shape)})")
    if x.numel() == 0:
        raise ValueError(f"{name} is empty (shape {tuple(x.shape)})")
    return x.shape[0], x.shape[2], x.shape[3]
