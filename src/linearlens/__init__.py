"""linearlens: image classifiers that explain themselves as the linear map that computed each prediction."""

from .engine import Mode, decide, linear_interpretation
from .explain import Explanation, Neuron, explain, list_methods
from .interpret import LinearScope
from .layers import AddInverse, BcosConv2d, BcosLinear, LogitLayer
from .models import create_model, list_models

__version__ = "0.1.0"

__all__ = [
    "Mode", "decide", "linear_interpretation", "Explanation", "Neuron", "explain", "list_methods",
    "AddInverse", "BcosConv2d", "BcosLinear", "LogitLayer", "create_model", "list_models", "LinearScope",
]
