"""Region ids for region-wise label sparsity (paper Sec. 4: labels dropped per semantic region)."""

from __future__ import annotations

import numpy as np
from scipy import ndimage

__all__ = ["connected_regions"]


def connected_regions(label_map: np.ndarray) -> np.ndarray:
    """Split a label map into 4-connected regions of equal value.

    Every pixel gets a region (pixels with the ignore value form regions too; their labels are
    masked anyway). Ids are consecutive from 0 in raster order of each region's first pixel, so
    the result does not depend on the class ids' values.

    Args:
        label_map: ``(H, W)`` integer map.

    Returns:
        ``(H, W)`` int64 region ids ``0 .. R-1``.

    Raises:
        ValueError: ``label_map`` is not 2-D.

    Example:
        >>> connected_regions(np.array([[1, 0, 1], [1, 0, 2]])).tolist()
        [[0, 1, 2], [0, 1, 3]]
    """
    if label_map.ndim != 2:
        raise ValueError(f"connected_regions: expected an (H, W) map, got shape {label_map.shape}")
    regions = np.zeros(label_map.shape, dtype=np.int64)
    offset = 0
    for value in np.unique(label_map):
        components, count = ndimage.label(label_map == value)  # 4-connectivity by default
        inside = components > 0
        regions[inside] = components[inside] + offset  # ids 1.. for now, shifted per value
        offset += count
    # Renumber by first appearance in raster order (ids 0 .. R-1).
    _, first_index, inverse = np.unique(regions.ravel(), return_index=True, return_inverse=True)
    order = np.argsort(np.argsort(first_index))
    return order[inverse].reshape(label_map.shape).astype(np.int64)
