"""The fine-tuning schedule from a converted network (``B = 1``, every trained term kept) to a B-cos network.

One number, the progress ``p`` in ``[0, 1]``, sets the whole network (:func:`set_bcosification`):
``B = 1 + (B_final - 1) p`` in every B-cos layer (Eq. (3) of the B-cos paper) and ``1 - p`` for every
annealing coefficient: the trained biases (the classifier's moves to the logit bias ``b`` of
Eq. (16)), the ReLU/GELU weights, max-pool weights (towards average pooling), batch-norm centring
and shifts, layer-norm biases and the ViT's class token and positional embedding.  The explanation
identity ``f(x) = W(x) x + r`` holds at every ``p``: each coefficient scales either a
decision-frozen term or an input-independent constant.

At ``p = 1`` :func:`finalize_bcos` removes the annealed-away modules and parameters, and
:func:`assert_bcos_final` checks that what remains is a B-cos network: ``B = B_final`` everywhere, no
biases, activations, max pooling or normalisation shifts, and a residual equal to the logit bias.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from ..interpret.linear_scope import LinearScope
from ..layers import BcosConv2d, BcosLinear
from .annealed import AnnealedActivation, AnnealedBatchNorm2d, AnnealedLayerNorm, AnnealedMaxPool2d
from .families import BcosDenseNet, BcosVisionTransformer, BcosViTEncoder
from .layers import ConvertedBcosConv2d, ConvertedBcosLinear

__all__ = ["progress_at", "set_bcosification", "finalize_bcos", "assert_bcos_final", "coefficients"]

_COEFFICIENTS = {
    ConvertedBcosConv2d: "bias_weight",
    ConvertedBcosLinear: "bias_weight",
    AnnealedActivation: "weight_active",
    AnnealedMaxPool2d: "weight_max",
    AnnealedBatchNorm2d: "weight_shift",
    AnnealedLayerNorm: "weight_shift",
    BcosVisionTransformer: "weight_additive",
    BcosViTEncoder: "weight_additive",
}


def progress_at(step: int, total_steps: int, anneal_fraction: float = 0.5) -> float:
    """Linear progress reaching 1 after ``anneal_fraction`` of ``total_steps`` and staying there."""
    if total_steps < 1 or not 0 < anneal_fraction <= 1:
        raise ValueError(f"need total_steps >= 1 and 0 < anneal_fraction <= 1, got {total_steps}, {anneal_fraction}")
    return min(1.0, max(0.0, step / (anneal_fraction * total_steps)))


def coefficients(model: nn.Module) -> dict[str, float]:
    """Every annealing coefficient of a converted network by module path (for logs and checks)."""
    return {
        f"{path or '<model>'}.{_COEFFICIENTS[type(m)]}": float(getattr(m, _COEFFICIENTS[type(m)]))
        for path, m in model.named_modules()
        if type(m) in _COEFFICIENTS
    }


@torch.no_grad()
def set_bcosification(model: nn.Module, progress: float, b_final: float = 2.0) -> nn.Module:
    """Set a converted network to schedule progress ``progress`` (module doc); returns ``model``."""
    if not isinstance(progress, (int, float)) or not 0 <= progress <= 1:
        raise ValueError(f"progress must be a number in [0, 1], got {progress!r}")
    if not isinstance(b_final, (int, float)) or b_final < 1:
        raise ValueError(f"b_final must be >= 1, got {b_final!r}")
    found = False
    for m in model.modules():
        if isinstance(m, (BcosConv2d, BcosLinear)):
            m.b = 1.0 + (float(b_final) - 1.0) * float(progress)
        name = _COEFFICIENTS.get(type(m))
        if name is not None:
            getattr(m, name).fill_(1.0 - float(progress))
            found = True
    if not found:
        raise ValueError("set_bcosification: the model holds no converted modules; convert it with to_bcos first")
    return model


def finalize_bcos(model: nn.Module) -> nn.Module:
    """Remove what the schedule annealed to 0 (needs progress 1): activations become identities, max
    pooling average pooling, and biases and normalisation shifts are deleted.  In place; returns ``model``."""
    left = {k: v for k, v in coefficients(model).items() if v != 0}
    if left:
        raise RuntimeError(f"finalize_bcos needs every coefficient at 0 (progress 1); still non-zero: {left}")
    for path, m in list(model.named_modules()):
        if isinstance(m, (ConvertedBcosConv2d, ConvertedBcosLinear)):
            m.drop_bias()
        elif isinstance(m, (AnnealedBatchNorm2d, AnnealedLayerNorm)):
            m.drop_shift()
        elif isinstance(m, (AnnealedActivation, AnnealedMaxPool2d)):
            new = nn.Identity() if isinstance(m, AnnealedActivation) else m.average_pool()
            parent_path, _, name = path.rpartition(".")
            setattr(model.get_submodule(parent_path) if parent_path else model, name, new)
    return model


def _structure_problems(model: nn.Module, b_final: float) -> list[str]:
    problems = []
    for path, m in model.named_modules():
        where = f"'{path or '<model>'}' ({type(m).__name__})"
        if isinstance(m, (nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.Linear, nn.ConvTranspose2d)):
            problems.append(f"{where} is not a B-cos layer")
        if isinstance(m, (BcosConv2d, BcosLinear)) and m.b != b_final:
            problems.append(f"{where} has B = {m.b}, not {b_final}")
        if isinstance(m, (ConvertedBcosConv2d, ConvertedBcosLinear, AnnealedBatchNorm2d, AnnealedLayerNorm)):
            if m.bias is not None:
                problems.append(f"{where} still has a bias")
        if isinstance(m, (nn.ReLU, nn.GELU, nn.MaxPool2d, AnnealedActivation, AnnealedMaxPool2d, nn.BatchNorm2d)):
            problems.append(f"{where} is an activation, max pooling or centred normalisation")
        if isinstance(m, (BcosVisionTransformer, BcosViTEncoder)) and float(m.weight_additive) != 0:
            problems.append(f"{where} still adds its class token / positional embedding")
        if isinstance(m, BcosDenseNet) and not isinstance(m.final_activation, nn.Identity):
            problems.append(f"{where} still applies its final activation")
    return problems


def assert_bcos_final(model: nn.Module, x: Tensor, b_final: float = 2.0, atol: float = 1e-6) -> None:
    """Assert that ``model`` is a finished B-cos network (module doc), with its residual checked at ``x``.

    The residual is the output of the zero probe of the frozen system at ``x``
    (:attr:`~linearlens.interpret.LinearScope.residual`); it must equal the classifier's logit bias for
    every output.  Raises ``AssertionError`` listing every problem found.
    """
    problems = _structure_problems(model, b_final)
    heads = [m for m in model.modules() if isinstance(m, (ConvertedBcosConv2d, ConvertedBcosLinear))]
    heads = [m for m in heads if m.logit_bias is not None]
    if len(heads) != 1:
        problems.append(f"expected one classifier head with a logit bias, found {len(heads)}")
    else:
        was_training = model.training
        model.eval()
        try:
            residual = LinearScope(model, x).residual
        finally:
            model.train(was_training)
        expected = torch.full_like(residual, float(heads[0].logit_bias))
        error = float((residual - expected).abs().max())
        if error > atol:
            problems.append(f"the residual differs from the logit bias {float(heads[0].logit_bias):.6f} by {error:.3g}")
    if problems:
        raise AssertionError("not a finished B-cos network: " + "; ".join(problems))
