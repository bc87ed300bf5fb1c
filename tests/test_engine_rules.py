"""Every frozen rule (linearlens.engine.rules) against Eqs. (2), (3) and (6) of the linear-interpreter paper.

For each registered operation: the frozen output at ``x1 = x0`` equals the original ``h(x0)`` (Eq. (3)) in
``FROZEN`` and ``TWO_BATCH`` mode (with several probe blocks); the two-batch output is affine in the probe,
``y1 = A(x0) x1 + c(x0)`` (Eq. (2)); and the single-batch ``FROZEN`` gradient is ``A(x0)^T`` (Eq. (6)).
"""

from __future__ import annotations

from collections.abc import Callable

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from linearlens.engine import RULES, FrozenSystem, UninterpretableOperationError, register_rule
from linearlens.engine import run_frozen as engine_run_frozen

pytestmark = pytest.mark.usefixtures("single_thread")

N = 2
IMG = (N, 3, 5, 5)


def _module(m: nn.Module) -> Callable:
    m = m.double().eval()
    with torch.no_grad():
        for p in m.parameters():
            p.copy_(torch.randn_like(p))
    return m


def _bn() -> Callable:
    bn = nn.BatchNorm2d(3).double().eval()
    with torch.no_grad():
        bn.running_mean.copy_(torch.randn(3))
        bn.running_var.copy_(torch.rand(3) + 0.5)
        bn.weight.copy_(torch.randn(3))
        bn.bias.copy_(torch.randn(3))
    return bn


def _mha(need_weights: bool, masked: bool = False) -> Callable:
    mha = _module(nn.MultiheadAttention(8, 2, batch_first=True))
    mask = torch.zeros(5, 5, dtype=torch.bool).triu(1) if masked else None
    return lambda x: mha(x, x, x, need_weights=need_weights, attn_mask=mask)[0]


def _inplace(op: Callable) -> Callable:
    # clone first: an in-place op on the marked leaf is an autograd error in the live network too
    return lambda x: op(x.clone())


