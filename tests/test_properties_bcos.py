"""Property tests (hypothesis) of ``f(x) = W(x) x + b`` on small networks built from ``BcosConv2d`` / ``BcosLinear``.

Drawn: kernel size, stride, padding, dilation, groups, padding mode, the exponent B, MaxOut, dtype and
batch size.  For every draw the inherent explanation's rows reproduce the outputs (dynamic linearity,
Eq. (3) of the B-cos paper: ``sum W(x) * x + b = f(x)``), and — the check that a layer running live on
the probe would fail — the rows applied to a random sign-mixed probe ``z`` plus the zero-probe residual
equal the two-batch probe run ``y1(z)``.
"""

from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

from linearlens.explain import explain
from linearlens.interpret import LinearScope
from linearlens.layers import BcosConv2d, BcosLinear, LogitLayer

PADDING_MODES = ["zeros", "reflect", "replicate", "circular"]


def _out_size(size: int, k: int, s: int, p: int, d: int) -> int:
    return (size + 2 * p - d * (k - 1) - 1) // s + 1


@st.composite
def bcos_nets(draw):
    """A network: BcosConv2d -> BcosConv2d -> mean pool -> BcosLinear [-> LogitLayer], and its input."""
    size = draw(st.integers(4, 7))
    groups = draw(st.sampled_from([1, 2]))
    c_in = 2 * draw(st.integers(1, 2))
    b = draw(st.sampled_from([1.0, 1.25, 2.0, 2.5]))
    max_out = draw(st.sampled_from([1, 2]))
    layers, channels, spatial = [], c_in, size
    for _ in range(2):
        k = draw(st.integers(1, 3))
        s = draw(st.integers(1, 2))
        d = draw(st.integers(1, 2))
        mode = draw(st.sampled_from(PADDING_MODES))
        p = draw(st.integers(0, min(2, spatial - 1)))  # reflect/circular padding must be smaller than the input
        if _out_size(spatial, k, s, p, d) < 1:
            k, d = 1, 1
        c_out = groups * draw(st.integers(1, 2))
        layers.append(BcosConv2d(channels, c_out, k, s, p, d, groups, mode, b=b, max_out=max_out,
                                 scale=draw(st.sampled_from([1.0, 3.0]))))
        channels, spatial = c_out, _out_size(spatial, k, s, p, d)
    classes = draw(st.integers(1, 3))
    head = [nn.AdaptiveAvgPool2d(1), nn.Flatten(), BcosLinear(channels, classes, b=b, max_out=max_out)]
    bias = draw(st.sampled_from([0.0, -0.7]))
    if bias:
        head.append(LogitLayer(draw(st.sampled_from([1.0, 10.0])), bias))
    torch.manual_seed(draw(st.integers(0, 2**16)))
    dtype = draw(st.sampled_from([torch.float64, torch.float32]))
    model = nn.Sequential(*layers, *head).to(dtype).eval()
    x = torch.rand(draw(st.integers(1, 3)), c_in, size, size, dtype=dtype) + 0.05
    return model, x, bias


def _tolerance(dtype: torch.dtype) -> dict:
    return {"rtol": 1e-9, "atol": 1e-9} if dtype == torch.float64 else {"rtol": 2e-4, "atol": 2e-5}


@settings(max_examples=25, deadline=None)
@given(case=bcos_nets())
def test_rows_times_input_plus_bias_is_the_output(case):
    model, x, bias = case
    e = explain(model, x, "all", method="bcos")
    with torch.no_grad():
        y = model(x)
    assert e.weights.shape == (x.shape[0], y.shape[1], *x.shape[1:])
    reconstructed = (e.weights * x.unsqueeze(1)).flatten(2).sum(-1) + bias
    torch.testing.assert_close(reconstructed, y, **_tolerance(x.dtype))


@settings(max_examples=15, deadline=None)
@given(case=bcos_nets(), seed=st.integers(0, 2**16))
def test_rows_agree_with_an_independent_probe(case, seed):
    model, x, _ = case
    model, x = model.double(), x.double()  # the probe check is exact in float64
    e = explain(model, x, "all", method="linear_rows")
    scope = LinearScope(model, x)
    z = torch.randn(e.inputs.shape, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)
    lhs = (e.weights * z.unsqueeze(1)).flatten(2).sum(-1) + scope.residual
    torch.testing.assert_close(lhs, scope.system(z), rtol=1e-9, atol=1e-9)


def test_a_live_layer_fails_the_probe_check():
    """The probe check can fail: a B-cos layer whose scale is recomputed from the probe is caught."""

    class LiveScaled(nn.Module):  # |cos|^(B-1)-like scale computed outside ``decide``: runs live on probes
        def forward(self, h):
            return h * h.abs().mean(dim=(1, 2, 3), keepdim=True)

    torch.manual_seed(0)
    model = nn.Sequential(BcosConv2d(2, 2, 3, padding=1), LiveScaled(), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
                          BcosLinear(2, 2)).double().eval()
    x = torch.rand(2, 2, 5, 5, dtype=torch.float64)
    try:
        e = explain(model, x, "all", method="linear_rows")
        scope = LinearScope(model, x)
    except Exception as err:  # the engine refusing the live product is also a pass
        assert "mul" in str(err).lower() or "probe" in str(err).lower() or "interpret" in str(err).lower()
        return
    z = torch.randn_like(e.inputs)
    lhs = (e.weights * z.unsqueeze(1)).flatten(2).sum(-1) + scope.residual
    with pytest.raises(AssertionError):
        torch.testing.assert_close(lhs, scope.system(z), rtol=1e-9, atol=1e-9)
