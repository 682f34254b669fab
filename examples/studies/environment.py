"""The machine a study runs on: CPU threads, a record of hardware and versions, JSON files.

Every study writes what it ran on next to its numbers (:func:`machine_info`), writes its JSON
atomically (:func:`write_json`, so a killed run never leaves half a file that a resumed run would
trust), and keeps reusable artefacts (rendered scenes, trained segmenters) under one cache folder
(:func:`default_cache_dir`).
"""

from __future__ import annotations

import json
import math
import os
import platform
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import torch

__all__ = ["CACHE_ENV", "configure_cpu", "default_cache_dir", "machine_info", "read_json", "write_json", "utc_now"]

CACHE_ENV = "LABEL_MERGE_CACHE"


def default_cache_dir() -> Path:
    """``$LABEL_MERGE_CACHE``, else ``~/.cache/label-merge``: where trained segmenters are kept.

    Example:
        >>> isinstance(default_cache_dir(), Path)
        True
    """
    value = os.environ.get(CACHE_ENV)
    return Path(value).expanduser() if value else Path.home() / ".cache" / "label-merge"


def configure_cpu(threads: int | None) -> None:
    """Set the number of CPU intra-op threads.

    On the shared 2-core test machine, two threads made a training step 20 to 36 times
    slower than one whenever other processes were busy (the threads wait for each other), and at
    best 20% faster when the machine was idle; one thread is the safe choice there.

    Args:
        threads: Intra-op threads, or None to keep PyTorch's default.

    Raises:
        ValueError: ``threads`` below 1.

    Example:
        >>> configure_cpu(None)
    """
    if threads is None:
        return
    if isinstance(threads, bool) or not isinstance(threads, int) or threads < 1:
        raise ValueError(f"threads must be a positive int or None, got {threads!r}")
    torch.set_num_threads(threads)


def machine_info(device: torch.device | str = "cpu") -> dict:
    """Hardware, library versions and load of this machine, for the record next to results.

    Example:
        >>> {"cpu", "torch", "label_merge"} <= set(machine_info())
        True
    """
    import label_merge

    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as fh:
            names = [line.split(":", 1)[1].strip() for line in fh if line.startswith("model name")]
        cpu = names[0] if names else cpu
    except OSError:
        pass
    device = torch.device(device)
    cuda = torch.cuda.get_device_name(device) if device.type == "cuda" else None
    try:
        load = list(os.getloadavg())
    except OSError:  # not on every platform
        load = None
    return {
        "cpu": cpu,
        "logical_cpus": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "device": str(device),
        "cuda_device": cuda,
        "platform": platform.platform(),
        "python": platform.python_version(),
        "numpy": np.__version__,
        "torch": torch.__version__,
        "label_merge": label_merge.__version__,
        # Other processes slow a shared machine down; this says how busy it was.
        "load_average_1_5_15min": load,
    }


def utc_now() -> str:
    """The current time, ISO 8601 in UTC, to the second."""
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


def _plain(value):
    """JSON-able copy: tuples to lists, numpy scalars to Python, non-finite floats to None."""
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def write_json(path: str | os.PathLike, data) -> Path:
    """Write ``data`` as indented JSON, atomically (temporary file, then rename).

    Non-finite floats become ``null``, so the file is strict JSON.

    Example:
        >>> import tempfile
        >>> p = write_json(Path(tempfile.mkdtemp()) / "a.json", {"x": (1, float("nan"))})
        >>> p.read_text().split()
        ['{', '"x":', '[', '1,', 'null', ']', '}']
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        temporary.write_text(json.dumps(_plain(data), indent=1, allow_nan=False) + "\n")
        os.replace(temporary, path)
    finally:
        temporary.unlink(missing_ok=True)
    return path


def read_json(path: str | os.PathLike):
    """The content of a JSON file, or None if it does not exist.

    Raises:
        ValueError: The file exists but is not valid JSON (the message names it).
    """
    path = Path(path)
    if not path.is_file():
        return None
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as err:
        raise ValueError(f"{path} is not valid JSON ({err}); delete it to start that part again") from err
