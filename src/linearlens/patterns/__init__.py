"""Learning to explain: the signal estimators and patterns of PatternNet / PatternAttribution.

:mod:`.statistics` streaming per-neuron moments (Chan et al.'s stable merging), :mod:`.estimators`
``S_x``, ``S_w``, ``S_a`` (Eq. (3)) and ``S_a+-`` (Eqs. (4)-(7)), :mod:`.layers` which modules carry
patterns (batch norm folded in), :mod:`.fit` the streaming pass, :mod:`.io` safetensors + JSON,
:mod:`.quality` the criterion rho of Eq. (1).  Explanations: ``explain(model, x, method="patternnet"
| "patternattribution", patterns=...)``.
"""

from .estimators import ESTIMATORS
from .fit import fit_patterns
from .layers import PatternLayer, UnsupportedLayerError, find_pattern_layers
from .patternset import LayerPatterns, PatternSet, PatternsNotFittedError, attach_patterns, attached_patterns

__all__ = [
    "ESTIMATORS", "fit_patterns", "PatternLayer", "UnsupportedLayerError", "find_pattern_layers", "LayerPatterns",
    "PatternSet", "PatternsNotFittedError", "attach_patterns", "attached_patterns",
]
