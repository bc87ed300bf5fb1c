"""Singular value decomposition of a linear interpreter without materialising ``F(x0)``.

Two methods, both built on one operator, :meth:`LinearScope.normal_apply`, which returns
``(F v, F^T F v)`` from one two-batch pass and its backward (lines 3-4 of Alg. 1):

``"power"``
    Alg. 1 of the linear-interpreter paper: the power method with momentum (Xu et al.) adapted to
    the SVD, one singular triple at a time, each found on the *deflated system*
    ``F - sum_j sigma_j u_j v_j^T`` (Sec. 3, "Singular Value Decomposition").
``"krylov"``
    implicitly restarted Lanczos (ARPACK, through :func:`scipy.sparse.linalg.eigsh`) on the normal
    operator ``F^T F`` wrapped as a :class:`scipy.sparse.linalg.LinearOperator`; eigen-inputs are its
    eigenvectors, ``sigma = sqrt(lambda)`` and eigen-outputs ``u = F v / sigma``.  This is what
    :func:`scipy.sparse.linalg.svds` does with ARPACK, but with ``F^T F v`` fused into one pass.

Eigen-inputs ``v`` live in the explained-input domain, eigen-outputs ``u`` in the output domain:
``F v = sigma u`` and ``F^T u = sigma v``.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from torch import Tensor

from .linear_scope import LinearScope

__all__ = ["SVDResult", "svd", "power_svd", "krylov_svd", "SVDConvergenceWarning", "SVDConvergenceError"]


@dataclass
class SVDResult:
    """The top-``k`` singular triples of ``F(x0)`` for one image, in decreasing order.

    Attributes:
        singular_values: ``(k,)``.
        eigen_inputs: right singular vectors ``v``, ``(k, *in_shape)``, unit norm.
        eigen_outputs: left singular vectors ``u``, ``(k, *out_shape)``, unit norm.
        passes: number of ``(F v, F^T F v)`` evaluations (two-batch passes with backward) used.
        method: ``"power"`` or ``"krylov"``.
        meta: method options and diagnostics.
        residuals: ``(k, 2)``: ``||F v - sigma u|| / sigma`` and ``||F^T u - sigma v|| / sigma`` per
            triple, measured on ``F`` itself (not the deflated system) after the method stopped.
        converged: ``(k,)`` bools: both residuals at most ``residual_tol``.
    """

    singular_values: Tensor
    eigen_inputs: Tensor
    eigen_outputs: Tensor
    passes: int
    method: str
    meta: dict[str, Any] = field(default_factory=dict)
    residuals: Tensor | None = None
    converged: Tensor | None = None

    def residual_norms(self, scope: LinearScope) -> Tensor:
        """``||F^T F v - sigma^2 v|| / sigma^2`` per triple: how well each is converged (one extra pass)."""
        _, ftfv = scope.normal_apply(self.eigen_inputs.unsqueeze(0).to(scope.source.dtype))
        s2 = self.singular_values.to(ftfv.dtype).square().view(-1, *[1] * len(scope.in_shape))
        err = (ftfv[0] - s2 * self.eigen_inputs.to(ftfv.dtype)).flatten(1).norm(dim=1)
        return err / s2.flatten().clamp_min(torch.finfo(ftfv.dtype).tiny)


def svd(scope: LinearScope, k: int = 8, method: str = "krylov", **options) -> SVDResult:
    """Top-``k`` singular triples of ``F(x0)`` for a one-image :class:`LinearScope`."""
    if method == "krylov":
        return krylov_svd(scope, k, **options)
    if method == "power":
        return power_svd(scope, k, **options)
    raise ValueError(f"unknown SVD method {method!r}: use 'krylov' or 'power'")


class SVDConvergenceWarning(UserWarning):
    """A singular triple does not satisfy ``F v = sigma u``, ``F^T u = sigma v`` to the requested tolerance."""


class SVDConvergenceError(RuntimeError):
    """Raised instead of :class:`SVDConvergenceWarning` when ``on_failure="raise"``."""


ON_FAILURE = ("warn", "raise", "ignore")


def _verify(
    result: SVDResult, scope: LinearScope, ftu: Tensor | None, residual_tol: float, on_failure: str, advice: str
) -> SVDResult:
    """Fill in ``result.residuals`` / ``.converged`` from ``F v`` and ``F^T u``; warn or raise on failure.

    ``ftu`` (``F^T u`` per triple, flattened) is reused when the method already has it; otherwise it
    costs one batched transpose pass.  ``F v`` costs one batched forward pass.
    """
    k = result.singular_values.shape[0]
    v, u = result.eigen_inputs.flatten(1), result.eigen_outputs.flatten(1)
    fv = scope.apply(result.eigen_inputs.unsqueeze(0).to(scope.source.dtype))[0].flatten(1)
    if ftu is None:
        ftu = scope.transpose_apply(result.eigen_outputs.unsqueeze(0).to(scope.source.dtype))[0].flatten(1)
    sigma = result.singular_values.to(fv.dtype)
    # Relative to sigma_j, but never to less than a rounding-level fraction of the largest sigma.
    scale = sigma.clamp_min(float(sigma.max()) * torch.finfo(fv.dtype).eps + torch.finfo(fv.dtype).tiny)[:, None]
    residuals = torch.stack([(fv - sigma[:, None] * u.to(fv.dtype)).norm(dim=1) / scale[:, 0],
                             (ftu.to(fv.dtype) - sigma[:, None] * v.to(fv.dtype)).norm(dim=1) / scale[:, 0]], dim=1)
    converged = (residuals <= residual_tol).all(dim=1)  # NaN residuals count as failures
    result.residuals, result.converged = residuals, converged
    result.meta.update(residual_tol=residual_tol, check_passes=1 + (ftu is None))
    if not bool(converged.all()) and on_failure != "ignore":
        bad = [str(i) for i in range(k) if not converged[i]]
        worst = float(residuals[~converged].nan_to_num(nan=float("inf")).max())
        message = (f"{result.method} SVD: triple(s) {', '.join(bad)} of {k} not converged (largest relative residual "
                   f"of F v = sigma u, F^T u = sigma v: {worst:.2g} > residual_tol={residual_tol:g}); {advice}")
        if on_failure == "raise":
            raise SVDConvergenceError(message)
        warnings.warn(message, SVDConvergenceWarning, stacklevel=3)
    return result


def _check_options(residual_tol: float, on_failure: str) -> None:
    if on_failure not in ON_FAILURE:
        raise ValueError(f"on_failure must be one of {ON_FAILURE}, got {on_failure!r}")
    if not residual_tol > 0:
        raise ValueError(f"residual_tol must be > 0, got {residual_tol!r}")


def _check(scope: LinearScope, k: int) -> None:
    if scope.num_images != 1:
        raise ValueError(f"the SVD is per image; got a LinearScope of {scope.num_images} images, use scope.select(i)")
    if not isinstance(k, int) or not 1 <= k <= min(scope.in_features, scope.out_features):
        raise ValueError(
            f"k must be an int in 1..{min(scope.in_features, scope.out_features)} (the rank bound of F), got {k!r}"
        )


def power_svd(
    scope: LinearScope,
    k: int = 8,
    *,
    steps: int = 100,
    momentum: float | Sequence[float] = 0.0,
    tol: float | None = 1e-6,
    seed: int = 0,
    residual_tol: float = 1e-3,
    on_failure: str = "warn",
) -> SVDResult:
    """Alg. 1 (power method with momentum ``m``) plus deflation, one triple after another.

    Per step: ``u = D v`` and ``v_next = D^T u - m v_prev`` where ``D = F - sum_j sigma_j u_j v_j^T``
    is the deflated system (one :meth:`~LinearScope.normal_apply` pass; ``D^T u`` uses the stored
    ``F^T u_j``, so the deflation is exact).  ``momentum`` is ``m`` of Alg. 1, a number or one per
    triple; ``m = 0`` is the plain power method and ``m = sigma_{j+1}^4 / 4`` the optimal choice of
    Xu et al. for the ``j``-th triple.  A triple stops after ``steps`` steps or once the Rayleigh
    residual ``||D^T D v - sigma^2 v|| / sigma^2`` is below ``tol``.

    Convergence is then checked on ``F`` itself (one extra batched pass): ``result.residuals`` holds
    ``||F v - sigma u|| / sigma`` and ``||F^T u - sigma v|| / sigma`` per triple, and a triple above
    ``residual_tol`` (too few ``steps``, a momentum too large for the spectrum) raises a
    :class:`SVDConvergenceWarning` (``on_failure="warn"``), an :class:`SVDConvergenceError`
    (``"raise"``) or nothing (``"ignore"``).
    """
    _check(scope, k)
    _check_options(residual_tol, on_failure)
    momenta = [float(momentum)] * k if isinstance(momentum, (int, float)) else [float(m) for m in momentum]
    if len(momenta) < k:
        raise ValueError(f"need one momentum per triple ({k}), got {len(momenta)}")
    gen = torch.Generator().manual_seed(seed)
    dtype, shape = scope.source.dtype, scope.in_shape
    sigmas: list[Tensor] = []
    vs: list[Tensor] = []  # eigen-inputs, flattened
    us: list[Tensor] = []  # eigen-outputs, flattened
    ftus: list[Tensor] = []  # F^T u_j, for the exact deflation of D^T
    passes, steps_used = 0, []

    def deflated(v: Tensor) -> tuple[Tensor, Tensor]:
        nonlocal passes
        fv, ftfv = scope.normal_apply(v.view(1, 1, *shape))
        passes += 1
        fv, ftfv = fv.flatten(), ftfv.flatten()
        if not sigmas:
            return fv, ftfv
        s, V, U, FtU = torch.stack(sigmas), torch.stack(vs), torch.stack(us), torch.stack(ftus)
        a = s * (V @ v)  # sigma_j <v_j, v>
        dv = fv - a @ U
        # D^T D v = F^T F v - sum_j a_j F^T u_j - sum_j sigma_j v_j <u_j, D v>
        dtdv = ftfv - a @ FtU - (s * (U @ dv)) @ V
        return dv, dtdv

    for j in range(k):
        m = momenta[j]
        v = torch.randn(scope.in_features, generator=gen, dtype=torch.float64).to(dtype)
        v = v / v.norm()
        v_prev = torch.zeros_like(v)
        used = 0
        for _ in range(steps):
            u, g = deflated(v)  # u = D v, g = D^T D v
            used += 1
            sigma2 = v @ g
            if tol is not None and sigma2 > 0 and (g - sigma2 * v).norm() / sigma2 < tol:
                break
            v_next = g - m * v_prev
            nrm = v_next.norm()
            if nrm == 0:
                break
            v_prev, v = v / nrm, v_next / nrm
        u, _ = deflated(v)
        sigma = u.norm()
        u = u / sigma.clamp_min(torch.finfo(dtype).tiny)
        sigmas.append(sigma)
        vs.append(v)
        us.append(u)
        ftus.append(scope.transpose_apply(u.view(1, *scope.out_shape)).flatten())
        steps_used.append(used)
    order = torch.argsort(torch.stack(sigmas), descending=True)
    result = SVDResult(
        singular_values=torch.stack(sigmas)[order],
        eigen_inputs=torch.stack(vs)[order].view(k, *shape),
        eigen_outputs=torch.stack(us)[order].view(k, *scope.out_shape),
        passes=passes,
        method="power",
        meta={"steps": steps_used, "momentum": momenta[:k], "tol": tol, "transpose_passes": k},
    )
    advice = "raise steps, lower the momentum, or use method='krylov'"
    return _verify(result, scope, torch.stack(ftus)[order], residual_tol, on_failure, advice)


def krylov_svd(
    scope: LinearScope, k: int = 8, *, tol: float = 1e-6, ncv: int | None = None, maxiter: int | None = None,
    seed: int = 0, residual_tol: float = 1e-3, on_failure: str = "warn",
) -> SVDResult:
    """Top-``k`` triples by ARPACK's implicitly restarted Lanczos method on ``F^T F``.

    ``tol`` is ARPACK's relative accuracy on the eigenvalues ``sigma^2``; ``ncv`` the Krylov subspace
    size (default ``max(2k + 1, 20)``).  The operator is applied in float64 on the SciPy side and in
    the network's dtype on the PyTorch side.  Convergence is checked on ``F`` as in :func:`power_svd`
    (two extra batched passes).
    """
    from scipy.sparse.linalg import LinearOperator, eigsh

    _check(scope, k)
    _check_options(residual_tol, on_failure)
    n = scope.in_features
    if k >= n:
        raise ValueError(f"the Krylov method needs k < in_features ({n}); materialise F for a full SVD")
    dtype, shape = scope.source.dtype, scope.in_shape
    passes = 0

    def matvec(x: np.ndarray) -> np.ndarray:
        nonlocal passes
        v = torch.from_numpy(np.ascontiguousarray(x, dtype=np.float64).reshape(-1)).to(dtype)
        _, ftfv = scope.normal_apply(v.view(1, 1, *shape))
        passes += 1
        return ftfv.flatten().double().numpy()

    op = LinearOperator((n, n), matvec=matvec, rmatvec=matvec, dtype=np.float64)
    v0 = np.random.default_rng(seed).standard_normal(n)
    ncv = ncv if ncv is not None else min(n, max(2 * k + 1, 20))
    values, vectors = eigsh(op, k=k, which="LM", tol=tol, ncv=ncv, maxiter=maxiter, v0=v0)
    order = np.argsort(values)[::-1]
    values, vectors = values[order], vectors[:, order]
    v = torch.from_numpy(np.ascontiguousarray(vectors.T)).to(dtype).view(k, *shape)
    fv = scope.apply(v.unsqueeze(0))[0].flatten(1)  # (k, out): F v_j = sigma_j u_j, one batched pass
    sigma = fv.norm(dim=1)
    u = fv / sigma.clamp_min(torch.finfo(dtype).tiny).unsqueeze(1)
    result = SVDResult(
        singular_values=sigma,
        eigen_inputs=v,
        eigen_outputs=u.view(k, *scope.out_shape),
        passes=passes,
        method="krylov",
        meta={"tol": tol, "ncv": ncv, "eigenvalues": torch.from_numpy(values.copy()), "sqrt_eigenvalues": [
            math.sqrt(max(float(x), 0.0)) for x in values]},
    )
    return _verify(result, scope, None, residual_tol, on_failure, "lower tol or raise ncv / maxiter")
