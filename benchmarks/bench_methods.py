"""Time per explanation of every method relative to the inherent B-cos explanation.

Same model, same batch, same targets for every method; the repeats are interleaved across methods
(so that load changes on a shared machine hit all of them alike) and the median is reported.  The
last line of output is a JSON object; ``relative[m]`` is ``time(m) / time(bcos)``.

    python benchmarks/bench_methods.py [--width 0.25] [--batch 8] [--targets 1] [--repeats 3]
"""

from __future__ import annotations

import argparse
import json
import statistics
import time

import torch

from linearlens import create_model, explain
from linearlens.data import load_cifar10

# Paper settings (App. C.2 of the B-cos paper) for every method; lrp is listed to record that it refuses B-cos layers.
METHODS = ("bcos", "gradient", "ixg", "ig", "deeplift", "guided_backprop", "deconvnet", "gradcam", "layercam",
           "occlusion", "rise", "lime", "lrp")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--width", type=float, default=0.25)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--targets", type=int, default=1, help="explained classes per image (K)")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    model = create_model("bcos_cifar", b=2.0, max_out=2, width=args.width).eval()
    data = load_cifar10("embedded", "test")
    x = data.images[:: len(data) // args.batch][: args.batch].float() / 255
    targets = torch.stack([(data.labels[: args.batch] + k) % 10 for k in range(args.targets)], 1)

    times: dict[str, list[float]] = {m: [] for m in METHODS}
    errors: dict[str, str] = {}
    for m in METHODS:  # warm-up (and find the methods that refuse this model)
        try:
            explain(model, x[:1], targets[:1], method=m, **({"n_masks": 10} if m == "rise" else {}))
        except ValueError as err:
            errors[m] = str(err)[:120]
    active = [m for m in METHODS if m not in errors]
    for _ in range(args.repeats):
        for m in active:
            t0 = time.perf_counter()
            explain(model, x, targets, method=m)
            times[m].append(time.perf_counter() - t0)
    median = {m: statistics.median(times[m]) for m in active}
    per_image = {m: median[m] / args.batch for m in active}
    relative = {m: median[m] / median["bcos"] for m in active}
    for m in active:
        print(f"{m:16s} {per_image[m] * 1000:9.2f} ms/image  x{relative[m]:8.1f} of bcos")
    for m, err in errors.items():
        print(f"{m:16s} refused: {err}")
    print(json.dumps({
        "model": f"bcos_cifar(b=2, max_out=2, width={args.width})", "batch": args.batch, "targets": args.targets,
        "image_size": list(x.shape[-2:]), "repeats": args.repeats, "threads": args.threads,
        "bcos_ms_per_image": per_image["bcos"] * 1000,
        "relative": {m: round(r, 3) for m, r in relative.items()},
        "ms_per_image": {m: round(v * 1000, 3) for m, v in per_image.items()},
        "refused": list(errors),
    }))


if __name__ == "__main__":
    main()
