"""The fused Triton path against the reference: outputs and every gradient.

Without CUDA the kernels run in Triton's interpreter (``tests/conftest.py`` sets
``TRITON_INTERPRET=1``), so shapes stay tiny; with CUDA the same tests run compiled kernels and
the ``gpu`` tests below add large sizes and a speed check.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from torch import nn

# Without a GPU the kernels run in Triton's interpreter. Triton reads TRITON_INTERPRET when the
# kernels are decorated, so it must be set before label_merge._triton is first imported (the
# shared tests/conftest.py does the same; this keeps the module self-contained).
if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")

pytest.importorskip("triton")

from hypothesis import given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

from label_merge import TLAM, LabelSpec, reference  # noqa: E402
from label_merge._triton import encode_tokens, unsupported_reasons  # noqa: E402
from label_merge._triton.layout import GROUP_SIZES, StackShape, choose_group, hidden_chunk  # noqa: E402
from label_merge.transformer import TransformerBlock  # noqa: E402

DEVICE = torch.device("cuda" if torch.cuda.is_available() else "cpu")
ROOT = Path(__file__).resolve().parents[1]
requires_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device (compiled kernels)")


# ----------------------------------------------------------------------------- helpers


def make_blocks(dim: int, heads: int, mlp_ratio: float, depth: int, *, seed: int) -> nn.ModuleList:
    """Float32 blocks on DEVICE with non-trivial LayerNorm parameters and biases."""
    torch.manual_seed(seed)
    blocks = nn.ModuleList(TransformerBlock(dim, heads, mlp_ratio) for _ in range(depth))
    with torch.no_grad():
        for name, param in blocks.named_parameters():
            if "norm" in name and name.endswith("weight"):
                param.copy_(1 + 0.2 * torch.randn_like(param))
            elif name.endswith("bias"):
                param.copy_(0.1 * torch.randn_like(param))
    return blocks.to(DEVICE)


def make_tokens(num_pixels: int, num_tokens: int, dim: int, *, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Float32 tokens and a presence mask with every 4th pixel missing everything."""
    gen = torch.Generator().manual_seed(seed)
    z = torch.randn(num_pixels, num_tokens, dim, generator=gen)
    present = torch.rand(num_pixels, num_tokens, generator=gen) > 0.4
    present[::4] = False
    return z.to(DEVICE), present.to(DEVICE)


def run(encode, z, present, blocks, drop, null, upstream):
    """Output and gradients w.r.t. (z, every block parameter, null_concept) for one upstream gradient."""
    z = z.detach().requires_grad_(True)
    null = null.detach().requires_grad_(True) if null is not None else None
    out = encode(z, present, blocks, drop=drop, null_concept=null)
    inputs = [z, *blocks.parameters()] + ([null] if null is not None else [])
    grads = torch.autograd.grad(out, inputs, upstream.to(out.dtype))
    return out.detach(), [g.detach() for g in grads]


def rel_err(value: torch.Tensor, truth: torch.Tensor) -> float:
    """Norm-wise relative error ``||value - truth|| / ||truth||`` in float64."""
    truth = truth.double()
    return ((value.double() - truth).norm() / truth.norm().clamp_min(1e-30)).item()


def cast(blocks: nn.ModuleList, dtype: torch.dtype) -> nn.ModuleList:
    """A copy of ``blocks`` in ``dtype`` on DEVICE."""
    copy = nn.ModuleList(
        TransformerBlock(
            b.norm1.normalized_shape[0], b.attn.heads, b.mlp.fc1.out_features / b.norm1.normalized_shape[0]
        )
        for b in blocks
    )
    copy.load_state_dict(blocks.state_dict())
    return copy.to(device=DEVICE, dtype=dtype)


def names(blocks: nn.ModuleList, drop: str) -> list[str]:
    return ["z", *(n for n, _ in blocks.named_parameters())] + (["null_concept"] if drop == "exclude" else [])


# ----------------------------------------------------------------------------- float32 parity


