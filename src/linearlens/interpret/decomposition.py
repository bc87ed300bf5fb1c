"""Where the residual comes from: layer-wise masked biases, pixel discussions and pixel votes.

Theorem 1 of the linear-interpreter paper (Eqs. (8) and (16)) writes the residual of a sequential
network as ``r = sum_i Q_i b_hat_i``: the masked bias ``b_hat_i = A_i b_i + c_i`` of every layer,
forward-projected to the output by the frozen layers above it.  linearlens generalises this to any
DAG network with one observation: with every decision frozen at ``x0``, each *leaf module* ``m`` acts
on the probe half as an affine map ``u -> A_m u + c_m``, and the probe output is affine in
``(x1, c_m for every leaf call)`` *jointly*.  Its constant term ``c_m`` is the module's frozen output
on a zero input (the masked bias of Theorem 1: a convolution's bias, a batch norm's
``beta - gamma mu / sigma``, a frozen clip's constant, a frozen ``-mean/std`` ...).  So:

* :func:`bias_contributions` runs probe blocks with ``x1 = 0`` in which forward hooks remove the
  constant of every leaf module outside one group; block ``g`` then outputs exactly
  ``Q_g c_g`` plus the constants that no leaf module owns (affine glue in ``forward`` methods,
  e.g. ``x + 1`` or a functional ``F.layer_norm``), which a block with *every* leaf constant removed
  measures on its own.  ``F(x0) x0``, the contributions and that remainder add up to ``f(x0)``.
* :func:`pixel_discussions` back-projects every layer's contribution to a score to the input with
  the transposed sub-system from the input to that layer (Eq. (18)), adds ``F(x0)^T delta_s ⊙ x0``
  and normalises the sum so that its pixels add up to the score; :func:`pixel_votes` lets every
  pixel vote for the class with the largest discussion value (Fig. 3).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any, Union

import torch
from torch import Tensor, nn
from torch.utils._pytree import tree_flatten, tree_map, tree_unflatten

from ..engine.source import as_leaf
from ..engine.system import FrozenSystem
from ..engine.tracer import LinearTracer
from ..explain.targets import TargetSpec, resolve_class_targets
from ..validation import check_images

__all__ = [
    "GroupSpec", "BiasContributions", "bias_contributions", "PixelDiscussion", "pixel_discussions",
    "pixel_votes", "leaf_constant_hooks",
]

#: How leaf modules are grouped into "layers": ``None`` (each leaf module by name), ``"parent"``
#: (leaf modules grouped by their parent module), a mapping from module-name prefix to label
#: (unmatched modules keep their own name) or a function from module name to label.
GroupSpec = Union[None, str, Mapping[str, str], Callable[[str], str]]


def _labeller(spec: GroupSpec) -> Callable[[str], str]:
    if spec is None:
        return lambda name: name or "<model>"
    if spec == "parent":
        return lambda name: (name.rsplit(".", 1)[0] if "." in name else name) or "<model>"
    if isinstance(spec, str):
        raise ValueError(f"unknown group specification {spec!r}: use None, 'parent', a mapping or a function")
    if isinstance(spec, Mapping):
        prefixes = sorted(spec, key=len, reverse=True)

        def by_prefix(name: str) -> str:
            for p in prefixes:
                if name == p or name.startswith(p + "."):
                    return spec[p]
            return name or "<model>"

        return by_prefix
    if callable(spec):
        return lambda name: str(spec(name))
    raise TypeError(f"groups must be None, 'parent', a mapping or a function, got {type(spec).__name__}")


@dataclass
class _Call:
    """One call of a leaf module on the probe half: its output and its constant term ``c_m``."""

    name: str
    output: Tensor
    constant: Tensor


def leaf_constant_hooks(
    model: nn.Module,
    *,
    drop: Callable[[str], Tensor | None] | None = None,
    record: Callable[[_Call], None] | None = None,
) -> Callable[[int, LinearTracer], Any]:
    """An instrument for :meth:`FrozenSystem.probe_each` that measures and removes leaf-module constants.

    For every call of a leaf module on interpreted (carrier) inputs, the module is run once more on a
    zero input with the same decisions (the replay is rewound to where the call began), which gives
    its constant term ``c_m``.  ``record(call)`` receives it.  ``drop(name)`` returns a ``(K,)`` 0/1
    vector over the probe blocks (or ``None``): where it is 1, ``c_m`` is subtracted from that block's
    output.  The decisions are always those of ``x0``.
    """
    leaves = [(name, m) for name, m in model.named_modules() if next(m.children(), None) is None]

    def instrument(block: int, tracer: LinearTracer) -> Any:
        return _constant_hooks(leaves, block, tracer, drop, record)

    return instrument


@contextmanager
def _constant_hooks(
    leaves: list[tuple[str, nn.Module]],
    block: int,
    tracer: LinearTracer,
    drop: Callable[[str], Tensor | None] | None,
    record: Callable[[_Call], None] | None,
) -> Iterator[None]:
    state = tracer.state
    busy = [False]
    pending: dict[int, list[tuple[int, tuple]]] = {}

    def pre(module: nn.Module, args: tuple, kwargs: dict) -> None:
        if busy[0] or not any(tracer.is_carrier(t) for t in tree_flatten((args, kwargs))[0]):
            return
        # The zero inputs are made before the call, so in-place modules cannot alter them.
        zeroed = tree_map(lambda t: torch.zeros_like(t) if tracer.is_carrier(t) else t, (args, kwargs))
        pending.setdefault(id(module), []).append((state.cursor, zeroed))

    def make_post(name: str) -> Callable:
        def post(module: nn.Module, args: tuple, kwargs: dict, output: Any) -> Any:
            stack = pending.get(id(module))
            if busy[0] or not stack:
                return None
            start, (z_args, z_kwargs) = stack.pop()
            end = state.cursor
            z_args, z_kwargs = tree_map(lambda t: tracer.mark(t) if isinstance(t, Tensor) else t, (z_args, z_kwargs))
            busy[0] = True
            state.cursor = start  # the zero input takes the decisions this call took
            try:
                with torch.no_grad():
                    const_out = module(*z_args, **z_kwargs)
            finally:
                busy[0] = False
                state.cursor = end
            outs, spec = tree_flatten(output)
            consts, _ = tree_flatten(const_out)
            weights = drop(name) if drop is not None else None
            changed, new = False, []
            for o, c in zip(outs, consts):
                if not tracer.is_carrier(o):
                    new.append(o)
                    continue
                with torch._C.DisableTorchFunction():
                    # A measured constant of the system, not a carrier: inspecting it is allowed.
                    c = c.detach()
                if record is not None:
                    record(_Call(name, o, c))
                    if bool((c != 0).any()):
                        # Downstream gets a copy: an in-place unit after this module must not
                        # overwrite (or rebase the autograd history of) the recorded output.
                        o = o.clone()
                        changed = True
                if weights is not None and bool(weights[block]):
                    o = o - weights[block].to(o.dtype) * c
                    changed = True
                new.append(o)
            return tree_unflatten(new, spec) if changed else None

        return post

    handles = []
    try:
        for name, module in leaves:
            handles.append(module.register_forward_pre_hook(pre, with_kwargs=True))
            handles.append(module.register_forward_hook(make_post(name), with_kwargs=True))
        yield
    finally:
        for h in handles:
            h.remove()


# --- Theorem 1 for DAGs: forward-projected masked biases -----------------------------------------


@dataclass
class BiasContributions:
    """``f(x0) = F(x0) x0 + sum_g Q_g b_hat_g + other`` (Eqs. (15)-(16) generalised to DAGs).

    Attributes:
        groups: group labels, in the order their first module runs.
        members: module names of every group.
        contributions: ``Q_g b_hat_g`` per group, ``(N, G, *out_shape)``.
        input_term: ``F(x0) x0``, ``(N, *out_shape)``.
        other: constants owned by no leaf module (affine code in ``forward`` methods), forward
            projected; zero for networks built from modules only.  ``(N, *out_shape)``.
        output: ``f(x0)``; residual: ``r(x0)`` from the interpreter's own ``x1 = 0`` probe.
    """

    groups: list[str]
    members: dict[str, list[str]]
    contributions: Tensor
    input_term: Tensor
    other: Tensor
    output: Tensor
    residual: Tensor
    meta: dict[str, Any] = field(default_factory=dict)

    def total(self) -> Tensor:
        """``F(x0) x0 + sum_g Q_g b_hat_g + other``, which equals :attr:`output`."""
        return self.input_term + self.contributions.sum(1) + self.other

    def table(self, target: TargetSpec = None, normalize: bool = True) -> tuple[Tensor, list[str], Tensor]:
        """Per-score table ``(N, K, 2 + G)`` with columns ``["input", *groups, "other"]`` (Fig. 4).

        For classifiers (outputs ``(N, classes)``); ``target`` as in :func:`linearlens.explain`
        (default: the top-1 score).  With ``normalize`` each row is divided by its score, so it
        sums to 1.  Returns ``(table, column_names, targets)``.
        """
        if self.output.dim() != 2:
            raise ValueError("score tables need classifier outputs of shape (N, classes)")
        idx = resolve_class_targets(target, self.output)
        pick = lambda t: t.gather(1, idx)  # noqa: E731
        per_group = self.contributions.gather(2, idx.unsqueeze(1).expand(-1, len(self.groups), -1))
        cols = torch.cat([pick(self.input_term).unsqueeze(2), per_group.transpose(1, 2),
                          pick(self.other).unsqueeze(2)], dim=2)
        if normalize:
            cols = cols / pick(self.output).unsqueeze(2)
        return cols, ["input", *self.groups, "other"], idx


def _discover(
    model: nn.Module, system: FrozenSystem, groups: GroupSpec
) -> tuple[dict[str, list[str]], dict[str, bool], Tensor, Tensor, Tensor]:
    """Run once with ``x1 = 0`` and find which leaf modules run, in which order, with which constants."""
    label = _labeller(groups)
    members: dict[str, list[str]] = {}
    nonzero: dict[str, bool] = {}

    def record(call: _Call) -> None:
        g = label(call.name)
        names = members.setdefault(g, [])
        if call.name not in names:
            names.append(call.name)
        nonzero[g] = nonzero.get(g, False) or bool((call.constant != 0).any())

    with torch.no_grad():
        residual = system.probe_each(
            torch.zeros_like(system.source).unsqueeze(0), leaf_constant_hooks(model, record=record)
        )[0]
    return members, nonzero, system.output, residual, system.source


def bias_contributions(
    model: nn.Module,
    x0: Tensor,
    *,
    groups: GroupSpec = None,
    centering: str = "frozen",
    chunk_size: int = 16,
    keep_zero: bool = False,
) -> BiasContributions:
    """Layer-wise contributions of the masked biases to the outputs (Theorem 1, Eqs. (8), (16)).

    Exact for any DAG network the interpreter can run (see the module docstring).  ``groups`` says
    which leaf modules form one "layer" (see :data:`GroupSpec`); groups whose constants are all
    zero at ``x0`` (ReLUs, pools, bias-free convolutions) are left out unless ``keep_zero``.  Costs
    ``G + 2`` probe blocks plus one extra evaluation of every leaf module on ``[x0, 0]`` per pass.
    """
    x0 = check_images(x0, "x0").detach()
    system = FrozenSystem(model, x0, centering=centering, grad=False)
    members, nonzero, output, residual, source = _discover(model, system, groups)
    labels = [g for g in members if keep_zero or nonzero[g]]
    label = _labeller(groups)
    index = {g: i for i, g in enumerate(labels)}
    # Blocks: (x1 = x0, no leaf constants), (x1 = 0, no leaf constants), (x1 = 0, only group g).
    specs: list[tuple[bool, int | None]] = [(True, None), (False, None)] + [(False, g) for g in range(len(labels))]
    outs = []
    for start in range(0, len(specs), chunk_size):
        chunk = specs[start : start + chunk_size]
        keeps = torch.tensor([-1 if g is None else g for _, g in chunk])
        probes = torch.stack([source if use_x0 else torch.zeros_like(source) for use_x0, _ in chunk])

        def drop(name: str, keeps: Tensor = keeps) -> Tensor:
            g = index.get(label(name), -2)
            return (keeps != g).float()

        with torch.no_grad():
            outs.append(system.probe_each(probes, leaf_constant_hooks(model, drop=drop)))
    y = torch.cat(outs)
    other = y[1]
    return BiasContributions(
        groups=labels,
        members={g: members[g] for g in labels},
        contributions=(y[2:] - other).transpose(0, 1),
        input_term=y[0] - other,
        other=other,
        output=output,
        residual=residual,
        meta={"centering": centering, "zero_groups": [g for g in members if g not in index]},
    )


# --- Eq. (18): pixel discussions and votes ---------------------------------------------------------


@dataclass
class PixelDiscussion:
    """Pixel-wise contributions to classifier scores (Eq. (18), Fig. 3).

    Attributes:
        discussions: ``(N, K, H, W)``, normalised so that each map sums to its score (see
            :func:`pixel_discussions` for the two normalisations).
        input_term: ``sum_c F(x0)^T delta_s ⊙ x0``: the input's own contribution map, ``(N, K, H, W)``,
            summing to ``F(x0) x0`` for that score.
        bias_term: ``sum_c sum_m F_m^T (g_{m,s} ⊙ c_m)``: every leaf module's contribution map to the
            score ``g_{m,s} ⊙ c_m`` (``g_{m,s}`` = ``Q_m^T delta_s``) back-projected to the input by the
            transposed sub-system ``F_m^T`` from the input to that module, ``(N, K, H, W)``.
        targets: explained classes ``(N, K)``; scores: their values ``(N, K)``.
        groups: group labels; group_contributions: ``<g_{m,s}, c_m>`` summed per group, ``(N, K, G)``:
            the same numbers as :func:`bias_contributions`, obtained by the adjoint (transposed) system.
        group_maps: per-group back-projections ``(N, K, G, H, W)`` (always with ``normalization="layer"``).
        other: the part of each score owned by no leaf module (glue constants), ``(N, K)``.
    """

    discussions: Tensor
    input_term: Tensor
    bias_term: Tensor
    targets: Tensor
    scores: Tensor
    groups: list[str]
    group_contributions: Tensor
    group_maps: Tensor | None = None
    other: Tensor | None = None
    meta: dict[str, Any] = field(default_factory=dict)


def pixel_discussions(
    model: nn.Module,
    x0: Tensor,
    target: TargetSpec = "all",
    *,
    groups: GroupSpec = None,
    centering: str = "frozen",
    per_group: bool = False,
    normalization: str = "layer",
) -> PixelDiscussion:
    """Pixel discussions (Eq. (18)): ``PD_s ∝ F^T delta_s ⊙ x0 + sum_m F_m^T (Q_m^T delta_s ⊙ b_hat_m)``.

    Our reading of Eq. (18): the score contributions of every layer (the masked bias weighted by how
    the frozen layers above carry it to score ``s``, ``g_{m,s} ⊙ b_hat_m``) are back-projected to the
    input domain with the transposed sub-system ``F_m^T`` from the input to that layer (Eqs. (6),
    (17)) and summed over channels.  The input's own map ``F^T delta_s ⊙ x0`` already sums to
    ``F(x0) x0``, but a back-projected bias map does not sum to its layer's contribution, so the
    paper normalises.  Two normalisations, both summing exactly to the score:

    ``"score"``
        the literal one: ``PD = raw * score / sum(raw)`` with ``raw`` the input map plus all
        back-projections.  Ill-conditioned: where ``sum(raw)`` is near zero the map is amplified
        without bound (on a CIFAR-10 VGG we saw a factor 450 that made a class with a negative score
        win most pixel votes).
    ``"layer"`` (default)
        conservative per layer: ``PD = F^T delta_s ⊙ x0 + sum_g c_{g,s} |B_g| / sum |B_g|`` where
        ``c_{g,s}`` is group ``g``'s exact contribution to the score (Theorem 1) and ``B_g`` its
        back-projection; the magnitude of the back-projection says *where* the contribution is
        spread.  Constants owned by no leaf module (``other``) are spread uniformly.

    One two-batch pass with ``x1 = x0`` (recording graph) and, per explained class, one backward pass
    to every layer plus one back-projection pass (one per group for ``"layer"`` or ``per_group``).
    """
    if normalization not in ("layer", "score"):
        raise ValueError(f"normalization must be 'layer' or 'score', got {normalization!r}")
    per_group = per_group or normalization == "layer"
    x0 = check_images(x0, "x0").detach()
    n = x0.shape[0]
    label = _labeller(groups)
    system = FrozenSystem(model, x0, centering=centering, grad=False)
    source = system.source
    calls: list[_Call] = []

    def record(call: _Call) -> None:
        if bool((call.constant != 0).any()):
            calls.append(call)

    with torch.enable_grad():
        x1 = as_leaf(source)
        y1 = system.probe_each(x1.unsqueeze(0), leaf_constant_hooks(model, record=record))[0]
        if y1.dim() != 2:
            raise ValueError(f"pixel discussions need classifier outputs (N, classes), got {tuple(y1.shape)}")
        targets = resolve_class_targets(target, y1.detach())
        labels = list(dict.fromkeys(label(c.name) for c in calls))
        gidx = torch.tensor([labels.index(label(c.name)) for c in calls], dtype=torch.long)
        k = targets.shape[1]
        shape = source.shape
        inputs, biases = [], []
        contrib = source.new_zeros(n, k, len(labels))
        maps = source.new_zeros(n, k, len(labels), *shape[2:]) if per_group else None
        for j in range(k):
            score = y1.gather(1, targets[:, j : j + 1]).sum()
            grads = torch.autograd.grad(score, [x1] + [c.output for c in calls], retain_graph=True, allow_unused=True)
            row = grads[0] if grads[0] is not None else torch.zeros_like(x1)
            weighted = []  # g_{m,s} ⊙ c_m per call
            for c, g in zip(calls, grads[1:]):
                g = torch.zeros_like(c.constant) if g is None else g
                weighted.append(g * c.constant)
            per_call = torch.stack([w.flatten(1).sum(1) for w in weighted], 1) if calls else source.new_zeros(n, 0)
            contrib[:, j].index_add_(1, gidx, per_call)
            # F_m^T w = grad_x1 <o_m, w>: all layers in one backward pass, or one pass per group.
            back = torch.zeros_like(x1)
            if calls and per_group:
                for gi in range(len(labels)):
                    sel = [i for i in range(len(calls)) if int(gidx[i]) == gi]
                    part = sum((calls[i].output * weighted[i]).sum() for i in sel)
                    (gm,) = torch.autograd.grad(part, x1, retain_graph=True)
                    maps[:, j, gi] = gm.sum(1)
                    back = back + gm
            elif calls:
                total = sum((c.output * w).sum() for c, w in zip(calls, weighted))
                (back,) = torch.autograd.grad(total, x1, retain_graph=True)
            inputs.append((row * source).sum(1))
            biases.append(back.sum(1))
    input_term = torch.stack(inputs, 1).detach()
    bias_term = torch.stack(biases, 1).detach()
    scores = y1.detach().gather(1, targets)
    contrib = contrib.detach()
    other = scores - input_term.flatten(2).sum(-1) - contrib.sum(-1)
    raw = input_term + bias_term
    total_raw = raw.flatten(2).sum(-1)
    tiny = torch.finfo(raw.dtype).tiny
    if normalization == "score":
        safe = torch.where(total_raw.abs() > tiny, total_raw, torch.full_like(total_raw, tiny))
        discussions = raw * (scores / safe).unsqueeze(-1).unsqueeze(-1)
    else:
        mass = maps.abs()
        total = mass.flatten(3).sum(-1, keepdim=True).unsqueeze(-1)
        pixels = input_term[0, 0].numel()
        # A group whose back-projection vanishes spreads its contribution uniformly.
        weights = torch.where(total > tiny, mass / total.clamp_min(tiny), torch.full_like(mass, 1.0 / pixels))
        discussions = input_term + (contrib[..., None, None] * weights).sum(2) + (other / pixels)[..., None, None]
    return PixelDiscussion(
        discussions=discussions,
        input_term=input_term,
        bias_term=bias_term,
        targets=targets,
        scores=scores,
        groups=labels,
        group_contributions=contrib,
        group_maps=None if maps is None else maps.detach(),
        other=other,
        meta={"centering": centering, "normalization": normalization, "raw_sums": total_raw},
    )


def pixel_votes(discussion: PixelDiscussion) -> Tensor:
    """Each pixel votes for the explained class with its largest discussion value (Fig. 3): ``(N, H, W)``.

    Returns class indices (from :attr:`PixelDiscussion.targets`); explain ``target="all"`` so that
    every class competes.
    """
    winner = discussion.discussions.argmax(1)  # (N, H, W), index into K
    return discussion.targets.gather(1, winner.flatten(1)).view_as(winner)
