"""Case 2 of the linear-interpreter paper: a 4-layer PixelShuffle super-resolution network next to bicubic.

Trains the small upscaler of the PyTorch super-resolution tutorial (conv 5x5/64, 3x3/64, 3x3/32,
3x3/3r^2, PixelShuffle; here on RGB) for a few CPU minutes on random patches of the demo photos in
../shared/data/demo-photos (all but the astronaut, which is held out), then interprets it at a
48x48 low-resolution crop of the astronaut's face with :class:`linearlens.interpret.LinearScope`:
residual, columns (projective filters), rows (receptive filters) and the top singular triples
(eigen-inputs/outputs), each next to the same quantities of a bicubic ``F.interpolate`` upscaler.

    python experiments/linearscope/sr_demo.py            # train (~3 CPU minutes) + figures
    python experiments/linearscope/sr_demo.py --steps 0  # reuse runs/linearscope/sr4l_x<scale>.safetensors
"""

from __future__ import annotations

import argparse
import json
import sys
import time

import numpy as np  # noqa: E402
import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402
from PIL import Image  # noqa: E402
from torch import nn  # noqa: E402

sys.path.insert(0, str(__import__("pathlib").Path(__file__).resolve().parent))
from _common import (  # noqa: E402
    FIGURES,
    RUNS,
    SHARED_DATA,
    command_line,
    load_weights,
    psnr,
    require,
    rgb,
    save_weights,
    signed,
)

from linearlens.figures import subplots  # noqa: E402
from linearlens.interpret import LinearScope  # noqa: E402

TRAIN_PHOTOS = (
    "skimage/chelsea.png", "skimage/coffee.png", "skimage/rocket.jpg", "skimage/motorcycle_left.png",
    "skimage/hubble_deep_field.jpg", "skimage/retina.jpg", "skimage/ihc.png", "sklearn/china.jpg",
    "sklearn/flower.jpg",
)
TEST_PHOTO = "skimage/astronaut.png"
CROP = (10, 50, 48)  # LR crop of the astronaut's face: top, left, size
# Probe positions in the LR crop (row, column): an eye, the hair edge, the smooth cheek.
POINTS = {"eye": (19, 26), "hair edge": (6, 30), "cheek": (30, 22)}


def sr_network(scale: int) -> nn.Sequential:
    """The 4-layer PixelShuffle upscaler (PyTorch tutorial architecture, RGB in and out)."""
    return nn.Sequential(
        nn.Conv2d(3, 64, 5, padding=2), nn.ReLU(),
        nn.Conv2d(64, 64, 3, padding=1), nn.ReLU(),
        nn.Conv2d(64, 32, 3, padding=1), nn.ReLU(),
        nn.Conv2d(32, 3 * scale**2, 3, padding=1), nn.PixelShuffle(scale),
    )


class Bicubic(nn.Module):
    """The classic reference upscaler: linear and space invariant, so F is its matrix and r = 0."""

    def __init__(self, scale: int) -> None:
        super().__init__()
        self.scale = scale

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.interpolate(x, scale_factor=self.scale, mode="bicubic", align_corners=False)


def load_photo(name: str) -> torch.Tensor:
    img = Image.open(require(SHARED_DATA / "demo-photos" / name, f"demo photo {name}")).convert("RGB")
    return torch.from_numpy(np.asarray(img).copy()).permute(2, 0, 1).float() / 255


def downscale(hr: torch.Tensor, scale: int) -> torch.Tensor:
    return F.interpolate(hr, scale_factor=1 / scale, mode="bicubic", antialias=True, align_corners=False).clamp(0, 1)


def train(model: nn.Module, scale: int, steps: int, batch: int, seed: int) -> dict:
    photos = [load_photo(p) for p in TRAIN_PHOTOS]
    gen = torch.Generator().manual_seed(seed)
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, steps)
    hr_size = 24 * scale
    start, losses = time.time(), []
    model.train()
    for step in range(steps):
        patches = []
        for _ in range(batch):
            img = photos[int(torch.randint(len(photos), (1,), generator=gen))]
            top = int(torch.randint(img.shape[1] - hr_size + 1, (1,), generator=gen))
            left = int(torch.randint(img.shape[2] - hr_size + 1, (1,), generator=gen))
            p = img[:, top : top + hr_size, left : left + hr_size]
            if torch.rand(1, generator=gen) < 0.5:
                p = p.flip(2)
            patches.append(p)
        hr = torch.stack(patches)
        loss = F.mse_loss(model(downscale(hr, scale)), hr)
        opt.zero_grad()
        loss.backward()
        opt.step()
        sched.step()
        losses.append(loss.item())
        if (step + 1) % 500 == 0:
            print(f"step {step + 1}/{steps}  mse {np.mean(losses[-500:]):.5f}  {time.time() - start:.0f}s", flush=True)
    model.eval()
    return {"steps": steps, "batch": batch, "train_seconds": round(time.time() - start, 1)}


def show(ax, image, title: str) -> None:
    ax.imshow(image, interpolation="nearest")
    ax.set_title(title, fontsize=8)
    ax.axis("off")


