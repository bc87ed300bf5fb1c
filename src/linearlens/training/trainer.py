"""Training B-cos classifiers as in App. C.1 of the B-cos paper.

Binary cross-entropy on one-hot labels (Eq. (16); the bias ``b = log(0.1/0.9)`` lives in the
model's :class:`~linearlens.layers.LogitLayer`), Adam, a cosine learning-rate schedule decaying
to ``lr_final``, random horizontal flips and padded random crops.  After every epoch the weights
and the full training state are checkpointed, so ``resume=True`` continues an interrupted run
without losing a finished epoch.

The same call runs data-parallel under ``torchrun`` (:mod:`.distributed`): DistributedDataParallel
over ``gloo`` (CPU) or ``nccl`` (CUDA), each rank taking its DistributedSampler shard of every epoch
and ``batch_size / world_size`` images of every global batch of ``batch_size``; rank 0 writes the
run directory.  ``device`` picks the device and ``precision="bf16"`` autocasts the forward pass.
"""

from __future__ import annotations

import math
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from tqdm.auto import tqdm

from .._threads import num_threads
from ..data import ImageSet, augment_batch, load_cifar10
from ..models import create_model
from .checkpoint import (
    CONFIG,
    HISTORY,
    load_training_state,
    read_json,
    save_model,
    save_training_state,
    write_json,
)
from .distributed import (
    PRECISIONS,
    DistributedContext,
    autocast,
    distributed,
    gather_rows,
    shard_indices,
    wrap_model,
)
from .precision import resolve_precision

__all__ = ["TrainConfig", "train", "evaluate_accuracy", "bce_loss", "cosine_lr"]


@dataclass
class TrainConfig:
    """Everything that defines a training run (stored in the run's ``config.json``)."""

    out_dir: str = "runs/bcos_cifar"
    model: str = "bcos_cifar"
    model_args: dict[str, Any] = field(default_factory=lambda: {"b": 2.0, "max_out": 2, "width": 0.25})
    data: str = "embedded"
    train_limit_per_class: int | None = None
    test_limit_per_class: int | None = None
    epochs: int = 10
    batch_size: int = 64
    lr: float = 1e-3
    lr_final: float = 1e-5
    seed: int = 0
    threads: int | None = None
    device: str = "auto"
    precision: str = "fp32"
    augment: bool = True
    # Channels-last batches on the CPU: oneDNN convolves NHWC tensors without reordering them and the B-cos
    # layers have NHWC kernels (a training step of bcos_cifar width 0.25: 0.86x the time without MaxOut, 0.96x
    # with; benchmarks/bench_bcos_layer.py).  Values are those of the contiguous layout up to rounding.
    channels_last: bool = True

    def validate(self) -> None:
        """Raise ``ValueError`` for settings that cannot train."""
        if self.epochs < 1:
            raise ValueError(f"epochs must be >= 1, got {self.epochs}")
        if self.batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {self.batch_size}")
        if not (self.lr > 0 and self.lr_final > 0 and self.lr_final <= self.lr):
            raise ValueError(f"need 0 < lr_final <= lr, got lr={self.lr}, lr_final={self.lr_final}")
        if not isinstance(self.channels_last, bool):
            raise ValueError(f"channels_last must be True or False, got {self.channels_last!r}")
        if self.precision not in PRECISIONS:
            raise ValueError(f"precision must be one of {', '.join(PRECISIONS)}, got {self.precision!r}")


def bce_loss(logits: Tensor, labels: Tensor) -> Tensor:
    """Eq. (16): BCE of ``sigmoid(f(x) + b)`` against one-hot labels (class indices ``(N,)``) or multi-hot
    targets (``(N, K)``, multi-label), averaged over classes and images."""
    if labels.dim() == 2:
        if labels.shape != logits.shape:
            raise ValueError(f"multi-hot targets of shape {tuple(labels.shape)} for logits {tuple(logits.shape)}")
        return F.binary_cross_entropy_with_logits(logits, labels.to(logits.dtype))
    one_hot = F.one_hot(labels, logits.shape[1]).to(logits.dtype)
    return F.binary_cross_entropy_with_logits(logits, one_hot)


def cosine_lr(step: int, total_steps: int, lr: float, lr_final: float) -> float:
    """Cosine schedule from ``lr`` at step 0 to ``lr_final`` at ``total_steps`` (App. C.1.1)."""
    progress = min(max(step / max(total_steps, 1), 0.0), 1.0)
    return lr_final + 0.5 * (lr - lr_final) * (1 + math.cos(math.pi * progress))


@torch.no_grad()
def evaluate_accuracy(
    model: nn.Module, images: ImageSet, batch_size: int = 256, ctx: DistributedContext | None = None
) -> float:
    """Top-1 accuracy of ``model`` on an :class:`ImageSet` (sharded over the ranks of ``ctx``)."""
    ctx = ctx or DistributedContext()
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    indices = shard_indices(len(images), ctx)
    hits = []
    for start in range(0, len(indices), batch_size):
        idx = indices[start : start + batch_size]
        x = images.images[idx].float().div_(255).to(device)
        hits.append((model(x).argmax(1).cpu() == images.labels[idx]).float())
    model.train(was_training)
    correct = gather_rows(torch.cat(hits) if hits else torch.zeros(0), indices, len(images), ctx)
    return float(correct.sum()) / max(len(images), 1)


def _load_data(config: TrainConfig) -> tuple[ImageSet, ImageSet]:
    train_set = load_cifar10(config.data, "train", config.train_limit_per_class)
    test_set = load_cifar10(config.data, "test", config.test_limit_per_class)
    return train_set, test_set


