"""The engine's guarantees (issue 7): no silent wrong answers.

* in-place writes (``__setitem__``, ``copy_``, ``index_put_``, ``masked_fill_``, ``add_``, ``mul_``, ``out=``,
  writes through views) are followed, so the frozen system is the network (each of these returned a wrong
  system without an error before: the written tensor was not known to depend on the input);
* probe blocks are independent by construction: changing one block leaves every other block bit-identical,
  whatever the network does across its batch;
* the random-probe self-check catches what the identities that every positively homogeneous live layer
  passes cannot (``y1(x0) = f(x0)``, Euler's identity) and names the module;
* products with a gate (squeeze-excitation, attention, PyTorch's fused attention paths) are interpreted.

Reference values come from independent computations: for piecewise-linear networks the frozen map at
``x0`` is the live Jacobian (``torch.autograd.functional.jacobian``) and ``r = f(x0) - J x0``.
"""

from __future__ import annotations

import threading

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from linearlens import LinearScope, explain
from linearlens.engine import (
    FrozenSystem,
    Mode,
    SystemCheckError,
    UninterpretableOperationError,
    current_mode,
    gate,
    interpretation_state,
    substituted_input,
)
from linearlens.layers import AddInverse, BcosConv2d

pytestmark = pytest.mark.usefixtures("single_thread")


def _images(n: int = 2, c: int = 3, size: int = 6, seed: int = 0) -> torch.Tensor:
    return torch.randn(n, c, size, size, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)


