"""The fused concept-generation block as a ``torch.autograd.Function``.

Forward runs one kernel per transformer block and keeps only each block's input for backward
(``depth`` activations of ``(P, N, d)``); backward runs two kernels per block (the MLP half,
then the attention half), last block first, each recomputing what it needs from the saved
input. The mean over tokens runs in
PyTorch (:func:`label_merge.reference.pool_tokens`), so ``null_concept`` gets its gradient
from autograd.

The kernels' backward is not itself differentiable. When a second derivative is asked for
(``torch.autograd.grad(..., create_graph=True)``, ``backward(create_graph=True)``), backward
recomputes the blocks with the PyTorch reference instead and differentiates that, so every
order of derivative is exact (and as costly as the reference).
"""

from __future__ import annotations

import warnings

import torch
from triton.runtime.errors import OutOfResources

from .. import reference
from . import launch
from .device import device_reasons
from .launch import INTERPRETED, BlockWeights, block_backward, block_forward
from .layout import GRAD_NAMES, SUPPORTED_DTYPES, StackShape, shape_reasons

__all__ = ["compute_dtype", "stack_reasons", "gpu_reasons", "FusedBlocks", "encode_tokens"]

DROP_MODES = ("zero", "exclude")


def compute_dtype(token_dtype: torch.dtype, device_type: str) -> torch.dtype:
    """The ``tl.dot`` operand dtype: the autocast dtype when autocast is on, else the token dtype."""
    if torch.is_autocast_enabled(device_type):
        return torch.get_autocast_dtype(device_type)
    return token_dtype


def stack_reasons(token_dtype: torch.dtype, blocks, num_tokens: int | None, device_type: str = "cuda") -> list[str]:
    """Every reason the fused kernels cannot run these blocks on tokens of this dtype."""
    reasons = []
    if token_dtype not in SUPPORTED_DTYPES:
        reasons.append(f"dtype {token_dtype} is not supported (float32, float16 or bfloat16)")
    blocks = list(blocks)
    if not blocks:
        return reasons
    first = blocks[0]
    try:
        dim, heads, hidden = first.norm1.normalized_shape[0], first.attn.heads, first.mlp.fc1.out_features
    except AttributeError as err:
        return reasons + [f"blocks must be label_merge TransformerBlocks ({err})"]
    reasons += shape_reasons(dim=dim, heads=heads, hidden=hidden, num_tokens=num_tokens)
    param_dtypes = set()
    for index, block in enumerate(blocks):
        if (block.norm1.normalized_shape[0], block.attn.heads, block.mlp.fc1.out_features) != (dim, heads, hidden):
            reasons.append(f"block {index} has a different shape from block 0")
        for name in GRAD_NAMES:
            try:
                param = block.get_parameter(name)
            except AttributeError:
                reasons.append(
                    f"block {index} has no parameter {name!r} (LayerNorm without affine or Linear without bias)"
                )
                continue
            param_dtypes.add(param.dtype)
    unsupported = sorted(str(d) for d in param_dtypes if d not in SUPPORTED_DTYPES)
    if unsupported:
        reasons.append(f"parameter dtype(s) {', '.join(unsupported)} not supported")
    if not torch.is_autocast_enabled(device_type):
        others = sorted(str(d) for d in param_dtypes if d != token_dtype)
        if others and token_dtype in SUPPORTED_DTYPES:
            reasons.append(f"parameters are {', '.join(others)} but tokens are {token_dtype} (and autocast is off)")
    return reasons


def gpu_reasons(token_dtype: torch.dtype, blocks, num_tokens: int | None, device: torch.device) -> list[str]:
    """Every reason the GPU ``device`` cannot run these blocks (empty on CPU and in the interpreter).

    Vendor, compute capability for the ``tl.dot`` dtype, and the shared memory the kernels
    need at the current launch configurations (``launch.FORWARD_CONFIG``/``BACKWARD_CONFIG``).
    """
    if device.type != "cuda" or INTERPRETED:
        return []
    dot_dtype = compute_dtype(token_dtype, device.type)
    shape = None
    blocks = list(blocks)
    if blocks and num_tokens is not None and not stack_reasons(token_dtype, blocks, num_tokens, device.type):
        first = blocks[0]
        shape = StackShape(num_tokens, first.norm1.normalized_shape[0], first.attn.heads, first.mlp.fc1.out_features)
    configs = (
        ("forward", launch.FORWARD_CONFIG),
        ("mlp_backward", launch.BACKWARD_CONFIG),
        ("attention_backward", launch.BACKWARD_CONFIG),
    )
    return device_reasons(device, dot_dtype, shape, configs)


