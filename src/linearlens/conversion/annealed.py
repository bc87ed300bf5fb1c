"""The non-B-cos parts of a converted network, each with a coefficient the fine-tuning schedule anneals.

At coefficient 1 every module computes exactly what the trained module it replaces computed; at 0 it
is what a B-cos network of the successor design keeps (App. C.1.2 of the B-cos paper removes ReLUs,
max pooling and normalisation shifts; the ``bcos`` package keeps uncentred, bias-free batch norm):

* :class:`AnnealedActivation`: ``a h(x) + (1 - a) x`` for ``h`` = ReLU or GELU, the identity at 0;
* :class:`AnnealedMaxPool2d`: ``a maxpool(x) + (1 - a) avgpool(x)`` on the same windows;
* :class:`AnnealedBatchNorm2d`: batch norm whose centring and shift are scaled by ``c``:
  ``(x - c mu) w / sqrt(E[(x - c mu)^2] + eps) + c beta``; uncentred and bias-free at 0;
* :class:`AnnealedLayerNorm`: layer norm whose bias is scaled by ``c`` (its centring is a linear
  map of the token and stays, see the class).

Every input-dependent factor (ReLU mask, GELU gain, pooling selection, normalisation statistics) is
computed through :func:`~linearlens.engine.decide` or an operation the tracer freezes, so the
explanation identity ``f(x) = W(x) x + r`` holds at every coefficient; the constant parts
(``-c mu``, ``c beta``) are input-independent and enter the residual only.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..engine.state import decide

__all__ = ["AnnealedActivation", "AnnealedMaxPool2d", "AnnealedBatchNorm2d", "AnnealedLayerNorm"]


def _coefficient(module: nn.Module, name: str, dtype: torch.dtype) -> None:
    module.register_buffer(name, torch.ones((), dtype=dtype))


class AnnealedActivation(nn.Module):
    """``a h(x) + (1 - a) x``: the trained activation ``h`` at ``a = 1``, the identity at ``a = 0``."""

    _FUNCTIONS = {"relu": F.relu, "gelu": F.gelu}

    def __init__(self, kind: str, approximate: str = "none") -> None:
        super().__init__()
        if kind not in self._FUNCTIONS:
            raise ValueError(f"AnnealedActivation: kind must be one of {sorted(self._FUNCTIONS)}, got {kind!r}")
        self.kind, self.approximate = kind, approximate
        _coefficient(self, "weight_active", torch.get_default_dtype())

    def forward(self, x: Tensor) -> Tensor:
        h = F.gelu(x, approximate=self.approximate) if self.kind == "gelu" else F.relu(x)
        return self.weight_active * h + (1 - self.weight_active) * x

    def extra_repr(self) -> str:
        return f"{self.kind}, weight_active={float(self.weight_active):g}"


class AnnealedMaxPool2d(nn.Module):
    """``a maxpool(x) + (1 - a) avgpool(x)`` on the same windows; plain average pooling at ``a = 0``."""

    def __init__(self, pool: nn.MaxPool2d) -> None:
        super().__init__()
        if pool.dilation not in (1, (1, 1)) or pool.return_indices:
            raise ValueError(f"cannot convert {pool}: dilation or return_indices has no average-pool counterpart")
        self.kernel_size, self.stride, self.padding = pool.kernel_size, pool.stride, pool.padding
        self.ceil_mode = pool.ceil_mode
        _coefficient(self, "weight_max", torch.get_default_dtype())

    def average_pool(self) -> nn.AvgPool2d:
        """The pooling this module becomes at ``a = 0``."""
        return nn.AvgPool2d(self.kernel_size, self.stride, self.padding, self.ceil_mode)

    def forward(self, x: Tensor) -> Tensor:
        maxed = F.max_pool2d(x, self.kernel_size, self.stride, self.padding, ceil_mode=self.ceil_mode)
        averaged = F.avg_pool2d(x, self.kernel_size, self.stride, self.padding, ceil_mode=self.ceil_mode)
        return self.weight_max * maxed + (1 - self.weight_max) * averaged

    def extra_repr(self) -> str:
        return f"kernel_size={self.kernel_size}, stride={self.stride}, weight_max={float(self.weight_max):g}"


class AnnealedBatchNorm2d(nn.Module):
    """Batch norm with centring and shift scaled by ``c`` (``c = 1``: the trained layer).

    ``y = (x - c mu) * w / sqrt(v_c + eps) + c beta`` with ``v_c = E[(x - c mu)^2] = var + (1 - c)^2 mu^2``,
    from batch statistics in training and running statistics in evaluation, as ``nn.BatchNorm2d``.
    Keeping the trained running mean and variance makes ``c = 1`` exact; at ``c = 0`` the layer is
    the uncentred, bias-free batch norm ``x w / sqrt(E[x^2] + eps)`` of the successor B-cos design.
    In evaluation mode the layer is a fixed per-channel scale plus ``c (beta - mu w / sqrt(v_c + eps))``,
    which is input-independent and so part of the explanation's residual.
    """

    def __init__(self, bn: nn.BatchNorm2d) -> None:
        super().__init__()
        if not (bn.affine and bn.track_running_stats):
            raise ValueError(f"cannot convert {bn}: needs affine=True and track_running_stats=True")
        self.num_features, self.eps = bn.num_features, bn.eps
        self.momentum = 0.1 if bn.momentum is None else bn.momentum
        self.weight = nn.Parameter(bn.weight.detach().clone())
        self.bias: nn.Parameter | None = nn.Parameter(bn.bias.detach().clone())
        self.register_buffer("running_mean", bn.running_mean.detach().clone())
        self.register_buffer("running_var", bn.running_var.detach().clone())
        _coefficient(self, "weight_shift", self.weight.dtype)

    def _batch_statistics(self, x: Tensor) -> tuple[Tensor, Tensor]:
        var, mean = torch.var_mean(x, dim=(0, 2, 3), unbiased=False)
        with torch.no_grad():
            count = x.numel() // x.shape[1]
            unbiased = var.detach() * (count / max(count - 1, 1))
            self.running_mean.lerp_(mean.detach(), self.momentum)
            self.running_var.lerp_(unbiased, self.momentum)
        return mean, var

    def forward(self, x: Tensor) -> Tensor:
        if x.dim() != 4 or x.shape[1] != self.num_features:
            raise ValueError(f"AnnealedBatchNorm2d expected (N, {self.num_features}, H, W), got {tuple(x.shape)}")
        if self.training:
            # Batch statistics couple the samples; as decisions they are frozen by explanations.
            mean, var = decide(self._batch_statistics, x)
        else:
            mean, var = self.running_mean, self.running_var
        c = self.weight_shift
        scale = self.weight * torch.rsqrt(var + (1 - c) ** 2 * mean * mean + self.eps)
        out = (x - (c * mean).view(1, -1, 1, 1)) * scale.view(1, -1, 1, 1)
        if self.bias is not None:
            out = out + (c * self.bias).view(1, -1, 1, 1)
        return out

    def drop_shift(self) -> None:
        """Remove the shift parameter once ``c`` has reached 0 (end of the schedule)."""
        if float(self.weight_shift) != 0:
            raise RuntimeError(f"cannot drop a batch-norm shift whose coefficient is {float(self.weight_shift)}")
        self.bias = None

    def extra_repr(self) -> str:
        return f"{self.num_features}, eps={self.eps:g}, weight_shift={float(self.weight_shift):g}"


class AnnealedLayerNorm(nn.Module):
    """Layer norm over the last dimension with its bias scaled by ``c`` (``c = 1``: the trained layer).

    ``y = (x - mean(x)) * w / std(x) + c beta``.  The mean subtraction is a fixed linear projection of
    each token and is kept as such; only ``1 / std`` is a decision (frozen in explanations), so the
    centring adds nothing to the residual and only ``c beta`` does.
    """

    def __init__(self, ln: nn.LayerNorm) -> None:
        super().__init__()
        if len(ln.normalized_shape) != 1 or not ln.elementwise_affine:
            raise ValueError(f"cannot convert {ln}: needs one normalised dimension and elementwise_affine=True")
        self.eps = ln.eps
        self.weight = nn.Parameter(ln.weight.detach().clone())
        self.bias: nn.Parameter | None = (
            nn.Parameter(ln.bias.detach().clone()) if ln.bias is not None else None
        )
        _coefficient(self, "weight_shift", self.weight.dtype)

    def forward(self, x: Tensor) -> Tensor:
        inv_std = decide(lambda t: torch.rsqrt(t.var(-1, unbiased=False, keepdim=True) + self.eps), x)
        out = (x - x.mean(-1, keepdim=True)) * inv_std * self.weight
        if self.bias is not None:
            out = out + self.weight_shift * self.bias
        return out

    def drop_shift(self) -> None:
        """Remove the bias once its coefficient has reached 0."""
        if float(self.weight_shift) != 0:
            raise RuntimeError(f"cannot drop a layer-norm bias whose coefficient is {float(self.weight_shift)}")
        self.bias = None

    def extra_repr(self) -> str:
        return f"{self.weight.shape[0]}, eps={self.eps:g}, weight_shift={float(self.weight_shift):g}"