@pytest.mark.parametrize("num_tokens", [1, 2, 5, 6, 7, 16])
@pytest.mark.parametrize("drop", ["zero", "exclude"])
def test_float32_matches_reference(num_tokens, drop):
    """Outputs and all gradients agree tightly: odd P over several tiles (one tile for N=1),
    groups of 16 and of 32 rows (N=6), pixels with nothing present."""
    dim, num_pixels = 32, 37
    blocks = make_blocks(dim, heads=2, mlp_ratio=2.0, depth=2, seed=num_tokens)
    z, present = make_tokens(num_pixels, num_tokens, dim, seed=1)
    null = torch.randn(dim, device=DEVICE) if drop == "exclude" else None
    upstream = torch.randn(num_pixels, dim, device=DEVICE)
    out, grads = run(encode_tokens, z, present, blocks, drop, null, upstream)
    ref, ref_grads = run(reference.encode_tokens, z, present, blocks, drop, null, upstream)
    assert out.dtype == torch.float32 and out.shape == (num_pixels, dim)
    assert rel_err(out, ref) < 1e-5
    for name, g, r in zip(names(blocks, drop), grads, ref_grads, strict=True):
        assert torch.isfinite(g).all(), name
        assert rel_err(g, r) < 1e-5, name


def test_float32_paper_widths_match_reference():
    """d=96 as 3 chunks of 32, MLP 384 as chunks; N=5 as in the paper; P not a multiple of a tile."""
    dim, num_pixels, num_tokens = 96, 11, 5
    blocks = make_blocks(dim, heads=3, mlp_ratio=4.0, depth=1, seed=3)
    z, present = make_tokens(num_pixels, num_tokens, dim, seed=2)
    null = torch.randn(dim, device=DEVICE)
    upstream = torch.randn(num_pixels, dim, device=DEVICE)
    out, grads = run(encode_tokens, z, present, blocks, "exclude", null, upstream)
    ref, ref_grads = run(reference.encode_tokens, z, present, blocks, "exclude", null, upstream)
    assert rel_err(out, ref) < 1e-5
    for name, g, r in zip(names(blocks, "exclude"), grads, ref_grads, strict=True):
        assert rel_err(g, r) < 1e-5, name


@pytest.mark.parametrize(("forward", "backward"), [((64, 4), (128, 8)), ((32, 4), (32, 4))])
def test_other_launch_configurations_match_reference(monkeypatch, forward, backward):
    """Rows and warps per program change the tiling, not the result (the sweep in bench_merger relies on it)."""
    from label_merge._triton import launch

    monkeypatch.setattr(launch, "FORWARD_CONFIG", launch.LaunchConfig(*forward))
    monkeypatch.setattr(launch, "BACKWARD_CONFIG", launch.LaunchConfig(*backward, num_slots=3))
    dim, num_pixels = 32, 29
    blocks = make_blocks(dim, heads=2, mlp_ratio=2.0, depth=1, seed=4)
    z, present = make_tokens(num_pixels, 5, dim, seed=4)
    null = torch.randn(dim, device=DEVICE)
    upstream = torch.randn(num_pixels, dim, device=DEVICE)
    out, grads = run(encode_tokens, z, present, blocks, "exclude", null, upstream)
    ref, ref_grads = run(reference.encode_tokens, z, present, blocks, "exclude", null, upstream)
    assert rel_err(out, ref) < 1e-5
    for name, g, r in zip(names(blocks, "exclude"), grads, ref_grads, strict=True):
        assert rel_err(g, r) < 1e-5, name


# ----------------------------------------------------------------------------- low precision parity


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
@pytest.mark.parametrize("drop", ["zero", "exclude"])
def test_low_precision_parity(dtype, drop):
    """The accuracy rule: error vs float64 at most twice that of the reference in the same dtype.

    Three heads of 16 and an MLP of 96 (three chunks of 32) exercise the chunked tiling.
    """
    dim, num_pixels, num_tokens = 48, 24, 5
    blocks = make_blocks(dim, heads=3, mlp_ratio=2.0, depth=2, seed=7)
    z, present = make_tokens(num_pixels, num_tokens, dim, seed=8)
    null = torch.randn(dim, device=DEVICE) if drop == "exclude" else None
    upstream = torch.randn(num_pixels, dim, device=DEVICE)

    exact_blocks = cast(blocks, torch.float64)
    truth, truth_grads = run(
        reference.encode_tokens,
        z.double(),
        present,
        exact_blocks,
        drop,
        None if null is None else null.double(),
        upstream,
    )
    low_blocks = cast(blocks, dtype)
    low_null = None if null is None else null.to(dtype)
    fused, fused_grads = run(encode_tokens, z.to(dtype), present, low_blocks, drop, low_null, upstream)
    ref, ref_grads = run(reference.encode_tokens, z.to(dtype), present, low_blocks, drop, low_null, upstream)

    floor = 1e-3 * torch.finfo(dtype).eps  # only matters where the reference is exact
    assert fused.dtype == dtype
    assert rel_err(fused, truth) <= 2 * rel_err(ref, truth) + floor
    for name, f, r, t in zip(names(blocks, drop), fused_grads, ref_grads, truth_grads, strict=True):
        assert torch.isfinite(f).all(), name
        assert rel_err(f, t) <= 2 * rel_err(r, t) + floor, name


