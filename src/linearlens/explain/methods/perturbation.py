"""Perturbation-based post-hoc methods: occlusion, RISE and LIME.

All three perturb the explained input (the 6-channel encoding of a B-cos network) by replacing
parts of it with a baseline of 0, which for a B-cos network is the input that contributes nothing
(``f(0) = b``, App. C.1.1 of the B-cos paper).

* occlusion (Zeiler & Fergus; captum): the drop of the score when a sliding window is occluded,
  one set of occluded images serving all ``K`` explained outputs;
* RISE (Petsiuk et al.), written on tensors: ``S = E[f(x ⊙ M) M] / p`` over random masks made by
  upsampling ``s x s`` binary grids (``p`` the keep probability) with a random shift; 500 masks,
  ``s = 8``, ``p = 0.1`` as in App. C.2 of the B-cos paper; batched over images and masks;
* LIME (Ribeiro et al.): a weighted ridge regression of the score on binary feature indicators,
  500 samples, the map keeps the ``num_features = 5`` strongest features (App. C.2); written on
  tensors so that one set of samples serves all images and targets, and tested equal to captum's
  ``Lime`` with the same samples, kernel and regression.  The official LIME segments images with
  quickshift (``kernel_size = 4``); scikit-image is not a dependency of linearlens, so the
  features are square cells of side ``kernel_size``.

Their maps are not smoothed in the grid pointing game (Sec. 4 of the B-cos paper), which is why
they carry ``meta["perturbation"] = True``.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
import torch.nn.functional as F
from captum._utils.models.model import Model
from captum.attr import Occlusion
from torch import Tensor, nn
from torch.utils.data import DataLoader

from ..api import register_method
from ..explanation import Explanation
from ..targets import TargetSpec
from ._system import ExplainedSystem, prepare

__all__ = [
    "occlusion", "rise", "lime", "rise_masks", "grid_feature_mask", "weighted_ridge", "lime_kernel", "lime_samples",
    "lime_similarity", "WeightedRidge",
]

_SCORES: dict[str, Callable[[Tensor], Tensor]] = {
    "logit": lambda y: y,
    "softmax": lambda y: y.softmax(1),
    "sigmoid": torch.sigmoid,
}


def _score_fn(system: ExplainedSystem, score: str) -> Callable[[Tensor], Tensor]:
    if score not in _SCORES:
        raise ValueError(f"score must be one of {sorted(_SCORES)}, got {score!r}")
    fn = _SCORES[score]
    return lambda z: fn(system(z))


def _explanation(name: str, maps: Tensor, targets: Tensor, outputs: Tensor, z: Tensor, meta: dict) -> Explanation:
    return Explanation(
        attributions=maps.detach(),
        method=name,
        targets=targets,
        outputs=outputs.gather(1, targets),
        inputs=z,
        meta={"perturbation": True, **meta},
    )


def _pair(value: int | tuple[int, int], name: str) -> tuple[int, int]:
    pair = (value, value) if isinstance(value, int) else tuple(value)
    if len(pair) != 2 or not all(isinstance(v, int) and v >= 1 for v in pair):
        raise ValueError(f"{name} must be a positive int or a pair of them, got {value!r}")
    return pair  # type: ignore[return-value]


@register_method("occlusion")
def occlusion(
    model: nn.Module,
    x: Tensor,
    target: TargetSpec = None,
    *,
    window: int | tuple[int, int] = 8,
    stride: int | tuple[int, int] = 4,
    baseline: float = 0.0,
    score: str = "logit",
    batch_size: int = 256,
) -> Explanation:
    """Occlusion: the mean score drop over the ``window``-sized occlusions (stride ``stride``) covering a pixel."""
    system, z, targets, outputs = prepare(model, x, target, "occlusion")
    (wh, ww), (sh, sw) = _pair(window, "window"), _pair(stride, "stride")
    (n, k), c = targets.shape, z.shape[1]
    if wh > z.shape[2] or ww > z.shape[3]:
        raise ValueError(f"the occlusion window {wh}x{ww} is larger than the {z.shape[2]}x{z.shape[3]} image; "
                         "pass a smaller window=")
    score_fn = _score_fn(system, score)
    # One pass serves all K targets: captum attributes every element of an (N, K) output.
    attributor = Occlusion(lambda inputs, t: score_fn(inputs).gather(1, t))
    windows = math.ceil((z.shape[2] - wh) / sh + 1) * math.ceil((z.shape[3] - ww) / sw + 1)
    with torch.no_grad():
        out = attributor.attribute(
            z, sliding_window_shapes=(c, wh, ww), strides=(c, sh, sw), baselines=baseline,
            additional_forward_args=(targets,), perturbations_per_eval=max(1, min(windows, batch_size // n)),
        )
    # The window spans all channels, so every channel holds the same map.
    maps = out.view(n, k, c, *z.shape[-2:]).mean(2)
    return _explanation(
        "occlusion", maps, targets, outputs, z,
        {"window": (wh, ww), "stride": (sh, sw), "baseline": baseline, "score": score},
    )


def rise_masks(
    n: int, size: tuple[int, int], s: int = 8, p: float = 0.1, generator: torch.Generator | None = None
) -> Tensor:
    """``n`` RISE masks ``(n, 1, H, W)``: ``s x s`` Bernoulli(``p``) grids, upsampled and randomly shifted.

    Each grid is bilinearly upsampled to ``(s + 1)`` cells of ``ceil(H / s)`` pixels and cropped to
    ``H x W`` at a random offset within one cell (Sec. 3.2 of the RISE paper).
    """
    if n < 1 or s < 1 or not 0 < p <= 1:
        raise ValueError(f"RISE needs n >= 1 masks, s >= 1 and 0 < p <= 1; got n={n}, s={s}, p={p}")
    h, w = size
    ch, cw = math.ceil(h / s), math.ceil(w / s)
    grid = (torch.rand(n, 1, s, s, generator=generator) < p).float()
    up = F.interpolate(grid, size=((s + 1) * ch, (s + 1) * cw), mode="bilinear", align_corners=False)
    dy = torch.randint(0, ch, (n,), generator=generator)
    dx = torch.randint(0, cw, (n,), generator=generator)
    rows = (dy[:, None] + torch.arange(h)).view(n, 1, h, 1).expand(n, 1, h, up.shape[3])
    cropped = up.gather(2, rows)
    cols = (dx[:, None] + torch.arange(w)).view(n, 1, 1, w).expand(n, 1, h, w)
    return cropped.gather(3, cols)


@register_method("rise")
def rise(
    model: nn.Module,
    x: Tensor,
    target: TargetSpec = None,
    *,
    n_masks: int = 500,
    s: int = 8,
    p: float = 0.1,
    score: str = "softmax",
    batch_size: int = 250,
    seed: int = 0,
) -> Explanation:
    """RISE saliency ``S_t = sum_i f_t(x ⊙ M_i) M_i / (n_masks p)`` (Eq. (6) of the RISE paper).

    One set of masks (drawn from ``seed``) serves every image; each forward pass holds up to
    ``batch_size`` masked images, and all ``K`` targets are read from the same passes.
    """
    system, z, targets, outputs = prepare(model, x, target, "rise")
    masks = rise_masks(n_masks, tuple(z.shape[-2:]), s, p, torch.Generator().manual_seed(seed)).to(z)
    fn = _score_fn(system, score)
    n = z.shape[0]
    chunk = max(1, batch_size // n)
    sal = z.new_zeros(n, targets.shape[1], *z.shape[-2:])
    with torch.no_grad():
        for start in range(0, n_masks, chunk):
            m = masks[start : start + chunk]
            scores = fn((z[:, None] * m[None]).flatten(0, 1)).view(n, m.shape[0], -1)
            picked = scores.gather(2, targets[:, None, :].expand(n, m.shape[0], -1))
            sal += torch.einsum("nbk,bhw->nkhw", picked, m[:, 0])
    sal /= n_masks * p
    return _explanation("rise", sal, targets, outputs, z, {"n_masks": n_masks, "s": s, "p": p, "score": score})


def grid_feature_mask(size: tuple[int, int], kernel_size: int) -> Tensor:
    """Feature ids ``(1, 1, H, W)`` of square cells of side ``kernel_size`` (row-major)."""
    h, w = size
    rows = torch.arange(h) // kernel_size
    cols = torch.arange(w) // kernel_size
    return (rows[:, None] * math.ceil(w / kernel_size) + cols[None, :]).view(1, 1, h, w)


def weighted_ridge(a: Tensor, y: Tensor, w: Tensor, alpha: float) -> tuple[Tensor, Tensor]:
    """Ridge regression with intercept and sample weights, in closed form, for many targets at once.

    Minimises ``sum_i w_i (y_i - b - v^T a_i)^2 + alpha ||v||^2`` (official LIME: ``Ridge(alpha=1)``)
    for every column of ``y (S, M)``; ``a`` is ``(S, F)``.  Returns ``(v (F, M), b (M,))``.
    """
    a, y, w = a.double(), y.double(), w.double()
    a_mean = (w @ a) / w.sum()
    y_mean = (w @ y) / w.sum()
    ac, yc = a - a_mean, y - y_mean
    gram = ac.T @ (w[:, None] * ac) + alpha * torch.eye(a.shape[1], dtype=a.dtype, device=a.device)
    coef = torch.linalg.solve(gram, ac.T @ (w[:, None] * yc))
    return coef, y_mean - a_mean @ coef


def lime_kernel(samples: Tensor, kernel_width: float = 0.25) -> Tensor:
    """Official LIME's image kernel ``sqrt(exp(-d^2 / w^2))``, ``d`` the cosine distance to the all-on sample.

    ``samples`` are binary feature indicators ``(S, F)``; returns weights ``(S,)``.
    """
    v = samples.double()
    cos = v.sum(1) / (v.norm(dim=1) * math.sqrt(v.shape[1])).clamp_min(1e-12)
    return torch.exp(-((1 - cos) ** 2) / kernel_width**2).sqrt()


class WeightedRidge(Model):
    """:func:`weighted_ridge` as an interpretable model for captum's ``Lime`` (captum's default needs sklearn)."""

    def __init__(self, alpha: float = 1.0) -> None:
        self.alpha = float(alpha)
        self.coef: Tensor | None = None
        self.intercept: Tensor | None = None

    def fit(self, train_data: DataLoader, **kwargs: object) -> dict[str, float]:
        parts = list(train_data)
        a = torch.cat([b[0] for b in parts]).flatten(1)
        y = torch.cat([b[1] for b in parts]).reshape(-1, 1)
        w = torch.cat([b[2] for b in parts]).flatten() if len(parts[0]) > 2 else torch.ones(len(y))
        coef, intercept = weighted_ridge(a, y, w, self.alpha)
        self.coef, self.intercept = coef[:, 0], intercept[0]
        return {"samples": float(len(y))}

    def representation(self) -> Tensor:
        if self.coef is None:
            raise RuntimeError("fit the model first")
        return self.coef.float().unsqueeze(0)

    def __call__(self, x: Tensor) -> Tensor:
        if self.coef is None or self.intercept is None:
            raise RuntimeError("fit the model first")
        return x.double().flatten(1) @ self.coef + self.intercept


def lime_similarity(kernel_width: float = 0.25) -> Callable[..., Tensor]:
    """:func:`lime_kernel` as a similarity function for captum's ``Lime``."""

    def similarity(original: Tensor, perturbed: Tensor, interpretable: Tensor, **kwargs: object) -> Tensor:
        return lime_kernel(interpretable.reshape(1, -1), kernel_width)[0].float()

    return similarity


