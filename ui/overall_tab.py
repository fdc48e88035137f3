"""Overall tab: choose models and a prompt, analyse, see layer metrics and predictions, download.

Thin: `analysis.run.analyze` does the work, `reports.figures` draws, `reports.bundle` writes the
ZIP, `ui.overall_format` turns results into the components' values. The event functions below
take the app `Context` and the session first; `build` wires them through small closures, and
tests call them directly.
"""

from __future__ import annotations

import functools
import logging
import time
from dataclasses import dataclass
from types import SimpleNamespace

import gradio as gr
import pandas as pd

from models.common import UserError, file_safe
from ui import dataset_panel, limits
from ui.inputs import check_prompt, chosen_models  # noqa: F401 - tests call them here
from ui.overall_format import (
    TABLE_COLUMNS,
    attribution_highlights,
    metric_header,
    metrics_table,
    model_header,
    notices_markdown,
    prediction_label,
    prediction_text,
    result_header,
    session_log_table,
)
from ui.state import Session, friendly_errors, safe_text

log = logging.getLogger(__name__)

TOP_K = 5

# The prompt the page opens with: long enough (16 tokens for tiny-gpt2) that the rank metrics
# are not all capped by a handful of tokens and TwoNN has points to fit (flagged below 100).
DEFAULT_PROMPT = "mia and leo went to the park. mia saw a dog. the dog says"

# (prompt, models it is meant for); only examples whose models are offered are shown
EXAMPLES = [
    ("the capital of japan is [MASK].", ["tiny-bert"]),
    ("the capital of japan is", ["tiny-gpt2", "tiny-llama"]),
    ("red ball moon tree red ball moon tree", ["tiny-gpt2", "tiny-llama"]),  # induction
    ("anna had a red ball. tom wanted the ball. anna gave the ball to", ["tiny-gpt2", "tiny-llama"]),
    ("mia and leo went to the park. mia saw a dog. the dog says", ["tiny-gpt2"]),
    ("the opposite of hot is [MASK].", ["tiny-bert"]),
    ("the capital of france is", ["gpt2"]),
    ("the capital of france is [MASK].", ["bert-base-uncased"]),
]


def slot_names(i: int) -> list[str]:
    """elem_ids of the outputs of model slot i (one slot per analysed model)."""
    return [f"slot-{i}", f"model-header-{i}", f"predictions-{i}", f"continuation-{i}",
            f"attribution-{i}", f"norm-heatmap-{i}", f"correlation-{i}"]


def output_names(n_slots: int) -> list[str]:
    """The analyze event's outputs in order (elem_ids; 'state' for the session state)."""
    names = ["state", "notices", "metric-curves", "metrics-table", "download", "session-log"]
    for i in range(n_slots):
        names += slot_names(i)
    return names + ["result-header"]


@dataclass
class OverallTab:
    prompt: gr.Textbox
    models: gr.Dropdown
    custom_model: gr.Textbox | None
    analyze_btn: gr.Button
    bundle_btn: gr.Button
    download: gr.File
    outputs: list
    analyzed: list  # the analyze events (button, Enter) the Layer tab chains onto


# ---------------------------------------------------------------------------- events


HEAD_METHODS = {"gradient (first-order, one backward pass)": "gradient",
                "ablation (exact, one forward pass per head)": "ablation"}


def analyze_event(ctx, session: Session, models, custom, prompt, chat_template=False,
                  head_method="gradient", progress=None) -> tuple:
    """Run the analysis and return every output of the tab (see `output_names`).

    `chat_template`: the prompt goes into each chat model's template for everything analysed;
    `head_method`: per-head attribution by "gradient" or exact "ablation" (either label of
    HEAD_METHODS or its value)."""
    from analysis.run import analyze
    from reports.bundle import analysis_log_entry

    session = session if isinstance(session, Session) else Session()
    t0 = time.perf_counter()
    try:
        prompt = check_prompt(prompt)
        names = chosen_models(ctx, models, custom)

        def report(frac: float, desc: str) -> None:
            if progress is not None:
                progress(frac, desc=desc)

        # (a fill-mask model without a mask token is analysed anyway: its trace carries the notice)
        extra = [f"**{name}** predicts the next token and reads '[MASK]' as plain text."
                 for name in names if "[MASK]" in prompt and _task_of(name) == "causal"]
        method = HEAD_METHODS.get(head_method, head_method) or "gradient"
        if method not in HEAD_METHODS.values():
            raise UserError(f"Unknown head attribution method {head_method!r}; choose "
                            "gradient or ablation.")
        report(0.0, "loading models")
        analysis = analyze(names, [prompt], load=ctx.load, progress=report, top_k=TOP_K,
                           max_tokens=ctx.config.max_prompt_tokens, seed=0,
                           chat_template=bool(chat_template), ablation=method == "ablation")
    except UserError as exc:
        session.record("analyze (refused)", models=list(models or []) if not isinstance(models, str)
                       else [models], prompts=[safe_text((prompt or "")[:200])],
                       error=safe_text(str(exc)))
        raise
    session.set_analysis(analysis)
    report(1.0, "drawing figures")
    out = show_event(ctx, session, extra)
    seconds = time.perf_counter() - t0
    entry = analysis_log_entry(analysis)
    entry["seconds"] = round(seconds, 2)
    session.add_entry(entry)
    log.info("analysis of %s took %.2f s (server side, figures included)", names, seconds)
    return _with_log(out, session)