def _live_jacobian_rows(net: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """``(N, K, *in)``: per-image Jacobian of the live network (equal to the frozen map for ReLU networks)."""
    jac = torch.autograd.functional.jacobian(net, x)
    return torch.stack([jac[n, :, n] for n in range(x.shape[0])])


# --- in-place writes ------------------------------------------------------------------------------------


def _setitem(h):
    y = torch.zeros_like(h)
    y[:, :2] = h[:, :2]
    return y


def _copy(h):
    y = torch.zeros_like(h)
    y.copy_(h)
    return y


def _index_put(h):
    y = torch.zeros_like(h)
    y.index_put_((torch.arange(h.shape[0]), torch.tensor([1] * h.shape[0])), h[:, 2])
    return y


def _masked_fill(h):
    y = torch.ones_like(h)
    y.copy_(h)
    return y.masked_fill_(torch.zeros_like(h, dtype=torch.bool).index_fill_(1, torch.tensor([0]), True), 0.5)


def _add_(h):
    y = torch.full_like(h, 0.25)
    y.add_(h)
    return y


def _mul_(h):
    y = torch.full_like(h, -0.5)
    y.mul_(h)
    return y


def _out(h):
    y = torch.empty_like(h)
    torch.add(h, 0.1, out=y)
    return y


def _view(h):
    y = torch.zeros_like(h)
    v = y[:, 1:]  # a view made before the write
    y[:, :3].copy_(h[:, :3])  # written through another view of the same storage
    return torch.cat([y[:, :1], v], 1)  # equals y, read partly through the earlier view


INPLACE = {
    "setitem": _setitem, "copy_": _copy, "index_put_": _index_put, "masked_fill_": _masked_fill, "add_": _add_,
    "mul_": _mul_, "out=": _out, "view": _view,
}


class InPlaceNet(nn.Module):
    def __init__(self, write) -> None:
        super().__init__()
        self.write = write
        self.conv = nn.Conv2d(3, 4, 3, padding=1)
        self.head = nn.Linear(4 * 6 * 6, 3)

    def forward(self, x):
        return self.head(torch.relu(self.write(self.conv(x))).flatten(1))


@pytest.mark.parametrize("name", list(INPLACE))
def test_inplace_writes_are_followed(name):
    torch.manual_seed(0)
    net = InPlaceNet(INPLACE[name]).double().eval()
    x = _images()
    e = explain(net, x, "all", method="linear_rows")  # runs the probe check
    reference = net
    if name == "out=":  # PyTorch cannot differentiate out= itself: the same network written without it
        reference = InPlaceNet(lambda h: h + 0.1).double().eval()
        reference.load_state_dict(net.state_dict())
    torch.testing.assert_close(e.weights, _live_jacobian_rows(reference, x), rtol=1e-10, atol=1e-12)
    with torch.no_grad():
        torch.testing.assert_close(e.residual, net(x) - (e.weights * x.unsqueeze(1)).flatten(2).sum(-1))
    scope = LinearScope(net, x)
    z = torch.randn_like(x)
    lhs = (e.weights * z.unsqueeze(1)).flatten(2).sum(-1) + scope.residual
    torch.testing.assert_close(lhs, scope.system(z), rtol=1e-10, atol=1e-12)


# --- block independence ------------------------------------------------------------------------------------


def _mix_constant_matrix(h):
    m = torch.arange(h.shape[0] ** 2, dtype=h.dtype).reshape(h.shape[0], -1) / 10
    return torch.einsum("nm,m...->n...", m, h)


def _conv_over_batch(h):
    seq = h.flatten(1).T.unsqueeze(1)  # (features, 1, N): the batch becomes a signal
    kernel = torch.tensor([[[0.5, -1.0, 2.0]]], dtype=h.dtype)
    return F.conv1d(seq, kernel, padding=1).squeeze(1).T.reshape(h.shape)


BATCH_MIXERS = {
    "mean(0)": lambda h: h - h.mean(0, keepdim=True),
    "sum(0)": lambda h: h + h.sum(0),
    "cumsum(0)": lambda h: h.cumsum(0),
    "flip(0)": lambda h: h + 0.5 * h.flip(0),
    "roll(0)": lambda h: h.roll(1, 0),
    "x[perm]": lambda h: h[torch.tensor([1, 2, 0])],
    "cat(dim=0)": lambda h: torch.cat([h, h.flip(0)], 0).unflatten(0, (2, -1)).sum(0),
    "constant matrix over the batch": _mix_constant_matrix,
    "conv1d along the batch": _conv_over_batch,
}


class Mixer(nn.Module):
    def __init__(self, mix) -> None:
        super().__init__()
        self.mix = mix
        self.conv = nn.Conv2d(3, 4, 3, padding=1)
        self.head = nn.Linear(4 * 6 * 6, 3)

    def forward(self, x):
        return self.head(F.relu(self.mix(self.conv(x))).flatten(1))


@pytest.mark.parametrize("mix", list(BATCH_MIXERS.values()), ids=list(BATCH_MIXERS))
def test_probe_blocks_are_independent_whatever_the_network_does_across_its_batch(mix):
    torch.manual_seed(0)
    net = Mixer(mix).double().eval()
    x0 = _images(3)
    system = FrozenSystem(net, x0, grad=False)
    blocks = torch.randn(4, *system.source.shape, dtype=torch.float64)
    before = system.probe(blocks)
    changed = blocks.clone()
    changed[2] = torch.randn_like(changed[2]) * 100
    after = system.probe(changed)
    for k in (0, 1, 3):
        assert torch.equal(before[k], after[k]), f"block {k} changed when only block 2 did"
    assert not torch.equal(before[2], after[2])


@pytest.mark.parametrize("mix", list(BATCH_MIXERS.values())[:4], ids=list(BATCH_MIXERS)[:4])
def test_images_coupled_across_the_batch_are_refused_by_the_check(mix):
    """The images of one batch are coupled: per-image rows cannot describe the network; the check says so."""
    torch.manual_seed(0)
    net = Mixer(mix).double().eval()
    with pytest.raises(SystemCheckError, match="coupled"):
        explain(net, _images(3), "all", method="linear_rows")
    explain(net, _images(1), "all", method="linear_rows")  # one image alone is fine


def test_batch_norm_in_training_mode_is_refused():
    net = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.Flatten(), nn.LazyLinear(2)).double()
    net(_images())
    with pytest.raises(RuntimeError, match="couples the samples of a batch"):
        explain(net.train(), _images(), 0, method="linear_rows")


