"""A network at reference inputs ``x0`` as its frozen linear system ``y1 = F(x0) x1 + r(x0)``.

This is the one place where linearlens runs a network as its frozen system; explanations, the linear
interpreter, the residual decomposition and the post-hoc methods' explanation mode all go through it.

* The **reference pass** runs the network on ``x0`` in ``Mode.FROZEN`` under the tracer: every decision
  (mask, gain, selection, statistic, gate) is computed from ``x0`` and recorded.  Its output is ``f(x0)``
  and, differentiated with respect to the explained input, gives the rows of ``F(x0)`` — for a B-cos
  network the rows of ``W(x)`` (Eqs. (13)-(14) of the B-cos paper; Eq. (6) of the linear-interpreter
  paper).
* A **probe pass** runs probe blocks ``x1`` through the same network in ``Mode.TWO_BATCH``, replaying
  the recorded decisions (Eqs. (2), (5)).  The blocks are the members of one ``torch.vmap``: each block
  is computed as if it were alone, so no operation — a reduction over the batch, a reorder, a batch
  norm in training mode — can mix one probe block into another, whatever the network does.
* :meth:`FrozenSystem.check` is the self-check that can fail: for a random, sign-mixed probe ``z``
  independent of ``x0``, rows computed by the reference pass must satisfy ``<rows, z> + r(x0) = y1(z)``
  with ``r(x0)`` from the zero probe.  On failure, :meth:`FrozenSystem.locate` names the first module
  whose frozen and probe computations disagree.
"""

from __future__ import annotations

import contextvars
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor, nn
from torch.utils._pytree import tree_flatten

from .source import as_leaf, substituted_input
from .state import Decision, DecisionMismatchError, Mode, interpretation_state
from .tracer import LinearTracer, UninterpretableOperationError

__all__ = ["FrozenSystem", "SystemCheckError", "CheckResult", "run_explained", "Readout", "gradients_of"]

#: How the explained output is read from a model: ``readout(model, raw_input) -> tensor``.
Readout = Callable[[nn.Module, Tensor], Tensor]


def _call_model(model: nn.Module, x: Tensor) -> Tensor:
    return model(x)


# The probes of the self-check are drawn from their own stream, not from seeds users pick for inputs.
_PROBE_SEED = 0x11EA2

class SystemCheckError(RuntimeError):
    """The rows of the frozen system disagree with the probe run of the same system."""


@dataclass
class CheckResult:
    """The outcome of :meth:`FrozenSystem.check`: errors relative to the scale of each compared output."""

    passed: bool
    probe_error: float
    completeness_error: float
    tolerance: float
    seed: int
    meta: dict[str, Any] = field(default_factory=dict)


@contextmanager
def _interpretation(mode: Mode, centering: str, decisions: list[Decision]) -> Iterator[LinearTracer]:
    if mode is Mode.FROZEN:
        ctx = interpretation_state(mode, centering, record=decisions)
    else:
        ctx = interpretation_state(mode, centering, replay=decisions)
    with ctx as state:
        tracer = LinearTracer(state)
        with tracer:
            yield tracer
        if mode is Mode.TWO_BATCH and state.cursor != len(decisions):
            raise DecisionMismatchError(
                f"the probe pass took {state.cursor} of the reference pass's {len(decisions)} decisions; the "
                "network's control flow depends on its input, so its frozen system cannot be replayed"
            )


def run_explained(
    model: nn.Module,
    raw: Tensor,
    explained: Tensor,
    tracer: LinearTracer | None = None,
    readout: Readout = _call_model,
) -> Tensor:
    """Run ``model`` on raw input ``raw`` with ``explained`` as its explained input.

    The explained input is the output of the model's first input encoding (which ``explained``
    replaces) or, for a model without one, the model input itself.  With a ``tracer``, ``explained``
    is marked as the system's input and the output is checked to be linear in it.
    """
    fed: list[bool] = []

    def replace(encoded: Tensor) -> Tensor:
        if fed:
            return encoded
        if tuple(encoded.shape) != tuple(explained.shape):
            raise ValueError(
                f"the explained input has shape {tuple(explained.shape)}, but this network's input encoding "
                f"produces {tuple(encoded.shape)}"
            )
        fed.append(True)
        return tracer.mark(explained) if tracer is not None else explained

    with substituted_input(model, replace) as encoding:
        if encoding is None:
            out = readout(model, tracer.mark(explained) if tracer is not None else explained)
        else:
            out = readout(model, raw)
            if not fed:
                raise RuntimeError("the model's input encoding was not called during the forward pass")
    if not isinstance(out, Tensor):
        raise TypeError(f"the network must return one tensor, got {type(out).__name__}")
    return tracer.check_output(out) if tracer is not None else out


