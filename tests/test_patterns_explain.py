"""PatternNet / PatternAttribution through the engine's frozen network, against closed forms and exact maps."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from helpers_nets import randomise_bn
from linearlens import LinearScope, explain
from linearlens.explain import MethodNotApplicableError
from linearlens.patterns import (
    LayerPatterns,
    PatternSet,
    PatternsNotFittedError,
    UnsupportedLayerError,
    attach_patterns,
    fit_patterns,
)
from linearlens.patterns.io import load_patterns, save_patterns
from linearlens.patterns.layers import folded_weight


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    """Tiny tensors: one intra-op thread (OpenMP spin-waiting on shared cores costs 20x here)."""
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


class PoolNet(nn.Module):
    """conv-ReLU-maxpool, conv-ReLU-avgpool, dense-ReLU-dense."""

    def __init__(self) -> None:
        super().__init__()
        self.c1, self.c2 = nn.Conv2d(3, 4, 3, padding=1), nn.Conv2d(4, 5, 3, padding=1)
        self.f1, self.f2 = nn.Linear(5 * 2 * 2, 6), nn.Linear(6, 3)

    def forward(self, x: Tensor) -> Tensor:
        h = F.max_pool2d(F.relu(self.c1(x)), 2)
        h = F.avg_pool2d(F.relu(self.c2(h)), 2)
        return self.f2(F.relu(self.f1(h.flatten(1))))


class ResCatNet(nn.Module):
    """Conv+BN stem, a residual block with a projection shortcut, a concatenation of two branches, global pool."""

    def __init__(self) -> None:
        super().__init__()
        self.stem, self.bn0 = nn.Conv2d(3, 4, 3, padding=1, bias=False), nn.BatchNorm2d(4)
        self.a, self.bn_a = nn.Conv2d(4, 4, 3, stride=2, padding=1, bias=False), nn.BatchNorm2d(4)
        self.short, self.bn_s = nn.Conv2d(4, 4, 1, stride=2, bias=False), nn.BatchNorm2d(4)
        self.left, self.right = nn.Conv2d(4, 3, 1), nn.Conv2d(4, 2, 3, padding=1)
        self.fc = nn.Linear(5, 3)

    def forward(self, x: Tensor) -> Tensor:
        h = F.relu(self.bn0(self.stem(x)))
        h = F.relu(self.bn_a(self.a(h)) + self.bn_s(self.short(h)))
        h = torch.cat([F.relu(self.left(h)), F.relu(self.right(h))], 1)
        return self.fc(F.max_pool2d(h, 2).mean((2, 3)))


def make(cls) -> nn.Module:
    torch.manual_seed(0)
    return randomise_bn(cls()).double().eval()


def data(n: int = 24, seed: int = 0) -> Tensor:
    return torch.rand(n, 3, 8, 8, dtype=torch.float64, generator=torch.Generator().manual_seed(seed))


def weight_patterns(model: nn.Module, fitted: PatternSet, ones: bool) -> PatternSet:
    """A PatternSet whose patterns are the (folded) weights themselves, or all ones."""
    modules = dict(model.named_modules())
    layers = {}
    for name, lp in fitted.layers.items():
        w = folded_weight(modules[name], modules[lp.layer.norm] if lp.layer.norm else None).flatten(1)
        p = torch.ones_like(w) if ones else w
        layers[name] = LayerPatterns(lp.layer, p, p, p)
    return PatternSet(layers)


@pytest.mark.parametrize("cls", [PoolNet, ResCatNet])
def test_with_the_weights_as_patterns_both_methods_are_the_frozen_gradient_times_y(cls):
    """Max/avg pooling, residual additions, concatenation and folded BN are the engine's own gates:
    with a = w (PatternNet) or a = 1 (PatternAttribution, w ⊙ a = w) the back-projection must be the row
    of the frozen network's linear map F(x0) times the output, exactly."""
    model = make(cls)
    fitted = fit_patterns(model, [data()])
    x = data(3, seed=1)
    rows = explain(model, x, "all", method="linear_rows")
    expected = rows.weights * rows.outputs[..., None, None, None]
    scope = LinearScope(model, x)
    z = torch.randn_like(x)
    for method, ones in (("patternnet", False), ("patternattribution", True)):
        e = explain(model, x, "all", method=method, patterns=weight_patterns(model, fitted, ones), estimator="a")
        torch.testing.assert_close(e.channel_attributions, expected, rtol=1e-9, atol=1e-12)
        # the probe check: these rows are the network's own frozen linear map, <rows, z> + r(x0) = y1(z)
        rows = e.channel_attributions / e.outputs[..., None, None, None]
        lhs = (rows * z.unsqueeze(1)).flatten(2).sum(-1) + scope.residual
        torch.testing.assert_close(lhs, scope.system(z), rtol=1e-9, atol=1e-9)


