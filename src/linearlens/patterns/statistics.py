"""Streaming per-neuron moments of a layer's input ``x`` and output ``y``, split by the neuron's regime.

The signal estimators of the PatternNet paper (Eqs. (3)-(7)) need, for every output neuron ``o`` of
a layer, the first moments of ``x`` and ``y_o`` and their co-moment, in the positive regime
(pre-activation ``y_o > 0``, bias included) and in the negative regime.  :class:`Moments` holds them
for one regime as

* ``count[o]``: samples in the regime,
* ``mean_x[:, o]``, ``mean_y[o]``: means over the samples in the regime,
* ``c_xy[:, o] = sum (x - mean_x)(y_o - mean_y)`` and ``m2_y[o] = sum (y_o - mean_y)^2`` over them,

so nothing is ever accumulated as a raw sum of products.  Batches are merged with the pairwise update
of Chan, Golub and LeVeque (``delta``-corrected co-moments), which is exact in exact arithmetic and
stable in floating point; the statistics of a data set therefore do not depend (beyond rounding) on
how it is split into batches.  The statistics over *all* samples are the merge of the two regimes
(:meth:`RegimeMoments.overall`).  A row is one sample of a neuron: one image for a dense layer, one
image and output location for a convolution (its input patch).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, fields

import torch
from torch import Tensor

__all__ = ["Moments", "RegimeMoments", "batch_moments"]


def _ratio(num: Tensor, den: Tensor) -> Tensor:
    """``num / den`` with 0 where ``den == 0`` (an empty regime has no mean)."""
    return torch.where(den > 0, num / torch.where(den > 0, den, torch.ones_like(den)), torch.zeros_like(num))


@dataclass
class Moments:
    """Count, means and (co-)moments of ``x`` (``D``) and ``y`` (``O`` neurons) within one regime."""

    count: Tensor  # (O,)
    mean_x: Tensor  # (D, O)
    mean_y: Tensor  # (O,)
    m2_y: Tensor  # (O,)
    c_xy: Tensor  # (D, O)

    @classmethod
    def zeros(cls, d: int, o: int, dtype: torch.dtype = torch.float64, device=None) -> Moments:
        def z(*shape: int) -> Tensor:
            return torch.zeros(*shape, dtype=dtype, device=device)

        return cls(z(o), z(d, o), z(o), z(o), z(d, o))

    def to(self, dtype: torch.dtype) -> Moments:
        return Moments(*(getattr(self, f.name).to(dtype) for f in fields(self)))

    def merge(self, other: Moments) -> Moments:
        """The moments of the union of both sample sets (Chan et al.'s pairwise update)."""
        n = self.count + other.count
        share = _ratio(other.count, n)  # n_b / n
        weight = _ratio(self.count * other.count, n)  # n_a n_b / n
        dx = other.mean_x - self.mean_x
        dy = other.mean_y - self.mean_y
        return Moments(
            count=n,
            mean_x=self.mean_x + dx * share,
            mean_y=self.mean_y + dy * share,
            m2_y=self.m2_y + other.m2_y + dy * dy * weight,
            c_xy=self.c_xy + other.c_xy + dx * (dy * weight),
        )

    @property
    def cov_xy(self) -> Tensor:
        """``cov[x, y_o]`` per neuron, ``(D, O)`` (population normalisation)."""
        return _ratio(self.c_xy, self.count)

    @property
    def var_y(self) -> Tensor:
        """``sigma_{y_o}^2`` per neuron (population normalisation)."""
        return _ratio(self.m2_y, self.count)


@dataclass
class RegimeMoments:
    """Moments of the positive (``y > 0``) and the negative (``y <= 0``) regime of every neuron."""

    positive: Moments
    negative: Moments

    @classmethod
    def zeros(cls, d: int, o: int, dtype: torch.dtype = torch.float64, device=None) -> RegimeMoments:
        return cls(Moments.zeros(d, o, dtype, device), Moments.zeros(d, o, dtype, device))

    def merge(self, other: RegimeMoments) -> RegimeMoments:
        return RegimeMoments(self.positive.merge(other.positive), self.negative.merge(other.negative))

    def overall(self) -> Moments:
        """Moments over all samples (both regimes merged)."""
        return self.positive.merge(self.negative)

    @property
    def samples(self) -> int:
        """Rows seen (the same for every neuron)."""
        return int(round(float((self.positive.count + self.negative.count)[0]))) if self.positive.count.numel() else 0


def batch_moments(y: Tensor, positive: Tensor, xt: Callable[[Tensor], Tensor]) -> RegimeMoments:
    """Moments of one batch, computed exactly (two-pass within the batch).

    ``y`` is ``(R, O)``: the layer output (bias included) of ``R`` rows; ``positive`` the ``(R, O)``
    regime mask; ``xt(G)`` returns ``X^T G`` (``(D, k)``) for ``G`` of shape ``(R, k)``, where ``X`` is
    the ``(R, D)`` matrix of the rows' inputs (for a convolution, its input patches; ``xt`` never
    needs them unfolded).  All products with ``X`` are done in one call of width ``3 O + 1``:
    centred outputs in each regime, the regime indicator (for the regime means of ``x``) and ones.
    """
    rows, o = y.shape
    m = positive.to(y.dtype)
    n_pos = m.sum(0)
    n_neg = rows - n_pos
    mean_y_pos = _ratio((m * y).sum(0), n_pos)
    mean_y_neg = _ratio(((1 - m) * y).sum(0), n_neg)
    yc_pos = m * (y - mean_y_pos)
    yc_neg = (1 - m) * (y - mean_y_neg)
    # sum over the regime of x (y - mean_y) equals the centred co-moment because sum (y - mean_y) = 0 there
    prod = xt(torch.cat([yc_pos, yc_neg, m, y.new_ones(rows, 1)], 1)).to(torch.float64)
    c_pos, c_neg, sx_pos, sx = prod[:, :o], prod[:, o : 2 * o], prod[:, 2 * o : 3 * o], prod[:, 3 * o :]
    n_pos, n_neg = n_pos.to(torch.float64), n_neg.to(torch.float64)
    return RegimeMoments(
        Moments(n_pos, _ratio(sx_pos, n_pos), mean_y_pos.double(), (yc_pos * yc_pos).sum(0).double(), c_pos),
        Moments(n_neg, _ratio(sx - sx_pos, n_neg), mean_y_neg.double(), (yc_neg * yc_neg).sum(0).double(), c_neg),
    )
