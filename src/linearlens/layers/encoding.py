"""Input encodings that fix the explained input domain."""

from __future__ import annotations

import torch
from torch import Tensor

from ..engine.source import InputEncoding

__all__ = ["AddInverse"]


class AddInverse(InputEncoding):
    """Encode images in ``[0, 1]`` as ``[r, g, b, 1-r, 1-g, 1-b]`` (Sec. 4 and App. D.2 of the B-cos paper).

    Every pixel then has the same amount of signal (its channels sum to 3), so dark pixels can
    contribute, and a colour is determined by the angle of its 6-vector, which is what lets
    ``W(x)`` be decoded into colours.  Explanations are computed with respect to this module's
    output (see :mod:`linearlens.engine.source`).
    """

    def __init__(self, channels: int = 3) -> None:
        super().__init__()
        if not isinstance(channels, int) or channels < 1:
            raise ValueError(f"AddInverse: channels must be a positive int, got {channels!r}")
        self.channels = channels

    def forward(self, x: Tensor) -> Tensor:
        if x.dim() < 2 or x.shape[1] != self.channels:
            raise ValueError(
                f"AddInverse expected images of shape (N, {self.channels}, ...), got {tuple(x.shape)}"
            )
        return torch.cat([x, 1 - x], dim=1)

    def extra_repr(self) -> str:
        return f"channels={self.channels}"
