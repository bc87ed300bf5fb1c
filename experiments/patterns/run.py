"""PatternNet / PatternAttribution experiments of Sec. 5 of the PatternNet paper, at CIFAR-10 / CPU scale.

Needs the networks trained by ``train.py`` (``runs/patterns/{vgg,resnet,bcos}``) and the CIFAR-10
copy in ``../shared/data/cifar10``.  Phases (``--phase``, default all):

``rho``          Fig. 3: the quality rho (Eq. (1)) per layer of random, S_w, S_a and S_a+- on the VGG-style
                 net and the ResNet; patterns, the regression vector v and the evaluation each on
                 separate images (training images split in two, test images for the evaluation).
``degradation``  Fig. 4a: softmax probability of the initial class while 4x4 patches are replaced by their
                 per-channel mean in decreasing order of summed PatternAttribution (S_x, S_w, S_a, S_a+-)
                 and in 5 random orders; AOPC per curve.
``qualitative``  Figs. 4b and 5: PatternNet vs guided backprop vs DeConvNet vs gradient, PatternAttribution
                 vs LRP, normalised as in the paper.
``pointing``     Fig. B2 of the B-cos paper: 3x3 grid pointing game on grids of test images that both the
                 conventional ReLU net (the ResNet: global pooling takes 96x96 grids) and the B-cos net
                 classify correctly; PatternAttribution and post-hoc methods against the inherent B-cos
                 explanation.

Writes ``experiments/patterns/results/{results.json, *.png}``:

    python experiments/patterns/run.py
    python experiments/patterns/run.py --phase rho --fit-images 2000
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch
from safetensors.torch import load_file

from linearlens import explain
from linearlens.data import load_cifar10
from linearlens.figures import save_figure, subplots
from linearlens.metrics import make_grids
from linearlens.metrics.degradation import aopc, degradation_curve
from linearlens.metrics.evaluation import classify, grid_pointing_scores, summarize
from linearlens.patterns import fit_patterns
from linearlens.patterns.io import load_patterns, save_patterns
from linearlens.patterns.quality import quality_per_layer

HERE = Path(__file__).resolve().parent
ROOT = HERE.parents[1]
DATA = ROOT.parent / "shared" / "data" / "cifar10"
RUNS = ROOT / "runs" / "patterns"
OUT = HERE / "results"
sys.path.insert(0, str(HERE))
from models import ARCHITECTURES  # noqa: E402

ESTIMATORS = ("x", "w", "a", "a+-")
COMMAND = "python experiments/patterns/run.py"


def load_net(arch: str) -> torch.nn.Module | None:
    path = RUNS / arch / "model.safetensors"
    if not path.is_file():
        print(f"note: {path} is missing (run experiments/patterns/train.py --arch {arch}); skipping it",
              file=sys.stderr)
        return None
    model = ARCHITECTURES[arch]()
    model.load_state_dict(load_file(str(path)))
    return model.eval()


def batches(images: torch.Tensor, size: int = 250):
    for i in range(0, len(images), size):
        yield images[i:i + size].float() / 255


def patterns_for(arch: str, model: torch.nn.Module, train: torch.Tensor, n_fit: int, centre: str = "all") -> tuple:
    """Patterns fitted on the first ``n_fit`` training images (cached next to the weights)."""
    path = RUNS / arch / f"patterns_{centre}.safetensors"
    if path.is_file():
        ps = load_patterns(path, model)
        if ps.meta.get("images") == n_fit and ps.meta.get("centre") == centre:
            return ps, ps.meta.get("cpu_seconds", float("nan"))
    t0 = time.process_time()
    ps = fit_patterns(model, batches(train[:n_fit]), centre=centre)
    ps.meta["cpu_seconds"] = time.process_time() - t0
    save_patterns(path, ps)
    return ps, ps.meta["cpu_seconds"]


def phase_rho(results: dict, nets: dict, train, test, args) -> None:
    out = {}
    fig, axes = subplots(1, len(nets), figsize=(5.5 * len(nets), 3.6), squeeze=False)
    for ax, (arch, model) in zip(axes[0], nets.items()):
        ps, seconds = patterns_for(arch, model, train, args.fit_images)
        n_v = args.fit_images + args.regression_images
        t0 = time.process_time()
        centred, _ = patterns_for(arch, model, train, args.fit_images, centre="regime")
        rho = quality_per_layer(model, ps, batches(train[args.fit_images:n_v]),
                                batches(test.images[: args.eval_images]), rows_per_image=args.rows_per_image,
                                variants={"regime-centred": centred})
        out[arch] = {"patterns_cpu_seconds": seconds, "rho_cpu_seconds": time.process_time() - t0, "layers": rho}
        names = list(rho)
        for est, marker in (("random", "x"), ("w", "s"), ("a", "o"), ("a+-", "^"), ("a+- (regime-centred)", "v")):
            label = f"S_{est}" if est != "random" else est
            ax.plot(range(len(names)), [rho[n][est] for n in names], marker=marker, label=label)
        ax.set_xticks(range(len(names)), names, rotation=45, ha="right", fontsize=7)
        ax.set_ylabel("rho (Eq. 1), higher is better")
        ax.set_title(f"{arch}: quality of signal estimators per layer")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    save_figure(fig, OUT / "rho_per_layer.png")
    results["rho"] = {
        "command": f"{COMMAND} --phase rho", "fit_images": args.fit_images,
        "regression_images": args.regression_images, "eval_images": args.eval_images,
        "rows_per_conv_image": args.rows_per_image, **out,
    }


def phase_degradation(results: dict, nets: dict, train, test, args) -> None:
    model = nets["vgg"]
    ps, _ = patterns_for("vgg", model, train, args.fit_images)
    x = test.images[: args.degradation_images].float() / 255
    predicted = classify(model, x).argmax(1)
    curves, steps, out = {}, None, {}
    centred, _ = patterns_for("vgg", model, train, args.fit_images, centre="regime")
    runs = [(f"S_{est}", est, ps) for est in ESTIMATORS] + [("S_a+- (regime-centred)", "a+-", centred)]
    for name, est, patterns in runs:
        e = explain(model, x, predicted, method="patternattribution", patterns=patterns, estimator=est)
        c, steps = degradation_curve(model, x, e.attributions[:, 0], predicted, args.patch, args.steps)
        curves[name] = c
    gen = torch.Generator().manual_seed(0)
    randoms = [degradation_curve(model, x, torch.zeros(x.shape[0], 32, 32), predicted, args.patch, args.steps,
                                 order="random", generator=gen)[0] for _ in range(args.random_orders)]
    curves["random"] = torch.stack(randoms).mean(0)
    for name, c in curves.items():
        scores = aopc(c)
        out[name] = {"aopc": summarize(scores), "aopc_standard_error": float(scores.std() / len(scores) ** 0.5),
                     "mean_curve": [round(float(v), 5) for v in c.mean(0)]}
    out["random"]["aopc_per_order"] = [float(aopc(r).mean()) for r in randoms]
    fig, ax = subplots(figsize=(5.5, 3.8))
    frac = (steps.float() / steps.max()).numpy()
    for name, c in curves.items():
        ax.plot(frac, c.mean(0).numpy(), label=f"{name} (AOPC {out[name]['aopc']['mean']:.3f})")
    ax.set_xlabel(f"fraction of {args.patch}x{args.patch} patches replaced by their mean")
    ax.set_ylabel("softmax probability of the initial class")
    ax.set_title("Image degradation, PatternAttribution (VGG-style net)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    save_figure(fig, OUT / "degradation.png")
    results["degradation"] = {
        "command": f"{COMMAND} --phase degradation", "images": int(x.shape[0]), "patch": args.patch,
        "steps": steps.tolist(), "random_orders": args.random_orders, "methods": out,
    }


def _signal_image(t: torch.Tensor) -> torch.Tensor:
    """``x / (2 max|x|) + 1/2`` (Fig. 5 of the PatternNet paper), channels last."""
    return (t / (2 * t.abs().max().clamp_min(1e-12)) + 0.5).permute(1, 2, 0).clamp(0, 1)


def phase_qualitative(results: dict, nets: dict, train, test, args) -> None:
    model = nets["vgg"]
    ps, _ = patterns_for("vgg", model, train, args.fit_images)
    x = test.images[: args.qualitative_images].float() / 255
    predicted = classify(model, x).argmax(1)
    signal = {
        "PatternNet": explain(model, x, predicted, method="patternnet", patterns=ps),
        "Guided BP": explain(model, x, predicted, method="guided_backprop"),
        "DeConvNet": explain(model, x, predicted, method="deconvnet"),
        "Gradient": explain(model, x, predicted, method="gradient", abs=False),
    }
    heat = {
        "PatternAttribution": explain(model, x, predicted, method="patternattribution", patterns=ps),
        "LRP (epsilon)": explain(model, x, predicted, method="lrp"),
    }
    cols = 1 + len(signal) + len(heat)
    fig, axes = subplots(len(x), cols, figsize=(1.6 * cols, 1.6 * len(x)), squeeze=False)
    for i in range(len(x)):
        axes[i, 0].imshow(x[i].permute(1, 2, 0).numpy())
        for j, e in enumerate(signal.values(), 1):
            axes[i, j].imshow(_signal_image(e.channel_attributions[i, 0]).numpy())
        for j, e in enumerate(heat.values(), 1 + len(signal)):
            m = e.attributions[i, 0]
            lim = float(m.abs().max().clamp_min(1e-12))
            axes[i, j].imshow(m.numpy(), cmap="seismic", vmin=-lim, vmax=lim)
        for ax in axes[i]:
            ax.set_xticks([])
            ax.set_yticks([])
    for j, name in enumerate(["input", *signal, *heat]):
        axes[0, j].set_title(name, fontsize=8)
    save_figure(fig, OUT / "qualitative.png")
    results["qualitative"] = {"command": f"{COMMAND} --phase qualitative", "images": int(len(x)),
                              "normalisation": "signal: x / (2 max|x|) + 1/2; attribution: seismic, +-max|r|"}


def phase_pointing(results: dict, nets: dict, train, test, args) -> None:
    from linearlens.training import load_checkpoint

    if "resnet" not in nets or not (RUNS / "bcos" / "model.safetensors").is_file():
        print("note: the pointing phase needs runs/patterns/{resnet,bcos}; skipping it", file=sys.stderr)
        return
    relu, bcos = nets["resnet"], load_checkpoint(RUNS / "bcos")
    ps, _ = patterns_for("resnet", relu, train, args.fit_images)
    images, labels = test.images, test.labels
    logits_r, logits_b = classify(relu, images), classify(bcos, images)
    both = (logits_r.argmax(1) == labels) & (logits_b.argmax(1) == labels)
    confidence = torch.minimum(logits_r.softmax(1), logits_b.softmax(1)).gather(1, labels[:, None])[:, 0]
    grids = make_grids(images, labels, confidence, 3, args.grids, torch.Generator().manual_seed(0), both, False)
    grids.images = grids.images.float() / 255
    methods = {
        "bcos (inherent, B-cos net)": (bcos, "bcos", {}),
        "patternattribution": (relu, "patternattribution", {"patterns": ps}),
        "patternnet": (relu, "patternnet", {"patterns": ps}),
        "gradient": (relu, "gradient", {}),
        "ixg": (relu, "ixg", {}),
        "guided_backprop": (relu, "guided_backprop", {}),
        "gradcam": (relu, "gradcam", {}),
    }
    scores, out = {}, {}
    for name, (model, method, options) in methods.items():
        try:
            s, seconds = grid_pointing_scores(model, grids, method, options, progress=False)
        except Exception as err:  # a method that does not apply to this net is reported, not fatal
            out[name] = {"error": str(err).splitlines()[0]}
            continue
        scores[name] = s
        out[name] = {**summarize(s), "seconds_per_grid": seconds}
    fig, ax = subplots(figsize=(6.5, 3.6))
    names = list(scores)
    ax.boxplot([scores[k].flatten().numpy() for k in names], showmeans=True, whis=(5, 95), showfliers=False)
    ax.set_xticks(range(1, len(names) + 1), names, rotation=30, ha="right", fontsize=8)
    ax.set_ylabel("grid pointing game (3x3)")
    ax.set_title("B-cos inherent vs PatternAttribution / post-hoc on a ReLU ResNet")
    ax.grid(axis="y", alpha=0.3)
    save_figure(fig, OUT / "pointing_game.png")
    results["pointing"] = {
        "command": f"{COMMAND} --phase pointing", "grids": len(grids), "smooth_kernel": 3,
        "accuracy": {"resnet": float((logits_r.argmax(1) == labels).float().mean()),
                     "bcos": float((logits_b.argmax(1) == labels).float().mean())},
        "both_correct": int(both.sum()), "methods": out,
    }


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--phase", choices=["all", "rho", "degradation", "qualitative", "pointing"], default="all")
    p.add_argument("--fit-images", type=int, default=2000, help="training images the patterns are fitted on")
    p.add_argument("--regression-images", type=int, default=1000, help="next training images, for v of Eq. (1)")
    p.add_argument("--eval-images", type=int, default=1000, help="test images rho is measured on")
    p.add_argument("--rows-per-image", type=int, default=8, help="random output locations per image (convs, rho)")
    p.add_argument("--degradation-images", type=int, default=200)
    p.add_argument("--patch", type=int, default=4)
    p.add_argument("--steps", type=int, default=17)
    p.add_argument("--random-orders", type=int, default=5)
    p.add_argument("--qualitative-images", type=int, default=5)
    p.add_argument("--grids", type=int, default=30)
    args = p.parse_args()
    if not DATA.is_dir():
        sys.exit(f"error: the CIFAR-10 copy {DATA} (../shared/data/cifar10) is absent; these experiments need it")
    torch.set_num_threads(1)
    train_set, test_set = load_cifar10(str(DATA), "train"), load_cifar10(str(DATA), "test")
    # a fixed shuffle, so that every split holds all classes
    train = train_set.images[torch.randperm(len(train_set), generator=torch.Generator().manual_seed(0))]
    test = test_set.subset(torch.randperm(len(test_set), generator=torch.Generator().manual_seed(1)))
    nets = {a: m for a in ("vgg", "resnet") if (m := load_net(a)) is not None}
    if "vgg" not in nets:
        sys.exit("error: runs/patterns/vgg is missing; run experiments/patterns/train.py --arch vgg first")
    OUT.mkdir(parents=True, exist_ok=True)
    path = OUT / "results.json"
    phases = {"rho": phase_rho, "degradation": phase_degradation, "qualitative": phase_qualitative,
              "pointing": phase_pointing}
    for name, fn in phases.items():
        if args.phase in ("all", name):
            t0 = time.process_time()
            mine: dict = {}
            fn(mine, nets, train, test, args)
            # phases may run as separate processes: merge into what is on disk now
            results = json.loads(path.read_text()) if path.is_file() else {}
            results.update(mine, threads=1)
            results.setdefault("cpu_seconds", {})[name] = round(time.process_time() - t0, 1)
            path.write_text(json.dumps(results, indent=1))
            print(f"{name}: done ({results['cpu_seconds'][name]} CPU s)", flush=True)


if __name__ == "__main__":
    main()
