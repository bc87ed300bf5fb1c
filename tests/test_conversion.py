"""Weight-keeping conversion to B-cos (linearlens.conversion) and its fine-tuning schedule.

Exactness: converted torchvision models equal the originals at B = 1 (float32, 1e-5) and are B-cos
layer for layer.  Faithfulness: at several schedule steps the explanation is the network's own linear
map, checked with the random-probe identity ``<rows, z> + r(x0) = y1(z)`` (float64).  The end of the
schedule is a B-cos network whose residual is the logit bias alone.
"""

from __future__ import annotations

import math

import pytest
import torch
import torchvision
from torch import nn
from torchvision.models import VGG, DenseNet, ResNet, VisionTransformer
from torchvision.models.resnet import BasicBlock

from helpers_nets import randomise_bn
from linearlens.conversion import (
    UnconvertibleModuleError,
    assert_bcos_final,
    finalize_bcos,
    progress_at,
    set_bcosification,
    to_bcos,
)
from linearlens.conversion.schedule import coefficients
from linearlens.explain import explain
from linearlens.interpret import LinearScope
from linearlens.layers import AddInverse, BcosConv2d, BcosLinear


def _randomise(model: nn.Module) -> nn.Module:
    """Non-trivial BN statistics/shifts, LN biases and non-zero heads (torchvision zero-inits some)."""
    randomise_bn(model)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.LayerNorm):
                m.weight.uniform_(0.5, 1.5)
                m.bias.uniform_(-0.3, 0.3)
            elif isinstance(m, nn.Linear):
                m.weight.normal_(0, 1 / math.sqrt(m.in_features))
                if m.bias is not None:
                    m.bias.uniform_(-0.3, 0.3)
            elif isinstance(m, nn.MultiheadAttention):
                m.in_proj_bias.uniform_(-0.3, 0.3)
            elif isinstance(m, VisionTransformer):
                m.class_token.normal_(0, 0.5)
                m.encoder.pos_embedding.normal_(0, 0.5)
    return model.eval()


def _tiny_vgg(classes: int = 5) -> VGG:
    features = torchvision.models.vgg.make_layers([8, "M", 16, "M"], batch_norm=False)
    # torchvision's VGG head is 25088 -> 4096 -> 4096: built on the meta device and replaced by a narrow
    # head of the same module types, which keeps the tests fast.
    with torch.device("meta"):
        model = VGG(nn.Identity(), num_classes=classes, init_weights=False)
    model.features = features
    model.avgpool = nn.AdaptiveAvgPool2d((2, 2))
    model.classifier = nn.Sequential(nn.Linear(64, 32), nn.ReLU(True), nn.Dropout(), nn.Linear(32, classes))
    return model


TINY = {
    "vgg": _tiny_vgg,
    "resnet": lambda: ResNet(BasicBlock, [1, 1, 1, 1], num_classes=5),
    "densenet": lambda: DenseNet(growth_rate=4, block_config=(2, 2), num_init_features=8, bn_size=2, num_classes=5),
    "vit": lambda: VisionTransformer(
        image_size=16, patch_size=4, num_layers=2, num_heads=2, hidden_dim=16, mlp_dim=32, num_classes=5
    ),
}


def _conv_linear_count(model: nn.Module) -> int:
    count = 0
    for m in model.modules():
        if isinstance(m, (nn.Conv2d, nn.Linear)):
            count += 1
        elif isinstance(m, nn.MultiheadAttention):
            count += 3  # the packed q/k/v projection (not a module) becomes three B-cos layers
    return count


def _assert_structurally_bcos(original: nn.Module, converted: nn.Module) -> None:
    bcos = [m for m in converted.modules() if isinstance(m, (BcosConv2d, BcosLinear))]
    plain = [m for m in converted.modules() if isinstance(m, (nn.Conv2d, nn.Linear))]
    assert plain == [], f"plain layers left: {plain}"
    assert len(bcos) == _conv_linear_count(original)
    assert sum(isinstance(m, AddInverse) for m in converted.modules()) == 1


