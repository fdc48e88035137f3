"""The PDF report (reportlab platypus): title page, tables per model, every figure with a
numbered caption, the metric definitions, the session settings.

`write_pdf(analysis, path)` draws the figures itself unless the caller (the bundle) passes the
PNGs it already rendered, keyed by `FigureSpec.name`. The building blocks (page geometry,
styles, tables, scaled figures) live in reports/pdf_parts.py.
"""

from __future__ import annotations

import os
import tempfile
from datetime import datetime, timezone
from pathlib import Path
from xml.sax.saxutils import escape

from reportlab.lib import colors
from reportlab.lib.units import cm
from reportlab.platypus import (
    BaseDocTemplate,
    Frame,
    KeepTogether,
    NextPageTemplate,
    PageBreak,
    PageTemplate,
    Paragraph,
    Spacer,
    Table,
)

from analysis.result import LAYER_COLUMNS, Analysis, ModelResult
from reports import figures as figs
from reports.pdf_parts import (
    CAPTION_RESERVE,
    FRAME_H,
    FRAME_W,
    MARGIN,
    PAGE,
    WIDE_H,
    WIDE_PAGE,
    WIDE_W,
    _fmt,
    _is_wide,
    _p,
    _params,
    _scaled_image,
    _styles,
    _table,
    package_versions,
)

TITLE = "Transformer analysis report"
MAX_PROMPTS_SHOWN = 20
MAX_PROMPT_CHARS = 1500
MAX_TOKENS_SHOWN = 200
TOP_HEADS = 5

# design.md "Metric definitions", word for word, plus the head and attribution measures.
DEFINITIONS_INTRO = (
    "For one layer, let H be the T x d matrix of token vectors, and Hc = H minus its mean row. "
    "Layer 0 is the embedding output; layer l >= 1 is the output of block l (the residual stream "
    "after it), so attention entropy is empty on layer 0. Layer L is block L's output before the "
    "model's final norm (GPT-2 ln_f, Llama norm); the final-normed state is what the LM head and "
    "the logit lens read, and it is not a layer. Computed on the full hidden state (every token, every "
    "dimension), in float64. With several prompts (corpus mode) the token rows of all prompts "
    "are pooled per layer.")
DEFINITIONS = [
    ("effective_rank", "Effective rank (Roy &amp; Vetterli 2007): s = singular values of Hc, "
     "p = s / sum(s), erank = exp(-sum p log p)."),
    ("participation_ratio", "l = eigenvalues of the covariance of Hc (= s^2 / (T - 1)); "
     "PR = (sum l)^2 / sum l^2. Not truncated to an integer."),
    ("intrinsic_dim_pca95", "The smallest k whose k largest l explain >= 95% of sum l."),
    ("intrinsic_dim_twonn", "TwoNN (Facco et al. 2017) on the rows of H, Euclidean distances, "
     "discarding the largest 10% of the ratios mu = r2/r1, slope of -log(1 - F(mu)) on log(mu) "
     "through the origin. Empty when fewer than 10 distinct rows. Shown with its 95% bootstrap "
     "interval [low, high] (the points' ratios resampled 200 times and refitted); below 100 "
     "tokens it is unreliable: at 24 points of true dimension 10, 90% of estimates fall in "
     "[5.8, 12.2]."),
    ("activation_entropy", "Matrix (von Neumann) entropy of the token Gram matrix, normalised: "
     "Z = rows of Hc scaled to unit length, K = Z Z^T, lambda = eig(K) / trace(K), "
     "S = -sum lambda log lambda / log(min(T - 1, d)), in [0, 1] (centring leaves rank at most "
     "T - 1; needs T >= 3)."),
    ("cosine_to_input", "Mean over tokens t of cos(H_l[t], H_0[t])."),
    ("anisotropy", "Mean cosine over all pairs of distinct token vectors of the layer."),
    ("attention_entropy", "Of one head and query row i: -sum_j a_ij log a_ij / log(n_i), where "
     "n_i is the number of keys row i may attend to (i + 1 for causal models, T otherwise); rows "
     "with n_i = 1 are skipped. Head value = mean over rows; layer value = mean over heads."),
]
HEAD_DEFINITIONS = [
    ("previous_token_score", "Mean over query rows i >= 1 of a[i, i - 1]."),
    ("first_token_score", "Mean over query rows i >= 1 of a[i, 0] (an attention sink on the "
     "first token scores high)."),
    ("self_score", "Mean over all query rows i of a[i, i]."),
    ("induction_score", "On a sequence [prefix] + B + B, B a block of 10 random tokens: the mean, "
     "over the queries i of the second copy, of a[i, i - 10 + 1], the attention to the token "
     "that followed the current token's previous occurrence (1 = perfect induction head)."),
    ("cluster", "k-means on the standardised head features (previous-token, first-token and self "
     "scores, attention entropy, mean attention distance sum_j a_ij |i - j| / T), k chosen by "
     "silhouette; the scatter shows the first two principal components of the features."),
    ("attribution (token)", "Gradient x input: d log p(target) / d embedding, dotted with the "
     "embedding, per token. Attention rollout (Abnar &amp; Zuidema 2020): heads averaged, "
     "0.5 A + 0.5 I, rows renormalised, multiplied through the layers; the target position's "
     "row."),
    ("attribution (head)", "Support of head h = log p(target | all heads) - log p(target | h "
     "removed); positive = the head supports the prediction. A gate g_h = 1 multiplies each "
     "head's output before the attention output projection; ablation computes the support "
     "exactly (g_h = 0), the gradient method estimates it by d log p / d g_h at g = 1."),
    ("logit lens", "Each layer's hidden state through the final norm and the unembedding "
     "(causal models; layer L is block L's output before that norm) or the MLM head (encoders): "
     "the top token and its probability at every layer, for the last 24 positions and always "
     "the position whose prediction is shown (each costs one output-head product)."),
]


