"""Diffusion tab: masked-diffusion generation step by step, next to autoregressive generation.

Layout and wiring only. One settings panel (prompt, models, the diffusion sampler's settings
with Fast-dLLM's KV cache and early stopping, the re-mask mode, and the autoregressive side's
own settings) feeds three views:

- **Run**: one diffusion generation: a step slider over its trace, a positions x steps heatmap,
  the GIF / HTML viewer / ZIP exports;
- **Side by side**: the same prompt through an autoregressive model too, a metrics table, bar
  charts and a GIF of both writing on one clock; "compare on a prompt set" with accuracy,
  agreement with the uncached answer and quality measures;
- **Step by step**: the stepper (forward pass, reprocess, choose, apply, rewind, finish) and
  "Analyze this step".

The work is done by ``ui.diffusion_runner`` (no UI) through the events of
``ui.diffusion_events``. Every event is ``api_visibility="undocumented"``: callable by API
clients (the tests), not in the API docs (the app's public endpoints are in ui.api).
"""

from __future__ import annotations

from dataclasses import dataclass

import gradio as gr

from models.kv_cache import CACHE_MODES
from models.sampling import SAMPLINGS, SCHEDULES
from ui import diffusion_events as ev
from ui import limits
from ui.diffusion_html import CSS, STRATEGY_CHOICES
from ui.diffusion_runner import (
    NO_MODEL,
    DiffusionRunner,
    causal_models,
    diffusion_models,
    length_limit,
)
from ui.state import friendly_errors

HIDDEN = "undocumented"  # UI events: callable by clients, not in the API docs
MODEL_KW = dict(concurrency_id=limits.MODEL_CONCURRENCY_ID, concurrency_limit=1,
                api_visibility=HIDDEN)
VIEW_KW = dict(concurrency_id="diffusion-view", concurrency_limit=4, api_visibility=HIDDEN)
INSTANT_KW = dict(queue=False, api_visibility="private", show_progress="hidden")
HELP = ("### Masked diffusion vs autoregressive generation\nA masked diffusion model starts from "
        "a fully masked answer and commits tokens over a few steps, each step one forward pass "
        "with bidirectional attention; an autoregressive model writes one token per forward "
        "pass, left to right. **Run** records one diffusion generation, **Side by side** adds "
        "an autoregressive model, **Step by step** lets you take the sampler's decisions "
        "yourself. The **KV cache** (Fast-dLLM) reuses the keys and values outside the current "
        "block inside it: faster, and approximate; *compare on a prompt set* shows what it "
        "costs (agreement with the uncached one-token-per-step answer). Details explains all.")


@dataclass
class DiffusionTab:
    state: gr.State
    settings: list  # the settings panel's inputs, in ui.diffusion_runner.diffusion_settings order
    ar_settings: list  # model, length, temperature, top-p
    generate_btn: gr.Button
    run_outputs: list
    analyzed: list  # the "Analyze this step" events (the Layer Analysis tab chains onto them)

    @property
    def ar_model(self) -> gr.Dropdown:
        return self.ar_settings[0]


