"""Architectures, registered by name: ``create_model("bcos_cifar", b=2.0)``; saved runs: ``load_checkpoint(dir)``."""

from .bcos_cifar import BcosCifarConfig, BcosCifarNet, bcos_cifar, cifar_gamma, cifar_temperature
from .create import create_model
from .loading import load_checkpoint
from .registry import list_models, register_model

# Importing a family module registers its variants.
from . import bcos_densenet, bcos_inception, bcos_resnet, bcos_vgg, bcos_vit  # noqa: E402,F401  isort: skip

__all__ = [
    "BcosCifarNet", "BcosCifarConfig", "bcos_cifar", "cifar_gamma", "cifar_temperature",
    "create_model", "list_models", "register_model", "load_checkpoint",
]
