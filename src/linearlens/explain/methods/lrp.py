"""Layer-wise relevance propagation (Bach et al.) through captum, epsilon rule by default.

captum's LRP attaches a propagation rule to every leaf module and knows rules for convolutions,
linear layers, pooling, batch norm and ``nn.ReLU``/``nn.Dropout``/``nn.Tanh`` only.  Rather than
fail deep inside captum (or, worse, run on a B-cos layer as if it were something else), the model
is checked first and every leaf module without a rule is named in one clear error.  Shape-only
modules (``nn.Flatten``, ``nn.Unflatten``, ``nn.Identity``) pass relevance through unchanged.

Like every module-hook method, LRP cannot see functional calls such as ``F.relu`` inside a
``forward``; those are differentiated as plain gradients.
"""

from __future__ import annotations

import torch
from captum.attr import LRP
from captum.attr._core.lrp import SUPPORTED_LAYERS_WITH_RULES, SUPPORTED_NON_LINEAR_LAYERS
from captum.attr._utils.lrp_rules import IdentityRule
from torch import Tensor, nn

from ...engine.source import InputEncoding
from ..api import register_method
from ..errors import MethodNotApplicableError
from ..explanation import Explanation
from ..targets import TargetSpec
from ._system import channel_explanation, per_target, prepare

__all__ = ["lrp", "lrp_unsupported_layers"]

_PASS_THROUGH = (nn.Flatten, nn.Unflatten, nn.Identity)


class _ReshapeRule(IdentityRule):
    """Relevance passes a shape-only module unchanged, reshaped to the module's input."""

    def _create_backward_hook_input(self, inputs):
        def hook(grad: Tensor) -> Tensor:
            relevance = self.relevance_output[grad.device].reshape(grad.shape)
            # captum's activation hooks read the replacement from here (two hooks share the tensor).
            grad.replace_out = relevance
            return relevance

        return hook


def _leaves(model: nn.Module) -> list[tuple[str, nn.Module]]:
    return [(name, m) for name, m in model.named_modules() if not list(m.children())]


def lrp_unsupported_layers(model: nn.Module) -> list[str]:
    """``"name (Type)"`` for each leaf module that captum's LRP has no propagation rule for."""
    bad = []
    for name, module in _leaves(model):
        known = type(module) in SUPPORTED_LAYERS_WITH_RULES or type(module) in SUPPORTED_NON_LINEAR_LAYERS
        known = known or hasattr(module, "rule") or isinstance(module, _PASS_THROUGH)
        if isinstance(module, InputEncoding) or not known:
            bad.append(f"{name or '<model>'} ({type(module).__name__})")
    return bad


@register_method("lrp")
def lrp(model: nn.Module, x: Tensor, target: TargetSpec = None) -> Explanation:
    """LRP relevances of the explained output, conserving ``sum R = y_t`` for bias-free networks.

    Raises :class:`~linearlens.explain.errors.MethodNotApplicableError` naming the layers LRP cannot
    propagate through, e.g. B-cos layers, whose own explanation is ``method="bcos"``.
    """
    bad = lrp_unsupported_layers(model)
    if bad:
        raise MethodNotApplicableError(
            f"LRP (captum) has no propagation rule for {', '.join(bad[:8])}"
            f"{' and more' if len(bad) > 8 else ''}. It supports Conv2d, Linear, pooling, BatchNorm2d and "
            "ReLU/Dropout/Tanh modules; B-cos networks are explained by method='bcos'"
        )
    system, z, targets, outputs = prepare(model, x, target, "lrp")
    attributor = LRP(system)
    pass_through = [m for _, m in _leaves(model) if isinstance(m, _PASS_THROUGH)]

    def one(t: Tensor) -> Tensor:
        # captum strips every rule after each call, so the pass-through rules are set each time.
        for m in pass_through:
            m.rule = _ReshapeRule()
        try:
            return attributor.attribute(z.clone().requires_grad_(True), target=t).detach()
        finally:
            for m in pass_through:
                if hasattr(m, "rule"):
                    del m.rule

    with torch.enable_grad():
        maps = per_target(targets, one)
    return channel_explanation("lrp", maps, targets, outputs, z, {"rule": "epsilon"})
