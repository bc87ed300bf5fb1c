"""The study's B-cos networks (one-channel, multi-label, strided / BlurPool / FLC) explain themselves exactly:
the maps EPG scores are the network's own linear map, checked with a random probe (probe-check note)."""

from __future__ import annotations

import pytest
import torch

from linearlens import LinearScope, explain
from linearlens.xray.config import preset
from linearlens.xray.models import build_model


@pytest.mark.parametrize("variant", ["strided", "blurpool", "flc"])
def test_study_networks_pass_the_probe_check(variant, single_thread):
    config = preset("quick", width=0.0625)
    model = build_model(variant, config, num_classes=2, prevalence=0.3).double().eval()
    x = torch.rand(2, 1, 64, 64, dtype=torch.float64)
    e = explain(model, x, "all", method="linear_rows")
    scope = LinearScope(model, x)
    z = torch.randn_like(e.inputs)
    lhs = (e.weights * z.unsqueeze(1)).flatten(2).sum(-1) + scope.residual
    torch.testing.assert_close(lhs, scope.system(z), rtol=1e-9, atol=1e-9)
    # the inherent maps the study scores add up, with the output bias, to the logits (completeness)
    inherent = explain(model, x, "all", method="bcos")
    assert inherent.attributions.shape == (2, 2, 64, 64)
    torch.testing.assert_close(inherent.attributions.sum((2, 3)) + inherent.residual, model(x), rtol=1e-9,
                               atol=1e-6)


def test_baseline_and_prevalence_bias():
    config = preset("quick")
    model = build_model("baseline", config, num_classes=1, prevalence=0.2)
    assert model.fc.bias.item() == pytest.approx(torch.logit(torch.tensor(0.2)).item())
    with pytest.raises(FileNotFoundError, match="pretrained weights for flc not found"):
        build_model("flc", preset("quick", pretrained={"flc": "/nonexistent.safetensors"}), 1)
