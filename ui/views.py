"""Small interactive views drawn in the browser (ui/static/views.js) from plain data.

Like the attention explorer, these take arrays and labels and know nothing about models. Each
builder returns one panel (a dict); `spec(*panels)` joins panels into the JSON one ``gr.HTML``
shows (`build`). Heatmaps have a colour bar, values in the cells when they fit and a tooltip
on hover; a ``[layer, head]`` heatmap or a scatter of heads (``select=True``) selects a head on
click: the page's other views follow at once (a selection bus in the page) and Python hears of
it through the component's ``select`` event (`selected`). Events return `update` (new data)
or `selection_update` (the selection only; nothing else is sent again).

Numbers are sent as JSON with 6 significant digits; NaN and infinities become null (shown as
"undefined" / grey cells).
"""

from __future__ import annotations

import functools
import json
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

STATIC = Path(__file__).resolve().parent / "static"
_JS_ON_LOAD = "window.DashboardViews.gradio(element, props, trigger, watch);"


def _num(v: Any) -> float | int | None:
    if v is None:
        return None
    if isinstance(v, (bool, np.bool_)):
        return int(v)
    if isinstance(v, (int, np.integer)):
        return int(v)
    v = float(v)
    return float(f"{v:.6g}") if math.isfinite(v) else None


def _matrix(a) -> list[list]:
    return [[_num(v) for v in row] for row in np.asarray(a, dtype=object)]


def _range(values, vmin, vmax) -> tuple[float, float]:
    a = np.asarray(values, dtype=np.float64)
    finite = a[np.isfinite(a)]
    lo = float(finite.min()) if vmin is None and finite.size else (vmin if vmin is not None else 0.0)
    hi = float(finite.max()) if vmax is None and finite.size else (vmax if vmax is not None else 1.0)
    return float(lo), float(hi)


def heatmap(id: str, title: str, values, rows: Sequence[str], cols: Sequence[str], *,
            source: str = "", caption: str = "", row_title: str = "", col_title: str = "",
            label: str = "value", cmap: str = "viridis", vmin: float | None = None,
            vmax: float | None = None, center: float | None = None, digits: int | None = None,
            text: Sequence[Sequence[str]] | None = None, text_label: str = "",
            tips: dict[str, Any] | None = None, layers: Sequence[int] | None = None,
            heads: Sequence[int] | None = None, select: bool = False, wide: bool = False,
            show_values: bool = True, cell_height: int | None = None,
            min_cell: int | None = None, max_cell: int | None = None) -> dict:
    """A `[row, column]` matrix. `layers`/`heads`: the layer of each row and the head of each
    column, for a `[layer, head]` map (`select`: a click selects that head). `center`: a
    diverging colour scale symmetric around it. `tips`: more per-cell values for the tooltip.
    `cmap`: viridis, magma, rocket_r, mako_r, blues or rdbu."""
    a = np.asarray(values, dtype=np.float64)
    if a.shape != (len(rows), len(cols)):
        raise ValueError(f"values {a.shape} do not match {len(rows)} rows x {len(cols)} columns")
    lo, hi = _range(a, vmin, vmax)
    if center is not None:
        lim = max(abs(lo - center), abs(hi - center)) or 1.0
        lo, hi = center - lim, center + lim
    panel = {"kind": "heatmap", "id": id, "title": title, "source": source, "caption": caption,
             "rows": [str(r) for r in rows], "cols": [str(c) for c in cols],
             "row_title": row_title, "col_title": col_title, "label": label, "cmap": cmap,
             "vmin": _num(lo), "vmax": _num(hi), "center": center, "digits": digits,
             "values": _matrix(a), "select": bool(select), "wide": bool(wide),
             "show_values": bool(show_values)}
    if text is not None:
        panel["text"] = [[str(t) for t in row] for row in text]
        panel["text_label"] = text_label
    if tips:
        panel["tips"] = {k: [[_num(v) if not isinstance(v, str) else v for v in row] for row in m]
                         for k, m in tips.items()}
    if layers is not None:
        panel["layers"] = [int(v) for v in layers]
    if heads is not None:
        panel["heads"] = [int(v) for v in heads]
    for key, v in (("cell_height", cell_height), ("min_cell", min_cell), ("max_cell", max_cell)):
        if v is not None:
            panel[key] = int(v)
    return panel


def head_heatmap(id: str, title: str, values, *, first_layer: int = 1, **kwargs) -> dict:
    """A `[layer, head]` heatmap: rows are layers `first_layer`.., columns heads 0..; a click
    selects the head."""
    a = np.asarray(values, dtype=np.float64)
    n_layers, n_heads = a.shape
    layers = list(range(first_layer, first_layer + n_layers))
    kwargs.setdefault("row_title", "layer")
    kwargs.setdefault("col_title", "head")
    kwargs.setdefault("select", True)
    return heatmap(id, title, a, [str(v) for v in layers], [str(h) for h in range(n_heads)],
                   layers=layers, heads=list(range(n_heads)), **kwargs)


