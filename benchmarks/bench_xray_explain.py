#!/usr/bin/env python
"""Explanation time per radiograph (all findings at once) relative to one forward pass, chest X-ray study networks.

Networks: the ``cpu`` preset's B-cos ResNet-18 (width 0.25, one input channel, 128 px) in strided, BlurPool
and FLC variants, untrained (the cost does not depend on the weights' values), and the conventional ResNet-18
baseline with LayerCAM.  Inputs: the embedded radiographs (``--images``, default 16).  ``K`` outputs: 1 (the
RSNA lung-opacity task) and ``--findings`` (default 6, the NIH findings with >= 30 positives in the shared
subset).  Per round every case runs once in a rotating order; ratios are medians over ``--repeats`` rounds of
``explain(model, x, "all")`` time over ``model(x)`` time (no gradients), clock: this process's CPU time with
one thread.  Last line: JSON.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time

import torch

from linearlens import explain
from linearlens.data.xray import load_xray_subset
from linearlens.xray.config import preset
from linearlens.xray.models import build_model


def _time(fn, *args, **kwargs) -> float:
    start = time.process_time()
    fn(*args, **kwargs)
    return time.process_time() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=16)
    parser.add_argument("--findings", type=int, default=6)
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    torch.set_num_threads(1)
    config = preset("cpu")
    x = load_xray_subset("embedded", "rsna", size=config.size).images[: args.images].float() / 255
    cases = {}
    for k in (1, args.findings):
        for variant, method in (("strided", "bcos"), ("blurpool", "bcos"), ("flc", "bcos"), ("baseline", "layercam")):
            with torch.random.fork_rng():
                torch.manual_seed(0)
                model = build_model(variant, config, k).eval()
            cases[f"{variant}/{method}/K={k}"] = (model, method)
    times: dict[str, dict[str, list[float]]] = {name: {"forward": [], "explain": []} for name in cases}
    names = list(cases)
    for r in range(args.repeats):
        for name in names[r % len(names):] + names[: r % len(names)]:
            model, method = cases[name]
            with torch.no_grad():
                times[name]["forward"].append(_time(model, x))
            times[name]["explain"].append(_time(explain, model, x, "all", method=method))
    result = {"threads": 1, "clock": "process_time", "images": len(x), "size": config.size, "repeats": args.repeats,
              "cases": {}}
    for name, t in times.items():
        ratios = [e / f for e, f in zip(t["explain"], t["forward"])]
        entry = {"forward_ms_per_image": 1e3 * statistics.median(t["forward"]) / len(x),
                 "explain_ms_per_image": 1e3 * statistics.median(t["explain"]) / len(x),
                 "ratio": statistics.median(ratios)}
        result["cases"][name] = {k: round(v, 3) for k, v in entry.items()}
        print(f"{name:28s} forward {entry['forward_ms_per_image']:7.2f} ms/img  explain "
              f"{entry['explain_ms_per_image']:8.2f} ms/img  ratio {entry['ratio']:6.2f}")
    print(json.dumps(result))


if __name__ == "__main__":
    main()
