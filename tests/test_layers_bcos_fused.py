"""The LIVE B-cos convolution's custom backward and its fused kernels (linearlens.layers._bcos_fused).

* ``gradcheck`` (float64, finite differences) of the training path ``_BcosConv2dLive`` over strides,
  dilations, groups, padding modes, MaxOut and B, for the fused kernels and the eager fallback, and its
  gradients against autograd through the plain differentiable composition of Eq. (9);
* the fused and eager paths agree (values and gradients), on fixed cases and hypothesis-drawn geometries;
* exact 1-homogeneity and ``f(x) = W(x) x`` at input scales 1e-7 ... 1e7 (the absolute epsilon of the
  patch norm used to make the output 75 % too small at 1e-7), with the random-probe check;
* a missing or failing C compiler and ``LINEARLENS_FUSED=0`` fall back to the eager path.
"""

from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn
from torch.func import functional_call

from linearlens.explain import explain
from linearlens.interpret import LinearScope
from linearlens.layers import BcosConv2d
from linearlens.layers import _bcos_fused as fused
from linearlens.layers import bcos as bcos_module

pytestmark = pytest.mark.usefixtures("single_thread")

# (kernel_size, stride, padding, dilation, groups)
GEOMETRIES = {
    "k3p1": (3, 1, 1, 1, 1),
    "k3s2": (3, 2, 1, 1, 1),
    "dil2": (3, 1, 2, 2, 1),
    "groups2": (3, 1, 1, 1, 2),
    "asym": ((3, 2), (2, 1), (1, 0), 1, 1),
    "k1": (1, 1, 0, 1, 1),
}
PADDING_MODES = ("zeros", "reflect", "replicate", "circular")


@pytest.fixture(params=["fused", "eager"])
def path(request, monkeypatch):
    """Run a test once with the fused kernels and once with the eager fallback."""
    if request.param == "fused":
        if not fused.available():
            pytest.skip(f"fused kernels unavailable: {fused.unavailable_reason()}")
    else:
        monkeypatch.setattr(fused, "supports", lambda *tensors, **kwargs: False)
    return request.param


def _layer(geometry: str, b: float, max_out: int, padding_mode: str = "zeros", cin: int = 4, cout: int = 2):
    k, s, p, d, g = GEOMETRIES[geometry]
    return BcosConv2d(cin, cout, k, s, p, d, g, padding_mode, b=b, max_out=max_out, scale=1.7).double()


def _as_function(layer: BcosConv2d):
    return lambda x, w: functional_call(layer, {"weight": w}, (x,))


GRADCHECK_CASES = [(geometry, "zeros", b, m) for geometry in sorted(GEOMETRIES) for b, m in ((2.0, 1), (2.5, 3))]
GRADCHECK_CASES += [("k3p1", mode, b, m) for mode in PADDING_MODES[1:] for b, m in ((2.0, 2), (1.25, 1))]
GRADCHECK_CASES += [("groups2", "circular", 2.0, 2), ("k3s2", "zeros", 1.25, 2), ("dil2", "zeros", 2.0, 2)]


@pytest.mark.parametrize(("geometry", "padding_mode", "b", "max_out"), GRADCHECK_CASES)
def test_live_backward_gradcheck(path, geometry, padding_mode, b, max_out):
    """Finite differences agree with the analytic backward for the input and the weight (float64)."""
    layer = _layer(geometry, b, max_out, padding_mode)
    x = torch.randn(2, 4, 5, 5, dtype=torch.float64, requires_grad=True)
    w = layer.weight.detach().clone().requires_grad_(True)
    assert torch.autograd.gradcheck(_as_function(layer), (x, w), eps=1e-6, atol=1e-7, rtol=1e-5, fast_mode=True)


