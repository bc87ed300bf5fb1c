"""The result every explanation method returns."""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Any

import torch
from torch import Tensor

__all__ = ["Explanation"]


@dataclass
class Explanation:
    """Attributions for ``N`` inputs and ``K`` explained outputs per input.

    Attributes:
        attributions: spatial attribution maps, ``(N, K, H, W)``.  For linear methods these are
            the contribution maps ``sum_c [W(x)^T]_j ⊙ x`` (Eq. (15) of the B-cos paper).
        method: name of the method that produced them.
        targets: the explained class indices, ``(N, K)``, or ``None`` for intermediate neurons.
        outputs: the values of the explained outputs, ``(N, K)``.
        weights: for linear methods, the rows of ``W(x)`` (or ``F(x0)``), ``(N, K, C, H, W)``,
            with respect to :attr:`inputs`.
        inputs: the explained input (for a B-cos network the 6-channel encoded image), ``(N, C, H, W)``.
        residual: for linear methods, ``outputs - <weights, inputs>``: the logit bias for a B-cos
            network, ``r(x0)`` for a linear interpreter (Eq. (5) of the linear-interpreter paper).
        channel_attributions: per-channel attributions ``(N, K, C, H, W)`` where the method has them.
        meta: method options and anything else worth keeping.
    """

    attributions: Tensor
    method: str
    targets: Tensor | None = None
    outputs: Tensor | None = None
    weights: Tensor | None = None
    inputs: Tensor | None = None
    residual: Tensor | None = None
    channel_attributions: Tensor | None = None
    meta: dict[str, Any] = field(default_factory=dict)

    @property
    def contributions(self) -> Tensor:
        """Alias of :attr:`attributions` (the name used for linear methods)."""
        return self.attributions

    def __len__(self) -> int:
        return self.attributions.shape[0]

    def select(self, k: int | slice) -> Explanation:
        """The explanation of the ``k``-th explained output(s) only, keeping the ``K`` dimension."""
        idx = slice(k, k + 1) if isinstance(k, int) else k

        def pick(t: Tensor | None) -> Tensor | None:
            return None if t is None else t[:, idx]

        return replace(
            self,
            attributions=pick(self.attributions),
            targets=pick(self.targets),
            outputs=pick(self.outputs),
            weights=pick(self.weights),
            residual=pick(self.residual),
            channel_attributions=pick(self.channel_attributions),
        )

    def delta(self, a: int = 0, b: int = 1) -> Explanation:
        """The Δ-explanation ``W_a(x) - W_b(x)`` between explained outputs ``a`` and ``b`` (Fig. 9).

        Linear in the rows, so the contribution map of the difference is the difference of the
        contribution maps, and it explains ``y_a - y_b``.
        """
        k = self.attributions.shape[1]
        if not (0 <= a < k and 0 <= b < k):
            raise IndexError(f"delta needs two explained outputs in range 0..{k - 1}, got {a} and {b}")

        def diff(t: Tensor | None) -> Tensor | None:
            return None if t is None else (t[:, a] - t[:, b]).unsqueeze(1)

        targets = None if self.targets is None else torch.stack([self.targets[:, a], self.targets[:, b]], -1)
        return replace(
            self,
            attributions=diff(self.attributions),
            outputs=diff(self.outputs),
            weights=diff(self.weights),
            residual=diff(self.residual),
            channel_attributions=diff(self.channel_attributions),
            targets=targets,
            method=f"{self.method}-delta",
            meta={**self.meta, "delta_of": (a, b)},
        )