def test_autocast_parity():
    """Float32 parameters under bfloat16 autocast: the dots run in bf16, like the reference's."""
    dim, num_pixels = 32, 16
    blocks = make_blocks(dim, heads=2, mlp_ratio=2.0, depth=2, seed=11)
    z, present = make_tokens(num_pixels, 3, dim, seed=12)
    upstream = torch.randn(num_pixels, dim, device=DEVICE)
    truth, truth_grads = run(
        reference.encode_tokens, z.double(), present, cast(blocks, torch.float64), "zero", None, upstream
    )
    with torch.autocast(DEVICE.type, dtype=torch.bfloat16):
        fused, fused_grads = run(encode_tokens, z, present, blocks, "zero", None, upstream)
        ref, ref_grads = run(reference.encode_tokens, z, present, blocks, "zero", None, upstream)
    assert rel_err(fused, truth) <= 2 * rel_err(ref, truth)
    for name, f, r, t in zip(names(blocks, "zero"), fused_grads, ref_grads, truth_grads, strict=True):
        assert rel_err(f, t) <= 2 * rel_err(r, t), name


# ----------------------------------------------------------------------------- NaN safety and edge cases


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_nothing_present_anywhere_is_finite(dtype):
    """Exclude mode with no token present at any pixel: null concept out, finite zero token grads."""
    dim = 32
    blocks = cast(make_blocks(dim, heads=2, mlp_ratio=2.0, depth=1, seed=5), dtype)
    z = torch.randn(6, 4, dim, device=DEVICE, dtype=dtype)
    present = torch.zeros(6, 4, dtype=torch.bool, device=DEVICE)
    null = torch.randn(dim, device=DEVICE, dtype=dtype)
    upstream = torch.randn(6, dim, device=DEVICE)
    out, grads = run(encode_tokens, z, present, blocks, "exclude", null, upstream)
    assert torch.equal(out, null.expand(6, dim))
    for name, g in zip(names(blocks, "exclude"), grads, strict=True):
        assert torch.isfinite(g).all(), name
    assert torch.count_nonzero(grads[0]) == 0  # no token reaches the output
    tol = 1e-5 if dtype == torch.float32 else 2e-2
    torch.testing.assert_close(grads[-1].float(), upstream.sum(0), rtol=tol, atol=tol)  # all of it reaches null_concept


def test_extreme_scores_stay_finite():
    """Large activations saturate the softmax without producing inf or NaN in forward or backward."""
    dim = 32
    blocks = make_blocks(dim, heads=2, mlp_ratio=2.0, depth=1, seed=6)
    with torch.no_grad():
        blocks[0].attn.qkv.weight.mul_(30.0)
    z, present = make_tokens(9, 5, dim, seed=6)
    upstream = torch.randn(9, dim, device=DEVICE)
    out, grads = run(encode_tokens, 50 * z, present, blocks, "exclude", torch.zeros(dim, device=DEVICE), upstream)
    ref, _ = run(reference.encode_tokens, 50 * z, present, blocks, "exclude", torch.zeros(dim, device=DEVICE), upstream)
    assert torch.isfinite(out).all() and all(torch.isfinite(g).all() for g in grads)
    assert rel_err(out, ref) < 1e-4


def test_single_pixel_and_frozen_blocks():
    """P = 1, and gradients for the tokens alone when the blocks are frozen."""
    dim = 32
    blocks = make_blocks(dim, heads=2, mlp_ratio=2.0, depth=1, seed=9).requires_grad_(False)
    z = torch.randn(1, 3, dim, device=DEVICE, requires_grad=True)
    present = torch.ones(1, 3, dtype=torch.bool, device=DEVICE)
    out = encode_tokens(z, present, blocks, drop="zero")
    (grad,) = torch.autograd.grad(out.sum(), [z])
    z_ref = z.detach().requires_grad_(True)
    (ref_grad,) = torch.autograd.grad(reference.encode_tokens(z_ref, present, blocks, drop="zero").sum(), [z_ref])
    assert rel_err(grad, ref_grad) < 1e-5


