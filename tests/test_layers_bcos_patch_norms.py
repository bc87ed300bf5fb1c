"""The fused patch-norm kernel (``_bcos_fused.patch_norms``) against the layer's eager small-map operations.

The squared patch sums equal :meth:`BcosConv2d._patch_sums` exactly (same additions in the same order) for
every kernel size, stride, dilation, padding and group count; the norms are the correctly rounded square
root (numpy's, which uses the hardware instruction; torch's vectorised float32 ``sqrt`` can be one unit in the
last place off) and the multiplier is :meth:`BcosConv2d._multiplier` of them.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from hypothesis import assume, given, settings
from hypothesis import strategies as st

from linearlens.layers import BcosConv2d
from linearlens.layers import _bcos_fused as fused

pytestmark = [
    pytest.mark.usefixtures("single_thread"),
    pytest.mark.skipif(not fused.available(), reason="fused kernels unavailable"),
]


@settings(max_examples=60, deadline=None)
@given(
    kernel=st.integers(1, 5), stride=st.integers(1, 3), dilation=st.integers(1, 2), padding=st.integers(0, 3),
    groups=st.sampled_from([1, 2]), height=st.integers(6, 14), width=st.integers(6, 14),
    dtype=st.sampled_from([torch.float32, torch.float64]), b=st.sampled_from([2.0, 1.5]),
    padding_mode=st.sampled_from(["zeros", "reflect"]), zero_patch=st.booleans(), seed=st.integers(0, 2**16),
)
def test_patch_norms_equal_the_eager_small_map_operations(
    kernel, stride, dilation, padding, groups, height, width, dtype, b, padding_mode, zero_patch, seed
):
    padding = min(padding, (height - 1) // 2, (width - 1) // 2) if padding_mode == "reflect" else padding
    torch.manual_seed(seed)
    layer = BcosConv2d(4, 2, kernel, stride=stride, dilation=dilation, padding=padding, groups=groups, b=b,
                       scale=3.7, padding_mode=padding_mode).to(dtype)
    x = torch.randn(2, 4, height, width, dtype=dtype)
    if zero_patch:
        x[0] = 0  # every window of the first image is all-zero: the floor at tiny
    xp, _ = layer._padded(x)
    pad, _, size = layer._window_geometry(*xp.shape[-2:])
    assume(min(size) >= 1)  # some output position
    squares = layer._channel_squares(xp)
    sums, norm, multiplier = fused.patch_norms(
        squares, size, layer.kernel_size, layer.stride, layer.dilation, pad, b, 3.7
    )
    assert torch.equal(sums, layer._patch_sums(squares))
    tiny = torch.finfo(dtype).tiny
    assert torch.equal(norm, torch.from_numpy(np.sqrt(np.maximum(sums.numpy(), tiny))))
    assert torch.equal(multiplier, layer._multiplier(norm))
    assert all(torch.equal(a, c) for a, c in zip(layer._norm_maps(squares), (sums, norm, multiplier), strict=True))


def test_norm_maps_fall_back_to_eager_operations_under_autograd():
    layer = BcosConv2d(3, 2, 3, padding=1)
    squares = torch.rand(1, 1, 5, 5, requires_grad=True)
    sums, norm, multiplier = layer._norm_maps(squares)
    assert multiplier.grad_fn is not None  # differentiable composition, not the kernel
    multiplier.sum().backward()
    assert squares.grad is not None and torch.isfinite(squares.grad).all()
