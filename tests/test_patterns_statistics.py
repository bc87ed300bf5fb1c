"""Streaming moments: batch-order invariance, closed forms per regime, convolution = linear layer on patches."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

from linearlens.patterns import fit_patterns
from linearlens.patterns.fit import layer_moments


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    """Tiny tensors: one intra-op thread (OpenMP spin-waiting on shared cores costs 20x here)."""
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)



def conv_bn_net() -> nn.Module:
    torch.manual_seed(1)
    net = nn.Sequential(nn.Conv2d(3, 4, 3, stride=2, padding=1), nn.BatchNorm2d(4), nn.ReLU(),
                        nn.Flatten(), nn.Linear(4 * 4 * 4, 5)).double().eval()
    with torch.no_grad():
        net[1].running_mean.uniform_(-0.3, 0.3)
        net[1].running_var.uniform_(0.5, 2.0)
        net[1].weight.uniform_(0.5, 1.5)
    return net


def assert_moments_equal(a, b, tol=1e-9):
    for regime in ("positive", "negative"):
        for field in ("count", "mean_x", "mean_y", "m2_y", "c_xy"):
            torch.testing.assert_close(getattr(getattr(a, regime), field), getattr(getattr(b, regime), field),
                                       rtol=tol, atol=tol)


@settings(max_examples=5, deadline=None)
@given(st.lists(st.integers(1, 17), min_size=1, max_size=6))
def test_moments_do_not_depend_on_how_the_data_is_batched(sizes):
    net = conv_bn_net()
    x = torch.randn(40, 3, 8, 8, dtype=torch.float64, generator=torch.Generator().manual_seed(0)) + 0.5
    cuts = torch.tensor(sizes).cumsum(0)
    chunks = [c for c in x.tensor_split(cuts[cuts < 40].tolist()) if len(c)]
    _, whole, _ = layer_moments(net, [x])
    _, streamed, images = layer_moments(net, chunks)
    assert images == 40
    for name in whole:
        assert_moments_equal(whole[name], streamed[name])


def test_moments_equal_the_direct_formulas_per_regime():
    net = nn.Sequential(nn.Flatten(), nn.Linear(6, 3)).double().eval()
    x = torch.randn(300, 6, 1, 1, dtype=torch.float64) * 3 + 2  # a large mean tests the stable merge
    _, moments, _ = layer_moments(net, x.split(7))
    m = moments["1"]
    xs = x.flatten(1)
    y = net(x).detach()
    for o in range(3):
        for regime, mask in ((m.positive, y[:, o] > 0), (m.negative, y[:, o] <= 0)):
            xr, yr = xs[mask], y[mask, o]
            assert float(regime.count[o]) == mask.sum()
            torch.testing.assert_close(regime.mean_x[:, o], xr.mean(0))
            torch.testing.assert_close(regime.c_xy[:, o], ((xr - xr.mean(0)) * (yr - yr.mean())[:, None]).sum(0))
            torch.testing.assert_close(regime.m2_y[o], ((yr - yr.mean()) ** 2).sum())
    overall = m.overall()
    torch.testing.assert_close(overall.cov_xy, ((xs - xs.mean(0)).T @ (y - y.mean(0))) / len(xs))


def test_convolution_statistics_equal_the_linear_layer_on_unfolded_patches():
    torch.manual_seed(0)
    conv = nn.Conv2d(2, 3, 3, stride=2, padding=1, dilation=1).double().eval()
    x = torch.randn(6, 2, 9, 9, dtype=torch.float64) + 0.3
    patches = F.unfold(x, 3, padding=1, stride=2).transpose(1, 2).reshape(-1, 2 * 9)  # one row per location
    linear = nn.Linear(18, 3).double().eval()
    with torch.no_grad():
        linear.weight.copy_(conv.weight.flatten(1))
        linear.bias.copy_(conv.bias)
    _, conv_m, _ = layer_moments(nn.Sequential(conv).eval(), [x[:2], x[2:]])
    _, lin_m, _ = layer_moments(nn.Sequential(linear).eval(), [patches])
    assert_moments_equal(conv_m["0"], lin_m["0"], 1e-10)
    pc, pl = fit_patterns(nn.Sequential(conv).eval(), [x]), fit_patterns(nn.Sequential(linear).eval(), [patches])
    for f in ("linear", "positive", "negative"):
        torch.testing.assert_close(getattr(pc.layers["0"], f), getattr(pl.layers["0"], f))


def test_batch_norm_is_folded_into_the_convolution():
    """Patterns of conv + BN equal those of one convolution with the folded weight and bias."""
    net = conv_bn_net()
    conv, bn = net[0], net[1]
    s = bn.weight / torch.sqrt(bn.running_var + bn.eps)
    folded = nn.Conv2d(3, 4, 3, stride=2, padding=1).double().eval()
    with torch.no_grad():
        folded.weight.copy_(conv.weight * s.view(-1, 1, 1, 1))
        folded.bias.copy_((conv.bias - bn.running_mean) * s + bn.bias)
    x = torch.randn(10, 3, 8, 8, dtype=torch.float64)
    a = fit_patterns(net, [x]).layers["0"]
    assert a.layer.norm == "1"
    b = fit_patterns(nn.Sequential(folded).eval(), [x]).layers["0"]
    for f in ("linear", "positive", "negative"):
        torch.testing.assert_close(getattr(a, f), getattr(b, f))
    w = folded.weight.flatten(1)
    torch.testing.assert_close((w * a.linear).sum(1), torch.ones(4, dtype=torch.float64))  # w^T a = 1


def test_aopc_is_the_mean_drop_from_the_first_point():
    from linearlens.metrics.degradation import aopc

    curves = torch.tensor([[0.9, 0.6, 0.3, 0.0], [0.5, 0.5, 0.5, 0.5], [0.2, 0.4, 0.6, 0.8]])
    torch.testing.assert_close(aopc(curves), torch.tensor([0.45, 0.0, -0.3]))
