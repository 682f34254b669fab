"""Datasets that yield samples in the label-merge sample format.

A sample is a dict: ``image`` float ``(3, H, W)`` in [-1, 1]; ``labels`` ``{name: tensor}``;
``masks`` ``{name: bool (H, W)}``; ``regions`` int ``(H, W)``; ``meta`` ``{...}``. Each dataset
class exposes ``label_specs`` (``{name: label_merge.LabelSpec}``).
"""

from .cityscapes import CityscapesDataset
from .nyu import NYUDepthV2Dataset
from .taskonomy import TaskonomyDataset
from .transforms import RandomHorizontalFlip, hflip_sample

__all__ = ["TaskonomyDataset", "CityscapesDataset", "NYUDepthV2Dataset", "RandomHorizontalFlip", "hflip_sample"]