# --- the self-check --------------------------------------------------------------------------------------


class LiveBcosConv2d(BcosConv2d):
    """A B-cos layer that computes its dynamic scale live even inside an interpretation (a bug to catch)."""

    def forward(self, x):
        with interpretation_state(Mode.LIVE):
            return super().forward(x)


class LiveReLU(nn.Module):
    """A bias-free ReLU computed live inside an interpretation: positively homogeneous, so Euler passes."""

    def forward(self, x):
        with interpretation_state(Mode.LIVE):
            return F.relu(x)


def _bcos_net(live: bool) -> nn.Module:
    conv = LiveBcosConv2d if live else BcosConv2d
    return nn.Sequential(
        AddInverse(), BcosConv2d(6, 4, 3, padding=1), conv(4, 4, 3, padding=1), nn.AdaptiveAvgPool2d(1),
        nn.Flatten(), nn.Linear(4, 3, bias=False),
    ).double().eval()


def test_check_catches_a_live_bcos_layer_that_homogeneity_checks_pass():
    torch.manual_seed(0)
    x = torch.rand(2, 3, 6, 6, dtype=torch.float64)
    explain(_bcos_net(live=False), x, "all")  # the faithful network passes
    torch.manual_seed(0)
    net = _bcos_net(live=True)
    # The identities that a live, positively homogeneous layer passes: y1(x0) = f(x0) and Euler's identity.
    e = explain(net, x, "all", check=False)
    torch.testing.assert_close(e.outputs, net(x))
    source = torch.cat([x, 1 - x], 1).requires_grad_(True)
    (g,) = torch.autograd.grad(net[1:](source)[:, 0].sum(), source)
    torch.testing.assert_close((g * source).flatten(1).sum(1), net[1:](source)[:, 0].detach())
    with pytest.raises(SystemCheckError, match=r"'2' \(LiveBcosConv2d\).*not affine"):
        explain(net, x, "all")
    with pytest.raises(SystemCheckError, match=r"'2' \(LiveBcosConv2d\)"):
        LinearScope(net, x)


def test_check_catches_a_live_bias_free_relu():
    torch.manual_seed(0)
    net = nn.Sequential(nn.Conv2d(3, 4, 3, bias=False), LiveReLU(), nn.Flatten(), nn.Linear(64, 2, bias=False))
    net = net.double().eval()
    x = _images(1)
    with pytest.raises(SystemCheckError, match=r"'1' \(LiveReLU\)"):
        explain(net, x, "all", method="linear_rows")
    with pytest.raises(SystemCheckError, match=r"'1' \(LiveReLU\)"):
        LinearScope(net, x)
    e = explain(net, x, "all", method="linear_rows", check=False)  # the user may turn it off for speed
    assert e.meta["check"] is None


def test_check_catches_a_custom_backward_that_is_not_the_frozen_map():
    class StraightThrough(torch.autograd.Function):
        @staticmethod
        def forward(ctx, x):
            return x.clamp_min(0)

        @staticmethod
        def backward(ctx, g):
            return g  # not the ReLU mask

    class Net(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.conv = nn.Conv2d(3, 4, 3)
            self.head = nn.Linear(64, 2)

        def forward(self, x):
            return self.head(StraightThrough.apply(self.conv(x)).flatten(1))

    torch.manual_seed(0)
    # Without functorch support the probe pass refuses the Function; with it, the check sees the wrong rows.
    with pytest.raises((SystemCheckError, UninterpretableOperationError), match="own linear map|autograd.Function"):
        explain(Net().double().eval(), _images(1), "all", method="linear_rows")


def test_check_result_is_recorded_and_tight():
    torch.manual_seed(0)
    net = _bcos_net(live=False)
    e = explain(net, torch.rand(2, 3, 6, 6, dtype=torch.float64), "all")
    assert e.meta["check"]["passed"] and e.meta["check"]["probe_error"] < 1e-13
    torch.testing.assert_close(e.residual, torch.zeros_like(e.residual))  # bias-free: r(x0) = 0 from the probe


# --- gated products ----------------------------------------------------------------------------------------


class SqueezeExcite(nn.Module):
    def __init__(self, gate_fn) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3, padding=1)
        self.fc = nn.Linear(4, 4)
        self.head = nn.Linear(4, 3)
        self.gate_fn = gate_fn

    def forward(self, x):
        h = F.relu(self.conv(x))
        s = self.gate_fn(self.fc(h.mean((2, 3))))[:, :, None, None]
        return self.head((h * s).mean((2, 3)))


