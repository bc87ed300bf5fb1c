"""Property tests (hypothesis) of the interpreter's adjoint identity ``<F x1, y> = <x1, F^T y>``.

``LinearScope.apply`` computes ``F(x0) x1`` by a two-batch forward pass and ``transpose_apply`` computes
``F(x0)^T y`` by a backward pass through the frozen reference pass: two independent mechanisms, so the
identity fails if either freezes a decision differently.  Drawn: small conventional networks (conv,
ReLU / leaky ReLU, max-pool, batch norm in eval mode with random statistics, residual adds, a linear
head or a dense output), input size, batch size and probes.
"""

from __future__ import annotations

import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

from linearlens.interpret import LinearScope


class Residual(nn.Module):
    def __init__(self, body: nn.Module) -> None:
        super().__init__()
        self.body = body

    def forward(self, x):
        return x + self.body(x)


def _bn(c: int, gen: torch.Generator) -> nn.BatchNorm2d:
    bn = nn.BatchNorm2d(c)
    bn.running_mean.copy_(torch.randn(c, generator=gen))
    bn.running_var.copy_(torch.rand(c, generator=gen) + 0.5)
    bn.weight.data.copy_(torch.randn(c, generator=gen))
    bn.bias.data.copy_(torch.randn(c, generator=gen))
    return bn


@st.composite
def conventional_nets(draw):
    torch.manual_seed(draw(st.integers(0, 2**16)))
    gen = torch.Generator().manual_seed(draw(st.integers(0, 2**16)))
    c = draw(st.sampled_from([2, 3]))
    width = draw(st.sampled_from([3, 4]))
    act = draw(st.sampled_from([nn.ReLU, lambda: nn.LeakyReLU(0.1)]))
    layers: list[nn.Module] = [nn.Conv2d(c, width, 3, padding=1)]
    if draw(st.booleans()):
        layers.append(_bn(width, gen))
    layers.append(act())
    if draw(st.booleans()):
        body = [nn.Conv2d(width, width, 3, padding=1)] + ([_bn(width, gen)] if draw(st.booleans()) else []) + [act()]
        layers.append(Residual(nn.Sequential(*body)))
    if draw(st.booleans()):
        layers.append(nn.MaxPool2d(2, ceil_mode=True))
    if draw(st.booleans()):  # a classifier head, else a dense (image-shaped) output
        layers += [nn.Flatten(), nn.LazyLinear(draw(st.integers(1, 4)))]
    else:
        layers.append(nn.Conv2d(width, draw(st.integers(1, 2)), 1))
    size = draw(st.integers(3, 6))
    model = nn.Sequential(*layers).double()
    x0 = torch.randn(draw(st.integers(1, 3)), c, size, size, generator=gen, dtype=torch.float64)
    model(x0)  # materialise LazyLinear
    return model.eval(), x0, gen


@settings(max_examples=20, deadline=None)
@given(case=conventional_nets())
def test_forward_and_transposed_interpreter_are_adjoint(case):
    model, x0, gen = case
    scope = LinearScope(model, x0)
    x1 = torch.randn(x0.shape, generator=gen, dtype=torch.float64)
    y = torch.randn(scope.output.shape, generator=gen, dtype=torch.float64)
    fx1 = scope.apply(x1)
    fty = scope.transpose_apply(y)
    assert fx1.shape == scope.output.shape and fty.shape == x0.shape
    lhs = (fx1 * y).flatten(1).sum(1)
    rhs = (x1 * fty).flatten(1).sum(1)
    torch.testing.assert_close(lhs, rhs, rtol=1e-10, atol=1e-10)
    # and the interpreter reproduces the network at x0 (Eq. (2)): F(x0) x0 + r(x0) = f(x0)
    with torch.no_grad():
        torch.testing.assert_close(scope.apply(x0) + scope.residual, model(x0), rtol=1e-10, atol=1e-10)
