"""What every post-hoc method shares: the network as a function of its explained input, and targets.

Post-hoc methods explain the same input domain as the inherent explanation: the output of the
model's first :class:`~linearlens.engine.source.InputEncoding` (the 6-channel image
``[r, g, b, 1-r, 1-g, 1-b]`` of a B-cos network, Sec. 4 of the B-cos paper), else the raw input.
Only then is input x gradient comparable with (and, in explanation mode, equal to) the
contribution maps of Eq. (15).

:class:`ExplainedSystem` is that function as an ``nn.Module`` so that captum can drive it.  With
``frozen=True`` it runs the network as its frozen linear system (``Mode.FROZEN``; the B-cos
paper's "explanation mode"), in which gradients are the rows of ``W(x)`` (Eqs. (13)-(14)).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor, nn

from ...engine.source import encode
from ...engine.state import Mode
from ...engine.system import run_explained
from ...engine.tracer import linear_interpretation
from ...validation import check_images
from ..errors import MethodNotApplicableError
from ..explanation import Explanation
from ..targets import TargetSpec, is_neuron_target, resolve_class_targets

__all__ = ["ExplainedSystem", "prepare", "channel_explanation", "per_target"]


class ExplainedSystem(nn.Module):
    """``model`` as a function of its explained input ``z`` (``model`` itself if it has no encoding).

    The model's input encoding is bypassed by substituting ``z`` for its output
    (:func:`linearlens.engine.run_explained`); the raw input the model is called with is a zero
    placeholder of the raw shape, which only the encoding sees.  ``frozen=True`` runs every forward pass
    as the reference pass of the frozen system (``Mode.FROZEN``) with ``z`` as the system input.
    """

    def __init__(self, model: nn.Module, raw_shape: tuple[int, ...], frozen: bool = False) -> None:
        super().__init__()
        self.model = model
        self.raw_shape = tuple(raw_shape[1:])
        self.frozen = bool(frozen)

    def encode(self, x: Tensor) -> Tensor:
        """The explained input for raw images ``x`` (detached)."""
        return encode(self.model, x)

    def forward(self, z: Tensor) -> Tensor:
        raw = z.new_zeros((z.shape[0], *self.raw_shape))
        if self.frozen:
            with linear_interpretation(Mode.FROZEN) as tracer:
                out = run_explained(self.model, raw, z, tracer)
        else:
            out = run_explained(self.model, raw, z)
        if out.dim() != 2:
            shape = tuple(out.shape)
            raise MethodNotApplicableError(
                f"post-hoc methods need a model returning class scores (N, classes), got {shape}"
            )
        return out


def prepare(
    model: nn.Module, x: Tensor, target: TargetSpec, method: str, frozen: bool = False
) -> tuple[ExplainedSystem, Tensor, Tensor, Tensor]:
    """Validate the call and return ``(system, z, targets (N, K), outputs (N, classes))``."""
    x = check_images(x)
    if is_neuron_target(target):
        raise MethodNotApplicableError(
            f"method {method!r} explains class outputs only; intermediate neurons are explained by "
            "method='bcos' or 'linear_rows'"
        )
    system = ExplainedSystem(model, tuple(x.shape), frozen=frozen)
    z = system.encode(x)
    with torch.no_grad():
        outputs = system(z)
    targets = resolve_class_targets(target, outputs)
    return system, z, targets, outputs


def per_target(targets: Tensor, fn: Callable[[Tensor], Tensor]) -> Tensor:
    """Stack ``fn(targets[:, k])`` over the ``K`` explained outputs (each call batched over images)."""
    return torch.stack([fn(targets[:, k]) for k in range(targets.shape[1])], dim=1)


def channel_explanation(
    method: str,
    channel_maps: Tensor,
    targets: Tensor,
    outputs: Tensor,
    z: Tensor,
    meta: dict[str, Any],
    keep_channels: bool = True,
) -> Explanation:
    """An :class:`Explanation` from per-channel maps ``(N, K, C, H, W)``, summed over channels.

    Summing over channels is how Eq. (15) of the B-cos paper turns contributions into a spatial map;
    doing the same for every method keeps them comparable.
    """
    channel_maps = channel_maps.detach()
    return Explanation(
        attributions=channel_maps.sum(2),
        method=method,
        targets=targets,
        outputs=outputs.gather(1, targets).detach(),
        inputs=z,
        channel_attributions=channel_maps if keep_channels else None,
        meta=meta,
    )
