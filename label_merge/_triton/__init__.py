"""Fused Triton kernels for TLAM's concept-generation block (imported only when chosen).

This subpackage imports Triton; :mod:`label_merge` never imports it at import time, only
when the Triton backend is selected. Under ``TRITON_INTERPRET=1`` (set before this package is
first imported) the kernels run on CPU tensors in Triton's interpreter.
"""

from __future__ import annotations

import torch

from .autograd import encode_tokens, gpu_reasons, stack_reasons

__all__ = ["encode_tokens", "unsupported_reasons"]


def unsupported_reasons(dtype: torch.dtype, module=None, device: torch.device | str | None = None) -> list[str]:
    """Every reason the fused path cannot run tokens of ``dtype`` through ``module`` (empty if it can).

    Args:
        dtype: Dtype of the tokens.
        module: The :class:`label_merge.TLAM` (its blocks, heads, widths and label count are
            checked), or None to check the dtype only.
        device: Where the tokens are (default: where ``module``'s parameters are). On a GPU
            the vendor, the compute capability and the kernels' shared memory are checked too.

    Returns:
        Human-readable reasons, e.g. an unsupported dtype, more than 32 labels, a head dim
        or MLP width the kernels do not tile, a GPU that is too old or not NVIDIA, or tiles
        that need more shared memory than the GPU has.

    Example:
        >>> import torch
        >>> from label_merge._triton import unsupported_reasons
        >>> unsupported_reasons(torch.float64)
        ['dtype torch.float64 is not supported (float32, float16 or bfloat16)']
    """
    if device is None:
        param = next(iter(module.parameters()), None) if module is not None else None
        device = param.device if param is not None else torch.device("cpu")
    device = torch.device(device)
    if module is None:
        return stack_reasons(dtype, [], None) + gpu_reasons(dtype, [], None, device)
    blocks = getattr(module, "blocks", None)
    if blocks is None:
        return [f"{type(module).__name__} has no transformer blocks to fuse"]
    specs = getattr(module, "specs", None)
    num_tokens = len(specs) if specs is not None else None
    return stack_reasons(dtype, blocks, num_tokens, device.type) + gpu_reasons(dtype, blocks, num_tokens, device)
