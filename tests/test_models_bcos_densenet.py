"""B-cos DenseNet-121: probe check for both variants and every option combination, dense connectivity."""

from __future__ import annotations

import pytest

from helpers_arch import OPTION_COMBOS, combo_id, family_probe_case
from linearlens.models import create_model
from linearlens.models.bcos_densenet import DenseBlock, Transition

pytestmark = pytest.mark.usefixtures("single_thread")


@pytest.mark.parametrize("options", OPTION_COMBOS, ids=combo_id)
@pytest.mark.parametrize("name,size", [("bcos_densenet121_cifar", 8), ("bcos_densenet121", 32)])
def test_probe_check_and_residual_is_logit_bias(name, size, options):
    family_probe_case(create_model, name, options, 1 / 32, size)


def test_densenet121_layout():
    model = create_model("bcos_densenet121")
    blocks = [m for m in model.features if isinstance(m, DenseBlock)]
    assert [len(b.layers) for b in blocks] == [6, 12, 24, 16]
    assert [b.out_channels for b in blocks] == [256, 512, 1024, 1024]
    assert sum(isinstance(m, Transition) for m in model.features) == 3
    assert model.classifier.in_features == 1024  # torchvision's densenet121 classifier width
