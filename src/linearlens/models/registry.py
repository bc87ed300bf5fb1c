"""The table of architectures by name: ``register_model``, ``list_models`` and ``model_entrypoint``.

``create_model`` (in :mod:`.create`) builds from this table; :mod:`.loading` rebuilds saved models from it.
This module imports neither, so that both can import it without a cycle.
"""

from __future__ import annotations

import fnmatch
from collections.abc import Callable

from torch import nn

__all__ = ["register_model", "list_models", "model_entrypoint"]

_REGISTRY: dict[str, Callable[..., nn.Module]] = {}


def register_model(fn: Callable[..., nn.Module]) -> Callable[..., nn.Module]:
    """Register an architecture constructor under its function name."""
    if fn.__name__ in _REGISTRY:
        raise ValueError(f"a model called {fn.__name__!r} is already registered")
    _REGISTRY[fn.__name__] = fn
    return fn


def list_models(pattern: str = "*") -> list[str]:
    """Names of the registered architectures matching a shell-style ``pattern``."""
    return sorted(name for name in _REGISTRY if fnmatch.fnmatch(name, pattern))


def model_entrypoint(name: str) -> Callable[..., nn.Module]:
    """The constructor registered as ``name``; a ``ValueError`` listing the available models otherwise."""
    try:
        return _REGISTRY[name]
    except KeyError:
        raise ValueError(f"unknown model {name!r}; available models: {', '.join(list_models())}") from None
