"""What the Layer Analysis tab shows, built from the stored result (no Gradio, no model runs).

Every panel says what it shows (`source_line`: model, prompt or diffusion step or bundle, and
the settings); `banner` says it once for the whole tab. The view specs are JSON for
ui/static/views.js (`ui.views`); the head info and the role table are Markdown and a
DataFrame. Layers count from 1 (0 = the embeddings, which have no attention), heads from 0.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from analysis.result import Analysis, ModelResult
from ui import views

ROLE_ORDER = ("previous", "first", "self", "induction", "mixed")
# head metric -> column header of the role table
ROLE_COLUMNS = {"layer": "layer", "head": "head", "cluster": "cluster", "role": "role",
                "previous_token_score": "previous-token", "first_token_score": "first-token",
                "self_score": "self", "induction_score": "induction",
                "attention_entropy": "entropy", "attribution": "support"}


# ---------------------------------------------------------------------------- what is shown


def _quote(text: str, n: int = 70) -> str:
    text = " ".join(str(text).split())
    return f"“{text[:n - 1]}…”" if len(text) > n else f"“{text}”"


def source_kind(analysis: Analysis) -> str:
    """"diffusion step", "bundle" or "prompt": where the analysis came from."""
    kind = (analysis.settings or {}).get("source")
    return kind if kind in ("diffusion step", "bundle") else "prompt"


def masked_positions(result: ModelResult) -> list[int]:
    """The positions still masked in a diffusion step (where a masked model reads logits)."""
    if result.trace.task not in ("diffusion", "fill-mask"):
        return []
    return [int(p) for p in result.trace.logit_rows or []]


def step_label(analysis: Analysis, result: ModelResult) -> str:
    """'diffusion step k of n, m masked of T positions' (n when the step mode says it)."""
    s = analysis.settings or {}
    step, total = s.get("step"), s.get("steps")
    of = f" of {total}" if total else ""
    masked = masked_positions(result)
    return (f"diffusion step {step}{of}, {len(masked)} masked of {result.trace.n_tokens} "
            "positions")


def source_line(analysis: Analysis, result: ModelResult) -> str:
    """One line naming what a panel shows: model, input and settings."""
    s = analysis.settings or {}
    kind = source_kind(analysis)
    if kind == "diffusion step":
        what = step_label(analysis, result)
    else:
        what = f"{_quote(analysis.prompts[0] if analysis.prompts else '')} ({result.trace.n_tokens} tokens)"
    extra = []
    if result.trace.chat_template:
        extra.append("in the chat template")
    if kind == "bundle":
        extra.append(f"opened from {s.get('bundle', 'a bundle')}")
    return " · ".join([result.name, what] + extra)


def banner(analysis: Analysis | None) -> str:
    """The tab's header: which analysis every panel below shows."""
    if analysis is None:
        return "Nothing analysed yet: run an analysis on the **Overall** tab, or open a saved bundle below."
    s = analysis.settings or {}
    names = ", ".join(f"**{r.name}**" for r in analysis.results)
    kind = source_kind(analysis)
    if kind == "diffusion step":
        r = analysis.results[0]
        masked = masked_positions(r)
        shown = ", ".join(str(p) for p in masked[:24]) + (" …" if len(masked) > 24 else "")
        return (f"**{step_label(analysis, r).capitalize()}** of {names} (the Diffusion tab's "
                f"*Analyze this step*; masked positions: {shown or 'none'}). This is the partly "
                "written sequence, **not an analysis of the Overall prompt**. Text with masks: "
                f"{_quote(analysis.prompts[0] if analysis.prompts else '', 160)}")
    head = (f"**Opened from the bundle `{s.get('bundle', '?')}`** (analysed {analysis.created}); "
            "browsing its saved arrays, no model runs. " if kind == "bundle" else "Showing the analysis of ")
    settings = []
    if s.get("chat_template"):
        settings.append("chat template")
    if "ablation" in s:
        settings.append("head attribution by " + ("ablation" if s.get("ablation") else "gradient"))
    when = f", analysed {analysis.created}" if analysis.created and kind != "bundle" else ""
    return (f"{head}{_quote(analysis.prompts[0] if analysis.prompts else '', 160)} with {names}"
            f"{' (' + ', '.join(settings) + ')' if settings else ''}{when}.")


# ---------------------------------------------------------------------------- head details


def head_info(result: ModelResult, layer: int, head: int) -> str:
    """One line about the selected head: its role scores, entropy and support."""
    h = result.heads
    i, j = layer - 1, head

    def f(name):
        v = h.score(name)[i, j]
        return "–" if not np.isfinite(v) else f"{v:.2f}"

    attr = "" if h.attribution is None else (f", support for the prediction "
                                            f"{h.attribution[i, j]:+.3g} ({h.attribution_method})")
    return (f"**{result.name} · layer {layer} / {result.trace.n_layers} · head {head} / "
            f"{result.trace.n_heads - 1}** — role: *{h.role[i, j]}* "
            f"(previous-token {f('previous_token_score')}, "
            f"first-token {f('first_token_score')}, self {f('self_score')}, induction "
            f"{f('induction_score')}), attention entropy {f('attention_entropy')}, cluster "
            f"{int(h.cluster[i, j])}{attr}")


