"""The linear interpreter of any network: ``[x0, x1] -> [f(x0), F(x0) x1 + r(x0)]`` (Eqs. (2), (5)).

:class:`LinearScope` fixes a batch of reference images ``x0`` and answers questions about the frozen
linear system ``y1 = F(x0) x1 + r(x0)`` of the network at those images, without materialising
``F`` and without storing activations: every forward question runs the network once on the batch
``[x0, x1_1, ..., x1_K]`` in the engine's ``TWO_BATCH`` mode, where each non-linear unit takes its
decision (mask, gain, selection, statistics) from the reference half and applies it to every probe
block (Fig. 1(c) and Fig. 2 of the linear-interpreter paper).  Activations are used on the fly and
released, as in a plain ``torch.no_grad()`` forward.

* :attr:`LinearScope.residual` is ``r(x0)``, the output for the probe ``x1 = 0``;
* :meth:`LinearScope.columns` are impulse responses ``F(x0) delta_k`` (the projective filters);
* :meth:`LinearScope.transpose_apply` is ``F(x0)^T y2`` by Eq. (6), and :meth:`LinearScope.rows`
  the receptive filters ``F(x0)^T delta_k``;
* :meth:`LinearScope.svd` gives eigen-inputs/outputs (:mod:`linearlens.interpret.svd`);
* :mod:`linearlens.interpret.decomposition` splits ``r(x0)`` into layer-wise contributions.

Everything is w.r.t. the *explained input*: the raw image, or the output of the network's first
:class:`~linearlens.engine.source.InputEncoding` (the 6-channel ``[x, 1-x]`` image of a B-cos
network, for which ``F(x0) = W(x0)``).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from contextlib import AbstractContextManager, nullcontext
from typing import Union

import torch
from torch import Tensor, nn

from ..engine.source import as_leaf, explained_input
from ..engine.state import Mode
from ..engine.tracer import LinearTracer, linear_interpretation
from ..validation import check_images

__all__ = ["LinearScope", "run_two_batch", "Indices"]

Indices = Union[int, Sequence[int], Tensor]
Instrument = Callable[[LinearTracer], AbstractContextManager]


def run_two_batch(
    model: nn.Module,
    x0: Tensor,
    blocks: Tensor | None = None,
    *,
    centering: str = "frozen",
    instrument: Instrument | None = None,
) -> tuple[Tensor, Tensor]:
    """Run ``model`` on ``[x0, x1_1, ..., x1_K]`` as the two-batch system of Eq. (5).

    ``x0`` are the ``N`` reference images (raw network input); ``blocks`` are ``K`` probe blocks of
    shape ``(K, N, *explained_input_shape)`` substituted for the explained input of the probe half
    (``None``: one block of zeros, i.e. the residual probe).  ``instrument(tracer)``, if given, is
    a context manager entered around the forward pass (used to hook modules, e.g. by the residual
    decomposition).  Returns ``(outputs, source)``: the network outputs for the whole
    ``(K + 1) N`` batch, whose first ``N`` are ``f(x0)`` and block ``k`` is ``F(x0) x1_k + r(x0)``,
    and the explained input of the whole batch.  Differentiable w.r.t. ``blocks`` if they require
    grad.
    """
    n = x0.shape[0]
    k = 1 if blocks is None else blocks.shape[0]
    if blocks is not None and (blocks.dim() < 2 or blocks.shape[1] != n):
        raise ValueError(f"probe blocks must have shape (K, N={n}, ...), got {tuple(blocks.shape)}")

    with linear_interpretation(Mode.TWO_BATCH, reference_size=n, centering=centering) as tracer:

        def prepare(t: Tensor) -> Tensor:
            reference = t[:n]
            if blocks is None:
                probes = torch.zeros_like(reference)
            else:
                if tuple(blocks.shape[2:]) != tuple(reference.shape[1:]):
                    raise ValueError(
                        f"probe images have shape {tuple(blocks.shape[2:])}, but the explained input of "
                        f"this network has shape {tuple(reference.shape[1:])}"
                    )
                probes = blocks.to(reference.dtype).flatten(0, 1)
            return tracer.mark(torch.cat([reference, probes]))

        with explained_input(model, prepare) as feed:
            fed, holder = feed(x0.repeat(k + 1, *[1] * (x0.dim() - 1)))
            with instrument(tracer) if instrument is not None else nullcontext():
                outputs = model(fed)
    if not isinstance(outputs, Tensor):
        raise TypeError(f"the network must return one tensor, got {type(outputs).__name__}")
    if holder.value is None:
        raise RuntimeError("the model's input encoding was not called during the forward pass")
    if outputs.shape[0] != (k + 1) * n:
        raise RuntimeError(
            f"the network returned a batch of {outputs.shape[0]} for an input batch of {(k + 1) * n}; "
            "the linear interpreter needs batch-first outputs, one per input"
        )
    return outputs, holder.value


class LinearScope:
    """The linear interpreter ``y1 = F(x0) x1 + r(x0)`` of ``model`` at reference images ``x0``.

    Args:
        model: any PyTorch image network in eval mode (residual additions, concatenations and
            functional calls included); operations it cannot interpret raise
            :class:`~linearlens.engine.UninterpretableOperationError` naming the operation.
        x0: reference images ``(N, C, H, W)``; all answers are per image (``F`` is block diagonal).
        centering: how normalisations with input statistics (instance, group, layer norm) are
            frozen.  ``"frozen"`` (Fig. 2): mean and standard deviation are both frozen at ``x0``,
            so ``-mean/std`` (times the norm's weight) is a constant and goes into ``r(x0)``.
            ``"linear"``: the mean subtraction stays the linear map it is and only the scale is
            frozen, so the mean contributes nothing to ``r(x0)``.  Batch norm in eval mode is affine
            either way (its running mean goes into ``r``).
        chunk_size: number of probe blocks (each of ``N`` images) run in one pass.

    Shapes: probes and answers are ``(N, K, ...)``: image first, then ``K`` probes per image.
    """

    def __init__(
        self, model: nn.Module, x0: Tensor, *, centering: str = "frozen", chunk_size: int = 16
    ) -> None:
        x0 = check_images(x0, "x0")
        if centering not in ("frozen", "linear"):
            raise ValueError(f"centering must be 'frozen' or 'linear', got {centering!r}")
        if not isinstance(chunk_size, int) or chunk_size < 1:
            raise ValueError(f"chunk_size must be a positive int, got {chunk_size!r}")
        self.model, self.x0, self.centering, self.chunk_size = model, x0.detach(), centering, chunk_size
        n = x0.shape[0]
        with torch.no_grad():
            outputs, source = run_two_batch(model, self.x0, centering=centering)
        self.output: Tensor = outputs[:n]
        """``f(x0)``, ``(N, *out_shape)``."""
        self.residual: Tensor = outputs[n:]
        """``r(x0)``: the interpreter's output for the probe ``x1 = 0`` (Eq. (5)), ``(N, *out_shape)``."""
        self.source: Tensor = source[:n].detach()
        """The explained input at ``x0`` (the raw images, or the input encoding's output)."""

    # --- shapes and indices ---------------------------------------------------------------------

    @property
    def num_images(self) -> int:
        return self.x0.shape[0]

    @property
    def in_shape(self) -> tuple[int, ...]:
        """Shape of one explained input (without the batch dimension)."""
        return tuple(self.source.shape[1:])

    @property
    def out_shape(self) -> tuple[int, ...]:
        """Shape of one output (without the batch dimension)."""
        return tuple(self.output.shape[1:])

    @property
    def in_features(self) -> int:
        """``n``: the number of columns of ``F(x0)``."""
        return math.prod(self.in_shape)

    @property
    def out_features(self) -> int:
        """The number of rows of ``F(x0)``."""
        return math.prod(self.out_shape)

    def input_index(self, *position: int) -> int:
        """Flat input index of a position such as ``(channel, row, column)``."""
        return _ravel(position, self.in_shape)

    def output_index(self, *position: int) -> int:
        """Flat output index of a position such as ``(channel, row, column)`` or ``(class,)``."""
        return _ravel(position, self.out_shape)

    def select(self, index: int) -> LinearScope:
        """The interpreter of image ``index`` alone (``N = 1``)."""
        scope = object.__new__(LinearScope)
        scope.model, scope.centering, scope.chunk_size = self.model, self.centering, self.chunk_size
        sl = slice(index, index + 1 if index != -1 else None)
        scope.x0, scope.output = self.x0[sl], self.output[sl]
        scope.residual, scope.source = self.residual[sl], self.source[sl]
        if scope.x0.shape[0] != 1:
            raise IndexError(f"image index {index} out of range for {self.num_images} images")
        return scope

    # --- the forward system ---------------------------------------------------------------------

    def system(self, x1: Tensor) -> Tensor:
        """``y1 = F(x0) x1 + r(x0)`` for probes ``x1`` of shape ``(N, *in_shape)`` or ``(N, K, *in_shape)``."""
        probes, single = self._as_blocks(x1, self.in_shape, "x1")
        out = self._forward_blocks(probes)
        return out[0] if single else out.transpose(0, 1)

    def apply(self, x1: Tensor, residual: bool = False) -> Tensor:
        """``F(x0) x1`` (plus ``r(x0)`` if ``residual``): Eq. (5) with the residual removed."""
        y1 = self.system(x1)
        if residual:
            return y1
        r = self.residual if y1.dim() == self.residual.dim() else self.residual.unsqueeze(1)
        return y1 - r

    def columns(self, indices: Indices) -> Tensor:
        """Columns ``F(x0) delta_k`` (impulse responses, the projective filters), ``(N, K, *out_shape)``.

        ``indices`` are flat indices into one explained input (see :meth:`input_index`).
        """
        idx = _flat_indices(indices, self.in_features, "input")
        outs = []
        for chunk in idx.split(self.chunk_size):
            probes = self.source.new_zeros(len(chunk), self.num_images, self.in_features)
            probes[torch.arange(len(chunk)), :, chunk] = 1
            outs.append(self._forward_blocks(probes.unflatten(2, self.in_shape)) - self.residual)
        return torch.cat(outs).transpose(0, 1)

    def _forward_blocks(self, blocks: Tensor) -> Tensor:
        """``F(x0) x1 + r(x0)`` for ``(K, N, *in_shape)`` blocks, in chunks; ``(K, N, *out_shape)``."""
        n = self.num_images
        outs = []
        with torch.no_grad():
            for chunk in blocks.split(self.chunk_size):
                outputs, _ = run_two_batch(self.model, self.x0, chunk, centering=self.centering)
                outs.append(outputs[n:].unflatten(0, (chunk.shape[0], n)))
        return torch.cat(outs)

    # --- the transposed system (Eq. (6)) --------------------------------------------------------

    def transpose_apply(self, y2: Tensor) -> Tensor:
        """``F(x0)^T y2`` for output-domain images ``(N, *out_shape)`` or ``(N, K, *out_shape)`` (Eq. (6)).

        Computed as the input gradient of ``<f(x), y2>`` through the frozen network (``Mode.FROZEN``,
        the mechanism of :func:`linearlens.explain.linear.linear_explanation`), with the reference
        images repeated so that ``K`` back-projections share one backward pass.
        """
        cot, single = self._as_blocks(y2, self.out_shape, "y2")
        outs = [self._transpose_blocks(chunk) for chunk in cot.split(self.chunk_size)]
        out = torch.cat(outs)
        return out[0] if single else out.transpose(0, 1)

    def rows(self, indices: Indices) -> Tensor:
        """Rows ``F(x0)^T delta_k`` (the receptive filters), ``(N, K, *in_shape)``.

        ``indices`` are flat indices into one output (see :meth:`output_index`).
        """
        idx = _flat_indices(indices, self.out_features, "output")
        outs = []
        for chunk in idx.split(self.chunk_size):
            cot = self.output.new_zeros(len(chunk), self.num_images, self.out_features)
            cot[torch.arange(len(chunk)), :, chunk] = 1
            outs.append(self._transpose_blocks(cot.unflatten(2, self.out_shape)))
        return torch.cat(outs).transpose(0, 1)

    def _transpose_blocks(self, cot: Tensor) -> Tensor:
        k = cot.shape[0]
        with torch.enable_grad(), linear_interpretation(Mode.FROZEN, centering=self.centering) as tracer:
            with explained_input(self.model, lambda t: tracer.mark(as_leaf(t))) as feed:
                fed, holder = feed(self.x0.repeat(k, *[1] * (self.x0.dim() - 1)))
                out = self.model(fed)
        (grad,) = torch.autograd.grad(out, holder.value, cot.flatten(0, 1).to(out.dtype), allow_unused=True)
        if grad is None:
            grad = torch.zeros_like(holder.value)
        return grad.unflatten(0, (k, self.num_images))

    # --- both directions at once ----------------------------------------------------------------

    def normal_apply(self, v: Tensor) -> tuple[Tensor, Tensor]:
        """``(F v, F^T F v)`` for ``v`` of shape ``(N, K, *in_shape)``: one two-batch pass and its backward.

        ``F v = y1(v) - r`` and ``F^T (F v) = grad_v <y1(v), F v>`` (Eq. (6)), as in lines 3-4 of
        Alg. 1.  This is the operator behind both SVD methods.
        """
        blocks, single = self._as_blocks(v, self.in_shape, "v")
        n = self.num_images
        fv, ftfv = [], []
        for chunk in blocks.split(self.chunk_size):
            with torch.enable_grad():
                leaf = as_leaf(chunk)
                outputs, _ = run_two_batch(self.model, self.x0, leaf, centering=self.centering)
                y1 = outputs[n:].unflatten(0, (chunk.shape[0], n))
                u = (y1 - self.residual).detach()
                (g,) = torch.autograd.grad(y1, leaf, u, allow_unused=True)
            fv.append(u)
            ftfv.append(torch.zeros_like(leaf) if g is None else g)
        fv_t, ftfv_t = torch.cat(fv), torch.cat(ftfv)
        if single:
            return fv_t[0], ftfv_t[0]
        return fv_t.transpose(0, 1), ftfv_t.transpose(0, 1)

    def materialize(self) -> Tensor:
        """The dense filter matrices ``F(x0)``, ``(N, out_features, in_features)``, from all columns.

        Only sensible for small networks: it costs ``in_features`` impulse responses.
        """
        cols = self.columns(torch.arange(self.in_features))
        return cols.flatten(2).transpose(1, 2)

    def svd(self, k: int = 8, image: int = 0, method: str = "krylov", **options):
        """Top-``k`` singular values with eigen-inputs and eigen-outputs of ``F(x0)`` for one image.

        ``method="krylov"`` (ARPACK Lanczos on ``F^T F``) or ``"power"`` (Alg. 1 with deflation);
        see :mod:`linearlens.interpret.svd`.
        """
        from .svd import svd as _svd

        return _svd(self.select(image) if self.num_images > 1 else self, k, method=method, **options)

    # --- helpers --------------------------------------------------------------------------------

    def _as_blocks(self, t: Tensor, shape: tuple[int, ...], name: str) -> tuple[Tensor, bool]:
        """``(N, *shape)`` or ``(N, K, *shape)`` -> ``(K, N, *shape)`` blocks, and whether it was single."""
        if not isinstance(t, Tensor):
            raise TypeError(f"{name} must be a tensor, got {type(t).__name__}")
        n = self.num_images
        if tuple(t.shape) == (n, *shape):
            return t.unsqueeze(0), True
        if t.dim() == len(shape) + 2 and t.shape[0] == n and tuple(t.shape[2:]) == shape:
            return t.transpose(0, 1), False
        raise ValueError(f"{name} must have shape (N, *{shape}) or (N, K, *{shape}) with N = {n}, got {tuple(t.shape)}")

    def __repr__(self) -> str:
        return (
            f"LinearScope({type(self.model).__name__}, images={self.num_images}, in_shape={self.in_shape}, "
            f"out_shape={self.out_shape}, centering={self.centering!r})"
        )


def _ravel(position: Sequence[int], shape: tuple[int, ...]) -> int:
    if len(position) != len(shape):
        raise ValueError(f"a position needs {len(shape)} coordinates for shape {shape}, got {tuple(position)}")
    flat = 0
    for p, s in zip(position, shape):
        if not 0 <= p < s:
            raise IndexError(f"position {tuple(position)} is out of range for shape {shape}")
        flat = flat * s + int(p)
    return flat


def _flat_indices(indices: Indices, size: int, what: str) -> Tensor:
    idx = torch.as_tensor(indices, dtype=torch.long).reshape(-1)
    if idx.numel() == 0:
        raise ValueError(f"no {what} indices given")
    bad = (idx < 0) | (idx >= size)
    if bad.any():
        raise IndexError(f"{what} index {int(idx[bad][0])} is out of range for {size} {what} values per image")
    return idx
