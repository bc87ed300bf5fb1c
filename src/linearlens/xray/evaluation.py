"""Scoring one trained network on its fold's test patients: classification at the validation threshold,
explanation maps, EPG pairs and artifact scores.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import Tensor, nn

from linearlens.data.xray import XraySet
from linearlens.explain import explain
from linearlens.metrics.artifact import artifact_score
from linearlens.metrics.classification import classification_report
from linearlens.metrics.energy_pointing import box_masks, chance_level, epg, epg_sweep, recall_epg

__all__ = ["classify", "explanation_maps", "EXPLAIN_METHOD", "epg_pairs"]

#: study method name -> ``linearlens.explain`` method
EXPLAIN_METHOD = {"inherent": "bcos", "layercam": "layercam", "gradcam": "gradcam"}


def classify(logits: Tensor, labels: Tensor, thresholds: Tensor, classes: Sequence[str]) -> dict:
    """:func:`~linearlens.metrics.classification.classification_report` at per-finding probability thresholds.

    The report takes one threshold; shifting finding ``k``'s logits by ``-logit(t_k)`` makes its 0.5 the
    same decision as ``t_k`` (AUROC is unchanged by a shift), so one call scores all findings.
    """
    t = thresholds.double().clamp(1e-6, 1 - 1e-6)
    shifted = logits.double() - torch.log(t / (1 - t))
    report = classification_report(shifted, labels, 0.5, list(classes))
    report["threshold"] = {c: float(v) for c, v in zip(classes, thresholds)}
    return report


def explanation_maps(model: nn.Module, method: str, images: Tensor, batch_size: int = 8,
                     device: str = "cpu") -> Tensor:
    """``(N, K, H, W)`` maps of every output for uint8 ``(N, 1, H, W)`` images."""
    model.eval()
    out = []
    for start in range(0, len(images), batch_size):
        x = images[start:start + batch_size].to(device).float() / 255
        out.append(explain(model, x, "all", method=EXPLAIN_METHOD[method]).attributions.detach().float().cpu())
    return torch.cat(out)


def epg_pairs(maps: Tensor, data: XraySet, probabilities: Tensor, thresholds: Tensor,
              sweep: Sequence[float], artifact_stride: int) -> dict[str, Tensor]:
    """Per (image, finding) pair of ``data`` that is labelled positive and has a box: EPG, recall-EPG,
    chance level, whether predicted positive, the sweep (``(T, P)``); plus artifact scores of all maps."""
    masks = box_masks(data.boxes, data.box_labels, len(data.classes), data.size)
    chance = chance_level(masks)
    eligible = (data.labels > 0.5) & (chance > 0)
    image_index, class_index = torch.nonzero(eligible, as_tuple=True)
    predicted = probabilities >= thresholds.to(probabilities.dtype)
    h, w = maps.shape[-2:]
    stride_ok = min(h, w) >= 2 * artifact_stride
    artifacts = artifact_score(maps, artifact_stride) if stride_ok else torch.full(maps.shape[:2], math.nan)
    return {
        "image": image_index, "finding": class_index,
        "epg": epg(maps, masks)[eligible], "recall": recall_epg(maps, masks)[eligible],
        "chance": chance[eligible], "predicted": predicted[eligible],
        "empty": (maps.clamp_min(0).flatten(2).sum(2) == 0)[eligible],  # no positive energy: EPG 0 by definition
        "sweep_epg": epg_sweep(maps, masks, sweep)[:, eligible],
        "sweep_recall": epg_sweep(maps, masks, sweep, "recall")[:, eligible],
        "artifact": artifacts.flatten().double(),
    }
