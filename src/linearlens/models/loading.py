"""Loading a saved model: a run directory (or its ``.safetensors`` weights file) -> a model in eval mode.

The one implementation behind ``create_model(name, checkpoint=...)``, ``load_checkpoint(path)`` (also
re-exported as ``linearlens.training.load_checkpoint``), the pretrained network and every command that
reads a checkpoint.

A saved model is a folder holding

* ``config.json`` — ``{"model": <registered name>, "model_args": {...}, ...}``, enough to rebuild it;
* ``model.safetensors`` — the weights.

``linearlens.training.save_model`` writes this layout (the constants below are its file names).  Loading
never executes code from a file: only safetensors is read, and a pickle (``torch.save``) file is refused
before anything parses it.  A bad checkpoint is answered with one ``FileNotFoundError`` / ``ValueError``
line naming the file at fault: a missing path, a file that is not ``.safetensors``, a pickle, a truncated
or corrupt file, a config that does not name a model (or names another one than asked for), weights whose
names or shapes do not match the configured model, non-finite weights.

This module reads files through :mod:`linearlens.safefiles` and imports nothing from ``training/``.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ..safefiles import read_json, read_safetensors
from .registry import model_entrypoint

__all__ = ["CONFIG", "WEIGHTS", "load_checkpoint"]

CONFIG = "config.json"
WEIGHTS = "model.safetensors"


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


def _read_config(config_path: Path) -> tuple[str, dict[str, Any]]:
    """``(model name, model arguments)`` recorded in a run's ``config.json``."""
    config = read_json(config_path)
    if not isinstance(config, dict) or not isinstance(config.get("model"), str):
        raise ValueError(f"{config_path} does not name a model")
    model_args = config.get("model_args", {})
    if not isinstance(model_args, dict):
        raise ValueError(f"{config_path}: model_args must be a JSON object, got {type(model_args).__name__}")
    return config["model"], model_args


def _check_weights(state: Mapping[str, torch.Tensor], model: nn.Module, where: Path, what: str) -> None:
    """Raise a one-line ``ValueError`` unless ``state`` has exactly ``model``'s tensors, shapes and finite values."""
    expected = model.state_dict()
    missing = [k for k in expected if k not in state]
    unexpected = [k for k in state if k not in expected]
    if missing or unexpected:
        raise ValueError(
            f"{where} does not match {what}: missing {missing[:5]}{' ...' if len(missing) > 5 else ''}, "
            f"unexpected {unexpected[:5]}{' ...' if len(unexpected) > 5 else ''}"
        )
    wrong = [f"{k} has shape {tuple(state[k].shape)} where the model expects {tuple(v.shape)}"
             for k, v in expected.items() if state[k].shape != v.shape]
    if wrong:
        raise ValueError(f"{where} has tensors whose shapes do not match {what}: {', '.join(wrong[:3])}"
                         f"{' ...' if len(wrong) > 3 else ''} (were the width or number of classes different?)")
    bad = [k for k, v in state.items() if v.is_floating_point() and not bool(torch.isfinite(v).all())]
    if bad:
        raise ValueError(f"{where} holds NaN or infinite values in {', '.join(bad[:5])}")


def load_checkpoint(
    path: str | os.PathLike,
    *,
    model: str | None = None,
    model_args: Mapping[str, Any] | None = None,
    map_location: str = "cpu",
) -> nn.Module:
    """Rebuild a saved model from a run directory (or a ``.safetensors`` weights file in one), in eval mode.

    The run's ``config.json`` names the registered model and its arguments.  ``model``, if given, must be
    that name; it also makes ``config.json`` optional, so that a bare weights file loads when
    ``model_args`` describe the architecture.  ``model_args`` override the recorded arguments.  The weights
    must match the built model tensor for tensor (names, shapes) and be finite.

    Raises ``FileNotFoundError`` or ``ValueError`` with one line naming the file at fault; a ``TypeError``
    from the constructor only when ``model_args`` were passed (a caller's mistake, not the file's).
    """
    run_dir, weights = _locate(Path(path))
    config_path = run_dir / CONFIG
    overrides = dict(model_args or {})
    if config_path.is_file() or model is None:
        name, recorded = _read_config(config_path)  # a missing config.json: "... config.json does not exist"
        if model is not None and name != model:
            raise ValueError(f"checkpoint {path} holds a {name!r} model, not {model!r} ({config_path})")
    else:
        name, recorded = model, {}
    try:
        constructor = model_entrypoint(name)
    except ValueError as err:
        if model is not None:
            raise
        raise ValueError(f"{config_path}: {err}") from None
    try:
        built = constructor(**{**recorded, **overrides})
    except TypeError as err:  # the constructor rejects an argument
        if overrides:
            raise
        raise ValueError(f"{config_path}: {err}") from None
    state, _ = read_safetensors(weights, map_location)
    what = f"model {name!r} {'with these options' if overrides else 'of its config'}"
    _check_weights(state, built, weights, what)
    built.load_state_dict(state)
    return built.eval()
