"""Cityscapes label table (``cityscapesscripts/helpers/labels.py``): ids, train ids, names.

``labelIds`` PNGs hold ids 0..33 (``license plate``, id -1, is never drawn: the car beneath it
stays). The 19 training classes have train ids 0..18; every other id maps to 255 (ignore).
"""

from __future__ import annotations

import numpy as np

__all__ = ["LABEL_NAMES", "LABEL_TO_TRAIN_ID", "TRAIN_NAMES", "NUM_LABEL_IDS", "IGNORE_TRAIN_ID", "train_id_lut"]

# The 35 label entries: ids 0..33 in order, then license plate (id -1). SPADE uses label_nc = 35.
NUM_LABEL_IDS = 35
IGNORE_TRAIN_ID = 255

# fmt: off
LABEL_NAMES: tuple[str, ...] = (
    "unlabeled", "ego vehicle", "rectification border", "out of roi", "static", "dynamic", "ground", "road",
    "sidewalk", "parking", "rail track", "building", "wall", "fence", "guard rail", "bridge", "tunnel", "pole",
    "polegroup", "traffic light", "traffic sign", "vegetation", "terrain", "sky", "person", "rider", "car",
    "truck", "bus", "caravan", "trailer", "train", "motorcycle", "bicycle", "license plate",
)
# fmt: on

# labelId -> trainId for ids 0..33.
# fmt: off
LABEL_TO_TRAIN_ID: tuple[int, ...] = (
    255, 255, 255, 255, 255, 255, 255, 0, 1, 255, 255, 2, 3, 4, 255, 255, 255, 5, 255, 6, 7, 8, 9, 10, 11, 12,
    13, 14, 15, 255, 255, 16, 17, 18,
)
# fmt: on

TRAIN_NAMES: tuple[str, ...] = tuple(
    LABEL_NAMES[i] for i in sorted(range(34), key=lambda i: LABEL_TO_TRAIN_ID[i]) if LABEL_TO_TRAIN_ID[i] != 255
)

# Label ids whose pixels are not scene: the car's own bonnet and the rectification border.
NON_SCENE_IDS: tuple[int, ...] = (1, 2)


def train_id_lut() -> np.ndarray:
    """``(256,)`` uint8 lookup table labelId -> trainId (255 for ignored and unknown ids).

    Example:
        >>> train_id_lut()[[7, 26, 0]].tolist()
        [0, 13, 255]
    """
    lut = np.full(256, IGNORE_TRAIN_ID, dtype=np.uint8)
    lut[: len(LABEL_TO_TRAIN_ID)] = LABEL_TO_TRAIN_ID
    return lut