def probe_check(model: nn.Module, x: torch.Tensor) -> None:
    """``<rows of F(x0), z> + r(x0) = y1(z)`` for a random probe z (the project's faithfulness check)."""
    e = explain(model, x, "all", method="linear_rows")
    scope = LinearScope(model, x)
    z = torch.randn_like(e.inputs)
    lhs = (e.weights * z.unsqueeze(1)).flatten(2).sum(-1) + scope.residual
    torch.testing.assert_close(lhs, scope.system(z), rtol=1e-9, atol=1e-9)
    torch.testing.assert_close(scope.output, model(x), rtol=1e-9, atol=1e-9)


# --- B = 1 equivalence on the torchvision constructors ------------------------------------------


@pytest.mark.parametrize(
    "name, build",
    [
        ("resnet18", lambda: torchvision.models.resnet18(weights=None, num_classes=10)),
        ("densenet121", lambda: torchvision.models.densenet121(weights=None, num_classes=10)),
        ("vit_b_16", lambda: torchvision.models.vit_b_16(weights=None, image_size=32, num_classes=10)),
    ],
)
def test_torchvision_models_equal_originals_at_b1(name, build, single_thread):
    original = _randomise(build())
    converted = to_bcos(original)
    _assert_structurally_bcos(original, converted)
    x = torch.rand(2, 3, 32, 32)
    with torch.no_grad():
        expected, got = original(x), converted(x)
    assert expected.abs().max() > 0.1  # not a trivially zero output
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-5)


