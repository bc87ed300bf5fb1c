"""``linearlens report``: the explorer's static content as one self-contained HTML file.

Every picture is inlined as a PNG data URI and the style sheet is embedded, so the file opens
anywhere with no server and no other file.  Per image: the top classes with their scores, the
colour explanation and contribution map of each (Sec. 4, Eq. (15) of the B-cos paper), the
Δ-explanation between the two top classes (Fig. 9) and the residual's layer-wise bias
contributions (Theorem 1 of the linear-interpreter paper); then the tables and box plots of
``linearlens evaluate`` result folders and, optionally, neuron-atlas units (Figs. 10, B4).
"""

from __future__ import annotations

import base64
import html
import json
from pathlib import Path
from typing import Any

from .session import Explorer

__all__ = ["write_report", "evaluation_section"]

STYLE = """
body { font: 14px system-ui, sans-serif; margin: 1.5em auto; max-width: 1100px; color: #222; }
h1 { font-size: 1.4em; } h2 { font-size: 1.15em; border-bottom: 1px solid #ddd; padding-bottom: .2em; }
.image { display: flex; gap: 1.2em; flex-wrap: wrap; align-items: flex-start; margin-bottom: 1.5em; }
figure { margin: 0; display: inline-block; text-align: center; }
figure img { width: 112px; image-rendering: pixelated; border: 1px solid #ccc; }
figcaption { font-size: .75em; color: #555; max-width: 112px; }
table { border-collapse: collapse; margin: .4em 0; font-size: .9em; }
td, th { padding: .15em .6em; border-bottom: 1px solid #eee; text-align: right; }
td:first-child, th:first-child { text-align: left; }
code { font-size: .85em; background: #f4f4f4; padding: .1em .3em; }
.plot { max-width: 100%; }
"""


def _figure(uri: str | None, caption: str) -> str:
    if not uri:
        return ""
    return f'<figure><img src="{uri}" alt=""><figcaption>{html.escape(caption)}</figcaption></figure>'


def _table(header: list[str], rows: list[list[Any]]) -> str:
    def cell(v: Any) -> str:
        return f"{v:.4g}" if isinstance(v, float) else html.escape(str(v))

    head = "".join(f"<th>{html.escape(h)}</th>" for h in header)
    body = "".join("<tr>" + "".join(f"<td>{cell(v)}</td>" for v in row) + "</tr>" for row in rows)
    return f"<table><tr>{head}</tr>{body}</table>"


def image_section(ex: Explorer, index: int, top: int = 3) -> str:
    """One image's block: scores, explanations of the top classes, Δ, residual parts."""
    s = ex.summary(index)
    parts = [f"<h3>{html.escape(s['name'])} ({s['size'][1]}x{s['size'][0]})</h3><div class='image'>",
             _figure(s["image"], "input")]
    if ex.kind != "classifier":
        parts.append(_figure(s.get("output"), "output") + "</div>")
        return "".join(parts)
    names = ex.class_names or []
    for k in s["top"][:top]:
        e = ex.explanation(index, k)
        label = f"{names[k]} ({s['scores'][k]:.3f})"
        parts.append(_figure(e["colour"], f"W(x): {label}") + _figure(e["contributions"], f"contributions: {label}"))
    a, b = s["top"][:2]
    d = ex.delta(index, a, b)
    parts.append(_figure(d["contributions"], f"Δ {names[a]} − {names[b]}: {d['output']:.3f}"))
    scores = _table(["class", ex.scores, "output"],
                    [[names[k], s["scores"][k], s["outputs"][k]] for k in s["top"][:5]])
    r = ex.residual(index, a)
    residual = _table([f"{names[a]}: part", "value"], [[p["name"], p["value"]] for p in r["parts"]])
    parts.append(f"<div>{scores}{residual}</div></div>")
    return "".join(parts)


def evaluation_section(folder: str | Path) -> str:
    """The table and box plot of one ``linearlens evaluate`` output folder (``results.json``, ``boxplot.png``)."""
    folder = Path(folder)
    results_path = folder / "results.json"
    if not results_path.is_file():
        raise FileNotFoundError(f"{folder} has no results.json; is it an output folder of 'linearlens evaluate'?")
    try:
        results = json.loads(results_path.read_text())
    except json.JSONDecodeError as err:
        raise ValueError(f"{results_path} is not valid JSON: {err}") from None
    rows = []
    for method, row in results.get("methods", {}).items():
        if "error" in row:
            rows.append([method, "skipped: " + row["error"][:80], "", "", "", ""])
        else:
            rows.append([method, row["mean"], row["median"], row["q25"], row["q75"], row.get("seconds_per_image", "")])
    out = [f"<h3>{html.escape(str(results.get('metric')))} — {html.escape(str(results.get('model')))}</h3>",
           f"<p>accuracy {results.get('accuracy', float('nan')):.4f}; command: "
           f"<code>{html.escape(str(results.get('command', '')))}</code></p>",
           _table(["method", "mean", "median", "q25", "q75", "s/image"], rows)]
    plot = folder / "boxplot.png"
    if plot.is_file():
        uri = "data:image/png;base64," + base64.b64encode(plot.read_bytes()).decode("ascii")
        out.append(f'<img class="plot" src="{uri}" alt="box plot">')
    return "".join(out)


def atlas_section(ex: Explorer, units: list[int], count: int = 6) -> str:
    """Neuron-atlas units: top crops with the unit's explanation and the class histogram (as a table)."""
    atlas = ex.atlas
    out = [f"<p>layer <code>{html.escape(atlas.layer)}</code>, {html.escape(str(atlas.meta.get('images')))}</p>"]
    for u in units:
        view = atlas.unit_view(ex.model, u, count)
        figs = "".join(_figure(c["image"], f"{c['label']}: {c['value']:.2f}") + _figure(c["explanation"], "W(x)")
                       for c in view["crops"])
        hist = _table(["class", *view["classes"]], [[f"top {view['histogram_top']}", *view["histogram"]]])
        out.append(f"<h3>unit {u}</h3><div class='image'>{figs}</div>{hist}")
    return "".join(out)


def write_report(
    path: str | Path,
    ex: Explorer,
    *,
    title: str = "linearlens report",
    evaluations: list[str | Path] = (),
    atlas_units: list[int] = (),
    top: int = 3,
) -> Path:
    """Write the report for every image of ``ex`` (and the given evaluation folders) to ``path``."""
    body = [f"<h1>{html.escape(title)}</h1>", "<h2>Images</h2>"]
    body += [image_section(ex, i, top) for i in range(len(ex.images))]
    if evaluations:
        body.append("<h2>Evaluation</h2>")
        body += [evaluation_section(folder) for folder in evaluations]
    if atlas_units and ex.atlas is not None:
        body += ["<h2>Neuron atlas</h2>", atlas_section(ex, list(atlas_units))]
    text = (f"<!doctype html><html lang='en'><head><meta charset='utf-8'><title>{html.escape(title)}</title>"
            f"<style>{STYLE}</style></head><body>{''.join(body)}</body></html>\n")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text, encoding="utf-8")
    return path
