"""What every B-cos architecture family shares: registry, options, designs, anti-aliasing sites, checkpoints."""

from __future__ import annotations

import math

import pytest
import torch
from safetensors.torch import save_file

from helpers_arch import module_strides, strided_operations
from linearlens.layers import BcosConv2d, BcosLinear, BlurPool, FLCPooling, UncenteredBatchNorm2d
from linearlens.models import create_model, list_models
from linearlens.models.bcos_factory import CIFAR_LOGIT_BIAS, IMAGENET_LOGIT_BIAS
from linearlens.training.checkpoint import load_checkpoint, save_model

pytestmark = pytest.mark.usefixtures("single_thread")

FAMILIES = {  # name: (s, paper temperature) of App. C.1.2 (ViT: the papers are silent, see docs)
    "bcos_vgg11": (1000.0, 0.1), "bcos_resnet18": (100.0, 10.0), "bcos_resnet34": (100.0, 10.0),
    "bcos_resnet50": (100.0, 10.0), "bcos_densenet121": (100.0, 1e-3), "bcos_inception_v3": (200.0, 1.0),
    "bcos_vit_tiny": (100.0, 1.0), "bcos_vit_small": (100.0, 1.0),
}
ALL = sorted([*FAMILIES, *(f"{n}_cifar" for n in FAMILIES)])
# a size every variant takes, and the number of downsampling sites a forward pass runs (strided convolutions
# and pools; Inception's auxiliary head, not run by forward, has one more, covered by module_strides)
SMALL_SIZE = {"bcos_inception_v3": 75}
SITES = {"bcos_vgg11": 5, "bcos_resnet18": 8, "bcos_resnet34": 8, "bcos_resnet50": 8, "bcos_densenet121": 5,
         "bcos_inception_v3": 9, "bcos_vit_tiny": 4, "bcos_vit_small": 4,
         "bcos_vgg11_cifar": 5, "bcos_resnet18_cifar": 6, "bcos_resnet34_cifar": 6, "bcos_resnet50_cifar": 6,
         "bcos_densenet121_cifar": 3, "bcos_inception_v3_cifar": 6, "bcos_vit_tiny_cifar": 2,
         "bcos_vit_small_cifar": 2}


def _small(name: str, **options) -> torch.nn.Module:
    extra = {"depth": 1} if "vit" in name else {}
    return create_model(name, width=1 / 32, num_classes=3, **extra, **options)


def test_every_family_and_variant_is_registered():
    assert set(ALL) <= set(list_models("bcos_*"))
    for name in ALL:
        assert create_model(name, width=1 / 32, **({"depth": 1} if "vit" in name else {})).default_input_size == (
            32 if name.endswith("_cifar") else 299 if "inception" in name else 224
        )


@pytest.mark.parametrize("name", ALL)
def test_bad_options_raise_one_line_errors(name):
    with pytest.raises(TypeError, match=r"unknown option\(s\) 'widht' \(did you mean 'width'\?\)"):
        create_model(name, widht=0.5)
    with pytest.raises(TypeError, match=r"'antialiasing' \(did you mean 'antialias'\?\)"):
        create_model(name, antialiasing="flc")
    for bad, message in (({"design": "v3"}, "design must be one of"), ({"antialias": "gauss"}, "antialias must be"),
                         ({"width": 0}, "width must be"), ({"num_classes": 0}, "num_classes must be"),
                         ({"multi_label": "yes"}, "multi_label must be"), ({"blur_size": 0}, "blur_size must be")):
        with pytest.raises(ValueError, match=message):
            create_model(name, **bad)


@pytest.mark.parametrize("antialias", ["blurpool", "flc"])
@pytest.mark.parametrize("name", ALL)
def test_antialias_leaves_no_strided_operation(name, antialias):
    size = 32 if name.endswith("_cifar") else SMALL_SIZE.get(name, 32)
    x = torch.rand(1, 3, size, size)
    plain_strided, plain_pools = strided_operations(_small(name), x)
    assert plain_pools == 0 and len(plain_strided) == SITES[name], plain_strided
    model = _small(name, antialias=antialias)
    strided, pools = strided_operations(model, x)
    assert strided == [] and module_strides(model) == []
    assert pools == SITES[name]  # every site replaced by one anti-aliasing pool at its original stride
    pool_type = BlurPool if antialias == "blurpool" else FLCPooling
    aux_head = [3] if "inception" in name else []  # the auxiliary head's 5x5 stride-3 pool
    assert sorted(m.stride for m in model.modules() if isinstance(m, pool_type)) == sorted(
        [s for _, s in plain_strided] + aux_head
    )
    assert model(x).shape == _small(name)(x).shape