def continuation_event(ctx, session: Session) -> tuple:
    """After an analysis is shown: the causal models' greedy continuations of the same ids (a
    generation, one forward pass per new token), written into their prediction panels and a
    session-log entry of their own. Returns (panel text per slot..., session log)."""
    finish_continuations(ctx, session)
    analysis = session.analysis
    results = analysis.results if analysis is not None else []
    texts = [prediction_text(results[i], session.continuations.get(results[i].name))
             if i < len(results) else "" for i in range(ctx.config.max_models_per_analysis)]
    return (*texts, session_log_table(session))


def finish_continuations(ctx, session: Session) -> None:
    """The continuations of the session's analysis, asked for once (idempotent): kept beside
    the analysis in the session (the analysis itself is finished and never written to)."""
    from analysis.run import continuation_of
    from reports.bundle import continuation_log_entry

    analysis = session.analysis
    if analysis is None or session.continuations_for == session.analysis_id:
        return
    analysis_id, t0 = session.analysis_id, time.perf_counter()
    texts = {r.name: continuation_of(ctx.load(r.name), r) for r in analysis.results}
    if session.analysis_id != analysis_id:  # a newer analysis arrived meanwhile
        return
    session.continuations, session.continuations_for = texts, analysis_id
    if any(t is not None for t in texts.values()):
        session.add_entry(continuation_log_entry(analysis, texts,
                                                 round(time.perf_counter() - t0, 2)))


def show_event(ctx, session: Session, extra: list[str] | None = None) -> tuple:
    """Every output of the tab (see `output_names`) drawn from the session's current Analysis,
    e.g. after the Diffusion tab's "Analyze this step" replaced it."""
    from reports import figures

    analysis = session.require_analysis()
    n_slots = ctx.config.max_models_per_analysis
    out = [session, notices_markdown(analysis, extra or []),
           session.plot(("metric-curves",), lambda: figures.layer_metric_curves(analysis)),
           metrics_table(analysis), gr.update(value=None, visible=False)]
    slots = []
    for i in range(n_slots):
        if i < len(analysis.results):
            r = analysis.results[i]
            pending = (r.trace.task == "causal"
                       and session.continuations_for != session.analysis_id)
            slots += [gr.Column(visible=True), model_header(r), prediction_label(r),
                      prediction_text(r, session.continuations.get(r.name), pending),
                      attribution_highlights(r),
                      session.plot(("norm-heatmap", r.name),
                                   functools.partial(figures.normalised_metric_heatmap, r)),
                      session.plot(("correlation", r.name),
                                   functools.partial(figures.metric_correlation_heatmap, r))]
        else:
            slots += [gr.Column(visible=False), "", None, "", [], None, None]
    out.append(session_log_table(session))
    return tuple(out + slots + [result_header(analysis)])


def _with_log(out: tuple, session: Session) -> tuple:
    """`out` with the session-log table (output 5) redrawn after the newest log entry."""
    return (*out[:5], session_log_table(session), *out[6:])


def _task_of(name: str) -> str | None:
    from models.registry import resolve

    try:
        return resolve(name, allow_custom=True).task
    except UserError:
        return None


