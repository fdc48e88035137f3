"""Layer Analysis tab: one model, one layer, one head, drawn from the stored Analysis.

Nothing here runs a model. Changing the layer or the head redraws from the session's
`Analysis` (the Trace already holds every attention pattern); figures are cached per
(analysis, model, layer, head) in the session, and after an analysis the patterns of small
models are drawn ahead of time so a switch only sends a cached image.
"""

from __future__ import annotations

import functools
import logging
from dataclasses import dataclass

import gradio as gr
import numpy as np
import pandas as pd

from analysis.result import ModelResult
from models.common import UserError, file_safe
from ui.state import Session, friendly_errors

log = logging.getLogger(__name__)

PREWARM_MAX_HEADS = 64  # pre-draw every head pattern when layers x heads is at most this


@dataclass
class LayerTab:
    model: gr.Dropdown
    layer: gr.Slider
    head: gr.Slider
    info: gr.Markdown
    pattern: gr.Plot
    grid: gr.Plot
    model_outputs: list  # what `model_event` returns, in order
    gif: gr.Image
    on_model: object = None  # the wired event functions (the analysis chain reuses them)
    on_gif: object = None
    on_prewarm: object = None


def _figures():
    from reports import figures

    return figures


def _result(session: Session, model: str | None) -> ModelResult:
    analysis = session.require_analysis()
    if not model:
        return analysis.results[0]
    try:
        return analysis.result(model)
    except KeyError:
        raise UserError(f"'{model}' is not in the current analysis; analysed: "
                        f"{', '.join(r.name for r in analysis.results)}.") from None


def _clamp(result: ModelResult, layer, head) -> tuple[int, int]:
    n_layers, n_heads = result.trace.n_layers, result.trace.n_heads
    try:  # an API client can send NaN or a string where the page's sliders send numbers
        layer = int(round(float(layer if layer is not None else 1)))
        head = int(round(float(head if head is not None else 0)))
    except (TypeError, ValueError, OverflowError):
        raise UserError(f"Layer and head must be whole numbers (got {layer!r}, {head!r}).") from None
    return min(max(layer, 1), n_layers), min(max(head, 0), n_heads - 1)


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


# head metric -> column header of the role table
ROLE_COLUMNS = {"layer": "layer", "head": "head", "cluster": "cluster", "role": "role",
                "previous_token_score": "previous-token", "first_token_score": "first-token",
                "self_score": "self", "induction_score": "induction",
                "attention_entropy": "entropy", "attribution": "support"}


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


def pattern_plot(session: Session, result: ModelResult, layer: int, head: int):
    f = _figures()
    return session.plot(("pattern", result.name, layer, head),
                        functools.partial(f.attention_pattern, result, layer, head,
                                          keep=session.kept), kept=True)


def grid_plot(session: Session, result: ModelResult, layer: int):
    f = _figures()
    return session.plot(("grid", result.name, layer),
                        functools.partial(f.head_grid, result, layer, keep=session.kept), kept=True)


# ---------------------------------------------------------------------------- events


def model_event(ctx, session: Session, model: str | None, layer=None, head=None) -> tuple:
    """A model was chosen (or a new analysis arrived): everything in the tab for it.

    Returns (dropdown, layer slider, head slider, info, pattern, grid, entropy heatmap,
    induction heatmap, head clusters, role table, head attribution, logit lens).
    """
    analysis = session.require_analysis()
    names = [r.name for r in analysis.results]
    result = _result(session, model if model in names else None)
    layer, head = _clamp(result, layer, head)
    f = _figures()
    n_layers, n_heads = result.trace.n_layers, result.trace.n_heads
    name = result.name
    return (
        gr.Dropdown(choices=names, value=name, interactive=True),
        # a gr.Slider needs minimum < maximum: one-layer/one-head models get a locked slider
        gr.Slider(minimum=1, maximum=max(n_layers, 2), value=layer, step=1, interactive=n_layers > 1,
                  label=f"Layer (1..{n_layers}; 0 = embeddings has no attention)"),
        gr.Slider(minimum=0, maximum=max(n_heads - 1, 1), value=head, step=1, interactive=n_heads > 1,
                  label=f"Head (0..{n_heads - 1})"),
        head_info(result, layer, head),
        pattern_plot(session, result, layer, head),
        grid_plot(session, result, layer),
        session.plot(("entropy", name), functools.partial(f.attention_entropy_heatmap, result)),
        session.plot(("induction", name), functools.partial(f.induction_heatmap, result)),
        session.plot(("clusters", name), functools.partial(f.head_clusters, result)),
        role_table(result),
        session.plot(("head-attribution", name),
                     functools.partial(f.head_attribution_heatmap, result)),
        session.plot(("logit-lens", name), functools.partial(f.logit_lens, result)),
    )


