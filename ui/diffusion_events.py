"""The Diffusion tab's events: each takes the app ``Context``, the session state and the
runner, and the components' values, asks the runner (ui.diffusion_runner) to do the work and
returns every output (HTML from ui.diffusion_html, figures from reports.figures, component
updates). ``ui.diffusion_tab`` lays the components out and wires these.
"""

from __future__ import annotations

import functools
import logging

import gradio as gr

from models.common import UserError
from models.interactive import Settings
from ui import diffusion_html as views
from ui.diffusion_runner import (
    DiffusionRunner,
    ar_settings,
    diffusion_settings,
    length_limit,
    step_label,
)
from ui.state import Session, encode_figure

log = logging.getLogger(__name__)

N_SETTINGS = 16  # the settings panel's inputs (see ui.diffusion_tab.SETTING_NAMES)
N_AR = 4  # the autoregressive side's: model, length, temperature, top-p


def _runner(value) -> DiffusionRunner:
    return value if isinstance(value, DiffusionRunner) else DiffusionRunner()


def _session(value) -> Session:
    return value if isinstance(value, Session) else Session()


def _slider(result) -> dict:
    n = len(result.trace)
    return gr.Slider(minimum=0, maximum=max(n, 1), value=n, step=1, interactive=n > 0,
                     label=f"Step (0 = all masked, {n} = done)")


# ---------------------------------------------------------------------------- settings panel


def model_changed_event(ctx, model) -> dict:
    """The length box's maximum follows the chosen model's context (and the server's limit)."""
    n = length_limit(ctx, model)
    return gr.Number(maximum=n, info=f"canvas positions (at most {n} for {model})"
                     if model else "canvas positions")


def busy(label: str):
    """The update that shows a job is running on its button (it cannot be clicked again)."""
    return gr.Button(value=label, interactive=False)


def idle(label: str, interactive: bool = True):
    return gr.Button(value=label, interactive=interactive)


# ---------------------------------------------------------------------------- Run view


def generate_event(ctx, session, runner, *values) -> tuple:
    """Run view: (text, summary, step slider, tokens HTML, caption, heatmap, GIF, viewer
    HTML, download files)."""
    from reports import figures
    from reports.diffusion_export import trace_html

    session, runner = _session(session), _runner(runner)
    s = diffusion_settings(ctx, *values[:N_SETTINGS])
    result, exports = runner.generate(ctx, session, s)
    heat = encode_figure(figures.decode_heatmap(result))
    tokens, caption = views.view_of(result, len(result.trace))
    return (result.text, views.result_summary(result, runner.run_label), _slider(result), tokens,
            caption, heat, str(exports.gif), views.iframe(trace_html(result)), exports.files())


def run_step_event(ctx, runner, step) -> tuple:
    """Run view slider moved: (tokens HTML, caption) from the stored trace (no model call)."""
    runner = _runner(runner)
    if runner.run is None:
        raise UserError("Generate first: there is no trace to step through.")
    return views.view_of(runner.run, step)


# ---------------------------------------------------------------------------- side by side


def pair_event(ctx, session, runner, *values) -> tuple:
    """Side by side: (diffusion text, summary, slider, tokens; AR text, summary, slider,
    tokens; metrics table, bar charts, side-by-side GIF, download files)."""
    from reports import figures

    session, runner = _session(session), _runner(runner)
    s = diffusion_settings(ctx, *values[:N_SETTINGS])
    ar = ar_settings(ctx, *values[N_SETTINGS:N_SETTINGS + N_AR], default_length=s.length)
    d, a, exports = runner.side_by_side(ctx, session, s, ar)
    bars = encode_figure(figures.metric_bars([d, a]))
    out = []
    for r, label in zip((d, a), runner.pair_labels, strict=True):
        tokens, caption = views.view_of(r, len(r.trace))
        out += [r.text, views.result_summary(r, label) + "\n\n" + caption, _slider(r), tokens]
    return (*out, views.metrics_table([d, a]), bars, str(exports.pair_gif), exports.files())


