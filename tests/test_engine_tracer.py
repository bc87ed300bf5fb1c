"""The tracer (linearlens.engine.tracer) and the interpretation state (linearlens.engine.state).

Whole small networks written with modules *and* functional calls are run as their frozen systems and
compared with frozen Jacobians written out by hand (Eq. (2), (5), (6) of the linear-interpreter paper).
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from linearlens.engine import (
    RULES,
    DecisionMismatchError,
    FrozenSystem,
    Mode,
    UninterpretableOperationError,
    current_mode,
    decide,
    interpretation_state,
    linear_interpretation,
    run_frozen,
)
from linearlens.layers import BcosConv2d

pytestmark = pytest.mark.usefixtures("single_thread")


def jacobian_frozen(fn, x0: torch.Tensor) -> torch.Tensor:
    return torch.autograd.functional.jacobian(lambda t: run_frozen(fn, t), x0)


# --- operations without a linear or frozen interpretation ---------------------------------------------------


@pytest.mark.parametrize(
    "fn, match",
    [
        (torch.exp, r"cannot interpret the operation 'exp'"),
        (lambda x: x * x, r"'mul' multiplies two input-dependent tensors"),
        (lambda x: x * x.flip(1), r"'mul' multiplies two input-dependent tensors"),
        (lambda x: x**2, r"'pow'"),
        (lambda x: torch.matmul(x.flatten(1), x.flatten(1).T), r"'matmul' multiplies two input-dependent"),
        (lambda x: x / (x.abs() + 1), r"'div' divides by an input-dependent tensor"),
        (lambda x: 1.0 / x, r"'__rdiv__'"),
        (lambda x: F.softmax(x, 1), r"'softmax'"),
        (lambda x: x.detach() * 2, r"'detach' takes an input-dependent tensor out"),
        (lambda x: x.data * 2, r"'\.data' takes an input-dependent tensor out"),
        (lambda x: x.sum().item(), r"'item' takes an input-dependent tensor out"),
        (lambda x: torch.div(x, 2, rounding_mode="floor"), r"'div' with rounding_mode='floor'"),
        (lambda x: x.to(torch.long), r"'to' casts an input-dependent tensor to torch.int64"),
        (lambda x: torch.where(x > 0, x, 0.0), r"'gt'"),
        (lambda x: x.argmax(1), r"'argmax'"),
        (lambda x: x.round(), r"'round'"),
        (lambda x: torch.sqrt(x.abs()), r"'sqrt'"),
        (lambda x: x.max(), r"'max'.*batch dimension"),
    ],
    ids=[
        "exp", "x*x", "x*flip(x)", "pow", "matmul", "div-carrier", "rdiv", "softmax", "detach", "data", "item",
        "floor-div", "to-long", "compare", "argmax", "round", "sqrt", "max-all",
    ],
)
def test_uninterpretable_operations_raise_naming_the_op(fn, match):
    x = torch.randn(2, 3, 4, 4, dtype=torch.float64, requires_grad=True)
    with pytest.raises(UninterpretableOperationError, match=match):
        run_frozen(fn, x * 1)
    with pytest.raises(UninterpretableOperationError, match=match):
        FrozenSystem(fn, x.detach())
    assert current_mode() is Mode.LIVE  # state restored after the error


def test_generic_error_lists_the_rules_and_the_way_out():
    with pytest.raises(UninterpretableOperationError) as info:
        run_frozen(torch.exp, torch.randn(2, 3))
    message = str(info.value)
    assert "relu" in message and "max_pool2d" in message and "register_rule" in message
    assert "relu_" not in message.split("operations: ")[1].split(", ")  # in-place aliases are not listed


def test_operations_on_constants_are_not_interpreted():
    """Non-linear maths on parameters (exp of a log-scale) or on fresh tensors is left alone."""

    class Scaled(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.log_scale = nn.Parameter(torch.tensor(0.3, dtype=torch.float64))

        def forward(self, x):
            noise_free = torch.softmax(torch.arange(3.0, dtype=x.dtype), 0)  # no carrier: untouched
            return self.log_scale.exp() * x * noise_free.view(1, 3, 1, 1) + x.shape[-1]

    m = Scaled()
    x = torch.randn(2, 3, 4, 4, dtype=torch.float64)
    torch.testing.assert_close(run_frozen(m, x), m(x))


def test_state_and_mode_errors():
    with pytest.raises(ValueError, match="needs Mode.FROZEN or Mode.TWO_BATCH"):
        with linear_interpretation(Mode.LIVE):
            pass
    with pytest.raises(ValueError, match="TWO_BATCH mode replays the decisions of a reference pass"):
        with interpretation_state(Mode.TWO_BATCH):
            pass
    with pytest.raises(ValueError, match="centering must be 'frozen' or 'linear'"):
        with interpretation_state(Mode.FROZEN, centering="mean"):
            pass
    with interpretation_state(Mode.FROZEN):
        with pytest.raises(TypeError, match="a decision must return tensors"):
            decide(lambda t: 1.0, torch.randn(4, 4))
    record = []
    with interpretation_state(Mode.FROZEN, record=record):
        decide(torch.sign, torch.randn(3, 4))
    with interpretation_state(Mode.TWO_BATCH, replay=record):
        with pytest.raises(DecisionMismatchError, match=r"activations \[\(2, 4\)\].*\[\(3, 4\)\]"):
            decide(torch.sign, torch.randn(2, 4))  # same site, another shape
    with interpretation_state(Mode.TWO_BATCH, replay=record):
        with pytest.raises(DecisionMismatchError, match="is not the one the reference pass took"):
            decide(torch.abs, torch.randn(3, 4))  # another site
    with interpretation_state(Mode.TWO_BATCH, replay=record):
        decide(torch.sign, torch.randn(3, 4))
        with pytest.raises(DecisionMismatchError, match="more decisions than the reference pass"):
            decide(torch.sign, torch.randn(3, 4))
    assert current_mode() is Mode.LIVE


def test_decide_modes():
    """LIVE: differentiable; FROZEN: a constant, recorded; TWO_BATCH: the recorded value, whatever the probe."""
    x = torch.randn(2, 3, dtype=torch.float64, requires_grad=True)

    def square(t):
        return t.square()

    live = decide(square, x)
    assert live.requires_grad
    record = []
    with interpretation_state(Mode.FROZEN, record=record):
        frozen = decide(square, x)
    assert not frozen.requires_grad
    torch.testing.assert_close(frozen, live.detach())
    with interpretation_state(Mode.TWO_BATCH, replay=record):
        replayed = decide(square, torch.randn(2, 3, dtype=torch.float64))
    torch.testing.assert_close(replayed, live.detach())


# --- whole networks: functional calls are intercepted and the frozen map is the hand-written one ----------


class Functional(nn.Module):
    """A network written with functional calls, a residual branch and a max over channels."""

    def __init__(self) -> None:
        super().__init__()
        self.fc1 = nn.Linear(4, 6)
        self.fc2 = nn.Linear(6, 4)

    def forward(self, x):
        h = F.relu(self.fc1(x))
        h = self.fc2(h) + x  # residual
        s = torch.sigmoid(h)
        return s.view(s.shape[0], 2, 2).max(1).values


def hand_frozen_jacobian(net: Functional, x0: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The frozen system written out: ReLU mask, sigmoid gain, max selection (Fig. 2)."""
    w1, b1 = net.fc1.weight.detach(), net.fc1.bias.detach()
    w2, b2 = net.fc2.weight.detach(), net.fc2.bias.detach()
    z1 = w1 @ x0 + b1
    mask = (z1 > 0).double()
    h = w2 @ (mask * z1) + b2 + x0
    gain = torch.sigmoid(h) / h
    a = torch.diag(gain) @ (w2 @ torch.diag(mask) @ w1 + torch.eye(4, dtype=torch.float64))
    c = gain * (w2 @ (mask * b1) + b2)
    s = torch.sigmoid(h).view(2, 2)
    pick = s.argmax(0)  # max over the first of the two axes
    rows = torch.stack([pick[j] * 2 + j for j in range(2)])
    return a[rows], c[rows]


