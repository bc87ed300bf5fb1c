"""The floor of squared patch norms, shared by the B-cos layer's paths (:mod:`.bcos`, :mod:`._bcos_live`)."""

from __future__ import annotations

import torch
from torch import Tensor


def _tiny(t: Tensor) -> float:
    """The smallest normal number of ``t``'s dtype: the floor of squared patch norms.

    The cosine of Eq. (3) has no epsilon: ``cos = w_hat^T x / ||x||`` is scale-invariant, so a B-cos layer is
    exactly 1-homogeneous, ``f(a x) = a f(x)`` (and ``f(x) = W(x) x`` holds) at every input scale whose
    squares the dtype can represent (float32: patch norms from about 1e-19 to 1e19).  The floor only keeps
    an all-zero patch (where ``w_hat^T x = 0`` too) from dividing 0 by 0 and the square root's derivative
    finite; an absolute epsilon added to the norm, as before, made the output 75 % too small at scale 1e-7.
    """
    return torch.finfo(t.dtype).tiny if t.is_floating_point() else torch.finfo(torch.float32).tiny