def pair_step_event(ctx, runner, which: int, step) -> tuple:
    """One side's slider moved: (tokens HTML, summary + caption)."""
    runner = _runner(runner)
    if runner.pair is None:
        raise UserError("Run the side-by-side generation first.")
    r = runner.pair[which]
    tokens, caption = views.view_of(r, step)
    return tokens, views.result_summary(r, runner.pair_labels[which]) + "\n\n" + caption


def compare_set_event(ctx, session, runner, *values, progress=None) -> tuple:
    """Compare on a prompt set: (summary table, per-prompt table, bar charts, note). The
    values: the settings panel (its prompt unused: the set brings its own), the AR side, the
    upload, the fluency model and whether to measure relevance."""
    from reports import figures

    session, runner = _session(session), _runner(runner)
    panel = list(values[:N_SETTINGS])
    panel[1] = panel[1] or "(prompt set)"
    s = diffusion_settings(ctx, *panel)
    ar = ar_settings(ctx, *values[N_SETTINGS:N_SETTINGS + N_AR], default_length=s.length)
    upload, fluency, relevance_on = values[N_SETTINGS + N_AR:N_SETTINGS + N_AR + 3]

    def report(k: int, total: int, text: str) -> None:
        if progress is not None:
            progress(k / total, desc=f"{k}/{total}: {text[:40]}")

    result = runner.compare_set(ctx, session, s, ar, upload, fluency, bool(relevance_on),
                                report)
    bars = encode_figure(figures.compare_bars(result))
    summary, runs = views.compare_tables(result)
    return summary, runs, bars, views.compare_note(result, runner.comparison_label)


# ---------------------------------------------------------------------------- step by step


def processing(temperature, gumbel, show_k, top_k, top_p) -> Settings:
    """The processing sliders as Settings (empty = the default; checked by Settings)."""
    def value(v, default):
        return default if v is None or v == "" else v

    top_k = value(top_k, 0)
    return Settings(temperature=value(temperature, 1.0), gumbel=value(gumbel, 0.0),
                    top_k=None if top_k == 0 else top_k, top_p=value(top_p, 1.0),
                    show_k=value(show_k, 8)).checked()


def render_stepper(runner: DiffusionRunner, note: str = "") -> tuple:
    """(sequence HTML, candidates HTML, choices dropdown, info, rewind slider)."""
    stepper = runner.stepper
    choices = views.step_choices(stepper)
    value = [views.choice_value(p, t) for p, t in sorted(stepper.selection.items())]
    return (views.sequence_html(stepper), views.candidates_html(stepper),
            gr.Dropdown(choices=choices, value=value, interactive=bool(choices), multiselect=True,
                        allow_custom_value=True),
            views.step_info(stepper, note, runner.stepper_label),
            gr.Slider(minimum=0, maximum=max(stepper.step, 1), value=stepper.step, step=1,
                      interactive=stepper.step > 0, label=f"Rewind to step (0..{stepper.step})"))


def recoverable(fn):
    """A step-mode event whose user errors leave the controls usable: the message goes into
    the step information (and a toast) with the state redrawn, instead of an error that
    covers the token picker and the rewind slider."""

    @functools.wraps(fn)
    def wrapper(ctx, runner, *args, **kwargs):
        runner = _runner(runner)
        try:
            return fn(ctx, runner, *args, **kwargs)
        except UserError as exc:
            if runner.stepper is None:
                raise
            gr.Warning(str(exc), title="Cannot do that")
            return render_stepper(runner, f"⚠️ **{exc}**")

    return wrapper


def step_init_event(ctx, runner, model, prompt, length, block_length, seed, cache, temperature,
                    gumbel, show_k, top_k, top_p, auto_forward) -> tuple:
    runner = _runner(runner)
    s = diffusion_settings(ctx, model, prompt, length, 0, block_length, "low_confidence", 0, 0,
                           seed, cache=cache)
    runner.start_stepper(ctx, s, processing(temperature, gumbel, show_k, top_k, top_p),
                         bool(auto_forward))
    return render_stepper(runner)


@recoverable
def step_forward_event(ctx, runner, temperature, gumbel, show_k, top_k, top_p) -> tuple:
    with runner.lock:
        stepper = runner.require_stepper()
        stepper.settings = processing(temperature, gumbel, show_k, top_k, top_p)
        stepper.forward()
    return render_stepper(runner)


