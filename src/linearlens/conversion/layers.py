"""B-cos layers that start out as the trained layers they replace (weight-keeping conversion).

A trained ``nn.Conv2d``/``nn.Linear`` computes ``w^T x + beta``.  The B-cos unit of Eq. (3) of the
B-cos paper computes ``|cos(x, w_hat)|^(B-1) w_hat^T x``, which at ``B = 1`` is ``w_hat^T x``: the
trained map up to the norm of ``w`` and the bias.  The layers here are B-cos layers
(:class:`~linearlens.layers.BcosConv2d` / :class:`~linearlens.layers.BcosLinear`) with two accounted
extras so that the conversion keeps the function exactly at ``B = 1``:

* the per-unit weight norm ``||w||`` as a gain, i.e. ``y = ||w|| |cos(x, w)|^(B-1) w_hat^T x``
  (the un-normalised weight; the gain is a parameter-only factor, so the layer stays dynamic linear
  with the same ``W(x)`` up to a per-unit scale, Eqs. (10)-(11));
* the trained bias ``beta`` times a coefficient ``bias_weight`` in ``[0, 1]`` that the fine-tuning
  schedule anneals to 0.  The bias does not depend on the input, so it is carried into the
  explanation's residual (the zero probe), never into ``W(x)``.

The classifier head may hold a ``logit_bias``: its bias then moves from ``beta`` to that constant,
the logit bias ``b`` of Eq. (16) and App. C, which is all a finished B-cos network keeps as residual.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from ..layers import BcosConv2d, BcosLinear

__all__ = ["ConvertedBcosConv2d", "ConvertedBcosLinear", "converted_layer"]


class _Accounted:
    """What the converted conv and linear layers share: the weight-norm gain and the accounted bias."""

    weight: nn.Parameter
    bias: nn.Parameter | None
    bias_weight: Tensor
    logit_bias: Tensor | None

    def _init_accounted(self, bias: Tensor | None, logit_bias: float | None) -> None:
        self.bias = None if bias is None else nn.Parameter(bias.detach().clone())
        self.register_buffer("bias_weight", torch.ones((), dtype=self.weight.dtype))
        if logit_bias is None:
            self.logit_bias = None
        else:
            self.register_buffer("logit_bias", torch.tensor(float(logit_bias), dtype=self.weight.dtype))

    def gain(self) -> Tensor:
        """``||w||`` per output unit: with it the layer uses the trained, un-normalised weights."""
        return torch.linalg.vector_norm(self.weight.flatten(1), dim=1).clamp_min(1e-12)

    def _finish(self, out: Tensor, channel_dim: int) -> Tensor:
        shape = [1] * out.dim()
        shape[channel_dim] = -1
        out = out * self.gain().view(shape)
        if self.bias is not None:
            out = out + self.bias_weight * self.bias.view(shape)
        if self.logit_bias is not None:
            out = out + (1 - self.bias_weight) * self.logit_bias
        return out

    def drop_bias(self) -> None:
        """Remove the trained bias once its coefficient has reached 0 (end of the schedule)."""
        if float(self.bias_weight) != 0:
            raise RuntimeError(f"cannot drop a bias whose coefficient is still {float(self.bias_weight)}")
        self.bias = None


class ConvertedBcosConv2d(_Accounted, BcosConv2d):
    """A :class:`~linearlens.layers.BcosConv2d` holding a trained convolution's weights and bias.

    ``y = ||w|| |cos(x, w)|^(B-1) w_hat^T x + bias_weight * beta``; equals the convolution at ``B = 1``
    and ``bias_weight = 1``.
    """

    def __init__(self, conv: nn.Conv2d, logit_bias: float | None = None) -> None:
        if isinstance(conv.padding, str):
            raise ValueError(f"cannot convert {conv}: string padding {conv.padding!r}; use explicit padding")
        super().__init__(
            conv.in_channels, conv.out_channels, conv.kernel_size, conv.stride, conv.padding, conv.dilation,
            conv.groups, conv.padding_mode, b=1.0,
        )
        self.weight = nn.Parameter(conv.weight.detach().clone())
        self._init_accounted(conv.bias, logit_bias)

    def forward(self, x: Tensor) -> Tensor:
        return self._finish(super().forward(x), 1)


class ConvertedBcosLinear(_Accounted, BcosLinear):
    """A :class:`~linearlens.layers.BcosLinear` holding a trained linear layer's weights and bias."""

    def __init__(self, linear: nn.Linear, logit_bias: float | None = None) -> None:
        super().__init__(linear.in_features, linear.out_features, b=1.0)
        self.weight = nn.Parameter(linear.weight.detach().clone())
        self._init_accounted(linear.bias, logit_bias)

    @classmethod
    def from_parts(cls, weight: Tensor, bias: Tensor | None) -> ConvertedBcosLinear:
        """From a weight matrix and bias (e.g. one of the q/k/v blocks of a packed attention projection)."""
        layer = cls.__new__(cls)
        BcosLinear.__init__(layer, weight.shape[1], weight.shape[0], b=1.0)
        layer.weight = nn.Parameter(weight.detach().clone())
        layer._init_accounted(bias, None)
        return layer

    def forward(self, x: Tensor) -> Tensor:
        return self._finish(super().forward(x), x.dim() - 1)


def converted_layer(module: nn.Module, logit_bias: float | None = None) -> nn.Module:
    """The B-cos layer for a trained ``nn.Conv2d`` or ``nn.Linear``."""
    if type(module) is nn.Conv2d:
        return ConvertedBcosConv2d(module, logit_bias)
    return ConvertedBcosLinear(module, logit_bias)
