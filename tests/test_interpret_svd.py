"""SVD of a linear interpreter (Alg. 1 and the Krylov method) against torch.linalg.svd of the materialised F."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from linearlens.interpret import LinearScope, krylov_svd, power_svd


@pytest.fixture(autouse=True)
def _one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def _upscaler() -> nn.Module:
    """A 2x PixelShuffle upscaler with ReLU and PReLU: a tall, input-dependent F (Case 2 of the paper)."""
    torch.manual_seed(5)
    return nn.Sequential(
        nn.Conv2d(3, 16, 3, padding=1), nn.ReLU(), nn.Conv2d(16, 16, 3, padding=1), nn.PReLU(16),
        nn.Conv2d(16, 12, 3, padding=1), nn.PixelShuffle(2),
    ).double().eval()


@pytest.fixture(scope="module")
def setup():
    torch.set_num_threads(1)
    x = torch.rand(2, 3, 6, 6, generator=torch.Generator().manual_seed(6), dtype=torch.float64)
    scope = LinearScope(_upscaler(), x, chunk_size=108)
    f = scope.materialize()
    assert f.shape == (2, 3 * 12 * 12, 3 * 6 * 6)
    return scope, f


def _check_triples(result, f: torch.Tensor, k: int, tol: float) -> None:
    u_ref, s_ref, vh_ref = torch.linalg.svd(f)
    assert torch.allclose(result.singular_values, s_ref[:k], rtol=tol, atol=0)
    v = result.eigen_inputs.flatten(1)
    u = result.eigen_outputs.flatten(1)
    # Singular vectors are unique up to sign for distinct singular values.
    assert ((v @ vh_ref[:k].T).diagonal().abs() > 1 - 10 * tol).all()
    assert ((u @ u_ref[:, :k]).diagonal().abs() > 1 - 10 * tol).all()
    # The defining relations u = F v / sigma and v = F^T u / sigma.
    assert torch.allclose(v @ f.T, result.singular_values[:, None] * u, atol=10 * tol)
    assert torch.allclose(u @ f, result.singular_values[:, None] * v, atol=10 * tol)


def test_krylov_svd_matches_dense_svd(setup):
    scope, f = setup
    s0 = torch.linalg.svdvals(f[0])
    assert (s0[:5] - s0[1:6]).min() > 1e-4  # distinct values, so vectors are comparable
    result = krylov_svd(scope.select(0), 4, tol=1e-12)
    _check_triples(result, f[0], 4, 1e-7)
    assert result.passes < 200
    assert (result.residual_norms(scope.select(0)) < 1e-8).all()


def test_svd_is_per_image(setup):
    scope, f = setup
    result = scope.svd(3, image=1, method="krylov", tol=1e-12)
    _check_triples(result, f[1], 3, 1e-7)
    assert not torch.allclose(result.singular_values, torch.linalg.svdvals(f[0])[:3], rtol=1e-3)


def test_power_method_with_deflation_matches_dense_svd(setup):
    """Alg. 1 + deflation on F - sum sigma_j u_j v_j^T, with the momentum of Xu et al."""
    scope, f = setup
    s = torch.linalg.svdvals(f[0])
    momenta = [float(s[j + 1] ** 4 / 4) for j in range(3)]
    result = power_svd(scope.select(0), 3, steps=3000, momentum=momenta, tol=1e-10)
    _check_triples(result, f[0], 3, 1e-6)
    plain = power_svd(scope.select(0), 3, steps=3000, momentum=0.0, tol=1e-10)
    _check_triples(plain, f[0], 3, 1e-6)
    # Momentum accelerates convergence (Xu et al.): fewer passes for the same tolerance.
    assert result.passes < plain.passes


def test_svd_arguments_are_checked(setup):
    scope, _ = setup
    with pytest.raises(ValueError, match="per image"):
        krylov_svd(scope, 2)
    with pytest.raises(ValueError, match="k must be"):
        power_svd(scope.select(0), 0)
    with pytest.raises(ValueError, match="unknown SVD method"):
        scope.svd(2, method="qr")
