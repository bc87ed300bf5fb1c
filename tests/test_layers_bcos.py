"""B-cos layers (linearlens.layers.bcos) against an independent construction of Eqs. (3), (9)-(11), (17).

Every test compares with the reference in ``conftest.py`` (explicit ``F.pad`` + ``F.unfold`` matrices, the
cosine per unit from the formula, the MaxOut winner picked by hand), never with the engine itself.
"""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from linearlens.engine import run_frozen
from linearlens.explain import explain
from linearlens.layers import AddInverse, BcosConv2d, BcosLinear, LogitLayer

pytestmark = pytest.mark.usefixtures("single_thread")

BS = (1.0, 1.25, 2.0, 2.5)
PADDING_MODES = ("zeros", "reflect", "replicate", "circular")
# (kernel_size, stride, padding, dilation, groups)
CONV_VARIANTS = {
    "k3p1": (3, 1, 1, 1, 1),
    "k3s2": (3, 2, 1, 1, 1),
    "dil2": (3, 1, 2, 2, 1),
    "groups2": (3, 1, 1, 1, 2),
    "asym": ((3, 2), (2, 1), (1, 0), 1, 1),
    "pad2": (3, 1, 2, 1, 1),  # padding larger than half the kernel, as nn.Conv2d allows
    "k1": (1, 1, 0, 1, 1),
}


def make_conv(variant: str, b: float, max_out: int, padding_mode: str = "zeros", **kw) -> BcosConv2d:
    k, s, p, d, g = CONV_VARIANTS[variant]
    layer = BcosConv2d(4, 2, k, s, p, d, g, padding_mode, b=b, max_out=max_out, **kw)
    return layer.double()


def per_sample(ref_fn, layer, x):
    return [ref_fn(layer, x[n]) for n in range(x.shape[0])]


# --- f(x) = W(x) x and the rows of W(x), conv ---------------------------------------------------------


@pytest.mark.parametrize("padding_mode", PADDING_MODES)
@pytest.mark.parametrize("variant", sorted(CONV_VARIANTS))
@pytest.mark.parametrize("max_out", [1, 2, 3])
@pytest.mark.parametrize("b", BS)
def test_conv_matches_reference(ref, b, max_out, variant, padding_mode):
    """Output and explanation rows equal the explicit W~(x) of Eq. (11); f(x) = W(x) x (Eq. (10))."""
    layer = make_conv(variant, b, max_out, padding_mode)
    x = torch.randn(2, 4, 5, 5, dtype=torch.float64)
    refs = per_sample(ref.conv, layer, x)
    out = layer(x)
    for n, r in enumerate(refs):
        assert ref.rel_err(out[n], r.out) < 1e-5
        # the reference itself is a linear map reproducing the output
        assert ref.rel_err(r.matrix @ x[n].flatten(), r.out.flatten()) < 1e-10

    e = explain(nn.Sequential(layer, nn.Flatten()), x, "all")
    assert e.weights.shape == (2, out[0].numel(), 4, 5, 5)
    for n, r in enumerate(refs):
        assert ref.rel_err(e.weights[n].flatten(1), r.matrix) < 1e-4
    wx = (e.weights * x[:, None]).flatten(2).sum(-1)
    assert ref.rel_err(wx, out.flatten(1)) < 1e-10
    assert e.residual.abs().max() <= 1e-10 * out.abs().max()


@pytest.mark.parametrize("variant", ["k3p1", "groups2", "dil2"])
@pytest.mark.parametrize("b", [1.25, 2.5])
def test_conv_float32(ref, b, variant):
    """In float32 the rows still match the float64 reference and f(x) = W(x) x to float precision."""
    layer = make_conv(variant, b, 2, "reflect").float()
    x = torch.randn(3, 4, 5, 5)
    e = explain(nn.Sequential(layer, nn.Flatten()), x, "all")
    assert e.weights.dtype == torch.float32
    for n in range(3):
        r = ref.conv(layer, x[n])
        assert ref.rel_err(e.weights[n].flatten(1), r.matrix) < 1e-3
    out = layer(x).flatten(1)
    assert ref.rel_err((e.weights * x[:, None]).flatten(2).sum(-1), out) < 1e-5


# --- f(x) = W(x) x and the rows of W(x), linear -------------------------------------------------------