TABLE_LABELS = {"effective_rank": "effective rank", "participation_ratio": "particip. ratio",
                "intrinsic_dim_pca95": "ID PCA 95%", "intrinsic_dim_twonn": "ID TwoNN",
                "activation_entropy": "activation entropy", "cosine_to_input": "cosine to input",
                "anisotropy": "anisotropy", "attention_entropy": "attention entropy"}


# ---------------------------------------------------------------------------------------------
# sections


def _title_page(analysis: Analysis, st: dict, versions: dict) -> list:
    out: list = [Spacer(1, 1.5 * cm), Paragraph(TITLE, st["title"])]
    models = ", ".join(r.name for r in analysis.results) or "no models"
    out.append(_p(f"Models: {models}", st["centre"]))
    out.append(Spacer(1, 0.8 * cm))
    prompts = analysis.prompts
    out.append(Paragraph("Prompt" + ("s" if len(prompts) != 1 else ""), st["h2"]))
    for i, p in enumerate(prompts[:MAX_PROMPTS_SHOWN]):
        prefix = f"{i + 1}. " if len(prompts) > 1 else ""
        if len(p) > MAX_PROMPT_CHARS:
            p = p[:MAX_PROMPT_CHARS] + f" … ({len(p) - MAX_PROMPT_CHARS} more characters)"
        out.append(_p(prefix + p, st["body"]))
    if len(prompts) > MAX_PROMPTS_SHOWN:
        out.append(_p(f"... and {len(prompts) - MAX_PROMPTS_SHOWN} more "
                      "(all prompts are listed in manifest.json)", st["small"]))
    out.append(Paragraph("Models", st["h2"]))
    rows = [["model", "class", "task", "layers", "heads", "hidden", "params", "source"]]
    for r in analysis.results:
        s = r.info
        rows.append([r.name, s.cls, r.trace.task, _fmt(s.n_layers), _fmt(s.n_heads),
                     _fmt(s.hidden_size), _params(s.params), s.source])
    out.append(_table(rows, [80, 85, 45, 32, 32, 36, 45, 150], st))
    out.append(Paragraph("Run", st["h2"]))
    devices = sorted({f"{r.info.device}, {r.info.dtype}" for r in analysis.results})
    run_rows = [["created", analysis.created or "–"], ["seed", str(analysis.seed)],
                ["device, dtype", "; ".join(devices)],
                ["chat template", "applied" if analysis.settings.get("chat_template")
                 else "not applied"],
                ["report written", datetime.now(timezone.utc).isoformat(timespec="seconds")]]
    out.append(_table(run_rows, [110, 300], st, header=False))
    out.append(Paragraph("Package versions", st["h2"]))
    vrows = [[k, v or "not installed"] for k, v in versions.items()]
    out.append(_table(vrows, [110, 300], st, header=False))
    notices = [(r.name, n) for r in analysis.results for n in r.trace.notices]
    if notices:
        out.append(Paragraph("Notices", st["h2"]))
        for name, n in notices:
            out.append(_p(f"{name}: {n}", st["small"]))
    out.append(PageBreak())
    return out


def _layer_table(result: ModelResult, st: dict) -> Table:
    labels = ["layer"] + [TABLE_LABELS.get(c, c) for c in LAYER_COLUMNS]
    rows = [labels]
    lm = result.layers
    for layer in range(lm.n_layers + 1):
        cells = []
        for c in LAYER_COLUMNS:
            cell = _fmt(lm.value(c, layer))
            lo = lm.value("intrinsic_dim_twonn_ci_low", layer)
            hi = lm.value("intrinsic_dim_twonn_ci_high", layer)
            if c == "intrinsic_dim_twonn" and lo is not None and hi is not None:
                cell = f"{_fmt(lm.value(c, layer), 3)} [{_fmt(lo, 2)}, {_fmt(hi, 2)}]"
            cells.append(cell)
        rows.append([str(layer)] + cells)
    widths = [30] + [(FRAME_W - 30) / len(LAYER_COLUMNS)] * len(LAYER_COLUMNS)
    return _table(rows, widths, st)


