"""Training state as safetensors plus JSON: writing a run directory and its resume point; no pickle anywhere.

A run directory holds:

* ``config.json`` — the model name and arguments (enough to rebuild it with ``create_model``)
  and the training configuration;
* ``model.safetensors`` — the weights;
* ``state.safetensors`` — the resume point: model weights, optimiser moments and random-generator
  state as tensors, the number of finished epochs and the optimiser's scalars as JSON metadata.
  One file, so that it is replaced in one step: weights, moments and epoch count always agree;
* ``state.json`` — the same metadata, for people (resuming reads ``state.safetensors`` only);
* ``history.json`` — per-epoch loss and accuracy.

Every file is written to a temporary file in the same directory, flushed to disk (``fsync``),
renamed over the old one and the directory entry flushed too, so an interruption — even a power
loss — leaves either the old or the new file, never a half-written one.

Loading a saved model into an architecture is not done here: :func:`linearlens.models.load_checkpoint`
is the one implementation (safetensors only, one-line errors naming the file), re-exported below so that
``linearlens.training.load_checkpoint`` keeps working.  ``read_json`` and ``read_safetensors`` live in
:mod:`linearlens.safefiles` (``models/`` reads with them too) and are re-exported for the same reason.
"""

from __future__ import annotations

import json
import os
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import save_file
from torch import nn

from ..models.loading import CONFIG, WEIGHTS, load_checkpoint
from ..safefiles import read_json, read_safetensors

__all__ = [
    "save_model", "load_checkpoint", "save_training_state", "load_training_state", "write_json", "read_json",
    "read_safetensors", "replace_atomically", "remove_stale_temporaries",
]

STATE = "state.safetensors"
STATE_META = "state.json"
HISTORY = "history.json"


def _fsync_directory(directory: Path) -> None:
    # The rename is durable only once the directory entry is on disk (POSIX); Windows cannot open folders.
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def replace_atomically(path: str | os.PathLike, write: Callable[[Path], None]) -> None:
    """Write ``path`` through ``write(tmp)`` on a temporary file in the same folder, fsync, rename, fsync the folder.

    An interruption at any point leaves the previous ``path`` (or none) and at most a stray
    ``.<name>.*.tmp`` file, which is removed when the write fails with an exception.
    """
    path = Path(path)
    # A unique name rather than mkstemp, whose 0600 mode the renamed file would keep (umask applies here).
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{uuid.uuid4().hex[:12]}.tmp")
    try:
        write(tmp)
        with open(tmp, "rb+") as f:
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    _fsync_directory(path.parent)


def remove_stale_temporaries(run_dir: str | os.PathLike) -> list[Path]:
    """Delete temporary files that an interrupted process left behind in ``run_dir``; returns them.

    Only this module's own names for the run's files (``.<file>.<pid>.<hex>.tmp``) of other processes.
    """
    removed = []
    for name in (CONFIG, WEIGHTS, STATE, STATE_META, HISTORY):
        for tmp in Path(run_dir).glob(f".{name}.*.tmp"):
            if tmp.name.split(".")[-3] != str(os.getpid()):
                tmp.unlink(missing_ok=True)
                removed.append(tmp)
    return removed


def write_json(path: str | os.PathLike, data: Any, sort_keys: bool = True) -> None:
    """Write ``data`` as indented JSON, atomically."""
    text = json.dumps(data, indent=2, sort_keys=sort_keys) + "\n"
    replace_atomically(path, lambda p: p.write_text(text))


def save_model(run_dir: str | os.PathLike, model: nn.Module, model_name: str, model_args: dict, extra: dict) -> None:
    """Save weights (safetensors) and the config needed to rebuild ``model`` (JSON)."""
    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    remove_stale_temporaries(run_dir)
    tensors = {k: v.detach().contiguous().cpu() for k, v in model.state_dict().items()}
    replace_atomically(run_dir / WEIGHTS, lambda p: save_file(tensors, str(p)))
    write_json(run_dir / CONFIG, {"model": model_name, "model_args": model_args, **extra})


def save_training_state(
    run_dir: str | os.PathLike, model: nn.Module, optimizer: torch.optim.Optimizer, generator: torch.Generator,
    meta: dict,
) -> None:
    """Save what resuming needs in one atomically replaced file: weights, optimiser, generator, ``meta``."""
    run_dir = Path(run_dir)
    tensors: dict[str, torch.Tensor] = {"generator": generator.get_state()}
    tensors.update({f"model.{k}": v.detach().contiguous().cpu() for k, v in model.state_dict().items()})
    scalars: dict[str, Any] = {}
    opt_state = optimizer.state_dict()
    for pid, slots in opt_state["state"].items():
        for key, value in slots.items():
            if isinstance(value, torch.Tensor):
                tensors[f"opt.{pid}.{key}"] = value.detach().contiguous().cpu()
            else:
                scalars[f"{pid}.{key}"] = value
    full = {**meta, "optimizer_scalars": scalars, "param_groups": opt_state["param_groups"]}
    replace_atomically(run_dir / STATE, lambda p: save_file(tensors, str(p), metadata={"meta": json.dumps(full)}))
    write_json(run_dir / STATE_META, full)


def load_training_state(
    run_dir: str | os.PathLike, model: nn.Module, optimizer: torch.optim.Optimizer, generator: torch.Generator
) -> dict | None:
    """Restore weights, optimiser and generator state; returns the saved ``meta`` or ``None`` if there is none."""
    run_dir = Path(run_dir)
    remove_stale_temporaries(run_dir)
    path = run_dir / STATE
    if not path.is_file():
        return None
    tensors, metadata = read_safetensors(path)
    if "meta" not in metadata:
        raise ValueError(f"{path} has no training metadata; it was not written by this version of linearlens "
                         "(use --no-resume to start over)")
    meta = json.loads(metadata["meta"])
    try:
        mirror = read_json(run_dir / STATE_META)
    except (FileNotFoundError, ValueError):
        mirror = None
    if mirror != meta:  # interrupted between the state file and its readable copy
        write_json(run_dir / STATE_META, meta)
    generator.set_state(tensors.pop("generator"))
    weights = {k.removeprefix("model."): tensors.pop(k) for k in [k for k in tensors if k.startswith("model.")]}
    model.load_state_dict(weights)
    state: dict[int, dict[str, Any]] = {}
    for name, value in tensors.items():
        _, pid, key = name.split(".", 2)
        state.setdefault(int(pid), {})[key] = value
    for name, value in meta.pop("optimizer_scalars").items():
        pid, key = name.split(".", 1)
        state.setdefault(int(pid), {})[key] = value
    optimizer.load_state_dict({"state": state, "param_groups": meta.pop("param_groups")})
    return meta
