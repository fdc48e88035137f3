"""The dataset-mode bundle: design.md "Dataset mode" (CSV, accumulators, figures, PDF section).

    manifest.json                  source, fingerprint, settings, models, packages, sha256
    summary.json                   {"models": [{"name", "dataset": DatasetResult.to_json()}]}
    dataset_layer_metrics.csv      model,layer,kind,metric,value,ci_low,ci_high,std,n
    dataset_head_metrics.csv       model,layer,head,stat,mean,std
    dataset_<model>.npz            the accumulators (analysis.accumulate): enough to merge with
                                   another run of the same model, dataset and settings
    figures/*.png                  curves with their intervals, per-text distributions, heads
    report.pdf                     the tables, the figures, the definitions of the three kinds
    session_log.html
"""

from __future__ import annotations

import csv
import json
import os
import tempfile
from datetime import datetime, timezone
from pathlib import Path
from xml.sax.saxutils import escape

import numpy as np

from analysis.accumulate import ALL_TOKEN_METRICS, HEAD_STATS, METRICS, SAMPLE_METRICS
from models.common import atomic_file, file_safe
from reports import pdf as pdf_mod
from reports import pdf_parts
from reports.bundle import _csv_value, _sha256, _zip_folder, session_log_html
from reports.figures import dataset as dfigs
from reports.figures import save_png

LAYER_HEADER = ["model", "layer", "kind", "metric", "value", "ci_low", "ci_high", "std", "n"]
HEAD_HEADER = ["model", "layer", "head", "stat", "mean", "std"]

KINDS_TEXT = (
    "Three kinds of numbers per layer. <b>all tokens, exact</b>: the single-prompt formulas on the "
    "stacked matrix of every counted token row of every text, from streaming float64 statistics "
    "(count, mean and centred scatter merged exactly; sums of unit rows; running sums), equal "
    "to 1e-9 to the formula on the concatenated matrix. <b>token sample</b>: TwoNN and activation "
    "entropy on a seeded uniform sample of at most K token rows (the same rows for any batching "
    "or number of processes), with a 95% interval: TwoNN's by the percentile bootstrap of its "
    "neighbour ratios, the entropy's bias-corrected normal (resampling rows duplicates them and "
    "lowers every replicate's entropy, so the plain percentile interval never covers the value). "
    "<b>per text</b>: every single-prompt metric on each text, then mean, standard deviation and "
    "a 95% t-interval of the mean across the texts where the metric is defined (n). The "
    "<b>dataset entropy</b> is the activation entropy of the texts' mean-pooled vectors "
    "(Skean et al. 2025); the per-text activation entropy is their prompt entropy.")


def layer_rows(result) -> list[list]:
    """dataset_layer_metrics.csv rows of one model."""
    rows = []
    for s in result.summary.layers:
        for metric in ALL_TOKEN_METRICS:
            rows.append([result.model, s.layer, "all_tokens", metric, s.all_tokens.get(metric),
                         None, None, None, result.summary.tokens])
        for metric in SAMPLE_METRICS:
            iv = s.token_sample.get(metric)
            if iv is not None:
                rows.append([result.model, s.layer, "token_sample", metric, iv.value, iv.ci_low,
                             iv.ci_high, None, result.summary.sample_tokens])
        for metric in METRICS:
            st = s.per_text.get(metric)
            if st is not None:
                rows.append([result.model, s.layer, "per_text", metric, st.mean, st.ci_low,
                             st.ci_high, st.std, st.n])
        rows.append([result.model, s.layer, "dataset", "dataset_entropy", s.dataset_entropy,
                     None, None, None, result.summary.pooled_texts])
    return rows


def head_rows(result) -> list[list]:
    rows = []
    for stat in HEAD_STATS:
        mean = np.asarray(result.summary.head_mean.get(stat, np.zeros((0, 0))))
        std = np.asarray(result.summary.head_std.get(stat, np.zeros((0, 0))))
        for layer in range(mean.shape[0]):
            for head in range(mean.shape[1]):
                rows.append([result.model, layer + 1, head, stat, mean[layer, head],
                             std[layer, head]])
    return rows