def _settings_panel(ctx, diff_names: list[str], ar_names: list[str]) -> tuple[list, list]:
    """The shared settings: (diffusion settings in diffusion_settings order, AR settings)."""
    first = diff_names[0] if diff_names else None
    with gr.Group(elem_id="diff-settings"):
        with gr.Row(elem_id="diff-settings-row-1"):
            prompt = gr.Textbox(label="Prompt", value="the capital of japan is", lines=1, scale=3,
                                elem_id="diff-prompt")
            model = gr.Dropdown(choices=diff_names, value=first, label="Diffusion model",
                                elem_id="diff-model", scale=1,
                                info="diffusion models first, then fill-mask (BERT) models")
            ar_model = gr.Dropdown(choices=ar_names, value=ar_names[0] if ar_names else None,
                                   label="Autoregressive model", elem_id="diff-ar-model", scale=1)
        with gr.Row(elem_id="diff-settings-row-2"):
            n = length_limit(ctx, first)
            length = _number("Length", 8, "diff-length", f"canvas positions (at most {n})",
                             minimum=1, maximum=n, precision=0)
            steps = _number("Steps", 8, "diff-steps", "0 = length", minimum=0, precision=0)
            block = _number("Block length", 0, "diff-block-length", "0 = one block", minimum=0,
                            precision=0)
            strategy = gr.Dropdown(choices=STRATEGY_CHOICES, value="low_confidence",
                                   label="Strategy", info="which masked positions commit first",
                                   elem_id="diff-strategy", scale=3)
            threshold = _number("Threshold", 0, "diff-threshold", "0 = off", minimum=0, maximum=1)
            temperature = _number("Temperature", 0, "diff-temperature", "0 = greedy", minimum=0)
            seed = _number("Seed", 0, "diff-seed", "for sampling", minimum=0, maximum=2**32 - 1,
                           precision=0)
        with gr.Row(elem_id="diff-settings-row-3"):
            cache = gr.Radio(choices=list(CACHE_MODES), value="none", label="KV cache (Fast-dLLM)",
                             info="rebuilt per block (needs blocks), approximate",
                             elem_id="diff-cache", scale=3, min_width=250)
            early_stop = gr.Checkbox(value=False, label="Early stop",
                                     info="end once the content is decided", scale=2,
                                     min_width=150, elem_id="diff-early-stop")
            top_k = _number("Top-k", 0, "diff-top-k", "0 = all", minimum=0, precision=0)
            top_p = _number("Top-p", 1, "diff-top-p", "1 = all", minimum=0, maximum=1)
            mode = gr.Dropdown(choices=[("commit (LLaDA)", "commit"), ("re-mask schedule", "remask")],
                               value="commit", label="Mode", elem_id="diff-mode", scale=2,
                               info="re-mask: tokens may change (RoBERTa diffusion)")
            schedule = gr.Dropdown(choices=list(SCHEDULES), value="linear", label="Schedule",
                                   info="re-mask mode", elem_id="diff-schedule", scale=1)
            sampling = gr.Dropdown(choices=list(SAMPLINGS), value="greedy", label="Sampling",
                                   info="re-mask mode", elem_id="diff-sampling", scale=1)
        with gr.Row(elem_id="diff-settings-row-4"):
            ar_length = _number("Autoregressive: max length", 0, "diff-ar-length",
                                "0 = the diffusion length; it stops at its end-of-sequence token",
                                minimum=0, maximum=int(ctx.config.max_generation_length),
                                precision=0)
            ar_temperature = _number("Autoregressive: temperature", 0, "diff-ar-temperature",
                                     "0 = greedy", minimum=0)
            ar_top_p = _number("Autoregressive: top-p", 1, "diff-ar-top-p", "1 = all", minimum=0,
                               maximum=1)
    settings = [model, prompt, length, steps, block, strategy, threshold, temperature, seed,
                top_k, top_p, cache, early_stop, mode, schedule, sampling]
    return settings, [ar_model, ar_length, ar_temperature, ar_top_p]


def _number(label: str, value, elem_id: str, info: str, **kw) -> gr.Number:
    return gr.Number(value=value, label=label, info=info, elem_id=elem_id, min_width=100, **kw)


def _run_view(has_models: bool) -> tuple[gr.Button, list]:
    with gr.Row(elem_id="diff-run-row"):
        btn = gr.Button("Generate", variant="primary", elem_id="diff-generate-btn", scale=0,
                        min_width=160, interactive=has_models)
        summary = gr.Markdown("", elem_id="diff-summary")
    text = gr.Textbox(label="Generated text", interactive=False, elem_id="diff-text")
    slider = gr.Slider(minimum=0, maximum=1, value=0, step=1, interactive=False, label="Step",
                       elem_id="diff-step")
    caption = gr.Markdown("", elem_id="diff-step-info")
    tokens = gr.HTML("", elem_id="diff-tokens")
    heatmap = gr.Plot(label="Positions x steps", elem_id="diff-heatmap", format="png",
                      show_label=False)
    with gr.Row(equal_height=False, elem_id="diff-export-row"):
        # the GIF carries its own title: a floating label would cover it
        gif = gr.Image(label="Steps (GIF)", type="filepath", interactive=False, elem_id="diff-gif",
                       buttons=["download", "fullscreen"], scale=3, show_label=False)
        files = gr.File(label="Downloads: HTML step viewer, ZIP (trace.json, GIF, PNG frames, "
                              "viewer)", file_count="multiple", interactive=False,
                        elem_id="diff-files", scale=1)
    with gr.Accordion("Step viewer (the exported HTML page)", open=True,
                      elem_id="diff-viewer-accordion"):
        viewer = gr.HTML("", elem_id="diff-viewer")
    return btn, [text, summary, slider, tokens, caption, heatmap, gif, viewer, files]


