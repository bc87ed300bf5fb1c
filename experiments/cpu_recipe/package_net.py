"""The CIFAR-10 network of App. C.1.1 built from the ``bcos`` 0.1.3 package's layers (the reference).

Same encoding, kernels, strides, paddings, channels, gammas, temperature and logit bias as
:class:`linearlens.models.BcosCifarNet`; only the B-cos convolutions are the package's
(``bcos.modules.BcosConv2d`` followed by the fixed output scale gamma, which that class lacks).
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from linearlens.models.bcos_cifar import BcosCifarNet


class _Gamma(nn.Module):
    """The fixed layer output scale gamma of App. C.1."""

    def __init__(self, gamma: float) -> None:
        super().__init__()
        self.gamma = gamma

    def forward(self, x: Tensor) -> Tensor:
        return x * self.gamma


class PackageCifarNet(nn.Module):
    """``model``'s architecture and weights with every ``BcosConv2d`` replaced by the package's."""

    def __init__(self, model: BcosCifarNet) -> None:
        super().__init__()
        from bcos.modules import BcosConv2d as PackageBcosConv2d

        self.encoding = model.encoding
        layers: list[nn.Module] = []
        for ours in model.features:
            theirs = PackageBcosConv2d(
                ours.in_channels, ours.out_channels, ours.kernel_size, ours.stride, ours.padding,
                b=ours.b, max_out=ours.max_out,
            )
            with torch.no_grad():
                theirs.linear.weight.copy_(ours.weight)
            layers += [theirs, _Gamma(ours.scale)]
        self.features = nn.Sequential(*layers)
        self.logits = model.logits

    def forward(self, x: Tensor) -> Tensor:
        return self.logits(self.features(self.encoding(x)).mean(dim=(2, 3)))