def test_functional_calls_are_intercepted(monkeypatch):
    net = Functional().double()
    calls = []
    for name in ("relu", "sigmoid", "max"):
        rule = RULES[name]
        monkeypatch.setitem(
            RULES, name, lambda c, f, a, k, rule=rule, name=name: (calls.append(name), rule(c, f, a, k))[1]
        )
    x0 = torch.randn(3, 4, dtype=torch.float64)
    torch.testing.assert_close(run_frozen(net, x0), net(x0), rtol=1e-12, atol=1e-12)
    assert calls == ["relu", "sigmoid", "max"]


def test_frozen_jacobian_equals_hand_written_system():
    net = Functional().double()
    x0 = torch.randn(3, 4, dtype=torch.float64)
    jac = jacobian_frozen(net, x0)  # (3, 2, 3, 4)
    for n in range(3):
        a, c = hand_frozen_jacobian(net, x0[n])
        torch.testing.assert_close(jac[n, :, n], a)
        torch.testing.assert_close(net(x0[n : n + 1])[0], a @ x0[n] + c)  # f(x0) = F(x0) x0 + r(x0), Eq. (5)
        for m in range(3):
            if m != n:  # no cross-talk between the samples of a batch
                assert jac[n, :, m].abs().max() == 0


def test_two_batch_network_is_eq5():
    """[y0, y1] = [f(x0), F(x0) x1 + r(x0)] with F, r from the hand-written system."""
    net = Functional().double()
    x0 = torch.randn(3, 4, dtype=torch.float64)
    probes = torch.randn(2, 3, 4, dtype=torch.float64)
    system = FrozenSystem(net, x0, grad=False)
    y = system.probe(probes)
    torch.testing.assert_close(system.output, net(x0))
    for k in range(2):
        for n in range(3):
            a, c = hand_frozen_jacobian(net, x0[n])
            torch.testing.assert_close(y[k, n], a @ probes[k, n] + c)