# rule name -> list of (case id, factory returning h, input shape).  Factories run after seeding.
CASES: dict[str, list[tuple[str, Callable[[], Callable], tuple[int, ...]]]] = {
    "relu": [
        ("F.relu", lambda: F.relu, IMG),
        ("nn.ReLU(inplace)", lambda: _inplace(nn.ReLU(inplace=True)), IMG),
        ("Tensor.relu", lambda: torch.Tensor.relu, IMG),
    ],
    "relu_": [("torch.relu_", lambda: _inplace(torch.relu_), IMG)],
    "leaky_relu": [
        ("F.leaky_relu", lambda: lambda x: F.leaky_relu(x, 0.2), IMG),
        ("nn.LeakyReLU(inplace)", lambda: _inplace(nn.LeakyReLU(0.1, inplace=True)), IMG),
    ],
    "leaky_relu_": [("F.leaky_relu_", lambda: _inplace(lambda x: F.leaky_relu_(x, 0.3)), IMG)],
    "prelu": [
        ("nn.PReLU(3)", lambda: _module(nn.PReLU(3)), IMG),
        ("nn.PReLU()", lambda: _module(nn.PReLU()), IMG),
    ],
    "hardtanh": [
        ("F.hardtanh", lambda: lambda x: F.hardtanh(x, -0.5, 0.7), IMG),
        ("nn.Hardtanh(inplace)", lambda: _inplace(nn.Hardtanh(-0.2, 0.3, inplace=True)), IMG),
        ("nn.ReLU6(inplace)", lambda: _inplace(lambda x: nn.ReLU6(inplace=True)(6 * x)), IMG),  # a Hardtanh
    ],
    "hardtanh_": [("F.hardtanh_", lambda: _inplace(lambda x: F.hardtanh_(x, -0.5, 0.5)), IMG)],
    "relu6": [("F.relu6", lambda: lambda x: F.relu6(6 * x), IMG)],
    "clamp": [
        ("torch.clamp", lambda: lambda x: torch.clamp(x, -0.3, 0.6), IMG),
        ("Tensor.clamp(min=)", lambda: lambda x: x.clamp(min=-0.1), IMG),
    ],
    "clip": [("torch.clip", lambda: lambda x: torch.clip(x, max=0.2), IMG)],
    "clamp_": [("Tensor.clamp_", lambda: _inplace(lambda x: x.clamp_(-0.4, 0.4)), IMG)],
    "clip_": [("Tensor.clip_", lambda: _inplace(lambda x: x.clip_(min=0.1)), IMG)],
    "clamp_min": [("torch.clamp_min", lambda: lambda x: torch.clamp_min(x, 0.1), IMG)],
    "clamp_min_": [("torch.clamp_min_", lambda: _inplace(lambda x: torch.clamp_min_(x, -0.2)), IMG)],
    "clamp_max": [("Tensor.clamp_max", lambda: lambda x: x.clamp_max(0.3), IMG)],
    "clamp_max_": [("torch.clamp_max_", lambda: _inplace(lambda x: torch.clamp_max_(x, 0.0)), IMG)],
    "abs": [("torch.abs", lambda: torch.abs, IMG), ("Tensor.abs", lambda: torch.Tensor.abs, IMG)],
    "absolute": [("torch.absolute", lambda: torch.absolute, IMG)],
    "sigmoid": [("torch.sigmoid", lambda: torch.sigmoid, IMG), ("nn.Sigmoid", lambda: nn.Sigmoid(), IMG)],
    "sigmoid_": [("Tensor.sigmoid_", lambda: _inplace(torch.Tensor.sigmoid_), IMG)],
    "tanh": [("torch.tanh", lambda: torch.tanh, IMG)],
    "tanh_": [("torch.tanh_", lambda: _inplace(torch.tanh_), IMG)],
    "silu": [("F.silu", lambda: F.silu, IMG), ("nn.SiLU(inplace)", lambda: _inplace(nn.SiLU(inplace=True)), IMG)],
    "silu_": [("_nn.silu_", lambda: _inplace(torch._C._nn.silu_), IMG)],
    "gelu": [
        ("F.gelu", lambda: F.gelu, IMG),
        ("F.gelu(tanh)", lambda: lambda x: F.gelu(x, approximate="tanh"), IMG),
    ],
    "gelu_": [("_nn.gelu_", lambda: _inplace(torch._C._nn.gelu_), IMG)],
    "elu": [
        ("F.elu", lambda: lambda x: F.elu(x, 0.7), IMG),
        ("nn.ELU(inplace)", lambda: _inplace(nn.ELU(0.7, inplace=True)), IMG),
    ],
    "elu_": [("F.elu_", lambda: _inplace(F.elu_), IMG)],
    "selu": [("F.selu", lambda: F.selu, IMG), ("nn.SELU(inplace)", lambda: _inplace(nn.SELU(inplace=True)), IMG)],
    "selu_": [("torch.selu_", lambda: _inplace(torch.selu_), IMG)],
    "celu": [
        ("F.celu", lambda: lambda x: F.celu(x, 0.5), IMG),
        ("nn.CELU(inplace)", lambda: _inplace(nn.CELU(inplace=True)), IMG),
    ],
    "celu_": [("torch.celu_", lambda: _inplace(torch.celu_), IMG)],
    "softplus": [("F.softplus", lambda: lambda x: F.softplus(x, 2.0), IMG)],
    "mish": [("F.mish", lambda: F.mish, IMG), ("nn.Mish(inplace)", lambda: _inplace(nn.Mish(inplace=True)), IMG)],
    "mish_": [("_nn.mish_", lambda: _inplace(torch._C._nn.mish_), IMG)],
    "hardswish": [
        ("F.hardswish", lambda: lambda x: F.hardswish(3 * x), IMG),
        ("nn.Hardswish(inplace)", lambda: _inplace(lambda x: nn.Hardswish(inplace=True)(3 * x)), IMG),
    ],
    "hardswish_": [("_nn.hardswish_", lambda: _inplace(lambda x: torch._C._nn.hardswish_(3 * x)), IMG)],
    "hardsigmoid": [
        ("F.hardsigmoid", lambda: lambda x: F.hardsigmoid(3 * x), IMG),
        ("nn.Hardsigmoid(inplace)", lambda: _inplace(lambda x: nn.Hardsigmoid(inplace=True)(3 * x)), IMG),
    ],
    "hardsigmoid_": [("_nn.hardsigmoid_", lambda: _inplace(lambda x: torch._C._nn.hardsigmoid_(3 * x)), IMG)],
    "log_sigmoid": [("F.logsigmoid", lambda: F.logsigmoid, IMG), ("nn.LogSigmoid", lambda: nn.LogSigmoid(), IMG)],
    "max_pool1d": [("F.max_pool1d", lambda: lambda x: F.max_pool1d(x, 3, 2, 1), (N, 3, 9))],
    "max_pool1d_with_indices": [
        ("F.max_pool1d(indices)", lambda: lambda x: F.max_pool1d(x, 2, return_indices=True)[0], (N, 3, 8)),
        ("torch.max_pool1d_with_indices", lambda: lambda x: torch.max_pool1d_with_indices(x, 2)[0], (N, 3, 8)),
    ],
    "max_pool2d": [
        ("F.max_pool2d", lambda: lambda x: F.max_pool2d(x, 2), IMG),
        ("nn.MaxPool2d(pad,dil,ceil)", lambda: nn.MaxPool2d(3, 2, 1, dilation=1, ceil_mode=True), (N, 3, 6, 6)),
    ],
    "max_pool2d_with_indices": [
        ("nn.MaxPool2d(indices)", lambda: lambda x: nn.MaxPool2d(2, return_indices=True)(x)[0], IMG),
        ("F.max_pool2d_with_indices", lambda: lambda x: F.max_pool2d_with_indices(x, 2)[0], IMG),
    ],
    "max_pool3d": [("F.max_pool3d", lambda: lambda x: F.max_pool3d(x, 2), (N, 2, 4, 4, 4))],
    "max_pool3d_with_indices": [
        ("F.max_pool3d(indices)", lambda: lambda x: F.max_pool3d(x, 2, return_indices=True)[0], (N, 2, 4, 4, 4))
    ],
    "adaptive_max_pool1d": [("F.adaptive_max_pool1d", lambda: lambda x: F.adaptive_max_pool1d(x, 3), (N, 3, 7))],
    "adaptive_max_pool1d_with_indices": [
        ("F.adaptive_max_pool1d(indices)", lambda: lambda x: F.adaptive_max_pool1d(x, 2, True)[0], (N, 3, 7))
    ],
    "adaptive_max_pool2d": [("nn.AdaptiveMaxPool2d", lambda: nn.AdaptiveMaxPool2d((2, 3)), IMG)],
    "adaptive_max_pool2d_with_indices": [
        ("F.adaptive_max_pool2d(indices)", lambda: lambda x: F.adaptive_max_pool2d(x, 2, True)[0], IMG)
    ],
    "adaptive_max_pool3d": [("F.adaptive_max_pool3d", lambda: lambda x: F.adaptive_max_pool3d(x, 2), (N, 2, 3, 4, 4))],
    "adaptive_max_pool3d_with_indices": [
        ("F.adaptive_max_pool3d(indices)", lambda: lambda x: F.adaptive_max_pool3d(x, 1, True)[0], (N, 2, 3, 4, 4))
    ],
    "max": [
        ("x.max(1)", lambda: lambda x: x.max(1).values, IMG),
        ("torch.max(dim=-1,keepdim)", lambda: lambda x: torch.max(x, dim=-1, keepdim=True)[0], IMG),
        ("torch.max(x, other)", lambda: lambda x: torch.max(x, 0.5 * x.roll(1, 1)), IMG),
    ],
    "amax": [
        ("Tensor.amax((2,3))", lambda: lambda x: x.amax((2, 3)), IMG),
        ("torch.amax(1,keepdim)", lambda: lambda x: torch.amax(x, 1, keepdim=True), IMG),
    ],
    "maximum": [
        ("torch.maximum(carriers)", lambda: lambda x: torch.maximum(x, 0.5 * x.roll(1, 1)), IMG),
        ("torch.maximum(const)", lambda: lambda x: torch.maximum(x, torch.tensor(0.1, dtype=x.dtype)), IMG),
        ("torch.maximum(0, x)", lambda: lambda x: torch.maximum(torch.zeros((), dtype=x.dtype), x), IMG),
    ],
    "minimum": [
        ("torch.minimum", lambda: lambda x: torch.minimum(x, -x.flip(2)), IMG),
        ("torch.minimum(c, x)", lambda: lambda x: torch.minimum(torch.full((1, 3, 1, 1), 0.2, dtype=x.dtype), x), IMG),
    ],
    "fmax": [("torch.fmax", lambda: lambda x: torch.fmax(x, 0.3 * x.roll(1, 3)), IMG)],
    "fmin": [("torch.fmin", lambda: lambda x: torch.fmin(x, 0.3 * x.roll(1, 3)), IMG)],
    "batch_norm": [("nn.BatchNorm2d(eval)", _bn, IMG)],
    "instance_norm": [
        ("nn.InstanceNorm2d(affine)", lambda: _module(nn.InstanceNorm2d(3, affine=True)), IMG),
        ("F.instance_norm", lambda: F.instance_norm, IMG),
    ],
    "group_norm": [
        ("nn.GroupNorm(1)", lambda: _module(nn.GroupNorm(1, 3)), IMG),
        ("nn.GroupNorm(3)", lambda: _module(nn.GroupNorm(3, 3)), IMG),
    ],
    "layer_norm": [
        ("nn.LayerNorm([5,5])", lambda: _module(nn.LayerNorm([5, 5])), IMG),
        ("F.layer_norm(5)", lambda: lambda x: F.layer_norm(x, (5,)), IMG),
    ],
    "scaled_dot_product_attention": [
        ("F.sdpa", lambda: lambda x: F.scaled_dot_product_attention(x, x.flip(-1), x), (N, 2, 5, 4)),
        (
            "F.sdpa(causal, scale)",
            lambda: lambda x: F.scaled_dot_product_attention(x.flip(-2), x, 2 * x, is_causal=True, scale=0.3),
            (N, 2, 5, 4),
        ),
    ],
    "multi_head_attention_forward": [
        ("nn.MultiheadAttention", lambda: _mha(need_weights=False), (N, 5, 8)),
        ("nn.MultiheadAttention(weights, mask)", lambda: _mha(need_weights=True, masked=True), (N, 5, 8)),
    ],
    "dropout": [
        ("nn.Dropout(eval)", lambda: nn.Dropout(0.5).eval(), IMG),
        ("F.dropout(training=False)", lambda: lambda x: F.dropout(x, 0.5, training=False), IMG),
    ],
    "dropout_": [("torch.dropout_", lambda: _inplace(lambda x: torch.dropout_(x, 0.5, False)), IMG)],
    "dropout1d": [("F.dropout1d", lambda: lambda x: F.dropout1d(x, 0.5, False), (N, 3, 7))],
    "dropout2d": [("nn.Dropout2d(eval)", lambda: nn.Dropout2d().eval(), IMG)],
    "dropout3d": [("F.dropout3d", lambda: lambda x: F.dropout3d(x, 0.5, False), (N, 2, 3, 3, 3))],
    "alpha_dropout": [("nn.AlphaDropout(eval)", lambda: nn.AlphaDropout(0.5).eval(), IMG)],
    "feature_alpha_dropout": [
        ("F.feature_alpha_dropout", lambda: lambda x: F.feature_alpha_dropout(x, 0.5, False), IMG)
    ],
}

