"""A registry of architectures: ``create_model(name, checkpoint=..., **options)`` and ``list_models(pattern)``."""

from __future__ import annotations

import fnmatch
import json
import os
from collections.abc import Callable
from pathlib import Path

from safetensors import SafetensorError
from safetensors.torch import load_file
from torch import nn

__all__ = ["register_model", "create_model", "list_models"]

_REGISTRY: dict[str, Callable[..., nn.Module]] = {}

# The run-directory layout written by linearlens.training.checkpoint.save_model.
_CONFIG, _WEIGHTS = "config.json", "model.safetensors"


def register_model(fn: Callable[..., nn.Module]) -> Callable[..., nn.Module]:
    """Register an architecture constructor under its function name."""
    if fn.__name__ in _REGISTRY:
        raise ValueError(f"a model called {fn.__name__!r} is already registered")
    _REGISTRY[fn.__name__] = fn
    return fn


def list_models(pattern: str = "*") -> list[str]:
    """Names of the registered architectures matching a shell-style ``pattern``."""
    return sorted(name for name in _REGISTRY if fnmatch.fnmatch(name, pattern))


def create_model(name: str, checkpoint: str | os.PathLike | None = None, **kwargs) -> nn.Module:
    """Build the registered architecture ``name`` with ``kwargs``; with ``checkpoint``, also load its weights.

    ``checkpoint`` is a run directory written by :func:`linearlens.training.checkpoint.save_model`
    (``config.json`` + ``model.safetensors``) or a ``.safetensors`` file.  The run's recorded model
    arguments are the defaults, ``kwargs`` override them; the run must be of the model ``name``.
    Every tensor must match in name and shape (a clear ``ValueError`` otherwise).  The loaded
    model is returned in evaluation mode.
    """
    try:
        fn = _REGISTRY[name]
    except KeyError:
        raise ValueError(f"unknown model {name!r}; available models: {', '.join(list_models())}") from None
    if checkpoint is None:
        return fn(**kwargs)
    weights, config = _checkpoint_files(Path(checkpoint))
    if config is not None:
        if config.get("model", name) != name:
            raise ValueError(f"checkpoint {checkpoint} holds a {config['model']!r} model, not {name!r}")
        kwargs = {**config.get("model_args", {}), **kwargs}
    model = fn(**kwargs)
    try:
        state = load_file(str(weights))
    except (SafetensorError, OSError, ValueError) as err:
        raise ValueError(f"{weights} is not a readable safetensors file ({err})") from None
    expected = model.state_dict()
    missing = sorted(set(expected) - set(state))
    unexpected = sorted(set(state) - set(expected))
    if missing or unexpected:
        raise ValueError(
            f"{weights} does not match {name} with these options: missing {missing[:5]}"
            f"{' ...' if len(missing) > 5 else ''}, unexpected {unexpected[:5]}{' ...' if len(unexpected) > 5 else ''}"
        )
    for key, tensor in state.items():
        if tensor.shape != expected[key].shape:
            raise ValueError(
                f"{weights}: {key} has shape {tuple(tensor.shape)}, but {name} with these options expects "
                f"{tuple(expected[key].shape)} (were the width or number of classes different?)"
            )
    model.load_state_dict(state)
    return model.eval()


def _checkpoint_files(path: Path) -> tuple[Path, dict | None]:
    """The weights file and the parsed ``config.json`` (``None`` if absent) of a checkpoint path."""
    if path.is_dir():
        weights, config_path = path / _WEIGHTS, path / _CONFIG
    else:
        weights, config_path = path, path.with_name(_CONFIG)
    if not weights.is_file():
        raise FileNotFoundError(f"checkpoint weights {weights} do not exist")
    if not config_path.is_file():
        return weights, None
    try:
        config = json.loads(config_path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise ValueError(f"{config_path} is not valid JSON: {err}") from None
    if not isinstance(config, dict):
        raise ValueError(f"{config_path} does not hold a JSON object")
    return weights, config
