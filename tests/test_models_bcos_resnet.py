"""B-cos ResNet-18/34/50: probe check for every variant and option combination, block layout."""

from __future__ import annotations

import pytest
import torch

from helpers_arch import OPTION_COMBOS, combo_id, family_probe_case, probe_check, randomise_norms
from linearlens.models import create_model
from linearlens.models.bcos_resnet import BasicBlock, Bottleneck

pytestmark = pytest.mark.usefixtures("single_thread")

VARIANTS = [("bcos_resnet18_cifar", 8), ("bcos_resnet34_cifar", 8), ("bcos_resnet50_cifar", 8),
            ("bcos_resnet18", 32), ("bcos_resnet34", 32), ("bcos_resnet50", 32)]


@pytest.mark.parametrize("options", OPTION_COMBOS, ids=combo_id)
@pytest.mark.parametrize("name,size", VARIANTS)
def test_probe_check_and_residual_is_logit_bias(name, size, options):
    family_probe_case(create_model, name, options, 1 / 32, size)


@pytest.mark.parametrize("name,block,depths", [
    ("bcos_resnet18", BasicBlock, [2, 2, 2, 2]), ("bcos_resnet34", BasicBlock, [3, 4, 6, 3]),
    ("bcos_resnet50", Bottleneck, [3, 4, 6, 3]),
])
def test_block_layout(name, block, depths):
    model = create_model(name, width=1 / 16)
    assert [len(stage) for stage in model.stages] == depths
    assert all(isinstance(b, block) for stage in model.stages for b in stage)
    assert model.classifier.in_features == round(64 / 16) * 8 * block.expansion
    assert model.default_input_size == 224 and create_model(name + "_cifar").default_input_size == 32


def test_batch_statistics_in_training_mode_are_decisions():
    model = randomise_norms(create_model("bcos_resnet18_cifar", width=1 / 32, num_classes=3)).double().train()
    before = [m.running_var.clone() for m in model.modules() if hasattr(m, "running_var")]
    scope = probe_check(model, torch.rand(3, 3, 8, 8, dtype=torch.float64), live=False)
    torch.testing.assert_close(scope.residual, torch.full_like(scope.residual, model.model_args["logit_bias"]))
    after = [m.running_var for m in model.modules() if hasattr(m, "running_var")]
    assert all(torch.equal(a, b) for a, b in zip(before, after)), "explaining must not update running statistics"
    model(torch.rand(3, 3, 8, 8, dtype=torch.float64))  # a live training forward does update them
    assert not all(torch.equal(a, b) for a, b in zip(before, after))
