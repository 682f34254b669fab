"""Checkpoints as single safetensors files, written atomically, that resume a run exactly.

One file holds the weights of every module, the optimizer states, the random number generator
states, the step and the run's configuration (as JSON in the safetensors metadata), so nothing
is unpickled on load. A file is written under a temporary name in the same folder and renamed
into place, so a run killed mid-write leaves the previous checkpoint intact and never a partial
``step_*.safetensors``.

The metadata also holds a SHA-256 digest of every tensor (its dtype, shape and bytes) and one of
the metadata itself, checked on every load, so a file damaged on disk or in transfer is refused
with the name of the file and of the damaged tensor instead of resuming from wrong numbers.
"""

from __future__ import annotations

import hashlib
import json
import os
import random
import re
import warnings
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import load_file, save_file

from label_merge.normalization import normalization_load_hints

__all__ = [
    "CheckpointError",
    "Checkpoint",
    "save_checkpoint",
    "load_checkpoint",
    "load_checkpoint_config",
    "latest_checkpoint",
    "read_checkpoint_info",
    "verify_checkpoint",
    "find_resumable_checkpoint",
    "set_aside",
    "remove_stale_temporaries",
]

FORMAT = "label-merge-checkpoint/2"  # /2 added the digests
UNVERIFIABLE_FORMAT = "label-merge-checkpoint/1"  # still read, with a warning that nothing is checked
NAME = re.compile(r"step_(\d+)\.safetensors$")
# ".step_00000200.safetensors.12345.tmp": a checkpoint that process 12345 is writing.
TEMPORARY = re.compile(r"^\.step_\d+\.safetensors\.(\d+)\.tmp$")
SET_ASIDE_SUFFIX = ".corrupt"


class CheckpointError(RuntimeError):
    """A checkpoint file that cannot be read, or does not fit the run it is loaded into."""


@dataclass
class Checkpoint:
    """What :func:`load_checkpoint` returns besides restoring modules and optimizers in place."""

    path: Path
    step: int
    config: dict


def _unwrap(module: torch.nn.Module) -> torch.nn.Module:
    """The module inside a DistributedDataParallel or torch.compile wrapper."""
    module = getattr(module, "_orig_mod", module)
    return getattr(module, "module", module)


