"""Training a B-cos layer on a plain (NCHW) input through a channels-last convolution (``_bcos_transposed``).

Each transposing kernel is checked for exact equality with what it replaces: the channels-last copy and
the channel squares of ``_bcos_fused.channel_squares``; ``y`` of the NHWC ``scale_forward``; ``dL/do`` of the
NHWC ``scale_backward`` and its channel sums of the NCHW one (the same channel order); the correction of
``dL/dx`` against torch's product and sum.  Shapes cover partial 16 x 16 tiles (channels and positions not
multiples of 16) and groups.  Then the layer: which inputs take the path (spies), values and gradients
against float64 and against the untransposed path, the double backward, and thread splitting.
"""

from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from helpers_threads import run_on_threads
from linearlens.layers import BcosConv2d
from linearlens.layers import _bcos_fused as fused
from linearlens.layers import _bcos_transposed as transposed

pytestmark = [
    pytest.mark.usefixtures("single_thread"),
    pytest.mark.skipif(not transposed.available(), reason="transposing kernels need AVX-512"),
]

NHWC = torch.channels_last
shapes = dict(
    batch=st.integers(1, 3), per_group=st.integers(1, 21), groups=st.sampled_from([1, 2, 3]),
    height=st.integers(1, 19), width=st.integers(1, 19), seed=st.integers(0, 2**16),
)


@settings(max_examples=40, deadline=None)
@given(**shapes)
def test_squares_to_nhwc_is_the_copy_and_the_channel_squares(batch, per_group, groups, height, width, seed):
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(batch, per_group * groups, height, width, generator=gen)
    xt, squares = transposed.squares_to_nhwc(x, groups)
    assert xt.is_contiguous(memory_format=NHWC) and torch.equal(xt, x)
    assert torch.equal(squares, fused.channel_squares(x, groups))


@settings(max_examples=40, deadline=None)
@given(**shapes, b=st.sampled_from([2.0, 1.5, 2.5]), scale=st.sampled_from([1.0, 3.0]))
def test_scale_forward_to_nchw_equals_the_nhwc_kernel(batch, per_group, groups, height, width, seed, b, scale):
    gen = torch.Generator().manual_seed(seed)
    linear = torch.randn(batch, per_group * groups, height, width, generator=gen).contiguous(memory_format=NHWC)
    multiplier = torch.rand(batch, groups, height, width, generator=gen) + 0.1
    y = transposed.scale_forward_to_nchw(linear, multiplier, groups, b, scale)[0]
    reference = fused.scale_forward(linear, multiplier, 1, groups, b, scale)[0]
    assert y.is_contiguous() and torch.equal(y, reference)


@settings(max_examples=40, deadline=None)
@given(**shapes, b=st.sampled_from([2.0, 1.5]))
def test_scale_backward_from_nchw_equals_the_untransposed_kernels(batch, per_group, groups, height, width, seed, b):
    gen = torch.Generator().manual_seed(seed)
    shape = (batch, per_group * groups, height, width)
    grad_out = torch.randn(shape, generator=gen)
    linear = torch.randn(shape, generator=gen)
    multiplier = torch.rand(batch, groups, height, width, generator=gen) + 0.1
    grad_linear, sums = transposed.scale_backward_from_nchw(
        grad_out, linear.contiguous(memory_format=NHWC), multiplier, groups, b, 1.0
    )
    assert grad_linear.is_contiguous(memory_format=NHWC)
    # dL/do elementwise as the NHWC kernel; the channel sums in the NCHW kernel's (sequential) order
    nhwc_grad, _ = fused.scale_backward(grad_out.contiguous(memory_format=NHWC), linear.contiguous(memory_format=NHWC),
                                        None, multiplier, 1, groups, b, 1.0)
    plain_grad, plain_sums = fused.scale_backward(grad_out, linear, None, multiplier, 1, groups, b, 1.0)
    assert torch.equal(grad_linear, nhwc_grad) and torch.equal(grad_linear, plain_grad)
    assert torch.equal(sums, plain_sums)