def layer_event(ctx, session: Session, model: str | None, layer, head) -> tuple:
    """Layer changed: (info, pattern, grid), from the stored Trace."""
    result = _result(session, model)
    layer, head = _clamp(result, layer, head)
    return (head_info(result, layer, head), pattern_plot(session, result, layer, head),
            grid_plot(session, result, layer))


def head_event(ctx, session: Session, model: str | None, layer, head) -> tuple:
    """Head changed: (info, pattern)."""
    result = _result(session, model)
    layer, head = _clamp(result, layer, head)
    return head_info(result, layer, head), pattern_plot(session, result, layer, head)


def gif_event(ctx, session: Session, model: str | None) -> str:
    """The layer-transition animation (GIF) of the model, written once into the session dir."""
    result = _result(session, model)
    key = (session.analysis_id, result.name)
    path = session.gif_paths.get(key)
    if path is None or not path.is_file():
        path = session.folder() / f"layers-{file_safe(result.name)}-{session.analysis_id}.gif"
        _figures().layer_transition_gif(result, path, kind="both", dpi=80)
        session.gif_paths[key] = path
    return str(path)


def prewarm_event(ctx, session: Session, model: str | None) -> None:
    """Draw every head pattern and layer grid of a small model into the session cache."""
    try:
        result = _result(session, model)
    except UserError:
        return
    n_layers, n_heads = result.trace.n_layers, result.trace.n_heads
    if n_layers * n_heads > PREWARM_MAX_HEADS:
        return
    analysis_id = session.analysis_id
    # first what a layer switch shows (the layer's grid and its head-0 pattern, under a second
    # for the embedded models), then every other head
    order = [(layer, 0, True) for layer in range(1, n_layers + 1)]
    order += [(layer, head, False) for layer in range(1, n_layers + 1) for head in range(1, n_heads)]
    for layer, head, with_grid in order:
        if session.analysis_id != analysis_id:  # a newer analysis arrived: stop
            return
        if with_grid:
            grid_plot(session, result, layer)
        pattern_plot(session, result, layer, head)


# ---------------------------------------------------------------------------- layout