@pytest.mark.slow
def test_torchvision_vgg11_equals_original_at_b1():
    original = _randomise(torchvision.models.vgg11(weights=None, num_classes=10))
    converted = to_bcos(original)
    _assert_structurally_bcos(original, converted)
    x = torch.rand(1, 3, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(converted(x), original(x), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("family", sorted(TINY))
def test_tiny_families_equal_originals_in_float64_and_in_training_mode(family, single_thread):
    torch.manual_seed(1)
    original = _randomise(TINY[family]()).double()
    converted = to_bcos(original)
    _assert_structurally_bcos(original, converted)
    x = torch.rand(3, 3, 16, 16, dtype=torch.float64)
    with torch.no_grad():
        torch.testing.assert_close(converted(x), original(x), rtol=1e-10, atol=1e-10)
    # Training mode (batch statistics, dropout off by a fixed seed on both sides) matches as well.
    original.train()
    converted.train()
    for m in list(original.modules()) + list(converted.modules()):
        if isinstance(m, nn.Dropout):
            m.p = 0.0
    torch.testing.assert_close(converted(x), original(x), rtol=1e-9, atol=1e-9)
    for a, b in zip(
        [m for m in original.modules() if isinstance(m, nn.BatchNorm2d)],
        [m for m in converted.modules() if type(m).__name__ == "AnnealedBatchNorm2d"],
    ):
        torch.testing.assert_close(b.running_mean, a.running_mean)
        torch.testing.assert_close(b.running_var, a.running_var)


def test_conversion_keeps_the_original_untouched_and_extends_the_first_kernel_by_zeros():
    original = TINY["resnet"]()
    before = {k: v.clone() for k, v in original.state_dict().items()}
    converted = to_bcos(original)
    assert all(torch.equal(v, original.state_dict()[k]) for k, v in before.items())
    assert isinstance(original.conv1, nn.Conv2d)
    first = converted.conv1[1]
    assert isinstance(converted.conv1[0], AddInverse) and first.in_channels == 6
    assert torch.equal(first.weight[:, :3], original.conv1.weight) and not first.weight[:, 3:].any()
    assert converted.fc.logit_bias.item() == pytest.approx(math.log(1 / 4))


# --- the schedule: faithfulness at every step and the finished network -----------------------------


@pytest.mark.parametrize("family", sorted(TINY))
def test_explanation_identity_holds_at_every_schedule_step(family, single_thread):
    torch.manual_seed(2)
    model = to_bcos(_randomise(TINY[family]())).double().eval()
    x = torch.rand(2, 3, 16, 16, dtype=torch.float64)
    for progress in (0.0, 0.35, 0.8, 1.0):
        set_bcosification(model, progress)
        b = [m.b for m in model.modules() if isinstance(m, (BcosConv2d, BcosLinear))]
        assert b and all(v == pytest.approx(1 + progress) for v in b)
        assert all(v == pytest.approx(1 - progress) for v in coefficients(model).values())
        probe_check(model, x)
    finalize_bcos(model)
    probe_check(model, x)
    assert_bcos_final(model, x, b_final=2.0, atol=1e-9)


def test_residual_before_the_end_is_not_the_logit_bias_and_the_final_check_says_why():
    torch.manual_seed(3)
    model = to_bcos(_randomise(TINY["resnet"]())).double().eval()
    x = torch.rand(2, 3, 16, 16, dtype=torch.float64)
    set_bcosification(model, 0.5)
    with pytest.raises(AssertionError) as info:
        assert_bcos_final(model, x)
    message = str(info.value)
    assert "B = 1.5" in message and "still has a bias" in message and "AnnealedActivation" in message
    assert "residual differs from the logit bias" in message
    with pytest.raises(RuntimeError, match="every coefficient at 0"):
        finalize_bcos(model)


def test_finished_network_trains_and_its_residual_is_the_logit_bias(single_thread):
    torch.manual_seed(4)
    model = to_bcos(TINY["densenet"]())
    set_bcosification(model, 1.0)
    finalize_bcos(model).train()
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    x, y = torch.rand(4, 3, 16, 16), torch.randint(0, 5, (4,))
    loss = nn.functional.cross_entropy(model(x), y)
    loss.backward()
    assert all(torch.isfinite(p.grad).all() for p in model.parameters() if p.grad is not None)
    optimizer.step()
    model.double().eval()
    assert_bcos_final(model, x.double(), atol=1e-9)


def test_intermediate_b_gradients_are_finite(single_thread):
    torch.manual_seed(5)
    model = set_bcosification(to_bcos(TINY["vit"]()), 0.3).train()
    x = torch.rand(2, 3, 16, 16)
    model(x).square().sum().backward()
    grads = [p.grad for p in model.parameters() if p.grad is not None]
    assert grads and all(torch.isfinite(g).all() for g in grads)


def test_progress_at_is_linear_then_flat_and_rejects_bad_input():
    assert progress_at(0, 100, 0.5) == 0 and progress_at(25, 100, 0.5) == 0.5 and progress_at(90, 100, 0.5) == 1
    with pytest.raises(ValueError):
        progress_at(1, 0)
    with pytest.raises(ValueError, match="progress must be"):
        set_bcosification(to_bcos(TINY["vgg"]()), 1.5)
    with pytest.raises(ValueError, match="no converted modules"):
        set_bcosification(nn.Sequential(nn.Identity()), 0.5)


# --- errors ---------------------------------------------------------------------------------------


class _Custom(nn.Module):
    def forward(self, x):
        return x * x


def test_unknown_modules_are_named_in_one_error():
    model = nn.Sequential(nn.Conv2d(3, 4, 3), _Custom(), nn.Sequential(nn.Tanh()), nn.Flatten(), nn.LazyLinear(2))
    with pytest.raises(UnconvertibleModuleError) as info:
        to_bcos(model)
    message = str(info.value)
    assert "'1' (_Custom)" in message and "'2.0' (Tanh)" in message and "LazyLinear" in message


def test_unknown_root_and_declared_containers():
    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = nn.Conv2d(3, 2, 3)

        def forward(self, x):
            return self.conv(x).mean((2, 3))

    with pytest.raises(UnconvertibleModuleError, match="'<model>' \\(Net\\)"):
        to_bcos(Net())
    original = Net()
    converted = to_bcos(original, containers=(Net,))
    x = torch.rand(1, 3, 8, 8)
    torch.testing.assert_close(converted(x), original(x))


def test_bad_arguments_are_clear_errors():
    with pytest.raises(TypeError, match="expects an nn.Module"):
        to_bcos("resnet18")
    with pytest.raises(ValueError, match="logit_bias must be finite"):
        to_bcos(TINY["vgg"](), logit_bias=float("nan"))
    with pytest.raises(ValueError, match="string padding"):
        to_bcos(nn.Sequential(nn.Conv2d(3, 2, 3, padding="same")))
    with pytest.raises(UnconvertibleModuleError, match="no nn.Conv2d or nn.Linear"):
        to_bcos(nn.Sequential(nn.ReLU()))
