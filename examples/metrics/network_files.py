"""Saving the project's small metric networks to ``.safetensors`` files, and finding them in the cache.

The small segmenter and the label estimator are stored the same way: their tensors, and a
header of strings naming the file format, the architecture (each value JSON-encoded, so an int
reads ``"16"``) and the extra information under ``extra``. Both are trained once and cached
under a name that ends in a hash of everything that changes the trained network.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Callable, Mapping
from pathlib import Path

from torch import nn

__all__ = ["save_network", "load_network", "cached_network_path", "save_atomically"]


def save_network(
    model: nn.Module, path: str | os.PathLike, *, file_format: str, architecture: Mapping, metadata: Mapping | None
) -> None:
    """Write ``model``'s weights with a header of its format, architecture and extra information.

    Args:
        model: The network.
        path: Output file.
        file_format: The header's ``format`` value, which :func:`load_network` checks.
        architecture: What rebuilds the network (JSON-serialisable values), in header order.
        metadata: Extra JSON-serialisable information, stored under ``extra``.

    Example:
        >>> import tempfile, pathlib, torch
        >>> path = pathlib.Path(tempfile.mkdtemp()) / "net.safetensors"
        >>> save_network(torch.nn.Linear(2, 3), path, file_format="demo", architecture={"out": 3}, metadata=None)
        >>> load_network(path, file_format="demo", kind_name="Linear", missing_name="linear",
        ...              build=lambda arch: torch.nn.Linear(2, arch["out"])).metadata
        {}
    """
    from safetensors.torch import save_file

    header = {
        "format": file_format,
        **{key: json.dumps(value) for key, value in architecture.items()},
        "extra": json.dumps(dict(metadata or {})),
    }
    tensors = {key: value.detach().to("cpu").contiguous() for key, value in model.state_dict().items()}
    save_file(tensors, os.fspath(path), metadata=header)


def load_network(
    path: str | os.PathLike,
    *,
    file_format: str,
    kind_name: str,
    missing_name: str,
    build: Callable[[dict], nn.Module],
) -> nn.Module:
    """Rebuild a network from a file written by :func:`save_network`.

    Args:
        path: The ``.safetensors`` file.
        file_format: The ``format`` the header must name.
        kind_name: The network's class name, for the wrong-format error.
        missing_name: What the weights are called in the file-not-found error.
        build: Makes the untrained network from the decoded header (every key but ``format`` and
            ``extra``, JSON-decoded).

    Returns:
        The network (on the CPU, in the mode ``build`` left it); ``model.metadata`` holds the extra
        information.

    Raises:
        FileNotFoundError: If the file does not exist.
        ValueError: If its format is not ``file_format`` or its tensors do not fit the architecture.
    """
    from safetensors import safe_open
    from safetensors.torch import load_file

    path = os.fspath(path)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"{missing_name} weights not found: {path!r}")
    with safe_open(path, framework="pt") as handle:
        header = handle.metadata() or {}
    if header.get("format") != file_format:
        raise ValueError(
            f"{path!r} is not a {kind_name} file (format {header.get('format')!r}, expected {file_format!r})"
        )
    architecture = {key: json.loads(value) for key, value in header.items() if key not in ("format", "extra")}
    model = build(architecture)
    try:
        model.load_state_dict(load_file(path, device="cpu"))
    except RuntimeError as error:
        raise ValueError(f"{path!r}: weights do not fit the saved architecture: {error}") from error
    model.metadata = json.loads(header.get("extra", "{}"))
    return model


def cached_network_path(cache_dir: str | os.PathLike, folder: str, stem: str, key: Mapping) -> Path:
    """``<cache_dir>/<folder>/<stem>-<hash>.safetensors``, the hash the first 12 hex digits of the key's SHA-1.

    The key is hashed as JSON with sorted keys, so any change of what trains the network names a new file.

    Example:
        >>> cached_network_path("/tmp/c", "nets", "net-32x32", {"steps": 1}).name
        'net-32x32-15ce96abaa22.safetensors'
    """
    digest = hashlib.sha1(json.dumps(key, sort_keys=True).encode()).hexdigest()[:12]
    return Path(cache_dir) / folder / f"{stem}-{digest}.safetensors"


def save_atomically(path: Path, write: Callable[[Path], None]) -> None:
    """Call ``write`` on a temporary file next to ``path``, then move it into place.

    A reader never sees a half-written file; concurrent writers of equivalent files are harmless
    (the last one wins).
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        write(temporary)
        os.replace(temporary, path)
    finally:
        temporary.unlink(missing_ok=True)