def test_no_pixels():
    blocks = make_blocks(32, heads=2, mlp_ratio=2.0, depth=1, seed=0)
    out = encode_tokens(
        torch.zeros(0, 3, 32, device=DEVICE), torch.zeros(0, 3, dtype=torch.bool, device=DEVICE), blocks, drop="zero"
    )
    assert out.shape == (0, 32)


def test_no_grad_forward_matches():
    blocks = make_blocks(32, heads=2, mlp_ratio=2.0, depth=2, seed=10)
    z, present = make_tokens(7, 2, 32, seed=10)
    with torch.no_grad():
        out = encode_tokens(z, present, blocks, drop="zero")
        ref = reference.encode_tokens(z, present, blocks, drop="zero")
    assert not out.requires_grad
    assert rel_err(out, ref) < 1e-5


# ----------------------------------------------------------------------------- TLAM end to end


@pytest.mark.parametrize("drop", ["zero", "exclude"])
def test_tlam_triton_backend_equals_torch(drop):
    """TLAM(backend="triton") and TLAM(backend="torch"): same concept tensor, same gradients."""
    specs = {
        "seg": LabelSpec.categorical(5, ignore_index=0),
        "depth": LabelSpec.continuous(1),
        "normal": LabelSpec.continuous(3),
    }
    torch.manual_seed(0)
    fused = TLAM(specs, dim=32, depth=2, heads=2, mlp_ratio=2.0, drop=drop, backend="triton").to(DEVICE)
    plain = TLAM(specs, dim=32, depth=2, heads=2, mlp_ratio=2.0, drop=drop, backend="torch").to(DEVICE)
    plain.load_state_dict(fused.state_dict())
    labels = {
        "seg": torch.randint(0, 5, (2, 3, 5), device=DEVICE),
        "depth": torch.rand(2, 1, 3, 5, device=DEVICE),
        "normal": torch.randn(2, 3, 3, 5, device=DEVICE),
    }
    masks = {"depth": torch.rand(2, 3, 5, device=DEVICE) > 0.5}
    out = fused(labels, masks)
    ref = plain(labels, masks)
    assert out.shape == ref.shape == (2, 32, 3, 5)
    assert rel_err(out, ref) < 1e-5
    out.square().sum().backward()
    ref.square().sum().backward()
    for (name, p), q in zip(fused.named_parameters(), plain.parameters(), strict=True):
        assert rel_err(p.grad, q.grad) < 1e-5, name


def test_explicit_triton_on_plain_cpu_lists_reasons(monkeypatch):
    """Without TRITON_INTERPRET, an explicit backend="triton" on CPU tensors is a ValueError."""
    monkeypatch.delenv("TRITON_INTERPRET", raising=False)
    merger = TLAM({"a": LabelSpec.continuous(1)}, dim=32, heads=2, backend="triton")
    with pytest.raises(ValueError, match="cannot run:.*CPU"):
        merger({"a": torch.rand(1, 1, 2, 2)})


def test_fused_on_cpu_without_interpreter_lists_reasons():
    """The check also holds in a fresh process where the kernels were compiled for the GPU."""
    code = (
        "import torch\n"
        "from label_merge.transformer import TransformerBlock\n"
        "from label_merge._triton import encode_tokens\n"
        "blocks = torch.nn.ModuleList([TransformerBlock(32, 2, 2.0)])\n"
        "try:\n"
        "    encode_tokens(torch.randn(3, 2, 32), torch.ones(3, 2, dtype=torch.bool), blocks, drop='zero')\n"
        "except ValueError as err:\n"
        "    print(err)\n"
    )
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    env["CUDA_VISIBLE_DEVICES"] = ""
    result = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
        cwd=ROOT,
    )
    assert "compiled for the GPU" in result.stdout, result.stderr[-2000:]


def test_importing_label_merge_does_not_import_triton():
    code = (
        "import sys, torch\n"
        "from label_merge import TLAM, LabelSpec\n"
        "m = TLAM({'a': LabelSpec.continuous(1)}, dim=32, heads=2)\n"
        "m({'a': torch.rand(1, 1, 2, 2)})\n"
        "print('triton' in sys.modules)\n"
    )
    env = {k: v for k, v in os.environ.items() if k not in ("TRITON_INTERPRET", "LABEL_MERGE_BACKEND")}
    result = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
        cwd=ROOT,
    )
    assert result.stdout.strip() == "False", result.stderr[-2000:]


# ----------------------------------------------------------------------------- unsupported configurations