def gradients_of(outputs: Tensor, source: Tensor, cotangents: Sequence[Tensor] | Tensor) -> Tensor:
    """``[d<outputs, c_k>/d source for c_k in cotangents]`` stacked on a new first dimension (Eq. (6)).

    One backward pass per cotangent over the same graph (kept, so the forward pass is shared and can be
    differentiated again); each result is written into a preallocated tensor as soon as it is computed.
    """
    k = len(cotangents)
    result = source.new_empty(k, *source.shape)
    with torch.enable_grad():
        for j in range(k):
            (grad,) = torch.autograd.grad(
                outputs, source, cotangents[j].to(outputs.dtype), retain_graph=True, allow_unused=True
            )
            if grad is None:
                result[j] = 0
            else:
                result[j] = grad
                del grad
    return result


class FrozenSystem:
    """The frozen linear system of ``model`` at reference inputs ``x0`` (see the module docstring).

    Args:
        model: the network (in eval mode).
        x0: reference inputs (raw network input), ``(N, ...)``.
        centering: how normalisations with input statistics are frozen (see
            :class:`~linearlens.engine.state.Interpretation`).
        grad: keep the autograd graph of the reference pass, for :meth:`rows` / :meth:`vjp`.
        readout: what is explained: ``readout(model, x)`` (default ``model(x)``); e.g. a function
            that returns intermediate neurons.
    """

    def __init__(
        self,
        model: nn.Module,
        x0: Tensor,
        *,
        centering: str = "frozen",
        grad: bool = True,
        readout: Readout = _call_model,
    ) -> None:
        self.model, self.x0, self.centering, self.readout = model, x0.detach(), centering, readout
        self.decisions: list[Decision] = []
        self.source, self.output = self._reference(grad, self.decisions)
        self._graph = grad

    # --- the reference pass ------------------------------------------------------------------------

    def _reference(self, grad: bool, decisions: list[Decision]) -> tuple[Tensor, Tensor]:
        source: list[Tensor] = []
        with torch.enable_grad() if grad else torch.no_grad():
            with _interpretation(Mode.FROZEN, self.centering, decisions) as tracer:

                def replace(encoded: Tensor) -> Tensor:
                    if not source:
                        source.append(tracer.mark(as_leaf(encoded) if grad else encoded.detach()))
                        return source[0]
                    return encoded

                with substituted_input(self.model, replace) as encoding:
                    if encoding is None:
                        source.append(tracer.mark(as_leaf(self.x0) if grad else self.x0.clone()))
                        out = self.readout(self.model, source[0])
                    else:
                        out = self.readout(self.model, self.x0)
                if not isinstance(out, Tensor):
                    raise TypeError(f"the network must return one tensor of outputs, got {type(out).__name__}")
                if not source:
                    raise RuntimeError("the model's input encoding was not called during the forward pass")
                tracer.check_output(out)
        if out.dim() == 0 or out.shape[0] != self.x0.shape[0]:
            raise ValueError(
                f"the network returned outputs of shape {tuple(out.shape)} for {self.x0.shape[0]} inputs; the "
                "linear system needs batch-first outputs, one per input"
            )
        return source[0], out

    @property
    def num_inputs(self) -> int:
        return self.x0.shape[0]

    def rows(self, select: Callable[[Tensor], Tensor] | None = None) -> Tensor:
        """The rows of the frozen map for the explained outputs ``select(output)`` (``(N, K)``).

        Input gradients of every column, ``(N, K, *source.shape[1:])``; ``select=None`` takes the outputs
        as they are (they must then be ``(N, K)``).
        """
        self._need_graph()
        with torch.enable_grad():
            selected = self.output if select is None else select(self.output)
        k = selected.shape[1]
        eye = torch.eye(k, dtype=selected.dtype, device=selected.device)
        cotangents = [eye[j].expand_as(selected) for j in range(k)]
        return gradients_of(selected, self.source, cotangents).transpose(0, 1)

    def vjp(self, cotangents: Tensor) -> Tensor:
        """``F(x0)^T c`` for ``K`` output-domain blocks ``(K, N, *out_shape)`` (Eq. (6)): ``(K, N, *in_shape)``."""
        self._need_graph()
        return gradients_of(self.output, self.source, cotangents)

    def _need_graph(self) -> None:
        if not self._graph:
            # Recomputed once with autograd; the decisions of this pass equal the recorded ones.
            self.source, self.output = self._reference(True, [])
            self._graph = True

    # --- probe passes ------------------------------------------------------------------------------

    def probe(self, blocks: Tensor) -> Tensor:
        """``F(x0) x1 + r(x0)`` for ``K`` probe blocks ``(K, N, *in_shape)``: ``(K, N, *out_shape)`` (Eq. (5)).

        Differentiable with respect to ``blocks``.  Each block is a separate member of a ``torch.vmap``.
        """
        shape = tuple(self.source.shape)
        if blocks.dim() != len(shape) + 1 or tuple(blocks.shape[1:]) != shape:
            raise ValueError(f"probe blocks must have shape (K, *{shape}), got {tuple(blocks.shape)}")
        blocks = blocks.to(self.source.dtype)

        def one_block(block: Tensor) -> Tensor:
            with _interpretation(Mode.TWO_BATCH, self.centering, self.decisions) as tracer:
                return run_explained(self.model, self.x0, block, tracer, self.readout)

        try:
            return torch.vmap(one_block, randomness="error")(blocks)
        except (UninterpretableOperationError, DecisionMismatchError, ValueError, TypeError):
            raise
        except RuntimeError as err:
            if "vmap" not in str(err) and "Batching rule" not in str(err) and "batched" not in str(err):
                raise
            raise UninterpretableOperationError(
                "the probe pass could not run each probe block on its own (torch.vmap refused an operation of "
                f"the network: {str(err).splitlines()[0]}). Typical causes: an in-place write of input-dependent "
                "values into a tensor made from a fixed shape (use torch.zeros_like(activation)), randomness, "
                "or data-dependent control flow"
            ) from err

    def probe_each(self, blocks: Tensor, instrument: Callable[[int, LinearTracer], Any] | None = None) -> Tensor:
        """:meth:`probe`, one block at a time (no vmap), with ``instrument(k, tracer)`` entered around block ``k``.

        For instrumentation that needs concrete tensors (module hooks); slower than :meth:`probe`.
        """
        outs = []
        for k in range(blocks.shape[0]):
            with _interpretation(Mode.TWO_BATCH, self.centering, self.decisions) as tracer:
                with instrument(k, tracer) if instrument is not None else _nothing():
                    outs.append(run_explained(self.model, self.x0, blocks[k], tracer, self.readout))
        return torch.stack(outs)

    def residual(self) -> Tensor:
        """``r(x0)``: the output of the zero probe (Eq. (5))."""
        return self.probe(torch.zeros_like(self.source).unsqueeze(0))[0]

    # --- the self-check ----------------------------------------------------------------------------

    def check(
        self,
        rows: Tensor,
        select: Callable[[Tensor], Tensor],
        *,
        seed: int = 0,
        rtol: float | None = None,
        raise_on_failure: bool = True,
    ) -> tuple[CheckResult, Tensor]:
        """Check ``rows`` (``(N, K, *in_shape)``) against the probe run; returns the result and ``r(x0)``.

        ``select(outputs)`` picks the ``(N, K)`` explained outputs from the network's outputs.  For a random
        probe ``z`` (standard normal, so sign-mixed and independent of ``x0``) it compares
        ``<rows, z> + r(x0)`` with ``y1(z)`` and ``<rows, x0> + r(x0)`` with ``f(x0)``, each error relative to
        ``sum |rows * z| + |r| + |y1|``, the scale at which rounding enters.  ``rtol`` defaults to
        ``1000 eps`` of the dtype.  On failure raises :class:`SystemCheckError` naming the first module whose
        frozen and probe computations disagree (see :meth:`locate`).
        """
        z = self._random_probe(seed)
        with torch.no_grad():
            y = self.probe(torch.stack([torch.zeros_like(z), z]))
            r, y_z = select(y[0]), select(y[1])
            rows = rows.detach()
            x = self.source.detach()
            dot_z = (rows * z.unsqueeze(1)).flatten(2).sum(-1)
            scale_z = (rows * z.unsqueeze(1)).abs().flatten(2).sum(-1) + r.abs() + y_z.abs()
            dot_x = (rows * x.unsqueeze(1)).flatten(2).sum(-1)
            scale_x = (rows * x.unsqueeze(1)).abs().flatten(2).sum(-1) + r.abs()
            f0 = select(self.output.detach())
            scale_x = scale_x + f0.abs()
            tiny = torch.finfo(rows.dtype).tiny
            probe_error = float(((dot_z + r - y_z).abs() / scale_z.clamp_min(tiny)).max())
            completeness_error = float(((dot_x + r - f0).abs() / scale_x.clamp_min(tiny)).max())
        tol = rtol if rtol is not None else 1000 * torch.finfo(rows.dtype).eps
        bad = not (probe_error <= tol and completeness_error <= tol)  # NaN fails too
        result = CheckResult(not bad, probe_error, completeness_error, tol, seed)
        if bad and raise_on_failure:
            where = self.locate(seed=seed)
            raise SystemCheckError(
                "the explanation is not the network's own linear map: for a random probe z, <rows, z> + r(x0) "
                f"differs from the probe run y1(z) by {probe_error:.3g} (and <rows, x0> + r(x0) from f(x0) by "
                f"{completeness_error:.3g}) relative to the scale of the outputs, tolerance {tol:.3g}. {where} "
                "(pass check=False to skip this self-check)"
            )
        return result, r

    def _random_probe(self, seed: int) -> Tensor:
        """A standard normal probe, redrawn if it happens to be nearly parallel to an input (a seeded ``x0``)."""
        x = self.source.detach().flatten(1).to(torch.float64).cpu()
        for attempt in range(8):
            generator = torch.Generator(device="cpu").manual_seed(_PROBE_SEED + 7919 * seed + attempt)
            z = torch.randn(self.source.shape, generator=generator, dtype=torch.float64)
            cosine = torch.nn.functional.cosine_similarity(z.flatten(1), x, dim=1, eps=1e-30).abs()
            if float(cosine.max()) < 0.9:
                break
        return z.to(self.source.dtype).to(self.source.device)

    def locate(self, seed: int = 0) -> str:
        """Name the first module whose frozen and probe computations disagree (a sentence).

        Per leaf-module call, in call order: its output for the probe ``x1 = x0`` must equal its output in
        the reference pass, and its probe outputs must be affine in the probe
        (``o(z1 + z2) - o(0) = (o(z1) - o(0)) + (o(z2) - o(0))``).  If every module passes, images of one
        batch are coupled (an operation across the batch), which is reported instead.
        """
        reference = _ModuleRecorder(self.model)
        with reference.active():
            FrozenSystem(self.model, self.x0, centering=self.centering, grad=False, readout=self.readout)
        z1, z2 = self._random_probe(seed + 1), self._random_probe(seed + 2)
        x = self.source.detach()
        blocks = torch.stack([x, torch.zeros_like(x), z1, z2, z1 + z2])
        recorders = [_ModuleRecorder(self.model) for _ in range(len(blocks))]
        try:
            with torch.no_grad():
                self.probe_each(blocks, lambda k, tracer: recorders[k].active())
        except Exception as err:  # noqa: BLE001 - the diagnosis must not hide the check's own failure
            return f"Running the probes one module at a time failed too: {err}."
        for i, (name, ref_out) in enumerate(reference.calls):
            outs = [rec.calls[i][1] if i < len(rec.calls) else None for rec in recorders]
            if any(o is None or o.shape != ref_out.shape for o in outs):
                return f"Module '{name}' ran differently on the probe than on the reference input."
            same, zero, a, b, ab = (o.to(torch.float64) for o in outs)
            scale = float(ref_out.abs().max()) + float(ab.abs().max()) + 1e-30
            if float((same - ref_out.to(torch.float64)).abs().max()) > 1e-4 * scale:
                return (
                    f"The first module whose frozen and probe computations disagree is '{name}' "
                    f"({type(_module(self.model, name)).__name__}): its output for the probe x1 = x0 differs "
                    "from its output at x0."
                )
            if float(((ab - zero) - (a - zero) - (b - zero)).abs().max()) > 1e-4 * scale:
                return (
                    f"The first module whose frozen and probe computations disagree is '{name}' "
                    f"({type(_module(self.model, name)).__name__}): on the probe it is not affine in its input, "
                    "so it computes live instead of with decisions frozen at x0 (a non-linearity that does not "
                    "go through linearlens.engine.decide or a registered rule)."
                )
        if self.num_inputs > 1:
            return (
                "Every module is affine in the probe, so the images of the batch are coupled (an operation "
                "across the batch dimension, such as batch statistics or a mean over images); explain the "
                "images one at a time or remove the coupling."
            )
        return "No single module could be blamed."


_RECORDING: contextvars.ContextVar[object] = contextvars.ContextVar("linearlens_module_recorder", default=None)


class _ModuleRecorder:
    """Outputs of every leaf-module call, in order, while :meth:`active` (in this context only)."""

    def __init__(self, model: nn.Module) -> None:
        self.model = model
        self.calls: list[tuple[str, Tensor]] = []

    @contextmanager
    def active(self) -> Iterator[None]:
        def hook(name: str) -> Callable:
            def record(module: nn.Module, args: tuple, output: Any) -> None:
                if _RECORDING.get() is self:
                    for leaf in tree_flatten(output)[0]:
                        if isinstance(leaf, Tensor):
                            with torch._C.DisableTorchFunction():
                                self.calls.append((name, leaf.detach().clone()))

            return record

        handles = [
            m.register_forward_hook(hook(name))
            for name, m in self.model.named_modules()
            if next(m.children(), None) is None
        ]
        token = _RECORDING.set(self)
        try:
            yield
        finally:
            _RECORDING.reset(token)
            for h in handles:
                h.remove()


def _module(model: nn.Module, name: str) -> nn.Module:
    return dict(model.named_modules()).get(name, model)


@contextmanager
def _nothing() -> Iterator[None]:
    yield

