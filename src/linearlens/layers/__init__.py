"""Building blocks: B-cos layers and input encodings. Layers know nothing of the architectures."""

from .antialias import BlurPool, FLCPooling, downsample
from .bcos import BcosConv2d, BcosLinear, LogitLayer
from .encoding import AddInverse
from .norm import UncenteredBatchNorm2d, UncenteredLayerNorm

__all__ = [
    "BcosConv2d", "BcosLinear", "LogitLayer", "AddInverse", "BlurPool", "FLCPooling", "downsample",
    "UncenteredBatchNorm2d", "UncenteredLayerNorm",
]
