"""Small builders shared by the tests."""

from __future__ import annotations

import torch

from label_merge import LabelSpec

SPECS = {
    "semantic": LabelSpec.categorical(5, ignore_index=0),
    "depth": LabelSpec.continuous(1),
    "normal": LabelSpec.continuous(3),
    "curvature": LabelSpec.continuous(2),
}


def make_labels(B=2, H=5, W=7, *, specs=SPECS, seed=0, dtype=torch.float32):
    """Random labels for ``specs``: class ids in [0, classes), continuous N(0, 1)."""
    g = torch.Generator().manual_seed(seed)
    labels = {}
    for name, spec in specs.items():
        if spec.is_categorical:
            labels[name] = torch.randint(0, spec.num_classes, (B, H, W), generator=g)
        else:
            labels[name] = torch.randn(B, spec.channels, H, W, generator=g).to(dtype)
    return labels


def make_masks(B=2, H=5, W=7, *, specs=SPECS, seed=1, p=0.3, all_missing_pixel=True):
    """Random masks (True = present) with probability ``1 - p``; optionally pixel (0, 0, 0)
    has no label at all."""
    g = torch.Generator().manual_seed(seed)
    masks = {name: torch.rand(B, H, W, generator=g) >= p for name in specs}
    if all_missing_pixel:
        for m in masks.values():
            m[0, 0, 0] = False
    return masks
