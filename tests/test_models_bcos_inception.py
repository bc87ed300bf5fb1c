"""B-cos Inception-v3: probe check for both variants and every option combination, auxiliary head."""

from __future__ import annotations

import pytest
import torch

from helpers_arch import OPTION_COMBOS, combo_id, family_probe_case
from linearlens.models import create_model

pytestmark = pytest.mark.usefixtures("single_thread")


@pytest.mark.parametrize("options", OPTION_COMBOS, ids=combo_id)
@pytest.mark.parametrize("name,size", [("bcos_inception_v3_cifar", 32), ("bcos_inception_v3", 75)])
def test_probe_check_and_residual_is_logit_bias(name, size, options):
    family_probe_case(create_model, name, options, 1 / 32, size)


def test_channel_widths_follow_torchvision():
    model = create_model("bcos_inception_v3", aux_logits=True)
    assert model.classifier.in_features == 2048 and model.default_input_size == 299
    assert model.aux.classifier.in_features == 768


def test_auxiliary_head():
    model = create_model("bcos_inception_v3_cifar", width=1 / 32, num_classes=4).double().eval()
    x = torch.rand(2, 3, 32, 32, dtype=torch.float64)
    logits, aux = model.forward_with_aux(x)
    torch.testing.assert_close(logits, model(x))
    assert aux.shape == (2, 4)
    no_aux = create_model("bcos_inception_v3_cifar", width=1 / 32, aux_logits=False)
    assert no_aux.aux is None
    with pytest.raises(ValueError, match="aux_logits=False"):
        no_aux.forward_with_aux(x.float())
    with pytest.raises(ValueError, match="aux_logits must be True or False"):
        create_model("bcos_inception_v3", aux_logits="yes")
