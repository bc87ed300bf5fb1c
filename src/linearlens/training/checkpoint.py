"""Checkpoints as safetensors plus JSON: no pickle anywhere.

A run directory holds:

* ``config.json`` — the model name and arguments (enough to rebuild it with ``create_model``)
  and the training configuration;
* ``model.safetensors`` — the weights;
* ``state.safetensors`` + ``state.json`` — optimiser moments, random-generator state and the
  number of finished epochs, so that an interrupted run resumes where it stopped;
* ``history.json`` — per-epoch loss and accuracy.

Every file is written to a temporary name and moved into place, so an interruption never leaves a
half-written checkpoint behind.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file
from torch import nn

from ..models import create_model

__all__ = ["save_model", "load_checkpoint", "save_training_state", "load_training_state", "write_json", "read_json"]

CONFIG = "config.json"
WEIGHTS = "model.safetensors"
STATE = "state.safetensors"
STATE_META = "state.json"
HISTORY = "history.json"


def _replace_atomically(path: Path, write) -> None:
    tmp = path.with_name(path.name + ".tmp")
    write(tmp)
    os.replace(tmp, path)


def write_json(path: str | os.PathLike, data: Any) -> None:
    """Write ``data`` as indented JSON, atomically."""
    path = Path(path)
    _replace_atomically(path, lambda p: p.write_text(json.dumps(data, indent=2, sort_keys=True) + "\n"))


def read_json(path: str | os.PathLike) -> Any:
    """Read a JSON file with a clear error when it is missing or malformed."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path} does not exist")
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as err:
        raise ValueError(f"{path} is not valid JSON: {err}") from None


def save_model(run_dir: str | os.PathLike, model: nn.Module, model_name: str, model_args: dict, extra: dict) -> None:
    """Save weights (safetensors) and the config needed to rebuild ``model`` (JSON)."""
    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    tensors = {k: v.detach().contiguous().cpu() for k, v in model.state_dict().items()}
    _replace_atomically(run_dir / WEIGHTS, lambda p: save_file(tensors, str(p)))
    write_json(run_dir / CONFIG, {"model": model_name, "model_args": model_args, **extra})


def load_checkpoint(path: str | os.PathLike, map_location: str = "cpu") -> nn.Module:
    """Rebuild a model from a run directory (or its ``model.safetensors``) in eval mode."""
    path = Path(path)
    run_dir = path.parent if path.suffix == ".safetensors" else path
    if not run_dir.is_dir():
        raise FileNotFoundError(f"checkpoint directory {run_dir} does not exist")
    if not (run_dir / WEIGHTS).is_file():
        raise FileNotFoundError(f"{run_dir} has no {WEIGHTS}; is it a linearlens run directory?")
    config = read_json(run_dir / CONFIG)
    if "model" not in config:
        raise ValueError(f"{run_dir / CONFIG} does not name a model")
    model = create_model(config["model"], **config.get("model_args", {}))
    state = load_file(str(run_dir / WEIGHTS), device=map_location)
    missing, unexpected = model.load_state_dict(state, strict=False)
    if missing or unexpected:
        raise ValueError(
            f"{run_dir / WEIGHTS} does not match model {config['model']!r}: missing {missing}, unexpected {unexpected}"
        )
    return model.eval()


def save_training_state(
    run_dir: str | os.PathLike, optimizer: torch.optim.Optimizer, generator: torch.Generator, meta: dict
) -> None:
    """Save what resuming needs: optimiser state, generator state, finished epochs (``meta``)."""
    run_dir = Path(run_dir)
    tensors: dict[str, torch.Tensor] = {"generator": generator.get_state()}
    scalars: dict[str, Any] = {}
    opt_state = optimizer.state_dict()
    for pid, slots in opt_state["state"].items():
        for key, value in slots.items():
            if isinstance(value, torch.Tensor):
                tensors[f"opt.{pid}.{key}"] = value.detach().contiguous().cpu()
            else:
                scalars[f"{pid}.{key}"] = value
    _replace_atomically(run_dir / STATE, lambda p: save_file(tensors, str(p)))
    write_json(run_dir / STATE_META, {**meta, "optimizer_scalars": scalars, "param_groups": opt_state["param_groups"]})


def load_training_state(
    run_dir: str | os.PathLike, optimizer: torch.optim.Optimizer, generator: torch.Generator
) -> dict | None:
    """Restore optimiser and generator state; returns the saved ``meta`` or ``None`` if there is none."""
    run_dir = Path(run_dir)
    if not (run_dir / STATE).is_file() or not (run_dir / STATE_META).is_file():
        return None
    tensors = load_file(str(run_dir / STATE))
    meta = read_json(run_dir / STATE_META)
    generator.set_state(tensors.pop("generator"))
    state: dict[int, dict[str, Any]] = {}
    for name, value in tensors.items():
        _, pid, key = name.split(".", 2)
        state.setdefault(int(pid), {})[key] = value
    for name, value in meta.pop("optimizer_scalars").items():
        pid, key = name.split(".", 1)
        state.setdefault(int(pid), {})[key] = value
    optimizer.load_state_dict({"state": state, "param_groups": meta.pop("param_groups")})
    return meta
