"""App. C.2 light augmentation: boxes follow the pixels; parameter ranges; minority oversampling."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from torchvision import tv_tensors

from linearlens.data.xray import load_xray_subset
from linearlens.data.xray.augment import AugmentedXrays, LightAugmentation, MinorityOversampler, augment_sample


def mask_of(box: list[float], size: int) -> torch.Tensor:
    x1, y1, x2, y2 = box
    m = torch.zeros(1, size, size, dtype=torch.uint8)
    m[0, int(y1):int(y2), int(x1):int(x2)] = 1
    return m


@pytest.mark.parametrize("perspective_p", [0.0, 1.0])
@pytest.mark.parametrize("seed", range(8))
def test_boxes_follow_the_transformed_box_mask(seed, perspective_p):
    size = 128
    g = torch.Generator().manual_seed(seed)
    box = [float(v) for v in (torch.randint(20, 50, (2,), generator=g).tolist()
                              + torch.randint(70, 105, (2,), generator=g).tolist())]
    t = LightAugmentation(translate=18, scale_sigma=0.1, perspective_p=perspective_p, generator=g)
    image = tv_tensors.Image(torch.full((1, size, size), 100, dtype=torch.uint8))
    boxes = tv_tensors.BoundingBoxes(torch.tensor([box]), format="XYXY", canvas_size=(size, size))
    mask = tv_tensors.Mask(mask_of(box, size))
    _, out_boxes, out_mask = t(image, boxes, mask)
    rows, cols = torch.nonzero(out_mask[0], as_tuple=True)
    from_mask = torch.tensor([cols.min(), rows.min(), cols.max() + 1, rows.max() + 1], dtype=torch.float32)
    # nearest-neighbour resampling of the mask moves its edges by less than a pixel (0.95 px worst in 120
    # draws); warping the box step by step instead of as one composite map was off by up to 2.9 px
    torch.testing.assert_close(out_boxes[0].float(), from_mask, atol=1.0, rtol=0)
    # and the box really moved: the identity would not pass for most draws
    moved = (out_boxes[0] - torch.tensor(box)).abs().max()
    assert moved > 0.1


def test_parameters_lie_in_the_paper_ranges():
    g = torch.Generator().manual_seed(1)
    t = LightAugmentation(translate=32, scale_sigma=0.1, degrees=5, shear=2.5, perspective=0.1, perspective_p=0.5,
                          gamma_sigma=0.2, generator=g)
    image = tv_tensors.Image(torch.zeros(1, 224, 224, dtype=torch.uint8))
    params = [t.make_params([image]) for _ in range(2000)]
    translate = np.array([p["translate"] for p in params])
    assert np.abs(translate).max() <= 32 and np.abs(translate).max() > 30
    assert max(abs(p["angle"]) for p in params) <= 5 and max(abs(s) for p in params for s in p["shear"]) <= 2.5
    scales = np.array([p["scale"] for p in params])
    assert abs(scales.std() - 0.1) < 0.01 and scales.min() >= 0.7 and scales.max() <= 1.3
    log_gamma = np.log([p["gamma"] for p in params])
    assert abs(log_gamma.mean()) < 0.02 and abs(log_gamma.std() - 0.2) < 0.015
    share = np.mean([p["endpoints"] is not None for p in params])
    assert abs(share - 0.5) < 0.05
    for p in params:
        if p["endpoints"] is not None:
            moved = np.abs(np.array(p["endpoints"]) - np.array(p["startpoints"]))
            assert moved.max() <= math.ceil(0.1 * 112)


def test_gamma_only_changes_pixels_not_boxes():
    t = LightAugmentation(translate=0, scale_sigma=0, degrees=0, shear=0, perspective_p=0, gamma_sigma=0.2,
                          generator=torch.Generator().manual_seed(3))
    image = torch.arange(256, dtype=torch.uint8).repeat(256, 1)[None]
    boxes = torch.tensor([[10.0, 20.0, 50.0, 60.0]])
    out, out_boxes, labels = augment_sample(t, image, boxes, torch.tensor([0]))
    torch.testing.assert_close(out_boxes, boxes)
    x = image.double() / 255
    candidates = out.double() / 255
    # the output is x ** g for one g: fit g from a mid-grey pixel and check all pixels agree
    g = (torch.log(candidates[0, 0, 128]) / torch.log(x[0, 0, 128])).item()
    torch.testing.assert_close(candidates, x ** g, atol=1 / 255 + 1e-6, rtol=0)
    assert abs(math.log(g)) > 1e-3


def test_boxes_moved_out_of_view_are_dropped():
    t = LightAugmentation(translate=0, scale_sigma=0, degrees=0, shear=0, perspective_p=0, gamma_sigma=0)
    t.make_params = lambda flat: {"translate": [60.0, 0.0], "scale": 1.0, "angle": 0.0, "shear": [0.0, 0.0],
                                  "gamma": 1.0, "endpoints": None}
    boxes = torch.tensor([[70.0, 10.0, 90.0, 30.0], [5.0, 5.0, 20.0, 20.0]])
    _, out, labels = augment_sample(t, torch.zeros(1, 100, 100, dtype=torch.uint8), boxes, torch.tensor([3, 4]))
    assert labels.tolist() == [4]
    torch.testing.assert_close(out, torch.tensor([[65.0, 5.0, 80.0, 20.0]]))


def test_bad_parameters_are_rejected():
    with pytest.raises(ValueError, match="translate must be a finite number"):
        LightAugmentation(translate=-1)
    with pytest.raises(ValueError, match="perspective_p"):
        LightAugmentation(perspective_p=2)


def test_minority_oversampler_balances_binary_labels():
    labels = torch.tensor([[1.0]] * 3 + [[0.0]] * 10)
    sampler = MinorityOversampler(labels, generator=torch.Generator().manual_seed(0))
    drawn = list(sampler)
    assert len(drawn) == len(sampler) == 20
    assert set(range(13)) <= set(drawn)  # every image at least once
    assert sum(labels[i, 0].item() for i in drawn) == 10  # as many positives as negatives
    half = MinorityOversampler(labels, ratio=0.5)
    assert len(half) == 10 + 5


def test_augmented_dataset_yields_unit_range_images():
    data = load_xray_subset("embedded", "rsna")
    ds = AugmentedXrays(data, LightAugmentation(translate=18, generator=torch.Generator().manual_seed(0)))
    image, label = ds[0]
    assert image.shape == (1, 128, 128) and image.dtype == torch.float32 and 0 <= image.min() <= image.max() <= 1
    assert torch.equal(label, data.labels[0]) and not torch.equal(image, data.images[0].float() / 255)
