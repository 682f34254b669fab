"""``python -m label_merge``: the version, which backends run on this machine and why, and a self-check.

The self-check runs one TLAM on the paper's five labels forward and backward on a few pixels, with the
reference and with the fused Triton path, and compares both with a float64 reference run. The
fused path runs compiled on a CUDA device when there is one, else in Triton's interpreter on the
CPU. The interpreter must be switched on (``TRITON_INTERPRET=1``) before Triton is first imported,
and a process that has compiled kernels cannot interpret them, so the interpreter check runs in a
child process (``python -m label_merge._selfcheck``) that prints its result as one JSON line.
"""

from __future__ import annotations

import argparse
import copy
import importlib.metadata
import json
import os
import platform
import subprocess
import sys
from dataclasses import asdict, dataclass
from pathlib import Path

import torch

import label_merge
from label_merge import TLAM, LabelSpec
from label_merge.backend import ENV_VAR, resolve_backend, triton_unavailable_reasons

__all__ = ["main", "parity_check", "fused_path_reasons", "auto_choices", "ParityResult"]

# The paper's merger (Sec. 4.2): five labels, dim 96, 3 blocks of 3 heads, MLP ratio 4.
PAPER_SPECS = {
    "semantic": LabelSpec.categorical(num_classes=18, ignore_index=0),
    "depth": LabelSpec.continuous(1),
    "normal": LabelSpec.continuous(3),
    "edge": LabelSpec.continuous(1),
    "curvature": LabelSpec.continuous(2),
}
PAPER_SIZES = {"dim": 96, "depth": 3, "heads": 3, "mlp_ratio": 4.0}
# The interpreter runs the same kernels at smaller sizes: the paper's take it several times longer.
# One block runs every kernel (forward, MLP backward, attention backward); a second block would
# run them again and add half a second of CPU time (the chaining of blocks is in the tests).
INTERPRETER_SIZES = {"dim": 32, "depth": 1, "heads": 2, "mlp_ratio": 2.0}
CHECK_BATCH, CHECK_SIZE = 1, 4  # 16 pixels: one kernel tile, seconds in the interpreter
# Float32 parity: the fused error against float64 may be twice the reference's, or this much.
FLOAT32_TOLERANCE = 1e-5
DTYPES = (torch.float32, torch.bfloat16, torch.float16)
INTERPRETER_PATH = "Triton interpreter (CPU)"


@dataclass
class ParityResult:
    """Relative errors against a float64 reference run (norm-wise, worst over output and gradients).

    Attributes:
        path: What ran the fused kernels, e.g. ``"Triton interpreter (CPU)"``.
        sizes: The TLAM's ``dim``, ``depth``, ``heads`` and ``mlp_ratio``.
        reference_error: Error of the float32 PyTorch reference.
        fused_error: Error of the float32 fused path.
        tolerance: Largest fused error accepted.
        skipped: Why the fused path did not run (None when it ran).
        crashed: The check itself failed with an error (in the interpreter's child process).
    """

    path: str
    sizes: dict
    reference_error: float = float("nan")
    fused_error: float = float("nan")
    tolerance: float = float("nan")
    skipped: str | None = None
    crashed: bool = False

    @property
    def passed(self) -> bool:
        return self.skipped is None and self.fused_error <= self.tolerance


def seeded_merger(device: torch.device, sizes: dict) -> TLAM:
    """A TLAM on the paper's five labels with these sizes and a fixed seed."""
    torch.manual_seed(0)
    return TLAM(PAPER_SPECS, **sizes).to(device)


def _inputs(device: torch.device) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
    """Labels for every spec, masks with missing pixels, and NaN where a label is missing."""
    gen = torch.Generator().manual_seed(1)
    shape = (CHECK_BATCH, CHECK_SIZE, CHECK_SIZE)
    labels, masks = {}, {}
    for name, spec in PAPER_SPECS.items():
        if spec.kind == "categorical":
            labels[name] = torch.randint(0, spec.channels, shape, generator=gen)
        else:
            labels[name] = torch.randn(CHECK_BATCH, spec.channels, CHECK_SIZE, CHECK_SIZE, generator=gen)
            masks[name] = torch.rand(shape, generator=gen) > 0.3
            labels[name][~masks[name].unsqueeze(1).expand_as(labels[name])] = float("nan")  # must never leak
    return {k: v.to(device) for k, v in labels.items()}, {k: v.to(device) for k, v in masks.items()}


