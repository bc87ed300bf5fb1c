"""Explanations read off the frozen linear system: rows of ``W(x)`` / ``F(x0)`` and contributions.

This one function serves two methods that are the same mathematics: the inherent explanation of a
B-cos network (``f(x) = W(x) x + b``, Eqs. (13)-(15) of the B-cos paper) and the rows of the linear
interpreter of any other network (``f(x0) = F(x0) x0 + r(x0)``, Eqs. (5)-(6) of the
linear-interpreter paper).  The network runs once as its reference pass
(:class:`~linearlens.engine.FrozenSystem`); each explained output costs one input-gradient pass,
batched over all images.  The residual is the output of the zero probe, and by default a random probe
checks that the rows are the system's own (:meth:`~linearlens.engine.FrozenSystem.check`).
"""

from __future__ import annotations

from dataclasses import asdict

from torch import Tensor, nn

from ..engine.system import FrozenSystem
from ..validation import check_images
from .explanation import Explanation
from .targets import TargetSpec, is_neuron_target, neuron_readout, resolve_class_targets

__all__ = ["linear_explanation"]


def linear_explanation(
    model: nn.Module,
    x: Tensor,
    target: TargetSpec = None,
    *,
    method: str = "linear",
    centering: str = "frozen",
    keep_weights: bool = True,
    check: bool = True,
    check_seed: int = 0,
) -> Explanation:
    """Rows of the frozen linear map and their contribution maps for a batch of images.

    ``weights[n, k]`` is the row of ``W(x_n)`` (or ``F(x_n)``) for the ``k``-th explained output of
    image ``n``; ``attributions[n, k] = sum_c weights[n, k] * inputs[n]`` is the contribution map of
    Eq. (15) of the B-cos paper; ``residual`` is ``r(x0)``, the output of the frozen system for the zero
    probe (the logit bias of a B-cos network; Eq. (5) of the linear-interpreter paper).

    With ``check`` (default) the rows are verified against a random probe run of the same system and a
    :class:`~linearlens.engine.SystemCheckError` naming the offending module is raised if they disagree;
    ``meta["check"]`` records the measured errors.  ``check=False`` saves one probe pass.
    """
    x = check_images(x)
    if is_neuron_target(target):
        neurons = [target] if not isinstance(target, (list, tuple)) else list(target)
        system = FrozenSystem(model, x, centering=centering, readout=neuron_readout(model, neurons))
        class_targets = None

        def select(outputs: Tensor) -> Tensor:
            return outputs

    else:
        system = FrozenSystem(model, x, centering=centering)
        if system.output.dim() != 2:
            raise ValueError(
                f"class explanations need a model returning scores of shape (N, classes), got "
                f"{tuple(system.output.shape)}; explain intermediate neurons with linearlens.Neuron"
            )
        class_targets = resolve_class_targets(target, system.output.detach())

        def select(outputs: Tensor) -> Tensor:
            return outputs.gather(1, class_targets)

    rows = system.rows(select)
    if check:
        result, residual = system.check(rows, select, seed=check_seed)
        checked = asdict(result)
    else:
        residual, checked = select(system.residual()), None
    inputs = system.source.detach()
    return Explanation(
        attributions=(rows * inputs.unsqueeze(1)).sum(2),
        method=method,
        targets=class_targets,
        outputs=select(system.output).detach(),
        weights=rows if keep_weights else None,
        inputs=inputs,
        residual=residual.detach(),
        meta={"centering": centering, "check": checked},
    )