def _pair_view(ctx, has_both: bool) -> dict:
    btn = gr.Button("Generate with both", variant="primary", elem_id="diff-pair-btn",
                    interactive=has_both)
    sides = []
    with gr.Row(equal_height=False, elem_id="diff-pair-row"):
        for key, title in (("diffusion", "Masked diffusion"), ("ar", "Autoregressive")):
            with gr.Column(elem_id=f"pair-{key}-column"):
                gr.Markdown(f"#### {title}", elem_id=f"pair-{key}-title")
                text = gr.Textbox(label="Generated text", interactive=False,
                                  elem_id=f"pair-{key}-text")
                info = gr.Markdown("", elem_id=f"pair-{key}-info")
                slider = gr.Slider(minimum=0, maximum=1, value=0, step=1, interactive=False,
                                   label="Step", elem_id=f"pair-{key}-step")
                tokens = gr.HTML("", elem_id=f"pair-{key}-tokens")
                sides.append((text, info, slider, tokens))
    table = gr.Dataframe(label="Metrics (one generation each; see Details for the definitions)",
                         elem_id="pair-metrics", interactive=False, wrap=True)
    bars = gr.Plot(label="Metrics", elem_id="pair-bars", format="png", show_label=False)
    with gr.Row(equal_height=False, elem_id="pair-export-row"):
        gif = gr.Image(label="Both writing, on one clock (GIF)", type="filepath",
                       interactive=False, elem_id="pair-gif", buttons=["download", "fullscreen"],
                       scale=3, show_label=False)
        files = gr.File(label="Downloads: the diffusion run's viewer and ZIP (with the "
                              "autoregressive trace and the side-by-side GIF)",
                        file_count="multiple", interactive=False, elem_id="pair-files", scale=1)
    return dict(btn=btn, sides=sides, outputs=[*sides[0], *sides[1], table, bars, gif, files])


def _compare_view(ctx, has_both: bool) -> dict:
    gr.Markdown("#### Compare on a prompt set\nRuns both models on every prompt (the settings "
                "above, not the prompt), scores whether the answer appears in the generated "
                "text, and checks every diffusion answer against the uncached one-token-per-step "
                "answer (what the KV cache, the threshold and early stopping cost). Default: the "
                "bundled capitals set (`models/data/capitals.tsv`, one `prompt<TAB>answer` per "
                "line).", elem_id="compare-help")
    causal = causal_models(ctx)
    with gr.Row(elem_id="compare-row"):
        upload = gr.File(label="Prompt file (optional; .txt/.tsv, prompt<TAB>answer)",
                         file_types=[".txt", ".tsv"], elem_id="compare-file", scale=2, height=120)
        with gr.Column(scale=1, elem_id="compare-quality"):
            fluency = gr.Dropdown(choices=[NO_MODEL, *causal], value=NO_MODEL,
                                  label="Fluency: perplexity under", elem_id="compare-fluency",
                                  info="a reference causal model")
            relevance = gr.Checkbox(value=False, label="Relevance (all-MiniLM-L6-v2)",
                                    elem_id="compare-relevance")
        btn = gr.Button("Compare on the prompt set", elem_id="compare-btn", scale=1,
                        interactive=has_both)
    note = gr.Markdown("", elem_id="compare-note")
    table = gr.Dataframe(label="Accuracy, speed, agreement and quality per paradigm",
                         elem_id="compare-table", interactive=False, wrap=True,
                         column_widths=["10%", "11%", "7%", "6%", "8%", "8%", "9%", "7%", "8%",
                                        "7%", "7%", "7%", "5%"])
    bars = gr.Plot(label="Accuracy and speed", elem_id="compare-bars", format="png",
                   show_label=False)
    with gr.Accordion("Every prompt", open=False, elem_id="compare-runs-accordion"):
        runs = gr.Dataframe(elem_id="compare-runs", interactive=False, wrap=True, max_height=420,
                            show_label=False)
    return dict(btn=btn, inputs=[upload, fluency, relevance], outputs=[table, runs, bars, note])


