"""Building blocks: B-cos layers and input encodings. Layers know nothing of the architectures."""

from .bcos import BcosConv2d, BcosLinear, LogitLayer
from .encoding import AddInverse

__all__ = ["BcosConv2d", "BcosLinear", "LogitLayer", "AddInverse"]
