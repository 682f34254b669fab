"""Session-wide test setup."""

import os

import torch

# Without a GPU the fused Triton kernels run on CPU tensors in Triton's interpreter. Triton reads
# TRITON_INTERPRET when the kernels are decorated, so it must be set before label_merge._triton is
# first imported; on a CUDA machine it stays unset and the same tests exercise compiled kernels.
if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")
