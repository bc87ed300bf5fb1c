"""Data-parallel training and sharded evaluation on 2 CPU processes (gloo on 127.0.0.1), bf16 autocast.

The ranks must end with identical weights equal to a single-process run on the same global batches,
and a sharded evaluation must give the same numbers as an unsharded one.
"""

from __future__ import annotations

import json
import os
import socket
from pathlib import Path

import pytest
import torch
import torch.multiprocessing as mp

from linearlens.data import load_cifar10
from linearlens.explain import explain
from linearlens.models import create_model
from linearlens.training import TrainConfig, train
from linearlens.training.distributed import (
    DistributedContext,
    autocast,
    gather_rows,
    resolve_device,
    shard_indices,
)

MODEL_ARGS = {"b": 2.0, "max_out": 1, "width": 0.0625, "width_scaled_gamma": True}


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _config(out: Path) -> TrainConfig:
    # 10 images, one global batch of 10 per epoch (5 per rank), no augmentation: the global batch of
    # every step is the whole set, whatever the sampler's order.
    return TrainConfig(
        out_dir=str(out), model="bcos_cifar", model_args=MODEL_ARGS, data="embedded", train_limit_per_class=1,
        test_limit_per_class=2, epochs=3, batch_size=10, lr=1e-2, lr_final=1e-3, seed=0, threads=1,
        device="cpu", augment=False,
    )


def _rank(rank: int, world: int, port: int, out: str) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), WORLD_SIZE=str(world),
                      LOCAL_RANK=str(rank))
    metrics = train(_config(Path(out)), resume=False, progress=False)
    torch.save({"weights": metrics["model"].state_dict(), "accuracy": metrics["test_accuracy"],
                "world": metrics["world_size"]}, Path(out) / f"rank{rank}.pt")


def _spawn(fn, world: int, *args) -> None:
    mp.start_processes(fn, args=(world, _free_port(), *args), nprocs=world, start_method="spawn", join=True)


def test_two_ranks_hold_identical_weights_equal_to_one_process(tmp_path, single_thread):
    _spawn(_rank, 2, str(tmp_path / "ddp"))
    ranks = [torch.load(tmp_path / "ddp" / f"rank{r}.pt") for r in range(2)]
    assert ranks[0]["world"] == ranks[1]["world"] == 2
    single = train(_config(tmp_path / "single"), resume=False, progress=False)
    start = create_model("bcos_cifar", **MODEL_ARGS).state_dict()
    moved = 0.0
    for name, value in single["model"].state_dict().items():
        assert torch.equal(ranks[0]["weights"][name], ranks[1]["weights"][name]), name
        # Same global batches; only the order of float32 sums differs (Adam magnifies it near zero gradients).
        torch.testing.assert_close(ranks[0]["weights"][name], value, rtol=1e-4, atol=1e-5)
        moved = max(moved, float((value - start[name]).abs().max()))
    assert moved > 1e-2  # the three steps moved the weights far beyond the tolerance
    assert ranks[0]["accuracy"] == ranks[1]["accuracy"] == pytest.approx(single["test_accuracy"])


def test_single_process_context_and_device_errors():
    ctx = DistributedContext()
    assert not ctx.is_distributed and ctx.is_main
    assert torch.equal(shard_indices(5, ctx), torch.arange(5))
    values = torch.arange(4.0)
    assert torch.equal(gather_rows(values, torch.tensor([3, 1, 0, 2]), 4, ctx), torch.tensor([2.0, 1.0, 3.0, 0.0]))
    assert resolve_device("cpu").type == "cpu"
    with pytest.raises(ValueError, match="--device"):
        resolve_device("tpu")
    if not torch.cuda.is_available():
        with pytest.raises(ValueError, match="no CUDA device"):
            resolve_device("cuda")
    with pytest.raises(ValueError, match="precision"):
        autocast(ctx, "fp16")
    with pytest.raises(ValueError, match="precision"):
        TrainConfig(precision="half").validate()