def role_table(result: ModelResult) -> pd.DataFrame:
    """One row per head: cluster, dominant role and the role scores (rounded for reading)."""
    rows = []
    for h in result.heads.rows():
        row = {}
        for key, header in ROLE_COLUMNS.items():
            v = h.get(key)
            if isinstance(v, float):
                v = float(f"{v:.3g}") if key == "attribution" else round(v, 3)
            row[header] = v
        rows.append(row)
    return pd.DataFrame(rows, columns=list(ROLE_COLUMNS.values()))


# ---------------------------------------------------------------------------- view specs


def head_maps(result: ModelResult, source: str) -> str:
    """Entropy, induction and previous-token maps and the head clusters; a click selects."""
    h = result.heads
    roles = np.asarray(h.role, dtype=object)
    tips = {"role": [[str(x) for x in row] for row in roles]}
    entropy = views.head_heatmap(
        "entropy", f"{result.name}: attention entropy per head", h.score("attention_entropy"),
        source=source, label="entropy", cmap="viridis", vmin=0.0, vmax=1.0, digits=2, tips=tips,
        caption="0 = every query looks at one key, 1 = spread evenly over the keys it may see.")
    induction = views.head_heatmap(
        "induction", f"{result.name}: induction score", h.score("induction_score"), source=source,
        label="induction", cmap="rocket_r", vmin=0.0, vmax=1.0, digits=2, tips=tips,
        caption="On a repeated random sequence: attention to the token after the previous "
                "occurrence (1 = a perfect induction head).")
    previous = views.head_heatmap(
        "previous", f"{result.name}: previous-token score", h.score("previous_token_score"),
        source=source, label="previous-token", cmap="mako_r", vmin=0.0, vmax=1.0, digits=2,
        tips=tips, caption="Mean attention to the immediately preceding token, on the prompt.")
    return views.spec(entropy, induction, previous, clusters(result, source), columns=460)


def clusters(result: ModelResult, source: str) -> dict:
    """Heads in the 2-D projection of their behaviour features, coloured by cluster."""
    h = result.heads
    proj = np.asarray(h.projection, dtype=np.float64).reshape(-1, 2)
    n_layers, n_heads = h.shape
    labels = np.asarray(h.cluster).reshape(-1)
    roles = [str(r) for r in np.asarray(h.role, dtype=object).reshape(-1)]
    groups = sorted({int(c) for c in labels})
    points = []
    for i in range(min(len(labels), proj.shape[0])):
        layer, head = i // n_heads + 1, i % n_heads
        points.append({"x": proj[i, 0], "y": proj[i, 1], "layer": layer, "head": head,
                       "group": groups.index(int(labels[i])), "marker": roles[i],
                       "label": f"cluster {int(labels[i])}, role {roles[i]}"})
    return views.scatter(
        "clusters", f"{result.name}: head clusters ({len(points)} heads, {len(groups)} clusters)",
        points, source=source, x_title="PC 1 of standardised head features", y_title="PC 2",
        groups=[f"cluster {c}" for c in groups],
        markers=[r for r in ROLE_ORDER if r in roles], select=True,
        caption="Features: previous-token, first-token and self scores, entropy, mean attention "
                "distance; marker = dominant role (score >= 0.4).")


def _lens_panel(result: ModelResult, source: str) -> dict | None:
    lens = result.lens
    if lens is None or not lens.top_tokens:
        return None
    tokens = result.trace.tokens
    probs = np.asarray(lens.top_probs, dtype=np.float64)
    cols = [f"{p}: {tokens[p]}" for p in lens.positions]
    return views.heatmap(
        "lens", f"{result.name}: logit lens, top token per layer and position",
        probs, [str(v) for v in range(probs.shape[0])], cols, source=source,
        row_title="layer", col_title="position", label="top-token probability", cmap="magma",
        vmin=0.0, vmax=1.0, text=lens.top_tokens, text_label="top token", wide=True,
        min_cell=34, max_cell=70,
        caption="Every layer's hidden state through the final norm and the output head "
                "(layer 0 = embeddings). Read a column top to bottom to see when the prediction "
                "emerges.")