@pytest.mark.parametrize(
    "gate_fn", [torch.sigmoid, F.hardsigmoid, lambda t: gate(t.tanh() * 0.5 + 0.5)], ids=["sigmoid", "hard", "named"]
)
def test_squeeze_excitation_freezes_the_gate(gate_fn):
    torch.manual_seed(0)
    net = SqueezeExcite(gate_fn).double().eval()
    x = _images()
    e = explain(net, x, "all", method="linear_rows")
    # Independently: the gate's value at x0, frozen by hand, and the Jacobian of the rest.
    with torch.no_grad():
        h0 = F.relu(net.conv(x))
        s0 = gate_fn(net.fc(h0.mean((2, 3))))[:, :, None, None]

    def frozen_gate(t):
        return net.head((F.relu(net.conv(t)) * s0).mean((2, 3)))

    torch.testing.assert_close(e.weights, _live_jacobian_rows(frozen_gate, x), rtol=1e-10, atol=1e-12)


def test_product_without_a_gate_is_still_refused():
    class Square(nn.Module):
        def forward(self, x):
            h = x.flatten(1)
            return (h * h.tanh()).sum(1, keepdim=True)

    with pytest.raises(UninterpretableOperationError, match=r"'mul' multiplies two input-dependent tensors"):
        explain(Square().double(), _images(), 0, method="linear_rows")

    class Bilinear(nn.Module):
        def forward(self, x):
            h = x.flatten(1)
            return h[:, :3] * h[:, 3:6]

    with pytest.raises(UninterpretableOperationError, match=r"'mul' multiplies two input-dependent tensors"):
        explain(Bilinear().double(), _images(), 0, method="linear_rows")


def _probe_check(model: nn.Module, x: torch.Tensor, targets) -> None:
    e = explain(model, x, targets, method="linear_rows")  # raises if the rows are not the system's
    scope = LinearScope(model, x)
    z = torch.randn_like(e.inputs)
    lhs = (e.weights * z.unsqueeze(1)).flatten(2).sum(-1) + scope.residual.gather(1, e.targets)
    torch.testing.assert_close(lhs, scope.system(z).gather(1, e.targets), rtol=1e-8, atol=1e-10)