def summary_json(results: list) -> dict:
    """What `analyze --dataset --json` writes: each model's "dataset" (design.md)."""
    return {"dataset": results[0].source if results else None,
            "models": [{"name": r.model, "dataset": r.to_json()} for r in results]}


def _write_csv(path: Path, header: list[str], rows: list[list]) -> None:
    with open(path, "w", newline="", encoding="utf-8") as f:
        w = csv.writer(f, lineterminator="\n")
        w.writerow(header)
        for row in rows:
            w.writerow([_csv_value(v) for v in row])


def render_figures(results: list, folder: Path) -> dict[str, tuple[Path, str, str]]:
    """name -> (png, title, caption) of every dataset figure."""
    folder.mkdir(parents=True, exist_ok=True)
    out = {"dataset_layer_curves": (
        save_png(dfigs.dataset_curves(results), folder / "dataset_layer_curves.png"),
        "Layer metrics over the dataset",
        "Every metric against relative depth (layer / L), one line per model; the band is the "
        "95% interval of the kind of number shown (see Definitions).")}
    for r in results:
        stem = file_safe(r.model)
        out[f"{stem}_per_text"] = (
            save_png(dfigs.per_text_distributions(r), folder / f"{stem}_per_text.png"),
            f"{r.model}: per-text metrics",
            "Per layer, the distribution across texts of single-text metrics (box: quartiles, "
            "whiskers: 1.5 IQR).")
        out[f"{stem}_head_entropy"] = (
            save_png(dfigs.head_means(r), folder / f"{stem}_head_entropy.png"),
            f"{r.model}: head attention entropy across texts",
            "Each head's attention entropy, mean and standard deviation across the texts.")
    return out


def write_dataset_pdf(results: list, path: Path, figures: dict, session_log: list[dict]) -> Path:
    """A PDF of the dataset run: what was measured, the tables, the figures, the definitions."""
    from reportlab.platypus import BaseDocTemplate, Frame, PageBreak, PageTemplate, Paragraph

    st = pdf_parts._styles()
    p = pdf_parts._p
    story: list = [Paragraph("Dataset analysis", st["title"])]
    first = results[0]
    story.append(p(f"Source: {first.source} (fingerprint {first.fingerprint}).", st["body"]))
    story.append(p("Settings: " + "; ".join(f"{k}: {v}" for k, v in first.settings.items()),
                   st["small"]))
    for r in results:
        story.append(Paragraph(escape(f"Model: {r.model}"), st["h1"]))
        story.append(p(f"{r.texts:,} texts, {r.tokens:,} counted tokens, {r.summary.skipped_texts} "
                       f"texts with no token; {r.processes} process(es), {r.seconds:.1f} s "
                       f"({r.tokens_per_second:,.0f} tokens/s); token sample "
                       f"{r.summary.sample_tokens:,} rows; dataset entropy from "
                       f"{r.summary.pooled_texts:,} texts.", st["body"]))
        for n in r.notices:
            story.append(p(f"Notice: {n}", st["small"]))
        rows = [["layer", "erank", "PR", "PCA95", "TwoNN [95%]", "act. entropy/text [95%]",
                 "dataset entropy", "cos in", "aniso", "att. ent."]]
        for s in r.summary.layers:
            tw = s.token_sample.get("intrinsic_dim_twonn")
            ae = s.per_text.get("activation_entropy")
            a = s.all_tokens
            rows.append([str(s.layer), pdf_parts._fmt(a.get("effective_rank"), 4),
                         pdf_parts._fmt(a.get("participation_ratio"), 4),
                         pdf_parts._fmt(a.get("intrinsic_dim_pca95")),
                         _interval(tw.value, tw.ci_low, tw.ci_high) if tw else "–",
                         _interval(ae.mean, ae.ci_low, ae.ci_high) if ae else "–",
                         pdf_parts._fmt(s.dataset_entropy, 3), pdf_parts._fmt(a.get("cosine_to_input"), 3),
                         pdf_parts._fmt(a.get("anisotropy"), 3),
                         pdf_parts._fmt(a.get("attention_entropy"), 3)])
        story.append(pdf_parts._table(rows, [28, 40, 40, 34, 78, 90, 50, 40, 40, 40], st))
    story.append(PageBreak())
    for n, (png, title, caption) in enumerate(figures.values(), start=1):
        story.append(pdf_parts._scaled_image(png, pdf_parts.FRAME_W,
                                             pdf_parts.FRAME_H - pdf_parts.CAPTION_RESERVE))
        story.append(Paragraph(f"<b>Figure {n}.</b> {escape(title)}. {escape(caption)}",
                               st["caption"]))
    story.append(PageBreak())
    story.append(Paragraph("Definitions", st["h1"]))
    story.append(Paragraph(KINDS_TEXT, st["body"]))  # our own markup (bold kinds)
    for name, text in pdf_mod.DEFINITIONS:
        story.append(Paragraph(f"<b>{escape(name)}</b>: {text}", st["body"]))
    doc = BaseDocTemplate(str(path), pagesize=pdf_parts.PAGE, leftMargin=pdf_parts.MARGIN,
                          rightMargin=pdf_parts.MARGIN, topMargin=pdf_parts.MARGIN,
                          bottomMargin=pdf_parts.MARGIN, title="Dataset analysis")
    doc.addPageTemplates([PageTemplate("portrait", [Frame(
        pdf_parts.MARGIN, pdf_parts.MARGIN, pdf_parts.FRAME_W, pdf_parts.FRAME_H, leftPadding=0,
        rightPadding=0, topPadding=0, bottomPadding=0)], onPage=pdf_mod._on_page)])
    doc.build(story)
    return path


