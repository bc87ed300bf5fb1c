"""The linear interpreter of any network: ``[x0, x1] -> [f(x0), F(x0) x1 + r(x0)]`` (Eqs. (2), (5)).

:class:`LinearScope` fixes a batch of reference images ``x0`` and answers questions about the frozen
linear system ``y1 = F(x0) x1 + r(x0)`` of the network at those images, without materialising
``F``: the network's reference pass at ``x0`` records every decision (mask, gain, selection,
statistics, attention) once, and every forward question replays them on probe blocks ``x1_1, ..., x1_K``
(Fig. 1(c) and Fig. 2 of the linear-interpreter paper), each block computed on its own
(:class:`~linearlens.engine.FrozenSystem`).  By default a random probe checks, at construction, that
the transposed system (gradients of the reference pass) and the probe system are the same map.

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
from collections.abc import Sequence
from typing import Union

import torch
from torch import Tensor, nn

from ..engine.source import as_leaf
from ..engine.system import CheckResult, FrozenSystem
from ..validation import check_images, check_input_dtype

__all__ = ["LinearScope", "run_two_batch", "Indices"]

Indices = Union[int, Sequence[int], Tensor]


def run_two_batch(
    model: nn.Module, x0: Tensor, blocks: Tensor | None = None, *, centering: str = "frozen"
) -> tuple[Tensor, Tensor]:
    """The two-batch system of Eq. (5): ``[x0, x1_1, ..., x1_K] -> [f(x0), F(x0) x1_k + r(x0)]``.

    ``x0`` are the ``N`` reference images (raw network input); ``blocks`` are ``K`` probe blocks of
    shape ``(K, N, *explained_input_shape)`` (``None``: one block of zeros, the residual probe).
    Returns ``(outputs, source)`` laid out as the stacked batch: the first ``N`` outputs are ``f(x0)``
    and block ``k`` is ``F(x0) x1_k + r(x0)``; ``source`` is the explained input of the whole batch.
    Differentiable with respect to ``blocks``.
    """
    system = FrozenSystem(model, check_images(x0, "x0"), centering=centering, grad=False)
    if blocks is None:
        blocks = torch.zeros_like(system.source).unsqueeze(0)
    if blocks.dim() < 2 or blocks.shape[1] != x0.shape[0]:
        raise ValueError(f"probe blocks must have shape (K, N={x0.shape[0]}, ...), got {tuple(blocks.shape)}")
    y = system.probe(blocks)
    outputs = torch.cat([system.output.to(y.dtype), y.flatten(0, 1)])
    return outputs, torch.cat([system.source.to(blocks.dtype), blocks.flatten(0, 1)])


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
        self, model: nn.Module, x0: Tensor, *, centering: str = "frozen", chunk_size: int = 16, check: bool = True
    ) -> None:
        x0 = check_input_dtype(model, check_images(x0, "x0"), "x0")
        if centering not in ("frozen", "linear"):
            raise ValueError(f"centering must be 'frozen' or 'linear', got {centering!r}")
        if not isinstance(chunk_size, int) or chunk_size < 1:
            raise ValueError(f"chunk_size must be a positive int, got {chunk_size!r}")
        self.model, self.x0, self.centering, self.chunk_size = model, x0.detach(), centering, chunk_size
        self._system = FrozenSystem(model, self.x0, centering=centering, grad=check)
        self.output: Tensor = self._system.output.detach()
        """``f(x0)``, ``(N, *out_shape)``."""
        self.source: Tensor = self._system.source.detach()
        """The explained input at ``x0`` (the raw images, or the input encoding's output)."""
        self.check_result: CheckResult | None = None
        """The self-check of the adjoint identity ``<F^T c, z> = <c, y1(z) - r>`` (``None`` if skipped)."""
        if check:
            c = torch.randn(self.output.shape, generator=torch.Generator().manual_seed(1), dtype=self.output.dtype)
            rows = self._system.vjp(c.unsqueeze(0)).transpose(0, 1)

            def along_c(outputs: Tensor) -> Tensor:
                return (outputs * c).flatten(1).sum(1, keepdim=True)

            self.check_result, _ = self._system.check(rows, along_c)
        with torch.no_grad():
            self.residual: Tensor = self._system.residual()
        """``r(x0)``: the interpreter's output for the probe ``x1 = 0`` (Eq. (5)), ``(N, *out_shape)``."""

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
        if not -self.num_images <= index < self.num_images:
            raise IndexError(f"image index {index} out of range for {self.num_images} images")
        index %= self.num_images
        return LinearScope(
            self.model, self.x0[index : index + 1], centering=self.centering, chunk_size=self.chunk_size, check=False
        )

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
        with torch.no_grad():
            return torch.cat([self._system.probe(chunk) for chunk in blocks.split(self.chunk_size)])

    # --- the transposed system (Eq. (6)) --------------------------------------------------------

    def transpose_apply(self, y2: Tensor) -> Tensor:
        """``F(x0)^T y2`` for output-domain images ``(N, *out_shape)`` or ``(N, K, *out_shape)`` (Eq. (6)).

        Computed as input gradients of ``<f(x), y2>`` through the reference pass of the frozen network
        (the mechanism of :func:`linearlens.explain.linear.linear_explanation`), one backward pass per
        output-domain image.
        """
        cot, single = self._as_blocks(y2, self.out_shape, "y2")
        out = self._system.vjp(cot).detach()
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
            outs.append(self._system.vjp(cot.unflatten(2, self.out_shape)).detach())
        return torch.cat(outs).transpose(0, 1)

    # --- both directions at once ----------------------------------------------------------------

    def normal_apply(self, v: Tensor) -> tuple[Tensor, Tensor]:
        """``(F v, F^T F v)`` for ``v`` of shape ``(N, K, *in_shape)``: one two-batch pass and its backward.

        ``F v = y1(v) - r`` and ``F^T (F v) = grad_v <y1(v), F v>`` (Eq. (6)), as in lines 3-4 of
        Alg. 1.  This is the operator behind both SVD methods.
        """
        blocks, single = self._as_blocks(v, self.in_shape, "v")
        fv, ftfv = [], []
        for chunk in blocks.split(self.chunk_size):
            with torch.enable_grad():
                leaf = as_leaf(chunk)
                y1 = self._system.probe(leaf)
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
