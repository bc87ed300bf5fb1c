"""Gradient-based post-hoc methods, computed with captum on the network's explained input.

Vanilla gradient (Simonyan et al.), input x gradient, integrated gradients (``n_steps = 50``,
App. C.2 of the B-cos paper), DeepLIFT, guided backpropagation and DeConvNet.  Each call is
batched over images and loops over the ``K`` explained outputs.

``frozen=True`` (vanilla gradient, input x gradient, integrated gradients) differentiates the
frozen linear system instead of the live network: for a B-cos network this is its explanation
mode, in which the gradient is the row of ``W(x)`` and input x gradient is exactly the
contribution map of Eq. (15); for a piece-wise linear (ReLU) network the frozen and live
gradients coincide and equal the rows of the linear interpreter ``F(x0)`` (Eq. (6) of the
linear-interpreter paper).

DeepLIFT, guided backpropagation and DeConvNet change the backward pass of ``nn.ReLU`` (and, for
DeepLIFT, other activation) *modules* only.  A B-cos network has none, so on it they reduce to
input x gradient (DeepLIFT with a zero baseline) and to the plain gradient (the other two);
``meta["relu_modules"]`` records how many such modules were found.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable

import torch
from captum.attr import (
    Deconvolution,
    DeepLift,
    GuidedBackprop,
    InputXGradient,
    IntegratedGradients,
    Saliency,
)
from torch import Tensor, nn

from ..api import register_method
from ..explanation import Explanation
from ..targets import TargetSpec
from ._system import ExplainedSystem, channel_explanation, per_target, prepare

__all__ = [
    "gradient", "input_x_gradient", "integrated_gradients", "deeplift", "guided_backprop", "deconvnet",
]


def _run(
    name: str,
    model: nn.Module,
    x: Tensor,
    target: TargetSpec,
    make: Callable[[ExplainedSystem], object],
    frozen: bool,
    meta: dict,
    **call_options,
) -> Explanation:
    system, z, targets, outputs = prepare(model, x, target, name, frozen=frozen)
    attributor = make(system)

    def one(t: Tensor) -> Tensor:
        # captum differentiates with respect to its input, so each call gets its own copy of z.
        z_k = z.clone().requires_grad_(True)
        return attributor.attribute(z_k, target=t, **call_options).detach()  # type: ignore[attr-defined]

    with torch.enable_grad(), warnings.catch_warnings():
        # captum announces every hook it sets on activation modules; the hooks are removed afterwards.
        warnings.filterwarnings("ignore", message=r"\s*Setting (forward|backward)", category=UserWarning)
        maps = per_target(targets, one)
    return channel_explanation(name, maps, targets, outputs, z, {"frozen": frozen, **meta})


def _relu_modules(model: nn.Module) -> int:
    return sum(isinstance(m, (nn.ReLU, nn.ReLU6, nn.LeakyReLU, nn.ELU)) for m in model.modules())


@register_method("gradient", "grad")
def gradient(
    model: nn.Module, x: Tensor, target: TargetSpec = None, *, abs: bool = True, frozen: bool = False
) -> Explanation:
    """Vanilla gradient ``d y_t / d x`` (Simonyan et al.; 'Grad' in Fig. 6 of the B-cos paper).

    ``abs=True`` (captum's default) takes the magnitude per channel before summing over channels;
    ``abs=False`` keeps signed gradients, whose channel maps are then the rows of ``W(x)``
    (``frozen=True``) or of ``F(x0)`` (ReLU networks).
    """
    return _run("gradient", model, x, target, Saliency, frozen, {"abs": abs}, abs=abs)


@register_method("ixg", "input_x_gradient")
def input_x_gradient(model: nn.Module, x: Tensor, target: TargetSpec = None, *, frozen: bool = False) -> Explanation:
    """Input x gradient ('IxG' in Fig. 6 of the B-cos paper).

    With ``frozen=True`` on a B-cos network it equals the contributions ``W(x)^T ⊙ x`` of Eq. (15).
    """
    return _run("ixg", model, x, target, InputXGradient, frozen, {})


@register_method("integrated_gradients", "ig", "intgrad")
def integrated_gradients(
    model: nn.Module,
    x: Tensor,
    target: TargetSpec = None,
    *,
    n_steps: int = 50,
    baseline: float = 0.0,
    internal_batch_size: int | None = None,
    frozen: bool = False,
) -> Explanation:
    """Integrated gradients from a constant ``baseline`` with ``n_steps = 50`` (App. C.2 of the B-cos paper)."""
    if n_steps < 1:
        raise ValueError(f"n_steps must be >= 1, got {n_steps}")
    return _run(
        "integrated_gradients", model, x, target, IntegratedGradients, frozen,
        {"n_steps": n_steps, "baseline": baseline},
        baselines=baseline, n_steps=n_steps, internal_batch_size=internal_batch_size,
    )


@register_method("deeplift")
def deeplift(model: nn.Module, x: Tensor, target: TargetSpec = None, *, baseline: float = 0.0) -> Explanation:
    """DeepLIFT (rescale rule, captum) from a constant ``baseline`` ('DeepLIFT' in Fig. 6 of the B-cos paper)."""
    return _run(
        "deeplift", model, x, target, DeepLift, False,
        {"baseline": baseline, "relu_modules": _relu_modules(model)}, baselines=baseline,
    )


@register_method("guided_backprop", "gbp")
def guided_backprop(model: nn.Module, x: Tensor, target: TargetSpec = None) -> Explanation:
    """Guided backpropagation (Springenberg et al.): only positive gradients pass ``nn.ReLU`` modules."""
    return _run("guided_backprop", model, x, target, GuidedBackprop, False, {"relu_modules": _relu_modules(model)})


@register_method("deconvnet", "deconv")
def deconvnet(model: nn.Module, x: Tensor, target: TargetSpec = None) -> Explanation:
    """DeConvNet (Zeiler & Fergus): ``nn.ReLU`` modules pass the rectified gradient backwards."""
    return _run("deconvnet", model, x, target, Deconvolution, False, {"relu_modules": _relu_modules(model)})