def test_unsupported_reasons_lists_every_problem():
    assert unsupported_reasons(torch.float32) == []
    assert "float64" in " ".join(unsupported_reasons(torch.float64))
    specs = {f"l{i}": LabelSpec.continuous(1) for i in range(40)}
    merger = TLAM(specs, dim=48, heads=2, mlp_ratio=100 / 48)  # head dim 24, MLP 100, 40 tokens
    reasons = " ".join(unsupported_reasons(torch.float64, merger))
    for expected in ("float64", "head dim 24", "MLP hidden width 100", "40 tokens"):
        assert expected in reasons
    assert (
        unsupported_reasons(torch.bfloat16, TLAM({"a": LabelSpec.continuous(1)}, dim=96, heads=3)) != []
    )  # fp32 params
    paper = TLAM({k: LabelSpec.continuous(1) for k in "abcde"}, dim=96, heads=3)
    assert unsupported_reasons(torch.float32, paper) == []


def test_encode_tokens_rejects_what_it_cannot_run():
    blocks = make_blocks(48, heads=2, mlp_ratio=2.0, depth=1, seed=0)  # head dim 24
    z, present = make_tokens(4, 2, 48, seed=0)
    with pytest.raises(ValueError, match="head dim 24"):
        encode_tokens(z, present, blocks, drop="zero")
    with pytest.raises(ValueError, match="float64"):
        encode_tokens(z.double(), present, make_blocks(32, 2, 2.0, 1, seed=0).double(), drop="zero")
    with pytest.raises(ValueError, match="drop"):
        encode_tokens(z, present, blocks, drop="mean")


def test_kernels_compile_for_h100():
    """The interpreter is permissive where the compiler is not: build all three kernels for sm_90a.

    Runs in a fresh process without TRITON_INTERPRET (the kernels here were decorated for the
    interpreter); a small shape keeps it to seconds. The linears must land on wgmma, without spills.
    """
    import triton

    if not (Path(triton.__file__).parent / "backends" / "nvidia" / "bin" / "ptxas").exists():
        pytest.skip("Triton's NVIDIA backend (ptxas) is not installed")
    code = (
        "import json\n"
        "from label_merge._triton.aot import KERNELS, compile_kernel\n"
        "from label_merge._triton.launch import BACKWARD_CONFIG, FORWARD_CONFIG\n"
        "from label_merge._triton.layout import StackShape\n"
        "shape = StackShape(num_tokens=3, dim=32, heads=2, hidden=64)\n"
        "rows = [compile_kernel(k, 'bf16', shape, FORWARD_CONFIG if k == 'forward' else BACKWARD_CONFIG)\n"
        "        for k in KERNELS]\n"
        "print(json.dumps(rows))\n"
    )
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=600, cwd=ROOT
    )
    assert result.returncode == 0, result.stderr[-3000:]
    rows = json.loads(result.stdout.strip().splitlines()[-1])
    assert [r["kernel"] for r in rows] == ["forward", "mlp_backward", "attention_backward"]
    for row in rows:
        assert row["spill_stack_bytes"] == 0, row
        assert row["wgmma"] > 0 and row["vector_loads"] > 0, row


# ----------------------------------------------------------------------------- what only a GPU would hit


@pytest.fixture
def restore_tf32_settings():
    """Put PyTorch's TF32 settings back as they were, through the API that set them."""
    matmul = torch.backends.cuda.matmul
    saved = (torch.get_float32_matmul_precision(), matmul.fp32_precision, torch.backends.fp32_precision)
    yield
    torch.set_float32_matmul_precision(saved[0])
    torch.backends.fp32_precision = saved[2]
    matmul.fp32_precision = saved[1]


def test_float32_precision_follows_either_tf32_api(restore_tf32_settings):
    """The compiled path's dot precision reads TF32 through the API torch has, never the mixed read that raises."""
    from label_merge._triton.launch import _precision

    matmul = torch.backends.cuda.matmul
    matmul.fp32_precision = "tf32"  # new API; reading the legacy flag now raises in torch >= 2.9
    assert _precision(torch.float32, interpreted=False) == "tf32"
    matmul.fp32_precision = "ieee"
    assert _precision(torch.float32, interpreted=False) == "tf32x3"
    matmul.allow_tf32 = True  # legacy API
    assert _precision(torch.float32, interpreted=False) == "tf32"
    matmul.allow_tf32 = False
    assert _precision(torch.float32, interpreted=False) == "tf32x3"
    matmul.fp32_precision = "none"
    torch.backends.fp32_precision = "tf32"  # inherited from the global setting
    assert _precision(torch.float32, interpreted=False) == "tf32"
    assert _precision(torch.bfloat16, interpreted=False) == "ieee"  # 16-bit operands ignore it
    assert _precision(torch.float32, interpreted=True) == "ieee"


