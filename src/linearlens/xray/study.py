"""The chest X-ray study end to end: folds x variants x seeds, the Tab. 1 ablation, pooled EPG statistics.

For every patient fold (:func:`linearlens.data.xray.cross_validation`) and variant a fresh network is
trained on that fold's training patients only (after optional auxiliary pretraining on the NIH
pneumonia-vs-no-finding labels of the same training patients, never the fold's validation or test
patients), its decision thresholds are chosen on the fold's validation patients, and it is scored on the
fold's test patients: classification metrics at those thresholds, and for every explanation method EPG /
recall-EPG / chance level per (image, finding) pair with a box, the threshold sweep and artifact scores.
EPG is pooled over the folds whose model reaches ``epg_min_auroc`` (others are named, not averaged in).
"""

from __future__ import annotations

import time
from collections import defaultdict
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from tqdm.auto import tqdm

from linearlens._threads import num_threads
from linearlens.data.xray import PatientFold, XraySet, cross_validation, load_xray_subset
from linearlens.metrics.energy_pointing import paired_bootstrap, summarise_pairs
from linearlens.xray.config import BASELINE_METHODS, BCOS_METHODS, StudyConfig
from linearlens.xray.evaluation import classify, epg_pairs, explanation_maps
from linearlens.xray.models import build_model, is_bcos
from linearlens.xray.thresholds import choose_thresholds
from linearlens.xray.training import FitSettings, fit, predict_logits

__all__ = ["run_study", "load_study_data", "RunResult"]


@dataclass
class RunResult:
    """One trained network scored on its fold's test patients."""

    variant: str
    fold: int
    seed: int
    augment: bool
    oversample: bool
    classification: dict
    thresholds: list[float]
    history: dict
    seconds: float  # process CPU time of training and scoring
    pairs: dict[str, dict[str, torch.Tensor]] = field(default_factory=dict)  # method -> epg_pairs
    test_ids: tuple[str, ...] = ()
    panel_maps: dict[str, dict[str, torch.Tensor]] = field(default_factory=dict)  # image id -> method -> (K,H,W)
    probabilities: dict[str, list[float]] = field(default_factory=dict)  # image id -> (K,)

    @property
    def auroc(self) -> float:
        return float(self.classification["macro"]["auroc"])


def load_study_data(config: StudyConfig) -> tuple[XraySet, XraySet | None]:
    """The task's images and (binary task only) the auxiliary pneumonia-vs-no-finding set."""
    data = load_xray_subset(config.data, config.task, size=config.size)
    if config.task == "nih":
        keep = [c for c, n in zip(data.classes, data.labels.sum(0).tolist()) if n >= config.min_positives]
        if not keep:
            raise ValueError(f"no NIH finding has {config.min_positives} positives in this data")
        data = data.select_classes(keep)
    aux = None
    if config.task == "rsna" and config.aux_epochs > 0:
        nih = load_xray_subset(config.data, "nih", size=config.size)
        pneumonia = nih.classes.index("Pneumonia")
        rows = [i for i in range(len(nih)) if nih.labels[i, pneumonia] == 1 or nih.labels[i].sum() == 0]
        aux = nih.subset(rows).select_classes(["Pneumonia"])
    return data, aux


def _patients_rows(data: XraySet, patients: set[str]) -> list[int]:
    return [i for i, p in enumerate(data.patient_ids) if p in patients]


def _settings(config: StudyConfig, variant: str, seed: int, augment: bool, oversample: bool,
              epochs: int) -> FitSettings:
    lr = config.lr_bcos if is_bcos(variant) else config.lr_baseline
    return FitSettings(epochs, lr, config.weight_decay, config.patience, config.batch_size, augment, oversample,
                       config.translate, seed, config.device)


def _run(config: StudyConfig, data: XraySet, aux: XraySet | None, fold: PatientFold, variant: str, seed: int,
         augment: bool, oversample: bool, explain_images: bool, progress: bool) -> RunResult:
    start = time.process_time()
    train, val, test = data.subset(fold.train), data.subset(fold.val), data.subset(fold.test)
    name = f"fold {fold.fold} {variant} seed {seed}"
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = build_model(variant, config, len(data.classes), float(train.labels.mean()))
    history: dict[str, Any] = {}
    if aux is not None:
        aux_train = aux.subset(_patients_rows(aux, set(train.patient_ids)))
        aux_val = aux.subset(_patients_rows(aux, set(val.patient_ids)))
        if len(aux_train) and len(aux_val):
            history["aux"] = fit(model, aux_train, aux_val, _settings(config, variant, seed, augment, oversample,
                                                                     config.aux_epochs), f"{name} aux", progress)
    history["main"] = fit(model, train, val, _settings(config, variant, seed, augment, oversample, config.epochs),
                          name, progress)
    val_probs = torch.sigmoid(predict_logits(model, val, device=config.device))
    choice = choose_thresholds(val.labels, val_probs, config.threshold_rule)
    test_logits = predict_logits(model, test, device=config.device)
    test_probs = torch.sigmoid(test_logits)
    result = RunResult(variant, fold.fold, seed, augment, oversample,
                       classify(test_logits, test.labels, choice.thresholds, data.classes),
                       choice.thresholds.tolist(), history, 0.0, test_ids=test.image_ids)
    result.classification["threshold_fallback"] = [data.classes[k] for k in choice.fallback_classes]
    if explain_images:
        has_box = [i for i in range(len(test)) if len(test.boxes[i]) and test.labels[i].sum() > 0]
        shown = has_box[: config.panels]
        explained = test.subset(has_box)
        for method in (BCOS_METHODS if is_bcos(variant) else BASELINE_METHODS):
            maps = explanation_maps(model, method, explained.images, device=config.device)
            pairs = epg_pairs(maps, explained, test_probs[has_box], choice.thresholds, config.sweep,
                              config.artifact_stride)
            pairs["image_id"] = [explained.image_ids[i] for i in pairs["image"].tolist()]
            result.pairs[method] = pairs
            for j, i in enumerate(has_box):
                if i in shown:
                    result.panel_maps.setdefault(test.image_ids[i], {})[method] = maps[j]
        result.probabilities = {test.image_ids[i]: test_probs[i].tolist() for i in shown}
    result.seconds = time.process_time() - start
    return result