@pytest.mark.parametrize("name", sorted(FAMILIES))
def test_designs_follow_app_c12_and_the_successor(name):
    s, temperature = FAMILIES[name]
    paper = _small(name, design="paper")
    v2 = _small(name, design="v2")
    for model, max_out in ((paper, 2), (v2, 1)):
        units = [m for m in model.modules() if isinstance(m, (BcosConv2d, BcosLinear))]
        assert units and all(u.max_out == max_out and u.b == 2 for u in units)
        for u in units:  # gamma = s / sqrt(d), d = k^2 c (App. C.1.2)
            d = u.in_features if isinstance(u, BcosLinear) else u.in_channels // u.groups * math.prod(u.kernel_size)
            assert u.scale == pytest.approx(s / math.sqrt(d), rel=1e-12)
    assert paper.logits.temperature == pytest.approx(temperature) and v2.logits.temperature == 1.0
    norms = ("UncenteredBatchNorm2d", "UncenteredLayerNorm")
    assert not any(type(m).__name__ in norms for m in paper.modules())
    assert any(type(m).__name__ in norms for m in v2.modules())
    if "vit" not in name:
        convs = sum(isinstance(m, BcosConv2d) for m in v2.modules())
        assert sum(isinstance(m, UncenteredBatchNorm2d) for m in v2.modules()) >= convs - 1
    assert not any(isinstance(m, (torch.nn.ReLU, torch.nn.MaxPool2d, torch.nn.BatchNorm2d)) for m in v2.modules())
    custom = _small(name, b=1.5, max_out=3, temperature=7.0, logit_bias=-1.0, scale=5.0, multi_label=True)
    assert all(u.b == 1.5 and u.max_out == 3 for u in custom.modules() if isinstance(u, (BcosConv2d, BcosLinear)))
    assert custom.logits.temperature == 7.0 and custom.logits.bias == -1.0 and custom.multi_label


@pytest.mark.parametrize("name", ["bcos_resnet18", "bcos_vit_tiny_cifar", "bcos_densenet121_cifar"])
def test_logit_bias_defaults_follow_app_c(name):
    expected = CIFAR_LOGIT_BIAS if name.endswith("_cifar") else IMAGENET_LOGIT_BIAS
    model = _small(name)
    assert model.logits.bias == pytest.approx(expected)
    assert expected == pytest.approx(math.log(0.1 / 0.9) if name.endswith("_cifar") else math.log(0.01 / 0.99))


def test_create_model_loads_a_checkpoint(tmp_path):
    name, options = "bcos_resnet18_cifar", {"width": 1 / 32, "num_classes": 4, "antialias": "flc"}
    trained = create_model(name, **options)
    with torch.no_grad():
        for p in trained.parameters():
            p.add_(torch.randn_like(p))
    save_model(tmp_path / "run", trained, name, trained.model_args, {})
    x = torch.rand(2, 3, 16, 16)
    loaded = create_model(name, checkpoint=tmp_path / "run")
    assert not loaded.training
    torch.testing.assert_close(loaded(x), trained.eval()(x), rtol=0, atol=0)
    torch.testing.assert_close(create_model(name, checkpoint=tmp_path / "run" / "model.safetensors")(x), loaded(x))
    torch.testing.assert_close(load_checkpoint(tmp_path / "run")(x), loaded(x))
    # the recorded options are defaults; a bare weights file needs them passed
    bare = tmp_path / "bare.safetensors"
    save_file({k: v.contiguous() for k, v in trained.state_dict().items()}, str(bare))
    torch.testing.assert_close(create_model(name, checkpoint=bare, **options)(x), loaded(x))


def test_checkpoint_errors(tmp_path):
    name = "bcos_resnet18_cifar"
    model = create_model(name, width=1 / 32)
    save_model(tmp_path / "run", model, name, model.model_args, {})
    with pytest.raises(FileNotFoundError, match="nowhere does not exist"):
        create_model(name, checkpoint=tmp_path / "nowhere")
    with pytest.raises(ValueError, match=r"\.weight has shape .* expects"):
        create_model(name, checkpoint=tmp_path / "run", width=1 / 16)
    with pytest.raises(ValueError, match="holds a 'bcos_resnet18_cifar' model, not 'bcos_vgg11_cifar'"):
        create_model("bcos_vgg11_cifar", checkpoint=tmp_path / "run")
    with pytest.raises(ValueError, match=r"missing \[.*\], unexpected"):
        create_model(name, checkpoint=tmp_path / "run", design="paper")
    (tmp_path / "run" / "model.safetensors").write_bytes(b"not a safetensors file")
    with pytest.raises(ValueError, match="is not a readable safetensors file"):
        create_model(name, checkpoint=tmp_path / "run")
    (tmp_path / "run" / "config.json").write_text("{broken")
    with pytest.raises(ValueError, match="is not valid JSON"):
        create_model(name, checkpoint=tmp_path / "run")