def test_transformer_encoder_layer_native_attention_path():
    torch.manual_seed(0)
    layer = nn.TransformerEncoderLayer(8, 2, 16, batch_first=True, dropout=0.1)

    class Net(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.layer = layer
            self.head = nn.Linear(8, 3)

        def forward(self, x):
            return self.head(self.layer(x.flatten(2).transpose(1, 2)).mean(1))

    net = Net().double().eval()
    _probe_check(net, torch.randn(2, 8, 2, 3, dtype=torch.float64), "all")


def _randomise_bn(model: nn.Module) -> nn.Module:
    gen = torch.Generator().manual_seed(3)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.running_mean.copy_(torch.randn(m.num_features, generator=gen) * 0.1)
                m.running_var.copy_(torch.rand(m.num_features, generator=gen) + 0.5)
    return model.double().eval()


@pytest.mark.parametrize("name", ["mobilenet_v3_small", "efficientnet_b0"])
def test_torchvision_gated_networks(name):
    torchvision = pytest.importorskip("torchvision")
    torch.manual_seed(0)
    model = _randomise_bn(getattr(torchvision.models, name)(num_classes=4))
    _probe_check(model, torch.rand(1, 3, 32, 32, dtype=torch.float64), "all")


def test_torchvision_vision_transformer():
    torchvision = pytest.importorskip("torchvision")
    torch.manual_seed(0)
    # vit_b_16's class at a test size: same blocks, fused multi-head attention, class token, positions
    model = torchvision.models.VisionTransformer(
        image_size=32, patch_size=16, num_layers=2, num_heads=2, hidden_dim=16, mlp_dim=32, num_classes=3
    ).double().eval()
    _probe_check(model, torch.rand(2, 3, 32, 32, dtype=torch.float64), "all")


@pytest.mark.slow
def test_torchvision_vit_b_16_full_size():
    torchvision = pytest.importorskip("torchvision")
    torch.manual_seed(0)
    model = torchvision.models.vit_b_16(num_classes=3).double().eval()
    _probe_check(model, torch.rand(1, 3, 224, 224, dtype=torch.float64), [[0]])


# --- state: threads, nesting, no model mutation ------------------------------------------------------------


def test_two_threads_explaining_one_model_agree_with_sequential_runs():
    torch.manual_seed(0)
    net = SqueezeExcite(torch.sigmoid).double().eval()
    xs = [_images(2, seed=s) for s in (1, 2)]
    sequential = [explain(net, x, "all", method="linear_rows").weights for x in xs]
    scopes = [LinearScope(net, x).residual for x in xs]
    results: dict[int, tuple] = {}
    barrier = threading.Barrier(2)

    def work(i: int) -> None:
        barrier.wait()
        for _ in range(3):
            w = explain(net, xs[i], "all", method="linear_rows").weights
            r = LinearScope(net, xs[i]).residual
        results[i] = (w, r)

    threads = [threading.Thread(target=work, args=(i,)) for i in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    for i in range(2):
        assert torch.equal(results[i][0], sequential[i]) and torch.equal(results[i][1], scopes[i])


def test_substitution_is_invisible_to_other_threads_and_leaves_the_model_alone():
    net = nn.Sequential(AddInverse(), nn.Conv2d(6, 2, 3)).double()
    x = torch.rand(1, 3, 5, 5, dtype=torch.float64)
    plain = net(x)
    hooks_before = [(len(m._forward_hooks), len(m._forward_pre_hooks)) for m in net.modules()]
    inside, seen = threading.Event(), {}

    def other() -> None:
        inside.wait()
        seen["out"] = net(x)

    thread = threading.Thread(target=other)
    thread.start()
    with substituted_input(net, lambda e: e * 0):
        assert net(x).abs().max() == net[1].bias.abs().max()  # substituted here...
        inside.set()
        thread.join()
    assert torch.equal(seen["out"], plain)  # ...and not in the other thread
    LinearScope(net, x)
    explain(nn.Sequential(net, nn.Flatten()), x, 0, method="linear_rows")
    assert hooks_before == [(len(m._forward_hooks), len(m._forward_pre_hooks)) for m in net.modules()]


def test_nested_interpretations():
    torch.manual_seed(0)
    net = SqueezeExcite(torch.sigmoid).double().eval()
    x = _images()
    expected = explain(net, x, "all", method="linear_rows").weights
    outer = FrozenSystem(net, x, grad=False)
    with interpretation_state(Mode.FROZEN):
        inner = explain(net, x, "all", method="linear_rows").weights  # the outer state is suspended
        assert current_mode() is Mode.FROZEN
    torch.testing.assert_close(inner, expected, rtol=0, atol=0)
    torch.testing.assert_close(outer.residual(), LinearScope(net, x).residual, rtol=0, atol=0)
    assert current_mode() is Mode.LIVE