PARAMS = [
    pytest.param(name, make, shape, id=f"{name}:{cid}") for name, cases in CASES.items() for cid, make, shape in cases
]


def _reachable(name: str) -> bool:
    """Whether some torch callable reports ``name`` to the tracer (aliases like 'logsigmoid' do not)."""
    for owner in (F, torch, torch.Tensor, torch._C._nn):
        fn = getattr(owner, name, None)
        if fn is not None and getattr(fn, "__name__", None) == name:
            return True
    return False


def test_every_reachable_rule_has_a_case():
    missing = sorted(n for n in RULES if _reachable(n) and n not in CASES)
    assert not missing, f"add test cases for the frozen rules {missing}"


def _x0(shape: tuple[int, ...]) -> torch.Tensor:
    x = torch.randn(*shape, dtype=torch.float64)
    x.view(-1)[::7] = 0.0  # exact zeros: the gain interpretation must handle x0 = 0 (Eq. (3))
    return x


@pytest.fixture
def spy(monkeypatch):
    """Count the calls of the rule registered as ``name`` (proves that the call was intercepted)."""

    def install(name: str) -> list:
        calls = []
        rule = RULES[name]

        def counting(ctx, func, args, kwargs):
            calls.append(getattr(func, "__name__", func))
            return rule(ctx, func, args, kwargs)

        monkeypatch.setitem(RULES, name, counting)
        return calls

    return install


