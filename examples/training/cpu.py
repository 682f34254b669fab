"""What the CPU can do: its vector extensions, whether it has native bfloat16, its fp32 peak.

Read from ``/proc/cpuinfo`` on Linux. The parsers take the file's text, so they can be checked on
any machine with made-up text; elsewhere (macOS, Windows) the text is empty and every feature
reads as absent.
"""

from __future__ import annotations

import ctypes
import os
import re
from dataclasses import asdict, dataclass
from pathlib import Path

import torch

__all__ = [
    "CpuInfo",
    "VECTOR_FLAGS",
    "NATIVE_BF16_FLAGS",
    "read_cpu_info",
    "parse_cpu_info",
    "resolve_amp",
    "fp32_peak_gflops",
    "keep_freed_memory",
]

CPUINFO = Path("/proc/cpuinfo")

# The flags that decide how fast fp32 and bf16 matrix work can go, in the order reports list them.
VECTOR_FLAGS = ("avx", "fma", "avx2", "avx512f", "avx512_vnni", "avx512_bf16", "amx_tile", "amx_bf16", "amx_int8")
# Either gives bf16 matrix products in hardware; without them oneDNN emulates bf16 through fp32,
# which is slower than fp32 itself.
NATIVE_BF16_FLAGS = ("amx_bf16", "avx512_bf16")


@dataclass(frozen=True)
class CpuInfo:
    """The parts of ``/proc/cpuinfo`` that speed depends on.

    Attributes:
        model: The ``model name`` line, or ``"unknown"``.
        flags: Every flag of the first processor entry.
        mhz: The ``cpu MHz`` line (the current clock, which may be below the nominal one), or None.
        nominal_ghz: The clock in the model name (``... @ 2.30GHz``), or None.
    """

    model: str
    flags: frozenset[str]
    mhz: float | None = None
    nominal_ghz: float | None = None

    @property
    def vector_flags(self) -> list[str]:
        """The flags of :data:`VECTOR_FLAGS` this CPU has."""
        return [f for f in VECTOR_FLAGS if f in self.flags]

    @property
    def native_bf16(self) -> bool:
        """Whether bf16 matrix products run in hardware (AMX-BF16 or AVX512-BF16)."""
        return any(f in self.flags for f in NATIVE_BF16_FLAGS)

    def to_dict(self) -> dict:
        d = asdict(self)
        d["flags"] = self.vector_flags  # the full list is long and says nothing about speed
        d["native_bf16"] = self.native_bf16
        return d


def parse_cpu_info(text: str) -> CpuInfo:
    """Read the first processor entry of ``/proc/cpuinfo`` text.

    Example:
        >>> info = parse_cpu_info("model name : AMD EPYC 7B12\\ncpu MHz : 2250.000\\nflags : fpu avx avx2 fma\\n")
        >>> info.model, info.vector_flags, info.native_bf16
        ('AMD EPYC 7B12', ['avx', 'fma', 'avx2'], False)
    """
    first = text.split("\n\n", 1)[0]  # one entry per logical CPU; they agree on what is read here
    fields: dict[str, str] = {}
    for line in first.splitlines():
        key, sep, value = line.partition(":")
        if sep:
            fields.setdefault(key.strip(), value.strip())
    model = fields.get("model name", "unknown")
    mhz = _number(fields.get("cpu MHz"))
    match = re.search(r"@\s*([0-9.]+)\s*GHz", model)
    return CpuInfo(
        model=model,
        flags=frozenset(fields.get("flags", "").split()),
        mhz=mhz,
        nominal_ghz=float(match.group(1)) if match else None,
    )


def _number(text: str | None) -> float | None:
    try:
        return float(text) if text else None
    except ValueError:
        return None


def read_cpu_info(path: str | os.PathLike = CPUINFO) -> CpuInfo:
    """This machine's :class:`CpuInfo`; an empty one where ``path`` cannot be read."""
    try:
        text = Path(path).read_text()
    except OSError:
        text = ""
    return parse_cpu_info(text)