@recoverable
def step_reprocess_event(ctx, runner, temperature, gumbel, show_k, top_k, top_p) -> tuple:
    """Processing settings changed: the stored logits again, no model call. Before a forward
    pass it only keeps the settings."""
    settings = processing(temperature, gumbel, show_k, top_k, top_p)
    with runner.lock:
        stepper = runner.stepper
        if stepper is None:
            return (gr.skip(),) * 5
        if stepper.logits is None:
            stepper.settings = settings
            return render_stepper(runner)
        keep = dict(stepper.selection)
        stepper.process(settings)
        stepper.selection = {}
        for p, t in keep.items():  # keep the choices that are still selectable
            try:
                stepper.select(p, t)
            except UserError:
                pass
    return render_stepper(runner)


@recoverable
def step_select_event(ctx, runner, choices) -> tuple:
    """The hand-made choice changed (dropdown): the selection follows it."""
    with runner.lock:
        runner.require_stepper().set_selection(views.parse_choices(choices))
    return render_stepper(runner)


@recoverable
def step_auto_event(ctx, runner, choices, n, strategy) -> tuple:
    """Auto-select n more positions (after the hand-made choices) by the strategy."""
    with runner.lock:
        stepper = runner.require_stepper()
        stepper.set_selection(views.parse_choices(choices))
        picked = stepper.auto_select(1 if n is None or n == "" else n, strategy)
    note = ("No eligible position is left to select." if not picked else
            f"{strategy} selected position{'s' if len(picked) > 1 else ''} "
            f"{', '.join(map(str, picked))}.")
    return render_stepper(runner, note)


@recoverable
def step_apply_event(ctx, runner, choices, auto_forward) -> tuple:
    with runner.lock:
        stepper = runner.require_stepper()
        stepper.set_selection(views.parse_choices(choices))
        record = stepper.apply()
        if auto_forward and not stepper.done:
            stepper.forward()
    made = ", ".join(f"#{c['position']} `{c['token']}`" for c in record.committed)
    return render_stepper(runner, f"Applied step {record.step}: {made}.")


@recoverable
def step_rewind_event(ctx, runner, to_step) -> tuple:
    with runner.lock:
        stepper = runner.require_stepper()
        target = stepper.step if to_step is None or to_step == "" else to_step
        stepper.rewind(target)
    kept = "" if stepper.view is not None else " Press Forward pass to see its candidates."
    return render_stepper(runner, f"Rewound to step {stepper.step}.{kept}")


@recoverable
def step_finish_event(ctx, runner, n, strategy) -> tuple:
    n = 1 if n is None or n == "" else n
    with runner.lock:
        stepper = runner.require_stepper()
        stepper.set_selection({})
        before = stepper.step
        stepper.finish(n, strategy)
    return render_stepper(runner, f"Finished with {strategy}, {n} per step: "
                                  f"{stepper.step - before} more steps.")


def step_analyze_event(ctx, session, runner) -> str:
    """Store an analysis of the current sequence as the session's Analysis (Layer Analysis
    and Overall redraw from it), labelled as a diffusion step."""
    session, runner = _session(session), _runner(runner)
    analysis, seconds = runner.analyze_step(session)
    stepper = runner.stepper
    r = analysis.results[0]
    masked = sum(t == stepper.loaded.tokenizer.mask_token for t in r.trace.tokens)
    return (f"Analysed diffusion {step_label(stepper)} of **{r.name}** ({r.trace.n_tokens} "
            f"tokens, {masked} masked) in {seconds:.2f} s: the **Layer Analysis** and "
            "**Overall** tabs now show this diffusion step (their notice says so), not the "
            "Overall prompt.")


# ---------------------------------------------------------------------------- wiring helper


def returning_state(fn):
    """Also return the event's runner (its first argument) as the last output, so Gradio
    stores it again and its time-to-live restarts."""

    @functools.wraps(fn)
    def wrapper(runner, *args, **kwargs):
        runner = _runner(runner)
        out = fn(runner, *args, **kwargs)
        return (*(out if isinstance(out, tuple) else (out,)), runner)

    return wrapper