def _model_section(result: ModelResult, st: dict, continuation: str | None = None) -> list:
    t = result.trace
    out: list = [Paragraph(escape(f"Model: {result.name}"), st["h1"])]
    facts = (f"{t.task}, {t.n_layers} layers x {t.n_heads} heads; prompt of {t.n_tokens} tokens"
             f"{' inside the chat template' if t.chat_template else ''}; analysed in "
             f"{result.seconds:.2f} s on {result.info.device} ({result.info.dtype}).")
    out.append(_p(facts, st["body"]))
    toks = t.tokens[:MAX_TOKENS_SHOWN]
    shown = " | ".join(figs.token_label(x, 30).replace("\\$", "$") for x in toks)
    more = f" ... ({t.n_tokens - MAX_TOKENS_SHOWN} more)" if t.n_tokens > MAX_TOKENS_SHOWN else ""
    out.append(_p(f"Tokens: {shown}{more}", st["small"]))

    out.append(Paragraph("Layer metrics", st["h2"]))
    out.append(_p("Layer 0 is the embedding output; '–' marks a metric undefined at that layer; "
                  "ID = intrinsic dimension (see Definitions).", st["small"]))
    out.append(_layer_table(result, st))

    out.append(Paragraph("Predictions", st["h2"]))
    preds = result.predictions
    if preds is not None and preds.top:
        what = ("the masked position" if t.task in ("fill-mask", "diffusion")
                else "the next token")
        out.append(_p(f"Top {len(preds.top)} for {what}:", st["small"]))
        rows = [["rank", "token", "probability"]]
        rows += [[str(i + 1), p.token, _fmt(p.probability)] for i, p in enumerate(preds.top)]
        out.append(_table(rows, [35, 160, 80], st))
        text = continuation if t.task == "causal" else preds.filled
        if text:
            label = "Greedy continuation" if t.task == "causal" else "Filled sentence"
            out.append(Spacer(1, 3))
            out.append(_p(f"{label}: {text}", st["body"]))
    else:
        out.append(_p("No prediction for this prompt (an encoder, or no mask token).",
                      st["body"]))
    attr = result.attribution
    if attr is not None:
        lp = attr.log_prob
        out.append(_p(f"Attribution target: “{attr.target}” read at position {attr.position}"
                      + (f", log p = {lp:.4g}" if lp is not None else "")
                      + f"; head support by {result.heads.attribution_method}.", st["small"]))

    out.append(Paragraph("Top heads", st["h2"]))
    for key, label in (("induction_score", "induction"),
                       ("previous_token_score", "previous-token"),
                       ("first_token_score", "first-token (attention sink)")):
        heads = [h for h in result.heads.rows() if h.get(key) is not None]
        heads.sort(key=lambda h: h[key], reverse=True)
        if not heads:
            continue
        out.append(_p(f"Highest {label} score:", st["small"]))
        rows = [["layer", "head", label + " score", "entropy", "cluster", "attribution"]]
        rows += [[str(h["layer"]), str(h["head"]), _fmt(h[key]),
                  _fmt(h.get("attention_entropy")), _fmt(h.get("cluster")),
                  _fmt(h.get("attribution"))] for h in heads[:TOP_HEADS]]
        out.append(_table(rows, [40, 40, 110, 70, 50, 80], st))
        out.append(Spacer(1, 4))
    return out


def _figure_section(analysis: Analysis, pngs: dict[str, Path], st: dict) -> list:
    """Every figure with a numbered caption; wide ones on landscape pages."""
    out: list = []  # starts on the page the previous section ended on
    heading = [Paragraph("Figures", st["h1"])]
    orientation = None
    n = 0
    found = [(spec, Path(pngs[spec.name])) for spec in figs.standard_figures(analysis)
             if spec.name in pngs and Path(pngs[spec.name]).exists()]
    # each model's portrait figures first, then its wide ones, so landscape pages are shared
    models = list(dict.fromkeys(spec.model for spec, _ in found))
    ordered = []
    for model in models:
        group = [(spec, path, _is_wide(path)) for spec, path in found if spec.model == model]
        ordered += [g for g in group if not g[2]] + [g for g in group if g[2]]
    for spec, path, wide in ordered:
        n += 1
        want = "landscape" if wide else "portrait"
        if want != orientation:
            out += [NextPageTemplate(want), PageBreak()]
            orientation = want
        w, h = (WIDE_W, WIDE_H) if want == "landscape" else (FRAME_W, FRAME_H)
        img = _scaled_image(path, w, h - CAPTION_RESERVE)
        cap = Paragraph(f"<b>Figure {n}.</b> {escape(spec.title)}. {escape(spec.caption)}",
                        st["caption"])
        out.append(KeepTogether(heading + [img, cap]))
        heading = []
    if n == 0:
        out += [PageBreak()] + heading + [_p("No figures.", st["body"])]
    out += [NextPageTemplate("portrait"), PageBreak()]
    return out