def _step_view(has_models: bool) -> dict:
    gr.Markdown("Uses the prompt, diffusion model, length, block length, seed and KV cache above. "
                "**Forward pass** runs the model once (with a KV cache, the first pass in a "
                "block refreshes it, the later ones reuse it); changing temperature, Gumbel "
                "noise or the top-k / top-p only reprocesses the stored logits. Choose tokens by "
                "hand in the list, auto-select more by a strategy, then **Apply**. **Rewind** "
                "restores an earlier step exactly.", elem_id="step-help")
    with gr.Row(elem_id="step-row-1"):
        init = gr.Button("Initialise", variant="primary", elem_id="step-init-btn",
                         interactive=has_models)
        forward = gr.Button("Forward pass", elem_id="step-forward-btn")
        auto_forward = gr.Checkbox(value=True, label="Forward pass after initialise and apply",
                                   elem_id="step-auto-forward")
        analyze = gr.Button("Analyze this step", elem_id="step-analyze-btn")
    analyze_info = gr.Markdown("", elem_id="step-analyze-info")
    with gr.Row(elem_id="step-row-2"):
        processing = [
            gr.Slider(0.05, 5, value=1.0, step=0.05, label="Temperature", info="softmax",
                      elem_id="step-temperature"),
            gr.Slider(0, 2, value=0, step=0.05, label="Gumbel noise", info="0 = off",
                      elem_id="step-gumbel"),
            gr.Slider(1, 30, value=8, step=1, label="Shown top-k", info="per position",
                      elem_id="step-show-k"),
            gr.Slider(0, 100, value=0, step=1, label="Selectable top-k", info="0 = all",
                      elem_id="step-top-k"),
            gr.Slider(0.01, 1, value=1.0, step=0.01, label="Top-p", info="selectable nucleus",
                      elem_id="step-top-p")]
    info = gr.Markdown("Press **Initialise** to start.", elem_id="step-info")
    seq = gr.HTML("", elem_id="step-sequence")
    cands = gr.HTML("", elem_id="step-candidates")
    with gr.Row(elem_id="step-row-3"):
        choices = gr.Dropdown(choices=[], value=[], multiselect=True, allow_custom_value=True,
                              interactive=False, scale=3, elem_id="step-choices",
                              label="Chosen tokens (position: token (probability))")
        with gr.Column(scale=2, elem_id="step-auto-column"):
            with gr.Row(elem_id="step-auto-row"):
                n_auto = gr.Number(value=1, precision=0, minimum=1, label="N positions",
                                   elem_id="step-n", min_width=90, scale=1)
                strategy = gr.Dropdown(choices=STRATEGY_CHOICES, value="low_confidence",
                                       label="Auto-select strategy", scale=3,
                                       elem_id="step-strategy")
            with gr.Row(elem_id="step-buttons-row"):
                auto = gr.Button("Auto-select N", elem_id="step-auto-btn")
                apply = gr.Button("Apply", variant="primary", elem_id="step-apply-btn")
                clear = gr.Button("Clear", elem_id="step-clear-btn")
                finish = gr.Button("Run to the end", elem_id="step-finish-btn")
    with gr.Row(elem_id="step-rewind-row"):
        rewind_to = gr.Slider(minimum=0, maximum=1, value=0, step=1, interactive=False,
                              label="Rewind to step", elem_id="step-rewind-to", scale=3)
        rewind = gr.Button("Rewind", elem_id="step-rewind-btn", scale=1)
    return dict(init=init, forward=forward, auto_forward=auto_forward, analyze=analyze,
                analyze_info=analyze_info, processing=processing, choices=choices, n=n_auto,
                strategy=strategy, auto=auto, apply=apply, clear=clear, finish=finish,
                rewind_to=rewind_to, rewind=rewind, outputs=[seq, cands, choices, info, rewind_to])


