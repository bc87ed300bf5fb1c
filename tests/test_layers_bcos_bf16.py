"""bfloat16 B-cos layers: the fused kernels' bfloat16 variants and the layer under CPU bfloat16 autocast.

The kernels store bfloat16 and compute in float32, rounding once per stored value, so their outputs are
checked for exact equality with torch computing the same float32 expressions and rounding the result
(B = 2; other B use ``powf``, which may differ from torch's ``pow`` in the last float32 bit).  Under autocast
the layer runs :class:`_BcosConv2dLive` on bfloat16 tensors (a spy checks the kernels receive them), its
values stay within bfloat16 rounding of the float32 layer and the weight's gradient arrives in float32.
"""

from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from helpers_threads import run_on_threads
from linearlens.layers import BcosConv2d
from linearlens.layers import _bcos_fused as fused

pytestmark = [
    pytest.mark.usefixtures("single_thread"),
    pytest.mark.skipif(not fused.available(), reason="fused kernels unavailable"),
]

BF16 = torch.bfloat16


def _layout(t: torch.Tensor, nhwc: bool) -> torch.Tensor:
    return t.contiguous(memory_format=torch.channels_last) if nhwc else t.contiguous()


def _reference_forward(lin: torch.Tensor, mult: torch.Tensor, units: int, groups: int, b: float, scale: float):
    """MaxOut, dynamic scale and product in float32, as the kernels order the operations."""
    n, cu, h, w = lin.shape
    c = cu // units
    full = lin.float().unflatten(1, (c, units))
    best = full.amax(2)
    m = mult.repeat_interleave(c // groups, dim=1)
    f = best.abs() * m
    if b != 2:
        f = f.pow(b - 1) * scale
    return (f * best).to(BF16), best.to(BF16), full == best.unsqueeze(2)


@settings(max_examples=25, deadline=None)
@given(
    units=st.integers(1, 3), groups=st.sampled_from([1, 2]), nhwc=st.booleans(), b=st.sampled_from([2.0, 2.5]),
    channels=st.sampled_from([2, 6, 18, 40]), batch=st.integers(1, 3), seed=st.integers(0, 2**16),
)
def test_scale_forward_bf16_is_the_rounded_float32_result(units, groups, nhwc, b, channels, batch, seed):
    gen = torch.Generator().manual_seed(seed)
    lin = _layout(torch.randn(batch, channels * units, 5, 4, generator=gen).to(BF16), nhwc)
    mult = torch.rand(batch, groups, 5, 4, generator=gen) + 0.1
    y, best, win = fused.scale_forward(lin, mult, units, groups, b, 1.5, keep=True)
    ref_y, ref_best, ref_win = _reference_forward(lin, mult, units, groups, b, 1.5)
    assert y.dtype == BF16 and fused.channels_last(y) == fused.channels_last(lin)
    if b == 2.0:
        assert torch.equal(y, ref_y)
    else:  # powf vs torch's pow: at most one bfloat16 step apart
        torch.testing.assert_close(y.float(), ref_y.float(), rtol=2**-7, atol=0)
    if units > 1:
        assert torch.equal(best, ref_best)
        assert torch.equal(win.bool(), ref_win)
    inference, _, _ = fused.scale_forward(lin, mult, units, groups, b, 1.5)
    assert torch.equal(inference, y)


@settings(max_examples=25, deadline=None)
@given(units=st.integers(1, 3), nhwc=st.booleans(), channels=st.sampled_from([2, 6, 18, 40]),
       seed=st.integers(0, 2**16), ties=st.booleans())
def test_scale_backward_bf16_is_the_rounded_float32_result(units, nhwc, channels, seed, ties):
    """``dL/do = 2 t dL/dy`` to the MaxOut winners (ties share it), rounded once; the channel sums of
    ``dL/do * o`` in float32 (their summation order differs from torch's: a relative tolerance)."""
    gen = torch.Generator().manual_seed(seed)
    lin = torch.randn(2, channels * units, 4, 3, generator=gen).to(BF16)
    if ties and units > 1:
        lin[:, 1::units] = lin[:, 0::units]  # every second unit ties with the first
    lin = _layout(lin, nhwc)
    mult = torch.rand(2, 1, 4, 3, generator=gen) + 0.1
    grad = _layout(torch.randn(2, channels, 4, 3, generator=gen).to(BF16), nhwc)
    _, best, win = fused.scale_forward(lin, mult, units, 1, 2.0, 1.0, keep=True)
    o = lin if units == 1 else best
    grad_full, sums = fused.scale_backward(grad, o, win, mult, units, 1, 2.0, 1.0)

    gl = 2.0 * (grad.float() * (o.float().abs() * mult))
    mask = lin.float().unflatten(1, (channels, units)) == o.float().unsqueeze(2)
    share = gl.unsqueeze(2) / mask.sum(2, keepdim=True)
    ref_full = torch.where(mask, share, torch.zeros(())).flatten(1, 2).to(BF16)
    assert grad_full.dtype == BF16 and sums.dtype == torch.float32
    assert torch.equal(grad_full, ref_full)
    torch.testing.assert_close(sums, (gl * o.float()).sum(1, keepdim=True), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("nhwc", [False, True])
def test_channel_squares_of_bf16_are_float32(nhwc):
    x = _layout(torch.randn(2, 24, 5, 6).to(BF16), nhwc)
    out = fused.channel_squares(x, 2)
    assert out.dtype == torch.float32
    expected = x.float().unflatten(1, (2, 12)).pow(2).sum(2)
    torch.testing.assert_close(out, expected, rtol=1e-6, atol=0)


def test_nan_and_infinity_survive_the_rounding():
    lin = torch.tensor([float("nan"), float("inf"), -3.0, 0.0]).to(BF16).view(1, 4, 1, 1)
    y, _, _ = fused.scale_forward(lin, torch.ones(1, 1, 1, 1), 1, 1, 2.0, 1.0)
    assert torch.isnan(y[0, 0]).all() and y[0, 1].item() == float("inf")
    assert y[0, 2].item() == -9.0 and y[0, 3].item() == 0.0


@pytest.mark.parametrize("max_out", [1, 2])
@pytest.mark.parametrize("nhwc", [False, True])
def test_layer_under_bf16_autocast_runs_the_fused_bf16_path(monkeypatch, max_out, nhwc):
    """Under CPU bfloat16 autocast the training forward gives the kernels bfloat16 tensors, the output is
    bfloat16 within rounding of the float32 layer, and the weight's gradient is float32, close to the
    float32 gradient."""
    torch.manual_seed(0)
    layer = BcosConv2d(16, 8, 3, padding=1, b=2.0, max_out=max_out, scale=2.0)
    x = _layout(torch.rand(4, 16, 10, 10), nhwc).requires_grad_(True)
    seen = []
    original = fused.scale_forward

    def spy(linear, *args, **kwargs):
        seen.append(linear.dtype)
        return original(linear, *args, **kwargs)

    monkeypatch.setattr(fused, "scale_forward", spy)
    with torch.autocast("cpu", dtype=BF16):
        out = layer(x)
    assert seen == [BF16] and out.dtype == BF16
    out.float().square().sum().backward()
    grad_w = layer.weight.grad.clone()
    assert grad_w.dtype == torch.float32 and x.grad.dtype == torch.float32

    layer.weight.grad, x.grad = None, None
    reference = layer(x)
    reference.square().sum().backward()
    torch.testing.assert_close(out.float(), reference, rtol=3e-2, atol=3e-2 * reference.abs().max().item())
    assert (grad_w - layer.weight.grad).norm() < 5e-2 * layer.weight.grad.norm()


def test_autocast_inference_uses_the_bf16_kernels(monkeypatch):
    layer = BcosConv2d(8, 4, 3, padding=1, max_out=2)
    x = torch.rand(2, 8, 6, 6)
    seen = []
    original = fused.scale_forward
    monkeypatch.setattr(fused, "scale_forward", lambda lin, *a, **k: seen.append(lin.dtype) or original(lin, *a, **k))
    with torch.no_grad(), torch.autocast("cpu", dtype=BF16):
        out = layer(x)
    assert seen == [BF16] and out.dtype == BF16
    with torch.no_grad():
        torch.testing.assert_close(out.float(), layer(x), rtol=3e-2, atol=3e-2)


@pytest.mark.parametrize("dtype", [torch.float32, BF16])
@pytest.mark.parametrize("nhwc", [False, True])
@pytest.mark.parametrize(("units", "groups"), [(1, 1), (2, 1), (3, 2)])
def test_kernels_split_over_threads_give_the_one_thread_result(monkeypatch, dtype, nhwc, units, groups):
    """With several torch threads the kernels run on chunks of the batch in worker threads: every item is
    computed as on one thread, so the results are bit-identical (odd batch: unequal chunks)."""
    gen = torch.Generator().manual_seed(units)
    lin = _layout(torch.randn(5, 4 * units, 6, 5, generator=gen).to(dtype), nhwc)
    mult = torch.rand(5, groups, 6, 5, generator=gen) + 0.1
    grad = _layout(torch.randn(5, 4, 6, 5, generator=gen).to(dtype), nhwc)

    def run():
        y, best, win = fused.scale_forward(lin, mult, units, groups, 2.0, 1.0, keep=True)
        o = lin if units == 1 else best
        return (y, best, win, *fused.scale_backward(grad, o, win, mult, units, groups, 2.0, 1.0),
                fused.channel_squares(lin, groups))

    one = run()
    many, calls = run_on_threads(run, 3, monkeypatch)
    assert calls and all(c == 3 for c in calls)
    for a, b in zip(one, many):
        assert (a is None and b is None) or torch.equal(a, b)


def test_a_forked_child_gets_its_own_worker_pool(monkeypatch):
    """A fork inherits the pool object without its threads: the child must build a new pool, not wait on the
    parent's (which would hang)."""
    import os
    import signal

    monkeypatch.setattr(fused, "_PARALLEL_MIN_ELEMENTS", 0)
    lin = torch.randn(4, 8, 5, 5)
    mult = torch.rand(4, 1, 5, 5) + 0.1
    previous = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        expected = fused.scale_forward(lin, mult, 1, 1, 2.0, 1.0)[0]  # creates the parent's pool
        read, write = os.pipe()
        pid = os.fork()
        if pid == 0:  # child: compute with the kernels' pool, report, exit without running pytest's teardown
            signal.alarm(20)
            ok = torch.equal(fused.scale_forward(lin, mult, 1, 1, 2.0, 1.0)[0], expected)
            os.write(write, b"1" if ok else b"0")
            os._exit(0)
        os.close(write)
        _, status = os.waitpid(pid, 0)
        assert os.read(read, 1) == b"1" and status == 0
    finally:
        torch.set_num_threads(previous)