@register_method("lime")
def lime(
    model: nn.Module,
    x: Tensor,
    target: TargetSpec = None,
    *,
    n_samples: int = 500,
    kernel_size: int = 4,
    num_features: int | None = 5,
    alpha: float = 1.0,
    kernel_width: float = 0.25,
    baseline: float = 0.0,
    score: str = "softmax",
    batch_size: int = 250,
    seed: int = 0,
) -> Explanation:
    """LIME with ``n_samples = 500`` perturbations of ``kernel_size``-pixel cells (App. C.2 of the B-cos paper).

    The samples switch each cell on with probability 1/2 (drawn from ``seed``, captum's sampling),
    are weighted by LIME's kernel (:func:`lime_kernel`) and the score is regressed on them by
    weighted ridge regression (:func:`weighted_ridge`).  This is captum's ``Lime`` with
    :class:`WeightedRidge` and :func:`lime_similarity` (a test checks the equality), except that one
    set of samples is shared by every image and target: the ``n_samples`` forward passes per image
    serve all ``K`` explained outputs, where captum would repeat them per output.  The map holds
    each cell's coefficient for the ``num_features`` cells of largest absolute coefficient and zero
    elsewhere (``num_features=None`` keeps all).
    """
    if n_samples < 2 or kernel_size < 1 or (num_features is not None and num_features < 1):
        raise ValueError(
            f"LIME needs n_samples >= 2, kernel_size >= 1 and num_features >= 1 or None; got {n_samples}, "
            f"{kernel_size}, {num_features}"
        )
    system, z, targets, outputs = prepare(model, x, target, "lime")
    ids = grid_feature_mask(tuple(z.shape[-2:]), kernel_size)[0, 0].to(z.device)
    n_feat = int(ids.max()) + 1
    samples = lime_samples(n_samples, n_feat, seed).to(z.device)
    fn = _score_fn(system, score)
    n, k = targets.shape
    chunk = max(1, batch_size // n)
    picked = []
    with torch.no_grad():
        for start in range(0, n_samples, chunk):
            on = samples[start : start + chunk][:, ids].to(z.dtype)[None, :, None]  # (1, b, 1, H, W)
            perturbed = z[:, None] * on + baseline * (1 - on)
            b = perturbed.shape[1]
            scores = fn(perturbed.flatten(0, 1)).view(n, b, -1)
            picked.append(scores.gather(2, targets[:, None, :].expand(n, b, k)))
    y = torch.cat(picked, 1).permute(1, 0, 2).reshape(n_samples, n * k)
    coef, _ = weighted_ridge(samples, y, lime_kernel(samples, kernel_width), alpha)
    coefs = coef.T.reshape(n, k, n_feat).to(z.dtype)
    if num_features is not None and num_features < n_feat:
        keep = coefs.abs().topk(num_features, dim=-1).indices
        coefs = torch.zeros_like(coefs).scatter(-1, keep, coefs.gather(-1, keep))
    maps = coefs[..., ids]  # (N, K, H, W)
    return _explanation(
        "lime", maps, targets, outputs, z,
        {"n_samples": n_samples, "kernel_size": kernel_size, "num_features": num_features, "score": score,
         "coefficients": coefs},
    )


def lime_samples(n_samples: int, n_features: int, seed: int = 0) -> Tensor:
    """LIME's binary samples ``(S, F)``: every feature on with probability 1/2 (as captum's default)."""
    return torch.randint(0, 2, (n_samples, n_features), generator=torch.Generator().manual_seed(seed))
