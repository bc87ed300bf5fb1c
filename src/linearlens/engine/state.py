"""Interpretation state and the one primitive every frozen interpretation is built from: :func:`decide`.

A non-linear unit ``h`` is interpreted at a reference input ``x0`` as an affine map
``y1 = A(x0) x1 + c(x0)`` (Eq. (2) of the linear-interpreter paper).  In linearlens every such
interpretation is written as ordinary tensor code in which the input-dependent factors ``A(x0)``
and ``c(x0)`` are produced by :func:`decide`.  What :func:`decide` returns depends on the active
mode, and that is the whole mechanism:

``LIVE``
    the factor is an ordinary differentiable function of the input (training, plain inference);
``FROZEN``
    the factor is computed from the detached input, so that autograd sees the frozen, linear
    system.  The value of the output is unchanged, and its input gradient is exactly the row of
    ``W(x)`` (Eqs. (13)-(14) of the B-cos paper) or of ``F(x0)`` (Eq. (6) of the linear-interpreter
    paper);
``TWO_BATCH``
    the batch is ``[x0, x1]`` and the factor is computed from the reference half ``x0`` only, then
    applied to both halves: ``[y0, y1] = [h(x0), A(x0) x1 + c(x0)]`` (Eqs. (2) and (5) of the
    linear-interpreter paper).  The probe part may hold ``k`` probes per reference sample,
    laid out as ``k`` consecutive blocks of ``N`` (``[x0, x1_1, ..., x1_k]``); the decisions of
    the reference block are repeated for every block.

A B-cos layer's dynamic scale ``|cos(x, w)|^(B-1)``, a ReLU mask, a max-pool selection and a
normalisation statistic are all decisions in this sense.
"""

from __future__ import annotations

import enum
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import torch
from torch import Tensor

__all__ = ["Mode", "decide", "current_mode", "interpretation_state", "InterpretationState"]


class Mode(enum.Enum):
    """How :func:`decide` treats input-dependent factors (see the module docstring)."""

    LIVE = "live"
    FROZEN = "frozen"
    TWO_BATCH = "two_batch"


@dataclass
class InterpretationState:
    """The thread-local state read by :func:`decide` and by the tracer.

    ``reference_size`` is the size of the reference half ``x0`` in ``TWO_BATCH`` mode.
    ``centering`` says how normalisation layers with input statistics are frozen: ``"frozen"``
    freezes mean and scale, so ``-mean/std`` enters the residual (Fig. 2 of the linear-interpreter
    paper); ``"linear"`` keeps mean subtraction as the linear operation it is and freezes only the
    scale, so the mean contributes nothing to the residual.
    """

    mode: Mode = Mode.LIVE
    reference_size: int = 0
    centering: str = "frozen"
    deciding: int = 0


_local = threading.local()


def _state() -> InterpretationState:
    state = getattr(_local, "state", None)
    if state is None:
        state = InterpretationState()
        _local.state = state
    return state


def current_mode() -> Mode:
    """The interpretation mode active in this thread."""
    return _state().mode


@contextmanager
def interpretation_state(
    mode: Mode, reference_size: int = 0, centering: str = "frozen"
) -> Iterator[InterpretationState]:
    """Set the interpretation mode for the duration of a ``with`` block (restored afterwards)."""
    if centering not in ("frozen", "linear"):
        raise ValueError(f"centering must be 'frozen' or 'linear', got {centering!r}")
    if mode is Mode.TWO_BATCH and reference_size < 1:
        raise ValueError("TWO_BATCH mode needs the size of the reference half (reference_size >= 1)")
    previous = _state()
    state = InterpretationState(mode=mode, reference_size=reference_size, centering=centering)
    _local.state = state
    try:
        yield state
    finally:
        _local.state = previous


def _reference(t: Tensor, state: InterpretationState) -> Tensor:
    if state.mode is Mode.TWO_BATCH:
        n = state.reference_size
        if t.shape[0] < 2 * n or t.shape[0] % n:
            raise RuntimeError(
                f"a decision was asked of a tensor with batch size {t.shape[0]}, but the two-batch "
                f"system runs the {n} reference samples followed by k x {n} probes; pass only "
                "batch-first activations to decide() and capture parameters in the closure"
            )
        return t[:n].detach()
    return t.detach()


def _broadcast(value, state: InterpretationState, copies: int):
    if isinstance(value, Tensor):
        if state.mode is Mode.TWO_BATCH:
            return value.repeat(copies, *[1] * (value.dim() - 1))
        return value
    if isinstance(value, (tuple, list)):
        return type(value)(_broadcast(v, state, copies) for v in value)
    raise TypeError(f"a decision must return tensors, got {type(value).__name__}")


def decide(fn: Callable[..., Tensor], *activations: Tensor):
    """Evaluate the input-dependent factor ``fn(*activations)`` of a frozen interpretation.

    ``activations`` are batch-first tensors that depend on the network input; parameters belong in
    ``fn``'s closure.  In ``LIVE`` mode this is just ``fn(*activations)``.  In ``FROZEN`` mode the
    factor is computed without gradient from the detached activations; in ``TWO_BATCH`` mode from
    the reference half ``x0`` and repeated for both halves.  In both frozen modes the result is a
    constant of the linear system ``x1 -> A(x0) x1 + c(x0)`` (Eq. (2) of the linear-interpreter
    paper), which is what makes ``f(x) = W(x) x`` hold exactly for autograd.
    """
    state = _state()
    if state.mode is Mode.LIVE:
        return fn(*activations)
    state.deciding += 1
    try:
        with torch.no_grad():
            refs = [_reference(a, state) for a in activations]
            copies = activations[0].shape[0] // state.reference_size if state.mode is Mode.TWO_BATCH else 1
            value = _broadcast(fn(*refs), state, copies)
    finally:
        state.deciding -= 1
    return value


def is_deciding() -> bool:
    """True while a decision is being computed (the tracer lets every operation through then)."""
    return _state().deciding > 0


def current_state() -> InterpretationState:
    """The interpretation state active in this thread."""
    return _state()
