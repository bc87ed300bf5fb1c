"""The fitted patterns of a network: :class:`PatternSet`, and the model they belong to."""

from __future__ import annotations

import weakref
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor, nn

from .estimators import ESTIMATORS, filter_pattern
from .layers import PatternLayer, folded_weight, norm_scale

__all__ = ["LayerPatterns", "PatternSet", "attach_patterns", "attached_patterns", "PatternsNotFittedError"]


class PatternsNotFittedError(ValueError):
    """An explanation needs patterns that have not been fitted (or attached) for this model."""


@dataclass
class LayerPatterns:
    """Patterns of one layer, ``(O, D)`` each: ``linear`` (S_a), ``positive``/``negative`` (S_a+-)."""

    layer: PatternLayer
    linear: Tensor | None = None
    positive: Tensor | None = None
    negative: Tensor | None = None


@dataclass
class PatternSet:
    """Per-layer patterns of a network, keyed by module name, in the order the network calls them.

    ``meta`` records how they were fitted (samples, batches, ``centre`` of the two-component
    estimator).  :meth:`kernels` turns them into the backward kernels of PatternNet/PatternAttribution.
    """

    layers: dict[str, LayerPatterns]
    meta: dict[str, Any] = field(default_factory=dict)

    def __repr__(self) -> str:
        return f"PatternSet({len(self.layers)} layers, {self.meta.get('images', '?')} images)"

    def check_model(self, model: nn.Module) -> None:
        """Raise ``ValueError`` unless every layer exists in ``model`` with matching shapes."""
        modules = dict(model.named_modules())
        for name, lp in self.layers.items():
            module = modules.get(name)
            if module is None:
                raise ValueError(f"the patterns are for a layer {name!r} that this model does not have")
            if lp.layer.kind == "norm":
                continue
            expected = module.weight.reshape(module.weight.shape[0], -1).shape
            for p in (lp.linear, lp.positive, lp.negative):
                if p is not None and p.shape != expected:
                    raise ValueError(
                        f"the patterns of {name!r} have shape {tuple(p.shape)} but its weights are {tuple(expected)}; "
                        "were they fitted on another model?"
                    )

    def kernels(self, model: nn.Module, estimator: str, attribution: bool) -> dict[str, tuple[Tensor, Tensor]]:
        """Backward kernels ``(positive regime, negative regime)`` per layer, in the weight layout.

        PatternNet back-projects with the patterns ``a`` (``attribution=False``); PatternAttribution
        with ``w ⊙ a`` (``attribution=True``), ``w`` the weight with batch norm folded in (Sec. 4.3).
        A lone batch norm (pattern ``1/s``) gets ``1/s`` or ``1`` as a per-channel vector.
        """
        if estimator not in ESTIMATORS or estimator == "x":
            raise ValueError(f"estimator must be one of {ESTIMATORS[1:]} here, got {estimator!r}")
        modules = dict(model.named_modules())
        out = {}
        for name, lp in self.layers.items():
            module = modules[name]
            if lp.layer.kind == "norm":
                s, _ = norm_scale(module)
                k = torch.ones_like(s) if attribution else torch.where(s != 0, 1 / s, torch.zeros_like(s))
                out[name] = (k, k)
                continue
            w = folded_weight(module, modules[lp.layer.norm] if lp.layer.norm else None)
            if estimator == "w":
                pos = neg = filter_pattern(w)
            elif estimator == "a":
                pos = neg = _need(lp.linear, name, estimator)
            else:
                pos, neg = _need(lp.positive, name, estimator), _need(lp.negative, name, estimator)
            pos, neg = (p.to(w.device, w.dtype).reshape(w.shape) for p in (pos, neg))
            out[name] = (w * pos, w * neg) if attribution else (pos, neg)
        return out


def _need(p: Tensor | None, name: str, estimator: str) -> Tensor:
    if p is None:
        raise PatternsNotFittedError(f"layer {name!r} has no {estimator!r} patterns; refit with fit_patterns")
    return p


_ATTACHED: weakref.WeakKeyDictionary[nn.Module, PatternSet] = weakref.WeakKeyDictionary()


def attach_patterns(model: nn.Module, patterns: PatternSet) -> nn.Module:
    """Remember ``patterns`` for ``model`` so that ``explain(model, ...)`` finds them (the model is not modified)."""
    patterns.check_model(model)
    _ATTACHED[model] = patterns
    return model


def attached_patterns(model: nn.Module) -> PatternSet | None:
    """The patterns attached to ``model`` with :func:`attach_patterns`, if any."""
    return _ATTACHED.get(model)