# ---------------------------------------------------------------------------- wiring


def _job(btn: gr.Button, label: str, running: str, fn, inputs: list, outputs: list,
         api_name: str, interactive: bool = True):
    """A click that runs a model job: the button says so and cannot be clicked again until
    the job ends (then, error or not, it comes back). The job event is returned."""
    shown = btn.click(lambda: ev.busy(running), None, btn, **INSTANT_KW)
    job = shown.then(fn, inputs, outputs, api_name=api_name, **MODEL_KW)
    job.then(lambda: ev.idle(label, interactive), None, btn, **INSTANT_KW)
    return job


def _wire_settings(ctx, settings: list) -> None:
    model, length = settings[0], settings[2]

    def on_model(name):
        return ev.model_changed_event(ctx, name)

    model.change(on_model, [model], [length], **INSTANT_KW)


def _wire_run(ctx, state, settings: list, btn: gr.Button, outputs: list, has: bool) -> None:
    @ev.returning_state
    @friendly_errors
    def on_generate(runner, session, *values):
        return ev.generate_event(ctx, session, runner, *values)

    _job(btn, "Generate", "Generating… (one job at a time)", on_generate,
         [state, ctx.state, *settings], [*outputs, state], "diffusion_generate", has)

    @friendly_errors
    def on_step(runner, step):
        return ev.run_step_event(ctx, runner, step)

    slider, tokens, caption = outputs[2], outputs[3], outputs[4]
    slider.change(on_step, [state, slider], [tokens, caption], api_name="diffusion_step",
                  trigger_mode="always_last", show_progress="hidden", **VIEW_KW)


def _wire_pair(ctx, state, settings: list, ar: list, pair: dict, has: bool) -> None:
    @ev.returning_state
    @friendly_errors
    def on_pair(runner, session, *values):
        return ev.pair_event(ctx, session, runner, *values)

    _job(pair["btn"], "Generate with both", "Generating with both…", on_pair,
         [state, ctx.state, *settings, *ar], [*pair["outputs"], state], "diffusion_side_by_side",
         has)
    for which, (_text, info, slider, tokens) in enumerate(pair["sides"]):
        def on_pair_step(runner, step, which=which):
            return friendly_errors(ev.pair_step_event)(ctx, runner, which, step)

        slider.change(on_pair_step, [state, slider], [tokens, info],
                      api_name=f"diffusion_pair_step_{'diffusion' if which == 0 else 'ar'}",
                      trigger_mode="always_last", show_progress="hidden", **VIEW_KW)


def _wire_compare(ctx, state, settings: list, ar: list, comp: dict, has: bool) -> None:
    @ev.returning_state
    @friendly_errors
    def on_compare(runner, session, *values, progress=gr.Progress()):
        return ev.compare_set_event(ctx, session, runner, *values, progress=progress)

    _job(comp["btn"], "Compare on the prompt set", "Comparing… (see the progress)", on_compare,
         [state, ctx.state, *settings, *ar, *comp["inputs"]], [*comp["outputs"], state],
         "diffusion_compare", has)