def _summarise_classification(runs: list[RunResult]) -> dict:
    keys = ("accuracy", "precision", "recall", "specificity", "f1", "auroc")
    values = {k: np.array([r.classification["macro"][k] for r in runs], dtype=float) for k in keys}
    return {k: {"mean": float(np.nanmean(v)) if np.isfinite(v).any() else float("nan"),
                "std": float(np.nanstd(v)) if np.isfinite(v).any() else float("nan"), "runs": len(v)}
            for k, v in values.items()}


def _pooled_pairs(runs: list[RunResult], method: str) -> dict[str, Any]:
    keys = ("epg", "recall", "chance", "predicted", "empty")
    pooled: dict[str, Any] = {k: [] for k in (*keys, "sweep_epg", "sweep_recall", "artifact", "key")}
    for r in runs:
        p = r.pairs.get(method)
        if p is None:
            continue
        for k in keys:
            pooled[k].append(p[k])
        pooled["sweep_epg"].append(p["sweep_epg"])
        pooled["sweep_recall"].append(p["sweep_recall"])
        pooled["artifact"].append(p["artifact"])
        pooled["key"] += [(i, int(c)) for i, c in zip(p["image_id"], p["finding"].tolist())]
    if not pooled["epg"]:
        return {}
    out = {k: torch.cat(pooled[k]) for k in keys}
    out["sweep_epg"] = torch.cat(pooled["sweep_epg"], 1)
    out["sweep_recall"] = torch.cat(pooled["sweep_recall"], 1)
    out["artifact"] = torch.cat(pooled["artifact"])
    out["key"] = pooled["key"]
    return out


def _epg_summary(pooled: dict[str, Any], config: StudyConfig) -> dict:
    summaries = {}
    for name in ("epg", "recall"):
        by = summarise_pairs(pooled[name], pooled["chance"], pooled["predicted"], config.n_boot)
        for group, summary in by.items():
            summaries[f"{name}_{group}"] = summary.as_dict()
    summaries["maps_without_positive_energy"] = int(pooled["empty"].sum())
    summaries["sweep"] = {
        "thresholds": list(config.sweep),
        "epg": pooled["sweep_epg"].double().mean(1).tolist(),
        "recall": pooled["sweep_recall"].double().mean(1).tolist(),
    }
    art = pooled["artifact"][torch.isfinite(pooled["artifact"])]
    summaries["artifact"] = {"mean": float(art.mean()) if len(art) else float("nan"), "maps": len(art)}
    return summaries


def _paired(pooled: dict[tuple[str, str], dict], a: tuple[str, str], b: tuple[str, str], n_boot: int) -> dict | None:
    if a not in pooled or b not in pooled or not pooled[a] or not pooled[b]:
        return None
    index_b = {k: i for i, k in enumerate(pooled[b]["key"])}
    common = [(i, index_b[k]) for i, k in enumerate(pooled[a]["key"]) if k in index_b]
    if not common:
        return None
    ia, ib = zip(*common)
    result = paired_bootstrap(pooled[a]["epg"][list(ia)], pooled[b]["epg"][list(ib)], n_boot=n_boot).as_dict()
    result.update(a=f"{a[0]} {a[1]}", b=f"{b[0]} {b[1]}")
    return result


def run_study(config: StudyConfig, progress: bool = True) -> dict[str, Any]:
    """Run the whole study; returns the report dictionary (see :mod:`linearlens.xray.report`)."""
    config.validate()
    with num_threads(config.threads):
        return _study(config, progress)


def _main_folds(config: StudyConfig, folds: list[PatientFold]) -> list[PatientFold]:
    return folds if config.run_folds is None else [f for f in folds if f.fold in config.run_folds]


