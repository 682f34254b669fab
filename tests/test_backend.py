"""Backend choice: explicit argument > LABEL_MERGE_BACKEND > auto-detection, and which GPUs qualify."""

from types import SimpleNamespace

import pytest
import torch

from label_merge.backend import ENV_VAR, resolve_backend

CPU = torch.device("cpu")


def test_auto_on_cpu_is_the_reference(monkeypatch):
    monkeypatch.delenv(ENV_VAR, raising=False)
    assert resolve_backend("auto", CPU, torch.float32) == "torch"
    monkeypatch.setenv("TRITON_INTERPRET", "1")  # the interpreter is never chosen automatically
    assert resolve_backend("auto", CPU, torch.float32) == "torch"


def test_environment_variable_beats_auto_and_explicit_beats_it(monkeypatch):
    monkeypatch.setenv(ENV_VAR, "triton")
    monkeypatch.delenv("TRITON_INTERPRET", raising=False)
    with pytest.raises(ValueError, match=f"{ENV_VAR}=triton"):
        resolve_backend("auto", CPU, torch.float32)
    assert resolve_backend("torch", CPU, torch.float32) == "torch"
    monkeypatch.setenv(ENV_VAR, "Torch ")
    assert resolve_backend("auto", CPU, torch.float32) == "torch"


def test_invalid_environment_variable(monkeypatch):
    monkeypatch.setenv(ENV_VAR, "cuda")
    with pytest.raises(ValueError, match=f"{ENV_VAR} must be one of"):
        resolve_backend("auto", CPU, torch.float32)


def test_explicit_triton_on_plain_cpu_lists_the_reason(monkeypatch):
    monkeypatch.delenv(ENV_VAR, raising=False)
    monkeypatch.delenv("TRITON_INTERPRET", raising=False)
    with pytest.raises(ValueError, match=r"backend 'triton' \(backend argument\) cannot run: .*on the CPU"):
        resolve_backend("triton", CPU, torch.float32)


def test_unknown_backend():
    with pytest.raises(ValueError, match="backend must be one of"):
        resolve_backend("fast", CPU, torch.float32)


# ----------------------------------------------------------------------------- GPU checks, on CPU

# Per-multiprocessor shared memory as torch reports it, and compute capability.
GPUS = {
    "H100": (9, 0, 233_472),
    "A100": (8, 0, 167_936),
    "RTX 4090": (8, 9, 102_400),
    "T4": (7, 5, 65_536),
}
CUDA = torch.device("cuda", 0)


@pytest.fixture
def fake_gpu(monkeypatch):
    """Pretend a CUDA device is present: ``fake_gpu("A100")``; ``hip=True`` makes it a ROCm build."""
    pytest.importorskip("triton")
    from label_merge._triton import autograd

    monkeypatch.setattr(autograd, "INTERPRETED", False)  # the checks are skipped in the interpreter
    monkeypatch.delenv(ENV_VAR, raising=False)

    def install(name, *, hip=False):
        major, minor, shared = GPUS[name]
        props = SimpleNamespace(
            name=name, major=major, minor=minor, shared_memory_per_multiprocessor=shared, multi_processor_count=100
        )
        monkeypatch.setattr(torch.cuda, "get_device_properties", lambda device=None: props)
        monkeypatch.setattr(torch.version, "hip", "6.2" if hip else None)

    return install


def merger(dim=96, heads=3, dtype=torch.bfloat16):
    from label_merge import TLAM, LabelSpec

    return TLAM({k: LabelSpec.continuous(1) for k in "abcde"}, dim=dim, heads=heads).to(dtype)


@pytest.mark.parametrize("gpu", ["H100", "A100", "RTX 4090"])
def test_paper_configuration_runs_on_ampere_and_newer(fake_gpu, gpu):
    fake_gpu(gpu)
    assert resolve_backend("auto", CUDA, torch.bfloat16, merger()) == "triton"
    assert resolve_backend("triton", CUDA, torch.float16, merger(dtype=torch.float16)) == "triton"


@pytest.mark.parametrize(
    ("dim", "heads"),
    [(128, 1), (256, 2), (256, 8)],  # float32 head dim 128, float32 width 256: 256-320 KB on sm_90
)
def test_float32_tiles_beyond_shared_memory_fall_back(fake_gpu, dim, heads):
    """Accepted by the tiling, but their kernels need more shared memory than an H100 has."""
    fake_gpu("H100")
    module = merger(dim, heads, torch.float32)
    assert resolve_backend("auto", CUDA, torch.float32, module) == "torch"
    with pytest.raises(ValueError, match="KB of shared memory.*H100 has 227 KB"):
        resolve_backend("triton", CUDA, torch.float32, module)


