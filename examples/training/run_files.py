"""The files of a run folder that are not checkpoints: a writability check and the metrics log."""

from __future__ import annotations

import json
import os
import tempfile
import warnings
from pathlib import Path

__all__ = ["ensure_writable", "trim_metrics_log"]

# Bytes written (and synced) by the writability probe: enough to fail on a full disk.
_PROBE_BYTES = 64 * 1024


def ensure_writable(folder: str | os.PathLike) -> None:
    """Create ``folder`` if needed and check that a file can be written and synced there.

    A run calls this before it builds anything, so a read-only, missing or full output folder
    is reported at once rather than after minutes of data and model set-up.

    Args:
        folder: The run's output folder (``--out``).

    Raises:
        OSError: The folder cannot be created or written to; the message names ``--out``, the
            folder and the system's reason (e.g. "Read-only file system", "No space left on device").

    Example:
        >>> import tempfile
        >>> ensure_writable(Path(tempfile.mkdtemp()) / "run")
    """
    folder = Path(folder)
    try:
        folder.mkdir(parents=True, exist_ok=True)
        fd, probe = tempfile.mkstemp(prefix=".write_probe.", dir=folder)
        try:
            with os.fdopen(fd, "wb") as f:
                f.write(b"\0" * _PROBE_BYTES)
                f.flush()
                os.fsync(f.fileno())
        finally:
            os.unlink(probe)
    except OSError as err:
        reason = err.strerror or str(err)
        raise OSError(err.errno, f"--out {folder} cannot be written to: {reason}") from err


def trim_metrics_log(log: str | os.PathLike, step: int) -> None:
    """Keep the records of ``metrics.jsonl`` up to ``step``, dropping lines that cannot be read.

    A run killed after its last checkpoint has logged steps that the resumed run repeats, so
    those records go. A run killed while writing a record leaves a torn last line; it is
    dropped with a warning that names the file, as is any other line that is not a record
    (the log is a record of the run, never needed to continue it).

    Args:
        log: The ``metrics.jsonl`` file (missing is fine).
        step: The step the run continues from.

    Warns:
        UserWarning: Lines were dropped because they could not be read; names the file and
            the line numbers.

    Example:
        >>> import tempfile
        >>> log = Path(tempfile.mkdtemp()) / "metrics.jsonl"
        >>> _ = log.write_text('{"step": 1}\\n{"step": 2}\\n')
        >>> trim_metrics_log(log, 1)
        >>> log.read_text()
        '{"step": 1}\\n'
    """
    log = Path(log)
    if not log.exists():
        return
    kept, unreadable = [], []
    lines = log.read_text(encoding="utf-8", errors="replace").splitlines()
    for number, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            record_step = json.loads(line)["step"]
            if isinstance(record_step, bool) or not isinstance(record_step, int):
                raise TypeError
        except (ValueError, KeyError, TypeError):  # json.JSONDecodeError is a ValueError
            unreadable.append(number)
            continue
        if record_step <= step:
            kept.append(line)
    if unreadable:
        torn = unreadable == [len(lines)]
        why = "a run stopped while writing it" if torn else "not a metrics record"
        warnings.warn(
            f"{log}: dropped unreadable line(s) {unreadable} of {len(lines)} ({why})", UserWarning, stacklevel=2
        )
    temporary = log.with_name(log.name + ".tmp")
    temporary.write_text("".join(line + "\n" for line in kept), encoding="utf-8")
    os.replace(temporary, log)
