"""label-merge: fuse heterogeneous, sparse per-pixel labels into one concept tensor.

Implements "Spatially Multi-conditional Image Generation" (Chakraborty, Popovic et al.):
:class:`TLAM`, the pixel-wise transformer label merger, and the paper's baselines
:class:`CLAM` and :class:`NaiveConcat`.
"""

from .blocks import CLAM, TLAM, NaiveConcat
from .label_dicts import pack_labels, resize_labels, unpack_labels
from .labels import LabelSpec

__version__ = "0.2.0"

__all__ = [
    "TLAM",
    "CLAM",
    "NaiveConcat",
    "LabelSpec",
    "pack_labels",
    "unpack_labels",
    "resize_labels",
    "__version__",
]
