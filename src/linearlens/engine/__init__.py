"""The linear-interpretation engine shared by every explanation method.

A B-cos layer, a frozen ReLU, a frozen max-pool selection and a frozen normalisation statistic
are all linear interpretations of a module at an input: ``y1 = A(x0) x1 + c(x0)``.  The engine
expresses each with one primitive, :func:`decide`, and runs whole networks as their frozen linear
systems with :class:`LinearTracer`, either in a single batch (``Mode.FROZEN``, where autograd gives
the rows of ``W(x)``) or as the two-batch system ``[x0, x1]`` of the linear-interpreter paper
(``Mode.TWO_BATCH``).
"""

from .rules import RULES, register_rule
from .source import InputEncoding, explained_input, find_input_encoding
from .state import Mode, current_mode, decide, interpretation_state
from .tracer import LinearTracer, UninterpretableOperationError, linear_interpretation, run_frozen

__all__ = [
    "Mode", "decide", "current_mode", "interpretation_state", "RULES", "register_rule", "LinearTracer",
    "UninterpretableOperationError", "linear_interpretation", "run_frozen", "InputEncoding",
    "explained_input", "find_input_encoding",
]