def test_double_backward_is_exact(monkeypatch):
    """Gradients of gradients (create_graph=True) through the fused path equal the reference's.

    The upstream gradient is a constant, the case where a non-differentiable backward would
    silently leave out every second-order term that comes through the parameters. (On CPU the
    reference's attention goes through SDPA, which has no double backward; the explicit form
    computes the same function and is what runs on CUDA.)
    """
    monkeypatch.setattr(reference, "_use_cpu_fused_attention", lambda x: False)
    blocks = make_blocks(32, heads=2, mlp_ratio=2.0, depth=2, seed=14)
    z, present = make_tokens(7, 3, 32, seed=14)
    null = torch.randn(32, device=DEVICE)
    upstream = torch.randn(7, 32, device=DEVICE)

    def second_order(encode):
        zz = z.detach().requires_grad_(True)
        out = encode(zz, present, blocks, drop="exclude", null_concept=null)
        inputs = [zz, *blocks.parameters()]
        first = torch.autograd.grad(out, inputs, upstream, create_graph=True)
        penalty = sum(g.square().sum() for g in first)
        second = torch.autograd.grad(penalty, inputs, allow_unused=True, materialize_grads=True)
        return [g.detach() for g in first], list(second)

    first, second = second_order(encode_tokens)
    ref_first, ref_second = second_order(reference.encode_tokens)
    labels = [f"first {n}" for n in names(blocks, "zero")] + [f"second {n}" for n in names(blocks, "zero")]
    for name, g, r in zip(labels, first + second, ref_first + ref_second, strict=True):
        assert rel_err(g, r) < 1e-5, name
    assert max(r.norm() for r in ref_second[1:]) > 0  # the parameters' second-order terms are not trivially zero


@pytest.mark.parametrize("failing", ["block_forward", "block_backward"])
def test_launch_out_of_resources_falls_back_to_the_reference(monkeypatch, failing):
    """A kernel that does not fit the GPU (an estimate too low) runs through the reference, with a warning."""
    from triton.runtime.errors import OutOfResources

    from label_merge._triton import autograd

    def out_of_resources(*args, **kwargs):
        raise OutOfResources(300_000, 232_448, "shared memory")

    monkeypatch.setattr(autograd, failing, out_of_resources)
    blocks = make_blocks(32, heads=2, mlp_ratio=2.0, depth=2, seed=17)
    z, present = make_tokens(6, 3, 32, seed=17)
    null = torch.randn(32, device=DEVICE)
    upstream = torch.randn(6, 32, device=DEVICE)
    with pytest.warns(RuntimeWarning, match="do not fit this GPU"):
        out, grads = run(encode_tokens, z, present, blocks, "exclude", null, upstream)
    ref, ref_grads = run(reference.encode_tokens, z, present, blocks, "exclude", null, upstream)
    assert rel_err(out, ref) < 1e-5
    for name, g, r in zip(names(blocks, "exclude"), grads, ref_grads, strict=True):
        assert rel_err(g, r) < 1e-5, name


def _reversed_program_order(monkeypatch):
    """Make Triton's interpreter run a launch's programs last to first."""
    from triton.runtime import interpreter

    builder = interpreter.interpreter_builder
    original = builder.set_grid_idx
    monkeypatch.setattr(builder, "set_grid_idx", lambda x, y, z: original(builder.grid_dim[0] - 1 - x, y, z))