def _maxout_units(batch, channels, height, width, gen):
    """Two units per channel, interleaved channels-last, with ties and NaNs among them."""
    units = torch.randn(batch, height, width, channels, 2, generator=gen)
    tie = torch.rand(batch, height, width, channels, generator=gen) < 0.1
    units[..., 1][tie] = units[..., 0][tie]
    flat = units.view(-1)
    flat[torch.randint(0, flat.numel(), (3,), generator=gen)] = float("nan")
    return units.reshape(batch, height, width, 2 * channels).permute(0, 3, 1, 2)  # channels-last (N, 2C, H, W)


@settings(max_examples=40, deadline=None)
@given(**shapes, b=st.sampled_from([2.0, 1.5]))
def test_maxout_kernels_equal_the_untransposed_ones(batch, per_group, groups, height, width, seed, b):
    """The MaxOut of two units: winners, winner masks, ``y``, ``dL/do`` to the units (ties shared) and the
    channel sums as the NHWC kernels (the sums in the NCHW kernel's order)."""
    if not transposed.maxout_available():
        pytest.skip("MaxOut tiles need AVX-512 BW/VL and BMI2")
    gen = torch.Generator().manual_seed(seed)
    c = per_group * groups
    linear = _maxout_units(batch, c, height, width, gen)
    multiplier = torch.rand(batch, groups, height, width, generator=gen) + 0.1
    y, best, win = transposed.scale_forward_to_nchw(linear, multiplier, groups, b, 1.0, units=2)
    ref_y, ref_best, ref_win = fused.scale_forward(linear, multiplier, 2, groups, b, 1.0, keep=True)
    same = dict(rtol=0, atol=0, equal_nan=True)
    assert y.is_contiguous() and best.is_contiguous(memory_format=NHWC) and win.permute(0, 3, 4, 1, 2).is_contiguous()
    torch.testing.assert_close(y, ref_y, **same)
    torch.testing.assert_close(best, ref_best, **same)
    assert torch.equal(win, ref_win)
    grad_out = torch.randn(batch, c, height, width, generator=gen)
    grad_units, sums = transposed.scale_backward_from_nchw(grad_out, best, multiplier, groups, b, 1.0, win, 2)
    ref_units, _ = fused.scale_backward(grad_out.contiguous(memory_format=NHWC), best, win, multiplier, 2, groups, b,
                                        1.0)
    _, plain_sums = fused.scale_backward(grad_out, best.contiguous(), win.contiguous(), multiplier, 2, groups, b, 1.0)
    assert grad_units.is_contiguous(memory_format=NHWC)
    torch.testing.assert_close(grad_units, ref_units, **same)
    torch.testing.assert_close(sums, plain_sums, **same)


@settings(max_examples=40, deadline=None)
@given(**shapes)
def test_correct_to_nchw_is_the_sum_with_the_spread_product(batch, per_group, groups, height, width, seed):
    gen = torch.Generator().manual_seed(seed)
    shape = (batch, per_group * groups, height, width)
    grad_x = torch.randn(shape, generator=gen).contiguous(memory_format=NHWC)
    x = torch.randn(shape, generator=gen).contiguous(memory_format=NHWC)
    spread = torch.randn(batch, groups, height, width, generator=gen)
    out = transposed.correct_to_nchw(grad_x, x, spread)
    product = x.unflatten(1, (groups, per_group)) * spread.unsqueeze(2)
    assert out.is_contiguous() and torch.equal(out, grad_x + product.flatten(1, 2))


def _layer(cin=20, cout=35, stride=1, b=2.0, padding_mode="zeros", **kwargs) -> BcosConv2d:
    torch.manual_seed(0)
    return BcosConv2d(cin, cout, 3, stride=stride, padding=1, b=b, padding_mode=padding_mode, **kwargs)


def _spy(monkeypatch) -> list[str]:
    calls = []
    for name in ("squares_to_nhwc", "scale_forward_to_nchw", "scale_backward_from_nchw", "correct_to_nchw"):
        original = getattr(transposed, name)
        monkeypatch.setattr(transposed, name, lambda *a, _f=original, _n=name, **k: calls.append(_n) or _f(*a, **k))
    return calls


