"""Do the linearlens and ``bcos``-package twins of the CIFAR network compute the same training steps?

1. Parameter gradients of the BCE loss (Eq. (16)) on one batch, both layer sets, contiguous and channels-last
   batches: relative difference per parameter tensor.
2. ``--steps`` Adam steps side by side from the same weights on the same batches (embedded CIFAR-10,
   flips + crops): the two losses and the largest weight difference every 10 steps, showing how fast float
   rounding differences grow under Adam.

Last line: JSON.  Usage: ``python experiments/cpu_recipe/twin_agreement.py [--steps 41] [--width 0.5]``.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch

from linearlens.data import augment_batch, load_cifar10
from linearlens.models import create_model
from linearlens.training import bce_loss

sys.path.insert(0, str(Path(__file__).resolve().parent))
from package_net import PackageCifarNet  # noqa: E402


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--steps", type=int, default=41)
    parser.add_argument("--width", type=float, default=0.5)
    parser.add_argument("--max-out", type=int, default=2)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    ours = create_model("bcos_cifar", b=2.0, max_out=args.max_out, width=args.width, width_scaled_gamma=True)
    theirs = PackageCifarNet(ours)
    nets = {"linearlens": ours, "bcos": theirs}
    x, y = torch.rand(16, 3, 32, 32), torch.randint(0, 10, (16,))
    gradients = {}
    for layout, batch in (("contiguous", x), ("channels_last", x.contiguous(memory_format=torch.channels_last))):
        grads = []
        for net in nets.values():
            net.zero_grad()
            bce_loss(net(batch), y).backward()
            grads.append([p.grad.clone() for p in net.parameters()])
        gradients[layout] = [float((a - b).norm() / a.norm()) for a, b in zip(*grads)]
        print(f"gradients, {layout}: max relative difference {max(gradients[layout]):.1e}", flush=True)

    data = load_cifar10("embedded", "train")
    optimizers = {name: torch.optim.Adam(net.parameters(), lr=1e-3) for name, net in nets.items()}
    generator = torch.Generator().manual_seed(0)
    trajectory = []
    for step in range(args.steps):
        idx = torch.randint(0, len(data), (64,), generator=generator)
        batch = augment_batch(data.images[idx].float().div_(255), generator)
        losses = {}
        for name, net in nets.items():
            loss = bce_loss(net(batch), data.labels[idx])
            optimizers[name].zero_grad()
            loss.backward()
            optimizers[name].step()
            losses[name] = float(loss.detach())
        if step % 10 == 0 or step == args.steps - 1:
            diff = max(float((a - b).detach().abs().max()) for a, b in zip(ours.parameters(), theirs.parameters()))
            trajectory.append({"step": step, **losses, "max_weight_difference": diff})
            print(trajectory[-1], flush=True)
    print(json.dumps({"threads": args.threads, "width": args.width, "max_out": args.max_out,
                      "gradient_relative_difference": gradients, "side_by_side": trajectory}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
