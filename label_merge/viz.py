"""Pictures of what a merger computes: the concept tensor as RGB (paper Fig. 7).

Per-label contribution maps come from :meth:`label_merge.TLAM.contributions`; they are already
images (one channel per label, in [0, 1]).
"""

from __future__ import annotations

import torch
from einops import rearrange

__all__ = ["concept_to_rgb"]


def _principal_axes(x: torch.Tensor, k: int) -> torch.Tensor:
    """The top ``k`` principal directions ``(d, k)`` of rows ``x`` ``(M, d)``, with fixed signs."""
    centred = x - x.mean(dim=0)
    cov = centred.T @ centred / max(x.shape[0] - 1, 1)  # (d, d)
    _, vectors = torch.linalg.eigh(cov)  # ascending eigenvalues
    axes = vectors.flip(-1)[:, :k]  # (d, k), largest variance first
    # An eigenvector's sign is arbitrary: make each one's largest loading positive so that
    # colours do not flip between runs or images.
    largest = axes.abs().argmax(dim=0)
    signs = torch.sign(axes[largest, torch.arange(axes.shape[1])])
    return axes * torch.where(signs == 0, torch.ones_like(signs), signs)


def _robust_unit_range(x: torch.Tensor, quantile: float) -> torch.Tensor:
    """Scale each column of ``x`` ``(M, k)`` so its [q, 1-q] quantiles map to [0, 1], clipped."""
    lo = torch.quantile(x, quantile, dim=0)
    hi = torch.quantile(x, 1.0 - quantile, dim=0)
    return ((x - lo) / (hi - lo).clamp_min(1e-12)).clamp(0.0, 1.0)


@torch.no_grad()
def concept_to_rgb(concept: torch.Tensor, *, joint: bool = True, quantile: float = 0.01) -> torch.Tensor:
    """Project a concept tensor onto its first three principal components, as RGB in [0, 1].

    Args:
        concept: ``(B, d, H, W)`` or ``(d, H, W)``.
        joint: Fit one PCA over the whole batch (colours comparable across images) rather than
            one per image.
        quantile: Fraction clipped at each end of every component before scaling to [0, 1].

    Returns:
        ``(B, 3, H, W)`` (or ``(3, H, W)``) float32 in [0, 1]. With ``d < 3`` the missing
        channels are 0.

    Raises:
        ValueError: A tensor that is not 3-D or 4-D, or ``quantile`` outside [0, 0.5).

    Examples:
        >>> import torch
        >>> concept_to_rgb(torch.randn(2, 96, 8, 8)).shape
        torch.Size([2, 3, 8, 8])
    """
    if concept.dim() not in (3, 4):
        raise ValueError(f"concept must be (B, d, H, W) or (d, H, W), got shape {tuple(concept.shape)}")
    if not 0.0 <= quantile < 0.5:
        raise ValueError(f"quantile must be in [0, 0.5), got {quantile}")
    single = concept.dim() == 3
    x = concept.unsqueeze(0) if single else concept
    B, d, H, W = x.shape
    k = min(3, d)
    pixels = rearrange(x.detach().float(), "b d h w -> b (h w) d")
    groups = [rearrange(pixels, "b m d -> (b m) d")] if joint else list(pixels)
    coloured = []
    for rows in groups:  # (M, d)
        projected = (rows - rows.mean(dim=0)) @ _principal_axes(rows, k)  # (M, k)
        coloured.append(_robust_unit_range(projected, quantile))
    rgb = torch.cat(coloured) if joint else torch.stack(coloured).flatten(0, 1)  # (B*H*W, k)
    rgb = torch.cat([rgb, rgb.new_zeros(rgb.shape[0], 3 - k)], dim=1)  # (B*H*W, 3)
    out = rearrange(rgb, "(b h w) c -> b c h w", b=B, h=H, w=W).contiguous()
    return out[0] if single else out
