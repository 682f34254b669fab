"""Datasets that yield samples in the label-merge sample format.

A sample is a dict: ``image`` float ``(3, H, W)`` in [-1, 1]; ``labels`` ``{name: tensor}``;
``masks`` ``{name: bool (H, W)}``; ``regions`` int ``(H, W)``; ``meta`` ``{...}``. Each dataset
class exposes ``label_specs`` (``{name: label_merge.LabelSpec}``).
"""
