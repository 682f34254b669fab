"""Triton kernels for one pre-LN transformer block: a forward kernel and two backward kernels.

``block_forward_kernel`` runs the whole block for a tile of token rows.
``mlp_backward_kernel`` recomputes the attention half and runs the backward of the MLP half
(``dy -> dx1``); ``attention_backward_kernel`` runs the backward of the attention half
(``dx1 -> dx``), recomputing q, k, v and the probabilities head by head. See docs/kernels.md.

Layout (see :mod:`label_merge._triton.layout`): a program owns ``BLOCK_M`` token rows made of
``BLOCK_M // G`` groups of ``G`` rows; a group holds ``PG = G // N`` whole pixels. Columns are
tuples of power-of-two chunks: ``NC`` chunks of ``E`` (= the heads) for the model width and
``NF`` chunks of ``FC`` for the MLP width. Every linear is a sum of ``tl.dot`` over
``(BLOCK_M, chunk) x (chunk, chunk)`` tiles with fp32 accumulation; LayerNorm, softmax and GELU
run in fp32 registers. Attention is a batched ``(BLOCK_M // G, G, G)`` ``tl.dot`` per head with
a block-diagonal "same pixel" mask.

The forward keeps the residual stream of a tile in fp32 registers for the whole block and
writes only the block output. Weight gradients are per-tile fp32 partial sums (a ``tl.dot``
over the tile's rows) added with relaxed atomics into one of ``num_slots`` copies of the
gradient, which the host sums afterwards: by default slot = program id modulo ``num_slots``
(one program per tile; the order of the additions varies from run to run), or, with the
``OWN_SLOT`` variant, one slot per program and a fixed sequence of tiles per program
(deterministic).

Weight and bias tiles are read without masks: the host checks that every width is an exact
multiple of its chunk. Token rows are always masked; padding rows and rows past ``P`` load
zeros, so their gradients are zero.
"""

from __future__ import annotations

import triton
import triton.language as tl

LOG2E = 1.4426950408889634
# Whether the kernels below are being decorated for Triton's interpreter (TRITON_INTERPRET=1, read
# at decoration time, i.e. now): selects the interpreter workarounds in _dot and _cast.
_INTERPRET = tl.constexpr(bool(triton.knobs.runtime.interpret))


def _device_function(fn):
    """``triton.jit`` for a helper called from the kernels.

    Under the interpreter a helper stays a plain Python function: the kernel launch has already
    patched ``triton.language``, and re-patching it on every helper call (what an interpreted
    ``@triton.jit`` helper does) would dominate the interpreter's run time.
    """
    return fn if _INTERPRET else triton.jit(fn)


# Globals read inside kernels must be tl.constexpr.
_INV_SQRT2 = tl.constexpr(0.7071067811865476)
_INV_SQRT_2PI = tl.constexpr(0.3989422804014327)
_NEG_BIG = tl.constexpr(-1.0e30)  # finite "minus infinity": a row with no allowed key never produces inf - inf


# ----------------------------------------------------------------------------- small helpers


@_device_function
def _dot(a, b, PREC: tl.constexpr, acc=None):
    """``acc + a @ b`` (2-D or batched 3-D) in fp32; ``a``, ``b`` are in the compute dtype."""
    if _INTERPRET:
        # Triton's interpreter multiplies bfloat16 operands as their raw uint16 bit patterns.
        # Products of bf16/fp16 values are exact in fp32, so upcasting gives the same result.
        return tl.dot(a.to(tl.float32), b.to(tl.float32), acc, input_precision="ieee")
    else:
        return tl.dot(a, b, acc, input_precision=PREC)


@_device_function
def _cast(x, dtype: tl.constexpr):
    """``x.to(dtype)``, rounding to nearest even.

    The compiled cast already rounds to nearest even; Triton's interpreter truncates
    float32 -> bfloat16, so there the rounding is done on the bits first.
    """
    if _INTERPRET:
        if x.dtype == tl.float32 and dtype == tl.bfloat16:
            bits = x.to(tl.uint32, bitcast=True)
            bits = (bits + (0x7FFF + ((bits >> 16) & 1))) & 0xFFFF0000
            x = bits.to(tl.float32, bitcast=True)
    return x.to(dtype)


