"""B-cos ViT-C: probe check with the positional embedding carried into the residual, decided attention."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from helpers_arch import OPTION_COMBOS, combo_id, probe_check, randomise_norms
from linearlens.layers import AddInverse
from linearlens.models import create_model
from linearlens.models.bcos_factory import BcosLayers, parse_options
from linearlens.models.bcos_vit import Attention

pytestmark = pytest.mark.usefixtures("single_thread")

VARIANTS = [("bcos_vit_tiny_cifar", 16), ("bcos_vit_small_cifar", 16), ("bcos_vit_tiny", 32), ("bcos_vit_small", 32)]


def _vit(name: str, **options) -> torch.nn.Module:
    # the paper design has no normalisation; a small scale keeps the untrained signal in range
    scale = {"scale": 3.0} if options.get("design") == "paper" else {}
    model = create_model(name, num_classes=3, width=1 / 8, depth=2, **scale, **options)
    return randomise_norms(model).double().eval()


@pytest.mark.parametrize("options", OPTION_COMBOS, ids=combo_id)
@pytest.mark.parametrize("name,size", VARIANTS)
def test_probe_check_and_residual_carries_the_positional_embedding(name, size, options):
    model = _vit(name, **options)
    x = torch.rand(2, 3, size, size, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    scope = probe_check(model, x)
    bias = model.model_args["logit_bias"]
    assert (scope.residual - bias).abs().max() > 1e-6, "the positional embedding must reach the residual"
    # without the input-independent term the residual is the logit bias alone
    with torch.no_grad():
        model.pos_embedding.zero_()
    scope = probe_check(model, x)
    torch.testing.assert_close(scope.residual, torch.full_like(scope.residual, bias), rtol=0, atol=1e-10)


class _AttentionOnly(nn.Module):
    """One attention module on the 6-channel pixels of a tiny image, outputs summed over tokens."""

    def __init__(self) -> None:
        super().__init__()
        options, _ = parse_options("attention", {}, small_input=True, s=1.0, paper_temperature=1.0)
        self.encoding, self.attn = AddInverse(), Attention(BcosLayers(options), 6, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.attn(self.encoding(x).flatten(2).transpose(1, 2)).sum(1)


def test_attention_weights_are_frozen_decisions():
    model = _AttentionOnly().double().eval()
    x = torch.rand(2, 3, 3, 3, dtype=torch.float64)
    scope = probe_check(model, x)
    torch.testing.assert_close(scope.residual, torch.zeros_like(scope.residual))
    # the frozen system at a probe is not the live network at that probe: softmax(q k^T) comes from x0
    z = torch.rand(2, 6, 3, 3, dtype=torch.float64)
    live = model.attn(z.flatten(2).transpose(1, 2)).sum(1)
    assert (scope.system(z) - live).abs().max() > 1e-3


def test_layout_and_sizes():
    tiny, small = create_model("bcos_vit_tiny"), create_model("bcos_vit_small")
    assert len(tiny.blocks) == 11 and tiny.blocks[0].attn.heads == 3 and tiny.pos_embedding.shape == (1, 192, 14, 14)
    assert small.blocks[0].attn.heads == 6 and small.classifier.in_features == 384
    with pytest.raises(ValueError, match="depth must be a positive int"):
        create_model("bcos_vit_tiny", depth=0)
