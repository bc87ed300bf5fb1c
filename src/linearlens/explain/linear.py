"""Explanations read off the frozen linear system: rows of ``W(x)`` / ``F(x0)`` and contributions.

This one function serves two methods that are the same mathematics: the inherent explanation of a
B-cos network (``f(x) = W(x) x + b``, Eqs. (13)-(15) of the B-cos paper) and the rows of the linear
interpreter of any other network (``f(x0) = F(x0) x0 + r(x0)``, Eqs. (5)-(6) of the
linear-interpreter paper).  The network runs once in ``Mode.FROZEN``; each explained output costs
one input-gradient pass, batched over all images.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from ..engine.source import as_leaf, explained_input
from ..engine.state import Mode, decide
from ..engine.tracer import linear_interpretation
from ..validation import check_images
from .explanation import Explanation
from .targets import TargetSpec, is_neuron_target, neuron_outputs, resolve_class_targets

__all__ = ["linear_explanation", "frozen_forward"]


def frozen_forward(
    model: nn.Module, x: Tensor, target: TargetSpec = None, centering: str = "frozen"
) -> tuple[Tensor, Tensor | None, Tensor, Tensor]:
    """Run ``model`` on ``x`` as its frozen system and select the explained outputs.

    Returns ``(selected, class_targets, explained_input, outputs)``: ``selected`` is ``(N, K)`` and
    differentiable with respect to ``explained_input`` through the frozen system only.
    """
    x = check_images(x)
    neurons = target
    with torch.enable_grad(), linear_interpretation(Mode.FROZEN, centering=centering) as tracer:
        with explained_input(model, lambda t: tracer.mark(as_leaf(t))) as feed:
            fed, holder = feed(x)
            if is_neuron_target(neurons):
                neuron_list = [neurons] if not isinstance(neurons, (list, tuple)) else list(neurons)
                with neuron_outputs(model, neuron_list) as collect:
                    outputs = model(fed)
                    selected = collect()
                class_targets = None
            else:
                outputs = model(fed)
                if not isinstance(outputs, Tensor):
                    raise TypeError(f"model must return a tensor of scores, got {type(outputs).__name__}")
                # Picking the predicted class is a decision of the frozen system, not an operation in it.
                class_targets = decide(lambda out: resolve_class_targets(target, out), outputs)
                selected = outputs.gather(1, class_targets)
    if holder.value is None:
        raise RuntimeError("the model's input encoding was not called during the forward pass")
    return selected, class_targets, holder.value, outputs


def rows_of(selected: Tensor, source: Tensor) -> Tensor:
    """Input gradients of every column of ``selected`` (``(N, K)``), i.e. the rows of the frozen map.

    One backward pass per explained output, each batched over the images; the graph is kept
    between passes so the forward pass is shared.  Returns ``(N, K, *source.shape[1:])``.

    A single ``torch.autograd.grad(..., is_grads_batched=True)`` over the K columns is slower on CPU
    (bcos_cifar, 64 images, K = 10: 1.5-2.4x the time of this loop, see ``benchmarks/bench_explain.py
    --compare-batched-rows``), so the loop is kept.  Each row is copied into the result as soon as it
    is computed, so that at most one extra gradient is alive at a time.
    """
    k = selected.shape[1]
    rows = source.new_empty(source.shape[0], k, *source.shape[1:])
    # The column selection must be recorded even when the caller runs under torch.no_grad().
    with torch.enable_grad():
        for j in range(k):
            column = selected[:, j].sum()
            (grad,) = torch.autograd.grad(column, source, retain_graph=j < k - 1, allow_unused=True)
            if grad is None:
                rows[:, j] = 0
            else:
                rows[:, j] = grad
                del grad
    return rows


def linear_explanation(
    model: nn.Module,
    x: Tensor,
    target: TargetSpec = None,
    *,
    method: str = "linear",
    centering: str = "frozen",
    keep_weights: bool = True,
) -> Explanation:
    """Rows of the frozen linear map and their contribution maps for a batch of images.

    ``weights[n, k]`` is the row of ``W(x_n)`` (or ``F(x_n)``) for the ``k``-th explained output of
    image ``n``; ``attributions[n, k] = sum_c weights[n, k] * inputs[n]`` is the contribution map of
    Eq. (15) of the B-cos paper; ``residual = outputs - sum(weights * inputs)``.
    """
    selected, class_targets, source, _ = frozen_forward(model, x, target, centering)
    rows = rows_of(selected, source)
    inputs = source.detach()
    per_channel = rows * inputs.unsqueeze(1)
    outputs = selected.detach()
    residual = outputs - per_channel.flatten(2).sum(-1)
    return Explanation(
        attributions=per_channel.sum(2),
        method=method,
        targets=class_targets,
        outputs=outputs,
        weights=rows if keep_weights else None,
        inputs=inputs,
        residual=residual,
        meta={"centering": centering},
    )
