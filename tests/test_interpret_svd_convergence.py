"""SVD convergence is measured on F itself and reported: a momentum too large or too few steps warn (or raise)
instead of returning wrong singular triples silently."""

from __future__ import annotations

import warnings

import pytest
import torch
from torch import nn

from linearlens.interpret import LinearScope, krylov_svd, power_svd
from linearlens.interpret.svd import SVDConvergenceError, SVDConvergenceWarning


@pytest.fixture(scope="module")
def setup():
    torch.manual_seed(5)
    net = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.Conv2d(8, 3, 3, padding=1)).double().eval()
    scope = LinearScope(net, torch.rand(1, 3, 5, 5, generator=torch.Generator().manual_seed(1), dtype=torch.float64))
    f = scope.materialize()[0]
    return scope, f, torch.linalg.svdvals(f)


def _independent_residuals(result, f):
    v, u, s = result.eigen_inputs.flatten(1), result.eigen_outputs.flatten(1), result.singular_values
    return torch.stack([(v @ f.T - s[:, None] * u).norm(dim=1) / s, (u @ f - s[:, None] * v).norm(dim=1) / s], 1)


def test_converged_power_svd_reports_small_residuals(setup):
    scope, f, s = setup
    with warnings.catch_warnings():
        warnings.simplefilter("error", SVDConvergenceWarning)
        result = power_svd(scope, 1, steps=400, momentum=0.0, tol=1e-7)
    assert result.converged.all()
    assert torch.allclose(result.singular_values, s[:1], rtol=1e-6)
    assert torch.allclose(result.residuals, _independent_residuals(result, f), atol=1e-9)  # measured on F itself
    assert (result.residuals <= 1e-3).all()


def test_momentum_too_large_warns_and_the_triples_are_indeed_wrong(setup):
    scope, f, s = setup
    momentum = s[0].item() ** 4  # far beyond sigma_2^4 / 4
    with pytest.warns(SVDConvergenceWarning, match=r"not converged.*lower the momentum"):
        result = power_svd(scope, 2, steps=30, momentum=momentum)
    assert not result.converged.all()
    # The warning is not a false alarm: the failed triples are wrong against the dense SVD.
    bad = ~result.converged
    assert ((result.singular_values[bad] - s[:2][bad]).abs() > 1e-3).any() or \
        (_independent_residuals(result, f)[bad] > 1e-3).all()
    assert torch.allclose(result.residuals, _independent_residuals(result, f), atol=1e-9)


def test_too_few_steps_raise_when_asked(setup):
    scope, _, _ = setup
    with pytest.raises(SVDConvergenceError, match="raise steps"):
        power_svd(scope, 2, steps=1, on_failure="raise")
    with warnings.catch_warnings():
        warnings.simplefilter("error", SVDConvergenceWarning)
        result = power_svd(scope, 2, steps=1, on_failure="ignore")
    assert not result.converged.all() and result.residuals.shape == (2, 2)


def test_krylov_reports_convergence(setup):
    scope, f, s = setup
    result = krylov_svd(scope, 3, tol=1e-12)
    assert result.converged.all() and (result.residuals < 1e-10).all()
    assert torch.allclose(result.residuals, _independent_residuals(result, f), atol=1e-12)


def test_bad_convergence_options(setup):
    scope, _, _ = setup
    with pytest.raises(ValueError, match="on_failure must be one of"):
        power_svd(scope, 1, on_failure="explode")
    with pytest.raises(ValueError, match="residual_tol must be > 0"):
        krylov_svd(scope, 1, residual_tol=0.0)
