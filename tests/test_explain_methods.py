"""Post-hoc explanation methods: shapes, equivalences theory demands, known answers and clear errors."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from linearlens import create_model, explain, list_methods
from linearlens.explain import Neuron
from linearlens.explain.methods import PERTURBATION_METHODS
from linearlens.explain.methods.cam import default_cam_layer
from linearlens.explain.methods.perturbation import rise_masks

# Reduced sample counts keep the perturbation methods fast; everything else runs at its defaults.
FAST = {
    "rise": {"n_masks": 40}, "lime": {"n_samples": 40}, "ig": {"n_steps": 8}, "occlusion": {"window": 4, "stride": 4},
}
POST_HOC = ["gradient", "ixg", "ig", "deeplift", "guided_backprop", "deconvnet", "gradcam", "layercam",
            "occlusion", "rise", "lime"]


@pytest.fixture(scope="module")
def bcos():
    torch.manual_seed(0)
    return create_model("bcos_cifar", width=0.125, b=2.0, max_out=2).eval()


@pytest.fixture(scope="module")
def images():
    return torch.rand(3, 3, 16, 16, generator=torch.Generator().manual_seed(1))


class ReluNet(nn.Module):
    """A small piece-wise linear CNN: conv, ReLU, max pool, conv, ReLU, linear (no biases: LRP conserves)."""

    def __init__(self, bias: bool = False) -> None:
        super().__init__()
        self.body = nn.Sequential(
            nn.Conv2d(3, 6, 3, padding=1, bias=bias), nn.ReLU(), nn.MaxPool2d(2),
            nn.Conv2d(6, 8, 3, padding=1, bias=bias), nn.ReLU(), nn.Flatten(), nn.Linear(8 * 8 * 8, 4, bias=bias),
        )

    def forward(self, x):
        return self.body(x)


@pytest.fixture(scope="module")
def relu_net():
    torch.manual_seed(2)
    return ReluNet(bias=True).eval()


# ---- one interface -------------------------------------------------------------------------------


@pytest.mark.parametrize("method", POST_HOC)
def test_every_method_returns_maps_of_the_input_shape_for_several_targets(bcos, images, method):
    targets = torch.tensor([[1, 4], [0, 9], [3, 3]])
    e = explain(bcos, images, targets, method=method, **FAST.get(method, {}))
    assert e.attributions.shape == (3, 2, 16, 16)
    assert torch.equal(e.targets, targets)
    assert bool(torch.isfinite(e.attributions).all())
    with torch.no_grad():
        assert torch.allclose(e.outputs, bcos(images).gather(1, targets), atol=1e-5)
    if e.channel_attributions is not None:
        assert e.channel_attributions.shape == (3, 2, 6, 16, 16)  # w.r.t. the 6-channel encoded input
        assert torch.allclose(e.channel_attributions.sum(2), e.attributions)
    assert e.meta.get("perturbation", False) == (method in PERTURBATION_METHODS)


@pytest.mark.parametrize("method", ["ixg", "gradcam", "rise"])
def test_batching_over_images_does_not_mix_them(bcos, images, method):
    batch = explain(bcos, images, [2, 5, 7], method=method, **FAST.get(method, {}))
    for i, t in enumerate([2, 5, 7]):
        one = explain(bcos, images[i : i + 1], t, method=method, **FAST.get(method, {}))
        scale = batch.attributions[i].abs().max()
        assert torch.allclose(one.attributions[0], batch.attributions[i], rtol=1e-3, atol=1e-4 * scale)


# ---- equivalences --------------------------------------------------------------------------------


def test_input_x_gradient_in_explanation_mode_equals_the_inherent_contributions(bcos, images):
    inherent = explain(bcos, images, "all", method="bcos")
    ixg = explain(bcos, images, "all", method="ixg", frozen=True)
    scale = inherent.attributions.abs().max()
    assert torch.allclose(ixg.attributions, inherent.attributions, atol=1e-5 * scale, rtol=1e-4)
    grad = explain(bcos, images, "all", method="gradient", frozen=True, abs=False)
    assert torch.allclose(grad.channel_attributions, inherent.weights, atol=1e-5 * inherent.weights.abs().max())
    # ... while the live gradient of a B = 2 network is not W(x): the dynamic scale is differentiated too
    live = explain(bcos, images, "all", method="ixg")
    assert not torch.allclose(live.attributions, inherent.attributions, atol=1e-2 * scale)


@pytest.mark.parametrize("method", ["gradient", "ixg", "ig", "gradcam", "layercam"])
def test_explanation_mode_changes_nothing_on_a_piecewise_linear_bcos_network(images, method):
    # With B = 1 the only decisions are MaxOut selections, whose gradient is already the selection.
    torch.manual_seed(5)
    linear = create_model("bcos_cifar", width=0.125, b=1.0, max_out=2).eval()
    options = FAST.get(method, {})
    live = explain(linear, images, [0, 4, 8], method=method, **options)
    frozen = explain(linear, images, [0, 4, 8], method=method, frozen=True, **options)
    assert torch.allclose(frozen.attributions, live.attributions, rtol=1e-4, atol=1e-6 * live.attributions.abs().max())
    if method in ("gradcam", "layercam"):
        return
    b2 = explain(create_model("bcos_cifar", width=0.125, b=2.0).eval(), images, 0, method=method, frozen=True,
                 **options)
    assert bool(torch.isfinite(b2.attributions).all()) and b2.meta["frozen"]


def test_gradient_equals_linear_interpreter_rows_on_a_relu_network(relu_net, images):
    rows = explain(relu_net, images, "all", method="linear_rows")
    for frozen in (False, True):
        grad = explain(relu_net, images, "all", method="gradient", abs=False, frozen=frozen)
        assert torch.allclose(grad.channel_attributions, rows.weights, atol=1e-6)


def test_integrated_gradients_is_complete(bcos, images):
    # sum IG = f(x) - f(0); at the zero encoded input a B-cos network outputs its logit bias b
    e = explain(bcos, images, [0, 1, 2], method="ig", n_steps=64)
    b = bcos.logits.bias
    assert torch.allclose(e.attributions.sum((2, 3)), e.outputs - b, rtol=2e-2, atol=1e-3 * e.outputs.abs().max())


def test_integrated_gradients_equal_input_x_gradient_on_a_homogeneous_bcos_network(bcos, images):
    # Without biases a B-cos network is positively homogeneous of degree 1 (f(a x) = a f(x)), so its
    # gradient is constant along the ray from the zero baseline and IG reduces to input x gradient.
    ig = explain(bcos, images, [4, 5, 6], method="ig", n_steps=5)
    ixg = explain(bcos, images, [4, 5, 6], method="ixg")
    assert torch.allclose(ig.attributions, ixg.attributions, rtol=1e-3, atol=1e-4 * ixg.attributions.abs().max())


def test_module_hook_methods_reduce_to_gradients_without_relu_modules(bcos, relu_net, images):
    ixg = explain(bcos, images, 3, method="ixg")
    # float32: captum's DeepLIFT runs the layers' fused backward along another path; equal up to rounding
    scale = ixg.attributions.abs().max()
    assert torch.allclose(explain(bcos, images, 3, method="deeplift").attributions, ixg.attributions, atol=1e-5 * scale)
    signed = explain(bcos, images, 3, method="gradient", abs=False)
    for method in ("guided_backprop", "deconvnet"):
        e = explain(bcos, images, 3, method=method)
        assert e.meta["relu_modules"] == 0
        assert torch.allclose(e.channel_attributions, signed.channel_attributions, atol=1e-6)
    # with ReLU modules they do change the backward pass
    relu_grad = explain(relu_net, images, 1, method="gradient", abs=False).channel_attributions
    gbp = explain(relu_net, images, 1, method="guided_backprop").channel_attributions
    assert not torch.allclose(gbp, relu_grad)


def test_cams_on_the_last_layer_are_the_class_map(bcos, images):
    # The default layer is the last 1x1 B-cos convolution; y_c = mean_hw(A_c) / T + b, so
    # dy_c/dA = 1 / (hw T) on channel c only and both CAMs are ReLU(A_c) / (hw T).
    assert default_cam_layer(bcos, images) == "features.8"
    acts = []
    handle = bcos.features[8].register_forward_hook(lambda m, i, o: acts.append(o.detach()))
    with torch.no_grad():
        bcos(images)
    handle.remove()
    a = acts[0]
    expected = (a[torch.arange(3), torch.tensor([1, 2, 3])].clamp_min(0) / (a.shape[2] * a.shape[3])
                / bcos.logits.temperature)
    for method in ("gradcam", "layercam"):
        e = explain(bcos, images, [1, 2, 3], method=method)
        assert torch.allclose(e.meta["coarse"][:, 0], expected, rtol=1e-4, atol=1e-8)
    mid = explain(bcos, images, 1, method="gradcam", layer="features.3")
    assert mid.meta["coarse"].shape[-1] == 8 and mid.attributions.shape == (3, 1, 16, 16)


# ---- perturbation methods on models with known answers -------------------------------------------


class RegionSum(nn.Module):
    """Linear toy model: class k sums the input over region k (all channels)."""

    def __init__(self, regions: torch.Tensor) -> None:
        super().__init__()
        self.register_buffer("regions", regions.float())  # (classes, H, W)

    def forward(self, x):
        return torch.einsum("nchw,khw->nk", x, self.regions)


def _regions(size: int = 16) -> torch.Tensor:
    r = torch.zeros(2, size, size)
    r[0, 4:8, 8:12] = 1.0  # one 4x4 LIME cell
    r[1, 12:, :4] = 1.0
    return r


def test_occlusion_with_unit_windows_recovers_input_times_region():
    x = torch.rand(2, 3, 16, 16)
    regions = _regions()
    e = explain(RegionSum(regions), x, "all", method="occlusion", window=1, stride=1)  # K = 2 in one pass
    expected = x.sum(1)[:, None] * regions[None]
    assert torch.allclose(e.attributions, expected, atol=1e-5)


def test_lime_finds_the_one_cell_a_linear_model_reads():
    x = torch.rand(2, 3, 16, 16)
    regions = _regions()
    e = explain(RegionSum(regions), x, 0, method="lime", n_samples=120, num_features=1, alpha=1e-3, score="logit")
    for i in range(2):
        support = e.attributions[i, 0] != 0
        assert torch.equal(support, regions[0].bool())
        # the regression is exact for a linear model: the coefficient is the cell's sum
        assert e.attributions[i, 0][support][0].item() == pytest.approx(x[i, :, 4:8, 8:12].sum().item(), rel=1e-2)
    all_features = explain(RegionSum(regions), x, 0, method="lime", n_samples=60, num_features=None, score="logit")
    assert (all_features.attributions[0, 0] != 0).float().mean() > 0.5


def test_lime_equals_captums_lime_with_the_same_samples_kernel_and_regression(bcos, images):
    from captum.attr import Lime

    from linearlens.explain.methods import ExplainedSystem
    from linearlens.explain.methods.perturbation import (
        WeightedRidge,
        grid_feature_mask,
        lime_samples,
        lime_similarity,
    )

    ours = explain(bcos, images[:2], [[3, 5], [1, 1]], method="lime", n_samples=30, kernel_size=8,
                   num_features=None, seed=4)
    system = ExplainedSystem(bcos, tuple(images.shape))
    z = system.encode(images[:2])
    mask = grid_feature_mask((16, 16), 8)
    rows = lime_samples(30, int(mask.max()) + 1, seed=4)

    def perturb(original, **kwargs):
        yield from (r[None] for r in rows)

    captum_lime = Lime(lambda t: system(t).softmax(1), interpretable_model=WeightedRidge(1.0),
                       similarity_func=lime_similarity(0.25), perturb_func=perturb)
    for i, targets in enumerate([[3, 5], [1, 1]]):
        for k, t in enumerate(targets):
            coef = captum_lime.attribute(z[i : i + 1], target=t, feature_mask=mask, n_samples=30,
                                         perturbations_per_eval=10, return_input_shape=False)
            assert torch.allclose(ours.meta["coefficients"][i, k], coef.flatten(), rtol=1e-4, atol=1e-6)


def test_rise_saliency_concentrates_on_the_region_the_model_reads():
    x = torch.ones(1, 3, 16, 16)
    regions = _regions()
    e = explain(RegionSum(regions), x, [0], method="rise", n_masks=400, score="logit", s=4, p=0.5)
    sal = e.attributions[0, 0]
    inside = regions[0].bool()
    assert inside.flatten()[sal.argmax()]
    assert sal[inside].mean() > 1.15 * sal[~inside].mean()


def test_rise_masks_are_soft_shifted_grids_with_keep_probability_p():
    m = rise_masks(500, (32, 32), s=8, p=0.1, generator=torch.Generator().manual_seed(0))
    assert m.shape == (500, 1, 32, 32)
    assert m.min() >= 0 and m.max() <= 1
    assert m.mean().item() == pytest.approx(0.1, abs=0.02)
    assert len({tuple(mask.flatten().tolist()) for mask in m[:50]}) == 50


# ---- LRP -----------------------------------------------------------------------------------------


def test_lrp_conserves_relevance_on_a_bias_free_relu_network(images):
    torch.manual_seed(3)
    net = ReluNet(bias=False).eval()
    e = explain(net, images, [0, 1, 2], method="lrp")
    assert torch.allclose(e.attributions.sum((2, 3)), e.outputs, rtol=1e-3, atol=1e-5)


class _FunctionalFlatten(ReluNet):
    """The same network with the flatten done functionally (invisible to module hooks)."""

    def forward(self, x):
        h = self.body[:5](x)
        return self.body[6](h.flatten(1))


def test_lrp_passes_relevance_through_flatten_modules_unchanged(images):
    torch.manual_seed(3)
    net = ReluNet(bias=False).eval()
    functional = _FunctionalFlatten(bias=False).eval()
    functional.load_state_dict(net.state_dict())
    a = explain(net, images, 2, method="lrp").channel_attributions
    b = explain(functional, images, 2, method="lrp").channel_attributions
    assert torch.allclose(a, b, atol=1e-6)


def test_lrp_refuses_bcos_layers_by_name(bcos, images):
    with pytest.raises(ValueError, match=r"features\.0 \(BcosConv2d\).*method='bcos'"):
        explain(bcos, images, 0, method="lrp")


# ---- errors --------------------------------------------------------------------------------------


def test_clear_errors(bcos, images):
    with pytest.raises(ValueError, match="unknown explanation method 'gradcam\\+\\+'.*available: .*rise"):
        explain(bcos, images, 0, method="gradcam++")
    with pytest.raises(ValueError, match=r"shape \(N, C, H, W\)"):
        explain(bcos, images[0], 0, method="ixg")
    with pytest.raises(ValueError, match="out of range"):
        explain(bcos, images, 10, method="rise", n_masks=4)
    with pytest.raises(ValueError, match="got 2 targets for a batch of 3"):
        explain(bcos, images, [1, 2], method="gradient")
    with pytest.raises(ValueError, match="class outputs only"):
        explain(bcos, images, Neuron("features.3", 0), method="ixg")
    with pytest.raises(ValueError, match="no layer called 'head'"):
        explain(bcos, images, 0, method="layercam", layer="head")
    with pytest.raises(ValueError, match="score must be one of"):
        explain(bcos, images, 0, method="rise", score="probability")
    with pytest.raises(TypeError, match="frozen"):
        explain(bcos, images, 0, method="lime", frozen=True)


def test_predicted_targets_are_the_argmax_for_inherent_and_post_hoc_methods(bcos, images):
    with torch.no_grad():
        top = bcos(images).argmax(1, keepdim=True)
    for method in ("bcos", "ixg", "layercam"):
        assert torch.equal(explain(bcos, images, method=method).targets, top)


def test_all_issue_methods_are_registered():
    names = set(list_methods())
    assert {"bcos", "linear_rows", "gradient", "ixg", "integrated_gradients", "deeplift", "gradcam", "layercam",
            "guided_backprop", "deconvnet", "lrp", "lime", "rise", "occlusion"} <= names