def test_deterministic_weight_gradients_do_not_depend_on_program_order(monkeypatch):
    """With deterministic algorithms on, reversing the programs' order leaves every gradient bit unchanged.

    The same reversal changes the atomic (default) path's bits, which shows that the check
    can see an order dependence at all.
    """
    from label_merge._triton import launch

    monkeypatch.setattr(
        launch, "BACKWARD_CONFIG", launch.LaunchConfig(16, 4, num_slots=2, deterministic_programs=2)
    )  # 16-row tiles of 3 pixels: 6 tiles over 2 programs / 2 slots
    blocks = make_blocks(32, heads=2, mlp_ratio=2.0, depth=1, seed=15)
    z, present = make_tokens(17, 5, 32, seed=15)
    null = torch.randn(32, device=DEVICE)
    upstream = torch.randn(17, 32, device=DEVICE)

    def grads(*, deterministic, reverse):
        with monkeypatch.context() as patch:
            if reverse:
                _reversed_program_order(patch)
            patch.setattr(torch, "are_deterministic_algorithms_enabled", lambda: deterministic)
            return run(encode_tokens, z, present, blocks, "exclude", null, upstream)[1]

    forward = grads(deterministic=True, reverse=False)
    backward = grads(deterministic=True, reverse=True)
    for name, a, b in zip(names(blocks, "exclude"), forward, backward, strict=True):
        assert torch.equal(a, b), name
    _, ref_grads = run(reference.encode_tokens, z, present, blocks, "exclude", null, upstream)
    for name, g, r in zip(names(blocks, "exclude"), forward, ref_grads, strict=True):
        assert rel_err(g, r) < 1e-5, name
    atomic = grads(deterministic=False, reverse=False)
    atomic_reversed = grads(deterministic=False, reverse=True)
    assert any(not torch.equal(a, b) for a, b in zip(atomic, atomic_reversed, strict=True))


def test_every_launch_runs_under_a_guard_for_the_tensors_device(monkeypatch):
    """Kernels launch on the current CUDA device, so each launch makes the tokens' device current."""
    import contextlib

    from label_merge._triton import launch

    entered = []

    def recording_guard(device):
        entered.append(device)
        return contextlib.nullcontext()

    monkeypatch.setattr(launch, "_device_guard", recording_guard)
    blocks = make_blocks(32, heads=2, mlp_ratio=2.0, depth=2, seed=16)
    z, present = make_tokens(5, 3, 32, seed=16)
    run(encode_tokens, z, present, blocks, "zero", None, torch.randn(5, 32, device=DEVICE))
    assert entered == [z.device] * 4  # two forward launches, two backward (each guarding both kernels)


def test_device_guard_selects_the_tensors_cuda_device(monkeypatch):
    from label_merge._triton import launch

    chosen = []
    monkeypatch.setattr(torch.cuda, "device", lambda device: chosen.append(device) or "guard")
    assert launch._device_guard(torch.device("cuda", 1)) == "guard"
    assert chosen == [torch.device("cuda", 1)]
    with launch._device_guard(torch.device("cpu")):
        pass
    assert chosen == [torch.device("cuda", 1)]


def test_cuda_check_parity_step(monkeypatch):
    """benchmarks/cuda_check.py's parity check on a few pixels (in the interpreter without a GPU) and its summary."""
    monkeypatch.syspath_prepend(str(ROOT / "benchmarks"))
    import cuda_check

    parity = cuda_check.parity_case("bfloat16", "exclude", 5, device=DEVICE.type, pixels=5, depth=1)
    assert parity["finite"] and parity["worst_error_ratio"] > 0
    rows = cuda_check.summarize({"parity": [parity]})
    assert rows == [(parity["status"], "parity bfloat16 drop=exclude N=5", rows[0][2])]
    assert parity["status"] == "pass", parity["failures"]


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the message shown without a GPU")
def test_cuda_check_without_a_gpu_explains_and_dry_run_plans():
    env = {k: v for k, v in os.environ.items() if k not in ("TRITON_INTERPRET", "PYTHONPATH")}
    script = [sys.executable, "benchmarks/cuda_check.py"]
    done = subprocess.run(script, capture_output=True, text=True, env=env, timeout=120, cwd=ROOT)
    assert done.returncode == 2 and "needs a CUDA GPU" in done.stderr, done.stderr[-2000:]
    plan = subprocess.run([*script, "--dry-run"], capture_output=True, text=True, env=env, timeout=120, cwd=ROOT)
    assert plan.returncode == 0, plan.stderr[-2000:]
    for expected in ("pytest -m gpu", "float16/exclude/N=16", "8x256x512 1x1024x2048 16x512x1024"):
        assert expected in plan.stdout


# ----------------------------------------------------------------------------- tiling arithmetic


