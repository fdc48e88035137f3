"""Layer Analysis tab: one model's attention and heads, browsed from the stored Analysis.

Nothing here runs a model except "Explain" (a chosen target token: analysis.targets, one
gradient pass). The attention goes to the browser once (ui/explorer.py; its compressed streams
as a file in the session folder, fetched by the page), and the head maps, the cluster scatter
and the prediction views are drawn there too (ui/views.py); switching the head or layer
happens in the page. A click on any of them, on a row of the role table, or the layer and head
boxes selects a head everywhere. Every panel names what it shows (ui/layer_panels.py).

Events (api: undocumented = the page's own, callable but not listed; private = not callable):
    layer_model        model chosen            -> everything for it          undocumented
    layer_select       layer / head boxes      -> the selection, or why not  undocumented
    layer_target       Explain                 -> target views               undocumented
    layer_open_bundle  a bundle file           -> its analysis, everywhere   undocumented
    private: the explorer's data, the GIF, clicks in the views and the role table, the tab
    opening on a newer analysis, the Explain button's busy state.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from types import SimpleNamespace

import gradio as gr
import pandas as pd

from analysis.result import ModelResult
from models.common import UserError, file_safe, whole_number
from ui import explorer as explorer_mod
from ui import layer_panels as panels
from ui import limits, views
from ui.state import Session, friendly_errors, safe_text

log = logging.getLogger(__name__)

TARGET_METHODS = {"gradient (one backward pass)": "gradient",
                  "ablation (exact, one pass per head)": "ablation"}
EXPLAIN, EXPLAINING = "Explain", "Explaining…"


@dataclass
class LayerTab:
    model: gr.Dropdown
    layer: gr.Number
    head: gr.Number
    explorer: explorer_mod.Explorer
    model_outputs: list  # what `model_event` returns, in order
    gif: gr.Image
    on_shown: object = None  # the wired event functions (the analysis chain reuses them)
    on_explorer: object = None
    on_gif: object = None
    extra: dict = field(default_factory=dict)  # the other components, by elem_id


# ---------------------------------------------------------------------------- helpers


def _result(session: Session, model: str | None) -> ModelResult:
    analysis = session.require_analysis()
    if not model:
        return analysis.results[0]
    try:
        return analysis.result(model)
    except KeyError:
        raise UserError(f"'{model}' is not in the current analysis; analysed: "
                        f"{', '.join(r.name for r in analysis.results)}.") from None


def check_selection(result: ModelResult, layer, head) -> tuple[int, int]:
    """(layer, head) when both exist, else a UserError that gives the bounds."""
    n_layers, n_heads = result.trace.n_layers, result.trace.n_heads
    where = (f" ('{result.name}' has layers 1..{n_layers}, heads 0..{n_heads - 1}; layer 0 is the "
             "embeddings, which have no attention.)")
    try:
        layer = whole_number("Layer", layer, 1, n_layers)
        head = whole_number("Head", head, 0, n_heads - 1)
    except UserError as exc:
        raise UserError(str(exc) + where) from None
    return layer, head


def current(session: Session, result: ModelResult) -> tuple[int, int]:
    """The selection this session shows for the model (layer 1, head 0 at first)."""
    layer, head = session.selection.get(result.name, (1, 0))
    try:
        return check_selection(result, layer, head)
    except UserError:
        return 1, 0


def _source(session: Session, result: ModelResult) -> str:
    return panels.source_line(session.require_analysis(), result)


def _choices(result: ModelResult) -> list[str]:
    return [p.token for p in (result.predictions.top if result.predictions else [])]


# ---------------------------------------------------------------------------- events


def model_event(ctx, session: Session, model: str | None, layer=None, head=None) -> tuple:
    """A model was chosen (or an analysis arrived): everything in the tab for it.

    Returns, in `model_outputs` order: dropdown, banner, layer box, head box, error line, head
    info, head maps, role table, target choice, contrast choice, target info, prediction views.
    `layer`/`head`: the selection to show when it exists (else the session's, else 1, 0)."""
    analysis = session.require_analysis()
    names = [r.name for r in analysis.results]
    result = _result(session, model if model in names else None)
    try:
        sel = check_selection(result, layer, head)
    except UserError:
        sel = current(session, result)
    session.selection[result.name] = sel
    session.layer_shown = session.analysis_id
    source = _source(session, result)
    choices = _choices(result)
    predicts = bool(result.trace.token_ids) and result.attribution is not None
    return (
        gr.Dropdown(choices=names, value=result.name, interactive=True),
        panels.banner(analysis),
        gr.Number(value=sel[0], label=f"Layer (1..{result.trace.n_layers})"),
        gr.Number(value=sel[1], label=f"Head (0..{result.trace.n_heads - 1})"),
        "",
        panels.head_info(result, *sel),
        views.update(panels.head_maps(result, source), sel),
        gr.Dataframe(value=panels.role_table(result),
                     label=f"Head role scores: {source} (role: the largest score if >= 0.4, "
                           "else mixed); click a row to select its head"),
        gr.Dropdown(choices=choices, value=choices[0] if choices else None, interactive=predicts),
        gr.Dropdown(choices=["", *choices[1:]], value="", interactive=predicts),
        _target_intro(result, predicts),
        views.update(panels.prediction_views(result, source), sel),
    )


def _target_intro(result: ModelResult, predicts: bool) -> str:
    if predicts:
        return (f"Shown below: the analysis's own prediction, “{result.attribution.target}” at "
                f"position {result.attribution.position}. Pick another target token (or type "
                "one, or `id:N`), optionally a contrast token, and press **Explain**.")
    if not result.trace.token_ids:
        return "This analysis was opened from a bundle: explaining a new target needs the model."
    return f"{result.name} predicts nothing for this input: there is no target to explain."


def pick_event(ctx, session: Session, model: str | None, layer, head) -> tuple:
    """A head was selected (a click in a view, the role table or the boxes): the boxes, the
    error line (cleared), the head info, and the selection for every view."""
    result = _result(session, model)
    layer, head = check_selection(result, layer, head)
    session.selection[result.name] = (layer, head)
    sel = views.selection_update(layer, head)
    return (layer, head, "", panels.head_info(result, layer, head),
            explorer_mod.selection_update(layer, head), sel, sel)


def boxes_event(ctx, session: Session, model: str | None, layer, head,
                left: bool = False) -> tuple:
    """The layer and head boxes: the selection, or (when a value does not exist) the message
    with the bounds beside the boxes, which go back to what every view still shows.
    `left`: the user left a box (blur); unchanged values then change nothing (the message of
    a refusal stays)."""
    result = _result(session, model)
    if left and (layer, head) == current(session, result):
        return tuple(gr.skip() for _ in range(7))
    try:
        return pick_event(ctx, session, model, layer, head)
    except UserError as exc:
        layer0, head0 = current(session, result)
        return (layer0, head0,
                f"⚠️ {exc} Still showing layer {layer0}, head {head0}.", gr.skip(), gr.skip(),
                gr.skip(), gr.skip())


def explorer_event(ctx, session: Session, model: str | None, serve=None) -> object:
    """The explorer's data for the model: its compressed streams written once per analysis
    into the session folder, `serve(path)` -> the path the page fetches them from (the app:
    a copy in Gradio's cache, served like any file output), and a small JSON that says where."""
    result = _result(session, model)
    layer, head = current(session, result)
    key = (session.analysis_id, "explorer", result.name)
    value = session.figures.get(key)
    path = session.files.get(key)
    if value is None or path is None or not path.is_file():
        t = result.trace
        try:
            payload = explorer_mod.pack_attention(t.attentions, t.tokens, t.causal,
                                                  title=_source(session, result))
        except UserError as exc:
            return explorer_mod.payload_update(explorer_mod.message_json(str(exc)), layer, head)
        path = session.folder() / f"attention-{file_safe(result.name)}-{session.analysis_id}.bin"
        payload.write_binary(path)
        value = payload.linked_json(explorer_mod.gradio_file_url(serve(path) if serve else path))
        session.files[key], session.figures[key] = path, value
    return explorer_mod.payload_update(value, layer, head)


def gif_event(ctx, session: Session, model: str | None) -> str:
    """The layer-transition animation (GIF) of the model, written once into the session dir."""
    from reports.figures import layer_transition_gif

    result = _result(session, model)
    key = (session.analysis_id, "gif", result.name)
    path = session.files.get(key)
    if path is None or not path.is_file():
        path = session.folder() / f"layers-{file_safe(result.name)}-{session.analysis_id}.gif"
        layer_transition_gif(result, path, kind="both", dpi=80)
        session.files[key] = path
    return str(path)


def target_event(ctx, session: Session, model: str | None, target: str | None,
                 contrast: str | None = None, method: str = "gradient") -> tuple:
    """Explain a chosen target token (optionally against a contrast): (target info, prediction
    views). A request the analysis cannot answer says why in the info line (nothing else
    changes); an analysis that changed meanwhile is not mixed with the answer."""
    from analysis import targets

    result = _result(session, model)
    analysis_id = session.analysis_id
    method = TARGET_METHODS.get(method, method) or "gradient"
    try:
        if not result.trace.token_ids:
            raise UserError(_target_intro(result, False))
        loaded = ctx.load(result.name)
        prefer = [p.token_id for p in (result.predictions.top if result.predictions else [])]
        t_tok = targets.resolve_token(loaded.tokenizer, target, prefer)
        c_tok = (targets.resolve_token(loaded.tokenizer, contrast, prefer)
                 if contrast and str(contrast).strip() else None)
        t = targets.attribute(loaded, result, t_tok, c_tok, method=method)
        lens = targets.token_lens(loaded, result, t_tok, c_tok)
    except UserError as exc:
        return f"⚠️ {safe_text(str(exc))}", gr.skip()
    if session.analysis_id != analysis_id:
        return ("⚠️ A new analysis arrived while this target was being explained; choose the "
                "target again for it.", gr.skip())
    session.record("explain target", models=[result.name], prompts=list(session.analysis.prompts),
                   settings={"target": t.target.text, "contrast": t.contrast.text if t.contrast
                             else None, "method": method, "position": t.position},
                   summary={result.name: {"objective": t.objective, "value": t.value,
                                          "rank": t.rank, "probability": t.probability}})
    source = _source(session, result)
    return (panels.target_info(result, t, source),
            views.update(panels.target_views(result, t, lens, source), current(session, result)))


def open_bundle_event(ctx, session: Session, file) -> tuple:
    """Open a saved bundle as this session's analysis (no model needed): (status, *model
    outputs)."""
    from reports.bundle_read import open_bundle, read_continuations

    path = getattr(file, "name", None) or (file.get("path") if isinstance(file, dict) else file)
    if not path:
        raise UserError("Choose a bundle (.zip) to open.")
    analysis = open_bundle(path, session.folder())
    session.set_analysis(analysis)
    # its continuations were saved with it: none is asked of a model
    session.continuations, session.continuations_for = read_continuations(path), session.analysis_id
    session.record("open bundle", models=[r.name for r in analysis.results],
                   prompts=list(analysis.prompts), settings={"bundle": analysis.settings["bundle"]})
    r = analysis.results[0]
    status = (f"Opened **{analysis.settings['bundle']}**: {', '.join(x.name for x in analysis.results)}"
              f" on {panels._quote(analysis.prompts[0] if analysis.prompts else '')}, "
              f"{r.trace.n_tokens} tokens.")
    return (status, *model_event(ctx, session, None))


def tab_open_event(ctx, session: Session, model: str | None) -> tuple:
    """The tab was opened: redraw it when the session holds a newer analysis than the one on
    screen (e.g. the Diffusion tab's "Analyze this step"); otherwise change nothing."""
    session = session if isinstance(session, Session) else Session()
    if session.analysis is None or getattr(session, "layer_shown", None) == session.analysis_id:
        return tuple(gr.skip() for _ in range(12))
    return model_event(ctx, session, None)


# ---------------------------------------------------------------------------- layout


def _layout() -> SimpleNamespace:
    """The components, top to bottom (no events)."""
    gr.Markdown("Pick an analysed model, then a head: click it in the explorer's model view, in a "
                "head map, in the cluster scatter or in the role table, or type its layer and "
                "head. Everything here is drawn from the stored analysis: switching never "
                "re-runs the model.", elem_id="layer-help")
    banner = gr.Markdown(panels.banner(None), elem_id="layer-source")
    with gr.Row(equal_height=True):
        # allow_custom_value: API clients may name the model before the page filled the choices;
        # the event functions check it against the session's analysis themselves
        model = gr.Dropdown(choices=[], value=None, label="Model (among the analysed ones)",
                            elem_id="layer-model", interactive=True, scale=3,
                            allow_custom_value=True)
        layer = gr.Number(value=1, precision=0, label="Layer", elem_id="layer-box", scale=1,
                          min_width=120)
        head = gr.Number(value=0, precision=0, label="Head", elem_id="head-box", scale=1,
                         min_width=120)
    error = gr.Markdown("", elem_id="layer-error")
    info = gr.Markdown("", elem_id="head-info")
    explorer = explorer_mod.build()
    maps = views.build("head-maps", value=views.empty("Run an analysis first."))
    roles = gr.Dataframe(value=pd.DataFrame(columns=list(panels.ROLE_COLUMNS.values())),
                         label="Head role scores (role: the largest score if >= 0.4, else mixed); "
                               "click a row to select its head", elem_id="role-table",
                         interactive=False, max_height=360)
    gr.Markdown("### Prediction: attribution and logit lens", elem_id="prediction-heading")
    with gr.Row(equal_height=True):
        target = gr.Dropdown(choices=[], value=None, allow_custom_value=True, scale=2,
                             label="Target token", elem_id="target-token", interactive=False)
        contrast = gr.Dropdown(choices=[""], value="", allow_custom_value=True, scale=2,
                               label="Contrast token (optional: logit difference)",
                               elem_id="contrast-token", interactive=False)
        method = gr.Radio(list(TARGET_METHODS), value=next(iter(TARGET_METHODS)), scale=2,
                          label="Head support", elem_id="target-method")
        explain = gr.Button(EXPLAIN, variant="primary", elem_id="target-btn", scale=1)
    target_info = gr.Markdown("", elem_id="target-info")
    prediction = views.build("prediction-views", value=views.empty("Run an analysis first."))
    gif = gr.Image(label="Layer transition (attention averaged over heads; hidden states in a "
                         "shared 2-D PCA)", elem_id="layer-gif", type="filepath", interactive=False,
                   buttons=["download", "fullscreen"], show_label=False)
    with gr.Accordion("Open a saved bundle (browse it without any model)", open=False,
                      elem_id="bundle-open"):
        bundle_file = gr.File(label="Bundle (.zip from 'Build ZIP bundle' or analyze --out)",
                              file_types=[".zip"], elem_id="bundle-file", type="filepath")
        bundle_status = gr.Markdown("", elem_id="bundle-status")
    return SimpleNamespace(banner=banner, model=model, layer=layer, head=head, error=error,
                           info=info, explorer=explorer, maps=maps, roles=roles, target=target,
                           contrast=contrast, method=method, explain=explain,
                           target_info=target_info, prediction=prediction, gif=gif,
                           bundle_file=bundle_file, bundle_status=bundle_status)


def build(ctx) -> LayerTab:
    c = _layout()
    model, layer, head, explorer, gif = c.model, c.layer, c.head, c.explorer, c.gif
    model_outputs = [model, c.banner, layer, head, c.error, c.info, c.maps, c.roles, c.target,
                     c.contrast, c.target_info, c.prediction]
    pick_outputs = [layer, head, c.error, c.info, explorer.html, c.maps, c.prediction]
    handlers = _handlers(ctx, c.explorer.html.move_resource_to_block_cache)
    opened = _wire(ctx, c, model_outputs, pick_outputs, handlers)
    tab = LayerTab(model, layer, head, explorer, model_outputs, gif, handlers["shown"],
                   handlers["explorer"], handlers["gif"])
    tab.extra.update(vars(c))
    tab.extra["bundle_opened"] = opened
    return tab


def _handlers(ctx, serve) -> dict:
    """The event functions, wrapped for the page (errors users cause become gr.Error);
    `serve(path)`: a file of the session folder as the page may fetch it (Gradio's cache)."""

    @friendly_errors
    def on_model(session, model_value):
        return model_event(ctx, session, model_value)

    @friendly_errors
    def on_shown(session):
        return model_event(ctx, session, None)

    @friendly_errors
    def on_explorer(session, model_value):
        return explorer_event(ctx, session, model_value, serve)

    @friendly_errors
    def on_gif(session, model_value):
        return gif_event(ctx, session, model_value)

    @friendly_errors
    def on_boxes(session, model_value, layer_value, head_value):
        return boxes_event(ctx, session, model_value, layer_value, head_value)

    @friendly_errors
    def on_left(session, model_value, layer_value, head_value):
        return boxes_event(ctx, session, model_value, layer_value, head_value, left=True)

    @friendly_errors
    def on_pick(session, model_value, evt: gr.SelectData):
        layer_value, head_value = explorer_mod.selected(evt)
        return pick_event(ctx, session, model_value, layer_value, head_value)

    @friendly_errors
    def on_row(session, model_value, evt: gr.SelectData):
        row = getattr(evt, "row_value", None) or []
        if len(row) < 2:
            raise UserError("Click a row of the role table to select its head.")
        return pick_event(ctx, session, model_value, int(row[0]), int(row[1]))

    @friendly_errors
    def on_target(session, model_value, target_value, contrast_value, method_value):
        return target_event(ctx, session, model_value, target_value, contrast_value, method_value)

    @friendly_errors
    def on_bundle(session, file):
        return open_bundle_event(ctx, session, file)

    return {"model": on_model, "shown": on_shown, "explorer": on_explorer, "gif": on_gif,
            "boxes": on_boxes, "left": on_left, "pick": on_pick, "row": on_row,
            "target": on_target, "bundle": on_bundle}


def _wire(ctx, c: SimpleNamespace, model_outputs: list, pick_outputs: list, h: dict):
    """Every event of the tab; returns the bundle-opening event (the Overall tab follows it)."""
    state, model, explorer = ctx.state, c.model, c.explorer
    views_after = (state, model, explorer, c.gif, h["explorer"], h["gif"])
    layer_view = dict(concurrency_id="layer-view", concurrency_limit=4)
    private = dict(api_visibility="private", show_progress="hidden", **layer_view)
    changed = model.input(h["model"], [state, model], model_outputs, api_name="layer_model",
                          api_visibility="undocumented", **layer_view)
    _chain_views(changed, *views_after)
    sel = [state, model, c.layer, c.head]
    c.layer.submit(h["boxes"], sel, pick_outputs, api_name="layer_select",
                   api_visibility="undocumented", show_progress="hidden", **layer_view)
    c.head.submit(h["boxes"], sel, pick_outputs, **private)
    for event in (c.layer.blur, c.head.blur):
        event(h["left"], sel, pick_outputs, **private)
    # every selection arrives, in order (explorer.Explorer.select: trigger_mode "multiple")
    explorer.select(h["pick"], [state, model], pick_outputs, show_progress="hidden",
                    api_visibility="private")
    for component in (c.maps, c.prediction):
        component.select(h["pick"], [state, model], pick_outputs, trigger_mode="multiple",
                         show_progress="hidden", api_visibility="private")
    c.roles.select(h["row"], [state, model], pick_outputs, **private)
    # the button says it is busy (and takes no second click) until the answer is in
    after = dict(api_visibility="private", show_progress="hidden", queue=False)
    busy = c.explain.click(lambda: gr.Button(EXPLAINING, interactive=False), None, c.explain,
                           **after)
    busy.then(h["target"], [state, model, c.target, c.contrast, c.method],
              [c.target_info, c.prediction], api_name="layer_target",
              api_visibility="undocumented", concurrency_id=limits.MODEL_CONCURRENCY_ID,
              concurrency_limit=1, show_progress="minimal").then(
        lambda: gr.Button(EXPLAIN, interactive=True), None, c.explain, **after)
    opened = c.bundle_file.upload(h["bundle"], [state, c.bundle_file],
                                  [c.bundle_status, *model_outputs], api_name="layer_open_bundle",
                                  api_visibility="undocumented", concurrency_id="bundle-open",
                                  concurrency_limit=2)
    _chain_views(opened, *views_after)
    return opened


def _chain_views(event, state, model, explorer, gif, on_explorer, on_gif) -> None:
    """After the tab's panels: the explorer's data, then the GIF (both private)."""
    shown = event.success(on_explorer, [state, model], [explorer.html], api_visibility="private",
                          concurrency_id="explorer", show_progress="hidden")
    shown.then(on_gif, [state, model], [gif], api_visibility="private", concurrency_id="gif",
               show_progress="minimal")


def wire_analysis(ctx, analyzed, tab: LayerTab) -> None:
    """After each analysis (an event or a list of them): show its first model here, then the
    explorer's data and the GIF."""
    events = analyzed if isinstance(analyzed, list | tuple) else [analyzed]
    for event in events:
        shown = event.success(tab.on_shown, [ctx.state], tab.model_outputs,
                              api_visibility="private", concurrency_id="layer-view",
                              concurrency_limit=4, show_progress="hidden")
        _chain_views(shown, ctx.state, tab.model, tab.explorer, tab.gif, tab.on_explorer,
                     tab.on_gif)


def wire_tab_open(ctx, tab_component, tab: LayerTab) -> None:
    """Opening the tab redraws it when the session's analysis is newer than what it shows (the
    Diffusion tab's "Analyze this step", a bundle opened elsewhere); no-op otherwise."""

    @friendly_errors
    def on_open(session, model_value):
        return tab_open_event(ctx, session, model_value)

    opened = tab_component.select(on_open, [ctx.state, tab.model], tab.model_outputs,
                                  api_visibility="private", concurrency_id="layer-view",
                                  concurrency_limit=4, show_progress="hidden")
    _chain_views(opened, ctx.state, tab.model, tab.explorer, tab.gif, tab.on_explorer, tab.on_gif)