def _forward_backward(merger: TLAM, labels, masks) -> list[torch.Tensor]:
    """The concept and the gradient of every parameter for one fixed upstream gradient."""
    merger.zero_grad(set_to_none=True)
    concept = merger(labels, masks)  # (B, dim, H, W)
    upstream = torch.randn(concept.shape, generator=torch.Generator().manual_seed(2), dtype=torch.float64)
    concept.backward(upstream.to(device=concept.device, dtype=concept.dtype))
    grads = [p.grad if p.grad is not None else torch.zeros_like(p) for p in merger.parameters()]
    return [concept.detach(), *grads]


def _worst_error(values: list[torch.Tensor], truths: list[torch.Tensor]) -> float:
    worst = 0.0
    for value, truth in zip(values, truths, strict=True):
        truth = truth.double().cpu()
        error = (value.double().cpu() - truth).norm() / truth.norm().clamp_min(1e-30)
        worst = max(worst, error.item())
    return worst


def parity_check(device: torch.device, path: str, sizes: dict) -> ParityResult:
    """Compare the float32 reference and fused paths with a float64 reference on ``device``.

    Args:
        device: Where the merger runs: ``cuda`` (compiled kernels) or ``cpu`` (the interpreter,
            which needs ``TRITON_INTERPRET=1`` set before Triton was imported).
        path: A name for the report.
        sizes: Keyword arguments of :class:`TLAM` (``dim``, ``depth``, ``heads``, ``mlp_ratio``).

    Returns:
        The errors; ``skipped`` holds the reasons when the fused path cannot run (the
        reference is checked all the same).
    """
    merger = seeded_merger(device, sizes)
    labels, masks = _inputs(device)
    merger64 = copy.deepcopy(merger).double()
    merger64.backend = "torch"
    labels64 = {k: v.double() if v.is_floating_point() else v for k, v in labels.items()}
    truth = _forward_backward(merger64, labels64, masks)
    merger.backend = "torch"
    reference_error = _worst_error(_forward_backward(merger, labels, masks), truth)
    reasons = triton_unavailable_reasons(device, torch.float32, merger)
    if reasons:
        return ParityResult(path, sizes, reference_error, skipped="; ".join(reasons))
    merger.backend = "triton"
    fused_error = _worst_error(_forward_backward(merger, labels, masks), truth)
    tolerance = max(2 * reference_error, FLOAT32_TOLERANCE)
    return ParityResult(path, sizes, reference_error, fused_error, tolerance)


def _interpreter_parity() -> ParityResult:
    """Run :func:`parity_check` in Triton's interpreter in a child process."""
    package_root = str(Path(label_merge.__file__).resolve().parent.parent)
    env = {**os.environ, "TRITON_INTERPRET": "1"}
    env.pop(ENV_VAR, None)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (package_root, env.get("PYTHONPATH")) if p)
    done = subprocess.run(
        [sys.executable, "-m", "label_merge._selfcheck"], capture_output=True, text=True, env=env, check=False
    )
    if done.returncode != 0:
        print(done.stdout + done.stderr, file=sys.stderr)
        skipped = f"the check crashed (exit code {done.returncode}, its output is above)"
        return ParityResult(INTERPRETER_PATH, INTERPRETER_SIZES, skipped=skipped, crashed=True)
    return ParityResult(**json.loads(done.stdout.strip().splitlines()[-1]))


def _version(distribution: str) -> str:
    try:
        return importlib.metadata.version(distribution)
    except importlib.metadata.PackageNotFoundError:
        return "not installed"