def _cpu_unshared(tensors: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Contiguous CPU copies; safetensors refuses tensors that share memory."""
    out, seen = {}, set()
    for key, t in tensors.items():
        t = t.detach().cpu().contiguous()
        if t.numel() and t.data_ptr() in seen:
            t = t.clone()
        seen.add(t.data_ptr())
        out[key] = t
    return out


def tensor_digest(tensor: torch.Tensor) -> str:
    """SHA-256 of a CPU tensor's dtype, shape and bytes, as hex."""
    h = hashlib.sha256(f"{tensor.dtype}|{tuple(tensor.shape)}|".encode())
    flat = tensor.detach().cpu().contiguous().reshape(-1)  # (numel,)
    h.update(memoryview(flat.view(torch.uint8).numpy()))  # (numel * itemsize,) raw bytes, any dtype
    return h.hexdigest()


def _metadata_digest(meta: Mapping[str, str]) -> str:
    """SHA-256 of every metadata entry but this digest (which covers the tensor digests too)."""
    body = {k: v for k, v in meta.items() if k != "metadata_digest"}
    return hashlib.sha256(json.dumps(body, sort_keys=True).encode()).hexdigest()


def _rng_state() -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    tensors = {"rng/torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        for i, state in enumerate(torch.cuda.get_rng_state_all()):
            tensors[f"rng/cuda/{i}"] = state
    kind, keys, pos, has_gauss, cached = np.random.get_state()
    meta = {
        "rng_python": json.dumps(random.getstate()),
        "rng_numpy": json.dumps([kind, keys.tolist(), pos, has_gauss, cached]),
    }
    return tensors, meta


def _set_rng_state(tensors: dict[str, torch.Tensor], meta: dict[str, str]) -> None:
    torch.set_rng_state(tensors["rng/torch"])
    cuda = sorted((k for k in tensors if k.startswith("rng/cuda/")), key=lambda k: int(k.rsplit("/", 1)[1]))
    if cuda and torch.cuda.is_available():
        torch.cuda.set_rng_state_all([tensors[k] for k in cuda[: torch.cuda.device_count()]])
    version, state, gauss = json.loads(meta["rng_python"])
    random.setstate((version, tuple(state), gauss))
    kind, keys, pos, has_gauss, cached = json.loads(meta["rng_numpy"])
    np.random.set_state((kind, np.asarray(keys, dtype=np.uint32), pos, has_gauss, cached))


def _optimizer_tensors(name: str, optimizer: torch.optim.Optimizer) -> tuple[dict[str, torch.Tensor], dict]:
    """Split an optimizer state dict into tensors and a JSON-able remainder."""
    state = optimizer.state_dict()
    tensors, plain = {}, {}
    for index, entries in state["state"].items():
        for key, value in entries.items():
            if isinstance(value, torch.Tensor):
                tensors[f"optim/{name}/{index}/{key}"] = value
            else:
                plain.setdefault(str(index), {})[key] = value
    return tensors, {"param_groups": state["param_groups"], "plain_state": plain}


def _restore_optimizer(name, optimizer, tensors, saved) -> None:
    state: dict[int, dict] = {}
    prefix = f"optim/{name}/"
    for key, value in tensors.items():
        if key.startswith(prefix):
            index, field = key[len(prefix) :].split("/", 1)
            state.setdefault(int(index), {})[field] = value
    for index, entries in saved["plain_state"].items():
        state.setdefault(int(index), {}).update(entries)
    optimizer.load_state_dict({"state": state, "param_groups": saved["param_groups"]})
    _match_parameter_layouts(optimizer)


def _match_parameter_layouts(optimizer: torch.optim.Optimizer) -> None:
    """Give each per-parameter state tensor its parameter's strides (e.g. channels_last).

    Checkpoints store tensors contiguous. A fused optimizer walks a parameter and its state as
    flat memory, so a channels_last weight with a contiguous ``exp_avg`` would pair the wrong
    elements: the values are copied into the parameter's layout instead.
    """
    for param, entries in optimizer.state.items():
        for key, value in entries.items():
            if isinstance(value, torch.Tensor) and value.shape == param.shape and value.stride() != param.stride():
                entries[key] = torch.empty_like(param, dtype=value.dtype).copy_(value)


def save_checkpoint(
    folder: str | os.PathLike,
    step: int,
    *,
    modules: Mapping[str, torch.nn.Module],
    optimizers: Mapping[str, torch.optim.Optimizer],
    config: Mapping,
    keep: int | None = 3,
) -> Path:
    """Write ``folder/step_{step:08d}.safetensors`` atomically; keep the newest ``keep`` files.

    Args:
        folder: Where checkpoints live (created if needed).
        step: The number of completed training steps.
        modules: ``{name: module}`` (DDP or compiled wrappers are unwrapped).
        optimizers: ``{name: optimizer}``.
        config: The run's configuration, JSON-serialisable.
        keep: How many checkpoints to keep (older ones are deleted after the new one is in
            place); None keeps all.

    Returns:
        The path written.
    """
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    tensors, meta = _rng_state()
    optim_meta = {}
    for name, module in modules.items():
        tensors.update({f"model/{name}/{k}": v for k, v in _unwrap(module).state_dict().items()})
    for name, optimizer in optimizers.items():
        extra, optim_meta[name] = _optimizer_tensors(name, optimizer)
        tensors.update(extra)
    tensors = _cpu_unshared(tensors)
    meta.update(
        format=FORMAT,
        step=str(step),
        config=json.dumps(dict(config)),
        optimizers=json.dumps(optim_meta),
        digests=json.dumps({key: tensor_digest(t) for key, t in tensors.items()}),
    )
    meta["metadata_digest"] = _metadata_digest(meta)
    final = folder / f"step_{step:08d}.safetensors"
    temporary = folder / f".{final.name}.{os.getpid()}.tmp"  # the name TEMPORARY matches
    try:
        save_file(tensors, str(temporary), metadata=meta)
        with open(temporary, "rb") as f:
            os.fsync(f.fileno())
        os.replace(temporary, final)  # atomic on POSIX and Windows
    finally:
        temporary.unlink(missing_ok=True)
    if keep is not None:
        for old in sorted(_checkpoints(folder))[:-keep]:
            old[1].unlink(missing_ok=True)
    return final


def _checkpoints(folder: Path) -> list[tuple[int, Path]]:
    found = []
    for path in folder.glob("step_*.safetensors"):
        match = NAME.search(path.name)
        if match:
            found.append((int(match.group(1)), path))
    return found


def latest_checkpoint(folder: str | os.PathLike) -> Path | None:
    """The checkpoint with the highest step in ``folder``, or None if there is none."""
    folder = Path(folder)
    if not folder.is_dir():
        return None
    found = _checkpoints(folder)
    return max(found)[1] if found else None


def load_checkpoint(
    path: str | os.PathLike,
    *,
    modules: Mapping[str, torch.nn.Module],
    optimizers: Mapping[str, torch.optim.Optimizer] | None = None,
    restore_rng: bool = True,
) -> Checkpoint:
    """Restore modules, optimizers and RNG states in place from a checkpoint file.

    Args:
        path: A file written by :func:`save_checkpoint`.
        modules: ``{name: module}`` built with the same configuration as the saved run.
        optimizers: ``{name: optimizer}`` to restore, or None to skip (e.g. for generation).
        restore_rng: Also restore the torch, CUDA, numpy and Python RNG states.

    Returns:
        The step and configuration stored in the file.

    Raises:
        FileNotFoundError: No such file.
        CheckpointError: The file is not a readable label-merge checkpoint, a tensor or the
            metadata does not match its stored digest (the file is damaged), or its contents do
            not fit the given modules. The message names the file and the tensor or mismatch.
    """
    path = Path(path)
    meta, tensors = _read_verified(path)
    for name, module in modules.items():
        prefix = f"model/{name}/"
        state = {k[len(prefix) :]: v for k, v in tensors.items() if k.startswith(prefix)}
        if not state:
            raise CheckpointError(f"{path} holds no weights for {name!r}")
        try:
            _unwrap(module).load_state_dict(state)
        except RuntimeError as err:
            hints = "".join(f"\n\t{hint}" for hint in normalization_load_hints(_unwrap(module), state))
            raise CheckpointError(f"{path}: weights for {name!r} do not fit: {err}{hints}") from err
    saved_optimizers = json.loads(meta["optimizers"])
    for name, optimizer in (optimizers or {}).items():
        if name not in saved_optimizers:
            raise CheckpointError(f"{path} holds no optimizer state for {name!r}")
        _restore_optimizer(name, optimizer, tensors, saved_optimizers[name])
    if restore_rng:
        _set_rng_state(tensors, meta)
    return Checkpoint(path=path, step=int(meta["step"]), config=json.loads(meta["config"]))


def _read_metadata(path: Path) -> dict[str, str]:
    """The metadata of a label-merge checkpoint file, checked against its digest."""
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint not found: {path}")
    try:
        with safe_open(str(path), framework="pt") as f:
            meta = f.metadata() or {}
    except (SafetensorError, OSError, ValueError) as err:
        raise CheckpointError(f"cannot read checkpoint {path}: {err}") from err
    if meta.get("format") == UNVERIFIABLE_FORMAT:
        warnings.warn(f"{path} was written without digests, so it cannot be checked for damage", stacklevel=3)
    elif meta.get("format") != FORMAT:
        raise CheckpointError(f"{path} is not a label-merge checkpoint (format {meta.get('format')!r})")
    elif meta.get("metadata_digest") != _metadata_digest(meta):
        raise CheckpointError(f"{path}: the metadata (configuration, step, digests) does not match its digest")
    for key in ("step", "config", "optimizers"):
        if key not in meta:
            raise CheckpointError(f"{path}: the metadata lacks {key!r}")
    return meta


def _read_verified(path: Path) -> tuple[dict[str, str], dict[str, torch.Tensor]]:
    """The metadata and every tensor of a checkpoint, each checked against its digest."""
    meta = _read_metadata(path)
    try:
        tensors = load_file(str(path))
    except (SafetensorError, OSError, ValueError) as err:
        raise CheckpointError(f"cannot read checkpoint {path}: {err}") from err
    if meta["format"] == UNVERIFIABLE_FORMAT:
        return meta, tensors
    digests = json.loads(meta["digests"])
    if set(digests) != set(tensors):
        missing, extra = sorted(set(digests) - set(tensors)), sorted(set(tensors) - set(digests))
        raise CheckpointError(f"{path}: tensors missing {missing} or unexpected {extra}")
    for key, tensor in tensors.items():
        if tensor_digest(tensor) != digests[key]:
            raise CheckpointError(f"{path}: tensor {key!r} does not match its digest (the file is damaged)")
    return meta, tensors


def read_checkpoint_info(path: str | os.PathLike) -> Checkpoint:
    """The step and configuration of a checkpoint, from its metadata alone (no tensor is read).

    Raises:
        FileNotFoundError: No such file.
        CheckpointError: Not a readable label-merge checkpoint, or damaged metadata.
    """
    path = Path(path)
    meta = _read_metadata(path)
    return Checkpoint(path=path, step=int(meta["step"]), config=json.loads(meta["config"]))


def verify_checkpoint(path: str | os.PathLike) -> Checkpoint:
    """Read a whole checkpoint and check every digest, without restoring anything.

    Returns:
        The step and configuration stored in the file.

    Raises:
        FileNotFoundError: No such file.
        CheckpointError: Not a readable label-merge checkpoint, or a tensor or the metadata
            does not match its digest (the message names the file and the tensor).

    Example:
        >>> verify_checkpoint("runs/asap_tlam/checkpoints/step_00000400.safetensors").step  # doctest: +SKIP
        400
    """
    path = Path(path)
    meta, _ = _read_verified(path)
    return Checkpoint(path=path, step=int(meta["step"]), config=json.loads(meta["config"]))


def find_resumable_checkpoint(folder: str | os.PathLike) -> tuple[Checkpoint | None, list[tuple[Path, str]]]:
    """The newest checkpoint in ``folder`` that reads and verifies, and those skipped on the way.

    Newer files that fail to read or verify are skipped (never deleted), each with the reason.

    Args:
        folder: A run's ``checkpoints/`` folder.

    Returns:
        ``(checkpoint, skipped)``: the newest good checkpoint (None if there is none) and
        ``[(path, reason)]`` for each newer file that was skipped, newest first.

    Example:
        >>> found, skipped = find_resumable_checkpoint("runs/asap_tlam/checkpoints")  # doctest: +SKIP
        >>> found.step, [p.name for p, _ in skipped]  # doctest: +SKIP
        (400, ['step_00000600.safetensors'])
    """
    folder = Path(folder)
    skipped: list[tuple[Path, str]] = []
    if not folder.is_dir():
        return None, skipped
    for _, path in sorted(_checkpoints(folder), reverse=True):
        try:
            return verify_checkpoint(path), skipped
        except (CheckpointError, OSError) as err:
            skipped.append((path, str(err)))
    return None, skipped


def set_aside(path: str | os.PathLike) -> Path:
    """Rename a damaged checkpoint so that no run resumes from, overwrites or prunes it.

    ``step_00000600.safetensors`` becomes ``step_00000600.safetensors.corrupt`` (or
    ``.corrupt.1``, ... if that exists), which keeps it for inspection.

    Returns:
        The new path.
    """
    path = Path(path)
    target = path.with_name(path.name + SET_ASIDE_SUFFIX)
    count = 0
    while target.exists():
        count += 1
        target = path.with_name(f"{path.name}{SET_ASIDE_SUFFIX}.{count}")
    os.replace(path, target)
    return target


def _process_is_alive(pid: int) -> bool:
    """Whether process ``pid`` runs on this machine; True when that cannot be told."""
    if os.name != "posix":
        return True  # os.kill(pid, 0) would terminate the process on Windows
    if pid == os.getpid():
        return False  # this process writes no checkpoint while a run starts
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # exists, owned by someone else
        return True
    return True


def remove_stale_temporaries(folder: str | os.PathLike) -> list[Path]:
    """Delete the temporary files that killed writers left in a checkpoint folder.

    A writer killed during :func:`save_checkpoint` (``kill -9``, a lost node) leaves its
    ``.step_*.safetensors.PID.tmp`` behind. Those of processes that no longer run are removed;
    those of live processes (a save in progress) are kept.

    Args:
        folder: A run's ``checkpoints/`` folder (missing is fine).

    Returns:
        The files removed.
    """
    folder = Path(folder)
    removed = []
    if not folder.is_dir():
        return removed
    for path in sorted(folder.iterdir()):
        match = TEMPORARY.match(path.name)
        if match and not _process_is_alive(int(match.group(1))):
            path.unlink(missing_ok=True)
            removed.append(path)
    return removed


def load_checkpoint_config(path: str | os.PathLike) -> dict:
    """The run configuration stored in a checkpoint, without loading its tensors.

    Raises:
        FileNotFoundError: No such file.
        CheckpointError: Not a readable label-merge checkpoint.
    """
    return json.loads(_read_metadata(Path(path))["config"])
