"""Shared fixtures and an independent reference implementation of B-cos layers.

The reference below computes ``W~(x)`` (Eq. (11) of the B-cos paper) for a single input as an explicit
dense matrix, from the formula, without the linearlens engine: padding and patch extraction are built as
matrices by applying ``F.pad`` / ``F.unfold`` to the identity basis, the cosine is computed per output
unit from the patch it multiplies, and the MaxOut winner (Eq. (17)) is picked by hand.  Chained
per-layer matrices give ``W_{1->L}(x)`` (Eq. (14)).  Tests compare linearlens against it.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import pytest
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from linearlens.layers import AddInverse, BcosConv2d, LogitLayer


@pytest.fixture(autouse=True)
def _seed() -> None:
    torch.manual_seed(0)


@pytest.fixture
def single_thread():
    """Tiny tensors: one intra-op thread avoids OpenMP spin-waiting when the cores are shared."""
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


def matrix_of(fn: Callable[[Tensor], Tensor], in_shape: tuple[int, ...]) -> Tensor:
    """The dense matrix of a linear map ``fn`` on batched inputs of shape ``(n, *in_shape)``."""
    n = 1
    for s in in_shape:
        n *= s
    basis = torch.eye(n, dtype=torch.float64).reshape(n, *in_shape)
    return fn(basis).reshape(n, -1).T.contiguous()


@dataclass
class Reference:
    """Output, dense ``W~(a)`` and bookkeeping of one layer at one input (flattened, float64)."""

    out: Tensor  # layer output without batch dimension
    matrix: Tensor  # (out.numel(), a.numel()): out.flatten() == matrix @ a.flatten()
    cos: Tensor | None = None  # cosine of every B-cos unit before MaxOut, (units, positions)
    winner: Tensor | None = None  # index of the MaxOut winner per output unit and position


def _maxout(bcos: Tensor, rows: Tensor, units: int, max_out: int) -> tuple[Tensor, Tensor, Tensor]:
    """Pick, per output unit and position, the B-cos unit with the largest output (Eq. (17))."""
    positions = bcos.shape[1]
    grouped = bcos.reshape(units, max_out, positions)
    winner = grouped.argmax(1)  # (units, positions)
    out = grouped.gather(1, winner.unsqueeze(1)).squeeze(1)
    grouped_rows = rows.reshape(units, max_out, positions, -1)
    picked = grouped_rows.gather(1, winner[:, None, :, None].expand(-1, 1, -1, grouped_rows.shape[-1]))
    return out, picked.squeeze(1), winner


def unit_norm(w: Tensor) -> Tensor:
    """Rows of ``w`` (flattened per output unit) scaled to unit norm: the hat operator (Eq. (D.3))."""
    w = w.detach().double()
    return w / w.flatten(1).norm(dim=1).view(-1, *[1] * (w.dim() - 1))


def bcos_conv_reference(layer, a: Tensor) -> Reference:
    """``W~(a)`` of a :class:`BcosConv2d` at one input ``a`` of shape ``(C, H, W)``, by Eq. (11)."""
    a = a.detach().double()
    c, h, w = a.shape
    kh, kw = layer.kernel_size
    ph, pw = layer.padding
    mode = "constant" if layer.padding_mode == "zeros" else layer.padding_mode

    def patches_of(t: Tensor) -> Tensor:
        padded = F.pad(t, (pw, pw, ph, ph), mode=mode) if (ph or pw) else t
        return F.unfold(padded, (kh, kw), dilation=layer.dilation, stride=layer.stride)

    patches = patches_of(a[None])[0]  # (C*kh*kw, L)
    positions = patches.shape[1]
    patch_matrix = matrix_of(patches_of, (c, h, w)).reshape(c * kh * kw, positions, c * h * w)
    w_hat = unit_norm(layer.weight).flatten(1)  # (U*max_out, Cg*kh*kw)
    groups = layer.groups
    per_group_in = c // groups * kh * kw
    per_group_out = w_hat.shape[0] // groups
    lin, norms, rows = [], [], []
    for g in range(groups):
        p = patches[g * per_group_in : (g + 1) * per_group_in]
        wg = w_hat[g * per_group_out : (g + 1) * per_group_out]
        lin.append(wg @ p)
        norms.append(p.norm(dim=0).expand(wg.shape[0], -1))
        pm = patch_matrix[g * per_group_in : (g + 1) * per_group_in]
        rows.append(torch.einsum("op,plx->olx", wg, pm))
    lin, norms, rows = torch.cat(lin), torch.cat(norms), torch.cat(rows)
    cos = lin / norms
    scale = cos.abs() ** (layer.b - 1)
    out, picked, winner = _maxout(scale * lin, scale[..., None] * rows, layer.out_units, layer.max_out)
    h_out = (h + 2 * ph - layer.dilation[0] * (kh - 1) - 1) // layer.stride[0] + 1
    w_out = (w + 2 * pw - layer.dilation[1] * (kw - 1) - 1) // layer.stride[1] + 1
    assert h_out * w_out == positions
    return Reference(
        out=layer.scale * out.reshape(-1, h_out, w_out),
        matrix=layer.scale * picked.reshape(-1, c * h * w),
        cos=cos,
        winner=winner,
    )


def bcos_linear_reference(layer, a: Tensor) -> Reference:
    """``W~(a)`` of a :class:`BcosLinear` at one input vector ``a``, by Eq. (11)."""
    a = a.detach().double()
    w_hat = unit_norm(layer.weight)
    lin = w_hat @ a
    cos = lin / a.norm()
    scale = cos.abs() ** (layer.b - 1)
    out, picked, winner = _maxout(
        (scale * lin)[:, None], (scale[:, None] * w_hat)[:, None, :], layer.out_units, layer.max_out
    )
    return Reference(out=layer.scale * out[:, 0], matrix=layer.scale * picked[:, 0], cos=cos[:, None], winner=winner)


def chain_reference(layers: list, a: Tensor) -> Reference:
    """``W_{1->L}(a) = prod_j W~_j(a_j)`` (Eq. (14)) for a sequence of B-cos conv layers."""
    a = a.detach().double()
    total = torch.eye(a.numel(), dtype=torch.float64)
    for layer in layers:
        ref = bcos_conv_reference(layer, a)
        total = ref.matrix @ total
        a = ref.out
    return Reference(out=a, matrix=total)


def network_reference(convs: list, encoded: Tensor, temperature: float, bias: float) -> Reference:
    """Logits and ``W_{1->L}(x)`` of "B-cos convs, global average pool, ``/T + b``" at one encoded input."""
    chain = chain_reference(convs, encoded)
    c = chain.out.shape[0]
    positions = chain.out[0].numel()
    pool = torch.kron(torch.eye(c, dtype=torch.float64), torch.full((1, positions), 1.0 / positions))
    matrix = pool @ chain.matrix / temperature
    return Reference(out=matrix @ encoded.double().flatten() + bias, matrix=matrix)


def rel_err(a: Tensor, b: Tensor) -> float:
    """``||a - b|| / ||b||`` in float64."""
    a, b = a.detach().double(), b.detach().double()
    return float((a - b).norm() / b.norm().clamp_min(1e-300))


@pytest.fixture
def ref():
    """The reference implementation (a namespace of the functions above)."""

    class _Ref:
        matrix_of = staticmethod(matrix_of)
        unit_norm = staticmethod(unit_norm)
        conv = staticmethod(bcos_conv_reference)
        linear = staticmethod(bcos_linear_reference)
        chain = staticmethod(chain_reference)
        network = staticmethod(network_reference)
        rel_err = staticmethod(rel_err)

    return _Ref


class TinyBcosNet(nn.Module):
    """AddInverse, two B-cos convolutions (the second with stride 2), global average pool, ``/T + b``."""

    def __init__(self, b: float = 2.0, max_out: int = 2, classes: int = 3, temperature: float = 0.5,
                 bias: float = -1.0) -> None:
        super().__init__()
        self.encoding = AddInverse()
        self.features = nn.Sequential(
            BcosConv2d(6, 4, 3, padding=1, b=b, max_out=max_out, scale=2.0),
            BcosConv2d(4, classes, 3, stride=2, padding=1, b=b, max_out=max_out, padding_mode="reflect"),
        )
        self.logits = LogitLayer(temperature, bias)

    def forward(self, x: Tensor) -> Tensor:
        return self.logits(self.features(self.encoding(x)).mean(dim=(2, 3)))

    def reference(self, image: Tensor) -> Reference:
        """Logits and ``W_{1->L}`` for one raw image (explanations are w.r.t. the encoded input)."""
        encoded = torch.cat([image, 1 - image]).double()
        return network_reference(list(self.features), encoded, self.logits.temperature, self.logits.bias)


@pytest.fixture
def tiny_net():
    """Factory for :class:`TinyBcosNet` in float64."""

    def make(**kwargs) -> TinyBcosNet:
        return TinyBcosNet(**kwargs).double()

    return make
