"""Writing the study's report: ``report.json``, PNG panels and one self-contained ``index.html``.

Panels (one PNG per shown test radiograph): the radiograph with its boxes, then for every variant the
contribution map (inherent for B-cos, LayerCAM for the baseline) of every finding the model predicts
above its validation threshold (else of the labelled finding, titled "below threshold"), boxes drawn.
"""

from __future__ import annotations

import html
import json
import math
from pathlib import Path
from typing import Any

import numpy as np

from linearlens.explain.visualize import contribution_heatmap
from linearlens.figures import save_figure, subplots

__all__ = ["write_report", "results_markdown"]


def _clean(value: Any) -> Any:
    if isinstance(value, float):
        return None if not math.isfinite(value) else round(value, 6)
    if isinstance(value, dict):
        return {str(k): _clean(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_clean(v) for v in value]
    return value


def _draw_boxes(ax: Any, boxes: Any) -> None:
    from matplotlib.patches import Rectangle

    for x1, y1, x2, y2 in boxes.tolist():
        ax.add_patch(Rectangle((x1 - 0.5, y1 - 0.5), x2 - x1, y2 - y1, fill=False, edgecolor="lime", linewidth=1.2))


def _panel(entry: dict[str, Any], path: Path) -> Path:
    variants = entry["variants"]
    classes = entry["classes"]
    columns = [("radiograph", None, None)]
    for variant, v in variants.items():
        method = "inherent" if "inherent" in v["maps"] else "layercam"
        above = [k for k, (p, t) in enumerate(zip(v["probabilities"], v["thresholds"])) if p >= t]
        shown = above or [int(np.argmax(entry["labels"].numpy()))]
        for k in shown:
            state = "" if k in above else ", below threshold"
            title = f"{variant} {method}\n{classes[k]} p={v['probabilities'][k]:.2f}{state}"
            columns.append((title, v["maps"][method][k], k))
    fig, axes = subplots(1, len(columns), figsize=(2.6 * len(columns), 3.3), squeeze=False)
    for ax, (title, attribution, k) in zip(axes[0], columns):
        if attribution is None:
            ax.imshow(entry["image"].numpy(), cmap="gray", vmin=0, vmax=255)
            _draw_boxes(ax, entry["boxes"])
        else:
            ax.imshow(contribution_heatmap(attribution))
            _draw_boxes(ax, entry["boxes"][entry["box_labels"] == k])
        ax.set_title(title if attribution is not None else entry["image_id"], fontsize=7)
        ax.axis("off")
    return save_figure(fig, path)


def _sweep_figure(report: dict[str, Any], path: Path) -> Path | None:
    curves = [(k, v) for k, v in report["epg"].items() if "sweep" in v]
    if not curves:
        return None
    fig, axes = subplots(1, 2, figsize=(9, 3.4), squeeze=False)
    for name, entry in curves:
        axes[0, 0].plot(entry["sweep"]["thresholds"], entry["sweep"]["epg"], marker="o", label=name)
        axes[0, 1].plot(entry["sweep"]["thresholds"], entry["sweep"]["recall"], marker="o", label=name)
    for ax, title in zip(axes[0], ("EPG", "recall-EPG")):
        ax.set_xlabel("saliency threshold (fraction of the map's maximum)")
        ax.set_title(f"{title} vs threshold (Fig. 3)")
        ax.grid(alpha=0.3)
    axes[0, 0].legend(fontsize=6)
    return save_figure(fig, path)


def _pct(x: Any) -> str:
    return "n/a" if x is None or (isinstance(x, float) and not math.isfinite(x)) else f"{100 * x:.1f}"


def results_markdown(report: dict[str, Any]) -> str:
    """The results tables (classification, EPG with intervals and chance, artifact scores, ablation) as Markdown."""
    lines = ["| variant | Acc | Pre | Rec | Spec | F1 | AUROC |", "|---|---|---|---|---|---|---|"]
    for variant, m in report["main"].items():
        cells = [f"{_pct(m[k]['mean'])} ± {_pct(m[k]['std'])}" for k in
                 ("accuracy", "precision", "recall", "specificity", "f1", "auroc")]
        lines.append(f"| {variant} | " + " | ".join(cells) + " |")
    lines += ["", "| variant / method | EPG [95% CI] (chance) | EPG TP | EPG FN | recall-EPG | artifact | pairs |",
              "|---|---|---|---|---|---|---|"]
    for name, e in report["epg"].items():
        art = e.get("artifact_all_folds", {}).get("mean")
        art_text = "n/a" if art is None or not math.isfinite(art) else f"{art:.2f}"
        if "epg_all" not in e:
            lines.append(f"| {name} | {e.get('note', 'withheld')} | | | | {art_text} | |")
            continue

        def cell(s: dict) -> str:
            return f"{_pct(s['mean'])} [{_pct(s['low'])}, {_pct(s['high'])}] ({_pct(s['chance'])})"

        empty = e.get("maps_without_positive_energy", 0)
        pairs = f"{e['epg_all']['n']}" + (f" ({empty} maps without positive energy)" if empty else "")
        lines.append(f"| {name} | {cell(e['epg_all'])} | {cell(e['epg_tp'])} | {cell(e['epg_fn'])} | "
                     f"{cell(e['recall_all'])} | {art_text} | {pairs} |")
    if report["paired"]:
        lines += ["", "| EPG difference (paired bootstrap) | a − b [95% CI] | pairs |", "|---|---|---|"]
        for p in report["paired"]:
            lines.append(f"| {p['a']} − {p['b']} | {_pct(p['difference'])} [{_pct(p['low'])}, {_pct(p['high'])}] "
                         f"| {p['n']} |")
    if report["ablation"]:
        lines += ["", "| variant | Aug | Over | Acc | Pre | Rec | F1 | AUROC |", "|---|---|---|---|---|---|---|---|"]
        for a in report["ablation"]:
            cells = [f"{_pct(a[k]['mean'])} ± {_pct(a[k]['std'])}" for k in
                     ("accuracy", "precision", "recall", "f1", "auroc")]
            lines.append(f"| {a['variant']} | {'yes' if a['augment'] else 'no'} | {'yes' if a['oversample'] else 'no'}"
                         f" | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def _markdown_to_html(text: str) -> str:
    out, table = [], False
    for line in text.split("\n"):
        if line.startswith("|"):
            cells = [c.strip() for c in line.strip("|").split("|")]
            if set("".join(cells)) <= {"-"}:
                continue
            tag = "th" if not table else "td"
            out.append(("<table>" if not table else "") + "<tr>" + "".join(
                f"<{tag}>{html.escape(c)}</{tag}>" for c in cells) + "</tr>")
            table = True
        else:
            if table:
                out.append("</table>")
            table = False
    if table:
        out.append("</table>")
    return "\n".join(out)


def write_report(report: dict[str, Any], out_dir: str | Path) -> dict[str, Path]:
    """Write ``report.json``, ``panels/*.png``, ``sweep.png``, ``results.md`` and ``index.html`` into ``out_dir``."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    panels = [_panel(entry, out / "panels" / f"{entry['image_id'].rsplit('.', 1)[0]}.png")
              for entry in report.get("_panels", [])]
    sweep = _sweep_figure(report, out / "sweep.png")
    public = {k: v for k, v in report.items() if not k.startswith("_")}
    (out / "report.json").write_text(json.dumps(_clean(public), indent=1))
    markdown = results_markdown(public)
    (out / "results.md").write_text(markdown + "\n")
    config = html.escape(json.dumps(_clean(public["config"]), indent=1))
    images = "".join(f'<p><img src="{p.relative_to(out).as_posix()}" style="max-width:100%"></p>' for p in panels)
    sweep_html = f'<p><img src="{sweep.relative_to(out).as_posix()}"></p>' if sweep else ""
    page = (
        "<!doctype html><html><head><meta charset='utf-8'><title>linearlens chest X-ray study</title>"
        "<style>body{font-family:sans-serif;margin:2em}table{border-collapse:collapse;margin:1em 0}"
        "td,th{border:1px solid #ccc;padding:3px 8px;font-size:13px}</style></head><body>"
        f"<h1>Chest X-ray study ({html.escape(public['config']['preset'])} preset)</h1>"
        f"<p>{public['images']} images of {public['patients']} patients, findings: "
        f"{html.escape(', '.join(public['classes']))}; {len(public['folds'])} patient folds. Percentages; EPG cells: "
        "mean [95% bootstrap interval] (chance = box area share).</p>"
        f"{_markdown_to_html(markdown)}<h2>EPG threshold sweep</h2>{sweep_html}<h2>Panels</h2>{images}"
        f"<h2>Configuration</h2><pre>{config}</pre></body></html>"
    )
    (out / "index.html").write_text(page)
    return {"json": out / "report.json", "html": out / "index.html", "markdown": out / "results.md"}
