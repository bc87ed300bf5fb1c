"""Milliseconds per training image of the CIFAR-10 B-cos network for several widths, MaxOut and batch sizes.

Both implementations (linearlens's layers and the ``bcos`` package's, same weights), ``--threads`` threads
(default 1), process CPU time or wall time (``--clock``), contiguous or channels-last batches, median of
``--repeats`` interleaved steps.  Used to choose the recipe's width and batch size.  Last line: JSON.
Usage: ``python experiments/cpu_recipe/step_cost.py [--repeats 8] [--threads 2 --clock wall --channels-last]``.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import torch

from linearlens.models import create_model
from linearlens.training import bce_loss

sys.path.insert(0, str(Path(__file__).resolve().parent))
from package_net import PackageCifarNet  # noqa: E402


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--repeats", type=int, default=8)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--clock", choices=("cpu", "wall"), default="cpu",
                        help="process CPU time (all threads) or wall time (an otherwise idle machine)")
    parser.add_argument("--channels-last", action="store_true", help="channels-last batches")
    parser.add_argument("--bf16", action="store_true", help="bfloat16 autocast (mixed precision) for the steps")
    parser.add_argument("--configs", default="0.25:1:64,0.25:2:64,0.25:2:128,0.5:1:64,0.5:2:64")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    clock = time.process_time if args.clock == "cpu" else time.perf_counter
    rows = []
    for spec in args.configs.split(","):
        width, max_out, batch = float(spec.split(":")[0]), int(spec.split(":")[1]), int(spec.split(":")[2])
        torch.manual_seed(0)
        ours = create_model("bcos_cifar", b=2.0, max_out=max_out, width=width, width_scaled_gamma=True)
        nets = {"linearlens": ours, "bcos": PackageCifarNet(ours)}
        x, y = torch.rand(batch, 3, 32, 32), torch.randint(0, 10, (batch,))
        if args.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        times: dict[str, list[float]] = {k: [] for k in nets}
        for r in range(args.repeats + 2):
            for name, net in nets.items():
                t0 = clock()
                net.zero_grad(set_to_none=True)
                with torch.autocast("cpu", dtype=torch.bfloat16, enabled=args.bf16):
                    loss = bce_loss(net(x), y)
                loss.backward()
                if r >= 2:
                    times[name].append(clock() - t0)
        row = {"width": width, "max_out": max_out, "batch": batch}
        for name in nets:
            row[f"{name}_ms_per_image"] = round(1e3 * statistics.median(times[name]) / batch, 3)
        row["bcos_over_linearlens"] = round(row["bcos_ms_per_image"] / row["linearlens_ms_per_image"], 3)
        print(row, flush=True)
        rows.append(row)
    print(json.dumps({"threads": args.threads, "clock": args.clock, "channels_last": args.channels_last,
                      "bf16": args.bf16, "rows": rows}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
