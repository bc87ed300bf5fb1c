"""PatternNet and PatternAttribution (Sec. 4.3 of the PatternNet paper) on the engine's frozen network.

Both are "the gradient of the frozen network with the weights swapped in the backward pass": the
network runs once in ``Mode.FROZEN`` under the :class:`~linearlens.engine.tracer.LinearTracer`, so
every gate (ReLU masks, max-pool selections, the explained class) is the engine's own frozen
decision and residual additions, concatenations and average pooling are the affine maps they are.
Only the backward of each pattern layer (``Conv2d``/``Linear`` with its batch norm folded in) is
replaced: the output gradient of a neuron in the positive regime (folded pre-activation > 0) is
sent back through its pattern ``a+`` (PatternNet) or through ``w ⊙ a+`` (PatternAttribution), of one
in the negative regime through ``a-`` / ``w ⊙ a-``, as a transposed convolution with that kernel.

The back-projection starts from the explained output's value ``y`` (not from 1), so that for a
single linear neuron PatternNet returns the signal ``a y`` and PatternAttribution ``w ⊙ a y``
(Sec. 3).  ``estimator`` picks the signal estimator: ``"a+-"`` (default), ``"a"``, ``"w"``, or, for
PatternAttribution only, ``"x"`` (the identity estimator, whose attribution is LRP-z, equal to input
x gradient of the frozen network).  Patterns come from ``patterns=`` or
:func:`linearlens.patterns.attach_patterns`.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager

import torch
from torch import Tensor, nn
from torch.nn.grad import conv2d_input

from ...engine.state import Mode, decide
from ...engine.tracer import LinearTracer, linear_interpretation
from ...patterns.layers import conv_padding
from ...patterns.patternset import PatternSet, PatternsNotFittedError, attached_patterns
from ..api import register_method
from ..explanation import Explanation
from ..targets import TargetSpec
from ._system import channel_explanation, prepare

__all__ = ["patternnet", "patternattribution", "pattern_backprojection"]

Backward = Callable[[Tensor], Tensor]


class _SwappedBackward(torch.autograd.Function):
    """Identity on ``out`` in the forward pass; the gradient goes to ``x`` through ``backward_fn``."""

    @staticmethod
    def forward(ctx, x: Tensor, out: Tensor, backward_fn: Backward) -> Tensor:  # type: ignore[override]
        ctx.backward_fn = backward_fn
        return out.clone()

    @staticmethod
    def backward(ctx, grad: Tensor):  # type: ignore[override]
        return ctx.backward_fn(grad), None, None


def _layer_backward(
    module: nn.Module, kind: str, x: Tensor, kernels: tuple[Tensor, Tensor], positive: Tensor
) -> Backward:
    """``g -> sum_o g_o (positive_o K+_o + (1 - positive_o) K-_o)`` as the transposed layer."""
    k_pos, k_neg = kernels
    shared = k_pos is k_neg or torch.equal(k_pos, k_neg)
    if kind == "norm":
        shape = [1, -1] + [1] * (x.dim() - 2)
        return lambda g: g * k_pos.view(shape).to(g.dtype)
    if kind == "linear":
        def linear_back(g: Tensor) -> Tensor:
            if shared:
                return g @ k_pos.to(g.dtype)
            return (g * positive) @ k_pos.to(g.dtype) + (g * (1 - positive)) @ k_neg.to(g.dtype)

        return linear_back
    padding, shape = conv_padding(module), x.shape
    both = k_pos if shared else torch.cat([k_pos, k_neg])

    def conv_back(g: Tensor) -> Tensor:
        stacked = g if shared else torch.cat([g * positive, g * (1 - positive)], 1)
        return conv2d_input(shape, both.to(g.dtype), stacked, module.stride, padding, module.dilation)

    return conv_back


@contextmanager
def _swapped_backward(
    model: nn.Module, patterns: PatternSet, kernels: dict[str, tuple[Tensor, Tensor]], tracer: LinearTracer
) -> Iterator[None]:
    """Forward hooks that give every pattern layer its swapped backward (see the module docstring)."""
    modules = dict(model.named_modules())
    pending: dict[int, tuple[Tensor, Tensor]] = {}
    handles = []

    def swap(name: str, kind: str, module: nn.Module, x: Tensor, out: Tensor) -> Tensor:
        # the regime is a decision of the frozen system, taken on the (folded) pre-activation
        positive = decide(lambda t: (t > 0).to(t.dtype), out)
        back = _layer_backward(module, kind, x, kernels[name], positive)
        return tracer.mark(_SwappedBackward.apply(x, out, back))

    for name, lp in patterns.layers.items():
        layer, module = lp.layer, modules[name]
        if layer.norm is None:
            handles.append(module.register_forward_hook(
                lambda m, inp, out, n=name, k=layer.kind: swap(n, k, m, inp[0], out)))
            continue
        handles.append(module.register_forward_hook(lambda m, inp, out: pending.__setitem__(id(out), (out, inp[0]))))

        def on_norm(norm, inp, out, n=name, k=layer.kind, m=module):
            stored = pending.pop(id(inp[0]), None)
            if stored is None or stored[0] is not inp[0]:
                raise RuntimeError(f"{n!r} was fitted with its batch norm folded in, but the norm now normalises "
                                   "another tensor; refit the patterns")
            return swap(n, k, m, stored[1], out)

        handles.append(modules[layer.norm].register_forward_hook(on_norm))
    try:
        yield
    finally:
        for h in handles:
            h.remove()
        pending.clear()


def _patterns_for(model: nn.Module, patterns: PatternSet | None, method: str) -> PatternSet:
    patterns = patterns if patterns is not None else attached_patterns(model)
    if patterns is None:
        raise PatternsNotFittedError(
            f"method {method!r} needs the network's patterns, which have not been fitted: run "
            "linearlens.patterns.fit_patterns(model, data) and pass patterns=... (or attach_patterns(model, p))"
        )
    if not isinstance(patterns, PatternSet):
        raise TypeError(f"patterns must be a linearlens.patterns.PatternSet, got {type(patterns).__name__}")
    patterns.check_model(model)
    return patterns


def pattern_backprojection(
    model: nn.Module, x: Tensor, target: TargetSpec, method: str, estimator: str, patterns: PatternSet | None
) -> Explanation:
    """The shared body of :func:`patternnet` and :func:`patternattribution` (``(N, K, C, H, W)`` maps)."""
    attribution = method == "patternattribution"
    if estimator == "x" and not attribution:
        raise ValueError("estimator 'x' takes the input itself as the signal; PatternNet needs 'a+-', 'a' or 'w'")
    system, z, targets, outputs = prepare(model, x, target, method)
    fitted = None if estimator == "x" else _patterns_for(model, patterns, method)
    with torch.enable_grad(), linear_interpretation(Mode.FROZEN) as tracer, ExitStack() as stack:
        source = tracer.mark(z.clone().requires_grad_(True))
        if fitted is not None:
            stack.enter_context(_swapped_backward(model, fitted, fitted.kernels(model, estimator, attribution), tracer))
        selected = system(source).gather(1, targets)
    k = targets.shape[1]
    maps = z.new_empty(z.shape[0], k, *z.shape[1:])
    for j in range(k):
        (grad,) = torch.autograd.grad(selected[:, j].sum(), source, retain_graph=j < k - 1, allow_unused=True)
        maps[:, j] = 0 if grad is None else grad
    if estimator == "x":
        # LRP-z with the bias absorbing its share: relevance x ⊙ dy/dx at every layer of a frozen network
        maps = maps * z.unsqueeze(1)
    else:
        maps = maps * selected.detach().view(*selected.shape, *[1] * (z.dim() - 1))
    return channel_explanation(method, maps, targets, outputs, z, {"estimator": estimator})


@register_method("patternnet")
def patternnet(
    model: nn.Module,
    x: Tensor,
    target: TargetSpec = None,
    *,
    estimator: str = "a+-",
    patterns: PatternSet | None = None,
) -> Explanation:
    """PatternNet: the signal ``S(x)`` back-projected to the input with patterns in place of weights (Sec. 4.3).

    ``channel_attributions`` are the signal in input space (``(N, K, C, H, W)``, original colour
    channels); ``attributions`` sum them over channels.
    """
    return pattern_backprojection(model, x, target, "patternnet", estimator, patterns)


@register_method("patternattribution")
def patternattribution(
    model: nn.Module,
    x: Tensor,
    target: TargetSpec = None,
    *,
    estimator: str = "a+-",
    patterns: PatternSet | None = None,
) -> Explanation:
    """PatternAttribution: relevances back-propagated with ``w ⊙ a`` in place of ``w`` (Sec. 4.3).

    ``estimator="x"`` is the identity estimator, whose attribution is LRP-z = input x gradient.
    """
    return pattern_backprojection(model, x, target, "patternattribution", estimator, patterns)