def bundle_event(ctx, session: Session) -> tuple:
    """Write (once per analysis) and show this session's ZIP bundle: (file update, state, log)."""
    from reports.bundle import write_bundle

    session = session if isinstance(session, Session) else Session()
    analysis = session.require_analysis()
    finish_continuations(ctx, session)  # the bundle has the whole analysis, continuation too
    if session.bundle_path is None or session.bundle_for != session.analysis_id \
            or not session.bundle_path.is_file():
        t0 = time.perf_counter()
        stamp = analysis.created.replace(":", "").replace("-", "").split("+")[0] or "analysis"
        names = "_".join(file_safe(r.name) for r in analysis.results)[:60]
        target = session.folder() / f"dashboard-{names}-{stamp}.zip"
        entry = session.record("download bundle", models=[r.name for r in analysis.results],
                               prompts=list(analysis.prompts))
        try:
            path = write_bundle(analysis, target, session_log=list(session.log),
                                continuations=session.continuations)
        except Exception as exc:  # the log must not show a bundle that was never written
            entry["error"] = f"bundle not written ({type(exc).__name__})"
            if isinstance(exc, FileNotFoundError) and not target.parent.is_dir():
                raise UserError("This session expired while its bundle was being built (its "
                                "files were removed); run the analysis again.") from None
            raise
        entry["seconds"] = round(time.perf_counter() - t0, 2)
        entry["result"] = path.name
        session.bundle_path, session.bundle_for = path, session.analysis_id
    if not session.owns(session.bundle_path):  # never hand out a file outside the session
        raise UserError("The bundle is not available; run the analysis again.")
    return (gr.update(value=str(session.bundle_path), visible=True), session,
            session_log_table(session))


# ---------------------------------------------------------------------------- layout


def example_rows(offered: list[str]) -> list[list]:
    rows = []
    for prompt, wanted in EXAMPLES:
        models = [m for m in wanted if m in offered]
        if models:
            rows.append([prompt, models])
    return rows


def _form(ctx) -> SimpleNamespace:
    """The prompt, model and settings column and the buttons column."""
    cfg = ctx.config
    default = [m for m in ("tiny-gpt2",) if m in ctx.models] or ctx.models[:1]
    f = SimpleNamespace(custom=None)
    with gr.Row(equal_height=False):
        with gr.Column(scale=3):
            f.prompt = gr.Textbox(label="Prompt", lines=2, max_lines=8, elem_id="prompt",
                                  placeholder="the capital of japan is   (use [MASK] for BERT)",
                                  value=DEFAULT_PROMPT)
            f.models = gr.Dropdown(choices=ctx.models, value=default, multiselect=True,
                                   label="Models", elem_id="models",
                                   info="fill-mask models (BERT) need [MASK] in the prompt; "
                                        "causal models (GPT-2, Llama) predict the next token",
                                   max_choices=cfg.max_models_per_analysis,
                                   allow_custom_value=True)  # a typed id gets a message
            if cfg.allow_custom_models:
                f.custom = gr.Textbox(label="Custom model (HuggingFace id or local folder)",
                                      placeholder="e.g. distilgpt2", elem_id="custom-model")
            rows = example_rows(ctx.models)
            if rows:
                gr.Examples(examples=rows, inputs=[f.prompt, f.models], label="Example prompts",
                            elem_id="examples", examples_per_page=8)
        with gr.Column(scale=1, min_width=260):
            f.analyze_btn = gr.Button("Analyze", variant="primary", elem_id="analyze-btn",
                                      size="lg")
            gr.Markdown("One forward pass per model (plus one backward pass for attribution). "
                        "Models load on first use.", elem_id="analyze-help")
            f.chat = gr.Checkbox(False, label="Chat template (chat models: the prompt is "
                                 "analysed inside the model's template)", elem_id="chat-template")
            f.head_method = gr.Radio(list(HEAD_METHODS.items()), value="gradient",
                                     label="Per-head support", elem_id="head-method")
            f.bundle_btn = gr.Button("Build ZIP bundle", elem_id="bundle-btn")
            f.download = gr.File(label="Download (ZIP: PDF report, CSV, NPY, PNG, session log)",
                                 elem_id="download", interactive=False, visible=False)
    return f


def _model_slot(i: int) -> list:
    """One analysed model's panels (hidden until used): [column, header, predictions,
    continuation, attribution, normalised heatmap, correlations]."""
    with gr.Column(visible=False, elem_id=f"slot-{i}") as slot:
        header = gr.Markdown("", elem_id=f"model-header-{i}", elem_classes=["model-header"])
        with gr.Row(equal_height=False):
            label = gr.Label(label="Top predictions", num_top_classes=TOP_K,
                             elem_id=f"predictions-{i}", scale=1)
            with gr.Column(scale=2):
                text = gr.Markdown("", elem_id=f"continuation-{i}")
                highlight = gr.HighlightedText(label="Token attribution (gradient × input)",
                                               elem_id=f"attribution-{i}", show_legend=True,
                                               combine_adjacent=False, show_inline_category=False)
        # one per row: side by side they would be shrunk below readable text
        norm = gr.Plot(label="Layer metrics, normalised", elem_id=f"norm-heatmap-{i}",
                       format="png", show_label=False)
        corr = gr.Plot(label="Metric correlations across layers", elem_id=f"correlation-{i}",
                       format="png", show_label=False)
    return [slot, header, label, text, highlight, norm, corr]