class FusedBlocks(torch.autograd.Function):
    """``depth`` transformer blocks on ``(P, N, d)`` tokens, differentiable in ``z`` and every parameter.

    ``apply(z, key_mask, blocks, shape, dot_dtype, eps, *params)``: ``key_mask`` is ``(P, N)``
    uint8 or None, ``blocks`` the modules (used only for a differentiable backward, see the
    module docstring), ``dot_dtype`` the ``tl.dot`` operand dtype, ``eps`` the ``(eps1, eps2)``
    LayerNorm epsilons per block, ``params`` the blocks' parameters in ``GRAD_NAMES`` order,
    block after block.
    """

    @staticmethod
    def forward(ctx, z, key_mask, blocks, shape: StackShape, dot_dtype: torch.dtype, eps: tuple, *params):
        weights = _weights(params, eps, dot_dtype)
        keep = any(ctx.needs_input_grad)
        inputs = []
        x = z
        for block in weights:
            if keep:
                inputs.append(x)
            x = block_forward(x, key_mask, block, shape)
        if keep:
            ctx.save_for_backward(key_mask, *inputs, *params)
            ctx.depth = len(weights)
            ctx.blocks, ctx.shape, ctx.dot_dtype, ctx.eps = blocks, shape, dot_dtype, eps
        return x

    @staticmethod
    def backward(ctx, dy):
        key_mask, *rest = ctx.saved_tensors
        inputs, params = rest[: ctx.depth], rest[ctx.depth :]
        if torch.is_grad_enabled():  # create_graph: the gradient must itself be differentiable
            grads = _reference_backward(ctx, inputs[0], key_mask, params, dy, create_graph=True)
        else:
            try:
                grads = _fused_backward(ctx, inputs, key_mask, params, dy)
            except OutOfResources as err:  # the shared-memory estimate was too optimistic for this GPU
                _warn_fallback(err)
                grads = _reference_backward(ctx, inputs[0], key_mask, params, dy, create_graph=False)
        return (grads[0], None, None, None, None, None, *grads[1:])


_NUM_NON_PARAMS = 6  # z, key_mask, blocks, shape, dot_dtype, eps: the arguments before the parameters


def _fused_backward(ctx, inputs, key_mask, params, dy) -> list[torch.Tensor | None]:
    """``[dz, *parameter grads]`` from the kernels (None where no gradient is needed)."""
    weights = _weights(params, ctx.eps, ctx.dot_dtype)
    dy = dy.contiguous()
    grads = [None] * len(params)
    per_block = len(GRAD_NAMES)
    for index in reversed(range(ctx.depth)):
        dy, block_grads = block_backward(inputs[index], dy, key_mask, weights[index], ctx.shape)
        for j, g in enumerate(block_grads):
            k = index * per_block + j
            if ctx.needs_input_grad[_NUM_NON_PARAMS + k]:
                grads[k] = g.to(params[k].dtype)
    return [dy if ctx.needs_input_grad[0] else None, *grads]


def _warn_fallback(err: Exception) -> None:
    warnings.warn(
        f"the fused Triton kernels do not fit this GPU ({err}); running the PyTorch reference instead",
        RuntimeWarning,
        stacklevel=3,
    )


def _reference_backward(ctx, z, key_mask, params, dy, *, create_graph: bool) -> list[torch.Tensor | None]:
    """``[dz, *parameter grads]`` through the PyTorch reference.

    The blocks are recomputed from the saved input ``z``; ``params`` are the blocks' own
    parameters (saved in forward). With ``create_graph`` the returned gradients are connected
    to them and to ``z``'s history, so a further ``grad`` is exact.
    """
    wanted = [i for i, needed in enumerate(ctx.needs_input_grad) if needed and i not in range(1, _NUM_NON_PARAMS)]
    sources = [z if i == 0 else params[i - _NUM_NON_PARAMS] for i in wanted]
    keys = None if key_mask is None else key_mask.bool()
    autocast = torch.autocast(z.device.type, dtype=ctx.dot_dtype, enabled=ctx.dot_dtype != z.dtype)
    with torch.enable_grad(), autocast:
        x = z if create_graph else z.detach().requires_grad_(0 in wanted)
        if not create_graph:
            sources = [x if i == 0 else source for i, source in zip(wanted, sources, strict=True)]
        for block in ctx.blocks:
            x = reference.transformer_block(x, keys, block)
    found = torch.autograd.grad(x, sources, dy, create_graph=create_graph, allow_unused=True)
    grads = [None] * (1 + len(params))
    for i, source, g in zip(wanted, sources, found, strict=True):
        grads[0 if i == 0 else 1 + i - _NUM_NON_PARAMS] = g if g is not None else torch.zeros_like(source)
    return grads


