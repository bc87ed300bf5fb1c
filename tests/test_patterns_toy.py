"""The linear toy example of Sec. 2 of the PatternNet paper: x = a_s y + a_d eps, a linear neuron y = w^T x.

The sample is drawn noise-free in the sense of the generative model: eps is made exactly uncorrelated
with y, overall and within each regime (projected off [1, y] per regime), so every estimator has a
closed form on the sample and the tests can demand 1e-6 agreement.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from linearlens import explain
from linearlens.patterns import fit_patterns
from linearlens.patterns.quality import quality_per_layer

A_S = torch.tensor([1.0, 0.0], dtype=torch.float64)
MU = 0.5

@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    """Tiny tensors: one intra-op thread (OpenMP spin-waiting on shared cores costs 20x here)."""
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)



def toy_data(a_d: Tensor, n: int = 4000, seed: int = 0, mu: float = MU) -> tuple[Tensor, Tensor]:
    """``(x (n, 2, 1, 1), y (n,))`` with ``y ~ U[-1, 1]`` and ``eps`` of mean ``mu``, uncorrelated with y per regime."""
    gen = torch.Generator().manual_seed(seed)
    y = torch.rand(n, generator=gen, dtype=torch.float64) * 2 - 1
    eps = torch.randn(n, generator=gen, dtype=torch.float64)
    pos = (y > 0).double()
    basis = torch.stack([pos, 1 - pos, pos * y, (1 - pos) * y], 1)
    eps = eps - basis @ torch.linalg.lstsq(basis, eps[:, None]).solution[:, 0]  # exactly uncorrelated with y
    eps = eps / eps.std() + mu
    x = y[:, None] * A_S + eps[:, None] * a_d
    return x.view(n, 2, 1, 1), y


def trained_neuron(x: Tensor, y: Tensor) -> nn.Module:
    """A linear neuron fitted by least squares (the problem is convex: this is what training converges to)."""
    design = torch.cat([x.flatten(1), torch.ones(len(x), 1, dtype=x.dtype)], 1)
    sol = torch.linalg.lstsq(design, y[:, None]).solution[:, 0]
    layer = nn.Linear(2, 1).double()
    with torch.no_grad():
        layer.weight.copy_(sol[:2][None])
        layer.bias.copy_(sol[2:])
    return nn.Sequential(nn.Flatten(), layer).eval()


def cos(u: Tensor, v: Tensor) -> Tensor:
    u = u.reshape(-1, 2)
    return F.cosine_similarity(u, v.reshape(-1, 2).expand_as(u), dim=1)


@pytest.fixture
def toy():
    x, y = toy_data(torch.tensor([1.0, 1.0], dtype=torch.float64))
    model = trained_neuron(x, y)
    patterns = fit_patterns(model, x.split(500))
    return x, y, model, patterns


def test_linear_pattern_is_the_closed_form_and_recovers_a_s(toy):
    x, _, model, patterns = toy
    a = patterns.layers["1"].linear[0]
    out = model(x)[:, 0]
    joint = torch.cov(torch.cat([x.flatten(1), out[:, None]], 1).T, correction=0)
    closed = joint[:2, 2] / joint[2, 2]  # cov[x, y] / sigma_y^2
    torch.testing.assert_close(a, closed, rtol=1e-6, atol=1e-6)
    assert float(cos(a[None], A_S)) >= 0.9999
    w = model[1].weight.detach()[0]
    assert float(w @ a) == pytest.approx(1.0, abs=1e-9)  # w^T a = 1


def test_weights_gradient_deconvnet_guided_backprop_lrp_do_not_recover_the_signal(toy):
    x, _, model, patterns = toy
    xs = x[:64]
    w = model[1].weight.detach()[0]
    assert float(cos(w[None], A_S)) < 0.9
    for method in ("gradient", "deconvnet", "guided_backprop"):
        options = {"abs": False} if method == "gradient" else {}
        maps = explain(model, xs, 0, method=method, **options).channel_attributions[:, 0].flatten(1)
        assert float(cos(maps, A_S).abs().max()) < 0.9, method
    # S_a recovers the signal whatever the distractor's mean (Sec. 4.3)
    signal = explain(model, xs, 0, method="patternnet", patterns=patterns, estimator="a")
    signal = signal.channel_attributions[:, 0].flatten(1)
    assert float(cos(signal, A_S).abs().min()) >= 0.9999
    # attributions: the right one is w ⊙ a_s y; LRP-z (epsilon rule with a tiny epsilon) gives w ⊙ x
    out = model(xs)[:, 0].detach()
    truth = (w * A_S)[None] * out[:, None]
    lrp = explain(model, xs, 0, method="lrp").channel_attributions[:, 0].flatten(1)
    assert float(F.cosine_similarity(lrp, truth, dim=1).mean()) < 0.9
    pa = explain(model, xs, 0, method="patternattribution", patterns=patterns, estimator="a")
    pa = pa.channel_attributions[:, 0].flatten(1)
    torch.testing.assert_close(pa, truth, rtol=1e-6, atol=1e-6)


def test_rotating_the_distractor_rotates_w_but_not_the_pattern():
    weights, patterns = [], []
    for a_d in ([1.0, 1.0], [1.0, 2.0], [1.0, -0.5]):
        x, y = toy_data(torch.tensor(a_d, dtype=torch.float64))
        model = trained_neuron(x, y)
        weights.append(model[1].weight.detach()[0])
        patterns.append(fit_patterns(model, [x]).layers["1"].linear[0])
    for i in range(1, 3):
        assert float(cos(weights[i][None], weights[0])) < 0.99  # w follows the distractor
        assert float(cos(patterns[i][None], patterns[0])) >= 0.9999  # a stays the signal direction
        assert float(cos(patterns[i][None], A_S)) >= 0.9999


def test_two_component_estimator_reduces_to_the_linear_one_on_linear_data(toy):
    """Eq. (7) (the default) with a zero-mean distractor, as Sec. 2 assumes; the regime-centred variant for any mean."""
    x, y = toy_data(torch.tensor([1.0, 1.0], dtype=torch.float64), mu=0.0)
    lp = fit_patterns(trained_neuron(x, y), [x]).layers["1"]
    _, _, model, _ = toy
    centred = fit_patterns(model, [toy[0]], centre="regime").layers["1"]
    for p in (lp, centred):
        torch.testing.assert_close(p.positive, p.linear, rtol=1e-6, atol=1e-6)
        torch.testing.assert_close(p.negative, p.linear, rtol=1e-6, atol=1e-6)
        assert float(cos(p.positive, A_S)) >= 0.9999


def test_eq7_verbatim_leaks_the_distractor_mean_into_the_pattern(toy):
    """With E[y] over all samples (Eq. (7) as printed) a+ = a_s + a_d mu (E+[y] - E[y]) / (E+[y^2] - E+[y] E[y])."""
    x, y, model, _ = toy
    literal = fit_patterns(model, [x]).layers["1"].positive[0]  # centre="all", the default
    out = model(x)[:, 0].detach()
    pos = out > 0
    e_pos, e_all, e2_pos = out[pos].mean(), out.mean(), (out[pos] ** 2).mean()
    a_d = torch.tensor([1.0, 1.0], dtype=torch.float64)
    eps_mean = (x.flatten(1)[:, 1]).mean()  # x_2 = eps
    expected = A_S + a_d * eps_mean * (e_pos - e_all) / (e2_pos - e_pos * e_all)
    torch.testing.assert_close(literal, expected, rtol=1e-6, atol=1e-6)
    assert float(cos(literal[None], A_S)) < 0.99


def test_quality_criterion_separates_the_pattern_from_the_filter(toy):
    x, _, model, patterns = toy
    x2, _ = toy_data(torch.tensor([1.0, 1.0], dtype=torch.float64), seed=1)
    x3, _ = toy_data(torch.tensor([1.0, 1.0], dtype=torch.float64), seed=2)
    rho = quality_per_layer(model, patterns, [x2], [x3])["1"]
    assert rho["a"] > 0.99 and rho["a+-"] > 0.99  # nothing about y is left in x - a y
    # S_w leaves d = x - w y / (w^T w) = (y/2 + eps) (1, 1): rho is 1 - |corr(y, y/2 + eps)| on the held-out set
    w = model[1].weight.detach()[0]
    y3 = x3.flatten(1) @ w
    d = x3.flatten(1) - y3[:, None] * w / (w @ w)
    expected = 1 - torch.corrcoef(torch.stack([y3, d[:, 0]]))[0, 1].abs()
    assert rho["w"] == pytest.approx(float(expected), abs=1e-6)
    assert rho["w"] < 0.8