def test_single_linear_layer_closed_forms():
    """PatternAttribution of one linear layer is w ⊙ a y, PatternNet a y (a+ or a- by the sign of y)."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Flatten(), nn.Linear(12, 4)).double().eval()
    fitted = fit_patterns(model, [torch.randn(200, 3, 2, 2, dtype=torch.float64) + 0.2])
    lp = fitted.layers["1"]
    x = torch.randn(5, 3, 2, 2, dtype=torch.float64)
    y = model(x).detach()
    w = model[1].weight.detach()
    a = torch.where((y > 0)[..., None], lp.positive[None], lp.negative[None])  # (N, K, D)
    pa = explain(model, x, "all", method="patternattribution", patterns=fitted)
    pn = explain(model, x, "all", method="patternnet", patterns=fitted)
    torch.testing.assert_close(pa.channel_attributions.flatten(2), w * a * y[..., None])
    torch.testing.assert_close(pn.channel_attributions.flatten(2), a * y[..., None])
    # w^T a = 1: the attribution sums to the output
    torch.testing.assert_close(pa.attributions.flatten(2).sum(-1), y)


def test_two_layer_network_against_the_hand_written_back_projection():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Flatten(), nn.Linear(6, 5), nn.ReLU(), nn.Linear(5, 3)).double().eval()
    fitted = fit_patterns(model, [torch.randn(300, 6, 1, 1, dtype=torch.float64)])
    x = torch.randn(4, 6, 1, 1, dtype=torch.float64)
    z1 = model[1](x.flatten(1)).detach()
    y = model(x).detach()
    p1, p3 = fitted.layers["1"], fitted.layers["3"]
    w1, w3 = model[1].weight.detach(), model[3].weight.detach()
    for method in ("patternnet", "patternattribution"):
        k1 = (w1 * p1.positive) if method == "patternattribution" else p1.positive  # gated units are active
        e = explain(model, x, "all", method=method, patterns=fitted).channel_attributions.flatten(2)
        for n in range(4):
            for t in range(3):
                last = p3.positive[t] if y[n, t] > 0 else p3.negative[t]
                g = (w3[t] * last if method == "patternattribution" else last) * (z1[n] > 0)
                torch.testing.assert_close(e[n, t], y[n, t] * (g @ k1))


def test_patterns_are_fitted_and_explained_on_a_small_resnet_like_net():
    model = make(ResCatNet)
    fitted = fit_patterns(model, data().split(8))
    kinds = {name: (lp.layer.kind, lp.layer.norm) for name, lp in fitted.layers.items()}
    assert kinds["stem"] == ("conv2d", "bn0") and kinds["a"] == ("conv2d", "bn_a") and kinds["fc"] == ("linear", None)
    x = data(2, seed=3)
    for method in ("patternnet", "patternattribution"):
        e = explain(model, x, "predicted", method=method, patterns=fitted)
        assert e.attributions.shape == (2, 1, 8, 8) and bool(torch.isfinite(e.attributions).all())
    # S_x PatternAttribution is LRP-z, i.e. input x gradient of the frozen network
    e = explain(model, x, "predicted", method="patternattribution", estimator="x")
    ixg = explain(model, x, "predicted", method="ixg")
    torch.testing.assert_close(e.attributions, ixg.attributions)


def test_lone_batch_norm_pattern_is_one_over_the_scale():
    torch.manual_seed(0)
    model = randomise_bn(nn.Sequential(nn.BatchNorm2d(3), nn.Flatten(), nn.Linear(12, 2))).double().eval()
    fitted = fit_patterns(model, [torch.randn(50, 3, 2, 2, dtype=torch.float64)])
    assert fitted.layers["0"].layer.kind == "norm"
    bn = model[0]
    s = (bn.weight / torch.sqrt(bn.running_var + bn.eps)).detach()
    x = torch.randn(2, 3, 2, 2, dtype=torch.float64)
    y = model(x).detach()
    lp = fitted.layers["2"]
    a = torch.where((y > 0)[..., None], lp.positive[None], lp.negative[None]).view(2, 2, 3, 2, 2)
    pn = explain(model, x, "all", method="patternnet", patterns=fitted).channel_attributions
    torch.testing.assert_close(pn, a / s.view(1, 1, 3, 1, 1) * y[..., None, None, None])


def test_explaining_before_fitting_is_a_clear_error():
    model = make(PoolNet)
    with pytest.raises(PatternsNotFittedError, match="fit_patterns"):
        explain(model, data(1), method="patternnet")
    attach_patterns(model, fit_patterns(model, [data()]))
    assert explain(model, data(1), method="patternnet").attributions.shape == (1, 1, 8, 8)


def test_unsupported_layers_are_named(tiny_net):
    with pytest.raises(MethodNotApplicableError, match=r"features\.0 \(BcosConv2d\)"):
        fit_patterns(tiny_net().eval(), [torch.rand(2, 3, 6, 6, dtype=torch.float64)])
    grouped = nn.Sequential(nn.Conv2d(4, 4, 3, groups=2), nn.Flatten()).eval()
    with pytest.raises(UnsupportedLayerError, match=r"0 \(Conv2d with groups=2\)"):
        fit_patterns(grouped, [torch.rand(2, 4, 5, 5)])
    other = nn.Sequential(nn.Conv1d(3, 2, 1), nn.Flatten()).eval()
    with pytest.raises(UnsupportedLayerError, match=r"0 \(Conv1d\)"):
        fit_patterns(other, [torch.rand(2, 3, 5)])

    class Functional(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.fc = nn.Linear(12, 2)
            self.register_buffer("extra", torch.randn(2, 2))

        def forward(self, x: Tensor) -> Tensor:
            return F.linear(self.fc(x.flatten(1)), self.extra)

    with pytest.raises(UnsupportedLayerError, match="linear x1"):
        fit_patterns(Functional().eval(), [torch.rand(2, 3, 2, 2)])


def test_bad_calls_are_clear_errors():
    model = make(PoolNet)
    fitted = fit_patterns(model, [data()])
    with pytest.raises(ValueError, match="PatternNet needs"):
        explain(model, data(1), method="patternnet", patterns=fitted, estimator="x")
    with pytest.raises(ValueError, match="estimator must be"):
        explain(model, data(1), method="patternnet", patterns=fitted, estimator="b")
    with pytest.raises(ValueError, match="does not have"):
        explain(make(ResCatNet), data(1), method="patternnet", patterns=fitted)
    with pytest.raises(RuntimeError, match="eval mode"):
        fit_patterns(PoolNet().train(), [data()])
    with pytest.raises(ValueError, match="no batches"):
        fit_patterns(model, [])


def test_patterns_round_trip_through_safetensors_and_json(tmp_path):
    model = make(ResCatNet)
    fitted = fit_patterns(model, [data()])
    save_patterns(tmp_path, fitted)
    loaded = load_patterns(tmp_path, model)
    assert loaded.meta == fitted.meta
    x = data(2, seed=5)
    a = explain(model, x, "all", method="patternattribution", patterns=fitted).attributions
    b = explain(model, x, "all", method="patternattribution", patterns=loaded).attributions
    assert torch.equal(a, b)
    with pytest.raises(ValueError, match="shape"):
        load_patterns(tmp_path, randomise_bn(_wider_res()).double().eval())
    with pytest.raises(FileNotFoundError, match="no patterns"):
        load_patterns(tmp_path / "missing")


def _wider_res() -> nn.Module:
    net = ResCatNet()
    net.fc = nn.Linear(5, 4)
    return net
