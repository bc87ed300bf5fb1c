"""B-cos VGG-11: probe check for both variants and every option combination, layer layout."""

from __future__ import annotations

import pytest

from helpers_arch import OPTION_COMBOS, combo_id, family_probe_case
from linearlens.layers import BcosConv2d, BcosLinear
from linearlens.models import create_model

pytestmark = pytest.mark.usefixtures("single_thread")


@pytest.mark.parametrize("options", OPTION_COMBOS, ids=combo_id)
@pytest.mark.parametrize("name,size", [("bcos_vgg11_cifar", 32), ("bcos_vgg11", 32)])
def test_probe_check_and_residual_is_logit_bias(name, size, options):
    family_probe_case(create_model, name, options, 1 / 32, size)


def test_configuration_a_layout():
    model = create_model("bcos_vgg11", width=1 / 16)
    convs = [m for m in model.features.modules() if isinstance(m, BcosConv2d)]
    assert [c.out_channels for c in convs] == [4, 8, 16, 16, 32, 32, 32, 32]
    assert all(c.kernel_size == (3, 3) and c.padding == (1, 1) for c in convs)
    linears = [m for m in model.classifier if isinstance(m, BcosLinear)]
    assert [(lin.in_features, lin.out_features) for lin in linears] == [(32 * 49, 256), (256, 256), (256, 1000)]
    small = create_model("bcos_vgg11_cifar", width=1 / 16)
    assert small.classifier[0].in_features == 32 and small.classifier[0].out_features == 32