def _jobs(config: StudyConfig, folds: list[PatientFold]) -> list[tuple]:
    """(fold, variant, seed, augment, oversample, explain) of the main table, then of the Tab. 1 ablation."""
    jobs = [(f, v, s, config.augment, config.oversample, True)
            for f in _main_folds(config, folds) for s in config.seeds for v in config.variants]
    if config.ablation:
        fold = folds[config.ablation_fold]
        jobs += [(fold, v, s, aug, over, False) for v in config.ablation_variants for s in config.ablation_seeds
                 for aug in (False, True) for over in (False, True)]
    return jobs


def _epg_entry(config: StudyConfig, variant: str, method: str, runs: list[RunResult],
               pooled: dict[tuple[str, str], dict]) -> dict[str, Any]:
    """EPG statistics of one variant and method pooled over the folds whose model passes the AUROC bar."""
    passing = [r for r in runs if r.auroc >= config.epg_min_auroc]
    entry: dict[str, Any] = {
        "variant": variant, "method": method, "folds_reported": len(passing),
        "withheld": [f"fold {r.fold} seed {r.seed}: AUROC {r.auroc:.3f}" for r in runs if r not in passing],
    }
    all_pairs = _pooled_pairs(runs, method)
    if all_pairs:  # the artifact score measures the maps, whatever the accuracy
        art = all_pairs["artifact"][torch.isfinite(all_pairs["artifact"])]
        entry["artifact_all_folds"] = {"mean": float(art.mean()) if len(art) else float("nan"), "maps": len(art)}
    pairs = _pooled_pairs(passing, method)
    if pairs:
        pooled[(variant, method)] = pairs
        entry.update(_epg_summary(pairs, config))
    else:
        entry["note"] = (f"EPG withheld: no model of this variant reached AUROC >= {config.epg_min_auroc}"
                         if not passing else "no test image with a box")
    return entry


def _study(config: StudyConfig, progress: bool) -> dict[str, Any]:
    data, aux = load_study_data(config)
    folds = cross_validation(data.patient_ids, data.labels, k=config.folds, seed=0)
    done: dict[tuple, RunResult] = {}
    for fold, variant, seed, aug, over, explain_images in tqdm(_jobs(config, folds), desc="xray study",
                                                               disable=not progress):
        key = (fold.fold, variant, seed, aug, over)
        if key not in done:
            done[key] = _run(config, data, aux, fold, variant, seed, aug, over, explain_images, progress)
    main = [done[(f.fold, v, s, config.augment, config.oversample)]
            for f in _main_folds(config, folds) for s in config.seeds for v in config.variants]
    report: dict[str, Any] = {
        "config": config.as_dict(), "classes": list(data.classes), "images": len(data),
        "patients": len(set(data.patient_ids)), "positives": data.labels.sum(0).tolist(),
        "folds": [{"fold": f.fold, "train": len(f.train), "val": len(f.val), "test": len(f.test)} for f in folds],
        "main": {}, "epg": {}, "paired": [], "ablation": [], "runs": [],
    }
    pooled: dict[tuple[str, str], dict] = {}
    for variant in config.variants:
        runs = [r for r in main if r.variant == variant]
        report["main"][variant] = _summarise_classification(runs)
        for method in (BCOS_METHODS if is_bcos(variant) else BASELINE_METHODS):
            report["epg"][f"{variant}/{method}"] = _epg_entry(config, variant, method, runs, pooled)
    for other in (("blurpool", "inherent"), ("flc", "inherent"), ("baseline", "layercam"), ("strided", "layercam")):
        paired = _paired(pooled, other, ("strided", "inherent"), config.n_boot)
        if paired:
            report["paired"].append(paired)
    for variant, aug, over in ((v, a, o) for v in (config.ablation_variants if config.ablation else ())
                               for a in (False, True) for o in (False, True)):
        runs = [done[(config.ablation_fold, variant, s, aug, over)] for s in config.ablation_seeds]
        report["ablation"].append({"variant": variant, "augment": aug, "oversample": over,
                                   "fold": config.ablation_fold, "seeds": list(config.ablation_seeds),
                                   **_summarise_classification(runs)})
    report["runs"] = [{"variant": r.variant, "fold": r.fold, "seed": r.seed, "augment": r.augment,
                       "oversample": r.oversample, "cpu_seconds": r.seconds, "thresholds": r.thresholds,
                       "macro": r.classification["macro"], "history": r.history} for r in done.values()]
    report["_panels"] = _panel_data(main, data)
    return report


def _panel_data(main: list[RunResult], data: XraySet) -> list[dict[str, Any]]:
    """Per shown test image: pixels, boxes, and each variant's maps and probabilities (not written to JSON)."""
    index = {name: i for i, name in enumerate(data.image_ids)}
    panels: dict[str, dict[str, Any]] = defaultdict(dict)
    for r in main:
        if r.seed != min(x.seed for x in main):
            continue
        for image_id, maps in r.panel_maps.items():
            i = index[image_id]
            entry = panels[image_id]
            entry.update(image=data.images[i, 0], boxes=data.boxes[i], box_labels=data.box_labels[i],
                         labels=data.labels[i], classes=data.classes, image_id=image_id)
            entry.setdefault("variants", {})[r.variant] = {
                "maps": maps, "probabilities": r.probabilities[image_id], "thresholds": r.thresholds}
    return list(panels.values())