def build(ctx) -> LayerTab:
    gr.Markdown("Pick one analysed model, a layer and a head. Everything here is drawn from the "
                "stored analysis: switching layer or head never re-runs the model.",
                elem_id="layer-help")
    with gr.Row():
        # allow_custom_value: API clients may name the model before the page filled the choices;
        # the event functions check it against the session's analysis themselves
        model = gr.Dropdown(choices=[], value=None, label="Model (among the analysed ones)",
                            elem_id="layer-model", interactive=True, scale=2,
                            allow_custom_value=True)
        layer = gr.Slider(minimum=1, maximum=2, value=1, step=1, label="Layer",
                          elem_id="layer-slider", scale=3, interactive=False)
        head = gr.Slider(minimum=0, maximum=1, value=0, step=1, label="Head", elem_id="head-slider",
                         scale=3, interactive=False)
    info = gr.Markdown("Run an analysis on the Overall tab first.", elem_id="head-info")

    def plot(label: str, elem_id: str) -> gr.Plot:
        # the figures carry their own titles: a floating label would cover them
        return gr.Plot(label=label, elem_id=elem_id, format="png", show_label=False)

    with gr.Row(equal_height=False):
        pattern = plot("Attention pattern of the selected head", "attention-pattern")
        grid = plot("All heads of the selected layer", "head-grid")
    with gr.Row(equal_height=False):
        entropy = plot("Attention entropy per head", "entropy-heatmap")
        head_attr = plot("Per-head attribution", "head-attribution")
    # these two are wide figures: full rows keep their text at its natural size
    induction = plot("Induction and previous-token scores", "induction-heatmap")
    clusters = plot("Head clusters (2-D projection of head behaviour)", "head-clusters")
    roles = gr.Dataframe(value=pd.DataFrame(columns=list(ROLE_COLUMNS.values())),
                         label="Head role scores (role: the largest score if >= 0.4, else mixed)",
                         elem_id="role-table", interactive=False, max_height=360)
    lens = plot("Logit lens", "logit-lens")
    gif = gr.Image(label="Layer transition (attention averaged over heads; hidden states in a "
                         "shared 2-D PCA)", elem_id="layer-gif", type="filepath", interactive=False,
                   buttons=["download", "fullscreen"], show_label=False)

    model_outputs = [model, layer, head, info, pattern, grid, entropy, induction, clusters, roles,
                     head_attr, lens]

    @friendly_errors
    def on_model(session, model_value, layer_value, head_value):
        return model_event(ctx, session, model_value, layer_value, head_value)

    @friendly_errors
    def on_layer(session, model_value, layer_value, head_value):
        return layer_event(ctx, session, model_value, layer_value, head_value)

    @friendly_errors
    def on_head(session, model_value, layer_value, head_value):
        return head_event(ctx, session, model_value, layer_value, head_value)

    @friendly_errors
    def on_gif(session, model_value):
        return gif_event(ctx, session, model_value)

    def on_prewarm(session, model_value):
        try:
            prewarm_event(ctx, session, model_value)
        except Exception:  # only a cache warm-up: never bother the user
            log.exception("prewarm failed")

    sel = [ctx.state, model, layer, head]
    model_changed = model.input(on_model, sel, model_outputs, api_name="layer_model",
                                concurrency_id="layer-view", concurrency_limit=4)
    model_changed.then(on_gif, [ctx.state, model], [gif], api_visibility="private",
                       concurrency_id="gif", show_progress="minimal")
    model_changed.then(on_prewarm, [ctx.state, model], None, api_visibility="private",
                       concurrency_id="prewarm", show_progress="hidden")
    layer.change(on_layer, sel, [info, pattern, grid], api_name="layer", trigger_mode="always_last",
                 concurrency_id="layer-view", concurrency_limit=4, show_progress="minimal")
    head.change(on_head, sel, [info, pattern], api_name="head", trigger_mode="always_last",
                concurrency_id="layer-view", concurrency_limit=4, show_progress="minimal")
    return LayerTab(model, layer, head, info, pattern, grid, model_outputs, gif, on_model, on_gif,
                    on_prewarm)


def wire_analysis(ctx, analyzed, tab: LayerTab) -> None:
    """After each analysis: show its first model here, then the GIF, then pre-draw the heads."""
    events = analyzed if isinstance(analyzed, list | tuple) else [analyzed]
    for event in events:
        shown = event.success(friendly_errors(lambda s: model_event(ctx, s, None, 1, 0)), [ctx.state],
                              tab.model_outputs, api_visibility="private",
                              concurrency_id="layer-view", concurrency_limit=4,
                              show_progress="hidden")
        shown.then(tab.on_gif, [ctx.state, tab.model], [tab.gif], api_visibility="private",
                   concurrency_id="gif", show_progress="minimal")
        shown.then(tab.on_prewarm, [ctx.state, tab.model], None, api_visibility="private",
                   concurrency_id="prewarm", show_progress="hidden")