def _wire_step(ctx, state, settings: list, step: dict) -> list:
    """The stepper's events; returns the "Analyze this step" events."""
    model, prompt, length, _steps, block, *_rest = settings
    seed, cache = settings[8], settings[11]
    outputs, processing = step["outputs"], step["processing"]

    @ev.returning_state
    @friendly_errors
    def on_init(runner, *values):
        return ev.step_init_event(ctx, runner, *values)

    step["init"].click(on_init, [state, model, prompt, length, block, seed, cache, *processing,
                                 step["auto_forward"]], [*outputs, state], api_name="step_init",
                       **MODEL_KW)

    def stepping(fn, name: str | None, inputs: list, model_run: bool = False, **kw):
        @friendly_errors
        def on_event(runner, *values):
            return fn(ctx, runner, *values)

        on_event.__name__ = f"on_{name or 'step_reprocess'}"
        where = dict(MODEL_KW if model_run else VIEW_KW)
        if name is None:  # a second trigger of the same event: one endpoint is enough
            where["api_visibility"] = "private"
        return dict(fn=on_event, inputs=[state, *inputs], outputs=outputs, api_name=name,
                    **where, **kw)

    quiet = dict(trigger_mode="always_last", show_progress="hidden")
    step["forward"].click(**stepping(ev.step_forward_event, "step_forward", processing, True))
    for comp in processing:
        comp.change(**stepping(ev.step_reprocess_event, "step_reprocess"
                               if comp is processing[0] else None, processing, **quiet))
    step["choices"].input(**stepping(ev.step_select_event, "step_select", [step["choices"]],
                                     **quiet))
    step["auto"].click(**stepping(ev.step_auto_event, "step_auto",
                                  [step["choices"], step["n"], step["strategy"]]))
    step["clear"].click(**stepping(lambda c, r: ev.step_select_event(c, r, []), "step_clear", []))
    step["apply"].click(**stepping(ev.step_apply_event, "step_apply",
                                   [step["choices"], step["auto_forward"]], True))
    step["rewind"].click(**stepping(ev.step_rewind_event, "step_rewind", [step["rewind_to"]]))
    step["finish"].click(**stepping(ev.step_finish_event, "step_finish",
                                    [step["n"], step["strategy"]], True))

    @friendly_errors
    def on_analyze(runner, session):
        return ev.step_analyze_event(ctx, session, runner)

    return [step["analyze"].click(on_analyze, [state, ctx.state], [step["analyze_info"]],
                                  api_name="step_analyze", **MODEL_KW)]


def _wire_analysis(ctx, analyzed: list) -> None:
    """The Layer Analysis tab (built before this one) and the Overall tab redraw from the new
    analysis, exactly as after the Overall tab's Analyze."""
    if "layer" in ctx.tabs:
        from ui import layer_tab

        layer_tab.wire_analysis(ctx, analyzed, ctx.tabs["layer"])
    if "overall" in ctx.tabs:
        from ui import overall_tab

        for event in analyzed:
            event.success(friendly_errors(lambda s: overall_tab.show_event(ctx, s)), [ctx.state],
                          ctx.tabs["overall"].outputs, api_visibility="private",
                          concurrency_id="layer-view", concurrency_limit=4, show_progress="hidden")


def build(ctx) -> DiffusionTab:
    diff_names, ar_names = diffusion_models(ctx), causal_models(ctx)
    gr.HTML(f"<style>{CSS}</style>", elem_id="diffusion-css", padding=False)
    gr.Markdown(HELP, elem_id="diffusion-help")
    if not diff_names:
        gr.Markdown("**No diffusion or fill-mask model is offered**, so this tab cannot generate. "
                    "Start the dashboard with e.g. `--models tiny-bert,tiny-gpt2`.",
                    elem_id="diffusion-no-models")
    # dropped (with the stepper's logits) this long after an event last stored it, like the
    # session's analysis; the events that make or replace results return it to restart the clock
    state = gr.State(DiffusionRunner(), time_to_live=getattr(ctx.config, "session_ttl_s", None))
    settings, ar = _settings_panel(ctx, diff_names, ar_names)
    has, has_both = bool(diff_names), bool(diff_names and ar_names)
    with gr.Tabs(elem_id="diffusion-views"):
        with gr.Tab("Run", id="diff-run", elem_id="diff-run-tab"):
            generate_btn, run_outputs = _run_view(has)
        with gr.Tab("Side by side", id="diff-pair", elem_id="diff-pair-tab"):
            pair = _pair_view(ctx, has_both)
            comp = _compare_view(ctx, has_both)
        with gr.Tab("Step by step", id="diff-step", elem_id="diff-step-tab"):
            step = _step_view(has)
    _wire_settings(ctx, settings)
    _wire_run(ctx, state, settings, generate_btn, run_outputs, has)
    _wire_pair(ctx, state, settings, ar, pair, has_both)
    _wire_compare(ctx, state, settings, ar, comp, has_both)
    analyzed = _wire_step(ctx, state, settings, step)
    _wire_analysis(ctx, analyzed)
    return DiffusionTab(state, settings, ar, generate_btn, run_outputs, analyzed)
