"""Data-parallel training and sharded evaluation under ``torchrun`` (one process per device).

Nothing here changes a single-process run: without ``torchrun``'s environment (``WORLD_SIZE`` unset or
1) the context is rank 0 of 1 and every helper is the identity.  Under ``torchrun`` the process group
is initialised from the environment (``gloo`` on CPU, ``nccl`` on CUDA), training wraps the model in
:class:`~torch.nn.parallel.DistributedDataParallel` and feeds each rank its shard of every epoch
through a :class:`~torch.utils.data.DistributedSampler`; evaluations shard their items the same way
and gather the per-item results back into the original order, so a sharded evaluation produces the
same numbers as an unsharded one.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import torch
import torch.distributed as dist
from torch import Tensor, nn
from torch.utils.data import DistributedSampler

from .precision import PRECISIONS, autocast_for

__all__ = [
    "DistributedContext", "resolve_device", "distributed", "shard_indices", "gather_rows", "all_reduce_sum",
    "autocast", "wrap_model", "run_sharded", "PRECISIONS",
]


@dataclass(frozen=True)
class DistributedContext:
    """Where this process stands: its rank among ``world_size`` processes and its device."""

    rank: int = 0
    world_size: int = 1
    device: torch.device = torch.device("cpu")

    @property
    def is_distributed(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def resolve_device(device: str | None = "auto", local_rank: int = 0) -> torch.device:
    """``"auto"`` (CUDA if available, else CPU), ``"cpu"``, ``"cuda"`` or ``"cuda:N"``, checked."""
    name = "auto" if device is None else str(device)
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    try:
        resolved = torch.device(name)
    except RuntimeError:
        raise ValueError(f"--device must be 'auto', 'cpu', 'cuda' or 'cuda:N', got {device!r}") from None
    if resolved.type not in ("cpu", "cuda"):
        raise ValueError(f"--device must be 'auto', 'cpu', 'cuda' or 'cuda:N', got {device!r}")
    if resolved.type == "cuda":
        if not torch.cuda.is_available():
            raise ValueError(f"--device {device}: no CUDA device is available on this machine")
        if resolved.index is None:
            resolved = torch.device("cuda", local_rank % torch.cuda.device_count())
    return resolved


@contextmanager
def distributed(device: str | None = "auto") -> Iterator[DistributedContext]:
    """The process's :class:`DistributedContext`, with the process group set up from ``torchrun``'s
    environment for the duration of the block (and torn down afterwards if this call created it)."""
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    local_rank = int(os.environ.get("LOCAL_RANK", str(rank)))
    resolved = resolve_device(device, local_rank)
    created = False
    if world_size > 1 and not dist.is_initialized():
        if resolved.type == "cuda":
            torch.cuda.set_device(resolved)
        dist.init_process_group("nccl" if resolved.type == "cuda" else "gloo")
        created = True
    try:
        yield DistributedContext(rank, world_size, resolved)
    finally:
        if created:
            dist.barrier()
            dist.destroy_process_group()


def shard_indices(
    n: int, ctx: DistributedContext, *, shuffle: bool = False, seed: int = 0, epoch: int = 0
) -> Tensor:
    """This rank's indices of ``range(n)`` as a :class:`DistributedSampler` deals them (all of them,
    in order or shuffled by ``seed``/``epoch`` as the sampler does, for a single process)."""
    if not ctx.is_distributed:
        if shuffle:
            return torch.randperm(n, generator=torch.Generator().manual_seed(seed + epoch))
        return torch.arange(n)
    sampler = DistributedSampler(range(n), num_replicas=ctx.world_size, rank=ctx.rank, shuffle=shuffle, seed=seed)
    sampler.set_epoch(epoch)
    return torch.tensor(list(sampler), dtype=torch.long)


def gather_rows(values: Tensor, indices: Tensor, n: int, ctx: DistributedContext) -> Tensor:
    """Reassemble per-item results computed on shards: ``values[i]`` belongs to item ``indices[i]``.

    Returns the ``(n, ...)`` tensor in item order on every rank (items a sampler dealt twice to even
    out the shards are written twice with the same value).
    """
    if not ctx.is_distributed:
        out = values.new_empty(n, *values.shape[1:])
        out[indices] = values
        return out
    parts: list = [None] * ctx.world_size
    dist.all_gather_object(parts, (indices.cpu(), values.detach().cpu()))
    out = values.new_empty(n, *values.shape[1:], device="cpu")
    for idx, val in parts:
        out[idx] = val
    return out


def all_reduce_sum(value: float, ctx: DistributedContext) -> float:
    """The sum of ``value`` over all ranks (``value`` itself for a single process)."""
    if not ctx.is_distributed:
        return value
    t = torch.tensor([float(value)], dtype=torch.float64, device=ctx.device)
    dist.all_reduce(t)
    return float(t.item())


def autocast(ctx: DistributedContext, precision: str = "fp32"):
    """Mixed precision for the forward pass on the context's device (see :mod:`.precision`): ``"bf16"``
    autocasts to bfloat16, ``"auto"`` does where the device computes bfloat16 natively."""
    return autocast_for(ctx.device, precision)


def wrap_model(model: nn.Module, ctx: DistributedContext) -> nn.Module:
    """``model`` on the context's device, wrapped in DistributedDataParallel when there are several ranks."""
    model = model.to(ctx.device)
    if not ctx.is_distributed:
        return model
    device_ids = [ctx.device.index] if ctx.device.type == "cuda" else None
    return nn.parallel.DistributedDataParallel(model, device_ids=device_ids)


def run_sharded(fn: Callable[[Tensor], tuple], n: int, ctx: DistributedContext) -> tuple:
    """``fn(indices)`` on this rank's shard of ``range(n)``; its first result (one row per item) is gathered
    back into item order on every rank (:func:`gather_rows`), the other results are this rank's own."""
    indices = shard_indices(n, ctx)
    first, *rest = fn(indices)
    return (gather_rows(first, indices, n, ctx), *rest)