@pytest.mark.parametrize("max_out", [1, 2, 3])
@pytest.mark.parametrize("b", BS)
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_linear_matches_reference(ref, b, max_out, dtype):
    layer = BcosLinear(18, 5, b=b, max_out=max_out).to(dtype)
    x = torch.randn(3, 2, 3, 3, dtype=dtype)
    tol = 1e-5 if dtype == torch.float64 else 1e-3
    out = layer(x.flatten(1))
    e = explain(nn.Sequential(nn.Flatten(), layer), x, "all")
    for n in range(3):
        r = ref.linear(layer, x[n].flatten())
        assert ref.rel_err(out[n], r.out) < tol
        assert ref.rel_err(e.weights[n].flatten(1), r.matrix) < max(tol, 1e-4)
    wx = (e.weights * x[:, None]).flatten(2).sum(-1)
    assert ref.rel_err(wx, out) < (1e-10 if dtype == torch.float64 else 1e-5)


def test_linear_accepts_extra_leading_dims(ref):
    layer = BcosLinear(6, 4, b=2, max_out=2).double()
    x = torch.randn(2, 3, 6, dtype=torch.float64)
    out = layer(x)
    assert out.shape == (2, 3, 4)
    assert ref.rel_err(out[1, 2], ref.linear(layer, x[1, 2]).out) < 1e-5


# --- B = 1, gamma, MaxOut -----------------------------------------------------------------------------


@pytest.mark.parametrize("padding_mode", PADDING_MODES)
@pytest.mark.parametrize("variant", ["k3p1", "k3s2", "dil2", "groups2", "pad2"])
def test_b1_is_conv_with_unit_norm_kernels(ref, variant, padding_mode):
    """Sec. 3.1: for B = 1 the B-cos transform is the linear transform with w_hat."""
    k, s, p, d, g = CONV_VARIANTS[variant]
    layer = make_conv(variant, 1.0, 1, padding_mode)
    conv = nn.Conv2d(4, 2, k, s, p, d, g, bias=False, padding_mode=padding_mode).double()
    with torch.no_grad():
        conv.weight.copy_(ref.unit_norm(layer.weight))
    x = torch.randn(2, 4, 6, 6, dtype=torch.float64)
    torch.testing.assert_close(layer(x), conv(x), rtol=1e-12, atol=1e-12)


def test_b1_is_linear_with_unit_norm_rows(ref):
    layer = BcosLinear(7, 3, b=1).double()
    x = torch.randn(4, 7, dtype=torch.float64)
    torch.testing.assert_close(layer(x), F.linear(x, ref.unit_norm(layer.weight)), rtol=1e-12, atol=1e-12)
    norms = layer.normalized_weight().norm(dim=1)
    torch.testing.assert_close(norms, torch.ones_like(norms))


@pytest.mark.parametrize("b", [1.0, 2.0, 2.5])
def test_gamma_scales_the_output(b):
    """The fixed output scale gamma (App. C.1) multiplies the output and W(x)."""
    plain = BcosConv2d(3, 4, 3, padding=1, b=b, max_out=2).double()
    scaled = BcosConv2d(3, 4, 3, padding=1, b=b, max_out=2, scale=7.5).double()
    scaled.load_state_dict(plain.state_dict())
    x = torch.randn(2, 3, 5, 5, dtype=torch.float64)
    torch.testing.assert_close(scaled(x), 7.5 * plain(x))
    x.requires_grad_(True)
    (g_plain,) = torch.autograd.grad(run_frozen(plain, x)[:, 1].sum(), x)
    (g_scaled,) = torch.autograd.grad(run_frozen(scaled, x)[:, 1].sum(), x)
    torch.testing.assert_close(g_scaled, 7.5 * g_plain)


@pytest.mark.parametrize("b", [1.0, 1.25, 2.0])
def test_maxout_is_max_of_two_bcos_layers(b):
    """Eq. (17): MaxOut unit u is the max of B-cos units u*max_out + i, computed as separate layers."""
    layer = BcosConv2d(3, 4, 3, padding=1, b=b, max_out=2).double()
    halves = []
    for i in range(2):
        half = BcosConv2d(3, 4, 3, padding=1, b=b).double()
        with torch.no_grad():
            half.weight.copy_(layer.weight[i::2])
        halves.append(half)
    x = torch.randn(2, 3, 6, 6, dtype=torch.float64)
    torch.testing.assert_close(layer(x), torch.maximum(halves[0](x), halves[1](x)))


