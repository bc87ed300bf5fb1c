"""Linear interpreters (LinearScope) of any network: the two-batch system of the linear-interpreter paper.

``LinearScope(model, x0)`` runs ``[x0, x1] -> [f(x0), F(x0) x1 + r(x0)]`` (Eqs. (2), (5)) on the
engine shared with the B-cos explanations and gives the residual, columns, rows (Eq. (6)), the
transposed system and the SVD (Alg. 1 and a Krylov method); :func:`bias_contributions` decomposes
the residual layer by layer (Theorem 1, Eqs. (8), (16)) for any DAG network, and
:func:`pixel_discussions` / :func:`pixel_votes` back-project it to pixels (Eq. (18), Fig. 3).
"""

from .decomposition import (
    BiasContributions,
    GroupSpec,
    PixelDiscussion,
    bias_contributions,
    leaf_constant_hooks,
    pixel_discussions,
    pixel_votes,
)
from .linear_scope import LinearScope, run_two_batch
from .svd import SVDResult, krylov_svd, power_svd, svd

__all__ = [
    "LinearScope", "run_two_batch", "SVDResult", "svd", "power_svd", "krylov_svd", "BiasContributions",
    "bias_contributions", "PixelDiscussion", "pixel_discussions", "pixel_votes", "GroupSpec",
    "leaf_constant_hooks",
]
