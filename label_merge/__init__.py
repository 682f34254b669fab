"""label-merge: fuse heterogeneous, sparse per-pixel labels into one concept tensor.

Implements "Spatially Multi-conditional Image Generation" (Chakraborty, Popovic et al.):
:class:`TLAM`, the pixel-wise transformer label merger, and the paper's baselines
:class:`CLAM` and :class:`NaiveConcat`.
"""

from .blocks import CLAM, TLAM, NaiveConcat
from .labels import LabelSpec

__version__ = "0.1.0"

__all__ = ["TLAM", "CLAM", "NaiveConcat", "LabelSpec", "__version__"]