def test_maxout_rows_come_from_the_winner(ref):
    """Perturbing only the losing unit of a MaxOut pair changes neither the output nor its W(x) row."""
    layer = BcosLinear(5, 1, b=2, max_out=2).double()
    x = torch.randn(1, 5, dtype=torch.float64)
    r = ref.linear(layer, x[0])
    loser = 1 - int(r.winner[0, 0])
    before = layer(x)
    with torch.no_grad():
        layer.weight[loser] += 0.001 * torch.randn(5, dtype=torch.float64)
    torch.testing.assert_close(layer(x), before)
    xg = x.clone().requires_grad_(True)
    (row,) = torch.autograd.grad(run_frozen(layer, xg).sum(), xg)
    torch.testing.assert_close(row[0], r.matrix[0])


# --- padding modes: the patch norm is taken on the padded input the kernel sees ---------------------------


@pytest.mark.parametrize("padding_mode", PADDING_MODES)
@pytest.mark.parametrize("variant", ["k3p1", "dil2", "groups2", "pad2", "asym"])
def test_patch_norm_uses_the_same_padding(ref, variant, padding_mode):
    k, s, p, d, g = CONV_VARIANTS[variant]
    layer = make_conv(variant, 2.0, 1, padding_mode)
    x = torch.rand(2, 4, 6, 6, dtype=torch.float64) + 0.5
    kh, kw = layer.kernel_size
    ph, pw = layer.padding
    mode = "constant" if padding_mode == "zeros" else padding_mode
    padded = F.pad(x, (pw, pw, ph, ph), mode=mode)
    patches = F.unfold(padded, (kh, kw), dilation=layer.dilation, stride=layer.stride)  # (N, C*kh*kw, L)
    per_group = patches.unflatten(1, (g, -1)).norm(dim=2)  # (N, g, L)
    layer_input = padded if padding_mode != "zeros" else x
    norm = layer.patch_norm(layer_input)
    assert norm.shape[:2] == (2, g)
    torch.testing.assert_close(norm.flatten(2), per_group, rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize("padding_mode", PADDING_MODES)
@pytest.mark.parametrize("b", [1.0, 2.0])
def test_output_bounded_by_patch_norm(padding_mode, b):
    """Eq. (4): |B-cos(x; w)| <= ||x_patch||; the bound would fail at the border for a non-zero padding
    mode if the norm were taken on the zero-padded input."""
    layer = BcosConv2d(3, 8, 3, padding=1, padding_mode=padding_mode, b=b).double()
    x = torch.rand(4, 3, 5, 5, dtype=torch.float64) + 1.0  # bright border: large reflected patches
    mode = "constant" if padding_mode == "zeros" else padding_mode
    patches = F.unfold(F.pad(x, (1, 1, 1, 1), mode=mode), 3)
    bound = patches.norm(dim=1).view(4, 1, 5, 5)
    assert (layer(x).abs() <= bound * (1 + 1e-9)).all()


def test_aligned_input_reaches_the_bound():
    """Eq. (4) holds with equality when the input patch is collinear with the kernel, for any B."""
    for b in BS:
        layer = BcosConv2d(2, 1, 3, b=b).double()
        x = 3.0 * layer.weight.detach().clone()  # (1, 2, 3, 3): one patch, aligned with w
        # up to the layer's 1e-6 guard against a zero patch norm in the cosine
        torch.testing.assert_close(layer(x).flatten(), x.norm().reshape(1), rtol=1e-5, atol=0)
        torch.testing.assert_close(layer(-x).flatten(), -x.norm().reshape(1), rtol=1e-5, atol=0)


def test_orthogonal_input_gives_zero():
    layer = BcosLinear(2, 1, b=2.5).double()
    with torch.no_grad():
        layer.weight.copy_(torch.tensor([[1.0, 0.0]]))
    assert layer(torch.tensor([[0.0, 4.0]], dtype=torch.float64)).item() == 0.0


# --- LIVE gradient vs W(x): completeness alone proves nothing -----------------------------------------


@pytest.mark.parametrize("b", BS)
def test_live_gradient_differs_from_w_but_is_also_complete(ref, b):
    """A B-cos unit is 1-homogeneous, so by Euler's theorem its LIVE input gradient g satisfies
    g.x = f(x) just as W(x) x = f(x).  The explanation must be W(x), not g: analytically
    g = |c|^(B-1) (B w_hat - (B-1) c x_hat), which differs from W(x) = |c|^(B-1) w_hat unless B = 1."""
    layer = BcosLinear(6, 3, b=b).double()
    x = torch.randn(1, 6, dtype=torch.float64, requires_grad=True)
    r = ref.linear(layer, x[0])
    live = torch.autograd.functional.jacobian(lambda t: layer(t)[0], x)[:, 0]  # (3, 6)
    xd = x.detach()[0]
    w_hat = ref.unit_norm(layer.weight)
    c = r.cos[:, 0:1]
    expected = c.abs() ** (b - 1) * (b * w_hat - (b - 1) * c * xd / xd.norm())
    assert ref.rel_err(live, expected) < 1e-4
    f = layer(xd[None])[0]
    # completeness of the LIVE gradient (up to the 1e-6 guard in the cosine, which breaks exact homogeneity)
    torch.testing.assert_close(live @ xd, f, rtol=1e-5, atol=0)
    torch.testing.assert_close(r.matrix @ xd, f, rtol=1e-5, atol=0)  # completeness of W(x)
    frozen = torch.autograd.functional.jacobian(lambda t: run_frozen(layer, t)[0], x)[:, 0]
    assert ref.rel_err(frozen, r.matrix) < 1e-4
    gap = (live - r.matrix).norm() / r.matrix.norm()
    if b == 1:
        assert gap < 1e-12
    else:
        assert gap > 0.05 * (b - 1)


def test_live_gradient_of_a_network_differs_from_w(ref):
    """The same holds for a whole network (homogeneous of degree 1 up to the logit bias)."""
    net = nn.Sequential(
        AddInverse(), BcosConv2d(6, 4, 3, padding=1, b=2, max_out=2), BcosConv2d(4, 3, 3, stride=2, b=2),
        nn.AdaptiveAvgPool2d(1), nn.Flatten(), LogitLayer(0.5, -1.0),
    ).double()
    x = torch.rand(2, 3, 6, 6, dtype=torch.float64)
    e = explain(net, x, 1)
    enc = e.inputs.clone().requires_grad_(True)
    live_out = net[1:](enc)
    (live,) = torch.autograd.grad(live_out[:, 1].sum(), enc)
    f_minus_b = e.outputs[:, 0] + 1.0
    torch.testing.assert_close((live * enc).flatten(1).sum(1), f_minus_b, rtol=1e-5, atol=0)
    torch.testing.assert_close((e.weights[:, 0] * enc).flatten(1).sum(1), f_minus_b, rtol=1e-12, atol=0)
    torch.testing.assert_close(e.residual[:, 0], torch.full((2,), -1.0, dtype=torch.float64))
    assert ref.rel_err(live, e.weights[:, 0]) > 0.05


# --- numerical robustness -------------------------------------------------------------------------------


@pytest.mark.parametrize("b", [1.25, 2.0, 2.5])
def test_zero_patches_give_finite_live_gradients(b):
    """An all-zero input patch (black image region without AddInverse) must not make training NaN."""
    conv = BcosConv2d(3, 4, 3, padding=1, b=b, max_out=2)
    x = torch.zeros(1, 3, 7, 7)
    x[..., 4:, :] = torch.rand(1, 3, 3, 7)
    x.requires_grad_(True)
    out = conv(x)
    assert torch.isfinite(out).all()
    out.sum().backward()
    assert torch.isfinite(x.grad).all() and torch.isfinite(conv.weight.grad).all()
    lin = BcosLinear(3, 2, b=b)
    z = torch.zeros(2, 3, requires_grad=True)
    lin(z).sum().backward()
    assert torch.isfinite(z.grad).all() and torch.isfinite(lin.weight.grad).all()


# --- LogitLayer ---------------------------------------------------------------------------------------


def test_logit_layer():
    layer = LogitLayer(temperature=4.0, bias=math.log(0.1 / 0.9))
    x = torch.randn(3, 10, dtype=torch.float64)
    torch.testing.assert_close(layer(x), x / 4.0 + math.log(1 / 9))
    e = explain(nn.Sequential(nn.Flatten(), layer), x.view(3, 10, 1, 1), "all")
    torch.testing.assert_close(e.residual, torch.full((3, 10), math.log(1 / 9), dtype=torch.float64))
    torch.testing.assert_close(e.weights[0, 2].flatten(), torch.eye(10, dtype=torch.float64)[2] / 4)
    for bad in (0.0, -1.0, float("nan"), float("inf")):
        with pytest.raises(ValueError, match="temperature must be finite and > 0"):
            LogitLayer(temperature=bad)
    with pytest.raises(ValueError, match="bias must be finite"):
        LogitLayer(bias=float("inf"))


# --- constructor and input errors -------------------------------------------------------------------------


@pytest.mark.parametrize(
    "kwargs, suggestion",
    [({"scale_fact": 100.0}, "scale"), ({"padding_mod": "zeros"}, "padding_mode"), ({"maxout": 2}, "max_out")],
)
def test_conv_unknown_argument_suggests(kwargs, suggestion):
    with pytest.raises(TypeError, match=rf"unknown argument.*'{list(kwargs)[0]}'.*did you mean '{suggestion}'"):
        BcosConv2d(3, 4, 3, **kwargs)


def test_linear_unknown_argument():
    with pytest.raises(TypeError, match=r"'bias'.*accepted arguments are: in_features"):
        BcosLinear(3, 4, bias=True)
    with pytest.raises(TypeError, match="did you mean 'scale'"):
        BcosLinear(3, 4, scale_fact=10)


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"groups": 2, "in_channels": 3}, r"divisible by groups \(2\)"),
        ({"groups": 3, "out_channels": 4, "in_channels": 6}, r"divisible by groups \(3\)"),
        ({"b": 0.5}, "B must be a finite number >= 1"),
        ({"b": float("nan")}, "B must be a finite number >= 1"),
        ({"max_out": 0}, "max_out must be an integer >= 1"),
        ({"max_out": 1.5}, "max_out must be an integer >= 1"),
        ({"scale": 0.0}, "scale .* must be finite and > 0"),
        ({"padding_mode": "mirror"}, "padding_mode must be one of"),
        ({"kernel_size": 0}, "kernel_size must be an int >= 1"),
        ({"stride": (1, 0)}, "stride must be an int >= 1"),
        ({"padding": -1}, "padding must be an int >= 0"),
        ({"in_channels": 0}, "in_channels must be a positive int"),
    ],
)
def test_conv_inconsistent_arguments(kwargs, match):
    args = {"in_channels": 4, "out_channels": 4, "kernel_size": 3, **kwargs}
    with pytest.raises(ValueError, match=match):
        BcosConv2d(**args)


