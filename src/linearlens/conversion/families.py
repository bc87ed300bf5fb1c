"""torchvision architectures whose ``forward`` holds a non-linearity or an additive constant of its own.

Most torchvision classifiers compose their submodules, so converting the submodules converts the
network.  Two do more in ``forward`` itself; their converted forms are subclasses whose ``forward``
routes that part through an annealable module or coefficient:

* ``DenseNet`` applies ``F.relu`` to the features before pooling: here an
  :class:`~linearlens.conversion.annealed.AnnealedActivation` (``final_activation``);
* ``VisionTransformer`` prepends a learnt class token and its ``Encoder`` adds a learnt positional
  embedding.  Both are input-independent additive terms, so they belong to the explanation's
  residual; ``weight_additive`` scales them so that the schedule can anneal them to 0, after which the
  class token is a pure read-out token (its value is what attention gathers from the image tokens)
  and the network has no position information beyond what the patches carry.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn
from torchvision.models import DenseNet, VisionTransformer
from torchvision.models.vision_transformer import Encoder

from .annealed import AnnealedActivation

__all__ = ["BcosDenseNet", "BcosVisionTransformer", "BcosViTEncoder", "adopt"]


class BcosDenseNet(DenseNet):
    """torchvision's DenseNet with its final ReLU as an annealable module."""

    final_activation: AnnealedActivation

    def forward(self, x: Tensor) -> Tensor:
        out = self.final_activation(self.features(x))
        return self.classifier(torch.flatten(out.mean(dim=(2, 3), keepdim=True), 1))


class BcosVisionTransformer(VisionTransformer):
    """torchvision's ViT with the class token scaled by ``weight_additive``."""

    weight_additive: Tensor

    def forward(self, x: Tensor) -> Tensor:
        x = self._process_input(x)
        token = (self.weight_additive * self.class_token).expand(x.shape[0], -1, -1)
        x = self.encoder(torch.cat([token, x], dim=1))
        return self.heads(x[:, 0])


class BcosViTEncoder(Encoder):
    """torchvision's ViT encoder with the positional embedding scaled by ``weight_additive``."""

    weight_additive: Tensor

    def forward(self, x: Tensor) -> Tensor:
        if x.dim() != 3:
            raise ValueError(f"expected tokens of shape (batch, sequence, hidden), got {tuple(x.shape)}")
        return self.ln(self.layers(self.dropout(x + self.weight_additive * self.pos_embedding)))


def adopt(module: nn.Module) -> None:
    """Turn a torchvision ``DenseNet``/``VisionTransformer``/``Encoder`` into its subclass above, in place."""
    dtype = next(module.parameters()).dtype
    if type(module) is DenseNet:
        module.__class__ = BcosDenseNet
        module.final_activation = AnnealedActivation("relu")
    elif type(module) is VisionTransformer:
        module.__class__ = BcosVisionTransformer
        module.register_buffer("weight_additive", torch.ones((), dtype=dtype))
    elif type(module) is Encoder:
        module.__class__ = BcosViTEncoder
        module.register_buffer("weight_additive", torch.ones((), dtype=dtype))
    else:
        raise TypeError(f"no converted form for {type(module).__name__}")


ADOPTED = {DenseNet: BcosDenseNet, VisionTransformer: BcosVisionTransformer, Encoder: BcosViTEncoder}