def _weights(params, eps, dot_dtype) -> list[BlockWeights]:
    """Group the flat parameter list into per-block :class:`BlockWeights`."""
    per_block = len(GRAD_NAMES)
    out = []
    for index in range(len(params) // per_block):
        chunk = params[index * per_block : (index + 1) * per_block]
        tensors = tuple(t.detach().to(dot_dtype if t.dim() == 2 else torch.float32).contiguous() for t in chunk)
        out.append(BlockWeights(tensors, *eps[index]))
    return out


def encode_tokens(
    z: torch.Tensor,
    present: torch.Tensor,
    blocks,
    *,
    drop: str,
    null_concept: torch.Tensor | None = None,
) -> torch.Tensor:
    """Fused :func:`label_merge.reference.encode_tokens`: ``depth`` blocks, then the mean over tokens.

    Args:
        z: ``(P, N, d)`` tokens, float32, float16 or bfloat16 (CUDA, or CPU under
            ``TRITON_INTERPRET=1``).
        present: ``(P, N)`` bool presence of each token.
        blocks: Sequence of :class:`label_merge.transformer.TransformerBlock`.
        drop: ``"zero"`` or ``"exclude"`` (see :func:`label_merge.reference.encode_tokens`).
        null_concept: ``(d,)``, the concept of a pixel with nothing present (exclude mode).

    Returns:
        ``(P, d)`` concept vectors in ``z``'s dtype, differentiable w.r.t. ``z``, every block
        parameter and ``null_concept``.

    Raises:
        ValueError: Bad shapes or drop mode, or a configuration the kernels do not support
            (the message lists every reason).

    Example:
        >>> import torch
        >>> from label_merge.transformer import TransformerBlock
        >>> from label_merge._triton import encode_tokens
        >>> blocks = torch.nn.ModuleList([TransformerBlock(32, 2, 2.0)])
        >>> z, present = torch.randn(7, 3, 32), torch.ones(7, 3, dtype=torch.bool)
        >>> encode_tokens(z, present, blocks, drop="zero").shape  # doctest: +SKIP
        torch.Size([7, 32])
    """
    if drop not in DROP_MODES:
        raise ValueError(f"drop must be one of {DROP_MODES}, got {drop!r}")
    if z.dim() != 3:
        raise ValueError(f"z must be (P, N, d), got shape {tuple(z.shape)}")
    if present.shape != z.shape[:2] or present.dtype != torch.bool:
        raise ValueError(
            f"present must be bool of shape {tuple(z.shape[:2])}, got {present.dtype} {tuple(present.shape)}"
        )
    if drop == "exclude" and null_concept is None:
        raise ValueError("drop='exclude' needs a null_concept")
    reasons = stack_reasons(z.dtype, blocks, z.shape[1], z.device.type)
    reasons += gpu_reasons(z.dtype, blocks, z.shape[1], z.device)
    if z.device.type == "cpu" and not INTERPRETED:
        reasons.append(
            "the tokens are on the CPU but the kernels were compiled for the GPU "
            "(set TRITON_INTERPRET=1 before label_merge._triton is first imported)"
        )
    if reasons:
        raise ValueError("the fused Triton path cannot run: " + "; ".join(reasons))
    if z.shape[1] and z.shape[2] != blocks[0].norm1.normalized_shape[0]:
        raise ValueError(f"tokens have width {z.shape[2]}, the blocks expect {blocks[0].norm1.normalized_shape[0]}")
    mask_for_pool = present if drop == "exclude" else None
    if z.shape[0] == 0 or len(blocks) == 0:
        return reference.encode_tokens(z, present, blocks, drop=drop, null_concept=null_concept)
    first = blocks[0]
    shape = StackShape(z.shape[1], first.norm1.normalized_shape[0], first.attn.heads, first.mlp.fc1.out_features)
    key_mask = reference.attention_keys(present).to(torch.uint8).contiguous() if drop == "exclude" else None  # (P, N)
    params = [block.get_parameter(name) for block in blocks for name in GRAD_NAMES]
    eps = tuple((float(b.norm1.eps), float(b.norm2.eps)) for b in blocks)
    dot_dtype = compute_dtype(z.dtype, z.device.type)
    try:
        out = FusedBlocks.apply(z.contiguous(), key_mask, blocks, shape, dot_dtype, eps, *params)  # (P, N, d)
    except OutOfResources as err:  # the shared-memory estimate was too optimistic for this GPU
        _warn_fallback(err)
        return reference.encode_tokens(z, present, blocks, drop=drop, null_concept=null_concept)
    return reference.pool_tokens(out, mask_for_pool, null_concept)
