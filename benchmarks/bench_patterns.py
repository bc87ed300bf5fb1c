"""Cost of PatternNet: the statistics pass vs a plain forward pass, one explanation vs one gradient.

On the two networks of ``experiments/patterns`` (VGG-style with max pooling; ResNet with batch norm),
untrained (costs do not depend on the weights), on the embedded CIFAR-10 test images:

* ``stats_over_forward``: :func:`linearlens.patterns.fit_patterns` over ``--images`` images divided by
  plain ``no_grad`` forward passes over the same batches (goal of issue 10: <= 3);
* ``patternnet_over_gradient`` / ``patternattribution_over_gradient``: one explanation of the predicted
  class of a batch divided by ``explain(method="gradient")`` on the same batch.

Clock: process CPU time, 1 thread (``--threads``), median of ``--repeats`` interleaved repeats.  The
last line of output is a JSON object.

    python benchmarks/bench_patterns.py [--images 512] [--batch 128] [--explain-batch 16] [--repeats 5]
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

import torch

from linearlens import explain
from linearlens.data import load_cifar10
from linearlens.patterns import fit_patterns

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "experiments" / "patterns"))
from models import ARCHITECTURES  # noqa: E402


def cpu_time(fn: Callable[[], object]) -> float:
    t0 = time.process_time()
    fn()
    return time.process_time() - t0


def measure(model: torch.nn.Module, batches: list[torch.Tensor], x: torch.Tensor, repeats: int) -> dict[str, float]:
    """Median CPU seconds of each job, repeats interleaved across jobs."""
    patterns = fit_patterns(model, batches[:1])

    def forward() -> None:
        with torch.no_grad():
            for b in batches:
                model(b)

    jobs = {
        "forward": forward,
        "stats": lambda: fit_patterns(model, batches),
        "gradient": lambda: explain(model, x, "predicted", method="gradient", abs=False),
        "patternnet": lambda: explain(model, x, "predicted", method="patternnet", patterns=patterns),
        "patternattribution": lambda: explain(model, x, "predicted", method="patternattribution", patterns=patterns),
    }
    for job in jobs.values():  # warm-up
        job()
    times: dict[str, list[float]] = {k: [] for k in jobs}
    for _ in range(repeats):
        for name, job in jobs.items():
            times[name].append(cpu_time(job))
    return {k: statistics.median(v) for k, v in times.items()}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--images", type=int, default=512)
    p.add_argument("--batch", type=int, default=128)
    p.add_argument("--explain-batch", type=int, default=16)
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--threads", type=int, default=1)
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    images = load_cifar10("embedded", "test").images[: args.images].float() / 255
    batches = list(images.split(args.batch))
    x = images[: args.explain_batch]
    result: dict[str, object] = {"threads": args.threads, "clock": "process_time", "images": len(images),
                                 "batch": args.batch, "explain_batch": len(x), "repeats": args.repeats}
    for arch, make in ARCHITECTURES.items():
        med = measure(make().eval(), batches, x, args.repeats)
        ratios = {
            "stats_over_forward": med["stats"] / med["forward"],
            "patternnet_over_gradient": med["patternnet"] / med["gradient"],
            "patternattribution_over_gradient": med["patternattribution"] / med["gradient"],
        }
        for k, v in med.items():
            print(f"{arch:7s} {k:20s} {v * 1000:9.1f} ms CPU")
        result[arch] = {"ms": {k: round(v * 1000, 2) for k, v in med.items()},
                        **{k: round(v, 3) for k, v in ratios.items()}}
    result["goal_stats_over_forward_max"] = 3.0
    print(json.dumps(result))


if __name__ == "__main__":
    main()