def _definitions(st: dict) -> list:
    out: list = [Paragraph("Definitions", st["h1"]), Paragraph("Layer metrics", st["h2"]),
                 _p(DEFINITIONS_INTRO, st["body"])]
    for name, text in DEFINITIONS:
        out.append(Paragraph(f"<b>{escape(name)}</b>: {text}", st["body"]))
    out.append(Paragraph("Heads and attribution", st["h2"]))
    for name, text in HEAD_DEFINITIONS:
        out.append(Paragraph(f"<b>{escape(name)}</b>: {text}", st["body"]))
    return out


def _settings_rows(d: dict) -> list[list[str]]:
    import json

    rows = []
    for k, v in d.items():
        if isinstance(v, (dict, list, tuple)):
            v = json.dumps(v, default=str)
        rows.append([str(k), str(v)])
    return rows


def _session(analysis: Analysis, session_log: list[dict] | None, st: dict) -> list:
    out: list = [Paragraph("Session settings", st["h1"])]
    settings = {"seed": analysis.seed, "created": analysis.created, **analysis.settings}
    out.append(Paragraph("This analysis", st["h2"]))
    out.append(_table([["setting", "value"]] + _settings_rows(settings), [130, 380], st))
    if session_log:
        out.append(Paragraph(f"Session log ({len(session_log)} entries)", st["h2"]))
        rows = [["#", "time", "action", "settings"]]
        for i, e in enumerate(session_log):
            rest = {k: v for k, v in e.items() if k not in ("time", "action", "summary")}
            text = "; ".join(f"{k}: {v}" for k, v in _settings_rows(rest))
            rows.append([str(i + 1), str(e.get("time", "")), str(e.get("action", "")),
                         text[:600]])
        out.append(_table(rows, [20, 95, 55, 340], st))
    return out


def _on_page(canvas, doc) -> None:
    canvas.saveState()
    canvas.setFont("Helvetica", 7.5)
    canvas.setFillColor(colors.HexColor("#777777"))
    canvas.drawString(MARGIN, 0.9 * cm, TITLE)
    width = (getattr(doc.pageTemplate, "pagesize", None) or PAGE)[0]
    canvas.drawRightString(width - MARGIN, 0.9 * cm, f"page {doc.page}")
    canvas.restoreState()


def write_pdf(analysis: Analysis, path: str | os.PathLike,
              figures_png: dict[str, Path] | None = None,
              session_log: list[dict] | None = None,
              continuations: dict[str, str | None] | None = None) -> Path:
    """Write the report to `path`; figures come from `figures_png` or are drawn here;
    `continuations`: model name -> greedy continuation (asked for after the analysis)."""
    path = Path(path)
    st = _styles()
    versions = package_versions()
    with tempfile.TemporaryDirectory(prefix="report-figs-") as tmp:
        pngs = dict(figures_png) if figures_png is not None else figs.render_pngs(analysis, tmp)
        story: list = []
        story += _title_page(analysis, st, versions)
        for i, r in enumerate(analysis.results):
            if i:
                story.append(PageBreak())
            story += _model_section(r, st, (continuations or {}).get(r.name))
        story += _figure_section(analysis, pngs, st)  # begins with its own page break
        story += _definitions(st)
        story.append(PageBreak())
        story += _session(analysis, session_log, st)
        doc = BaseDocTemplate(str(path), pagesize=PAGE, leftMargin=MARGIN, rightMargin=MARGIN,
                              topMargin=MARGIN, bottomMargin=MARGIN, title=TITLE,
                              author="transformer dashboard",
                              subject="; ".join(analysis.prompts)[:200],
                              creator="reports/pdf.py")
        doc.addPageTemplates([
            PageTemplate("portrait", [Frame(MARGIN, MARGIN, FRAME_W, FRAME_H, id="p",
                                            leftPadding=0, rightPadding=0, topPadding=0,
                                            bottomPadding=0)],
                         onPage=_on_page, pagesize=PAGE),
            PageTemplate("landscape", [Frame(MARGIN, MARGIN, WIDE_W, WIDE_H, id="l",
                                             leftPadding=0, rightPadding=0, topPadding=0,
                                             bottomPadding=0)],
                         onPage=_on_page, pagesize=WIDE_PAGE)])
        doc.build(story)
    return path