def prediction_views(result: ModelResult, source: str) -> str:
    """The analysis's own prediction: token attribution, head support and the logit lens."""
    attr = result.attribution
    panels = []
    if attr is not None:
        series = []
        if attr.grad_x_input is not None:
            series.append({"name": "gradient × input", "values": attr.grad_x_input,
                           "signed": True})
        series.append({"name": "attention rollout", "values": attr.rollout})
        panels.append(views.bars(
            "attribution", f"{result.name}: why “{attr.target}”? attribution to each input token",
            result.trace.tokens, series, source=source, highlight=attr.position,
            caption=f"For log p(“{attr.target}”) at position {attr.position} (orange): red "
                    "raises it, blue lowers it; rollout = attention flowing back to each token."))
    if result.heads.attribution is not None and attr is not None:
        method = result.heads.attribution_method
        panels.append(views.head_heatmap(
            "support", f"{result.name}: head support for “{attr.target}”",
            result.heads.attribution, source=source, label="support", cmap="rdbu", center=0.0,
            caption="log p(all heads) − log p(head removed): red supports the "
                              "prediction, blue works against it ("
                              + ("exact, by ablation" if method == "ablation"
                                 else "first-order gradient estimate") + ")."))
    lens = _lens_panel(result, source)
    if lens:
        panels.append(lens)
    if not panels:
        return views.empty(f"{result.name} predicts nothing here (no [MASK] in the prompt, or "
                           "no language-model head): no attribution or logit lens.")
    return views.spec(*panels, columns=460)


def target_views(result: ModelResult, t, lens, source: str) -> str:
    """A chosen target (analysis.targets): its attribution, head support, lens and rank."""
    what = f"“{t.target.text}”" + (f" over “{t.contrast.text}”" if t.contrast else "")
    objective = ("log p(target)" if t.contrast is None
                 else "logit(target) − logit(contrast)")
    src = f"{source} · target {what} at position {t.position} · f = {objective}"
    tokens = result.trace.tokens
    bars = views.bars(
        "target-attribution", f"{result.name}: attribution of {what}", tokens,
        [{"name": "gradient × input of f", "values": t.grad_x_input, "signed": True},
         {"name": "attention rollout", "values": t.rollout}],
        source=src, highlight=t.position,
        caption="Red raises f (supports the target), blue lowers it.")
    support = views.head_heatmap(
        "target-support", f"{result.name}: head support for {what}", t.head_support,
        source=src, label="support", cmap="rdbu", center=0.0,
        caption="f(all heads) − f(head removed): red supports the target ("
                + ("exact, by ablation" if t.method == "ablation"
                   else "first-order gradient estimate") + ").")
    cols = [f"{p}: {tokens[p]}" for p in lens.positions]
    text = [[f"#{int(r)}" for r in row] for row in lens.ranks]
    tips = {"rank": lens.ranks}
    if lens.logit_diff is not None:
        tips["logit difference"] = lens.logit_diff
    lens_map = views.heatmap(
        "target-lens", f"{result.name}: logit lens of “{t.target.text}”", lens.probs,
        [str(v) for v in range(lens.probs.shape[0])], cols, source=src, row_title="layer",
        col_title="position", label=f"p(“{t.target.text}”)", cmap="magma", vmin=0.0, vmax=1.0,
        text=text, text_label="rank", tips=tips, wide=True, min_cell=34, max_cell=70,
        caption="The target's probability (colour) and rank (#1 = the lens's top token) at "
                "every layer and position.")
    probs, ranks = lens.at(t.position)
    series = [{"name": "rank (log scale)", "values": ranks, "log": True, "colour": "#d9480f"},
              {"name": "probability", "values": probs, "axis": "right", "colour": "#1f77b4"}]
    if lens.logit_diff is not None:
        j = lens.positions.index(t.position)
        d = lens.logit_diff[:, j]
        lim = float(np.nanmax(np.abs(d))) or 1.0
        series[1] = {"name": "logit difference", "values": d, "axis": "right",
                     "colour": "#1f77b4", "min": -lim, "max": lim}
    rank = views.lines(
        "target-rank", f"{result.name}: rank of “{t.target.text}” through the layers at "
                       f"position {t.position}", list(range(len(ranks))), series, source=src,
        x_title="layer (0 = embeddings)",
        caption=f"In the model's own output it is #{t.rank} (p = {t.probability:.3g}).")
    return views.spec(bars, support, rank, lens_map, columns=460)


def target_info(result: ModelResult, t, source: str) -> str:
    """A line naming the explained target and its numbers."""
    what = f"“{t.target.text}” (id {t.target.id})"
    if t.contrast is None:
        f = f"log p = {t.value:.4g}"
    else:
        f = (f"against “{t.contrast.text}” (id {t.contrast.id}): logit difference "
             f"{t.value:+.4g}")
    return (f"**Target {what}** at position {t.position}, {f}; rank #{t.rank}, p = "
            f"{t.probability:.3g} in the model's output; head support by {t.method}. "
            f"_{source}_")
