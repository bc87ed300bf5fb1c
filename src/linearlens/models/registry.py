"""A registry of architectures: ``create_model(name, **kwargs)`` and ``list_models(pattern)``."""

from __future__ import annotations

import fnmatch
from collections.abc import Callable

from torch import nn

__all__ = ["register_model", "create_model", "list_models"]

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


def create_model(name: str, **kwargs) -> nn.Module:
    """Build the registered architecture ``name`` with ``kwargs``."""
    try:
        fn = _REGISTRY[name]
    except KeyError:
        raise ValueError(f"unknown model {name!r}; available models: {', '.join(list_models())}") from None
    return fn(**kwargs)