def _results(ctx, models) -> SimpleNamespace:
    """Everything below the form: what is shown, notices, curves, table, model slots, the
    dataset panel and the session log."""
    r = SimpleNamespace()
    r.head = gr.Markdown("Results appear here after **Analyze**.", elem_id="result-header")
    r.notices = gr.Markdown("", elem_id="notices")
    r.curves = gr.Plot(label="Layer metrics against relative depth", elem_id="metric-curves",
                       format="png", show_label=False)
    r.table = gr.Dataframe(value=pd.DataFrame(columns=["model", "layer",
                                                       *map(metric_header, TABLE_COLUMNS)]),
                           label="Layer metrics (layer 0 = embeddings; TwoNN with its 95% "
                                 "bootstrap interval)", elem_id="metrics-table",
                           column_widths=["10%", "5%"] + ["8.5%"] * len(TABLE_COLUMNS),
                           interactive=False, wrap=True, max_height=420)
    r.slots = [_model_slot(i) for i in range(ctx.config.max_models_per_analysis)]
    with gr.Accordion("Dataset mode: layer geometry over many texts", open=False,
                      elem_id="dataset-accordion"):
        dataset_panel.build(ctx, models)
    with gr.Accordion("Session log", open=False, elem_id="session-log-accordion"):
        r.session_log = gr.Dataframe(value=session_log_table(Session()), elem_id="session-log",
                                     interactive=False, wrap=True, show_label=False)
    return r


def build(ctx) -> OverallTab:
    f = _form(ctx)
    r = _results(ctx, f.models)
    slot_outputs = [c for slot in r.slots for c in slot]
    outputs = [ctx.state, r.notices, r.curves, r.table, f.download, r.session_log, *slot_outputs,
               r.head]
    analyzed = _wire(ctx, f, outputs, [slot[3] for slot in r.slots], r.session_log)
    return OverallTab(f.prompt, f.models, f.custom, f.analyze_btn, f.bundle_btn, f.download,
                      outputs, analyzed)


def _wire(ctx, f: SimpleNamespace, outputs: list, texts: list, session_log) -> list:
    """Analyze (button and Enter), the continuation after it, the bundle; returns the two
    analysis events."""
    custom = f.custom
    if custom is None:
        @friendly_errors
        def on_analyze(session, models, prompt, chat_value=False, method=None,
                       progress=gr.Progress()):
            return analyze_event(ctx, session, models, None, prompt, chat_value, method,
                                 progress=progress)
    else:
        @friendly_errors
        def on_analyze(session, models, custom_model, prompt, chat_value=False, method=None,
                       progress=gr.Progress()):
            return analyze_event(ctx, session, models, custom_model, prompt, chat_value, method,
                                 progress=progress)

    inputs = [ctx.state, f.models] + ([custom] if custom is not None else []) + [
        f.prompt, f.chat, f.head_method]

    def busy():  # shown at once; a click while a job runs waits its turn in the queue
        return gr.Button(value="Analyzing… (another click waits its turn)", variant="secondary")

    def idle():
        return gr.Button(value="Analyze", variant="primary")

    analyzed = []
    for trigger, kw in ((f.analyze_btn.click, dict(api_name="page_analyze",
                                                   api_visibility="undocumented")),
                        (f.prompt.submit, dict(api_visibility="private"))):
        started = trigger(busy, None, [f.analyze_btn], queue=False, api_visibility="private",
                          trigger_mode="multiple")
        done = started.then(on_analyze, inputs, outputs, concurrency_id=limits.MODEL_CONCURRENCY_ID,
                            concurrency_limit=1, **kw)
        done.then(idle, None, [f.analyze_btn], queue=False, api_visibility="private")
        analyzed.append(done)

    @friendly_errors
    def on_continue(session):
        return continuation_event(ctx, session)

    for event in analyzed:  # the analysis is on screen first; the continuation follows
        event.success(on_continue, [ctx.state], [*texts, session_log], api_visibility="private",
                      concurrency_id=limits.MODEL_CONCURRENCY_ID, concurrency_limit=1,
                      show_progress="minimal")

    @friendly_errors
    def on_bundle(session):
        return bundle_event(ctx, session)

    f.bundle_btn.click(on_bundle, [ctx.state], [f.download, ctx.state, session_log],
                       api_name="page_bundle", api_visibility="undocumented",
                       concurrency_id="bundle", concurrency_limit=2)
    return analyzed
