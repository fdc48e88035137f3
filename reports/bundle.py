"""The ZIP bundle of design.md "Bundle format", written atomically, and the HTML session log.

Layout (every path inside the ZIP):

    manifest.json  layer_metrics.csv  head_metrics.csv  predictions.json  tokens.json
    attention_<model>.npy  hidden_states_<model>.npy  report.pdf  session_log.html
    figures/<figure>.png  figures/layer_transition_<model>.gif

The arrays are the ones the layer metrics were computed from (the capture's hidden states,
layer L being block L's output before the final norm, and attention), so every number of
layer_metrics.csv can be recomputed from the NPY files. The greedy continuation is a generation
asked for after the analysis: the writers take it beside the analysis (`continuations`).
"""

from __future__ import annotations

import csv
import hashlib
import html
import json
import logging
import os
import tempfile
import zipfile
from datetime import datetime, timezone
from pathlib import Path

import numpy as np

from analysis.result import (
    HEAD_COLUMNS,
    HEAD_EXTRA_COLUMNS,
    LAYER_COLUMNS,
    TWONN_INTERVAL_COLUMNS,
    Analysis,
    ModelResult,
)
from models.common import atomic_file
from reports import figures as figs
from reports import pdf as pdf_mod
from reports.pdf_parts import package_versions

log = logging.getLogger(__name__)

# Attention arrays larger than this as float32 are stored as float16 (halving them).
FLOAT16_LIMIT_BYTES = 256 * 1024 * 1024
BUNDLE_FORMAT = 1
_STORED = (".png", ".gif", ".pdf")  # already compressed: stored, not deflated


def analysis_log_entry(analysis: Analysis, action: str = "analyze") -> dict:
    """One session-log entry describing an analysis: time, settings and a results summary.
    Written once, complete (a continuation gets its own entry, `continuation_log_entry`)."""
    summary = {}
    for r in analysis.results:
        top = r.predictions.top[0] if r.predictions and r.predictions.top else None
        layer, head, score = r.heads.top("induction_score")
        summary[r.name] = {
            "layers": r.trace.n_layers, "heads": r.trace.n_heads, "tokens": r.trace.n_tokens,
            "chat template": r.trace.chat_template,
            "prediction": (f"{top.token} ({top.probability:.3f})" if top else None),
            "filled": (r.predictions.filled or None) if r.predictions else None,
            "top induction head": (f"L{layer}H{head} ({score:.3f})" if score is not None
                                   else None),
            "last-layer effective rank": r.layers.value("effective_rank", r.layers.n_layers),
            "device": f"{r.info.device} ({r.info.dtype})",
            "seconds": round(r.seconds, 3),
        }
    return {"time": analysis.created or datetime.now(timezone.utc).isoformat(timespec="seconds"),
            "action": action, "models": [r.name for r in analysis.results],
            "prompts": list(analysis.prompts), "seed": analysis.seed,
            "settings": dict(analysis.settings), "summary": summary}


# ---------------------------------------------------------------------------------------------
# HTML session log

_CSS = """
body{font-family:system-ui,-apple-system,'Segoe UI',Roboto,sans-serif;margin:2em auto;
max-width:60em;padding:0 1em;color:#222;line-height:1.45}
h1{font-size:1.5em;border-bottom:2px solid #36c;padding-bottom:.2em}
h2{font-size:1.15em;margin:1.6em 0 .4em}
section{border:1px solid #ddd;border-radius:6px;padding:.6em 1em 1em;margin:1em 0;
background:#fcfcfc}
table{border-collapse:collapse;margin:.3em 0;font-size:.92em}
th,td{border:1px solid #ddd;padding:.25em .6em;text-align:left;vertical-align:top}
th{background:#eef2f8;font-weight:600}
.time{color:#666;font-weight:normal;font-size:.9em}
.muted{color:#777}
code{background:#f2f2f2;padding:0 .2em;border-radius:3px}
""".strip()


def _html_value(v, depth: int = 0) -> str:
    if v is None:
        return '<span class="muted">–</span>'
    if isinstance(v, float):
        return html.escape(f"{v:.6g}")
    if isinstance(v, dict):
        if not v:
            return '<span class="muted">(none)</span>'
        if depth >= 3:
            return f"<code>{html.escape(json.dumps(v, default=str))}</code>"
        rows = "".join(f"<tr><th>{html.escape(str(k))}</th><td>{_html_value(x, depth + 1)}</td>"
                       "</tr>" for k, x in v.items())
        return f"<table>{rows}</table>"
    if isinstance(v, (list, tuple)):
        if not v:
            return '<span class="muted">(none)</span>'
        if len(v) == 1 and not isinstance(v[0], (dict, list, tuple)):
            return _html_value(v[0], depth + 1)
        return "<ol>" + "".join(f"<li>{_html_value(x, depth + 1)}</li>" for x in v) + "</ol>"
    return html.escape(str(v))