@pytest.mark.parametrize("geometry", sorted(GEOMETRIES))
@pytest.mark.parametrize(("b", "max_out"), [(2.0, 1), (2.0, 2), (1.5, 2), (3.0, 1)])
def test_live_backward_matches_autograd_of_the_formula(path, geometry, b, max_out):
    """The custom backward equals autograd through the differentiable composition of Eq. (9)
    (``_live_reference``: patch norm, ``|cos|^(B-1)``, MaxOut by ``amax``), input and weight."""
    layer = _layer(geometry, b, max_out, "reflect" if geometry == "k3p1" else "zeros", cin=6, cout=4)
    x = torch.randn(3, 6, 7, 6, dtype=torch.float64, requires_grad=True)
    grad_out = torch.randn_like(layer(x))
    gx, gw = torch.autograd.grad(layer(x), (x, layer.weight), grad_out)
    xp, padding = layer._padded(x)
    reference = layer._live_reference(xp, layer.normalized_weight(), padding)
    rx, rw = torch.autograd.grad(reference, (x, layer.weight), grad_out)
    torch.testing.assert_close(gx, rx, rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(gw, rw, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize(("b", "max_out", "groups"), [(2.0, 1, 1), (2.0, 2, 1), (2.5, 2, 2), (1.25, 3, 1)])
def test_fused_equals_eager(monkeypatch, dtype, b, max_out, groups):
    """Inference, training forward, input and weight gradients and the frozen factor: fused == eager."""
    if not fused.available():
        pytest.skip(f"fused kernels unavailable: {fused.unavailable_reason()}")
    layer = BcosConv2d(8, 6, 3, padding=1, groups=groups, b=b, max_out=max_out, scale=3.0).to(dtype)
    x = torch.randn(4, 8, 9, 9, dtype=dtype)
    grad_out = torch.randn(4, 6, 9, 9, dtype=dtype)

    def run():
        with torch.no_grad():
            inference = layer(x)
        xg = x.clone().requires_grad_(True)
        out = layer(xg)
        gx, gw = torch.autograd.grad(out, (xg, layer.weight), grad_out)
        net = nn.Sequential(layer, nn.AdaptiveAvgPool2d(1), nn.Flatten())
        e = explain(net, x, "all", method="linear_rows") if dtype == torch.float64 else None
        return inference, out.detach(), gx, gw, e

    fast = run()
    monkeypatch.setattr(fused, "supports", lambda *tensors, **kwargs: False)
    slow = run()
    # float32: powf and torch's vectorised pow differ in the last bit, and weight gradients sum many terms
    rtol = 1e-4 if dtype == torch.float32 else 1e-11
    for a, b_ in zip(fast[:4], slow[:4]):
        torch.testing.assert_close(a, b_, rtol=rtol, atol=rtol * b_.abs().max().item())
    tol = {"rtol": rtol, "atol": 1e-13}
    if dtype == torch.float64:
        torch.testing.assert_close(fast[4].weights, slow[4].weights, **tol)


@settings(max_examples=15, deadline=None)
@given(
    kernel=st.integers(1, 3), stride=st.integers(1, 2), dilation=st.integers(1, 2), padding=st.integers(0, 2),
    groups=st.sampled_from([1, 2]), max_out=st.integers(1, 3), b=st.sampled_from([1.25, 2.0, 2.5]),
    batch=st.integers(1, 3), mode=st.sampled_from(PADDING_MODES),
)
def test_fused_equals_eager_property(kernel, stride, dilation, padding, groups, max_out, b, batch, mode):
    """Any geometry: the fused kernels give the eager values and gradients (float64)."""
    if not fused.available():
        return
    if mode != "zeros" and padding >= 5:  # reflect needs padding < input size
        return
    layer = BcosConv2d(4, 2, kernel, stride, padding, dilation, groups, mode, b=b, max_out=max_out).double()
    x = torch.randn(batch, 4, 6, 5, dtype=torch.float64, requires_grad=True)
    out = layer(x)
    grads = torch.autograd.grad(out, (x, layer.weight), torch.ones_like(out))
    original = fused.supports
    fused.supports = lambda *tensors, **kwargs: False
    try:
        out_eager = layer(x)
        grads_eager = torch.autograd.grad(out_eager, (x, layer.weight), torch.ones_like(out_eager))
    finally:
        fused.supports = original
    torch.testing.assert_close(out, out_eager, rtol=1e-12, atol=1e-13)
    for a, e in zip(grads, grads_eager):
        torch.testing.assert_close(a, e, rtol=1e-10, atol=1e-12)


# --- scale: f(a x) = a f(x) and f(x) = W(x) x at every input scale -------------------------------------

SCALES = [1e-7, 1e-5, 1e-3, 1.0, 1e3, 1e5, 1e7]


def _network(dtype: torch.dtype) -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(
        BcosConv2d(3, 8, 3, padding=1, b=2, max_out=2, scale=2.0),
        BcosConv2d(8, 8, 3, stride=2, padding=1, b=2.5, scale=5.0),
        BcosConv2d(8, 4, 1, b=1.25),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
    ).to(dtype).eval()


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("alpha", SCALES)
def test_one_homogeneous_at_every_scale(path, dtype, alpha):
    """A bias-free B-cos network is 1-homogeneous (Eq. (4)'s cos is scale-invariant): inference and the
    training forward at scale alpha equal alpha times the output at scale 1."""
    net = _network(dtype)
    x = torch.rand(2, 3, 8, 8, dtype=dtype) - 0.3
    with torch.no_grad():
        base = net(x)
        scaled = net(x * alpha) / alpha
    training = net(x.mul(alpha).requires_grad_(True)).detach() / alpha
    tol = 1e-4 if dtype == torch.float32 else 1e-11
    torch.testing.assert_close(scaled, base, rtol=tol, atol=tol * base.abs().max().item())
    torch.testing.assert_close(training, base, rtol=tol, atol=tol * base.abs().max().item())


@pytest.mark.parametrize("alpha", SCALES)
def test_explanation_identity_and_probe_at_every_scale(alpha):
    """f(x) = W(x) x with W(x) the explanation rows, and the rows agree with a random probe run
    (<rows, z> + r(x0) = y1(z)), at every input scale (float64)."""
    net = _network(torch.float64)
    x = (torch.rand(2, 3, 8, 8, dtype=torch.float64) - 0.3) * alpha
    e = explain(net, x, "all", method="linear_rows")
    with torch.no_grad():
        f = net(x)
    contributions = (e.weights * e.inputs.unsqueeze(1)).flatten(2).sum(-1)
    torch.testing.assert_close(contributions, f, rtol=1e-9, atol=1e-12 * alpha)
    scope = LinearScope(net, x)
    z = torch.randn_like(e.inputs) * alpha
    lhs = (e.weights * z.unsqueeze(1)).flatten(2).sum(-1) + scope.residual
    torch.testing.assert_close(lhs, scope.system(z), rtol=1e-9, atol=1e-12 * alpha)


def test_zero_patch_output_and_gradient_are_finite(path):
    """The floor that replaced the epsilon keeps an all-zero patch finite (value 0, finite gradient)."""
    layer = BcosConv2d(3, 4, 3, padding=1, b=2.0, max_out=2)
    x = torch.zeros(1, 3, 6, 6)
    x[..., 3:, :] = torch.rand(1, 3, 3, 6)
    x.requires_grad_(True)
    out = layer(x)
    assert out[..., 0, 0].abs().max() == 0
    out.sum().backward()
    assert torch.isfinite(x.grad).all() and torch.isfinite(layer.weight.grad).all()
    assert bcos_module._tiny(x) == torch.finfo(torch.float32).tiny


# --- fallback ------------------------------------------------------------------------------------------


def _reloaded(monkeypatch) -> None:
    monkeypatch.setattr(fused, "_STATE", {})


def test_disabled_by_environment_falls_back(monkeypatch):
    _reloaded(monkeypatch)
    monkeypatch.setenv("LINEARLENS_FUSED", "0")
    assert not fused.available()
    layer = BcosConv2d(3, 4, 3, padding=1)
    x = torch.rand(2, 3, 5, 5)
    assert not fused.supports(x)
    assert layer(x).shape == (2, 4, 5, 5)


def test_failing_compiler_falls_back(monkeypatch, tmp_path):
    """A compiler that fails (here: ``false``) leaves the layer working on the eager path, with a reason."""
    _reloaded(monkeypatch)
    monkeypatch.setenv("CC", "false")
    monkeypatch.setenv("LINEARLENS_CACHE", str(tmp_path))
    assert not fused.available()
    assert "CalledProcessError" in fused.unavailable_reason()
    layer = BcosConv2d(3, 4, 3, padding=1, b=2.0).double()
    x = torch.rand(2, 3, 5, 5, dtype=torch.float64, requires_grad=True)
    out = layer(x)
    out.sum().backward()
    assert torch.isfinite(x.grad).all()


def test_compiler_without_openmp_builds_the_pool_variant(monkeypatch, tmp_path):
    """Where the OpenMP build fails the kernels are built without it and split the batch over the worker pool,
    with the same results."""
    lin = torch.randn(5, 8, 6, 6)
    mult = torch.rand(5, 1, 6, 6) + 0.1
    expected = fused.scale_forward(lin, mult, 1, 1, 2.0, 1.0)[0]
    _reloaded(monkeypatch)
    monkeypatch.setenv("LINEARLENS_CACHE", str(tmp_path))
    monkeypatch.setattr(fused, "_OPENMP_FLAG", "-fno-such-option-linearlens")
    monkeypatch.setattr(fused, "_torch_libgomp_loaded", lambda: True)
    if not fused.available():
        pytest.skip(f"no compiler here: {fused.unavailable_reason()}")
    assert fused._STATE["openmp"] is False and "-fno-such-option-linearlens" not in fused._STATE["flags"]
    monkeypatch.setattr(fused, "_PARALLEL_MIN_ELEMENTS", 0)
    previous = torch.get_num_threads()
    torch.set_num_threads(3)
    try:
        assert torch.equal(fused.scale_forward(lin, mult, 1, 1, 2.0, 1.0)[0], expected)
    finally:
        torch.set_num_threads(previous)


def test_kernels_are_built_once_into_the_cache(monkeypatch, tmp_path):
    """The shared library is compiled into LINEARLENS_CACHE once and reused (no compiler on the second load)."""
    _reloaded(monkeypatch)
    monkeypatch.setenv("LINEARLENS_CACHE", str(tmp_path))
    if not fused.available():
        pytest.skip(f"no compiler here: {fused.unavailable_reason()}")
    built = list(tmp_path.rglob("*.so"))
    assert len(built) == 1
    _reloaded(monkeypatch)

    def no_compiler(*args, **kwargs):
        raise AssertionError("the cached kernels were rebuilt")

    monkeypatch.setattr(fused.subprocess, "run", no_compiler)
    assert fused.available()
    assert list(tmp_path.rglob("*.so")) == built


def test_unsupported_tensors_use_the_eager_path():
    """Strided (neither contiguous nor channels-last) inputs, other dtypes and tensors autograd must track are
    not given to the kernels; the layer still computes the same values from them."""
    x = torch.rand(2, 4, 6, 6)
    assert not fused.supports(x.transpose(2, 3))
    assert not fused.supports(x.half())
    assert not fused.supports(x, x.double())
    with torch.enable_grad():
        assert not fused.supports(x.clone().requires_grad_(True))
    layer = BcosConv2d(4, 2, 3, padding=1).double()
    xt = torch.rand(2, 4, 6, 6, dtype=torch.float64).transpose(2, 3)
    torch.testing.assert_close(layer(xt), layer(xt.contiguous()), rtol=1e-12, atol=1e-13)


# --- channels-last (NHWC) inputs: their own kernels, same values ------------------------------------------

CL = torch.channels_last


def _run_layer(layer: BcosConv2d, x: torch.Tensor, grad_seed: int = 1):
    """Inference output, training output, input and weight gradients (for a fixed dL/dy)."""
    with torch.no_grad():
        inference = layer(x)
    xg = x.detach().clone(memory_format=torch.preserve_format).requires_grad_(True)
    out = layer(xg)
    grad_out = torch.randn(out.shape, dtype=out.dtype, generator=torch.Generator().manual_seed(grad_seed))
    gx, gw = torch.autograd.grad(out, (xg, layer.weight), grad_out)
    return inference, out.detach(), gx, gw


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize(("cin", "cout", "b", "max_out", "groups", "stride", "size"), [
    (8, 6, 2.0, 1, 1, 1, 9), (8, 6, 2.0, 2, 1, 2, 9), (8, 6, 2.5, 3, 2, 1, 7), (8, 6, 1.25, 1, 2, 2, 8),
    (40, 24, 2.0, 1, 1, 1, 5),  # longer channel rows than the kernels' vector lanes (16 / 8)
    (6, 1, 2.0, 2, 1, 1, 6),  # one output channel: the kept winners are both contiguous and channels-last
    (6, 4, 2.0, 2, 1, 1, 1),  # one position
])
def test_channels_last_input_gives_the_contiguous_results(dtype, cin, cout, b, max_out, groups, stride, size):
    """A channels-last input runs the NHWC kernels and gives the values and gradients of the contiguous
    input (and of the eager path), with a channels-last output."""
    if not fused.available():
        pytest.skip(f"fused kernels unavailable: {fused.unavailable_reason()}")
    torch.manual_seed(0)
    layer = BcosConv2d(cin, cout, 3, stride=stride, padding=1, groups=groups, b=b, max_out=max_out,
                       scale=2.0).to(dtype)
    x = torch.randn(3, cin, size, size, dtype=dtype)
    contiguous = _run_layer(layer, x)
    channels_last = _run_layer(layer, x.contiguous(memory_format=CL))
    if size > 1 and cout > 1:
        assert channels_last[0].is_contiguous(memory_format=CL) and not channels_last[0].is_contiguous()
        assert channels_last[2].is_contiguous(memory_format=CL)
    rtol = 1e-4 if dtype == torch.float32 else 1e-11
    for a, e in zip(channels_last, contiguous):
        torch.testing.assert_close(a, e, rtol=rtol, atol=rtol * e.abs().max().item())


def test_channels_last_tensors_reach_the_nhwc_kernels(monkeypatch):
    """The kernels, not the eager fallback, serve channels-last tensors (forward, backward, frozen factor)."""
    if not fused.available():
        pytest.skip(f"fused kernels unavailable: {fused.unavailable_reason()}")
    calls = []
    original = fused._fn

    def spy(name, dtype, nhwc=False):
        calls.append((name, nhwc))
        return original(name, dtype, nhwc)

    monkeypatch.setattr(fused, "_fn", spy)
    layer = BcosConv2d(8, 4, 3, padding=1, max_out=2).double()
    x = torch.randn(2, 8, 6, 6, dtype=torch.float64).contiguous(memory_format=CL)
    _run_layer(layer, x)
    assert {("channel_squares", True), ("scale_forward", True), ("scale_backward", True)} <= set(calls)
    assert not any(name in {"channel_squares", "scale_backward"} and not nhwc for name, nhwc in calls)


@settings(max_examples=15, deadline=None)
@given(
    kernel=st.integers(1, 3), stride=st.integers(1, 2), padding=st.integers(0, 1), groups=st.sampled_from([1, 2]),
    max_out=st.integers(1, 3), b=st.sampled_from([1.25, 2.0, 2.5]), batch=st.integers(1, 3),
    channels=st.sampled_from([2, 4, 18]), size=st.integers(1, 6),
)
def test_channels_last_equals_eager_property(kernel, stride, padding, groups, max_out, b, batch, channels, size):
    """Any geometry: channels-last through the kernels == contiguous through the eager path (float64)."""
    if not fused.available() or size + 2 * padding < kernel:
        return
    torch.manual_seed(0)
    layer = BcosConv2d(channels, 2 * groups, kernel, stride, padding, 1, groups, b=b, max_out=max_out).double()
    x = torch.randn(batch, channels, size, size + 1, dtype=torch.float64)
    fast = _run_layer(layer, x.contiguous(memory_format=CL))
    original = fused.supports
    fused.supports = lambda *tensors, **kwargs: False
    try:
        slow = _run_layer(layer, x)
    finally:
        fused.supports = original
    for a, e in zip(fast, slow):
        torch.testing.assert_close(a, e, rtol=1e-10, atol=1e-12)


def test_channels_last_explanations_equal_contiguous_ones():
    """Explaining a channels-last batch gives the rows of the contiguous batch (frozen factors, MaxOut)."""
    torch.manual_seed(0)
    net = nn.Sequential(BcosConv2d(3, 8, 3, padding=1, max_out=2), BcosConv2d(8, 5, 3, stride=2, padding=1),
                        nn.AdaptiveAvgPool2d(1), nn.Flatten()).double()
    x = torch.rand(2, 3, 8, 8, dtype=torch.float64)
    a = explain(net, x, "all", method="linear_rows")
    b = explain(net, x.contiguous(memory_format=CL), "all", method="linear_rows")
    torch.testing.assert_close(b.weights, a.weights, rtol=1e-11, atol=1e-13)


@pytest.mark.skipif(not fused.available() or not fused._STATE.get("openmp"), reason="kernels built without OpenMP")
def test_openmp_kernels_share_torchs_thread_team():
    """Built with OpenMP, the kernels call the OpenMP runtime torch's CPU library calls (not a second one, which
    would start a second team of threads competing with torch's) and run teams of torch's thread count."""
    import ctypes
    from pathlib import Path

    torch_cpu = ctypes.CDLL(str(Path(torch.__file__).parent / "lib" / "libtorch_cpu.so"))
    entry = [ctypes.cast(lib.GOMP_parallel, ctypes.c_void_p).value for lib in (fused._load(), torch_cpu)]
    assert entry[0] is not None and entry[0] == entry[1]
    previous = torch.get_num_threads()
    try:
        for threads in (1, 2, 3):
            torch.set_num_threads(threads)
            assert fused._load().openmp_team_size() == threads
    finally:
        torch.set_num_threads(previous)