def _describe_cuda() -> str:
    if not torch.cuda.is_available():
        build = f"CUDA {torch.version.cuda}" if torch.version.cuda else "a CPU-only build"
        return f"no CUDA device visible to PyTorch ({build})"
    index = torch.cuda.current_device()
    major, minor = torch.cuda.get_device_capability(index)
    vendor = "ROCm/HIP" if torch.version.hip else "NVIDIA CUDA"
    return f"{torch.cuda.get_device_name(index)} ({vendor}, capability {major}.{minor})"


def fused_path_reasons(device: torch.device) -> dict[str, list[str]]:
    """Per dtype, every reason the fused kernels cannot run a paper-sized TLAM on ``device``.

    Args:
        device: A CUDA device (or the CPU under ``TRITON_INTERPRET=1``).

    Returns:
        ``{"float32": [...], "bfloat16": [...], "float16": [...]}``; an empty list means usable.
    """
    merger = seeded_merger(device, PAPER_SIZES)
    return {
        str(dtype).removeprefix("torch."): triton_unavailable_reasons(device, dtype, merger.to(dtype))
        for dtype in DTYPES
    }


def _triton_lines() -> list[str]:
    """Whether the fused kernels can run: per dtype on CUDA, or why not; and the CPU interpreter."""
    if not torch.cuda.is_available():
        reasons = ["there is no CUDA device"]
        if _version("triton") == "not installed":
            reasons.append("Triton is not installed (pip install 'label-merge[triton]')")
        lines = ["  triton   not usable on CUDA: " + "; ".join(reasons)]
    else:
        per_dtype = fused_path_reasons(torch.device("cuda", torch.cuda.current_device()))
        lines = [
            f"  triton   {name}: " + ("usable" if not reasons else "not usable: " + "; ".join(reasons))
            for name, reasons in per_dtype.items()
        ]
    if os.environ.get("TRITON_INTERPRET") == "1" and _version("triton") != "not installed":
        lines.append("  triton   on CPU tensors: in Triton's interpreter (TRITON_INTERPRET=1), far slower than torch")
    return lines


def _auto_choice(device: torch.device, dtype: torch.dtype, merger: TLAM) -> str:
    """What a merger with ``backend="auto"`` runs for these tokens, decided as its forward decides."""
    try:
        return resolve_backend("auto", device, dtype, merger)
    except ValueError as error:  # LABEL_MERGE_BACKEND names no backend, or one that cannot run
        return f"raises ValueError: {error}"


def auto_choices() -> dict[str, dict[str, str]]:
    """``{device: {dtype: choice}}`` for a paper-sized TLAM with ``backend="auto"``, on the CPU and the
    current CUDA device (if any), honouring ``LABEL_MERGE_BACKEND`` as a forward pass does.

    A choice is ``"torch"``, ``"triton"`` or ``"raises ValueError: <why>"``.
    """
    devices = [torch.device("cuda", torch.cuda.current_device())] if torch.cuda.is_available() else []
    choices = {}
    for device in [*devices, torch.device("cpu")]:
        merger = seeded_merger(device, PAPER_SIZES)
        name = "CUDA" if device.type == "cuda" else "CPU"
        choices[name] = {
            str(dtype).removeprefix("torch."): _auto_choice(device, dtype, merger.to(dtype)) for dtype in DTYPES
        }
    return choices


def _describe(choice: str, dtypes: list[str]) -> str:
    if choice.startswith("raises"):
        return f"raises ValueError for {', '.join(dtypes)} ({choice.removeprefix('raises ValueError: ')})"
    return f"{choice} for {', '.join(dtypes)}"


def _auto_lines(choices: dict[str, dict[str, str]]) -> list[str]:
    """One line when every device and dtype gets the same choice, else one line per device."""
    env = os.environ.get(ENV_VAR, "").strip()
    source = f" ({ENV_VAR}={env})" if env else ""
    distinct = {choice for per_dtype in choices.values() for choice in per_dtype.values()}
    if len(distinct) == 1:
        (choice,) = distinct
        if choice.startswith("raises"):
            return [f"  auto     raises ValueError for every input here: {choice.removeprefix('raises ValueError: ')}"]
        return [f"  auto     runs {choice} here{source}"]
    lines = []
    for device, per_dtype in choices.items():
        by_choice: dict[str, list[str]] = {}
        for dtype, choice in per_dtype.items():
            by_choice.setdefault(choice, []).append(dtype)
        parts = [_describe(choice, dtypes) for choice, dtypes in by_choice.items()]
        lines.append(f"  auto     on {device} tensors{source}: " + "; ".join(parts))
    return lines