@_device_function
def _tile_rows(pid, P, N: tl.constexpr, G: tl.constexpr, PG: tl.constexpr, BLOCK_M: tl.constexpr):
    """Global token row (int64) and validity of each of this program's ``BLOCK_M`` rows."""
    r = tl.arange(0, BLOCK_M)
    j = r % G  # row inside its group
    pix = tl.cast(pid, tl.int64) * ((BLOCK_M // G) * PG) + (r // G) * PG + j // N
    valid = (j < PG * N) & (pix < P)
    return pix * N + j % N, valid


@_device_function
def _allowed_keys(
    key_mask_ptr,
    row,
    valid,
    N: tl.constexpr,
    G: tl.constexpr,
    PG: tl.constexpr,
    BLOCK_M: tl.constexpr,
    HAS_KEY_MASK: tl.constexpr,
):
    """``(BLOCK_M // G, G, G)``-broadcastable bool: may query row attend to key row."""
    j = tl.arange(0, G)
    same_pixel = (j[:, None] // N) == (j[None, :] // N)
    allowed = (same_pixel & (j[None, :] < PG * N))[None, :, :]  # (1, G, G)
    if HAS_KEY_MASK:
        keys = tl.load(key_mask_ptr + row, mask=valid, other=0) != 0  # (BLOCK_M,)
        allowed = allowed & tl.reshape(keys, (BLOCK_M // G, G))[:, None, :]  # (BLOCK_M // G, G, G)
    return allowed


@_device_function
def _load_chunks(ptr, row, valid, E: tl.constexpr, NC: tl.constexpr):
    """Rows of a ``(rows, NC * E)`` tensor as a tuple of ``NC`` fp32 ``(BLOCK_M, E)`` chunks."""
    cols = tl.arange(0, E)
    out = ()
    for c in tl.static_range(NC):
        x = tl.load(ptr + row[:, None] * (NC * E) + (c * E + cols)[None, :], mask=valid[:, None], other=0.0)
        out = out + (x.to(tl.float32),)
    return out


@_device_function
def _store_chunks(ptr, xs, row, valid, E: tl.constexpr, NC: tl.constexpr):
    cols = tl.arange(0, E)
    for c in tl.static_range(NC):
        tl.store(
            ptr + row[:, None] * (NC * E) + (c * E + cols)[None, :],
            _cast(xs[c], ptr.dtype.element_ty),
            mask=valid[:, None],
        )


@_device_function
def _cast_chunks(xs, dtype: tl.constexpr, NC: tl.constexpr):
    out = ()
    for c in tl.static_range(NC):
        out = out + (_cast(xs[c], dtype),)
    return out


@_device_function
def _add_chunks(xs, ys, NC: tl.constexpr):
    out = ()
    for c in tl.static_range(NC):
        out = out + (xs[c] + ys[c],)
    return out


@_device_function
def _w_tile(w_ptr, ld: tl.constexpr, row0: tl.constexpr, col0: tl.constexpr, R: tl.constexpr, C: tl.constexpr):
    """``W[row0 : row0 + R, col0 : col0 + C]`` of a row-major weight with ``ld`` columns."""
    return tl.load(w_ptr + (row0 + tl.arange(0, R))[:, None] * ld + (col0 + tl.arange(0, C))[None, :])


@_device_function
def _wt_tile(w_ptr, ld: tl.constexpr, row0: tl.constexpr, col0: tl.constexpr, K: tl.constexpr, C: tl.constexpr):
    """``W[row0 : row0 + C, col0 : col0 + K].T`` as a ``(K, C)`` tile: the right operand of ``x @ W.T``."""
    return tl.load(w_ptr + (row0 + tl.arange(0, C))[None, :] * ld + (col0 + tl.arange(0, K))[:, None])


@_device_function
def _vec(ptr, off: tl.constexpr, C: tl.constexpr):
    return tl.load(ptr + off + tl.arange(0, C))


@_device_function
def _linear(
    ins,
    w_ptr,
    b_ptr,
    ld: tl.constexpr,
    row0: tl.constexpr,
    K: tl.constexpr,
    C: tl.constexpr,
    NK: tl.constexpr,
    PREC: tl.constexpr,
):
    """Output columns ``row0 : row0 + C`` of ``x @ W.T + b``; ``x`` is ``NK`` chunks of width ``K``."""
    acc = _dot(ins[0], _wt_tile(w_ptr, ld, row0, 0, K, C), PREC)
    for c in tl.static_range(1, NK):
        acc = _dot(ins[c], _wt_tile(w_ptr, ld, row0, c * K, K, C), PREC, acc)
    return acc + _vec(b_ptr, row0, C)[None, :]


@_device_function
def _accumulate(ptr, off: tl.constexpr, value, C: tl.constexpr):
    """Add a length-``C`` partial gradient into ``ptr[off : off + C]``."""
    tl.atomic_add(ptr + off + tl.arange(0, C), value, sem="relaxed")


@_device_function
def _accumulate_tile(
    ptr, ld: tl.constexpr, row0: tl.constexpr, col0: tl.constexpr, value, R: tl.constexpr, C: tl.constexpr
):
    """Add an ``(R, C)`` partial weight gradient into ``ptr[row0:, col0:]`` (row-major, ``ld``)."""
    offs = (row0 + tl.arange(0, R))[:, None] * ld + (col0 + tl.arange(0, C))[None, :]
    tl.atomic_add(ptr + offs, value, sem="relaxed")


@_device_function
def _accumulate_tile_t(
    ptr, ld: tl.constexpr, row0: tl.constexpr, col0: tl.constexpr, value, R: tl.constexpr, C: tl.constexpr
):
    """Add the transpose of a ``(C, R)`` partial weight gradient into ``ptr[row0:, col0:]``."""
    offs = (row0 + tl.arange(0, R))[None, :] * ld + (col0 + tl.arange(0, C))[:, None]
    tl.atomic_add(ptr + offs, value, sem="relaxed")


# ----------------------------------------------------------------------------- LayerNorm, GELU


@_device_function
def _ln_stats(xs, eps, NC: tl.constexpr, E: tl.constexpr):
    """Mean and 1/std over the ``NC * E`` columns, each ``(BLOCK_M,)`` fp32 (biased variance)."""
    total = tl.sum(xs[0], axis=1)
    for c in tl.static_range(1, NC):
        total += tl.sum(xs[c], axis=1)
    mean = total / (NC * E)
    d0 = xs[0] - mean[:, None]
    sq = tl.sum(d0 * d0, axis=1)
    for c in tl.static_range(1, NC):
        dc = xs[c] - mean[:, None]
        sq += tl.sum(dc * dc, axis=1)
    return mean, 1.0 / tl.sqrt(sq / (NC * E) + eps)


@_device_function
def _normalize(xs, mean, rstd, NC: tl.constexpr):
    out = ()
    for c in tl.static_range(NC):
        out = out + ((xs[c] - mean[:, None]) * rstd[:, None],)
    return out


@_device_function
def _affine(xhs, w_ptr, b_ptr, dtype: tl.constexpr, NC: tl.constexpr, E: tl.constexpr):
    """LayerNorm's ``xhat * w + b`` per chunk, cast to the compute dtype (a ``tl.dot`` operand)."""
    out = ()
    for c in tl.static_range(NC):
        h = xhs[c] * _vec(w_ptr, c * E, E)[None, :] + _vec(b_ptr, c * E, E)[None, :]
        out = out + (_cast(h, dtype),)
    return out


@_device_function
def _ln_backward(dhs, xhs, rstd, w_ptr, gw_ptr, gb_ptr, NC: tl.constexpr, E: tl.constexpr):
    """Input gradient of ``xhat * w + b`` from output gradient ``dhs``; adds into dw, db."""
    dxhs = ()
    for c in tl.static_range(NC):
        _accumulate(gw_ptr, c * E, tl.sum(dhs[c] * xhs[c], axis=0), E)
        _accumulate(gb_ptr, c * E, tl.sum(dhs[c], axis=0), E)
        dxhs = dxhs + (dhs[c] * _vec(w_ptr, c * E, E)[None, :],)
    s1 = tl.sum(dxhs[0], axis=1)
    s2 = tl.sum(dxhs[0] * xhs[0], axis=1)
    for c in tl.static_range(1, NC):
        s1 += tl.sum(dxhs[c], axis=1)
        s2 += tl.sum(dxhs[c] * xhs[c], axis=1)
    s1 = s1 / (NC * E)
    s2 = s2 / (NC * E)
    out = ()
    for c in tl.static_range(NC):
        out = out + (rstd[:, None] * (dxhs[c] - s1[:, None] - xhs[c] * s2[:, None]),)
    return out


@_device_function
def _gelu(a):
    """Exact (erf) GELU in fp32."""
    return 0.5 * a * (1.0 + tl.math.erf(a * _INV_SQRT2))


@_device_function
def _gelu_and_grad(a):
    cdf = 0.5 * (1.0 + tl.math.erf(a * _INV_SQRT2))
    return a * cdf, cdf + a * tl.exp(-0.5 * a * a) * _INV_SQRT_2PI


# ----------------------------------------------------------------------------- attention


@_device_function
def _qkv_head(
    hs,
    qkv_w,
    qkv_b,
    i: tl.constexpr,
    NC: tl.constexpr,
    E: tl.constexpr,
    PREC: tl.constexpr,
):
    """q, k, v of head ``i``, each ``(BLOCK_M, E)`` fp32 (bias included)."""
    q = _linear(hs, qkv_w, qkv_b, NC * E, i * E, E, E, NC, PREC)
    k = _linear(hs, qkv_w, qkv_b, NC * E, NC * E + i * E, E, E, NC, PREC)
    v = _linear(hs, qkv_w, qkv_b, NC * E, 2 * NC * E + i * E, E, E, NC, PREC)
    return q, k, v


@_device_function
def _attention_probs(q3, k3, allowed, qk_scale, PREC: tl.constexpr):
    """Softmax over allowed keys, fp32 ``(NG, G, G)``; rows with no allowed key are all zero.

    ``q3``, ``k3`` are ``(NG, G, E)`` in the compute dtype; ``qk_scale`` is
    ``log2(e) / sqrt(E)`` so that ``exp2`` gives the natural-base softmax.
    """
    s = _dot(q3, tl.permute(k3, (0, 2, 1)), PREC) * qk_scale  # (NG, G, G)
    s = tl.where(allowed, s, _NEG_BIG)
    m = tl.max(s, axis=2)
    e = tl.where(allowed, tl.exp2(s - m[:, :, None]), 0.0)
    total = tl.sum(e, axis=2)
    total = tl.where(total > 0.0, total, 1.0)
    return e / total[:, :, None]


# ----------------------------------------------------------------------------- block halves


@_device_function
def _attention_half(
    xs,
    allowed,
    ln1_w,
    ln1_b,
    qkv_w,
    qkv_b,
    proj_w,
    proj_b,
    eps1,
    qk_scale,
    G: tl.constexpr,
    E: tl.constexpr,
    NC: tl.constexpr,
    BLOCK_M: tl.constexpr,
    PREC: tl.constexpr,
):
    """``x1 = x + proj(MSA(LN1(x)))`` for a tile, as ``NC`` fp32 chunks."""
    NG: tl.constexpr = BLOCK_M // G
    dt = qkv_w.dtype.element_ty
    mean1, rstd1 = _ln_stats(xs, eps1, NC, E)
    hs = _affine(_normalize(xs, mean1, rstd1, NC), ln1_w, ln1_b, dt, NC, E)
    heads = ()
    for i in tl.static_range(NC):
        q, k, v = _qkv_head(hs, qkv_w, qkv_b, i, NC, E, PREC)
        q3 = tl.reshape(_cast(q, dt), (NG, G, E))
        k3 = tl.reshape(_cast(k, dt), (NG, G, E))
        v3 = tl.reshape(_cast(v, dt), (NG, G, E))
        p = _attention_probs(q3, k3, allowed, qk_scale, PREC)
        o = _dot(_cast(p, dt), v3, PREC)  # (NG, G, E)
        heads = heads + (_cast(tl.reshape(o, (BLOCK_M, E)), dt),)
    x1s = ()
    for c in tl.static_range(NC):
        x1s = x1s + (xs[c] + _linear(heads, proj_w, proj_b, NC * E, c * E, E, E, NC, PREC),)
    return x1s


@_device_function
def _slot(ptr, offset):
    return ptr + offset


# ----------------------------------------------------------------------------- kernels


@triton.jit
def block_forward_kernel(
    x_ptr,
    y_ptr,
    key_mask_ptr,
    P,
    ln1_w,
    ln1_b,
    qkv_w,
    qkv_b,
    proj_w,
    proj_b,
    ln2_w,
    ln2_b,
    fc1_w,
    fc1_b,
    fc2_w,
    fc2_b,
    eps1,
    eps2,
    qk_scale,
    N: tl.constexpr,
    G: tl.constexpr,
    PG: tl.constexpr,
    E: tl.constexpr,
    NC: tl.constexpr,
    FC: tl.constexpr,
    NF: tl.constexpr,
    BLOCK_M: tl.constexpr,
    HAS_KEY_MASK: tl.constexpr,
    PREC: tl.constexpr,
):
    """``y = x1 + MLP(LN2(x1))`` with ``x1 = x + MSA(LN1(x))`` for one tile of rows.

    ``x``, ``y``: ``(P * N, NC * E)`` tokens; ``key_mask``: ``(P * N,)`` uint8 when
    ``HAS_KEY_MASK``. Weights are row-major ``(out, in)`` in the compute dtype, LayerNorm
    parameters and biases fp32.
    """
    D: tl.constexpr = NC * E
    F: tl.constexpr = NF * FC
    dt = qkv_w.dtype.element_ty
    row, valid = _tile_rows(tl.program_id(0), P, N, G, PG, BLOCK_M)
    allowed = _allowed_keys(key_mask_ptr, row, valid, N, G, PG, BLOCK_M, HAS_KEY_MASK)
    xs = _load_chunks(x_ptr, row, valid, E, NC)
    x1s = _attention_half(
        xs, allowed, ln1_w, ln1_b, qkv_w, qkv_b, proj_w, proj_b, eps1, qk_scale, G, E, NC, BLOCK_M, PREC
    )
    # y = x1 + fc2(GELU(fc1(LN2(x1)))), one hidden chunk at a time
    mean2, rstd2 = _ln_stats(x1s, eps2, NC, E)
    h2s = _affine(_normalize(x1s, mean2, rstd2, NC), ln2_w, ln2_b, dt, NC, E)
    ys = ()
    for c in tl.static_range(NC):
        ys = ys + (x1s[c] + _vec(fc2_b, c * E, E)[None, :],)
    for f in tl.static_range(NF):
        g = _cast(_gelu(_linear(h2s, fc1_w, fc1_b, D, f * FC, E, FC, NC, PREC)), dt)  # (BLOCK_M, FC)
        acc = ()
        for c in tl.static_range(NC):
            acc = acc + (_dot(g, _wt_tile(fc2_w, F, c * E, f * FC, FC, E), PREC, ys[c]),)
        ys = acc
    _store_chunks(y_ptr, ys, row, valid, E, NC)


@_device_function
def _mlp_backward_tile(
    tile,
    slot_index,
    x_ptr,
    dy_ptr,
    dx1_ptr,
    key_mask_ptr,
    P,
    ln1_w,
    ln1_b,
    qkv_w,
    qkv_b,
    proj_w,
    proj_b,
    ln2_w,
    ln2_b,
    fc1_w,
    fc1_b,
    fc2_w,
    fc2_b,
    g_ln2_w,
    g_ln2_b,
    g_fc1_w,
    g_fc1_b,
    g_fc2_w,
    g_fc2_b,
    slot_stride,
    eps1,
    eps2,
    qk_scale,
    N: tl.constexpr,
    G: tl.constexpr,
    PG: tl.constexpr,
    E: tl.constexpr,
    NC: tl.constexpr,
    FC: tl.constexpr,
    NF: tl.constexpr,
    BLOCK_M: tl.constexpr,
    HAS_KEY_MASK: tl.constexpr,
    PREC: tl.constexpr,
):
    """One tile of :func:`mlp_backward_kernel`, adding its partial gradients into slot ``slot_index``."""
    D: tl.constexpr = NC * E
    F: tl.constexpr = NF * FC
    dt = qkv_w.dtype.element_ty
    row, valid = _tile_rows(tile, P, N, G, PG, BLOCK_M)
    allowed = _allowed_keys(key_mask_ptr, row, valid, N, G, PG, BLOCK_M, HAS_KEY_MASK)
    slot = tl.cast(slot_index, tl.int64) * slot_stride
    g_ln2_w = _slot(g_ln2_w, slot)
    g_ln2_b = _slot(g_ln2_b, slot)
    g_fc1_w = _slot(g_fc1_w, slot)
    g_fc1_b = _slot(g_fc1_b, slot)
    g_fc2_w = _slot(g_fc2_w, slot)
    g_fc2_b = _slot(g_fc2_b, slot)

    x1s = _attention_half(
        _load_chunks(x_ptr, row, valid, E, NC),
        allowed,
        ln1_w,
        ln1_b,
        qkv_w,
        qkv_b,
        proj_w,
        proj_b,
        eps1,
        qk_scale,
        G,
        E,
        NC,
        BLOCK_M,
        PREC,
    )
    mean2, rstd2 = _ln_stats(x1s, eps2, NC, E)
    h2s = _affine(_normalize(x1s, mean2, rstd2, NC), ln2_w, ln2_b, dt, NC, E)
    # Park x1 in this tile's rows of dx1 (written by no other program) instead of keeping it
    # in registers through the MLP loop; the barrier makes the stores visible to every thread.
    _store_chunks(dx1_ptr, x1s, row, valid, E, NC)
    dh2s = ()
    for _c in tl.static_range(NC):
        dh2s = dh2s + (tl.zeros((BLOCK_M, E), dtype=tl.float32),)
    for f in tl.static_range(NF):
        g, dgelu = _gelu_and_grad(_linear(h2s, fc1_w, fc1_b, D, f * FC, E, FC, NC, PREC))
        g_dt = _cast(g, dt)
        dg = tl.zeros((BLOCK_M, FC), dtype=tl.float32)
        for c in tl.static_range(NC):
            # dy is re-read per chunk (cache-resident): short live ranges instead of registers
            dy = tl.load(dy_ptr + row[:, None] * D + (c * E + tl.arange(0, E))[None, :], mask=valid[:, None], other=0.0)
            if f == 0:
                _accumulate(g_fc2_b, c * E, tl.sum(dy.to(tl.float32), axis=0), E)
            dy = _cast(dy, dt)
            dg = _dot(dy, _w_tile(fc2_w, F, c * E, f * FC, E, FC), PREC, dg)  # (BLOCK_M, FC)
            # (FC, E) = g^T dy rather than (E, FC) = dy^T g: M = FC >= 64 suits wgmma
            _accumulate_tile_t(g_fc2_w, F, c * E, f * FC, _dot(tl.trans(g_dt), dy, PREC), E, FC)
        da = dg * dgelu
        _accumulate(g_fc1_b, f * FC, tl.sum(da, axis=0), FC)
        da_dt = _cast(da, dt)
        da_t = tl.trans(da_dt)
        acc = ()
        for c in tl.static_range(NC):
            _accumulate_tile(g_fc1_w, D, f * FC, c * E, _dot(da_t, h2s[c], PREC), FC, E)
            acc = acc + (_dot(da_dt, _w_tile(fc1_w, D, f * FC, c * E, FC, E), PREC, dh2s[c]),)
        dh2s = acc
    tl.debug_barrier()
    xh2s = _normalize(_load_chunks(dx1_ptr, row, valid, E, NC), mean2, rstd2, NC)
    tl.debug_barrier()  # every thread has read x1 before dx1 overwrites it
    dx1s = _add_chunks(
        _load_chunks(dy_ptr, row, valid, E, NC),
        _ln_backward(dh2s, xh2s, rstd2, ln2_w, g_ln2_w, g_ln2_b, NC, E),
        NC,
    )
    _store_chunks(dx1_ptr, dx1s, row, valid, E, NC)


@triton.jit
def mlp_backward_kernel(
    x_ptr,
    dy_ptr,
    dx1_ptr,
    key_mask_ptr,
    P,
    ln1_w,
    ln1_b,
    qkv_w,
    qkv_b,
    proj_w,
    proj_b,
    ln2_w,
    ln2_b,
    fc1_w,
    fc1_b,
    fc2_w,
    fc2_b,
    g_ln2_w,
    g_ln2_b,
    g_fc1_w,
    g_fc1_b,
    g_fc2_w,
    g_fc2_b,
    slot_stride,
    num_slots,
    num_tiles,
    eps1,
    eps2,
    qk_scale,
    N: tl.constexpr,
    G: tl.constexpr,
    PG: tl.constexpr,
    E: tl.constexpr,
    NC: tl.constexpr,
    FC: tl.constexpr,
    NF: tl.constexpr,
    BLOCK_M: tl.constexpr,
    HAS_KEY_MASK: tl.constexpr,
    PREC: tl.constexpr,
    OWN_SLOT: tl.constexpr,
):
    """Backward of the MLP half: ``dx1 = dy + d(fc2(GELU(fc1(LN2(x1)))))/dx1 . dy``.

    Recomputes ``x1`` from the block input ``x``. ``g_*`` point into slot 0 of
    ``(num_slots, slot_stride)`` fp32 buffers. With ``OWN_SLOT`` off there is one program per
    tile and it adds its partial sums into slot ``program_id % num_slots`` (atomics from several
    programs meet, in no fixed order); with ``OWN_SLOT`` on there are ``num_slots`` programs,
    program ``p`` alone writes slot ``p`` and handles tiles ``p, p + num_slots, ...`` in that
    order, so the sums are bit-reproducible. Rows that are padding or past ``P`` load ``dy = 0``
    and so add nothing to any gradient.
    """
    pid = tl.program_id(0)
    if OWN_SLOT:
        # Deterministic order: this program owns slot `pid` and adds its tiles one after another.
        for tile in tl.range(pid, num_tiles, tl.num_programs(0)):
            _mlp_backward_tile(
                tile,
                pid,
                x_ptr,
                dy_ptr,
                dx1_ptr,
                key_mask_ptr,
                P,
                ln1_w,
                ln1_b,
                qkv_w,
                qkv_b,
                proj_w,
                proj_b,
                ln2_w,
                ln2_b,
                fc1_w,
                fc1_b,
                fc2_w,
                fc2_b,
                g_ln2_w,
                g_ln2_b,
                g_fc1_w,
                g_fc1_b,
                g_fc2_w,
                g_fc2_b,
                slot_stride,
                eps1,
                eps2,
                qk_scale,
                N,
                G,
                PG,
                E,
                NC,
                FC,
                NF,
                BLOCK_M,
                HAS_KEY_MASK,
                PREC,
            )
            tl.debug_barrier()  # this tile's additions are done before the next tile's
    else:
        _mlp_backward_tile(
            pid,
            pid % num_slots,
            x_ptr,
            dy_ptr,
            dx1_ptr,
            key_mask_ptr,
            P,
            ln1_w,
            ln1_b,
            qkv_w,
            qkv_b,
            proj_w,
            proj_b,
            ln2_w,
            ln2_b,
            fc1_w,
            fc1_b,
            fc2_w,
            fc2_b,
            g_ln2_w,
            g_ln2_b,
            g_fc1_w,
            g_fc1_b,
            g_fc2_w,
            g_fc2_b,
            slot_stride,
            eps1,
            eps2,
            qk_scale,
            N,
            G,
            PG,
            E,
            NC,
            FC,
            NF,
            BLOCK_M,
            HAS_KEY_MASK,
            PREC,
        )


@_device_function
def _qkv_backward(
    grad,
    r0: tl.constexpr,
    hs,
    dhs,
    qkv_w,
    g_qkv_w,
    g_qkv_b,
    NC: tl.constexpr,
    E: tl.constexpr,
    PREC: tl.constexpr,
):
    """Backward of output columns ``r0 : r0 + E`` of the QKV linear; returns ``dhs`` updated."""
    dt = qkv_w.dtype.element_ty
    _accumulate(g_qkv_b, r0, tl.sum(grad, axis=0), E)
    gd = _cast(grad, dt)
    gt = tl.trans(gd)
    out = ()
    for c in tl.static_range(NC):
        _accumulate_tile(g_qkv_w, NC * E, r0, c * E, _dot(gt, hs[c], PREC), E, E)
        out = out + (_dot(gd, _w_tile(qkv_w, NC * E, r0, c * E, E, E), PREC, dhs[c]),)
    return out


@_device_function
def _attention_backward_tile(
    tile,
    slot_index,
    x_ptr,
    dx1_ptr,
    dx_ptr,
    key_mask_ptr,
    P,
    ln1_w,
    ln1_b,
    qkv_w,
    qkv_b,
    proj_w,
    g_ln1_w,
    g_ln1_b,
    g_qkv_w,
    g_qkv_b,
    g_proj_w,
    g_proj_b,
    slot_stride,
    eps1,
    qk_scale,
    sm_scale,
    N: tl.constexpr,
    G: tl.constexpr,
    PG: tl.constexpr,
    E: tl.constexpr,
    NC: tl.constexpr,
    BLOCK_M: tl.constexpr,
    HAS_KEY_MASK: tl.constexpr,
    PREC: tl.constexpr,
):
    """One tile of :func:`attention_backward_kernel`, adding its partial gradients into slot ``slot_index``."""
    D: tl.constexpr = NC * E
    NG: tl.constexpr = BLOCK_M // G
    dt = qkv_w.dtype.element_ty
    row, valid = _tile_rows(tile, P, N, G, PG, BLOCK_M)
    allowed = _allowed_keys(key_mask_ptr, row, valid, N, G, PG, BLOCK_M, HAS_KEY_MASK)
    slot = tl.cast(slot_index, tl.int64) * slot_stride
    g_ln1_w = _slot(g_ln1_w, slot)
    g_ln1_b = _slot(g_ln1_b, slot)
    g_qkv_w = _slot(g_qkv_w, slot)
    g_qkv_b = _slot(g_qkv_b, slot)
    g_proj_w = _slot(g_proj_w, slot)
    g_proj_b = _slot(g_proj_b, slot)

    mean1, rstd1 = _ln_stats(_load_chunks(x_ptr, row, valid, E, NC), eps1, NC, E)
    dhs = ()
    for c in tl.static_range(NC):
        dx1 = tl.load(
            dx1_ptr + row[:, None] * D + (c * E + tl.arange(0, E))[None, :], mask=valid[:, None], other=0.0
        ).to(tl.float32)
        _accumulate(g_proj_b, c * E, tl.sum(dx1, axis=0), E)
        dhs = dhs + (tl.zeros((BLOCK_M, E), dtype=tl.float32),)
    for i in tl.static_range(NC):
        # LN1's output and dx1 are re-read per head (cache-resident): short live ranges
        hs = _affine(_normalize(_load_chunks(x_ptr, row, valid, E, NC), mean1, rstd1, NC), ln1_w, ln1_b, dt, NC, E)
        dx1s = _cast_chunks(_load_chunks(dx1_ptr, row, valid, E, NC), dt, NC)
        q, k, v = _qkv_head(hs, qkv_w, qkv_b, i, NC, E, PREC)
        q3 = tl.reshape(_cast(q, dt), (NG, G, E))
        k3 = tl.reshape(_cast(k, dt), (NG, G, E))
        v3 = tl.reshape(_cast(v, dt), (NG, G, E))
        p = _attention_probs(q3, k3, allowed, qk_scale, PREC)  # (NG, G, G) fp32
        p_dt = _cast(p, dt)
        o_dt = _cast(tl.reshape(_dot(p_dt, v3, PREC), (BLOCK_M, E)), dt)
        do = _dot(dx1s[0], _w_tile(proj_w, D, 0, i * E, E, E), PREC)  # (BLOCK_M, E)
        _accumulate_tile(g_proj_w, D, 0, i * E, _dot(tl.trans(dx1s[0]), o_dt, PREC), E, E)
        for c in tl.static_range(1, NC):
            do = _dot(dx1s[c], _w_tile(proj_w, D, c * E, i * E, E, E), PREC, do)
            _accumulate_tile(g_proj_w, D, c * E, i * E, _dot(tl.trans(dx1s[c]), o_dt, PREC), E, E)
        do3 = tl.reshape(_cast(do, dt), (NG, G, E))
        dp = _dot(do3, tl.permute(v3, (0, 2, 1)), PREC)  # (NG, G, G)
        dv3 = _dot(tl.permute(p_dt, (0, 2, 1)), do3, PREC)  # (NG, G, E)
        dhs = _qkv_backward(tl.reshape(dv3, (BLOCK_M, E)), 2 * D + i * E, hs, dhs, qkv_w, g_qkv_w, g_qkv_b, NC, E, PREC)
        # softmax backward, times the 1/sqrt(E) of the scores: the gradient of q.k
        ds = p * (dp - tl.sum(p * dp, axis=2)[:, :, None]) * sm_scale
        ds_dt = _cast(ds, dt)
        dq3 = _dot(ds_dt, k3, PREC)
        dk3 = _dot(tl.permute(ds_dt, (0, 2, 1)), q3, PREC)
        dhs = _qkv_backward(tl.reshape(dq3, (BLOCK_M, E)), i * E, hs, dhs, qkv_w, g_qkv_w, g_qkv_b, NC, E, PREC)
        dhs = _qkv_backward(tl.reshape(dk3, (BLOCK_M, E)), D + i * E, hs, dhs, qkv_w, g_qkv_w, g_qkv_b, NC, E, PREC)
    # x and dx1 are read again (cache-resident) instead of being kept in registers
    xh1s = _normalize(_load_chunks(x_ptr, row, valid, E, NC), mean1, rstd1, NC)
    dxs = _add_chunks(
        _load_chunks(dx1_ptr, row, valid, E, NC),
        _ln_backward(dhs, xh1s, rstd1, ln1_w, g_ln1_w, g_ln1_b, NC, E),
        NC,
    )
    _store_chunks(dx_ptr, dxs, row, valid, E, NC)


@triton.jit
def attention_backward_kernel(
    x_ptr,
    dx1_ptr,
    dx_ptr,
    key_mask_ptr,
    P,
    ln1_w,
    ln1_b,
    qkv_w,
    qkv_b,
    proj_w,
    g_ln1_w,
    g_ln1_b,
    g_qkv_w,
    g_qkv_b,
    g_proj_w,
    g_proj_b,
    slot_stride,
    num_slots,
    num_tiles,
    eps1,
    qk_scale,
    sm_scale,
    N: tl.constexpr,
    G: tl.constexpr,
    PG: tl.constexpr,
    E: tl.constexpr,
    NC: tl.constexpr,
    BLOCK_M: tl.constexpr,
    HAS_KEY_MASK: tl.constexpr,
    PREC: tl.constexpr,
    OWN_SLOT: tl.constexpr,
):
    """Backward of the attention half: ``dx = dx1 + d(proj(MSA(LN1(x))))/dx . dx1``.

    Recomputes LN1, q, k, v and the probabilities head by head from ``x``; gradient buffers
    as in :func:`mlp_backward_kernel`.
    """
    pid = tl.program_id(0)
    if OWN_SLOT:
        # Deterministic order, as in mlp_backward_kernel.
        for tile in tl.range(pid, num_tiles, tl.num_programs(0)):
            _attention_backward_tile(
                tile,
                pid,
                x_ptr,
                dx1_ptr,
                dx_ptr,
                key_mask_ptr,
                P,
                ln1_w,
                ln1_b,
                qkv_w,
                qkv_b,
                proj_w,
                g_ln1_w,
                g_ln1_b,
                g_qkv_w,
                g_qkv_b,
                g_proj_w,
                g_proj_b,
                slot_stride,
                eps1,
                qk_scale,
                sm_scale,
                N,
                G,
                PG,
                E,
                NC,
                BLOCK_M,
                HAS_KEY_MASK,
                PREC,
            )
            tl.debug_barrier()
    else:
        _attention_backward_tile(
            pid,
            pid % num_slots,
            x_ptr,
            dx1_ptr,
            dx_ptr,
            key_mask_ptr,
            P,
            ln1_w,
            ln1_b,
            qkv_w,
            qkv_b,
            proj_w,
            g_ln1_w,
            g_ln1_b,
            g_qkv_w,
            g_qkv_b,
            g_proj_w,
            g_proj_b,
            slot_stride,
            eps1,
            qk_scale,
            sm_scale,
            N,
            G,
            PG,
            E,
            NC,
            BLOCK_M,
            HAS_KEY_MASK,
            PREC,
        )
