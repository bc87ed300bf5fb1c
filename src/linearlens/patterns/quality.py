"""The quality criterion rho of a signal estimator (Eq. (1) of the PatternNet paper), per neuron and layer.

``rho(S) = 1 - max_v corr(y, v^T (x - S(x)))``: how much of the output can still be read, linearly,
from the estimated distractor ``d = x - S(x)``.  Every estimator here is ``S(x) = a+ u + a- v`` with
``u = [y > 0] w^T x`` and ``v = [y <= 0] w^T x`` (``a+ = a-`` for the one-component ones; the regime
by the pre-activation with bias), so with ``q = [x, u, v]`` all that is needed from a data set is the
covariance of ``q``:

    cov[d]    = C_xx - a+ C_ux - C_xu a+^T - a- C_vx - C_xv a-^T + C_uu a+a+^T + C_vv a-a-^T + C_uv (a+a-^T + a-a+^T)
    cov[d, y] = C_xu + C_xv - a+ (C_uu + C_uv) - a- (C_uv + C_vv)

As in Sec. 5 the patterns, the regression vector ``v`` and the evaluation use three separate data
sets: ``v`` is the least-squares regression of ``y`` on ``d`` (ridge ``1e-6 * tr(C_xx) / D``,
since ``d`` has no variance along ``w`` for an exact estimator) on the second set, and the
correlation is measured on the third.  Convolutions contribute ``rows_per_image`` random output
locations per image (their input patches), to keep the ``D x D`` covariances affordable.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .estimators import filter_pattern, random_pattern
from .fit import _images, layer_hooks, layer_rows
from .layers import PatternLayer, conv_padding, folded_bias, folded_weight
from .patternset import PatternSet

__all__ = ["JointCovariance", "joint_covariances", "estimator_patterns", "signal_quality", "quality_per_layer"]

QUALITY_ESTIMATORS = ("random", "w", "a", "a+-")


@dataclass
class JointCovariance:
    """Streaming mean and co-moment of ``q = [x (D), u (O), v (O)]`` (Chan et al.'s merge)."""

    count: float
    mean: Tensor
    comoment: Tensor
    d: int

    def merge(self, q: Tensor) -> JointCovariance:
        q = q.double()
        n_b = q.shape[0]
        mean_b = q.mean(0)
        centred = q - mean_b
        c_b = centred.T @ centred
        n = self.count + n_b
        delta = mean_b - self.mean
        return JointCovariance(
            n, self.mean + delta * (n_b / n), self.comoment + c_b + torch.outer(delta, delta) * (self.count * n_b / n),
            self.d,
        )

    @property
    def cov(self) -> Tensor:
        return self.comoment / max(self.count, 1.0)


def _sample_rows(module: nn.Module, x: Tensor, y: Tensor, rows_per_image: int, gen: torch.Generator) -> tuple:
    if not isinstance(module, nn.Conv2d):
        return x.reshape(-1, x.shape[-1]), layer_rows(module, y)
    patches = F.unfold(x, module.kernel_size, module.dilation, conv_padding(module), module.stride)  # (N, D, L)
    n, _, locations = patches.shape
    pick = torch.randint(0, locations, (n, min(rows_per_image, locations)), generator=gen).to(x.device)
    xs = patches.gather(2, pick[:, None].expand(-1, patches.shape[1], -1)).permute(0, 2, 1)
    ys = y.flatten(2).gather(2, pick[:, None].expand(-1, y.shape[1], -1)).permute(0, 2, 1)
    return xs.reshape(-1, xs.shape[-1]), ys.reshape(-1, ys.shape[-1])


def joint_covariances(
    model: nn.Module, data: Iterable[Any], layers: list[PatternLayer], rows_per_image: int = 16, seed: int = 0
) -> dict[str, JointCovariance]:
    """Covariance of ``[x, u, v]`` of every pattern layer over ``data`` (one pass)."""
    modules = dict(model.named_modules())
    gen = torch.Generator().manual_seed(seed)
    out: dict[str, JointCovariance] = {}

    def sink(layer: PatternLayer, module: nn.Module, x: Tensor, y: Tensor) -> None:
        xs, ys = _sample_rows(module, x, y, rows_per_image, gen)
        bias = folded_bias(module, modules[layer.norm] if layer.norm else None).to(ys.dtype)
        positive = (ys > 0).to(ys.dtype)
        linear = ys - bias  # w^T x: the bias is a constant neuron, outside the estimator
        q = torch.cat([xs, positive * linear, (1 - positive) * linear], 1)
        if layer.name not in out:
            p = q.shape[1]
            out[layer.name] = JointCovariance(0.0, q.new_zeros(p, dtype=torch.float64),
                                              q.new_zeros(p, p, dtype=torch.float64), xs.shape[1])
        out[layer.name] = out[layer.name].merge(q)

    device = next((p.device for p in model.parameters()), None)
    with torch.no_grad(), layer_hooks(model, [la for la in layers if la.kind != "norm"], sink):
        for batch in data:
            model(_images(batch).to(device))
    return out


def estimator_patterns(
    patterns: PatternSet, model: nn.Module, name: str, seed: int = 0
) -> dict[str, tuple[Tensor, Tensor]]:
    """``(a+, a-)`` of layer ``name`` for each estimator of Fig. 3, ``(O, D)`` float64."""
    lp = patterns.layers[name]
    modules = dict(model.named_modules())
    w = folded_weight(modules[name], modules[lp.layer.norm] if lp.layer.norm else None)
    gen = torch.Generator().manual_seed(seed)
    rand, filt = random_pattern(w, gen), filter_pattern(w)
    return {
        "random": (rand, rand), "w": (filt, filt), "a": (lp.linear.double(), lp.linear.double()),
        "a+-": (lp.positive.double(), lp.negative.double()),
    }


def _blocks(stats: JointCovariance) -> tuple[Tensor, Tensor, Tensor]:
    """``C_xx`` ``(D, D)``, ``C_xz`` ``(O, D, 2)`` and ``C_zz`` ``(O, 2, 2)`` with ``z = (u, v)`` per neuron."""
    c, d = stats.cov, stats.d
    n_out = (c.shape[0] - d) // 2
    cxz = c[:d, d:].reshape(d, 2, n_out).permute(2, 0, 1)
    czz = c[d:, d:].reshape(2, n_out, 2, n_out).diagonal(dim1=1, dim2=3).permute(2, 0, 1)
    return c[:d, :d], cxz, czz


def signal_quality(a_pos: Tensor, a_neg: Tensor, regression: JointCovariance, evaluation: JointCovariance) -> Tensor:
    """rho (Eq. (1)) of every neuron, ``(O,)``: ``v`` fitted on ``regression``, measured on ``evaluation``.

    ``cov[d] = C_xx + U S U^T`` with ``U = [A, C_xz]`` (``A = [a+, a-]``) and ``S = [[C_zz, -I], [-I, 0]]``
    is a rank-4 update of ``C_xx``, so ``v = (cov[d] + lambda I)^-1 cov[d, y]`` costs one Cholesky
    factorisation per layer and ``O(D^2)`` per neuron (Woodbury), never a ``D x D`` matrix per neuron.
    """
    a = torch.stack([a_pos, a_neg], -1).double()  # (O, D, 2)
    cxx, cxz, czz = _blocks(regression)
    n_out, d = a.shape[:2]
    c = cxz.sum(-1) - (a @ czz.sum(-1, keepdim=True))[..., 0]  # cov[d, y], y = u + v
    ridge = 1e-6 * cxx.diagonal().sum().clamp_min(1e-30) / d
    chol = torch.linalg.cholesky(cxx + ridge * torch.eye(d, dtype=cxx.dtype))
    u = torch.cat([a, cxz], -1)  # (O, D, 4)
    b_inv_u = torch.cholesky_solve(u.permute(1, 0, 2).reshape(d, -1), chol).reshape(d, n_out, 4).permute(1, 0, 2)
    b_inv_c = torch.cholesky_solve(c.T, chol).T  # (O, D)
    eye2 = torch.eye(2, dtype=a.dtype).expand(n_out, 2, 2)
    s_inv = torch.cat([torch.cat([torch.zeros_like(czz), -eye2], 2), torch.cat([-eye2, -czz], 2)], 1)
    small = s_inv + u.transpose(1, 2) @ b_inv_u
    v = b_inv_c - (b_inv_u @ torch.linalg.solve(small, (u.transpose(1, 2) @ b_inv_c[..., None])))[..., 0]
    cxx, cxz, czz = _blocks(evaluation)
    c = cxz.sum(-1) - (a @ czz.sum(-1, keepdim=True))[..., 0]
    va = (v[:, None, :] @ a)[:, 0]  # (O, 2): v^T A
    zv = (v[:, None, :] @ cxz)[:, 0]  # (O, 2): C_zx v
    var_d = ((v @ cxx) * v).sum(-1) - 2 * (va * zv).sum(-1) + ((va[:, None, :] @ czz)[:, 0] * va).sum(-1)
    num, den = (v * c).sum(-1), (var_d.clamp_min(0) * czz.sum((1, 2))).sqrt()
    return 1 - torch.where(den > 0, num / den.clamp_min(1e-300), torch.zeros_like(num))


def quality_per_layer(
    model: nn.Module,
    patterns: PatternSet,
    regression_data: Iterable[Any],
    evaluation_data: Iterable[Any],
    rows_per_image: int = 16,
    seed: int = 0,
    variants: dict[str, PatternSet] | None = None,
) -> dict[str, dict[str, float]]:
    """Mean rho over the neurons of every layer, for the estimators of Fig. 3 (random, ``S_w``, ``S_a``, ``S_a+-``).

    ``variants`` adds the ``S_a+-`` patterns of other pattern sets (e.g. fitted with another ``centre``)
    as estimators ``"a+- (<label>)"``.  Neurons that never vary on the evaluation data (dead units) are
    left out of the mean.
    """
    layers = [lp.layer for lp in patterns.layers.values() if lp.layer.kind != "norm"]
    fit_v = joint_covariances(model, regression_data, layers, rows_per_image, seed)
    held_out = joint_covariances(model, evaluation_data, layers, rows_per_image, seed + 1)
    out: dict[str, dict[str, float]] = {}
    for layer in layers:
        ev = held_out[layer.name]
        var_y = _blocks(ev)[2].sum((1, 2))
        alive = var_y > 1e-12 * var_y.max().clamp_min(1e-300)
        out[layer.name] = {}
        candidates = estimator_patterns(patterns, model, layer.name, seed)
        for label, other in (variants or {}).items():
            lp = other.layers[layer.name]
            candidates[f"a+- ({label})"] = (lp.positive, lp.negative)
        for est, (ap, an) in candidates.items():
            rho = signal_quality(ap.to(torch.float64), an.to(torch.float64), fit_v[layer.name], ev)
            out[layer.name][est] = float(rho[alive].mean()) if bool(alive.any()) else float("nan")
    return out
