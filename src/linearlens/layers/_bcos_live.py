"""The LIVE B-cos convolution's training path: an autograd function with an analytic backward (Eqs. (9), (17)).

:class:`.bcos.BcosConv2d` calls :class:`_BcosConv2dLive` when autograd tracks its input or weight; the fused
kernels (:mod:`._bcos_fused`, :mod:`._bcos_transposed`) do its elementwise work.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F
from torch import Tensor

from . import _bcos_fused as fused
from . import _bcos_transposed as transposed
from ._bcos_numerics import _tiny

if TYPE_CHECKING:
    from .bcos import BcosConv2d


def _fused_bfloat16_autocast(x: Tensor) -> bool:
    """Whether a LIVE forward under autocast can run as :class:`_BcosConv2dLive` in bfloat16 with the fused
    kernels: bfloat16 autocast on the CPU, a dense input, kernels available."""
    return (
        x.device.type == "cpu"
        and torch.get_autocast_dtype("cpu") == torch.bfloat16
        and x.dtype in (torch.float32, torch.bfloat16)
        and (x.is_contiguous() or x.is_contiguous(memory_format=torch.channels_last))
        and fused.available()
    )


def _is_batched(t: Tensor) -> bool:
    """True for the batched gradients of ``torch.autograd.grad(..., is_grads_batched=True)`` / vmap."""
    functorch = torch._C._functorch
    return bool(functorch.is_batchedtensor(t) or functorch.is_legacy_batchedtensor(t))


class _BcosConv2dLive(torch.autograd.Function):
    """The LIVE B-cos convolution (Eqs. (9), (17), gamma of App. C.1) with an analytic backward.

    With ``o`` the (MaxOut-selected) linear output, ``d = ||x_patch||`` and ``t = gamma (|o| / d)^(B-1)``,
    the layer is ``y = t o``, so

    * ``dy/do = B t``                (``o |o|^(B-1)`` has derivative ``B |o|^(B-1)``),
    * ``dy/dd = (1 - B) y / d``      and ``d||x_patch||^2 / dx = 2 x`` over the patch.

    Autograd would store and traverse every elementwise step of the scale (abs, division, power,
    product, the patch norm); here the forward after the convolution is one fused pass (MaxOut, scale,
    product; see :mod:`._bcos_fused`) and the backward one fused pass making ``dL/do`` and the channel
    sum of ``dL/do * o``, the convolution backward and one in-place correction of ``dL/dx``, with an
    eager fallback of a few more passes.  On a plain float32 input the convolution runs channels-last and
    those passes also change the layout (:mod:`._bcos_transposed`, :func:`_transposed_backward`).  The
    gradient is finite at an all-zero patch (``B |o|^(B-1) = 0`` at ``o = 0``) for every B > 1.  A double
    backward (``create_graph=True``) recomputes the differentiable composition instead.
    """

    @staticmethod
    def forward(ctx, xp: Tensor, w_hat: Tensor, layer: BcosConv2d, padding: tuple[int, int]) -> Tensor:
        ctx.transposed = layer._convolves_transposed(xp)
        if ctx.transposed:
            # The channels-last copy is not saved (the backward remakes it): saved activations stay one copy.
            xt, squares = transposed.squares_to_nhwc(xp, layer.groups)
            linear = F.conv2d(xt, w_hat, None, layer.stride, padding, layer.dilation, layer.groups)
            del xt
        else:
            linear = F.conv2d(xp, w_hat, None, layer.stride, padding, layer.dilation, layer.groups)
            squares = layer._channel_squares(xp)
        sums, norm, multiplier = layer._norm_maps(squares)
        ctx.layer, ctx.padding, ctx.size = layer, padding, tuple(xp.shape[-2:])
        # The output itself is not saved, so that it may be modified in place (``out += identity``).
        if ctx.transposed:
            y, best, winners = transposed.scale_forward_to_nchw(
                linear, multiplier, layer.groups, layer.b, layer.scale, layer.max_out
            )
            ctx.save_for_backward(xp, w_hat, winners, linear if best is None else best, multiplier, sums, norm)
            return y
        if fused.supports(linear, compute=(multiplier,)):
            y, best, winners = fused.scale_forward(
                linear, multiplier, layer.max_out, layer.groups, layer.b, layer.scale, keep=True
            )
            ctx.save_for_backward(xp, w_hat, winners, linear if best is None else best, multiplier, sums, norm)
            return y
        winners = None
        if layer.max_out > 1:
            units = linear.unflatten(1, (layer.out_units, layer.max_out))
            linear = units.amax(2)
            winners = units == linear.unsqueeze(2)  # kept instead of the units: 1 byte per unit
            del units
        ctx.save_for_backward(xp, w_hat, winners, linear, multiplier, sums, norm)
        return linear * layer._dynamic_factor(linear, multiplier)

    @staticmethod
    def backward(ctx, grad_out: Tensor):
        layer, padding = ctx.layer, ctx.padding
        xp, w_hat, winners, linear, multiplier, sums, norm = ctx.saved_tensors
        need_x, need_w = ctx.needs_input_grad[0], ctx.needs_input_grad[1]
        if torch.is_grad_enabled() or _is_batched(grad_out):
            # create_graph=True or is_grads_batched=True: differentiate the differentiable composition
            # (keeping its graph in the first case; autograd's formulas have batching rules).
            create_graph = torch.is_grad_enabled()
            with torch.enable_grad():
                inputs = [t for t, needed in ((xp, need_x), (w_hat, need_w)) if needed]
                out = layer._live_reference(xp, w_hat, padding)
                grads = iter(torch.autograd.grad(out, inputs, grad_out, create_graph=create_graph))
            return (next(grads) if need_x else None), (next(grads) if need_w else None), None, None
        b, groups = layer.b, layer.groups
        per_group = None
        if not (grad_out.is_contiguous() or grad_out.is_contiguous(memory_format=torch.channels_last)):
            grad_out = grad_out.contiguous()  # e.g. the expanded ones of ``out.sum().backward()``
        if (ctx.transposed and grad_out.dtype == torch.float32 and not fused.channels_last(grad_out)
                and fused.supports(grad_out, compute=(multiplier,))):
            return _transposed_backward(ctx, grad_out)
        if fused.supports(grad_out, linear, compute=(multiplier,)):
            grad_full, per_group = fused.scale_backward(
                grad_out, linear, winners, multiplier, layer.max_out, groups, b, layer.scale
            )
        else:
            # dy/do = B t; addcmul with a 0-dim input does the product and the factor B in one pass.
            factor = layer._dynamic_factor(linear, multiplier)
            grad_linear = torch.addcmul(grad_out.new_zeros(()), grad_out, factor, value=b)
            grad_full = grad_linear
            if winners is not None:
                spread = grad_linear.unsqueeze(2)
                if int(winners.sum()) != linear.numel():
                    spread = spread / winners.sum(2, keepdim=True)  # ties share the gradient, as amax does
                # (the fused forward's mask is uint8, which ``where`` no longer takes as a condition)
                grad_full = torch.where(winners.bool(), spread, grad_linear.new_zeros(())).flatten(1, 2)
        grad_x, grad_w, _ = torch.ops.aten.convolution_backward(
            grad_full, xp, w_hat, None, layer.stride, padding, layer.dilation, False, [0, 0], groups,
            (need_x, need_w, False),
        )
        if need_x:
            # dL/dd = (1 - B)/d sum_c g y = (1 - B)/(B d) sum_c (dL/do) o; through d = sqrt(S) and
            # S = sum over the patch of x^2: dL/dx = x * adjoint_pool(dL/dd / d).
            if per_group is None:
                product = grad_linear.mul_(linear)  # dL/do is not needed any more: its buffer is reused
                per_group = product.sum(1, keepdim=True) if groups == 1 else product.unflatten(1, (groups, -1)).sum(2)
            per_group.mul_((1 - b) / b).div_(norm * norm).mul_(sums >= _tiny(sums))
            # In the dtype of x (bfloat16 under autocast): a mixed-dtype addcmul_ converts full-size tensors.
            spread_back = layer._patch_sums_transposed(per_group, ctx.size).to(xp.dtype)
            if layer.groups == 1:
                grad_x.addcmul_(xp, spread_back)
            else:
                grad_x.unflatten(1, (layer.groups, -1)).addcmul_(
                    xp.unflatten(1, (layer.groups, -1)), spread_back.unsqueeze(2)
                )
        return grad_x, grad_w, None, None


def _transposed_backward(ctx, grad_out: Tensor) -> tuple[Tensor | None, Tensor | None, None, None]:
    """The backward of :class:`_BcosConv2dLive` for a plain input convolved channels-last: the same formulas
    as its general backward, each pass also changing the layout (:mod:`._bcos_transposed`)."""
    layer, padding = ctx.layer, ctx.padding
    xp, w_hat, winners, linear, multiplier, sums, norm = ctx.saved_tensors
    need_x, need_w = ctx.needs_input_grad[0], ctx.needs_input_grad[1]
    b, groups = layer.b, layer.groups
    grad_linear, per_group = transposed.scale_backward_from_nchw(
        grad_out, linear, multiplier, groups, b, layer.scale, winners, layer.max_out
    )
    xt, _ = transposed.squares_to_nhwc(xp, groups)
    grad_x, grad_w, _ = torch.ops.aten.convolution_backward(
        grad_linear, xt, w_hat, None, layer.stride, padding, layer.dilation, False, [0, 0], groups,
        (need_x, need_w, False),
    )
    if need_x:
        # As in the general backward: dL/dx = dL/dx|conv + x * adjoint_pool(dL/dd / d).
        per_group.mul_((1 - b) / b).div_(norm * norm).mul_(sums >= _tiny(sums))
        grad_x = transposed.correct_to_nchw(grad_x, xt, layer._patch_sums_transposed(per_group, ctx.size))
    return grad_x, grad_w, None, None
