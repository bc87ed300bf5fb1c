"""The model registry and the CIFAR-10 B-cos network (Sec. 4 and App. C.1.1 of the B-cos paper)."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from linearlens.engine import run_frozen
from linearlens.explain import explain
from linearlens.layers import AddInverse, BcosConv2d, LogitLayer
from linearlens.models import (
    BcosCifarConfig,
    BcosCifarNet,
    cifar_gamma,
    cifar_temperature,
    create_model,
    list_models,
    register_model,
)
from linearlens.models import registry as registry_module

pytestmark = pytest.mark.usefixtures("single_thread")

WIDTH = 1 / 16  # 4, 4, 8, 8, 8, 16, 16, 16 channels: the architecture of App. C.1.1 at CPU size


def test_registry_lists_and_creates():
    assert "bcos_cifar" in list_models()
    assert list_models("bcos_*") == [n for n in list_models() if n.startswith("bcos_")]
    assert list_models("no_such_*") == []
    model = create_model("bcos_cifar", width=WIDTH, b=1.5, max_out=1)
    assert isinstance(model, BcosCifarNet) and model.config.b == 1.5 and model.config.max_out == 1


def test_registry_errors(monkeypatch):
    with pytest.raises(ValueError, match=r"unknown model 'resnet50'; available models: .*bcos_cifar"):
        create_model("resnet50")
    monkeypatch.setattr(registry_module, "_REGISTRY", dict(registry_module._REGISTRY))

    @register_model
    def tiny_test_model(**kwargs) -> nn.Module:
        return nn.Identity()

    assert "tiny_test_model" in list_models() and isinstance(create_model("tiny_test_model"), nn.Identity)

    def bcos_cifar() -> nn.Module:
        return nn.Identity()

    with pytest.raises(ValueError, match="a model called 'bcos_cifar' is already registered"):
        register_model(bcos_cifar)


def test_architecture_follows_app_c11():
    model = create_model("bcos_cifar", b=2.0)
    convs = [m for m in model.modules() if isinstance(m, BcosConv2d)]
    assert len(convs) == 9
    assert [c.kernel_size[0] for c in convs] == [3] * 8 + [1]
    assert [c.stride[0] for c in convs] == [1, 1, 2, 1, 1, 2, 1, 1, 1]
    assert [c.out_channels for c in convs] == [64, 64, 128, 128, 128, 256, 256, 256, 10]
    assert convs[0].in_channels == 6 and isinstance(model.encoding, AddInverse)
    assert all(c.max_out == 2 and c.b == 2.0 for c in convs)
    assert all(c.scale == pytest.approx(10 ** (1.5 * 2 - 1.75)) for c in convs)
    assert isinstance(model.logits, LogitLayer)
    assert model.logits.temperature == pytest.approx(100.0)
    assert model.logits.bias == pytest.approx(math.log(0.1 / 0.9))
    small = create_model("bcos_cifar", width=WIDTH)
    assert [c.out_channels for c in small.modules() if isinstance(c, BcosConv2d)] == [4, 4, 8, 8, 8, 16, 16, 16, 10]


def test_gamma_and_temperature_of_app_c11():
    for b in (1.0, 1.25, 1.5, 1.75, 2.0, 2.25, 2.5):
        assert math.log10(cifar_gamma(b)) == pytest.approx(1.5 * b - 1.75)
    table = {1.0: -3, 1.25: -3, 1.5: -2, 1.75: 1, 2.0: 2, 2.25: 2, 2.5: 3}
    for b, log_t in table.items():
        assert math.log10(cifar_temperature(b)) == pytest.approx(log_t)
    assert math.log10(cifar_temperature(1.625)) == pytest.approx(-0.5)  # interpolated in log10
    with pytest.raises(ValueError, match=r"1 <= B <= 2.5 only \(got B = 3.0\); pass temperature="):
        cifar_temperature(3.0)
    config = BcosCifarConfig(b=3.0, temperature=50.0).resolved()
    assert config.temperature == 50.0 and config.gamma == pytest.approx(cifar_gamma(3.0))


@pytest.mark.parametrize("max_out", [1, 2])
@pytest.mark.parametrize("b", [1.0, 1.25, 2.0, 2.5])
def test_full_model_is_w_of_x_times_x_plus_bias(ref, b, max_out):
    """Eqs. (13)-(14), (16) for the whole 9-layer network: the explanation rows equal the product of the
    nine per-layer matrices, and f(x) = W(x) x + b (fully convolutional, so 8x8 inputs keep it small)."""
    model = create_model("bcos_cifar", width=WIDTH, b=b, max_out=max_out).double()
    x = torch.rand(2, 3, 8, 8, dtype=torch.float64)
    logits = model(x)
    e = explain(model, x, "all")
    wx = (e.weights * e.inputs[:, None]).flatten(2).sum(-1)
    assert ref.rel_err(wx + model.config.logit_bias, logits) < 1e-4
    torch.testing.assert_close(e.residual, torch.full_like(e.residual, model.config.logit_bias))
    for n in range(2):
        r = ref.network(list(model.features), e.inputs[n], model.config.temperature, model.config.logit_bias)
        assert ref.rel_err(r.out, logits[n]) < 1e-4
        assert ref.rel_err(e.weights[n].flatten(1), r.matrix) < 1e-4


@pytest.mark.parametrize("b", [1.25, 2.5])
def test_full_model_float32_at_cifar_size(b):
    model = create_model("bcos_cifar", width=WIDTH, b=b)
    x = torch.rand(2, 3, 32, 32)
    logits = model(x)
    assert logits.shape == (2, 10) and torch.isfinite(logits).all()
    torch.testing.assert_close(run_frozen(model, x), logits)  # Eq. (3) for the whole network
    e = explain(model, x, [3, 7])
    assert e.weights.shape == (2, 1, 6, 32, 32) and e.attributions.shape == (2, 1, 32, 32)
    wx = (e.weights * e.inputs[:, None]).flatten(2).sum(-1)[:, 0]
    expected = logits[torch.arange(2), torch.tensor([3, 7])] - model.config.logit_bias
    torch.testing.assert_close(wx, expected, rtol=1e-4, atol=1e-5 * expected.abs().max().item())


def test_config_and_argument_errors():
    with pytest.raises(TypeError, match=r"unknown argument\(s\) 'scale_fact' \(did you mean 'gamma'\?\)"):
        create_model("bcos_cifar", scale_fact=100.0)
    with pytest.raises(TypeError, match=r"'maxout' \(did you mean 'max_out'\?\); accepted: b, max_out"):
        create_model("bcos_cifar", maxout=2)
    with pytest.raises(TypeError, match="did you mean 'max_out'"):
        BcosCifarNet(maxout=2)
    with pytest.raises(TypeError, match="pass either a BcosCifarConfig or keyword arguments, not both"):
        BcosCifarNet(BcosCifarConfig(), b=2.0)
    with pytest.raises(ValueError, match="width must be > 0"):
        create_model("bcos_cifar", width=0)
    with pytest.raises(ValueError, match="B must be a finite number >= 1"):
        create_model("bcos_cifar", b=0.5, temperature=1.0)
    with pytest.raises(ValueError, match="max_out must be an integer >= 1"):
        create_model("bcos_cifar", width=WIDTH, max_out=0)
    with pytest.raises(ValueError, match="out_channels must be a positive int"):
        create_model("bcos_cifar", width=WIDTH, num_classes=0)
    model = create_model("bcos_cifar", width=WIDTH)
    with pytest.raises(ValueError, match=r"AddInverse expected images of shape \(N, 3, \.\.\.\)"):
        model(torch.rand(1, 6, 32, 32))


def test_config_roundtrip_rebuilds_the_same_network():
    model = create_model("bcos_cifar", width=WIDTH, b=1.75, max_out=1)
    clone = BcosCifarNet(model.config)
    clone.load_state_dict(model.state_dict())
    x = torch.rand(2, 3, 16, 16)
    torch.testing.assert_close(clone(x), model(x))
    assert clone.config == model.config and clone.config.gamma == pytest.approx(cifar_gamma(1.75))


def test_width_scaled_gamma_keeps_the_full_width_signal_scale():
    from linearlens.models import cifar_gamma, create_model

    full = create_model("bcos_cifar", b=2.0, width=1.0, width_scaled_gamma=True)
    assert all(layer.scale == pytest.approx(cifar_gamma(2.0)) for layer in full.features)
    narrow = create_model("bcos_cifar", b=2.5, width=0.5, width_scaled_gamma=True)
    plain = create_model("bcos_cifar", b=2.5, width=0.5)
    # First layer: same 6-channel input at every width; later layers: gamma * 0.5^((B-1)/2).
    assert narrow.features[0].scale == pytest.approx(plain.features[0].scale)
    for a, b in zip(list(narrow.features)[1:], list(plain.features)[1:]):
        assert a.scale == pytest.approx(b.scale * 0.5 ** 0.75)