def test_shared_memory_is_checked_against_the_device_at_hand(fake_gpu):
    """bf16 head dim 128: within an A100's 163 KB, beyond a consumer card's 99 KB."""
    module = merger(128, 1)
    fake_gpu("A100")
    assert resolve_backend("auto", CUDA, torch.bfloat16, module) == "triton"
    fake_gpu("RTX 4090")
    assert resolve_backend("auto", CUDA, torch.bfloat16, module) == "torch"
    with pytest.raises(ValueError, match="RTX 4090 has 99 KB per block"):
        resolve_backend("triton", CUDA, torch.bfloat16, module)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16, torch.float32])
def test_pre_ampere_gpus_fall_back(fake_gpu, dtype):
    fake_gpu("T4")
    assert resolve_backend("auto", CUDA, dtype, merger(dtype=dtype)) == "torch"
    with pytest.raises(ValueError, match="compute capability 7.5"):
        resolve_backend("triton", CUDA, dtype, merger(dtype=dtype))


def test_rocm_falls_back(fake_gpu):
    fake_gpu("H100", hip=True)
    assert resolve_backend("auto", CUDA, torch.bfloat16, merger()) == "torch"
    with pytest.raises(ValueError, match="not an NVIDIA GPU"):
        resolve_backend("triton", CUDA, torch.bfloat16, merger())


# Shared memory (bytes) of ahead-of-time builds for sm_90a with Triton 3.9
# (label_merge._triton.aot.compile_kernel): kernel, dtype, N, dim, heads, MLP width, rows, bytes.
MEASURED_SM90 = [
    ("forward", torch.bfloat16, 5, 16, 1, 64, 128, 4_608),
    ("mlp_backward", torch.bfloat16, 5, 16, 1, 64, 64, 12_288),
    ("attention_backward", torch.bfloat16, 5, 16, 1, 64, 64, 6_656),
    ("forward", torch.bfloat16, 5, 32, 1, 64, 128, 10_240),
    ("mlp_backward", torch.bfloat16, 5, 32, 1, 64, 64, 16_384),
    ("attention_backward", torch.bfloat16, 5, 32, 1, 64, 64, 14_336),
    ("forward", torch.bfloat16, 5, 64, 1, 64, 128, 24_576),
    ("mlp_backward", torch.bfloat16, 5, 64, 1, 64, 64, 24_576),
    ("attention_backward", torch.bfloat16, 5, 64, 1, 64, 64, 32_768),
    ("forward", torch.bfloat16, 5, 128, 1, 64, 128, 65_536),
    ("forward", torch.bfloat16, 5, 96, 3, 384, 64, 20_480),
    ("forward", torch.bfloat16, 5, 96, 3, 384, 128, 26_624),
    ("mlp_backward", torch.bfloat16, 5, 96, 3, 384, 64, 24_576),
    ("mlp_backward", torch.bfloat16, 5, 96, 3, 384, 128, 49_152),
    ("attention_backward", torch.bfloat16, 5, 96, 3, 384, 64, 36_864),
    ("attention_backward", torch.bfloat16, 5, 96, 3, 384, 128, 59_392),
    ("forward", torch.float32, 5, 96, 3, 384, 128, 40_960),
    ("mlp_backward", torch.float32, 5, 96, 3, 384, 64, 98_304),
    ("attention_backward", torch.float32, 5, 96, 3, 384, 64, 24_576),
    ("forward", torch.float32, 5, 128, 1, 64, 128, 262_144),
    ("mlp_backward", torch.float32, 5, 128, 1, 64, 64, 196_608),
    ("attention_backward", torch.float32, 5, 128, 1, 64, 64, 196_608),
]


@pytest.mark.parametrize("row", MEASURED_SM90, ids=lambda r: f"{r[0]}-{str(r[1])[6:]}-d{r[3]}h{r[4]}-m{r[6]}")
def test_shared_memory_estimate_bounds_measured_builds(row):
    pytest.importorskip("triton")
    from label_merge._triton.device import shared_memory_estimate
    from label_merge._triton.layout import StackShape

    kernel, dtype, tokens, dim, heads, hidden, block_m, measured = row
    estimate = shared_memory_estimate(
        StackShape(tokens, dim, heads, hidden), block_m=block_m, dot_dtype=dtype, kernel=kernel
    )
    assert measured <= estimate <= 7 * measured  # an upper bound, and not a useless one