@pytest.mark.parametrize(("stride", "b", "padding_mode", "size", "dilation", "batch", "max_out"), [
    (1, 2.0, "zeros", 17, 1, 3, 1), (2, 2.0, "zeros", 33, 1, 3, 1), (1, 1.5, "reflect", 16, 1, 3, 1),
    (1, 2.5, "zeros", 20, 1, 3, 1), (1, 2.0, "zeros", 21, 2, 1, 1), (1, 2.0, "zeros", 17, 1, 3, 2),
    (2, 1.5, "reflect", 33, 1, 2, 2),
])
def test_training_step_matches_float64_and_the_untransposed_path(
    monkeypatch, stride, b, padding_mode, size, dilation, batch, max_out
):
    if max_out == 2 and not transposed.maxout_available():
        pytest.skip("MaxOut tiles need AVX-512 BW/VL and BMI2")
    kwargs = dict(stride=stride, b=b, padding_mode=padding_mode, dilation=dilation, max_out=max_out)
    layer, reference = _layer(**kwargs), _layer(**kwargs).double()
    gen = torch.Generator().manual_seed(1)
    x = torch.randn(batch, 20, size, size, generator=gen)
    grad_y = torch.randn(layer(x).shape, generator=gen)

    def step(module, inputs, grads):
        module.zero_grad()
        inputs = inputs.clone().requires_grad_(True)
        out = module(inputs)
        out.backward(grads)
        return out.detach(), inputs.grad, module.weight.grad

    calls = _spy(monkeypatch)
    y, gx, gw = step(layer, x, grad_y)
    assert calls == ["squares_to_nhwc", "scale_forward_to_nchw", "scale_backward_from_nchw", "squares_to_nhwc",
                     "correct_to_nchw"]
    assert y.is_contiguous() and gx.is_contiguous()
    for got, want in zip((y, gx, gw), step(reference, x.double(), grad_y.double()), strict=True):
        torch.testing.assert_close(got.double(), want, rtol=1e-4, atol=1e-5 * want.abs().max().item())
    monkeypatch.setattr(transposed, "applies", lambda *a, **k: False)
    calls.clear()
    for got, want in zip((y, gx, gw), step(layer, x, grad_y), strict=True):
        torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-6 * want.abs().max().item())
    assert calls == []


@pytest.mark.parametrize(
    "case", ["no_grad", "small_map", "groups", "max_out_3", "channels_last", "float64", "bf16", "1x1"]
)
def test_other_inputs_keep_the_untransposed_path(monkeypatch, case):
    layer = _layer(cin=8, cout=8, groups=2 if case == "groups" else 1, max_out=3 if case == "max_out_3" else 1)
    if case == "1x1":
        layer = BcosConv2d(8, 8, 1)
    x = torch.randn(2, 8, 8 if case == "small_map" else 16, 8 if case == "small_map" else 16)
    if case == "channels_last":
        x = x.contiguous(memory_format=NHWC)
    if case == "float64":
        layer, x = layer.double(), x.double()
    calls = _spy(monkeypatch)
    x.requires_grad_(case != "no_grad")
    with torch.set_grad_enabled(case != "no_grad"), torch.autocast("cpu", enabled=case == "bf16"):
        out = layer(x)
    if case != "no_grad":
        out.float().sum().backward()
    assert calls == []


def test_double_backward_differentiates_through_the_input(monkeypatch):
    """create_graph=True recomputes from the saved input itself, so second derivatives reach earlier layers."""
    first, second = _layer(cin=6, cout=20), _layer(cin=20, cout=7)
    x = torch.randn(2, 6, 16, 16)

    def gradient_penalty_grad():
        first.zero_grad()
        out = second(first(x))
        (grad_h,) = torch.autograd.grad(out.pow(2).sum(), first.weight, create_graph=True)
        grad_h.pow(2).sum().backward()
        return first.weight.grad.clone()

    calls = _spy(monkeypatch)
    got = gradient_penalty_grad()
    assert "squares_to_nhwc" in calls
    monkeypatch.setattr(transposed, "applies", lambda *a, **k: False)
    torch.testing.assert_close(got, gradient_penalty_grad(), rtol=1e-4, atol=1e-6 * got.abs().max().item())