def _interval(value, low, high) -> str:
    if value is None:
        return "–"
    if low is None or high is None:
        return pdf_parts._fmt(value, 3)
    return f"{pdf_parts._fmt(value, 3)} [{pdf_parts._fmt(low, 3)}, {pdf_parts._fmt(high, 3)}]"


def write_dataset_bundle(results: list, out_path: str | os.PathLike,
                         session_log: list[dict] | None = None) -> Path:
    """The ZIP of a dataset run, built in a temporary folder and moved into place whole."""
    out_path = Path(out_path)
    out_path.parent.mkdir(parents=True, exist_ok=True)
    created = datetime.now(timezone.utc).isoformat(timespec="seconds")
    log_entries = session_log or [{"time": created, "action": "analyze dataset",
                                   "models": [r.model for r in results],
                                   "dataset": results[0].source, **results[0].settings}]
    with tempfile.TemporaryDirectory(prefix="dataset-bundle-") as tmp:
        folder = Path(tmp)
        _write_csv(folder / "dataset_layer_metrics.csv", LAYER_HEADER,
                   [row for r in results for row in layer_rows(r)])
        _write_csv(folder / "dataset_head_metrics.csv", HEAD_HEADER,
                   [row for r in results for row in head_rows(r)])
        (folder / "summary.json").write_text(json.dumps(summary_json(results), indent=2),
                                             encoding="utf-8")
        for r in results:
            r.accumulator.save(folder / f"dataset_{file_safe(r.model)}.npz")
        figures = render_figures(results, folder / "figures")
        (folder / "session_log.html").write_text(session_log_html(log_entries), encoding="utf-8")
        write_dataset_pdf(results, folder / "report.pdf", figures, log_entries)
        names = sorted(q.relative_to(folder).as_posix() for q in folder.rglob("*") if q.is_file())
        manifest = {"format": 1, "kind": "dataset", "dataset": results[0].source,
                    "fingerprint": results[0].fingerprint, "settings": results[0].settings,
                    "models": [{"name": r.model, "texts": r.texts, "tokens": r.tokens,
                                "processes": r.processes, "notices": r.notices} for r in results],
                    "packages": pdf_parts.package_versions(), "created": created,
                    "files": {n: {"sha256": _sha256(folder / n),
                                  "bytes": (folder / n).stat().st_size} for n in names}}
        (folder / "manifest.json").write_text(json.dumps(manifest, indent=2), encoding="utf-8")
        with atomic_file(out_path, mode=0o644) as f:
            _zip_folder(folder, ["manifest.json"] + names, f)
    return out_path
