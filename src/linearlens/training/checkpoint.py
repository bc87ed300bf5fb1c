"""Checkpoints as safetensors plus JSON: no pickle anywhere.

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

Loading never executes code from the file and answers bad files with one clear ``ValueError`` /
``FileNotFoundError``: a truncated or corrupt safetensors file, a pickle (``torch.save``) file,
weights whose names or shapes do not match the configured model, non-finite weights.
"""

from __future__ import annotations

import json
import os
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import save_file
from torch import nn

from ..models import create_model

__all__ = [
    "save_model", "load_checkpoint", "save_training_state", "load_training_state", "write_json", "read_json",
    "read_safetensors", "replace_atomically", "remove_stale_temporaries",
]

CONFIG = "config.json"
WEIGHTS = "model.safetensors"
STATE = "state.safetensors"
STATE_META = "state.json"
HISTORY = "history.json"

_PICKLE_MAGIC = (b"PK\x03\x04", b"\x80")  # torch.save's zip container; a raw pickle's PROTO opcode


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


def read_json(path: str | os.PathLike) -> Any:
    """Read a JSON file with a clear error when it is missing or malformed."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path} does not exist")
    try:
        return json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise ValueError(f"{path} is not valid JSON: {err}") from None


def read_safetensors(path: str | os.PathLike, device: str = "cpu") -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """``(tensors, metadata)`` of a safetensors file, or a one-line ``ValueError`` saying what the file is."""
    path = Path(path)
    with open(path, "rb") as f:
        head = f.read(8)
    if head.startswith(_PICKLE_MAGIC):
        raise ValueError(
            f"{path} is a pickle (torch.save) file, not safetensors; linearlens never loads pickles because "
            "loading one can run arbitrary code"
        )
    try:
        with safe_open(str(path), framework="pt", device=device) as f:
            return {k: f.get_tensor(k) for k in f.keys()}, dict(f.metadata() or {})
    except SafetensorError as err:
        size = path.stat().st_size
        raise ValueError(f"{path} is not a readable safetensors file ({size} bytes; truncated or corrupt?): "
                         f"{err}") from None


def save_model(run_dir: str | os.PathLike, model: nn.Module, model_name: str, model_args: dict, extra: dict) -> None:
    """Save weights (safetensors) and the config needed to rebuild ``model`` (JSON)."""
    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    remove_stale_temporaries(run_dir)
    tensors = {k: v.detach().contiguous().cpu() for k, v in model.state_dict().items()}
    replace_atomically(run_dir / WEIGHTS, lambda p: save_file(tensors, str(p)))
    write_json(run_dir / CONFIG, {"model": model_name, "model_args": model_args, **extra})


def _locate(path: Path) -> tuple[Path, Path]:
    """``(run directory, weights file)`` for a run directory or a ``.safetensors`` file inside one."""
    if path.is_dir():
        weights = path / WEIGHTS
        if not weights.is_file():
            raise FileNotFoundError(f"{path} has no {WEIGHTS}; is it a linearlens run directory?")
        return path, weights
    if path.is_file():
        if path.suffix != ".safetensors":
            raise ValueError(
                f"{path} is a {path.suffix or 'suffix-less'} file; a checkpoint is a run directory written by "
                f"'linearlens train' (config.json + {WEIGHTS}) or its {WEIGHTS} (pickled .pt files are not loaded)"
            )
        return path.parent, path
    raise FileNotFoundError(f"checkpoint {path} does not exist")


def _check_weights(state: dict[str, torch.Tensor], model: nn.Module, where: Path, name: str) -> None:
    expected = model.state_dict()
    missing = [k for k in expected if k not in state]
    unexpected = [k for k in state if k not in expected]
    if missing or unexpected:
        raise ValueError(
            f"{where} does not match model {name!r} of its config: missing {missing[:5]}"
            f"{' ...' if len(missing) > 5 else ''}, unexpected {unexpected[:5]}{' ...' if len(unexpected) > 5 else ''}"
        )
    wrong = [f"{k} {tuple(state[k].shape)} (model: {tuple(v.shape)})" for k, v in expected.items()
             if state[k].shape != v.shape]
    if wrong:
        raise ValueError(f"{where} has tensors whose shapes do not match model {name!r} of its config: "
                         f"{', '.join(wrong[:3])}{' ...' if len(wrong) > 3 else ''}")
    bad = [k for k, v in state.items() if v.is_floating_point() and not bool(torch.isfinite(v).all())]
    if bad:
        raise ValueError(f"{where} holds NaN or infinite values in {', '.join(bad[:5])}")


def load_checkpoint(path: str | os.PathLike, map_location: str = "cpu") -> nn.Module:
    """Rebuild a model from a run directory (or a ``.safetensors`` weights file in one) in eval mode.

    Raises ``FileNotFoundError`` or ``ValueError`` with one line naming the file at fault.
    """
    run_dir, weights = _locate(Path(path))
    config = read_json(run_dir / CONFIG)
    if not isinstance(config, dict) or not isinstance(config.get("model"), str):
        raise ValueError(f"{run_dir / CONFIG} does not name a model")
    model_args = config.get("model_args", {})
    if not isinstance(model_args, dict):
        raise ValueError(f"{run_dir / CONFIG}: model_args must be a JSON object, got {type(model_args).__name__}")
    try:
        model = create_model(config["model"], **model_args)
    except TypeError as err:  # the constructor rejects an argument written in the config
        raise ValueError(f"{run_dir / CONFIG}: {err}") from None
    state, _ = read_safetensors(weights, map_location)
    _check_weights(state, model, weights, config["model"])
    model.load_state_dict(state)
    return model.eval()


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