def resolve_amp(setting: bool | str, device: torch.device, cpu: CpuInfo | None = None) -> tuple[bool, str]:
    """Turn ``--amp`` (on, off or auto) into on or off for ``device``, with the reason.

    ``auto`` turns bfloat16 autocast on only where it is native: a CUDA device that supports
    bf16, or a CPU with AMX-BF16 or AVX512-BF16. On a CPU without them bf16 is emulated and
    slower than fp32, so auto keeps fp32.

    Args:
        setting: True, False or ``"auto"``.
        device: The device the run trains on.
        cpu: The CPU's features (read from ``/proc/cpuinfo`` when None).

    Returns:
        ``(enabled, reason)``.

    Raises:
        ValueError: Any other setting.

    Example:
        >>> avx2_only = parse_cpu_info("flags : avx avx2 fma")
        >>> resolve_amp("auto", torch.device("cpu"), avx2_only)
        (False, 'auto: off, the CPU has no native bf16 (neither amx_bf16 nor avx512_bf16)')
        >>> resolve_amp("auto", torch.device("cpu"), parse_cpu_info("flags : avx512f avx512_bf16"))
        (True, 'auto: on, the CPU has native bf16 (avx512_bf16)')
    """
    if setting is True or setting is False:
        return setting, f"{'on' if setting else 'off'}, as asked"
    if setting != "auto":
        raise ValueError(f"--amp must be on, off or auto, got {setting!r}")
    if device.type == "cuda":
        supported = torch.cuda.is_bf16_supported()
        return supported, f"auto: {'on' if supported else 'off'}, the GPU {'supports' if supported else 'lacks'} bf16"
    if device.type != "cpu":
        return False, f"auto: off, bf16 autocast is not chosen automatically on {device.type}"
    cpu = cpu or read_cpu_info()
    native = [f for f in NATIVE_BF16_FLAGS if f in cpu.flags]
    if native:
        return True, f"auto: on, the CPU has native bf16 ({', '.join(native)})"
    return False, f"auto: off, the CPU has no native bf16 (neither {' nor '.join(NATIVE_BF16_FLAGS)})"


def fp32_lanes_per_fma(cpu: CpuInfo) -> int:
    """fp32 numbers one FMA instruction works on: 16 with AVX-512, 8 with AVX2/FMA, 4 otherwise (SSE)."""
    if "avx512f" in cpu.flags:
        return 16
    if "fma" in cpu.flags or "avx2" in cpu.flags:
        return 8
    return 4


def fp32_peak_gflops(cpu: CpuInfo, cores: int, ghz: float, fma_units: int = 2) -> float:
    """An estimate of the fp32 peak: ``cores x GHz x lanes x 2 FLOP per FMA x FMA units``.

    The flags give the vector width but not how many FMA units a core has; two is right for
    every x86 server core of the last decade with AVX2 (Haswell on, Zen on) and for most Xeons
    with AVX-512 (some have one, which halves the peak). ``cores`` should count physical cores,
    or the vCPUs a cloud machine gives (each is usually a hyperthread sharing a core's units,
    so this is an upper bound there).

    Example:
        >>> fp32_peak_gflops(parse_cpu_info("flags : avx2 fma"), cores=2, ghz=2.0)
        128.0
    """
    return cores * ghz * fp32_lanes_per_fma(cpu) * 2 * fma_units


# glibc's mallopt parameters (malloc.h) and the size up to which freed blocks stay in the heap.
_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD = -1, -3
REUSE_UP_TO = 1 << 30


def keep_freed_memory(up_to: int = REUSE_UP_TO) -> tuple[bool, str]:
    """Make glibc's malloc keep freed blocks up to ``up_to`` bytes for reuse; returns ``(done, why)``.

    By default glibc serves a block above 32 MiB with its own ``mmap`` and unmaps it when it is
    freed, so each such tensor (TLAM's MLP activations at the demo size are 42 MiB) comes back
    as fresh pages that the kernel faults in and zeroes on first touch: a 42 MiB elementwise
    product took 22 ms instead of 8. With the mmap and trim thresholds raised, freed blocks stay
    in the heap and the next step reuses them. Nothing computed changes; the process keeps up
    to ``up_to`` bytes of freed memory instead of returning it to the system. Process-wide and
    not undone.

    Elsewhere (macOS, Windows, musl) nothing is changed and ``why`` says so.
    """
    try:
        libc = ctypes.CDLL(None)  # the C library this process already uses
        get_version = libc.gnu_get_libc_version  # glibc only
        mallopt = libc.mallopt
    except (OSError, AttributeError, TypeError):
        return False, "unchanged: the C library is not glibc"
    get_version.restype = ctypes.c_char_p
    glibc = get_version().decode()
    mallopt.argtypes = (ctypes.c_int, ctypes.c_int)
    if not (mallopt(_M_MMAP_THRESHOLD, up_to) and mallopt(_M_TRIM_THRESHOLD, up_to)):
        return False, f"unchanged: glibc {glibc} refused the thresholds"
    return True, f"reuse: glibc {glibc} keeps freed blocks up to {up_to >> 20} MiB in the heap"