def _bf16_run(tmp_path: Path, b: float) -> dict:
    config = _config(tmp_path / f"bf16_b{b:g}")
    config.precision, config.epochs = "bf16", 1
    config.model_args = {**MODEL_ARGS, "b": b}
    return train(config, resume=False, progress=False)


def test_bf16_autocast_trains_and_the_explanation_identity_holds_in_float32(tmp_path, single_thread):
    # B = 1 B-cos layers are convolutions with unit-norm kernels, which autocast runs in bfloat16.
    metrics = _bf16_run(tmp_path, 1.0)
    model = metrics["model"].eval()
    assert all(p.dtype == torch.float32 and torch.isfinite(p).all() for p in model.parameters())
    x = load_cifar10("embedded", "test", 1).images[:4].float() / 255
    with autocast(DistributedContext(), "bf16"):
        low = model(x)
    assert low.dtype == torch.bfloat16
    full = model(x)
    torch.testing.assert_close(low.float(), full, rtol=0.05, atol=0.05)  # bf16 is close, not exact
    # In float32 the explanation is exact: f(x) = W(x) x + b with the logit bias as the only residual.
    e = explain(model, x, "all", method="bcos")
    torch.testing.assert_close(e.attributions.sum((2, 3)) + model.logits.bias, full, rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(e.residual, torch.full_like(e.residual, model.logits.bias), rtol=0, atol=1e-4)


def test_bf16_autocast_trains_b2(tmp_path, single_thread):
    metrics = _bf16_run(tmp_path, 2.0)
    assert metrics["precision"] == "bf16"
    assert all(torch.isfinite(p).all() for p in metrics["model"].parameters())


EVALUATE = ["evaluate", "--model", "bcos_cifar", "--model-args", '{"width": 0.0625, "max_out": 1}',
            "--limit-per-class", "2", "--include-misclassified", "--grids", "5", "--methods", "bcos,gradient",
            "--batch-size", "2", "--threads", "1", "--no-progress"]


METRICS = {"grid-pointing": ["--metric", "grid-pointing"],
           "degradation": ["--metric", "degradation", "--images", "5", "--steps", "3"]}


def _cli_rank(rank: int, world: int, port: int, out: str) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), WORLD_SIZE=str(world),
                      LOCAL_RANK=str(rank))
    from linearlens.cli import main

    for metric, extra in METRICS.items():  # one launch for both metrics: process start-up dominates
        assert main(EVALUATE + extra + ["--out", str(Path(out) / metric)]) == 0


def test_linearlens_evaluate_sharded_gives_the_same_table(tmp_path):
    # evaluate_accuracy's sharding is covered by the training test (equal accuracies on every rank).
    _spawn(_cli_rank, 2, str(tmp_path / "sharded"))
    from linearlens.cli import main

    for metric, extra in METRICS.items():
        assert main(EVALUATE + extra + ["--out", str(tmp_path / "single" / metric)]) == 0
        sharded, single = (json.loads((tmp_path / d / metric / "results.json").read_text())
                           for d in ("sharded", "single"))
        for table in (sharded, single):
            for row in table["methods"].values():
                row.pop("seconds_per_image")
        # Same numbers up to float32 rounding: a shard explains its grids in batches of another composition.
        assert _approx_equal(sharded["methods"], single["methods"]) and sharded["accuracy"] == single["accuracy"]
        assert sharded["settings"] == single["settings"]
        scores = [json.loads((tmp_path / d / metric / "scores.json").read_text()) for d in ("sharded", "single")]
        assert scores[0].keys() == scores[1].keys() and _approx_equal(*scores)


def _approx_equal(a, b) -> bool:
    if isinstance(a, dict):
        return a.keys() == b.keys() and all(_approx_equal(a[k], b[k]) for k in a)
    if isinstance(a, list):
        return len(a) == len(b) and all(_approx_equal(x, y) for x, y in zip(a, b))
    if isinstance(a, float):
        return a == pytest.approx(b, rel=1e-5, abs=1e-7)
    return a == b
