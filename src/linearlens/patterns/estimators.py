"""The signal estimators of Sec. 4 of the PatternNet paper, as patterns per neuron.

Every estimator here is linear per regime, ``S(x) = a w^T x`` (``a+`` or ``a-`` by the sign of the
pre-activation for the two-component one), with ``w^T a = 1`` so that the estimated signal
reproduces the output.  Patterns are returned as ``(O, D)`` matrices, one row per output neuron, in
the layer's flattened weight layout (``(c, kh, kw)`` for a convolution).

==========  ===========================================  ========================================
estimator   pattern                                       expectations
==========  ===========================================  ========================================
``"x"``     (identity, ``S_x(x) = x``: no pattern)        none; the attribution is LRP-z = x ⊙ grad
``"w"``     ``w / (w^T w)`` (Sec. 4.2)                    none
``"a"``     ``cov[x, y] / sigma_y^2`` (Eq. (3))           all samples
``"a+-"``   ``a+ = num+ / (w^T num+)`` (Eq. (7)), ``a-``  see below
==========  ===========================================  ========================================

For ``"a+-"`` the numerator of Eq. (7) is ``E+[x y] - E+[x] E[y]``: ``E+`` over the samples in which
the neuron is active (pre-activation with bias > 0; ``a-`` the others), ``E[y]`` over all samples.
This is the default (``centre="all"``): it makes the overall ``cov[x - S(x), y]`` vanish (Eq. (2)),
which is what the criterion rho of Eq. (1) rewards.  It equals ``cov+[x, y] + E+[x] (E+[y] - E[y])``,
so it is not translation invariant: a mean of the distractor leaks into the pattern (on the paper's
toy example with a distractor of non-zero mean it does not recover ``a_s``).  ``centre="regime"``
uses ``E+[y]`` instead, the covariance within the regime, which is translation invariant and reduces
to the linear estimator on linear data for any distractor mean, but leaves the regime's mean shift of
``x - S(x)`` correlated with ``y`` (lower rho).  ``docs/patterns.md`` compares both.
The bias never enters: every covariance is of centred ``y`` (a constant neuron does not covary).
"""

from __future__ import annotations

import torch
from torch import Tensor

from .statistics import RegimeMoments, _ratio

__all__ = ["ESTIMATORS", "filter_pattern", "linear_pattern", "two_component_patterns", "random_pattern"]

ESTIMATORS = ("x", "w", "a", "a+-")


def filter_pattern(weight: Tensor) -> Tensor:
    """``S_w``: ``a = w / (w^T w)`` per neuron (the w^2-rule of deep Taylor decomposition), ``(O, D)``."""
    w = weight.reshape(weight.shape[0], -1).double()
    return _ratio(w, (w * w).sum(1, keepdim=True))


def linear_pattern(moments: RegimeMoments) -> Tensor:
    """``S_a``: ``a = cov[x, y] / sigma_y^2`` over all samples (Eq. (3)), ``(O, D)``."""
    overall = moments.overall()
    return _ratio(overall.c_xy, overall.m2_y).T.contiguous()


def two_component_patterns(moments: RegimeMoments, weight: Tensor, centre: str = "all") -> tuple[Tensor, Tensor]:
    """``S_a+-``: ``(a+, a-)`` of Eqs. (4)-(7), each ``(O, D)``; see the module docstring for ``centre``.

    A regime without samples, or without variation along ``w``, has no pattern (zeros): its neurons
    never carry signal in that regime on the data the patterns were fitted on.
    """
    if centre not in ("regime", "all"):
        raise ValueError(f"centre must be 'all' (Eq. (7)) or 'regime' (covariance within the regime), got {centre!r}")
    w = weight.reshape(weight.shape[0], -1).double().T  # (D, O)
    mean_y = moments.overall().mean_y
    out = []
    for regime in (moments.positive, moments.negative):
        num = regime.cov_xy
        if centre == "all":
            num = num + regime.mean_x * (regime.mean_y - mean_y)
        out.append(_ratio(num, (w * num).sum(0)).T.contiguous())
    return out[0], out[1]


def random_pattern(weight: Tensor, generator: torch.Generator | None = None) -> Tensor:
    """The random baseline of Fig. 3: ``a = u / (w^T u)`` for a random direction ``u`` per neuron."""
    w = weight.reshape(weight.shape[0], -1).double()
    u = torch.randn(w.shape, generator=generator, dtype=torch.float64).to(w.device)
    return _ratio(u, (w * u).sum(1, keepdim=True))
