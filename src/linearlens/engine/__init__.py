"""The linear-interpretation engine shared by every explanation method.

A B-cos layer, a frozen ReLU, a frozen max-pool selection, a frozen normalisation statistic and a frozen
attention matrix are all linear interpretations of a module at an input: ``y1 = A(x0) x1 + c(x0)``.
The engine expresses each with one primitive, :func:`decide`, runs whole networks as their frozen
linear systems with :class:`LinearTracer`, and drives the reference pass (``Mode.FROZEN``, where
autograd gives the rows of ``W(x)``) and the probe passes (``Mode.TWO_BATCH``, the system
``x1 -> F(x0) x1 + r(x0)`` of the linear-interpreter paper) with :class:`FrozenSystem`.
"""

from . import attention  # noqa: F401  (registers the attention rules)
from .rules import RULES, register_rule
from .source import InputEncoding, find_input_encoding, substituted_input
from .state import (
    DecisionMismatchError,
    Interpretation,
    Mode,
    current_mode,
    current_state,
    decide,
    interpretation_state,
)
from .system import CheckResult, FrozenSystem, SystemCheckError, run_explained
from .tracer import LinearTracer, UninterpretableOperationError, gate, linear_interpretation, run_frozen

__all__ = [
    "Mode", "decide", "current_mode", "current_state", "interpretation_state", "Interpretation", "RULES",
    "register_rule", "LinearTracer", "UninterpretableOperationError", "linear_interpretation", "run_frozen",
    "gate", "InputEncoding", "find_input_encoding", "substituted_input", "FrozenSystem", "SystemCheckError",
    "CheckResult", "run_explained", "DecisionMismatchError",
]
