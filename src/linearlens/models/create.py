"""``create_model(name, checkpoint=..., **options)``: build a registered architecture, with saved weights if asked.

The timm shape: one call builds and loads.  Loading itself is :func:`.loading.load_checkpoint`, the one
implementation shared with ``linearlens.training.load_checkpoint`` and every command that reads a checkpoint.
"""

from __future__ import annotations

import os

from torch import nn

from .loading import load_checkpoint
from .registry import model_entrypoint

__all__ = ["create_model"]


def create_model(name: str, checkpoint: str | os.PathLike | None = None, **kwargs) -> nn.Module:
    """Build the registered architecture ``name`` with ``kwargs``; with ``checkpoint``, also load its weights.

    ``checkpoint`` is a run directory written by :func:`linearlens.training.save_model`
    (``config.json`` + ``model.safetensors``) or a ``.safetensors`` file; see
    :func:`linearlens.models.load_checkpoint` for what is checked.  The run's recorded model arguments
    are the defaults and ``kwargs`` override them; the run must be of the model ``name``.  A loaded model
    is returned in evaluation mode, a new one as its constructor leaves it.
    """
    if checkpoint is None:
        return model_entrypoint(name)(**kwargs)
    return load_checkpoint(checkpoint, model=name, model_args=kwargs)
