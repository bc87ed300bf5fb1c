"""``linearlens xray``: the chest X-ray study (anti-aliased multi-label B-cos) end to end, with a report."""

from __future__ import annotations

import argparse
import time
from dataclasses import replace
from pathlib import Path

from . import CommandError


def run(args: argparse.Namespace) -> int:
    import torch

    from ..xray.config import PRESETS, preset
    from ..xray.report import write_report
    from ..xray.study import run_study

    overrides = {}
    if args.quick:
        quick = PRESETS["quick"]
        overrides.update({k: getattr(quick, k) for k in (
            "data", "min_positives", "size", "width", "folds", "epochs", "aux_epochs", "batch_size", "translate",
            "sweep", "ablation_seeds", "artifact_stride", "panels", "n_boot")})
        if args.preset == "paper":
            overrides.update(backbone="resnet18", device="cpu")
    for name in ("data", "task", "folds", "epochs", "threads", "device"):
        value = getattr(args, name)
        if value is not None:
            overrides[name] = value
    if args.min_auroc is not None:
        overrides["epg_min_auroc"] = args.min_auroc
    if args.fold:
        overrides["run_folds"] = tuple(args.fold)
    if args.no_ablation:
        overrides["ablation"] = False
    if args.pretrained:
        pairs = [item.split("=", 1) for item in args.pretrained]
        if any(len(p) != 2 or not p[1] for p in pairs):
            raise CommandError("--pretrained takes VARIANT=FILE, e.g. flc=weights/bcos_resnet50_flc.safetensors")
        overrides["pretrained"] = dict(pairs)
    try:
        config = preset(args.preset, **overrides)
    except (TypeError, ValueError) as err:
        raise CommandError(str(err)) from None
    if config.device.startswith("cuda") and not torch.cuda.is_available():
        raise CommandError(f"the {config.preset} preset trains on a GPU and none is available here; "
                           "use --preset cpu, or --device cpu to run the paper protocol on the CPU anyway")
    if config.data != "embedded" and not Path(config.data).is_dir():
        raise CommandError(f"data folder {config.data} not found (the NIH subset lives in "
                           "../shared/data/nih-cxr14-subset256 relative to the project root); --data embedded uses "
                           "the 48 radiographs shipped with the package")
    out = Path(args.out or f"runs/xray_{config.preset}{'_quick' if args.quick else ''}")
    start = time.time()
    report = run_study(replace(config), progress=not args.quiet)
    paths = write_report(report, out)
    print(paths["markdown"].read_text())
    print(f"report: {paths['html']} ({time.time() - start:.0f} s)")
    return 0


def register(subparsers) -> None:
    parser = subparsers.add_parser("xray", help="chest X-ray study: B-cos strided/BlurPool/FLC vs ResNet, EPG report")
    parser.add_argument("--preset", choices=("paper", "cpu", "quick"), default="cpu",
                        help="paper: the paper's GPU protocol; cpu: 2-core scale; quick: toy size")
    parser.add_argument("--quick", action="store_true", help="toy size of the preset (embedded data, 1 epoch)")
    parser.add_argument("--data", default=None, help="'embedded' or the NIH subset folder")
    parser.add_argument("--task", choices=("rsna", "nih"), default=None, help="binary lung opacity or NIH multi-label")
    parser.add_argument("--folds", type=int, default=None)
    parser.add_argument("--fold", type=int, action="append", default=[],
                        help="run only this fold of the main table (repeatable; the split still uses all folds)")
    parser.add_argument("--epochs", type=int, default=None)
    parser.add_argument("--min-auroc", type=float, default=None, help="report EPG only for models at this AUROC")
    parser.add_argument("--no-ablation", action="store_true", help="skip the Tab. 1 augmentation x oversampling runs")
    parser.add_argument("--pretrained", action="append", default=[], metavar="VARIANT=FILE",
                        help="local ImageNet weights for a variant (repeatable; tensors matched by name and shape)")
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--device", default=None)
    parser.add_argument("--out", default=None, help="report folder (default runs/xray_<preset>)")
    parser.add_argument("--quiet", action="store_true", help="no progress bars")
    parser.set_defaults(func=run)