class ConvNet(nn.Module):
    """Conv, BatchNorm (eval), ReLU (in place), max pool, residual, global average pool."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3, padding=1)
        self.bn = nn.BatchNorm2d(4)
        self.conv2 = nn.Conv2d(4, 4, 3, padding=1)
        self.head = nn.Linear(4, 5)

    def forward(self, x):
        h = F.relu(self.bn(self.conv(x)), inplace=True)
        h = F.max_pool2d(h, 2)
        h = h + F.leaky_relu(self.conv2(h), 0.1)
        return self.head(h.mean((2, 3)))


def test_conv_network_frozen_vs_two_batch():
    """The single-batch FROZEN gradient is F(x0)^T (Eq. (6)) of the two-batch system."""
    net = ConvNet().double().eval()
    with torch.no_grad():
        net.bn.running_mean.uniform_(-0.5, 0.5)
        net.bn.running_var.uniform_(0.5, 2.0)
    x0 = torch.randn(2, 3, 6, 6, dtype=torch.float64)
    leaf = x0.clone().requires_grad_(True)
    y = run_frozen(net, leaf)
    torch.testing.assert_close(y, net(x0))
    v = torch.randn_like(y)
    (grad,) = torch.autograd.grad((y * v).sum(), leaf)
    p = torch.randn_like(x0)
    system = FrozenSystem(net, x0, grad=False)
    y0 = system.output
    y_same, y_p, y_zero = system.probe(torch.stack([x0, p, torch.zeros_like(p)]))
    torch.testing.assert_close(y_same, y0)
    torch.testing.assert_close((grad * p).sum(), (v * (y_p - y_zero)).sum())
    # f(x0) = F(x0) x0 + r(x0) with r = y1(0) (Eq. (5))
    torch.testing.assert_close((grad * x0).sum() + (v * y_zero).sum(), (v * y0).sum())


def test_bcos_layers_have_zero_residual_in_two_batch():
    """A B-cos network without bias is its frozen linear map exactly: r(x0) = 0, Eq. (13)."""
    net = nn.Sequential(BcosConv2d(3, 4, 3, padding=1, max_out=2), BcosConv2d(4, 2, 3, stride=2, b=2.5)).double()
    x0 = torch.randn(2, 3, 6, 6, dtype=torch.float64)
    p = torch.randn_like(x0)
    system = FrozenSystem(net, x0, grad=False)
    y0 = system.output
    y_same, y_p, y_zero = system.probe(torch.stack([x0, p, torch.zeros_like(p)]))
    torch.testing.assert_close(y0, net(x0))
    torch.testing.assert_close(y_same, y0)
    assert y_zero.abs().max() == 0
    jac = jacobian_frozen(net, x0)  # (2, 2, 3, 3, 2, 3, 6, 6)
    torch.testing.assert_close(
        torch.einsum("cijnkhw,nkhw->cij", jac[1], p), y_p[1], rtol=1e-10, atol=1e-10
    )


def test_tracer_leaves_no_trace():
    x = torch.randn(2, 3, dtype=torch.float64)
    with linear_interpretation(Mode.FROZEN) as tracer:
        marked = tracer.mark(x)
        assert tracer.is_carrier(marked * 2)
    assert current_mode() is Mode.LIVE
    torch.exp(marked)  # outside the context the same tensor is an ordinary tensor
    with linear_interpretation(Mode.FROZEN) as other:
        assert not other.is_carrier(marked)  # each tracer has its own token
        torch.exp(marked)
