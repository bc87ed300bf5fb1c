"""Normalisation layers that keep a B-cos network dynamic-linear (the successor design, "v2").

The successor of the B-cos paper keeps batch norm but drops what makes it affine rather than
linear: no mean is subtracted and no shift is added, so a layer is ``y = weight * x / sigma`` with
``sigma`` a per-channel statistic.  In training ``sigma`` comes from the batch; it is the layer's
only decision and is computed through :func:`~linearlens.engine.state.decide`, so in the
explanation modes it is frozen (from the reference images in the two-batch system) and the layer
is a diagonal linear map that contributes nothing to the residual.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from ..engine.state import Mode, current_mode, decide

__all__ = ["UncenteredBatchNorm2d", "UncenteredLayerNorm"]


def _check(cls_name: str, features: int, eps: float, momentum: float) -> None:
    if not isinstance(features, int) or isinstance(features, bool) or features < 1:
        raise ValueError(f"{cls_name}: number of features must be a positive int, got {features!r}")
    if not eps > 0:
        raise ValueError(f"{cls_name}: eps must be > 0, got {eps!r}")
    if not 0 <= momentum <= 1:
        raise ValueError(f"{cls_name}: momentum must lie in [0, 1], got {momentum!r}")


class UncenteredBatchNorm2d(nn.Module):
    """Batch norm without centring and without shift: ``y = weight * x / sqrt(var + eps)``.

    ``var`` is the per-channel variance of the batch in training (and updates ``running_var``, in
    the live mode only: explaining a model in training mode changes none of its buffers), the
    running estimate in evaluation.  ``weight`` is a learnt per-channel scale (linear); there is no
    bias, so the layer maps 0 to 0 and a B-cos network built with it keeps ``f(0) = b``.
    """

    def __init__(self, num_features: int, eps: float = 1e-5, momentum: float = 0.1) -> None:
        super().__init__()
        _check(type(self).__name__, num_features, eps, momentum)
        self.num_features, self.eps, self.momentum = num_features, float(eps), float(momentum)
        self.weight = nn.Parameter(torch.ones(num_features))
        self.register_buffer("running_var", torch.ones(num_features))

    def forward(self, x: Tensor) -> Tensor:
        if x.dim() != 4 or x.shape[1] != self.num_features:
            raise ValueError(
                f"UncenteredBatchNorm2d expected input of shape (N, {self.num_features}, H, W), got {tuple(x.shape)}"
            )
        weight = self.weight.to(x.dtype)[None, :, None, None]
        if not self.training:
            return x * (weight / torch.sqrt(self.running_var.to(x.dtype)[None, :, None, None] + self.eps))
        # A decision is batch-first (the two-batch mode repeats it per probe block), so the batch
        # statistic is handed out once per sample.
        var = decide(lambda t: t.var(dim=(0, 2, 3), unbiased=False, keepdim=True).expand(len(t), -1, 1, 1), x)
        if current_mode() is Mode.LIVE:
            with torch.no_grad():
                self.running_var.lerp_(var[0].detach().flatten().to(self.running_var.dtype), self.momentum)
        return x * (weight / torch.sqrt(var + self.eps))

    def extra_repr(self) -> str:
        return f"{self.num_features}, eps={self.eps:g}, momentum={self.momentum:g}"


class UncenteredLayerNorm(nn.Module):
    """Per-token layer norm with a decided scale and no shift: ``y = weight * (x - mean) / std``.

    ``std`` (the token's standard deviation over the last dimension, plus ``eps``) is a decision;
    subtracting the token mean is a linear projection and stays in the linear map (``centre=False``
    drops it, dividing by the root mean square instead).  No bias, so nothing enters the residual.
    """

    def __init__(self, dim: int, eps: float = 1e-5, centre: bool = True) -> None:
        super().__init__()
        _check(type(self).__name__, dim, eps, 0.0)
        self.dim, self.eps, self.centre = dim, float(eps), bool(centre)
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x: Tensor) -> Tensor:
        if x.shape[-1] != self.dim:
            raise ValueError(f"UncenteredLayerNorm expected a last dimension of {self.dim}, got {tuple(x.shape)}")
        if self.centre:
            x = x - x.mean(dim=-1, keepdim=True)
        std = decide(lambda t: torch.sqrt(t.pow(2).mean(dim=-1, keepdim=True) + self.eps), x)
        return x / std * self.weight.to(x.dtype)

    def extra_repr(self) -> str:
        return f"{self.dim}, eps={self.eps:g}, centre={self.centre}"