def session_log_html(entries: list[dict]) -> str:
    """A self-contained HTML page (inline CSS, no scripts, no links) of every logged action."""
    parts = ["<!DOCTYPE html>", '<html lang="en"><head><meta charset="utf-8">',
             "<title>Session log</title>", f"<style>{_CSS}</style></head><body>",
             "<h1>Session log</h1>",
             f'<p class="muted">{len(entries)} entr{"y" if len(entries) == 1 else "ies"}; '
             f"written {html.escape(datetime.now(timezone.utc).isoformat(timespec='seconds'))}"
             "</p>"]
    for i, e in enumerate(entries):
        action = html.escape(str(e.get("action", "entry")))
        when = html.escape(str(e.get("time", "")))
        parts.append(f'<section><h2>{i + 1}. {action} <span class="time">{when}</span></h2>')
        rest = {k: v for k, v in e.items() if k not in ("time", "action", "summary")}
        if rest:
            parts.append("<h3>Settings</h3>" + _html_value(rest))
        if "summary" in e:
            parts.append("<h3>Results</h3>" + _html_value(e["summary"]))
        parts.append("</section>")
    parts.append("</body></html>")
    return "\n".join(parts)


# ---------------------------------------------------------------------------------------------
# files


def _csv_value(v) -> str:
    """Empty for None, full precision (shortest round-trip repr) for floats."""
    if v is None:
        return ""
    if isinstance(v, (bool, np.bool_)):
        return str(bool(v))
    if isinstance(v, (int, np.integer)):
        return str(int(v))
    if isinstance(v, (float, np.floating)):
        v = float(v)
        return repr(v) if np.isfinite(v) else ""
    return str(v)


def continuation_log_entry(analysis: Analysis, continuations: dict[str, str | None],
                           seconds: float | None = None) -> dict:
    """The session-log entry of the greedy continuations of an analysis's causal models."""
    return {"time": datetime.now(timezone.utc).isoformat(timespec="seconds"),
            "action": "continuation", "models": [m for m, t in continuations.items()
                                                 if t is not None],
            "prompts": list(analysis.prompts), "seconds": seconds,
            "summary": {m: {"text": t} for m, t in continuations.items() if t is not None}}


def _write_csvs(analysis: Analysis, folder: Path) -> None:
    with open(folder / "layer_metrics.csv", "w", newline="", encoding="utf-8") as f:
        w = csv.writer(f, lineterminator="\n")
        columns = LAYER_COLUMNS + TWONN_INTERVAL_COLUMNS
        w.writerow(["model", "layer"] + columns)
        for r in analysis.results:
            for m in r.layers.rows():
                w.writerow([r.name, m["layer"]] + [_csv_value(m.get(c)) for c in columns])
    with open(folder / "head_metrics.csv", "w", newline="", encoding="utf-8") as f:
        w = csv.writer(f, lineterminator="\n")
        columns = HEAD_COLUMNS + HEAD_EXTRA_COLUMNS
        w.writerow(["model", "layer", "head"] + columns)
        for r in analysis.results:
            for h in r.heads.rows():
                w.writerow([r.name, h["layer"], h["head"]] + [_csv_value(h.get(c)) for c in columns])


def _write_json(path: Path, obj) -> None:
    path.write_text(json.dumps(obj, indent=2, ensure_ascii=False, default=_json_default),
                    encoding="utf-8")


def _json_default(o):
    if isinstance(o, np.ndarray):
        return o.tolist()
    if isinstance(o, np.generic):
        return o.item()
    return str(o)  # a Path, a dataclass, ...: its text rather than a failed bundle


