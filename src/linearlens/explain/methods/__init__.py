"""Post-hoc explanation methods, registered with :func:`~linearlens.explain.api.register_method`.

One small module per family: :mod:`.gradients` (gradient, input x gradient, integrated gradients,
DeepLIFT, guided backprop, DeConvNet), :mod:`.cam` (Grad-CAM, LayerCAM), :mod:`.perturbation`
(occlusion, RISE, LIME) and :mod:`.lrp`.  Every method explains the same input domain as the
inherent B-cos explanation and returns attributions of shape ``(N, K, H, W)``.
"""

from . import cam, gradients, lrp, pattern, perturbation
from ._system import ExplainedSystem

#: Methods whose maps come from perturbing the input; the grid pointing game does not smooth them
#: (Sec. 4 of the B-cos paper).
PERTURBATION_METHODS = frozenset({"occlusion", "rise", "lime"})

__all__ = ["cam", "gradients", "lrp", "pattern", "perturbation", "ExplainedSystem", "PERTURBATION_METHODS"]
