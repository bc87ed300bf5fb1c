"""The pretrained CIFAR-10 B-cos network shipped in the package (linearlens.pretrained) and its CLI flag."""

from __future__ import annotations

import pytest
import torch

from linearlens.cli import main
from linearlens.data import load_cifar10
from linearlens.explain import explain
from linearlens.layers import BcosConv2d
from linearlens.pretrained import PRETRAINED_DIR, load_pretrained, pretrained_info
from linearlens.training import evaluate_accuracy

pytestmark = pytest.mark.usefixtures("single_thread")


def test_pretrained_is_a_bias_free_b2_bcos_network_and_small():
    model = load_pretrained()
    assert not model.training
    convs = [m for m in model.modules() if isinstance(m, BcosConv2d)]
    assert len(convs) == 9 and all(m.b == 2.0 for m in convs)
    assert not any("bias" in name for name, _ in model.named_parameters())
    assert (PRETRAINED_DIR / "model.safetensors").stat().st_size < 8 * 2**20
    info = pretrained_info()
    assert info["model"] == "bcos_cifar" and 0 < info["test_accuracy"] <= 1


def test_pretrained_accuracy_on_the_embedded_test_images_matches_its_record():
    """The shipped weights classify the 1,000 embedded test images (part of the 10k test set it was
    evaluated on, never trained on) about as well as its recorded 10k test accuracy, far above chance."""
    model = load_pretrained()
    accuracy = evaluate_accuracy(model, load_cifar10("embedded", "test"))
    recorded = pretrained_info()["test_accuracy"]
    assert accuracy > 0.3
    assert abs(accuracy - recorded) < 0.05


def test_pretrained_explanations_are_the_networks_own_linear_map():
    """f(x) = W(x) x + b for the shipped network, and the rows pass the random-probe check (float64)."""
    from linearlens.interpret import LinearScope

    model = load_pretrained().double()
    x = load_cifar10("embedded", "test").subset([0, 500]).to_float().double()
    e = explain(model, x, "all", method="linear_rows")
    with torch.no_grad():
        f = model(x)
    contributions = (e.weights * e.inputs.unsqueeze(1)).flatten(2).sum(-1)
    torch.testing.assert_close(contributions + model.logits.bias, f, rtol=1e-9, atol=1e-9)
    scope = LinearScope(model, x)
    z = torch.randn_like(e.inputs)
    lhs = (e.weights * z.unsqueeze(1)).flatten(2).sum(-1) + scope.residual
    torch.testing.assert_close(lhs, scope.system(z), rtol=1e-9, atol=1e-9)


def test_explain_cli_pretrained(tmp_path, capsys):
    assert main(["explain", "--pretrained", "--indices", "0", "--out", str(tmp_path / "exp")]) == 0
    assert (tmp_path / "exp" / "explanations.png").stat().st_size > 1000
    assert main(["explain", "--out", str(tmp_path / "none")]) == 2
    assert main(["explain", "--pretrained", "--checkpoint", str(tmp_path), "--out", str(tmp_path / "both")]) == 2
    err = capsys.readouterr().err
    assert err.count("give either --checkpoint RUN_DIR or --pretrained") == 2 and "Traceback" not in err
