"""The interpretation state and the one primitive every frozen interpretation is built from: :func:`decide`.

A non-linear unit ``h`` is interpreted at a reference input ``x0`` as an affine map
``y1 = A(x0) x1 + c(x0)`` (Eq. (2) of the linear-interpreter paper).  In linearlens every such
interpretation is written as ordinary tensor code in which the input-dependent factors ``A(x0)``
and ``c(x0)`` are produced by :func:`decide`.  What :func:`decide` returns depends on the mode of
the active :class:`Interpretation`, and that is the whole mechanism:

``LIVE``
    the factor is an ordinary differentiable function of the input (training, plain inference);
``FROZEN``
    the *reference pass*: the factor is computed from the detached input, so autograd sees the frozen,
    linear system.  The value of the output is unchanged, and its input gradient is exactly the row of
    ``W(x)`` (Eqs. (13)-(14) of the B-cos paper) or of ``F(x0)`` (Eq. (6) of the linear-interpreter
    paper).  Every decision is recorded, in call order, so that probes can replay it;
``TWO_BATCH``
    the *probe pass* ``x1 -> F(x0) x1 + r(x0)`` (Eqs. (2) and (5) of the linear-interpreter paper):
    every decision is the one recorded at ``x0``, replayed in the same order, and the activations of the
    probe are only checked to have the reference's shape.  A decision is therefore never computed from
    a probe, and the probe blocks run as separate members of a ``torch.vmap`` (see
    :mod:`linearlens.engine.system`), so no operation can mix one probe block with another.

The state lives in a :class:`contextvars.ContextVar`: each thread (and each asyncio task) has its own,
two threads explaining the same model do not see each other's decisions, and a nested interpretation
suspends the enclosing one until it ends.  Rules receive the state as an argument; layer code, which
has no tracer to be handed the state by, calls the module-level :func:`decide`.
"""

from __future__ import annotations

import contextvars
import enum
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

__all__ = [
    "Mode", "Interpretation", "Decision", "decide", "current_mode", "current_state", "interpretation_state",
    "DecisionMismatchError",
]


class Mode(enum.Enum):
    """How :func:`decide` treats input-dependent factors (see the module docstring)."""

    LIVE = "live"
    FROZEN = "frozen"
    TWO_BATCH = "two_batch"


class DecisionMismatchError(RuntimeError):
    """A probe pass asked for a decision the reference pass did not take at that point."""


@dataclass
class Decision:
    """One recorded decision: its value and where it was taken (the function and the activation shapes)."""

    value: Any
    site: object
    shapes: tuple[tuple[int, ...], ...]


def _site(fn: Callable) -> object:
    """What identifies a call site of :func:`decide`: the code object of ``fn`` (lambdas made per call share it)."""
    target = getattr(fn, "__func__", fn)
    return getattr(target, "__code__", target)


def _describe(site: object) -> str:
    code = site if hasattr(site, "co_name") else None
    if code is not None:
        return f"{code.co_name} ({code.co_filename.rsplit('/', 1)[-1]}:{code.co_firstlineno})"
    return getattr(site, "__name__", repr(site))


