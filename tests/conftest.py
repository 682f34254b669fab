import os
import sys

import pytest
import torch

# Tests import their helpers as a module from this folder.
sys.path.insert(0, os.path.dirname(__file__))

# Without a GPU, Triton kernels run in Triton's interpreter on CPU tensors. The variable is read
# when kernels are defined, so it must be set before label_merge._triton is first imported.
if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)