def scatter(id: str, title: str, points: Sequence[dict], *, source: str = "", caption: str = "",
            x_title: str = "", y_title: str = "", groups: Sequence[str] = (),
            markers: Sequence[str] = (), select: bool = False, wide: bool = False) -> dict:
    """Points {x, y, layer, head, group (index into `groups`), marker (a role name), label}."""
    pts = [{"x": _num(p["x"]) or 0.0, "y": _num(p["y"]) or 0.0, "layer": int(p["layer"]),
            "head": int(p["head"]), "group": int(p.get("group", 0)),
            "marker": str(p.get("marker", "")), "label": str(p.get("label", ""))} for p in points]
    return {"kind": "scatter", "id": id, "title": title, "source": source, "caption": caption,
            "points": pts, "x_title": x_title, "y_title": y_title, "groups": list(groups),
            "markers": list(markers), "select": bool(select), "wide": bool(wide)}


def bars(id: str, title: str, labels: Sequence[str], series: Sequence[dict], *,
         source: str = "", caption: str = "", highlight: int | None = None,
         wide: bool = True) -> dict:
    """Series {name, values [label], signed (red up, blue down), colour} over `labels`."""
    out = [{"name": s["name"], "values": [_num(v) for v in s["values"]],
            "signed": bool(s.get("signed", False)), "colour": s.get("colour")} for s in series]
    return {"kind": "bars", "id": id, "title": title, "source": source, "caption": caption,
            "labels": [str(t) for t in labels], "series": out,
            "highlight": None if highlight is None else int(highlight), "wide": bool(wide)}


def lines(id: str, title: str, x: Sequence, series: Sequence[dict], *, source: str = "",
          caption: str = "", x_title: str = "", wide: bool = False) -> dict:
    """Series {name, values [x], colour, axis "left" | "right", log (a rank: 1 on top, log
    scale), min, max} over `x`."""
    out = [{"name": s["name"], "values": [_num(v) for v in s["values"]],
            "colour": s.get("colour", "#1f77b4"), "axis": s.get("axis", "left"),
            "log": bool(s.get("log", False)), "min": s.get("min"), "max": s.get("max")}
           for s in series]
    return {"kind": "lines", "id": id, "title": title, "source": source, "caption": caption,
            "x": [_num(v) if not isinstance(v, str) else v for v in x], "x_title": x_title,
            "series": out, "wide": bool(wide)}


def spec(*panels: dict, empty: str | None = None, columns: int | None = None) -> str:
    """The JSON a views component shows: its panels (none: `empty`, a message), laid out in
    columns at least `columns` px wide. '<' is escaped (safe inside HTML)."""
    obj: dict = {"panels": [p for p in panels if p]}
    if empty:
        obj["empty"] = empty
    if columns:
        obj["columns"] = int(columns)
    return json.dumps(obj, ensure_ascii=False, separators=(",", ":"),
                      allow_nan=False).replace("<", "\\u003c")


def empty(message: str) -> str:
    return spec(empty=message)


# ---------------------------------------------------------------------------- Gradio


@functools.lru_cache(maxsize=1)
def head_html() -> str:
    """The views' style and script as ``<head>`` HTML (inline: no request)."""
    js = "".join((STATIC / name).read_text(encoding="utf-8")  # the bus first: the views
                 for name in ("selection_bus.js", "views.js"))  # read it at load
    css = (STATIC / "views.css").read_text(encoding="utf-8")
    if "</script" in js.lower() or "</style" in css.lower():
        raise RuntimeError("the views' JS/CSS must not contain a closing script/style tag")
    return f'<style id="dashboard-views-css">\n{css}</style>\n<script>\n{js}</script>\n'


def build(elem_id: str, group: str = "layer", value: str | None = None, **kwargs):
    """A views component (``gr.HTML``); `group`: the page's selection bus ("" for none)."""
    import gradio as gr

    return gr.HTML(value=value, html_template='<div class="dv-mount"></div>',
                   js_on_load=_JS_ON_LOAD, head=head_html(), apply_default_css=False,
                   elem_id=elem_id, elem_classes=["dashboard-views"], selection=None,
                   group=group, **kwargs)


def update(value: str, selection: tuple[int, int] | None = None):
    """New data (and the selection to show with it)."""
    import gradio as gr

    sel = None if selection is None else [int(selection[0]), int(selection[1])]
    return gr.HTML(value=value, selection=sel)


def selection_update(layer: int, head: int):
    """Show (layer, head) as selected without sending the data again."""
    import gradio as gr

    return gr.HTML(selection=[int(layer), int(head)])