@dataclass
class Interpretation:
    """The state read by :func:`decide` and by the tracer's rules.

    ``centering`` says how normalisation layers with input statistics are frozen: ``"frozen"`` freezes
    mean and scale, so ``-mean/std`` enters the residual (Fig. 2 of the linear-interpreter paper);
    ``"linear"`` keeps mean subtraction as the linear operation it is and freezes only the scale.
    ``record`` (FROZEN) collects the decisions of a reference pass; ``replay`` (TWO_BATCH) holds the
    decisions a probe pass takes, ``cursor`` the next one.
    """

    mode: Mode = Mode.LIVE
    centering: str = "frozen"
    record: list[Decision] | None = None
    replay: list[Decision] | None = None
    cursor: int = 0
    deciding: int = 0
    owner: object = None

    def decide(self, fn: Callable[..., Any], *activations: Tensor) -> Any:
        """Evaluate the input-dependent factor ``fn(*activations)`` of a frozen interpretation.

        ``activations`` are batch-first tensors that depend on the network input; parameters belong in
        ``fn``'s closure.  LIVE: ``fn(*activations)``.  FROZEN: computed without gradient from the detached
        activations (and recorded).  TWO_BATCH: the decision recorded at the reference input, replayed.
        In both frozen modes the result is a constant of the linear system ``x1 -> A(x0) x1 + c(x0)``
        (Eq. (2) of the linear-interpreter paper), which is what makes ``f(x) = W(x) x`` exact for autograd.
        """
        if self.mode is Mode.LIVE:
            return fn(*activations)
        if self.mode is Mode.TWO_BATCH:
            return self._replayed(fn, activations)
        self.deciding += 1
        try:
            with torch.no_grad():
                value = fn(*(a.detach() for a in activations))
        finally:
            self.deciding -= 1
        _check_value(value)
        if self.record is not None:
            self.record.append(Decision(value, _site(fn), tuple(tuple(a.shape) for a in activations)))
        return value

    def _replayed(self, fn: Callable, activations: tuple[Tensor, ...]) -> Any:
        if self.replay is None:
            raise RuntimeError("a TWO_BATCH interpretation needs the decisions of a reference pass to replay")
        site, shapes = _site(fn), tuple(tuple(a.shape) for a in activations)
        if self.cursor >= len(self.replay):
            raise DecisionMismatchError(
                f"the probe pass took more decisions than the reference pass ({len(self.replay)}); decision "
                f"{_describe(site)} has no reference. The network's control flow depends on its input, so its "
                "frozen system at x0 cannot be replayed"
            )
        recorded = self.replay[self.cursor]
        if recorded.site is not site or recorded.shapes != shapes:
            raise DecisionMismatchError(
                f"decision {self.cursor} of the probe pass ({_describe(site)}, activations {list(shapes)}) is not "
                f"the one the reference pass took there ({_describe(recorded.site)}, {list(recorded.shapes)}); the "
                "network's control flow or shapes depend on its input, so its frozen system cannot be replayed"
            )
        self.cursor += 1
        return recorded.value

    @property
    def is_deciding(self) -> bool:
        """True while a decision is being computed (the tracer lets every operation through then)."""
        return self.deciding > 0


def _check_value(value: Any) -> None:
    if isinstance(value, Tensor):
        return
    if isinstance(value, (tuple, list)):
        for v in value:
            _check_value(v)
        return
    raise TypeError(f"a decision must return tensors, got {type(value).__name__}")


_LIVE = Interpretation()
_CURRENT: contextvars.ContextVar[Interpretation] = contextvars.ContextVar("linearlens_interpretation", default=_LIVE)


def current_state() -> Interpretation:
    """The interpretation active in this context (thread / task)."""
    return _CURRENT.get()


def current_mode() -> Mode:
    """The interpretation mode active in this context."""
    return _CURRENT.get().mode


def decide(fn: Callable[..., Any], *activations: Tensor) -> Any:
    """:meth:`Interpretation.decide` of the interpretation active in this context (for layer code)."""
    return _CURRENT.get().decide(fn, *activations)


@contextmanager
def interpretation_state(
    mode: Mode,
    centering: str = "frozen",
    *,
    record: list[Decision] | None = None,
    replay: list[Decision] | None = None,
    owner: object = None,
) -> Iterator[Interpretation]:
    """Make a new :class:`Interpretation` the active one for a ``with`` block (the previous one is restored).

    FROZEN records into ``record`` if given; TWO_BATCH needs ``replay``, the decisions of a reference pass.
    """
    if centering not in ("frozen", "linear"):
        raise ValueError(f"centering must be 'frozen' or 'linear', got {centering!r}")
    if not isinstance(mode, Mode):
        raise TypeError(f"mode must be a linearlens.engine.Mode, got {mode!r}")
    if mode is Mode.TWO_BATCH and replay is None:
        raise ValueError(
            "TWO_BATCH mode replays the decisions of a reference pass: pass replay=<decisions recorded in FROZEN "
            "mode>, or use linearlens.engine.FrozenSystem, which does both"
        )
    state = Interpretation(mode=mode, centering=centering, record=record, replay=replay, owner=owner)
    token = _CURRENT.set(state)
    try:
        yield state
    finally:
        _CURRENT.reset(token)


def is_deciding() -> bool:
    """True while a decision is being computed in this context."""
    return _CURRENT.get().deciding > 0

