"""Edge maps: Canny on images (numpy/scipy only) and boundaries of label or instance maps."""

from __future__ import annotations

import numpy as np
from scipy import ndimage

__all__ = ["canny", "label_boundaries"]


def canny(
    gray: np.ndarray,
    *,
    sigma: float = 1.0,
    low_threshold: float = 0.03,
    high_threshold: float = 0.06,
) -> np.ndarray:
    """Binary Canny edges: Gaussian blur, Sobel gradient, non-maximum suppression, hysteresis.

    The gradient is the Sobel response divided by 8, i.e. an intensity change per pixel: a ramp
    rising by ``s`` per pixel has magnitude ``s``; a step of contrast ``c`` (intensities in [0, 1])
    peaks at ``0.5 c`` unblurred, ``0.32 c`` with ``sigma = 1`` and ``0.19 c`` with ``sigma = 2``.
    The defaults (``sigma = 1``, 0.03 / 0.06) make steps of contrast above about 0.2 strong and
    above 0.1 weak, the step contrasts that ``cv2.Canny(img, 100, 200)`` (the common choice for
    conditioning) separates on an unblurred 8-bit image. Pixels on the image border are never edges.

    Args:
        gray: ``(H, W)`` float image, intensities in [0, 1].
        sigma: Gaussian blur standard deviation in pixels (0 = no blur).
        low_threshold: Weak-edge threshold on the gradient magnitude; weak edges are kept only
            when 8-connected to a strong edge.
        high_threshold: Strong-edge threshold (>= ``low_threshold``).

    Returns:
        ``(H, W)`` bool edge map, one pixel wide along each edge.

    Raises:
        ValueError: Bad shape or thresholds.

    Example:
        >>> img = np.zeros((8, 8)); img[:, 4:] = 1.0
        >>> canny(img).any(axis=0).nonzero()[0].tolist()
        [3]
    """
    if gray.ndim != 2:
        raise ValueError(f"canny: expected an (H, W) gray image, got shape {gray.shape}")
    if not 0 <= low_threshold <= high_threshold:
        raise ValueError(f"canny: need 0 <= low_threshold <= high_threshold, got {low_threshold}, {high_threshold}")
    if sigma < 0:
        raise ValueError(f"canny: sigma must be >= 0, got {sigma}")
    img = gray.astype(np.float64)
    if sigma > 0:
        img = ndimage.gaussian_filter(img, sigma=sigma, mode="nearest")
    gx = ndimage.sobel(img, axis=1, mode="nearest") / 8.0  # d/du (columns)
    gy = ndimage.sobel(img, axis=0, mode="nearest") / 8.0  # d/dv (rows)
    mag = np.hypot(gx, gy)

    # Non-maximum suppression along the gradient direction, quantised to 0/45/90/135 degrees.
    # Keep a pixel that is > its neighbour behind and >= its neighbour ahead, so a two-pixel
    # plateau (a step between pixels) yields exactly one edge pixel.
    angle = np.rad2deg(np.arctan2(gy, gx)) % 180.0  # (H, W), in [0, 180)
    sector = (np.floor((angle + 22.5) / 45.0).astype(np.int64)) % 4  # 0: E-W, 1: 45 deg, 2: N-S, 3: 135 deg
    # (dv, du) of the neighbour ahead for each sector; rows grow downward.
    offsets = {0: (0, 1), 1: (1, 1), 2: (1, 0), 3: (1, -1)}
    padded = np.pad(mag, 1)
    H, W = mag.shape
    keep = np.zeros_like(mag, dtype=bool)
    for s, (dv, du) in offsets.items():
        ahead = padded[1 + dv : 1 + dv + H, 1 + du : 1 + du + W]
        behind = padded[1 - dv : 1 - dv + H, 1 - du : 1 - du + W]
        keep |= (sector == s) & (mag > behind) & (mag >= ahead)
    keep[0, :] = keep[-1, :] = keep[:, 0] = keep[:, -1] = False
    thin = np.where(keep, mag, 0.0)

    # Hysteresis: weak pixels survive when their 8-connected component contains a strong pixel.
    weak = thin >= low_threshold
    strong = thin >= high_threshold
    if not strong.any():
        return np.zeros_like(weak)
    components, count = ndimage.label(weak, structure=np.ones((3, 3), dtype=bool))
    has_strong = np.zeros(count + 1, dtype=bool)
    has_strong[components[strong]] = True
    has_strong[0] = False
    return has_strong[components]


def label_boundaries(*maps: np.ndarray) -> np.ndarray:
    """Pixels whose id differs from a 4-neighbour in any of the given maps.

    Both pixels on either side of a boundary are marked (as pix2pixHD/SPADE's instance edge map),
    so boundaries are two pixels wide and symmetric.

    Args:
        *maps: One or more ``(H, W)`` integer maps of the same shape (e.g. class labels and
            instance ids).

    Returns:
        ``(H, W)`` bool.

    Raises:
        ValueError: No maps, or maps of different shapes.

    Example:
        >>> label_boundaries(np.array([[0, 0, 1, 1]])).tolist()
        [[False, True, True, False]]
    """
    if not maps:
        raise ValueError("label_boundaries: give at least one map")
    shape = maps[0].shape
    edge = np.zeros(shape, dtype=bool)
    for m in maps:
        if m.shape != shape or m.ndim != 2:
            raise ValueError(f"label_boundaries: all maps must be (H, W) of one shape, got {m.shape} and {shape}")
        dh = m[:, 1:] != m[:, :-1]  # differs from the right neighbour
        dv = m[1:, :] != m[:-1, :]  # differs from the neighbour below
        edge[:, 1:] |= dh
        edge[:, :-1] |= dh
        edge[1:, :] |= dv
        edge[:-1, :] |= dv
    return edge
