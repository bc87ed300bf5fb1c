"""LinearScope: the two-batch linear interpreter of the linear-interpreter paper (Eqs. (2)-(6)).

Every test uses small random networks in float64, so that identities hold to ~1e-10 and a wrong
frozen interpretation, a wrong transpose or a leak between the reference and probe halves shows up.
"""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from helpers_nets import randomise_bn
from linearlens.engine import UninterpretableOperationError
from linearlens.explain import explain
from linearlens.interpret import LinearScope, run_two_batch
from linearlens.models import create_model

# Tiny networks: one thread is fastest and immune to other jobs on the machine.
pytestmark = pytest.mark.usefixtures("single_thread")


class PiecewiseNet(nn.Module):
    """ReLU CNN: eval BN, max-pool, residual addition, concatenation, functional and in-place ReLU."""

    def __init__(self, classes: int = 4) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, 6, 3, padding=1)
        self.bn1 = nn.BatchNorm2d(6)
        self.act = nn.ReLU(inplace=True)
        self.conv2 = nn.Conv2d(6, 6, 3, padding=1)
        self.conv3 = nn.Conv2d(12, 8, 3, padding=1)
        self.fc = nn.Linear(8 * 2 * 2, classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.act(self.bn1(self.conv1(x)))
        h = h + F.relu(self.conv2(h))  # residual addition
        h = torch.cat([h, F.max_pool2d(h, 3, 1, 1)], dim=1)  # concatenation
        h = F.max_pool2d(F.relu(self.conv3(h)), 2)
        return self.fc(F.adaptive_avg_pool2d(h, 2).flatten(1))


class MixedNet(PiecewiseNet):
    """Adds every other frozen interpretation: gains, slopes, norms, upsampling, pixel shuffle, dropout."""

    def __init__(self, classes: int = 4) -> None:
        super().__init__(classes)
        self.inorm = nn.InstanceNorm2d(6, affine=True)
        self.gnorm = nn.GroupNorm(2, 12)
        self.lnorm = nn.LayerNorm([12, 4, 4])
        self.prelu = nn.PReLU(12)
        self.up = nn.Upsample(scale_factor=2, mode="bilinear")
        self.shuffle = nn.PixelShuffle(2)
        self.drop = nn.Dropout(0.5)
        self.conv4 = nn.Conv2d(3, 8, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.act(self.bn1(self.conv1(x)))
        h = h + torch.sigmoid(self.conv2(h))  # functional gain on a residual branch
        h = torch.cat([torch.tanh(self.inorm(h)), F.max_pool2d(h, 3, 1, 1)], dim=1)
        h = F.leaky_relu(self.gnorm(h), 0.1)
        h = F.silu(self.prelu(F.max_pool2d(h, 2)))
        h = self.lnorm(F.gelu(h))
        h = self.shuffle(self.up(h))  # (N, 3, 16, 16)
        h = F.interpolate(self.drop(h), size=(8, 8), mode="bicubic", align_corners=False)
        h = F.max_pool2d(F.relu(self.conv4(h)), 2)
        return self.fc(F.adaptive_avg_pool2d(h, 2).flatten(1))


def _net(cls: type[nn.Module]) -> nn.Module:
    torch.manual_seed(1)
    return randomise_bn(cls()).double().eval()


def _images(n: int = 2, size: int = 8) -> torch.Tensor:
    return torch.rand(n, 3, size, size, generator=torch.Generator().manual_seed(2), dtype=torch.float64)


@pytest.mark.parametrize("centering", ["frozen", "linear"])
def test_probe_equal_to_reference_reproduces_output(centering):
    """Eq. (3): x1 = x0 => y1 = y0, for every frozen interpretation; the reference half is untouched."""
    model, x = _net(MixedNet), _images()
    scope = LinearScope(model, x, centering=centering)
    with torch.no_grad():
        plain = model(x)
        outputs, _ = run_two_batch(model, x, torch.stack([torch.rand_like(x), x]), centering=centering)
    assert torch.allclose(scope.output, plain, atol=1e-12)
    assert torch.allclose(outputs[:2], plain, atol=1e-12)  # y0 = f(x0) whatever the probes
    assert torch.allclose(outputs[4:], plain, atol=1e-10)  # the probe block x1 = x0
    assert torch.allclose(scope.system(x), plain, atol=1e-10)
    assert not torch.allclose(outputs[2:4], plain, atol=1e-3)  # a different probe gives a different output


def test_filter_times_input_plus_residual_is_output():
    """F(x0) x0 + r(x0) = f(x0), with F materialised column by column (impulse responses)."""
    model, x = _net(MixedNet), _images()
    scope = LinearScope(model, x, chunk_size=40)
    f = scope.materialize()
    assert f.shape == (2, 4, 3 * 8 * 8)
    fx = torch.einsum("noi,ni->no", f, x.flatten(1))
    assert torch.allclose(fx + scope.residual, scope.output, atol=1e-10)
    assert scope.residual.abs().max() > 1e-3  # the biases make a residual


def test_system_is_affine_in_the_probe():
    model, x = _net(MixedNet), _images()
    scope = LinearScope(model, x)
    a, b = torch.randn_like(x), torch.randn_like(x)
    lhs = scope.apply(2.0 * a - 3.0 * b)
    rhs = 2.0 * scope.apply(a) - 3.0 * scope.apply(b)
    assert torch.allclose(lhs, rhs, atol=1e-10)
    batched = scope.apply(torch.stack([a, b], 1))  # (N, K, ...) probes
    assert torch.allclose(batched[:, 0], scope.apply(a), atol=1e-12)
    assert torch.allclose(scope.apply(a, residual=True), scope.apply(a) + scope.residual, atol=1e-12)


def test_rows_by_transposed_system_equal_columns():
    """Rows from Eq. (6) (autograd of the frozen system) equal rows of F built from impulse responses."""
    model, x = _net(MixedNet), _images()
    scope = LinearScope(model, x, chunk_size=64)
    f = scope.materialize()
    rows = scope.rows(range(4))  # (N, K, C, H, W)
    assert rows.shape == (2, 4, 3, 8, 8)
    assert torch.allclose(rows.flatten(2), f, atol=1e-10)
    assert torch.allclose(LinearScope(model, x, chunk_size=1).columns([5, 77]), scope.columns([5, 77]), atol=1e-12)


def test_transpose_apply_is_the_adjoint():
    """<F v, w> = <v, F^T w> for an output-domain image w, batched over K probes."""
    model, x = _net(MixedNet), _images()
    scope = LinearScope(model, x)
    v = torch.randn(2, 3, *scope.in_shape, dtype=torch.float64)
    w = torch.randn(2, 3, *scope.out_shape, dtype=torch.float64)
    lhs = (scope.apply(v) * w).flatten(2).sum(-1)
    rhs = (v * scope.transpose_apply(w)).flatten(2).sum(-1)
    assert torch.allclose(lhs, rhs, atol=1e-10)
    assert torch.allclose(scope.transpose_apply(w[:, 0]), scope.transpose_apply(w)[:, 0], atol=1e-12)


def test_rows_match_the_linearscope_explanation():
    """One row implementation: LinearScope.rows agrees with explain(..., method='linearscope')."""
    model, x = _net(MixedNet), _images()
    scope = LinearScope(model, x)
    expl = explain(model, x, "all", method="linearscope")
    assert torch.allclose(scope.rows(range(4)), expl.weights, atol=1e-10)
    assert torch.allclose(expl.residual, scope.residual, atol=1e-10)


def test_piecewise_linear_rows_are_input_gradients():
    """On ReLU / max-pool / eval-BN networks the frozen map is the local linearisation."""
    model, x = _net(PiecewiseNet), _images()
    scope = LinearScope(model, x)
    xg = x.clone().requires_grad_(True)
    out = model(xg)
    grads = torch.stack(
        [torch.autograd.grad(out[:, k].sum(), xg, retain_graph=True)[0] for k in range(out.shape[1])], 1
    )
    rows = scope.rows(range(out.shape[1]))
    assert torch.allclose(rows, grads, atol=1e-10)
    f_x0 = scope.output - scope.residual
    assert torch.allclose(f_x0, (grads * x.unsqueeze(1)).flatten(2).sum(-1), atol=1e-10)  # input x gradient


def test_gain_rows_are_not_gradients():
    """For sigmoid/tanh/SiLU/GELU the gain h(x0)/x0 differs from h'(x0): rows are not gradients there."""
    model, x = _net(MixedNet), _images()
    xg = x.clone().requires_grad_(True)
    grad = torch.autograd.grad(model(xg)[:, 0].sum(), xg)[0]
    assert not torch.allclose(LinearScope(model, x).rows(0)[:, 0], grad, atol=1e-4)


def _cubic_matrix(n_in: int, scale: int, a: float = -0.75) -> torch.Tensor:
    """1-D cubic convolution (Keys, a = -0.75) upsampling matrix, PyTorch's align_corners=False grid."""

    def kernel(d: float) -> float:
        d = abs(d)
        if d <= 1:
            return (a + 2) * d**3 - (a + 3) * d**2 + 1
        if d < 2:
            return a * d**3 - 5 * a * d**2 + 8 * a * d - 4 * a
        return 0.0

    n_out = n_in * scale
    m = torch.zeros(n_out, n_in, dtype=torch.float64)
    for i in range(n_out):
        src = (i + 0.5) / scale - 0.5
        base = math.floor(src)
        for k in range(-1, 3):
            j = min(max(base + k, 0), n_in - 1)  # border pixels are replicated
            m[i, j] += kernel(src - (base + k))
    return m


class Bicubic(nn.Module):
    def __init__(self, scale: int) -> None:
        super().__init__()
        self.scale = scale

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.interpolate(x, scale_factor=self.scale, mode="bicubic", align_corners=False)


@pytest.mark.parametrize("scale", [2, 3])
def test_bicubic_upscaler_is_its_exact_matrix(scale):
    x = torch.rand(1, 3, 5, 6, dtype=torch.float64)
    scope = LinearScope(Bicubic(scale), x, chunk_size=90)
    per_channel = torch.kron(_cubic_matrix(5, scale), _cubic_matrix(6, scale))
    expected = torch.kron(torch.eye(3, dtype=torch.float64), per_channel)
    assert torch.allclose(scope.materialize()[0], expected, atol=1e-12)
    assert scope.residual.abs().max() == 0
    assert torch.allclose(scope.rows([0, 100])[0].flatten(1), expected[[0, 100]], atol=1e-12)


class _Wrap(nn.Module):
    def __init__(self, fn) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3, padding=1)
        self.fn = fn

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fn(self.conv(x)).mean(dim=(2, 3))


@pytest.mark.parametrize(
    "fn, name",
    [
        (lambda h: torch.softmax(h, 1), "softmax"),
        (torch.exp, "exp"),
        (lambda h: h * h, "multiplies two input-dependent tensors"),
        (lambda h: h / (h + 1), "divides by an input-dependent tensor"),
        (lambda h: h.detach(), "detach"),
    ],
)
def test_unsupported_operations_name_the_operation(fn, name):
    with pytest.raises(UninterpretableOperationError, match=name):
        LinearScope(_Wrap(fn).double().eval(), _images())


def test_training_mode_batch_norm_is_refused():
    model = _net(PiecewiseNet).train()
    with pytest.raises(RuntimeError, match="model.eval"):
        LinearScope(model, _images())


@pytest.mark.parametrize("norm", ["instance", "group", "layer"])
def test_centering_decides_whether_the_mean_enters_the_residual(norm):
    """Without biases anywhere, the frozen mean of a normalisation is the only residual (Fig. 2)."""
    torch.manual_seed(3)
    layer = {
        "instance": nn.InstanceNorm2d(5),
        "group": nn.GroupNorm(1, 5, affine=False),
        "layer": nn.LayerNorm([5, 8, 8], elementwise_affine=False),
    }[norm]
    model = nn.Sequential(nn.Conv2d(3, 5, 1, bias=False), layer, nn.Conv2d(5, 2, 1, bias=False))
    model = model.double().eval()
    x = _images() + 0.5
    frozen, linear = LinearScope(model, x, centering="frozen"), LinearScope(model, x, centering="linear")
    assert linear.residual.abs().max() < 1e-12  # mean subtraction is linear: no residual
    assert frozen.residual.abs().max() > 1e-2  # frozen mean: -mean/std goes into r(x0)
    for scope in (frozen, linear):
        assert torch.allclose(scope.system(x), scope.output, atol=1e-10)  # Eq. (3) either way
    if norm == "instance":
        # With linear centering a per-channel constant image is removed exactly; frozen, it is not.
        shift = torch.ones_like(x)
        assert linear.apply(shift).abs().max() < 1e-10
        assert frozen.apply(shift).abs().max() > 1e-2


def test_bcos_network_filter_is_its_dynamic_linear_map():
    """For a B-cos network F(x0) = W(x0) w.r.t. the encoded input, and r(x0) is the logit bias only."""
    torch.manual_seed(4)
    model = create_model("bcos_cifar", width=0.125, b=2.0, max_out=2).eval()
    x = torch.rand(2, 3, 32, 32)
    scope = LinearScope(model, x)
    assert scope.in_shape == (6, 32, 32)
    assert torch.allclose(scope.source, torch.cat([x, 1 - x], 1))
    expl = explain(model, x, "all", method="bcos")
    rows = scope.rows(range(10))
    scale = expl.weights.abs().max()
    assert ((rows - expl.weights).abs().max() / scale) < 1e-5
    assert torch.allclose(scope.residual, torch.full_like(scope.residual, model.logits.bias), atol=1e-5)
    unbiased = create_model("bcos_cifar", width=0.125, b=2.0, max_out=2, logit_bias=0.0).eval()
    unbiased.load_state_dict(model.state_dict())
    r = LinearScope(unbiased, x).residual
    assert r.abs().max() < 1e-5 * unbiased(x).abs().max()


def test_indices_and_shapes_are_checked():
    model, x = _net(PiecewiseNet), _images()
    scope = LinearScope(model, x)
    assert scope.input_index(1, 2, 3) == 1 * 64 + 2 * 8 + 3
    assert scope.output_index(3) == 3
    with pytest.raises(IndexError):
        scope.columns([3 * 64])
    with pytest.raises(IndexError):
        scope.rows(4)
    with pytest.raises(ValueError, match="x1 must have shape"):
        scope.apply(torch.zeros(2, 3, 7, 8, dtype=torch.float64))
    with pytest.raises(ValueError, match="shape"):
        LinearScope(model, torch.rand(3, 8, 8))
    single = scope.select(1)
    assert torch.allclose(single.columns(7)[0], scope.columns(7)[1], atol=1e-12)
