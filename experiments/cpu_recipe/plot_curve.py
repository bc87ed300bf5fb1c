"""Plot test accuracy against training CPU-seconds and wall minutes from ``run_recipe.py`` logs.

Usage: ``python experiments/cpu_recipe/plot_curve.py RESULT_DIR [RESULT_DIR ...] --out curve.png``.
Prints, last line, the JSON of the paired comparison: at every evaluation of the linearlens arm, its
accuracy minus the reference arm's accuracy interpolated at the same training time, on the clock the run's
budget was counted in (``--clock`` of ``run_recipe.py``: process CPU-seconds or wall-seconds).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

from linearlens.figures import save_figure, subplots


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("results", nargs="+")
    parser.add_argument("--out", required=True)
    args = parser.parse_args()
    fig, (ax_cpu, ax_wall) = subplots(1, 2, figsize=(11, 4))
    comparison: dict[str, list[dict]] = {}
    threads: set[int] = set()
    for folder in args.results:
        log = json.loads((Path(folder) / "log.json").read_text())
        tag = f"w{log['model_args']['width']} m{log['model_args']['max_out']}"
        tag += ", bf16 autocast" if log["args"].get("bf16") else ", float32"
        arms: dict[str, list[dict]] = {}
        for record in log["records"]:
            arms.setdefault(record["arm"], []).append(record)
        for arm, records in arms.items():
            if len(records) < 2:  # an arm that never trained in this run (e.g. stopped before its turn)
                continue
            cpu = [r["train_cpu_s"] for r in records]
            acc = [100 * r["test_accuracy"] for r in records]
            style = "-o" if arm == "linearlens" else "--s"
            label = f"{'linearlens' if arm == 'linearlens' else 'bcos 0.1.3 layers'} ({tag})"
            if len(records) == 2:  # start and end only: no line, which would suggest a measured curve
                style, label = style[-1], label + ", start and end only"
            ax_cpu.plot(cpu, acc, style, label=label, markersize=3)
            ax_wall.plot([r["train_wall_s"] / 60 for r in records], acc, style, label=label, markersize=3)
        threads.add(log.get("threads", 1))
        if "linearlens" in arms and "bcos" in arms:
            key = "train_wall_s" if log["args"].get("clock", "cpu") == "wall" else "train_cpu_s"
            ref = arms["bcos"]
            ref_t = np.array([r[key] for r in ref])
            ref_acc = np.array([r["test_accuracy"] for r in ref])
            gaps = []
            for r in arms["linearlens"][1:]:
                if r[key] <= 1.02 * ref_t.max():  # segments end a step past the budget
                    gap = 100 * (r["test_accuracy"] - float(np.interp(r[key], ref_t, ref_acc)))
                    gaps.append({key: r[key], "points_ahead": round(gap, 2)})
            comparison[tag] = gaps
    n = "/".join(str(t) for t in sorted(threads))
    ax_cpu.set_xlabel(f"training CPU-seconds ({n} thread(s); process clock, all threads)")
    ax_wall.set_xlabel(f"training wall minutes ({n} thread(s))")
    for ax in (ax_cpu, ax_wall):
        ax.set_ylabel("test accuracy, 10,000 CIFAR-10 test images (%)")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    fig.suptitle("B-cos CIFAR-10 network (B = 2, no biases): linearlens layers vs the bcos package's, same recipe")
    fig.tight_layout()
    save_figure(fig, args.out)
    print(f"wrote {args.out}")
    print(json.dumps({"paired_accuracy_gap": comparison}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