@settings(max_examples=50, deadline=None)
@given(st.integers(1, 32))
def test_group_choice_fits_and_wastes_least(num_tokens):
    group = choose_group(num_tokens)
    assert group >= num_tokens and group in GROUP_SIZES
    rows_per_pixel = {g: g / (g // num_tokens) for g in GROUP_SIZES if g >= num_tokens}
    assert rows_per_pixel[group] == min(rows_per_pixel.values())


@settings(max_examples=50, deadline=None)
@given(st.integers(1, 64).map(lambda k: 16 * k))
def test_hidden_chunk_is_a_power_of_two_dividing_the_width(hidden):
    chunk = hidden_chunk(hidden)
    assert 16 <= chunk <= 64 and chunk & (chunk - 1) == 0 and hidden % chunk == 0


def test_paper_tile_geometry():
    shape = StackShape(num_tokens=5, dim=96, heads=3, hidden=384)
    assert shape.constexprs() == {"N": 5, "G": 16, "PG": 3, "E": 32, "NC": 3, "FC": 64, "NF": 6}
    assert shape.pixels_per_tile(64) == 12  # 60 of 64 rows in use


# ----------------------------------------------------------------------------- GPU only


@requires_cuda
@pytest.mark.gpu
@pytest.mark.parametrize("num_pixels", [65_536 + 37, 1_600_003])
def test_gpu_many_pixels_paper_config(num_pixels):
    """More than 65,535 pixels, and (1.6 M) more than 65,535 programs on grid axis 0.

    Pixels are independent, so the upstream gradient is non-zero on 1,000 pixels only (at both
    ends, i.e. in the first and in the last programs) and the float32 reference runs on those
    pixels alone: outputs, token gradients and all parameter gradients must agree.
    """
    blocks = make_blocks(96, heads=3, mlp_ratio=4.0, depth=3, seed=1)
    z, present = make_tokens(num_pixels, 5, 96, seed=1)
    null = torch.randn(96, device=DEVICE)
    picked = torch.cat([torch.arange(500), torch.arange(num_pixels - 500, num_pixels)]).to(DEVICE)
    upstream = torch.zeros(num_pixels, 96, device=DEVICE)
    upstream[picked] = torch.randn(len(picked), 96, device=DEVICE)
    out, grads = run(encode_tokens, z, present, blocks, "exclude", null, upstream)
    ref, ref_grads = run(reference.encode_tokens, z[picked], present[picked], blocks, "exclude", null, upstream[picked])
    assert torch.isfinite(out).all()
    assert rel_err(out[picked], ref) < 1e-4
    assert rel_err(grads[0][picked], ref_grads[0]) < 1e-4
    grads[0][picked] = 0
    assert torch.count_nonzero(grads[0]) == 0  # pixels with zero upstream get nothing
    for name, g, r in zip(names(blocks, "exclude")[1:], grads[1:], ref_grads[1:], strict=True):
        assert rel_err(g, r) < 1e-4, name


@requires_cuda
@pytest.mark.gpu
def test_gpu_bf16_parity_paper_config():
    blocks = make_blocks(96, heads=3, mlp_ratio=4.0, depth=3, seed=2)
    z, present = make_tokens(4099, 5, 96, seed=2)
    upstream = torch.randn(4099, 96, device=DEVICE)
    truth, truth_grads = run(
        reference.encode_tokens, z.double(), present, cast(blocks, torch.float64), "zero", None, upstream
    )
    low = cast(blocks, torch.bfloat16)
    fused, fused_grads = run(encode_tokens, z.bfloat16(), present, low, "zero", None, upstream)
    ref, ref_grads = run(reference.encode_tokens, z.bfloat16(), present, low, "zero", None, upstream)
    assert rel_err(fused, truth) <= 2 * rel_err(ref, truth)
    for name, f, r, t in zip(names(blocks, "zero"), fused_grads, ref_grads, truth_grads, strict=True):
        assert rel_err(f, t) <= 2 * rel_err(r, t), name


@requires_cuda
@pytest.mark.gpu
def test_gpu_speed_sanity():
    """Fused forward+backward beats the eager reference on 2x256x512 pixels in bf16 (warm, median of 5)."""
    blocks = cast(make_blocks(96, heads=3, mlp_ratio=4.0, depth=3, seed=3), torch.bfloat16)
    z, present = make_tokens(2 * 256 * 512, 5, 96, seed=3)
    z = z.bfloat16()
    upstream = torch.randn(z.shape[0], 96, device=DEVICE)

    def median_seconds(encode):
        times = []
        for _ in range(6):
            torch.cuda.synchronize()
            start = time.perf_counter()
            run(encode, z, present, blocks, "zero", None, upstream)
            torch.cuda.synchronize()
            times.append(time.perf_counter() - start)
        return sorted(times[1:])[2]

    assert median_seconds(encode_tokens) < median_seconds(reference.encode_tokens)
