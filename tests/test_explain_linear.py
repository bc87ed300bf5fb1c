"""``explain(model, x, target, method="bcos")`` (linearlens.explain): rows of W(x), targets, errors.

The rows are compared with ``W_{1->L}(x) = prod_j W~_j(a_j)`` (Eq. (14) of the B-cos paper) built from
per-layer matrices in ``conftest.py``; the contributions with Eq. (15).
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from linearlens.engine import Mode, current_mode
from linearlens.explain import Explanation, Neuron, explain

pytestmark = pytest.mark.usefixtures("single_thread")


def images(n: int = 2, size: int = 6, dtype=torch.float64) -> torch.Tensor:
    return torch.rand(n, 3, size, size, dtype=dtype)


# --- the full network against Eq. (14) ------------------------------------------------------------------


@pytest.mark.parametrize("max_out", [1, 2, 3])
@pytest.mark.parametrize("b", [1.0, 1.25, 2.0, 2.5])
def test_rows_equal_the_product_of_layer_matrices(tiny_net, ref, b, max_out):
    net = tiny_net(b=b, max_out=max_out)
    x = images(3)
    e = explain(net, x, "all")
    assert e.weights.shape == (3, 3, 6, 6, 6) and e.attributions.shape == (3, 3, 6, 6)
    torch.testing.assert_close(e.inputs, torch.cat([x, 1 - x], 1))  # explained w.r.t. the encoded image
    logits = net(x)
    for n in range(3):
        r = net.reference(x[n])
        assert ref.rel_err(r.out, logits[n]) < 1e-5
        assert ref.rel_err(e.weights[n].flatten(1), r.matrix) < 1e-4
    # f(x) = W(x) x + b (Eqs. (13), (16)), the bias being the only residual
    wx = (e.weights * e.inputs[:, None]).flatten(2).sum(-1)
    assert ref.rel_err(wx + net.logits.bias, logits) < 1e-10
    torch.testing.assert_close(e.residual, torch.full_like(e.residual, net.logits.bias), rtol=0, atol=1e-10)
    torch.testing.assert_close(e.outputs, logits)
    # contributions: Eq. (15), summed over the 6 channels
    torch.testing.assert_close(e.attributions, (e.weights * e.inputs[:, None]).sum(2))
    assert e.contributions is e.attributions and e.method == "bcos" and len(e) == 3


@pytest.mark.parametrize("b", [1.25, 2.5])
def test_float32_network(tiny_net, ref, b):
    net = tiny_net(b=b).float()
    x = images(2, dtype=torch.float32)
    e = explain(net, x, "all")
    assert e.weights.dtype == torch.float32
    logits = net(x)
    for n in range(2):
        assert ref.rel_err(e.weights[n].flatten(1), net.reference(x[n]).matrix) < 1e-3
    wx = (e.weights * e.inputs[:, None]).flatten(2).sum(-1)
    assert ref.rel_err(wx + net.logits.bias, logits) < 1e-4


# --- targets ------------------------------------------------------------------------------------------------


@pytest.fixture
def setup(tiny_net):
    net = tiny_net(b=2.0, max_out=2)
    x = images(2)
    full = explain(net, x, "all")
    return net, x, full


@pytest.mark.parametrize(
    "target, expected",
    [
        (1, [[1], [1]]),
        ([2, 0], [[2], [0]]),
        (torch.tensor([0, 1]), [[0], [1]]),
        (np.array([1, 2]), [[1], [2]]),
        (torch.tensor([[2, 0], [1, 1]]), [[2, 0], [1, 1]]),
        ("all", [[0, 1, 2], [0, 1, 2]]),
    ],
    ids=["int", "list", "tensor(N)", "numpy(N)", "tensor(N,K)", "all"],
)
def test_class_targets_select_rows(setup, target, expected):
    net, x, full = setup
    e = explain(net, x, target)
    expected = torch.tensor(expected)
    torch.testing.assert_close(e.targets, expected)
    for n in range(2):
        for k, c in enumerate(expected[n]):
            torch.testing.assert_close(e.weights[n, k], full.weights[n, c])
            torch.testing.assert_close(e.outputs[n, k], full.outputs[n, c])


@pytest.mark.parametrize("target", [None, "predicted"])
def test_predicted_target(setup, target):
    net, x, full = setup
    e = explain(net, x, target)
    torch.testing.assert_close(e.targets[:, 0], net(x).argmax(1))
    torch.testing.assert_close(e.weights[:, 0], full.weights[torch.arange(2), e.targets[:, 0]])


def test_intermediate_neurons_equal_partial_products(setup, ref):
    """Neuron rows are rows of W_{1->l} (Eq. (15) for neurons of layer l)."""
    net, x, _ = setup
    targets = [Neuron("features.0", 2), Neuron("features.1", (1, 0, 2)), Neuron("features.1", (0,))]
    e = explain(net, x, targets)
    assert e.targets is None and e.weights.shape == (2, 3, 6, 6, 6)
    enc = torch.cat([x, 1 - x], 1)
    first, second = net.features
    with torch.no_grad():
        a1 = first(enc)
        a2 = second(a1)
    torch.testing.assert_close(e.outputs, torch.stack([a1[:, 2].sum((1, 2)), a2[:, 1, 0, 2], a2[:, 0].sum((1, 2))], 1))
    for n in range(2):
        w1 = ref.chain([first], enc[n]).matrix.view(4, 36, -1)
        w2 = ref.chain([first, second], enc[n]).matrix.view(3, 3, 3, -1)
        assert ref.rel_err(e.weights[n, 0].flatten(), w1[2].sum(0)) < 1e-4
        assert ref.rel_err(e.weights[n, 1].flatten(), w2[1, 0, 2]) < 1e-4
        assert ref.rel_err(e.weights[n, 2].flatten(), w2[0].sum((0, 1))) < 1e-4
    # no residual for an intermediate B-cos neuron: W_{1->l} x is the activation exactly
    assert e.residual.abs().max() < 1e-10 * e.outputs.abs().max()
    single = explain(net, x, Neuron("features.0", 2))
    torch.testing.assert_close(single.weights[:, 0], e.weights[:, 0])


# --- target and input errors ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "target, error, match",
    [
        (3, ValueError, r"target class 3 is out of range for a model with 3 outputs"),
        (-1, ValueError, r"target class -1 is out of range"),
        ([0, 3], ValueError, r"target class 3 is out of range"),
        ([0, 1, 2], ValueError, r"got 3 targets for a batch of 2 inputs"),
        (torch.zeros(2, 1, 1, dtype=torch.long), ValueError, r"targets must have shape \(N,\) or \(N, K\) with N = 2"),
        (torch.zeros(3, 2, dtype=torch.long), ValueError, r"targets must have shape \(N,\) or \(N, K\)"),
        (torch.zeros(2, 0, dtype=torch.long), ValueError, r"no targets to explain"),
        ("everything", ValueError, r"unknown target 'everything'.*'all' or 'predicted'"),
        (1.5, TypeError, r"target indices must be integers"),
        (torch.tensor([0.0, 1.0]), TypeError, r"target indices must be integers"),
        (True, TypeError, r"not a bool"),
        (Neuron("features.0", 4), ValueError, r"neuron index 4 is out of range for layer 'features.0' of shape"),
        (Neuron("features.1", (0, 3, 0)), ValueError, r"neuron index \(0, 3, 0\) is out of range"),
        (Neuron("features.1", (0, 0, 0, 0)), ValueError, r"is out of range for layer 'features.1'"),
        (Neuron("features.0", -1), ValueError, r"neuron index -1 is out of range"),
        (Neuron("feature.0", 0), ValueError, r"model has no layer called 'feature.0'; layers include: encoding"),
    ],
    ids=[
        "class-too-large", "class-negative", "per-image-out-of-range", "wrong-N", "3d", "wrong-N-2d", "empty-K",
        "unknown-string", "float", "float-tensor", "bool", "neuron-channel", "neuron-position", "neuron-too-long",
        "neuron-negative", "unknown-layer",
    ],
)
def test_target_errors(setup, target, error, match):
    net, x, _ = setup
    with pytest.raises(error, match=match):
        explain(net, x, target)
    assert current_mode() is Mode.LIVE
    assert not net.encoding._forward_hooks and not net.features[0]._forward_hooks  # hooks removed


@pytest.mark.parametrize(
    "x, error, match",
    [
        (torch.rand(2, 6, 6, 6), ValueError, r"AddInverse expected images of shape \(N, 3, \.\.\.\)"),
        (torch.rand(3, 6, 6), ValueError, r"x must have shape \(N, C, H, W\), got shape \(3, 6, 6\)"),
        (torch.full((2, 3, 6, 6), float("nan")), ValueError, r"x contains NaN or infinite values"),
        (torch.full((1, 3, 6, 6), float("inf")), ValueError, r"x contains NaN or infinite values"),
        (torch.rand(0, 3, 6, 6), ValueError, r"x is an empty batch \(N = 0\)"),
        (torch.zeros(2, 3, 6, 6, dtype=torch.uint8), TypeError, r"floating-point tensor.*got dtype torch.uint8"),
        (np.zeros((2, 3, 6, 6)), TypeError, r"x must be a torch.Tensor of shape \(N, C, H, W\), got ndarray"),
    ],
    ids=["channels", "no-batch-dim", "nan", "inf", "empty", "uint8", "numpy"],
)
def test_input_errors(setup, x, error, match):
    net, _, _ = setup
    with pytest.raises(error, match=match):
        explain(net, x, 0)


def test_unknown_method(setup):
    net, x, _ = setup
    with pytest.raises(ValueError, match=r"unknown explanation method 'bcoss'; available: .*bcos"):
        explain(net, x, 0, method="bcoss")


# --- delta, select, batches -----------------------------------------------------------------------------------


def test_delta_explains_the_difference(setup):
    """Fig. 9: W_a(x) - W_b(x) explains y_a - y_b; the logit bias cancels."""
    net, x, full = setup
    d = full.delta(0, 2)
    assert isinstance(d, Explanation) and d.method == "bcos-delta" and d.meta["delta_of"] == (0, 2)
    torch.testing.assert_close(d.weights[:, 0], full.weights[:, 0] - full.weights[:, 2])
    torch.testing.assert_close(d.attributions[:, 0], full.attributions[:, 0] - full.attributions[:, 2])
    logits = net(x)
    torch.testing.assert_close(d.outputs[:, 0], logits[:, 0] - logits[:, 2])
    torch.testing.assert_close((d.weights[:, 0] * d.inputs).flatten(1).sum(1), logits[:, 0] - logits[:, 2])
    assert d.residual.abs().max() < 1e-10
    torch.testing.assert_close(d.targets, torch.tensor([[0, 2], [0, 2]]))
    with pytest.raises(IndexError, match=r"delta needs two explained outputs in range 0\.\.2, got 0 and 3"):
        full.delta(0, 3)


def test_select(setup):
    _, _, full = setup
    s = full.select(1)
    assert s.weights.shape == (2, 1, 6, 6, 6)
    torch.testing.assert_close(s.weights[:, 0], full.weights[:, 1])
    torch.testing.assert_close(s.targets, full.targets[:, 1:2])


def test_batch_equals_single_images(tiny_net):
    """No batch-size-1 restriction and no cross-talk: a batch gives the rows of per-image calls."""
    net = tiny_net(b=2.5, max_out=2)
    x = images(4)
    targets = torch.tensor([[0, 2], [1, 1], [2, 0], [0, 1]])
    e = explain(net, x, targets)
    for n in range(4):
        single = explain(net, x[n : n + 1], targets[n : n + 1])
        torch.testing.assert_close(e.weights[n], single.weights[0], rtol=1e-12, atol=1e-12)
        torch.testing.assert_close(e.attributions[n], single.attributions[0], rtol=1e-12, atol=1e-12)
        torch.testing.assert_close(e.outputs[n], single.outputs[0], rtol=1e-12, atol=1e-12)


def test_explain_under_no_grad_and_leaves_parameters_alone(setup):
    net, x, full = setup
    with torch.no_grad():
        e = explain(net, x, "all")
    torch.testing.assert_close(e.weights, full.weights)
    assert all(p.grad is None for p in net.parameters())
    assert not e.weights.requires_grad and not e.attributions.requires_grad


def test_keep_weights_false(setup):
    net, x, full = setup
    e = explain(net, x, 1, keep_weights=False)
    assert e.weights is None
    torch.testing.assert_close(e.attributions[:, 0], full.attributions[:, 1])


def test_model_without_encoding_explains_the_raw_input(ref):
    """Without an InputEncoding the raw input is the explained input."""
    from linearlens.layers import BcosConv2d

    net = nn.Sequential(BcosConv2d(3, 2, 3, b=2.0, max_out=2), nn.Flatten()).double()
    x = images(2, size=4)
    e = explain(net, x, "all")
    torch.testing.assert_close(e.inputs, x)
    for n in range(2):
        assert ref.rel_err(e.weights[n].flatten(1), ref.conv(net[0], x[n]).matrix) < 1e-4


# --- networks that cannot be frozen as they are --------------------------------------------------------------


def _cnn(*middle: nn.Module) -> nn.Module:
    return nn.Sequential(nn.Conv2d(3, 4, 3), *middle, nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(4, 3)).double()


def test_batchnorm_in_training_mode_is_a_clear_error():
    net = _cnn(nn.BatchNorm2d(4), nn.ReLU())
    with pytest.raises(RuntimeError, match=r"BatchNorm .*couples the samples.*model\.eval\(\)"):
        explain(net.train(), images(2), 0, method="linear_rows")
    e = explain(net.eval(), images(2), 0, method="linear_rows")
    wx = (e.weights * e.inputs[:, None]).flatten(2).sum(-1)
    torch.testing.assert_close(wx + e.residual, e.outputs)
    assert current_mode() is Mode.LIVE


def test_active_dropout_is_a_clear_error():
    net = _cnn(nn.ReLU(), nn.Dropout(0.5))
    with pytest.raises(RuntimeError, match=r"dropout is active \(training mode\); call model\.eval\(\)"):
        explain(net.train(), images(2), 0, method="linear_rows")
    explain(net.eval(), images(2), 0, method="linear_rows")


def test_model_with_non_class_outputs_is_a_clear_error():
    net = nn.Sequential(nn.Conv2d(3, 2, 3), nn.Flatten(0)).double()  # flattens the batch away: (N*...,)
    with pytest.raises(ValueError, match=r"outputs of shape \(64,\) for 2 inputs; .* batch-first outputs"):
        explain(net, images(2), 0, method="linear_rows")