def two_batch(h: Callable, blocks: list[torch.Tensor], centering: str = "frozen") -> list[torch.Tensor]:
    """``[f(x0), y1(p_1), ..., y1(p_k)]``: the reference pass at ``blocks[0]`` and probes replaying its decisions."""
    system = FrozenSystem(h, blocks[0], centering=centering, grad=False)
    return [system.output.detach(), *system.probe(torch.stack(blocks[1:])).detach()]


def frozen(h: Callable, x: torch.Tensor, centering: str = "frozen") -> torch.Tensor:
    return engine_run_frozen(h, x, centering=centering)


@pytest.mark.parametrize("name, make, shape", PARAMS)
def test_frozen_rule_eq3_and_gradient(name, make, shape, spy):
    """FROZEN: value equals h(x0) (Eq. (3)); the gradient is A(x0)^T (Eq. (6)), checked against the
    two-batch system's linear part."""
    h = make()
    x0 = _x0(shape)
    expected = h(x0.clone())
    calls = spy(name)
    leaf = x0.clone().requires_grad_(True)
    y = frozen(h, leaf)
    assert calls, f"the call was not routed through the '{name}' rule"
    torch.testing.assert_close(y.detach(), expected, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(leaf.detach(), x0)  # the input itself is left alone

    # <A^T v, p> == <v, A p> with A p from the two-batch system at the same reference
    v = torch.randn_like(y)
    (grad,) = torch.autograd.grad((y * v).sum(), leaf, allow_unused=True)
    grad = torch.zeros_like(x0) if grad is None else grad
    p = torch.randn_like(x0)
    _, y_p, y_zero = two_batch(h, [x0, p, torch.zeros_like(x0)])
    torch.testing.assert_close((grad * p).sum(), (v * (y_p - y_zero)).sum(), rtol=1e-9, atol=1e-9)


@pytest.mark.parametrize("name, make, shape", PARAMS)
def test_two_batch_rule_eq3_and_affine(name, make, shape, spy):
    """TWO_BATCH with k = 5 probe blocks: y0 = h(x0), y1(x0) = h(x0) (Eq. (3)), and
    y1(a p + b q) - c = a (y1(p) - c) + b (y1(q) - c) with c = y1(0) (Eq. (2))."""
    h = make()
    x0 = _x0(shape)
    expected = h(x0.clone())
    calls = spy(name)
    p, q = torch.randn_like(x0), torch.randn_like(x0)
    a, b = 0.7, -1.9
    y0, y_same, y_p, y_q, y_comb, y_zero = two_batch(h, [x0, x0, p, q, a * p + b * q, torch.zeros_like(x0)])
    assert calls, f"the call was not routed through the '{name}' rule"
    torch.testing.assert_close(y0, expected, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(y_same, expected, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(y_comb - y_zero, a * (y_p - y_zero) + b * (y_q - y_zero), rtol=1e-9, atol=1e-9)


@pytest.mark.parametrize("name, make, shape", [p for p in PARAMS if p.values[0].endswith("_norm")])
def test_norm_rules_with_linear_centering(name, make, shape):
    """centering='linear' keeps mean subtraction linear: Eq. (3) still holds and the residual holds only
    the affine bias, whereas centering='frozen' puts -mean/std into the residual."""
    h = make()
    x0 = _x0(shape) + 2.0
    expected = h(x0.clone())
    p = torch.randn_like(x0)
    y0, y_same, y_p, y_zero = two_batch(h, [x0, x0, p, torch.zeros_like(x0)], centering="linear")
    torch.testing.assert_close(y_same, expected, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(frozen(h, x0, centering="linear"), expected, rtol=1e-12, atol=1e-12)
    bias = h(torch.zeros_like(x0)) if name == "batch_norm" else _affine_bias(h, x0)
    torch.testing.assert_close(y_zero, bias.expand_as(y_zero), rtol=1e-12, atol=1e-12)
    if name != "batch_norm":
        _, _, y_zero_frozen = two_batch(h, [x0, x0, torch.zeros_like(x0)])
        assert (y_zero_frozen - y_zero).abs().max() > 0.1


def _affine_bias(h: Callable, x0: torch.Tensor) -> torch.Tensor:
    bias = getattr(h, "bias", None)
    if bias is None:
        return torch.zeros_like(x0)
    if isinstance(h, nn.LayerNorm):
        return bias.detach().expand_as(x0)
    return bias.detach().view(1, -1, *[1] * (x0.dim() - 2)).expand_as(x0)


def test_max_returns_reference_indices():
    x0 = torch.randn(2, 4, 3, dtype=torch.float64)
    p = torch.randn_like(x0)
    seen = []

    def h(t):
        values, indices = t.max(1)
        seen.append(indices)
        return values

    y0, y_p = two_batch(h, [x0, p])
    live = x0.max(1)
    assert all(torch.equal(i, live.indices) for i in seen)  # the reference's indices, in both passes
    torch.testing.assert_close(y0, live.values)
    torch.testing.assert_close(y_p, p.gather(1, live.indices.unsqueeze(1)).squeeze(1))


def test_max_pool_frozen_selection_is_the_reference_argmax():
    x0 = torch.randn(1, 1, 4, 4, dtype=torch.float64)
    p = torch.randn_like(x0)
    _, idx = F.max_pool2d(x0, 2, return_indices=True)
    _, y_p = two_batch(lambda t: F.max_pool2d(t, 2), [x0, p])
    torch.testing.assert_close(y_p, p.flatten(2).gather(2, idx.flatten(2)).view_as(y_p))


# --- rules that refuse ----------------------------------------------------------------------------------


def test_batch_norm_in_training_mode_raises():
    bn = nn.BatchNorm2d(3).double().train()
    with pytest.raises(RuntimeError, match=r"BatchNorm normalises with batch statistics.*model\.eval\(\)"):
        frozen(bn, torch.randn(*IMG, dtype=torch.float64))
    no_stats = nn.BatchNorm2d(3, track_running_stats=False).double().eval()
    with pytest.raises(RuntimeError, match="couples the samples of a batch"):
        frozen(no_stats, torch.randn(*IMG, dtype=torch.float64))


@pytest.mark.parametrize(
    "h",
    [nn.Dropout(0.5).train(), nn.Dropout2d(0.1).train(), lambda x: F.dropout(x, 0.2), nn.AlphaDropout(0.3).train()],
    ids=["Dropout", "Dropout2d", "F.dropout", "AlphaDropout"],
)
def test_active_dropout_raises(h):
    with pytest.raises(RuntimeError, match=r"dropout is active \(training mode\); call model\.eval\(\)"):
        frozen(h, torch.randn(*IMG, dtype=torch.float64))


@pytest.mark.parametrize(
    "h, match",
    [
        (lambda x: x.max(), "'max'.*batch dimension"),
        (lambda x: x.amax(0), "'amax'.*batch dimension"),
        (lambda x: x.clamp(min=torch.zeros(1, 3, 1, 1, dtype=x.dtype)), "'clamp'.*tensor bounds"),
    ],
    ids=["max-all", "amax-batch", "clamp-tensor"],
)
def test_rules_refusing_raise_uninterpretable(h, match):
    with pytest.raises(UninterpretableOperationError, match=match):
        frozen(h, torch.randn(*IMG, dtype=torch.float64))


def test_register_rule_extends_the_engine():
    """A user rule for an op the engine does not know (here exp frozen as a gain) is used by the tracer."""

    def exp_rule(ctx, func, args, kwargs):
        x = args[0]
        gain, const = ctx.decide(lambda t: (torch.where(t == 0, 1.0, torch.expm1(t) / t), torch.ones_like(t)), x)
        return x * gain + const

    x0 = torch.randn(*IMG, dtype=torch.float64)
    with pytest.raises(UninterpretableOperationError, match="'exp'"):
        frozen(torch.exp, x0)
    register_rule("exp")(exp_rule)
    try:
        torch.testing.assert_close(frozen(torch.exp, x0), torch.exp(x0))
    finally:
        del RULES["exp"]


def test_register_rule_refuses_to_replace_a_rule_unless_asked():
    def fake(ctx, func, args, kwargs):
        return args[0]

    with pytest.raises(ValueError, match=r"a built-in rule for 'relu' exists; pass replace=True"):
        register_rule("relu")(fake)
    assert RULES["relu"] is not fake
    original = RULES["relu"]
    try:
        register_rule("relu", replace=True)(fake)
        assert RULES["relu"] is fake
    finally:
        RULES["relu"] = original