def _auto_never_runs(choices: dict[str, dict[str, str]]) -> bool:
    return all(choice.startswith("raises") for per_dtype in choices.values() for choice in per_dtype.values())


def report_header(choices: dict[str, dict[str, str]] | None = None) -> list[str]:
    """Versions, devices and the backends this machine can run (``choices``: :func:`auto_choices`)."""
    choices = auto_choices() if choices is None else choices
    env = {name: os.environ.get(name, "unset") for name in (ENV_VAR, "TRITON_INTERPRET")}
    return [
        f"label-merge {label_merge.__version__} ({Path(label_merge.__file__).parent})",
        f"Python {platform.python_version()}, torch {torch.__version__}, einops {_version('einops')}, "
        f"triton {_version('triton')}",
        "Device: " + _describe_cuda(),
        "Environment: " + ", ".join(f"{k}={v}" for k, v in env.items()),
        "",
        "Backends (for a TLAM at the paper's sizes: 5 labels, dim 96, 3 blocks, 3 heads):",
        "  torch    usable on every device: the PyTorch reference",
        *_triton_lines(),
        *_auto_lines(choices),
    ]


def _parity_line(result: ParityResult) -> str:
    if result.skipped is not None:
        return f"  fused path, {result.path}: not run: {result.skipped}"
    verdict = "ok" if result.passed else "FAILED"
    return (
        f"  fused path, {result.path}: error {result.fused_error:.1e} "
        f"(reference {result.reference_error:.1e}, limit {result.tolerance:.1e}): {verdict}"
    )


def main(argv: list[str] | None = None) -> int:
    """Print the report and run the self-check; 0 when every check that ran passed, else 1."""
    parser = argparse.ArgumentParser(
        prog="python -m label_merge",
        description="Print the version and the backends this machine can run, then self-check TLAM.",
    )
    parser.add_argument("--no-check", action="store_true", help="skip the self-check")
    args = parser.parse_args(argv)
    choices = auto_choices()
    print("\n".join(report_header(choices)))
    # A misspelt LABEL_MERGE_BACKEND, or "triton" where it cannot run, breaks every default merger.
    auto_ok = not _auto_never_runs(choices)
    if not auto_ok:
        print(f"Every merger with backend='auto' raises here: correct or unset {ENV_VAR}.")
    if args.no_check:
        return 0 if auto_ok else 1
    print()
    if torch.cuda.is_available():
        result = parity_check(torch.device("cuda", torch.cuda.current_device()), "compiled on CUDA", PAPER_SIZES)
    else:
        result = _interpreter_parity()
    sizes = ", ".join(f"{k} {v}" for k, v in result.sizes.items())
    print(
        f"Self-check: a TLAM on the five labels ({sizes}), forward and backward on "
        f"{CHECK_BATCH}x{CHECK_SIZE}x{CHECK_SIZE} pixels with missing labels, float32, against float64:"
    )
    reference_ok = result.reference_error <= FLOAT32_TOLERANCE  # False for NaN
    if not result.crashed:
        verdict = "ok" if reference_ok else "FAILED"
        print(f"  reference: error {result.reference_error:.1e} (limit {FLOAT32_TOLERANCE:.0e}): {verdict}")
    print(_parity_line(result))
    fused_ok = result.passed or (result.skipped is not None and not result.crashed)
    print("Self-check passed." if reference_ok and fused_ok else "Self-check FAILED.")
    return 0 if reference_ok and fused_ok and auto_ok else 1


def _interpreter_worker() -> int:
    """The child process: parity in Triton's interpreter, printed as one JSON line."""
    result = parity_check(torch.device("cpu"), INTERPRETER_PATH, INTERPRETER_SIZES)
    print(json.dumps(asdict(result)))
    return 0


if __name__ == "__main__":
    raise SystemExit(_interpreter_worker())