def test_kernels_split_over_threads_give_the_one_thread_result(monkeypatch):
    gen = torch.Generator().manual_seed(3)
    x = torch.randn(5, 20, 17, 17, generator=gen)
    linear = torch.randn(5, 20, 17, 17, generator=gen).contiguous(memory_format=NHWC)
    multiplier = torch.rand(5, 2, 17, 17, generator=gen) + 0.1
    spread = torch.randn(5, 2, 17, 17, generator=gen)

    def run():
        xt, squares = transposed.squares_to_nhwc(x, 2)
        grad_linear, sums = transposed.scale_backward_from_nchw(x, linear, multiplier, 2, 2.0, 1.0)
        return (xt, squares, transposed.scale_forward_to_nchw(linear, multiplier, 2, 2.0, 1.0)[0], grad_linear, sums,
                transposed.correct_to_nchw(linear, xt, spread))

    one = run()
    three, calls = run_on_threads(run, 3, monkeypatch)
    assert calls == [3] * 4 and all(torch.equal(a, b) for a, b in zip(one, three, strict=True))


def test_without_avx512_kernels_the_layer_trains_on_its_other_path(monkeypatch):
    layer = _layer()
    x = torch.randn(2, 20, 16, 16, requires_grad=True)
    y = layer(x)
    y.sum().backward()
    want = x.grad.clone()
    x.grad = None
    monkeypatch.setattr(transposed, "available", lambda: False)
    calls = _spy(monkeypatch)
    torch.testing.assert_close(layer(x), y)
    layer(x).sum().backward()
    assert calls == [] and not transposed.applies(x.detach(), 256, (3, 3), 1, 1)
    torch.testing.assert_close(x.grad, want, rtol=1e-5, atol=1e-6 * want.abs().max().item())


def test_nan_and_infinity_propagate_as_in_the_untransposed_kernels():
    gen = torch.Generator().manual_seed(5)
    shape = (2, 20, 9, 7)
    x, grad_out = torch.randn(shape, generator=gen), torch.randn(shape, generator=gen)
    linear = torch.randn(shape, generator=gen)
    for t in (x, grad_out, linear):
        flat = t.view(-1)
        flat[torch.randint(0, flat.numel(), (12,), generator=gen)] = float("nan")
        flat[torch.randint(0, flat.numel(), (6,), generator=gen)] = float("inf")
        flat[torch.randint(0, flat.numel(), (6,), generator=gen)] = -float("inf")
    multiplier = torch.rand(2, 1, 9, 7, generator=gen) + 0.1
    lin_nhwc = linear.contiguous(memory_format=NHWC)

    def same(a, b):
        torch.testing.assert_close(a, b, rtol=0, atol=0, equal_nan=True)

    xt, squares = transposed.squares_to_nhwc(x, 1)
    same(xt, x)
    same(squares, fused.channel_squares(x, 1))
    same(transposed.scale_forward_to_nchw(lin_nhwc, multiplier, 1, 2.0, 1.0)[0],
         fused.scale_forward(lin_nhwc, multiplier, 1, 1, 2.0, 1.0)[0])
    grad_linear, sums = transposed.scale_backward_from_nchw(grad_out, lin_nhwc, multiplier, 1, 2.0, 1.0)
    plain_grad, plain_sums = fused.scale_backward(grad_out, linear, None, multiplier, 1, 1, 2.0, 1.0)
    same(grad_linear, plain_grad)
    same(sums, plain_sums)
    spread = torch.randn(2, 1, 9, 7, generator=gen)
    same(transposed.correct_to_nchw(lin_nhwc, xt, spread), linear + x * spread)


def test_a_channels_last_gradient_takes_the_general_backward_with_the_same_result(monkeypatch):
    """A channels-last ``dL/dy`` reaching a layer that convolved channels-last goes through the general (NHWC)
    backward kernels; the gradients equal those of a plain ``dL/dy``."""
    layer = _layer()
    x = torch.randn(2, 20, 17, 17)
    grad_y = torch.randn(2, 35, 17, 17)
    grads = []
    for g in (grad_y, grad_y.contiguous(memory_format=NHWC)):
        layer.zero_grad()
        inputs = x.clone().requires_grad_(True)
        calls = _spy(monkeypatch)
        layer(inputs).backward(g)
        grads.append((inputs.grad, layer.weight.grad.clone(), list(calls)))
    assert "scale_backward_from_nchw" in grads[0][2] and "scale_backward_from_nchw" not in grads[1][2]
    for plain, nhwc in zip(grads[0][:2], grads[1][:2], strict=True):
        torch.testing.assert_close(nhwc, plain, rtol=1e-5, atol=1e-6 * plain.abs().max().item())