def window(t: torch.Tensor, center: tuple[int, int], half: int) -> torch.Tensor:
    r, c = center
    return t[..., max(r - half, 0) : r + half + 1, max(c - half, 0) : c + half + 1]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--scale", type=int, default=3)
    parser.add_argument("--steps", type=int, default=6000, help="training steps (0: load the checkpoint)")
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--svd-k", type=int, default=6)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    FIGURES.mkdir(parents=True, exist_ok=True)
    RUNS.mkdir(parents=True, exist_ok=True)
    ckpt = RUNS / f"sr4l_x{args.scale}.safetensors"
    s = args.scale

    model = sr_network(s)
    if args.steps > 0:
        info = train(model, s, args.steps, args.batch, args.seed)
        save_weights(ckpt, model, info)
    else:
        info = load_weights(ckpt, model)
    model.eval()
    bicubic = Bicubic(s)

    # Held-out quality: the whole astronaut.
    hr_full = load_photo(TEST_PHOTO)[None]
    size = hr_full.shape[-1] // s * s
    hr_full = hr_full[..., :size, :size]
    lr_full = downscale(hr_full, s)
    with torch.no_grad():
        quality = {"psnr_sr": psnr(model(lr_full), hr_full, s), "psnr_bicubic": psnr(bicubic(lr_full), hr_full, s)}
    print(f"astronaut PSNR: 4-layer PixelShuffle {quality['psnr_sr']:.2f} dB, bicubic {quality['psnr_bicubic']:.2f} dB")

    top, left, n = CROP
    x0 = lr_full[..., top : top + n, left : left + n].contiguous()
    hr0 = hr_full[..., s * top : s * (top + n), s * left : s * (left + n)]
    scopes = {
        "4L PixelShuffle": LinearScope(model, x0, chunk_size=32),
        "bicubic": LinearScope(bicubic, x0, chunk_size=32),
    }
    numbers: dict = {"train": info, "quality": quality, "crop_lr": [top, left, n], "scale": s}

    # Overview: input, outputs, residuals.
    fig, axes = subplots(1, 5, figsize=(13, 3))
    show(axes[0], rgb(F.interpolate(x0, scale_factor=s, mode="nearest")[0]), f"LR input {n}x{n} (nearest)")
    show(axes[1], rgb(hr0[0]), "HR ground truth")
    for ax, (name, scope) in zip(axes[2:4], scopes.items()):
        show(ax, rgb(scope.output[0]), f"{name}: f(x0), PSNR {psnr(scope.output, hr0, s):.1f} dB")
    r = scopes["4L PixelShuffle"].residual[0]
    share = float(r.norm() / scopes["4L PixelShuffle"].output[0].norm())
    numbers["residual_norm_share_sr"] = share
    numbers["residual_max_abs_bicubic"] = float(scopes["bicubic"].residual.abs().max())
    show(axes[4], signed(r), f"4L residual r(x0) (±{float(r.abs().max()):.3f})\n||r||/||f(x0)|| = {share:.3f}")
    fig.suptitle(f"LinearScope on a {s}x upscaler - {command_line()}", fontsize=8)
    fig.tight_layout()
    fig.savefig(FIGURES / "sr_overview.png", dpi=130)

    # Columns (white impulse = sum of the three channel columns) and rows (green output pixel).
    fig, axes = subplots(len(POINTS), 4, figsize=(9, 2.4 * len(POINTS)))
    for i, (label, (pr, pc)) in enumerate(POINTS.items()):
        for j, (name, scope) in enumerate(scopes.items()):
            cols = scope.columns([scope.input_index(c, pr, pc) for c in range(3)])[0].sum(0)  # (3, sH, sW)
            col = window(cols, (s * pr + s // 2, s * pc + s // 2), 4 * s)
            show(axes[i, 2 * j], signed(col), f"{name}\ncolumn at {label}")
            # The corner of the s x s output block: not aligned with an input pixel, so bicubic's row
            # is its 4x4 kernel rather than a delta.
            row = scope.rows(scope.output_index(1, s * pr, s * pc))[0, 0]  # (3, n, n)
            show(axes[i, 2 * j + 1], signed(window(row, (pr, pc), 5)), f"{name}\nrow at {label}")
    fig.suptitle(f"projective (columns) and receptive (rows) filters; grey = 0\n{command_line()}", fontsize=8)
    fig.tight_layout()
    fig.savefig(FIGURES / "sr_rows_columns.png", dpi=130)

    # SVD: eigen-inputs and eigen-outputs (Krylov), SR next to bicubic.
    k = args.svd_k
    fig, axes = subplots(4, k, figsize=(1.8 * k, 7.6))
    numbers["svd"] = {}
    for j, (name, scope) in enumerate(scopes.items()):
        t = time.time()
        res = scope.svd(k, method="krylov", tol=1e-5)
        numbers["svd"][name] = {
            "singular_values": [round(float(v), 5) for v in res.singular_values],
            "passes": res.passes, "seconds": round(time.time() - t, 2),
        }
        print(f"{name}: top-{k} singular values {numbers['svd'][name]['singular_values']} "
              f"({res.passes} passes, {time.time() - t:.1f}s)")
        for i in range(k):
            sigma = float(res.singular_values[i])
            show(axes[2 * j, i], signed(res.eigen_inputs[i]), f"{name[:9]} v{i + 1}, σ={sigma:.3f}")
            show(axes[2 * j + 1, i], signed(res.eigen_outputs[i]), f"{name[:9]} u{i + 1}")
    fig.suptitle(f"eigen-inputs v (LR) and eigen-outputs u (HR) of F(x0); grey = 0\n{command_line()}", fontsize=8)
    fig.tight_layout()
    fig.savefig(FIGURES / "sr_svd.png", dpi=130)

    numbers["command"] = command_line()
    (FIGURES / "sr_numbers.json").write_text(json.dumps(numbers, indent=2))
    print(json.dumps(numbers))
    return 0


if __name__ == "__main__":
    sys.exit(main())
