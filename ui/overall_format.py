"""The Overall tab's pure formatting: an Analysis (or a result, a session) in, the value of one
component out (a table, Markdown, a label dict, highlighted tokens). No Gradio here, so tests and
other tabs can call these alone."""

from __future__ import annotations

import numpy as np
import pandas as pd

from analysis.result import LAYER_COLUMNS, TWONN_INTERVAL_COLUMNS, Analysis, ModelResult
from ui.state import Session


def metric_header(column: str) -> str:
    """A layer_metrics.csv column as a readable table header (it wraps at spaces)."""
    from reports.figures import METRIC_LABELS

    return METRIC_LABELS.get(column, column.replace("_", " "))


TABLE_COLUMNS = LAYER_COLUMNS[:4] + TWONN_INTERVAL_COLUMNS + LAYER_COLUMNS[4:]


def metrics_table(analysis: Analysis) -> pd.DataFrame:
    """One row per model and layer 0..L, the layer metrics rounded for reading (TwoNN followed
    by its 95% bootstrap interval)."""
    headers = [metric_header(c) for c in TABLE_COLUMNS]
    rows = []
    for r in analysis.results:
        for layer in range(r.layers.n_layers + 1):
            row = {"model": r.name, "layer": layer}
            for c, h in zip(TABLE_COLUMNS, headers, strict=True):
                v = r.layers.value(c, layer)
                row[h] = None if v is None else float(f"{v:.4g}")
            rows.append(row)
    return pd.DataFrame(rows, columns=["model", "layer", *headers])


def display_tokens(tokens: list[str]) -> list[str]:
    """Token strings joined back into readable text (WordPiece '##' glued, others spaced)."""
    spaced = any(t.startswith(" ") for t in tokens)
    if spaced:
        return list(tokens)
    out = []
    for i, t in enumerate(tokens):
        if t.startswith("##"):
            out.append(t[2:])
        else:
            out.append(t if i == 0 else " " + t)
    return out


def attribution_highlights(result: ModelResult) -> list[tuple[str, float | None]]:
    """(token, gradient x input scaled to [-1, 1]) for gr.HighlightedText; [] if none."""
    attr = result.attribution
    gxi = np.asarray([] if attr is None or attr.grad_x_input is None else attr.grad_x_input,
                     dtype=np.float64)
    tokens = display_tokens(result.trace.tokens)
    if gxi.size != len(tokens) or gxi.size == 0:
        return []
    scale = float(np.max(np.abs(gxi)))
    vals = gxi / scale if scale > 0 else gxi
    return [(tok, round(float(v), 3)) for tok, v in zip(tokens, vals, strict=True)]


def prediction_label(result: ModelResult) -> dict[str, float] | None:
    preds = result.predictions.top if result.predictions is not None else []
    if not preds:
        return None
    out: dict[str, float] = {}
    for p in preds:
        name = str(p.token) or "∅"
        while name in out:  # two ids can decode to the same text
            name += " "
        out[name] = float(p.probability)
    return out


def prediction_text(result: ModelResult, continuation: str | None = None,
                    pending: bool = False) -> str:
    """The prediction panel: the top prediction, the filled sentence or the greedy continuation
    (`continuation`, asked for after the analysis; `pending` while it is being written)."""
    p = result.predictions
    task = result.trace.task
    where = " (the prompt inside the chat template)" if result.trace.chat_template else ""
    parts = []
    if task in ("fill-mask", "diffusion"):
        if p is not None and p.top:
            parts.append(f"**Fill-mask{where}:** top prediction `{p.top[0].token}` "
                         f"({p.top[0].probability:.1%}). **Filled sentence:** {p.filled}")
            if len(p.masks) > 1:
                parts.append(f"({len(p.masks)} masks; the top-k list is for the first.)")
        else:
            parts.append("**No prediction:** the prompt has no mask token for this model.")
    elif task == "causal":
        if p is not None and p.top:
            parts.append(f"**Next token{where}:** `{p.top[0].token}` ({p.top[0].probability:.1%}).")
        if pending:
            parts.append("**Greedy continuation:** _writing…_")
        else:
            parts.append(f"**Greedy continuation** (of the same ids): {continuation or '(empty)'}")
    else:
        parts.append("This model has no language-model head: it is analysed, not asked to predict.")
    attr = result.attribution
    if attr is not None and attr.grad_x_input is not None:
        parts.append(f"Token attribution below: gradient × input for log p(`{attr.target}`)"
                     f" at position {attr.position}, scaled so the largest |value| is 1 "
                     "(red raises, blue lowers the probability).")
    return "\n\n".join(parts)


def model_header(result: ModelResult) -> str:
    params = result.info.params
    size = f", {params / 1e6:.2f} M parameters" if params else ""
    chat = " inside the chat template" if result.trace.chat_template else ""
    return (f"### {result.name}\n{result.trace.task}, {result.trace.n_layers} layers × "
            f"{result.trace.n_heads} heads{size}; {result.trace.n_tokens} tokens{chat}; "
            f"analysed in {result.seconds:.2f} s on {result.info.device} ({result.info.dtype})")


def result_header(analysis: Analysis) -> str:
    """What the panels below show: the prompt, the models and the settings of the analysis (or
    that it is a step of a diffusion run, not an analysis of the Overall prompt)."""
    settings = analysis.settings or {}
    models = ", ".join(f"`{r.name}`" for r in analysis.results)
    if settings.get("source") == "diffusion step":
        return (f"**Showing a diffusion step**, not an analysis of the prompt above: step "
                f"{settings.get('step')} of {settings.get('steps')} of {models}, "
                f"{settings.get('masked')} positions still masked, prompt “{analysis.prompts[0]}”.")
    prompt = analysis.prompts[0] if analysis.prompts else ""
    short = prompt if len(prompt) <= 160 else prompt[:157] + "…"
    tokens = ", ".join(f"{r.trace.n_tokens}" for r in analysis.results)
    method = "ablation (exact)" if settings.get("ablation") else "gradient (first-order)"
    chat = "applied" if settings.get("chat_template") else "not applied"
    return (f"**Showing** the analysis of “{short}” ({tokens} tokens) by {models}; chat template "
            f"{chat}; head support by {method}; run {analysis.created or ''} UTC.")


def notices_markdown(analysis: Analysis, extra: list[str]) -> str:
    lines = list(extra)
    for r in analysis.results:
        for n in r.trace.notices:
            lines.append(f"**{r.name}:** {n}")
    return "\n".join(f"- ⚠️ {line}" for line in dict.fromkeys(lines))


def session_log_table(session: Session) -> pd.DataFrame:
    """The session log (entries as reports.bundle writes them) as a small table."""
    rows = []
    for e in session.log:
        summary = e.get("summary") or {}
        if e.get("error"):
            result = f"error: {e['error']}"
        elif summary:
            result = "; ".join(f"{m}: {s.get('prediction') or '-'}" for m, s in summary.items())
        else:
            result = e.get("result", "")
        rows.append({"time": e.get("time", ""), "action": e.get("action", ""),
                     "models": ", ".join(e.get("models", [])),
                     "prompt": " | ".join(e.get("prompts", [])), "seconds": e.get("seconds"),
                     "result": result})
    return pd.DataFrame(rows, columns=["time", "action", "models", "prompt", "seconds", "result"])
