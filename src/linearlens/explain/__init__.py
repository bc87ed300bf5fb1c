"""Explanation methods behind one interface, their result type and their visualisation."""

from . import methods  # noqa: F401  (registers the post-hoc methods)
from .api import explain, list_methods, register_method
from .errors import MethodNotApplicableError
from .explanation import Explanation
from .linear import linear_explanation
from .targets import Neuron

__all__ = ["explain", "list_methods", "register_method", "Explanation", "linear_explanation", "Neuron",
           "MethodNotApplicableError"]