def test_linear_inconsistent_arguments():
    with pytest.raises(ValueError, match="B must be a finite number >= 1"):
        BcosLinear(3, 4, b=0.9)
    with pytest.raises(ValueError, match="out_features must be a positive int"):
        BcosLinear(3, 0)


def test_wrong_input_shapes():
    conv = BcosConv2d(6, 4, 3)
    with pytest.raises(ValueError, match=r"expected input of shape \(N, 6, H, W\), got \(2, 3, 8, 8\)"):
        conv(torch.rand(2, 3, 8, 8))
    with pytest.raises(ValueError, match=r"expected input of shape \(N, 6, H, W\), got \(6, 8, 8\)"):
        conv(torch.rand(6, 8, 8))
    lin = BcosLinear(5, 2)
    with pytest.raises(ValueError, match="last dimension is 5, got shape"):
        lin(torch.rand(2, 4))
    enc = AddInverse()
    with pytest.raises(ValueError, match=r"AddInverse expected images of shape \(N, 3, \.\.\.\)"):
        enc(torch.rand(2, 6, 4, 4))


def test_weight_layout_and_repr():
    conv = BcosConv2d(4, 6, 3, groups=2, b=2.5, max_out=3, scale=2.0)
    assert conv.weight.shape == (18, 2, 3, 3)
    assert "_ones" not in conv.state_dict()
    text = repr(conv)
    assert "B=2.5" in text and "max_out=3" in text and "groups=2" in text


def test_add_inverse_encoding():
    """Sec. 4 / App. D.2: [r, g, b, 1-r, 1-g, 1-b]; every pixel's channels sum to 3."""
    x = torch.rand(2, 3, 4, 4)
    enc = AddInverse()(x)
    torch.testing.assert_close(enc, torch.cat([x, 1 - x], 1))
    torch.testing.assert_close(enc.sum(1), torch.full((2, 4, 4), 3.0))
    with pytest.raises(ValueError, match="channels must be a positive int"):
        AddInverse(0)