def train(config: TrainConfig, resume: bool = True, progress: bool = True) -> dict[str, Any]:
    """Train (or resume training) the model described by ``config``; returns the final metrics.

    The run directory ``config.out_dir`` receives ``model.safetensors`` and ``config.json`` after
    every epoch.  With ``resume=True`` a run directory that holds a training state continues from
    its last finished epoch; its saved configuration must match ``config``.
    """
    config.validate()
    with num_threads(config.threads), distributed(config.device) as ctx:
        return _train(config, resume, progress, ctx)


def _train(config: TrainConfig, resume: bool, progress: bool, ctx: DistributedContext) -> dict[str, Any]:
    if config.batch_size % ctx.world_size:
        raise ValueError(f"batch_size {config.batch_size} must be divisible by the {ctx.world_size} processes")
    progress = progress and ctx.is_main
    out = Path(config.out_dir)
    out.mkdir(parents=True, exist_ok=True)
    train_set, test_set = _load_data(config)

    torch.manual_seed(config.seed)
    model = create_model(config.model, **config.model_args).to(ctx.device)
    optimizer = torch.optim.Adam(model.parameters(), lr=config.lr)
    generator = torch.Generator().manual_seed(config.seed)
    history: list[dict[str, float]] = []
    start_epoch = 0

    if resume and (out / CONFIG).is_file():
        saved = read_json(out / CONFIG).get("training", {})
        keys = ("model", "model_args", "epochs", "batch_size", "lr", "lr_final", "seed", "data")
        changed = [k for k in keys if k in saved and saved[k] != asdict(config)[k]]
        if changed:
            raise ValueError(
                f"{out} holds a run with different settings ({', '.join(changed)}); "
                "use another --out directory or --no-resume to start over"
            )
        # state.safetensors is the one commit point of an epoch (weights, optimiser, generator, count);
        # model.safetensors and history.json may be one epoch ahead of it after an interruption.
        meta = load_training_state(out, model, optimizer, generator)
        if meta is not None:
            start_epoch = int(meta["finished_epochs"])
            history = read_json(out / HISTORY)[:start_epoch] if (out / HISTORY).is_file() else []

    net = wrap_model(model, ctx)
    local_batch = config.batch_size // ctx.world_size
    steps_per_epoch = math.ceil(math.ceil(len(train_set) / ctx.world_size) / local_batch)
    total_steps = steps_per_epoch * config.epochs
    images = train_set.images
    labels = train_set.labels
    metrics: dict[str, Any] = {"resumed_from_epoch": start_epoch}

    for epoch in range(start_epoch, config.epochs):
        net.train()
        if ctx.is_distributed:
            order = shard_indices(len(train_set), ctx, shuffle=True, seed=config.seed, epoch=epoch)
        else:
            order = torch.randperm(len(train_set), generator=generator)
        bar = tqdm(
            range(steps_per_epoch), desc=f"epoch {epoch + 1}/{config.epochs}", disable=not progress, leave=False
        )
        t0, loss_sum, seen, correct = time.perf_counter(), 0.0, 0, 0
        for step in bar:
            idx = order[step * local_batch : (step + 1) * local_batch]
            x = images[idx].float().div_(255)
            x = (augment_batch(x, generator) if config.augment else x).to(ctx.device)
            if config.channels_last and ctx.device.type == "cpu":
                x = x.contiguous(memory_format=torch.channels_last)
            y = labels[idx].to(ctx.device)
            for group in optimizer.param_groups:
                group["lr"] = cosine_lr(epoch * steps_per_epoch + step, total_steps, config.lr, config.lr_final)
            with autocast(ctx, config.precision):
                logits = net(x)
            loss = bce_loss(logits.float(), y)
            if not torch.isfinite(loss):
                raise FloatingPointError(
                    f"loss became {loss.detach().item()} at epoch {epoch + 1}, step {step}; try a smaller lr or "
                    "check the model's gamma/temperature"
                )
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            loss_sum += float(loss.detach()) * len(idx)
            seen += len(idx)
            correct += int((logits.argmax(1) == y).sum())
            bar.set_postfix(loss=f"{loss_sum / seen:.4f}", acc=f"{correct / seen:.3f}")
        test_acc = evaluate_accuracy(model, test_set, ctx=ctx)
        if ctx.is_distributed:
            totals = torch.tensor([loss_sum, seen, correct], dtype=torch.float64, device=ctx.device)
            torch.distributed.all_reduce(totals)
            loss_sum, seen, correct = float(totals[0]), int(totals[1]), int(totals[2])
        record = {
            "epoch": epoch + 1,
            "train_loss": loss_sum / seen,
            "train_accuracy": correct / seen,
            "test_accuracy": test_acc,
            "seconds": time.perf_counter() - t0,
        }
        history.append(record)
        if progress:
            tqdm.write(
                f"epoch {epoch + 1}/{config.epochs}: loss {record['train_loss']:.4f}, "
                f"train acc {record['train_accuracy']:.3f}, test acc {test_acc:.4f} ({record['seconds']:.0f} s)"
            )
        if not ctx.is_main:
            continue
        # The training state last: until it is replaced, a resume repeats this epoch from its start.
        save_model(out, model, config.model, config.model_args, {"training": asdict(config), "test_accuracy": test_acc})
        write_json(out / HISTORY, history)
        save_training_state(out, model, optimizer, generator, {"finished_epochs": epoch + 1})

    final = history[-1] if history else {}
    metrics.update(
        {
            "test_accuracy": final.get("test_accuracy", evaluate_accuracy(model, test_set, ctx=ctx)),
            "epochs": config.epochs,
            "train_images": len(train_set),
            "test_images": len(test_set),
            "run_dir": str(out),
            "world_size": ctx.world_size,
            "device": str(ctx.device),
            "precision": resolve_precision(config.precision, ctx.device),
        }
    )
    metrics["model"] = model.eval()
    return metrics