def _write_arrays(result: ModelResult, stem: str, folder: Path) -> dict:
    """attention_<stem>.npy and hidden_states_<stem>.npy; returns their manifest entries."""
    t = result.trace
    att = np.ascontiguousarray(t.attentions, dtype=np.float32)  # [layer, head, query, key]
    over = att.nbytes > FLOAT16_LIMIT_BYTES
    if over:
        log.info("attention of %s is %d bytes as float32: stored as float16", result.name,
                 att.nbytes)
        att = att.astype(np.float16)
    att_name, hid_name = f"attention_{stem}.npy", f"hidden_states_{stem}.npy"
    np.save(folder / att_name, att, allow_pickle=False)
    hidden = np.ascontiguousarray(t.hidden, dtype=np.float32)  # [layer + 1, token, d_model]
    np.save(folder / hid_name, hidden, allow_pickle=False)
    return {
        att_name: {"model": result.name, "kind": "attention",
                   "axes": ["layer", "head", "query", "key"], "shape": list(att.shape),
                   "dtype": str(att.dtype), "float16_over_limit": bool(over),
                   "limit_bytes": FLOAT16_LIMIT_BYTES},
        hid_name: {"model": result.name, "kind": "hidden_states",
                   "axes": ["layer", "token", "d_model"], "shape": list(hidden.shape),
                   "dtype": str(hidden.dtype), "float16_over_limit": False},
    }


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def _manifest(analysis: Analysis, names: dict[str, str], arrays: dict, files: dict) -> dict:
    models = []
    for r in analysis.results:
        t = r.trace
        entry = {**r.info.to_json(), "file_name": names[r.name], "task": t.task,
                 "causal": bool(t.causal), "n_tokens": t.n_tokens,
                 "chat_template": bool(t.chat_template),
                 "last_layer": ("block L's output before the final norm" if not
                                t.last_layer_normed else "the model's final (normed) state"),
                 "attention_file": f"attention_{names[r.name]}.npy",
                 "hidden_states_file": f"hidden_states_{names[r.name]}.npy",
                 "notices": list(t.notices), "seconds": round(r.seconds, 3)}
        models.append(entry)
    return {"format": BUNDLE_FORMAT, "prompts": list(analysis.prompts), "models": models,
            "seed": analysis.seed, "settings": dict(analysis.settings),
            "packages": package_versions(), "created": analysis.created,
            "written": datetime.now(timezone.utc).isoformat(timespec="seconds"),
            "arrays": arrays, "files": files}


def build_folder(analysis: Analysis, folder: str | os.PathLike,
                 session_log: list[dict] | None = None,
                 continuations: dict[str, str | None] | None = None) -> list[str]:
    """Write every bundle file into `folder`; returns the archive names, manifest first."""
    folder = Path(folder)
    continuations = continuations or {}
    names = figs.model_file_names(analysis)
    _write_csvs(analysis, folder)
    _write_json(folder / "predictions.json",
                {r.name: (r.predictions.to_json(continuations.get(r.name)) if r.predictions
                          else None) for r in analysis.results})
    _write_json(folder / "tokens.json", {r.name: list(r.trace.tokens) for r in analysis.results})
    arrays: dict = {}
    for r in analysis.results:
        arrays.update(_write_arrays(r, names[r.name], folder))
    fig_dir = folder / "figures"
    pngs = figs.render_pngs(analysis, fig_dir)
    for r in analysis.results:
        figs.layer_transition_gif(r, fig_dir / f"layer_transition_{names[r.name]}.gif",
                                  kind="both")
    log_entries = session_log if session_log is not None else [analysis_log_entry(analysis)]
    if session_log is None and any(v is not None for v in continuations.values()):
        log_entries.append(continuation_log_entry(analysis, continuations))
    (folder / "session_log.html").write_text(session_log_html(log_entries), encoding="utf-8")
    pdf_mod.write_pdf(analysis, folder / "report.pdf", figures_png=pngs,
                      session_log=log_entries, continuations=continuations)
    archive = sorted(p.relative_to(folder).as_posix() for p in folder.rglob("*") if p.is_file())
    files = {n: {"sha256": _sha256(folder / n), "bytes": (folder / n).stat().st_size}
             for n in archive}
    _write_json(folder / "manifest.json", _manifest(analysis, names, arrays, files))
    return ["manifest.json"] + archive


def _zip_folder(folder: Path, names: list[str], dest) -> None:
    with zipfile.ZipFile(dest, "w", compression=zipfile.ZIP_DEFLATED, compresslevel=6) as z:
        for n in names:
            kind = zipfile.ZIP_STORED if n.endswith(_STORED) else zipfile.ZIP_DEFLATED
            z.write(folder / n, n, compress_type=kind)


def write_bundle(analysis: Analysis, out_path: str | os.PathLike,
                 session_log: list[dict] | None = None,
                 continuations: dict[str, str | None] | None = None) -> Path:
    """Build the bundle in a temporary folder, zip it next to `out_path`, then move it in place.

    No half-written ZIP is ever visible at `out_path`: on any error the temporary files are
    removed and an existing file at `out_path` is left untouched.
    """
    out_path = Path(out_path)
    out_path.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="bundle-") as tmp:
        folder = Path(tmp)
        names = build_folder(analysis, folder, session_log, continuations)
        with atomic_file(out_path, mode=0o644) as f:  # a bundle is an ordinary file
            _zip_folder(folder, names, f)
    return out_path
