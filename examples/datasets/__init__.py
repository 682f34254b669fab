"""Datasets that yield samples in the label-merge sample format.

A sample is a dict: ``image`` float ``(3, H, W)`` in [-1, 1]; ``labels`` ``{name: tensor}``;
``masks`` ``{name: bool (H, W)}``; ``regions`` int ``(H, W)``; ``meta`` ``{...}``. Each dataset
class exposes ``label_specs`` (``{name: label_merge.LabelSpec}``).

:class:`SyntheticDataset` renders procedural scenes with exact labels; it is the default dataset
of every example and benchmark because it needs no download.
"""

from .cityscapes import CityscapesDataset
from .nyu import NYUDepthV2Dataset
from .synthetic import LABEL_NAMES, SyntheticDataset
from .taskonomy import TaskonomyDataset
from .transforms import RandomHorizontalFlip, hflip_sample

__all__ = [
    "SyntheticDataset",
    "LABEL_NAMES",
    "TaskonomyDataset",
    "CityscapesDataset",
    "NYUDepthV2Dataset",
    "RandomHorizontalFlip",
    "hflip_sample",
]
