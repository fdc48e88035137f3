"""Diffusion tab: masked-diffusion generation step by step, next to autoregressive generation.

Three views share one settings panel (prompt, models, length, steps, block length, strategy,
threshold, temperature, seed):

- **Run**: ``models.generation.diffusion_generate``; a step slider over the recorded trace, a
  positions x steps heatmap, and the engine's GIF / HTML viewer / ZIP exports.
- **Side by side**: the same prompt through an autoregressive model too, both traces with their
  own slider, a metrics table and bar charts; "compare on a prompt set" runs
  ``models.generation.compare`` on ``models/data/capitals.tsv`` or an uploaded file.
- **Step by step**: ``models.interactive.Stepper`` (forward pass, reprocess the stored logits,
  auto-select / hand-pick, apply, rewind, finish) and "Analyze this step", which stores an
  analysis of the partly masked sequence as the session's Analysis so the Layer Analysis tab
  shows it (through ``layer_tab.wire_analysis``, like the Overall tab's Analyze).

Thin like the other tabs: the event functions below take the app ``Context`` and the states
first and return every output; ``build`` wires them. The figure functions at the end are
presentation only (they belong with ``reports.figures`` and use its style helpers).
"""

from __future__ import annotations

import functools
import html
import logging
import math
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import gradio as gr
import pandas as pd

from models.errors import UserError
from ui import limits
from ui.state import Session, compute_threads, encode_figure, friendly_errors

log = logging.getLogger(__name__)

CAPITALS_FILE = Path(__file__).resolve().parents[1] / "models" / "data" / "capitals.tsv"
STRATEGY_CHOICES = [
    ("low_confidence (most confident first)", "low_confidence"),
    ("high_confidence (least confident first)", "high_confidence"),
    ("low_entropy (most certain first)", "low_entropy"),
    ("high_entropy (most uncertain first)", "high_entropy"),
    ("random", "random"),
]
CSS = """
.dtok{display:inline-block;margin:2px 2px;padding:3px 7px;border-radius:5px;white-space:pre;
font-family:ui-monospace,Menlo,Consolas,monospace;font-size:14px;line-height:1.35;color:#1e1e1e}
.dtok sub{font-size:9px;color:#666;margin-left:3px}
.dtok.masked{background:#dedede;color:#666;border:1px dashed #aaa}
.dtok.prompt{background:transparent;color:#555;padding:3px 2px}
.dtok.chosen{background:#fff6d6;border:2px solid #e0a800}
.dtok.after-end{opacity:.38;filter:grayscale(1)}
.dtok.eos{box-shadow:inset 0 0 0 1px #555}
.dlegend{font-size:12px;color:#555;margin:4px 0}
.dlegend span.sw{display:inline-block;width:12px;height:12px;border-radius:3px;margin:0 4px 0 10px;
vertical-align:middle}
.dcands{border-collapse:collapse;font-size:13px;width:100%}
.dcands td,.dcands th{border-bottom:1px solid #eee;padding:3px 6px;text-align:left;vertical-align:top}
.dcands td:nth-child(-n+4),.dcands th:nth-child(-n+4){width:1% !important;white-space:nowrap}
.dcands tr.later{opacity:.45}
.dchip{display:inline-block;margin:1px 2px;padding:1px 6px;border-radius:4px;white-space:pre;
font-family:ui-monospace,Menlo,Consolas,monospace;font-size:12px;border:1px solid #ccc}
.dchip.off{color:#999;text-decoration:line-through;border-style:dashed}
.dchip.cand{border:2px solid #333}
.dchip.sel{background:#ffe08a}
"""


# ---------------------------------------------------------------------------- session state


@dataclass
class DiffusionSession:
    """This browser session's diffusion results and its interactive stepper (never global)."""

    run: Any = None  # GenerationResult of the Run view
    pair: tuple | None = None  # (diffusion, autoregressive) GenerationResults, side by side
    stepper: Any = None  # models.interactive.Stepper
    comparison: dict | None = None  # the last models.generation.compare result
    run_id: int = 0
    files: list = field(default_factory=list)  # export files of the current run
    lock: Any = field(default_factory=threading.RLock, repr=False, compare=False)

    def __deepcopy__(self, memo):  # gr.State copies its initial value: start fresh
        return DiffusionSession()


def new_diffusion_session() -> DiffusionSession:
    return DiffusionSession()


def _ds(value) -> DiffusionSession:
    return value if isinstance(value, DiffusionSession) else DiffusionSession()


def _session(value) -> Session:
    return value if isinstance(value, Session) else Session()


# ---------------------------------------------------------------------------- models offered


def _task(name: str) -> str | None:
    from models.registry import resolve

    try:
        return resolve(name, allow_custom=True).task
    except UserError:
        return None


def diffusion_models(ctx) -> list[str]:
    """Offered models that can unmask: diffusion models first, then fill-mask ones."""
    tasks = {m: _task(m) for m in ctx.models}
    return ([m for m in ctx.models if tasks[m] == "diffusion"]
            + [m for m in ctx.models if tasks[m] == "fill-mask"])


def causal_models(ctx) -> list[str]:
    return [m for m in ctx.models if _task(m) == "causal"]


# ---------------------------------------------------------------------------- settings


def _whole(name: str, value, lo: int, hi: int | None = None, default: int | None = None) -> int:
    if value is None or value == "":
        if default is None:
            raise UserError(f"{name} is empty; give a whole number.")
        return default
    try:
        f = float(value)
    except (TypeError, ValueError):
        raise UserError(f"{name} must be a whole number, got {value!r}.") from None
    if not math.isfinite(f) or f != int(f):
        raise UserError(f"{name} must be a whole number, got {value!r}.")
    v = int(f)
    if v < lo or (hi is not None and v > hi):
        rng = f"at least {lo}" if hi is None else f"between {lo} and {hi}"
        raise UserError(f"{name} must be {rng}, got {v}.")
    return v


def _number(name: str, value, lo: float | None = None, default: float | None = None) -> float:
    if value is None or value == "":
        if default is None:
            raise UserError(f"{name} is empty; give a number.")
        return default
    try:
        f = float(value)
    except (TypeError, ValueError):
        raise UserError(f"{name} must be a number, got {value!r}.") from None
    if not math.isfinite(f) or (lo is not None and f < lo):
        raise UserError(f"{name} must be a finite number{'' if lo is None else f' >= {lo}'}, "
                        f"got {value!r}.")
    return f


@dataclass
class RunSettings:
    model: str
    prompt: str
    length: int
    steps: int
    block_length: int
    strategy: str
    threshold: float | None
    temperature: float
    seed: int

    def kwargs(self) -> dict:
        """Keyword arguments of diffusion_generate / compare (after the model and prompt)."""
        return dict(steps=self.steps, block_length=self.block_length, strategy=self.strategy,
                    threshold=self.threshold, temperature=self.temperature)


def parse_settings(ctx, model, prompt, length, steps, block_length, strategy, threshold,
                   temperature, seed) -> RunSettings:
    """The settings panel checked; 0 steps / block length mean "= length", 0 threshold off."""
    from models.generation import STRATEGIES
    from ui.overall_tab import check_prompt

    offered = diffusion_models(ctx)
    if not model or model not in offered:
        raise UserError(f"Choose a diffusion or fill-mask model: {', '.join(offered) or 'none offered'}"
                        f" (got {model!r}).")
    prompt = check_prompt(prompt)
    length = limits.check_generation_length(ctx.config, _whole("length", length, 1))
    steps = _whole("steps", steps, 0, default=0) or length
    block_length = _whole("block length", block_length, 0, default=0) or length
    if strategy not in STRATEGIES:
        raise UserError(f"Unknown strategy {strategy!r}; choose one of {', '.join(STRATEGIES)}.")
    t = _number("threshold", threshold, 0.0, default=0.0)
    temperature = _number("temperature", temperature, 0.0, default=0.0)
    seed = _whole("seed", seed, 0, 2**32 - 1, default=0)
    return RunSettings(model, prompt, length, steps, block_length, strategy, t or None, temperature,
                       seed)


# ---------------------------------------------------------------------------- rendering (HTML)


def _esc(text: str) -> str:
    return html.escape(str(text), quote=True)


def _colour(state: str, confidence: float | None) -> str:
    """Green for new this step, blue for committed earlier; stronger = more confident."""
    c = 0.5 if confidence is None else min(max(float(confidence), 0.0), 1.0)
    light = 88 - 40 * c  # HSL lightness 88% (unsure) .. 48% (sure)
    hue = 120 if state == "new" else 215
    return f"hsl({hue},{55 + 15 * c:.0f}%,{light:.0f}%)"


def legend_html(extra: str = "") -> str:
    return ("<div class='dlegend'><span class='sw' style='background:#dedede;border:1px dashed "
            "#aaa'></span>masked / pending<span class='sw' style='background:hsl(120,70%,48%)'>"
            "</span>new this step<span class='sw' style='background:hsl(215,70%,48%)'></span>"
            "committed earlier &middot; darker = more confident (hover a token for its "
            "confidence)<span class='sw' style='background:hsl(215,15%,70%);opacity:.5'></span>"
            "greyed: the end-of-sequence token and what lies after it (canvas, not content)"
            f"{extra}</div>")


_END_CLASS = {None: "", "eos": " after-end eos", "after": " after-end"}
_END_TIP = {None: "", "eos": " (end of sequence: not content)",
            "after": " (after the end of sequence: not content)"}


def region_html(cells: list[dict], prompt_tokens: list[str] | None = None,
                elem_class: str = "dregion") -> str:
    """Token boxes for `models.interactive.region_at` cells (state + confidence as colour;
    the end-of-sequence token and every position after it greyed, still shown)."""
    parts = [legend_html(), f"<div class='{elem_class}'>"]
    for t in prompt_tokens or []:
        parts.append(f"<span class='dtok prompt'>{_esc(t)}</span>")
    for p, c in enumerate(cells):
        tip = f"position {p}"
        attrs = f"data-pos='{p}' data-token='{_esc(c['token'])}'"
        end_cls, end_tip = _END_CLASS[c.get("end")], _END_TIP[c.get("end")]
        if c.get("chosen") is not None:
            parts.append(f"<span class='dtok chosen' {attrs} data-chosen='{_esc(c['chosen'])}' "
                         f"title='{tip}: chosen, not applied yet'>{_esc(c['chosen'])}<sub>{p}</sub>"
                         "</span>")
            continue
        if c["state"] == "masked":
            parts.append(f"<span class='dtok masked{end_cls}' {attrs} title='{tip}: masked"
                         f"{end_tip}'>{_esc(c['token'])}<sub>{p}</sub></span>")
            continue
        conf = c.get("confidence")
        tip += (f", step {c.get('step')}" + ("" if conf is None else f", confidence {conf:.3f}")
                + end_tip)
        colour = _colour(c["state"], conf)
        ink = "#fff" if conf is not None and conf > 0.6 else "#1e1e1e"
        parts.append(f"<span class='dtok {c['state']}{end_cls}' {attrs} title='{_esc(tip)}' "
                     f"style='background:{colour};color:{ink}'>{_esc(c['token'])}<sub "
                     f"style='color:{ink}'>{p}</sub></span>")
    parts.append("</div>")
    return "".join(parts)


def step_caption(result, step: int) -> str:
    """One line about `step` of a recorded generation."""
    n = len(result.trace)
    if step <= 0:
        still = "pending" if result.paradigm == "autoregressive" else "masked"
        return f"Step 0 / {n}: every position {still}."
    rec = result.trace[min(step, n) - 1]
    made = ", ".join(f"#{c['position']} `{c['token'].strip() or repr(c['token'])}` "
                     f"({c['confidence']:.3f})" for c in rec.committed)
    text = f"Step {rec.step} / {n} (block {rec.block}): committed {made}."
    if rec.end is not None:
        text += (f" The end-of-sequence token at #{rec.end} ends the content; greyed positions "
                 "are not counted.")
    return text


def memory_text(mb: float | None, note: str = "") -> str:
    if mb is None:
        return f"n/a ({note})" if note else "n/a"
    return f"{mb:.3f} MB" if mb < 10 else f"{mb:.1f} MB"


def result_summary(result) -> str:
    """One paragraph: content tokens and canvas positions apart, forward passes, speed."""
    extra = ("" if result.paradigm == "autoregressive" else
             f" · strategy {result.strategy} · block length {result.block_length}"
             + ("" if result.threshold is None else f" · threshold {result.threshold}"))
    if result.paradigm == "autoregressive":
        stopped = (f" (stopped at end-of-sequence after writing {len(result.token_ids)})"
                   if len(result.token_ids) < result.positions else "")
        what = (f"{result.generated_tokens} content tokens of {result.positions} "
                f"positions{stopped}")
    else:
        what = f"{result.generated_tokens} content tokens of {result.positions} positions"
    return (f"**{result.model}** ({result.paradigm}) · {what}; {result.steps} steps, "
            f"{result.nfe} forward passes; {result.tokens_per_forward_pass:.2f} content tokens "
            f"per forward pass ({result.positions_per_forward_pass:.2f} positions) · "
            f"{result.seconds:.3f} s · {result.tokens_per_second:.1f} content tokens/s · "
            f"peak memory {memory_text(result.peak_memory_mb, result.peak_memory_note)}{extra}")


def _iframe(doc: str, height: int = 400) -> str:
    return (f"<iframe title='step viewer' sandbox='allow-scripts' srcdoc=\"{_esc(doc)}\" "
            f"style='width:100%;height:{height}px;border:1px solid #ddd;border-radius:6px'></iframe>")


def view_of(result, step) -> tuple[str, str]:
    """(tokens HTML, caption) of one step of a recorded generation."""
    from models.interactive import region_at

    step = _whole("step", step, 0, default=len(result.trace))
    step = min(step, len(result.trace))
    return region_html(region_at(result, step)), step_caption(result, step)


def _slider(result) -> dict:
    n = len(result.trace)
    return gr.Slider(minimum=0, maximum=max(n, 1), value=n, step=1, interactive=n > 0,
                     label=f"Step (0 = all masked, {n} = done)")


# ---------------------------------------------------------------------------- Run view


def _write_exports(session: Session, ds: DiffusionSession, result) -> tuple[Path, Path, Path]:
    from reports.diffusion_export import export_zip, trace_gif, trace_html

    for p in ds.files:
        Path(p).unlink(missing_ok=True)
    ds.run_id += 1
    folder = session.folder()
    stem = f"diffusion-{''.join(c if c.isalnum() or c in '-_' else '-' for c in result.model)}-{ds.run_id}"
    gif = trace_gif(result, folder / f"{stem}.gif")
    page = folder / f"{stem}-viewer.html"
    page.write_text(trace_html(result), encoding="utf-8")
    bundle = export_zip(result, folder / f"{stem}.zip")
    ds.files = [gif, page, bundle]
    return gif, page, bundle


def generate_event(ctx, session, ds, model, prompt, length, steps, block_length, strategy,
                   threshold, temperature, seed) -> tuple:
    """Run view: (text, summary, step slider, tokens HTML, caption, heatmap, GIF, viewer
    HTML, download files)."""
    from models.generation import diffusion_generate
    from reports import figures
    from reports.diffusion_export import trace_html

    session, ds = _session(session), _ds(ds)
    s = parse_settings(ctx, model, prompt, length, steps, block_length, strategy, threshold,
                       temperature, seed)
    loaded = ctx.load(s.model)
    t0 = time.perf_counter()
    with ds.lock, compute_threads(loaded.params):
        result = diffusion_generate(loaded, s.prompt, s.length, seed=s.seed, n_candidates=5,
                                    **s.kwargs())
        ds.run = result
        gif, page, bundle = _write_exports(session, ds, result)
        heat = encode_figure(figures.decode_heatmap(result))
    session.record("diffusion generate", models=[s.model], prompts=[s.prompt],
                   seconds=round(time.perf_counter() - t0, 3), result=result.text)
    tokens, caption = view_of(result, len(result.trace))
    return (result.text, result_summary(result), _slider(result), tokens, caption, heat, str(gif),
            _iframe(trace_html(result)), [str(page), str(bundle), str(gif)])


def run_step_event(ctx, ds, step) -> tuple:
    """Run view slider moved: (tokens HTML, caption) from the stored trace (no model call)."""
    ds = _ds(ds)
    if ds.run is None:
        raise UserError("Generate first: there is no trace to step through.")
    return view_of(ds.run, step)


# ---------------------------------------------------------------------------- side by side


def metrics_table(results: list) -> pd.DataFrame:
    """One row per metric, one column per generation (rounded for reading)."""
    rows = []
    from models.generation import RESULT_METRICS

    for label, attr, scale, fmt in RESULT_METRICS:
        row = {"metric": label}
        for r in results:
            v = getattr(r, attr)
            row[f"{r.paradigm} ({r.model})"] = None if v is None else float(fmt.format(v * scale))
        rows.append(row)
    return pd.DataFrame(rows)


def pair_event(ctx, session, ds, model, prompt, length, steps, block_length, strategy, threshold,
               temperature, seed, ar_model) -> tuple:
    """Side by side: (diffusion text, summary, slider, tokens; AR text, summary, slider, tokens;
    metrics table, bar charts)."""
    from models.generation import autoregressive_generate, diffusion_generate
    from reports import figures

    session, ds = _session(session), _ds(ds)
    s = parse_settings(ctx, model, prompt, length, steps, block_length, strategy, threshold,
                       temperature, seed)
    if not ar_model or ar_model not in causal_models(ctx):
        raise UserError(f"Choose an autoregressive (causal) model: {', '.join(causal_models(ctx))}"
                        f" (got {ar_model!r}).")
    diff, ar = ctx.load(s.model), ctx.load(ar_model)
    with ds.lock, compute_threads(max(diff.params, ar.params)):
        # untimed warm-up of both (first-call overheads), then the timed runs
        diffusion_generate(diff, s.prompt, 1, n_candidates=0, measure_memory=False)
        autoregressive_generate(ar, s.prompt, 1, n_candidates=0, measure_memory=False)
        d = diffusion_generate(diff, s.prompt, s.length, seed=s.seed, n_candidates=5, **s.kwargs())
        a = autoregressive_generate(ar, s.prompt, s.length, temperature=s.temperature, seed=s.seed)
        ds.pair = (d, a)
        bars = encode_figure(figures.metric_bars([d, a]))
    session.record("diffusion vs autoregressive", models=[s.model, ar_model], prompts=[s.prompt],
                   result=f"diffusion: {d.text!r}; autoregressive: {a.text!r}")
    out = []
    for r in (d, a):
        tokens, caption = view_of(r, len(r.trace))
        out += [r.text, result_summary(r) + "\n\n" + caption, _slider(r), tokens]
    return (*out, metrics_table([d, a]), bars)


def pair_step_event(ctx, ds, which: int, step) -> tuple:
    """One side's slider moved: (tokens HTML, summary + caption)."""
    ds = _ds(ds)
    if ds.pair is None:
        raise UserError("Run the side-by-side generation first.")
    r = ds.pair[which]
    tokens, caption = view_of(r, step)
    return tokens, result_summary(r) + "\n\n" + caption


SUMMARY_COLUMNS = ["paradigm", "model", "accuracy", "scored", "mean content tokens",
                   "mean forward passes", "content tokens per forward pass", "mean seconds",
                   "content tokens / s", "peak memory (MB)"]


def compare_tables(result: dict) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(summary per paradigm, one row per prompt and seed) of a `compare` result."""
    rows = []
    for paradigm in ("diffusion", "autoregressive"):
        s = result[paradigm]
        rows.append({"paradigm": paradigm, "model": s["model"],
                     "accuracy": None if s["accuracy"] is None else round(s["accuracy"], 4),
                     "scored": s["n_scored"],
                     "mean content tokens": round(s["mean_generated_tokens"], 2),
                     "mean forward passes": round(s["mean_nfe"], 2),
                     "content tokens per forward pass": round(s["tokens_per_forward_pass"], 3),
                     "mean seconds": round(s["mean_seconds"], 5),
                     "content tokens / s": round(s["tokens_per_second"], 1),
                     "peak memory (MB)": None if s["peak_memory_mb"] is None
                     else round(s["peak_memory_mb"], 3)})
    runs = []
    for r in result["runs"]:
        runs.append({"prompt": r["prompt"], "expected": r["expected"], "seed": r["seed"],
                     "diffusion": r["diffusion"]["text"], "diffusion correct": r["diffusion"]["correct"],
                     "autoregressive": r["autoregressive"]["text"],
                     "autoregressive correct": r["autoregressive"]["correct"]})
    return pd.DataFrame(rows, columns=SUMMARY_COLUMNS), pd.DataFrame(runs)


def compare_set_event(ctx, session, ds, model, prompt, length, steps, block_length, strategy,
                      threshold, temperature, seed, ar_model, upload, progress=None) -> tuple:
    """Compare on a prompt set: (summary table, per-prompt table, bar charts, note). `prompt`
    is not used (the set brings its own prompts); the other settings are."""
    from models.generation import compare, read_prompts_file
    from reports import figures

    session, ds = _session(session), _ds(ds)
    s = parse_settings(ctx, model, prompt or "(prompt set)", length, steps, block_length, strategy,
                       threshold, temperature, seed)
    if not ar_model or ar_model not in causal_models(ctx):
        raise UserError(f"Choose an autoregressive (causal) model: {', '.join(causal_models(ctx))}.")
    path = upload if upload else CAPITALS_FILE
    if isinstance(path, dict):  # an API client may send the FileData dict
        path = path.get("path")
    prompts = read_prompts_file(path)
    source = "the uploaded file" if upload else "the bundled capitals set"
    diff, ar = ctx.load(s.model), ctx.load(ar_model)

    def report(k: int, total: int, text: str) -> None:
        if progress is not None:
            progress(k / total, desc=f"{k}/{total}: {text[:40]}")

    t0 = time.perf_counter()
    with ds.lock, compute_threads(max(diff.params, ar.params)):
        result = compare(ar, diff, prompts, length=s.length, seeds=(s.seed,), progress=report,
                         **s.kwargs())
        ds.comparison = result
        bars = encode_figure(figures.compare_bars(result))
    seconds = time.perf_counter() - t0
    summary, runs = compare_tables(result)
    session.record("compare on a prompt set", models=[s.model, ar_model],
                   prompts=[f"{len(prompts)} prompts from {source}"], seconds=round(seconds, 2),
                   result="; ".join(f"{p}: accuracy {result[p]['accuracy']}"
                                    for p in ("diffusion", "autoregressive")))
    note = (f"{len(prompts)} prompts from {source}, a canvas of {s.length} positions, seed "
            f"{s.seed}; a run is "
            "correct when its generated text contains the expected answer (case-insensitive). "
            "Content tokens are the generated tokens before the first end-of-sequence/padding "
            "token; tokens/s counts only those. The autoregressive model stops at its "
            "end-of-sequence token. Both paradigms alternate which runs first; took "
            f"{seconds:.1f} s in all.")
    return summary, runs, bars, note


# ---------------------------------------------------------------------------- step by step


def _stepper(ds: DiffusionSession):
    if ds.stepper is None:
        raise UserError("Initialise first: choose a prompt, length and block length and press "
                        "Initialise.")
    return ds.stepper


def step_settings(temperature, gumbel, show_k, top_k, top_p):
    from models.interactive import Settings

    return Settings(temperature=_number("softmax temperature", temperature, default=1.0),
                    gumbel=_number("Gumbel noise", gumbel, default=0.0),
                    top_k=_whole("selectable top-k", top_k, 0, default=0) or None,
                    top_p=_number("top-p", top_p, default=1.0),
                    show_k=_whole("shown top-k", show_k, 1, default=8)).checked()


def choice_value(position: int, token_id: int) -> str:
    return f"{position}:{token_id}"


def parse_choices(values) -> dict[int, int]:
    """Dropdown values 'position:token_id' -> {position: token_id}; one token per position."""
    out: dict[int, int] = {}
    for v in values or []:
        try:
            p, t = (int(x) for x in str(v).split(":", 1))
        except ValueError:
            raise UserError(f"Cannot read the choice {v!r}; pick from the list.") from None
        if p in out and out[p] != t:
            raise UserError(f"Two tokens are chosen for position {p}; keep one.")
        out[p] = t
    return out


def step_choices(stepper) -> list[tuple[str, str]]:
    """(label, value) for every selectable shown candidate of every eligible position, plus the
    selected tokens (which the shown top-k may not include)."""
    out: list[tuple[str, str]] = []
    seen = set()
    for v in stepper.view or []:
        if not v.eligible:
            continue
        for t in v.top:
            if t["selectable"]:
                out.append((f"{v.position}: {t['token']} ({t['probability']:.1%})",
                            choice_value(v.position, t["token_id"])))
                seen.add((v.position, t["token_id"]))
    for p, tid in sorted(stepper.selection.items()):
        if (p, tid) not in seen:
            out.append((f"{p}: {stepper.token_text(tid)} ({stepper.probability(p, tid):.1%})",
                        choice_value(p, tid)))
    return out


def _prob(p: float) -> str:
    return f"{p:.3f}" if p >= 0.001 else f"{p:.0e}"


def candidates_html(stepper) -> str:
    if stepper.done:
        return "<p>Every position is committed. Rewind to explore another path.</p>"
    if stepper.view is None:
        return ("<p>No forward pass for this step yet: press <b>Forward pass</b> to see each "
                "masked position's candidates.</p>")
    s = stepper.settings
    head = ("<table class='dcands'><tr><th>pos</th><th>candidate</th><th>confidence</th>"
            "<th>entropy</th><th>top tokens (probability at this temperature; struck through: "
            "outside the selectable top-k / top-p; boxed: the candidate; yellow: chosen)</th></tr>")
    rows = [head]
    for v in stepper.view:
        chosen = stepper.selection.get(v.position)
        chips = []
        for t in v.top:
            cls = "dchip" + ("" if t["selectable"] else " off")
            cls += " cand" if t["token_id"] == v.candidate_id else ""
            cls += " sel" if t["token_id"] == chosen else ""
            chips.append(f"<span class='{cls}'>{_esc(t['token'])} {_prob(t['probability'])}</span>")
        later = "" if v.eligible else " class='later' title='a later block'"
        rows.append(f"<tr{later}><td>{v.position}</td><td><b>{_esc(v.candidate)}</b></td>"
                    f"<td>{v.confidence:.3f}</td><td>{v.entropy:.3f}</td><td>{''.join(chips)}</td></tr>")
    rows.append("</table>")
    note = (f"<div class='dlegend'>temperature {s.temperature:g} · Gumbel noise {s.gumbel:g} · "
            f"selectable top-k {s.top_k or 'all'} · top-p {s.top_p or 1:g} · shown top-k {s.show_k}"
            "</div>")
    return note + "".join(rows)


def sequence_html(stepper) -> str:
    """Prompt (grey text) and the region: committed (colour = confidence), chosen, masked."""
    last = {c["position"] for c in stepper.records[-1].committed} if stepper.records else set()
    conf, when = {}, {}
    for rec in stepper.records:
        for c in rec.committed:
            conf[c["position"]], when[c["position"]] = c["confidence"], rec.step
    from models.interactive import end_of

    end = stepper.end
    cells = []
    for p, tok in enumerate(stepper.tokens()):
        if p in stepper.selection:
            cells.append({"token": tok, "state": "masked",
                          "chosen": stepper.token_text(stepper.selection[p])})
        elif p in conf:
            cells.append({"token": tok, "state": "new" if p in last else "old",
                          "confidence": conf[p], "step": when[p], "end": end_of(end, p)})
        else:
            cells.append({"token": tok, "state": "masked", "confidence": None,
                          "end": end_of(end, p)})
    return region_html(cells, stepper.prompt_tokens())


def step_info(stepper, note: str = "") -> str:
    def ms(v):
        return "–" if v is None else f"{v * 1000:.1f} ms"

    block = stepper.block
    where = ("done" if block is None else "one block" if stepper.n_blocks == 1
             else f"block {block} (blocks 0..{stepper.n_blocks - 1}, filled left to right)")
    content = stepper.generated_tokens
    per_pass = f"{content / stepper.n_forward:.2f}" if stepper.n_forward else "–"
    text = (f"**Step {stepper.step}** · {where} · {len(stepper.masked)} of {stepper.length} "
            f"masked · {len(stepper.selection)} chosen · {content} content tokens of "
            f"{stepper.length} positions · {stepper.n_forward} forward passes · {per_pass} "
            f"content tokens per forward pass · last forward pass {ms(stepper.forward_seconds)}, "
            f"last reprocess {ms(stepper.process_seconds)} (server side)")
    if stepper.text():
        text += f"\n\n**Text so far:** {_esc(stepper.text())}"
    return text + (f"\n\n{note}" if note else "")


def render_stepper(stepper, note: str = "") -> tuple:
    """(sequence HTML, candidates HTML, choices dropdown, info, rewind slider)."""
    choices = step_choices(stepper)
    value = [choice_value(p, t) for p, t in sorted(stepper.selection.items())]
    return (sequence_html(stepper), candidates_html(stepper),
            gr.Dropdown(choices=choices, value=value, interactive=bool(choices), multiselect=True,
                        allow_custom_value=True),
            step_info(stepper, note),
            gr.Slider(minimum=0, maximum=max(stepper.step, 1), value=stepper.step, step=1,
                      interactive=stepper.step > 0, label=f"Rewind to step (0..{stepper.step})"))


def step_init_event(ctx, ds, model, prompt, length, block_length, seed, temperature, gumbel,
                    show_k, top_k, top_p, auto_forward) -> tuple:
    from models.interactive import Stepper

    ds = _ds(ds)
    s = parse_settings(ctx, model, prompt, length, 0, block_length, "low_confidence", 0, 0, seed)
    settings = step_settings(temperature, gumbel, show_k, top_k, top_p)
    loaded = ctx.load(s.model)
    with ds.lock, compute_threads(loaded.params):
        stepper = Stepper(loaded, s.prompt, s.length, s.block_length, seed=s.seed)
        stepper.settings = settings
        if auto_forward:
            stepper.forward()
        ds.stepper = stepper
    return render_stepper(stepper)


def step_forward_event(ctx, ds, temperature, gumbel, show_k, top_k, top_p) -> tuple:
    ds = _ds(ds)
    with ds.lock:
        stepper = _stepper(ds)
        stepper.settings = step_settings(temperature, gumbel, show_k, top_k, top_p)
        with compute_threads(stepper.loaded.params):
            stepper.forward()
    return render_stepper(stepper)


def step_reprocess_event(ctx, ds, temperature, gumbel, show_k, top_k, top_p) -> tuple:
    """Processing settings changed: the stored logits again, no model call. Before a forward
    pass it only keeps the settings."""
    ds = _ds(ds)
    settings = step_settings(temperature, gumbel, show_k, top_k, top_p)
    with ds.lock:
        stepper = ds.stepper
        if stepper is None:
            return (gr.skip(),) * 5
        if stepper.logits is None:
            stepper.settings = settings
            return render_stepper(stepper)
        keep = dict(stepper.selection)
        with compute_threads(stepper.loaded.params):
            stepper.process(settings)
        stepper.selection = {}
        for p, t in keep.items():  # keep the choices that are still selectable
            try:
                stepper.select(p, t)
            except UserError:
                pass
    return render_stepper(stepper)


def step_select_event(ctx, ds, choices) -> tuple:
    """The hand-made choice changed (dropdown): the selection follows it."""
    ds = _ds(ds)
    with ds.lock:
        stepper = _stepper(ds)
        stepper.set_selection(parse_choices(choices))
    return render_stepper(stepper)


def step_auto_event(ctx, ds, choices, n, strategy) -> tuple:
    """Auto-select n more positions (after the hand-made choices) by the strategy."""
    ds = _ds(ds)
    with ds.lock:
        stepper = _stepper(ds)
        stepper.set_selection(parse_choices(choices))
        picked = stepper.auto_select(_whole("positions to select", n, 1, default=1), strategy)
    note = ("No eligible position is left to select." if not picked else
            f"{strategy} selected position{'s' if len(picked) > 1 else ''} "
            f"{', '.join(map(str, picked))}.")
    return render_stepper(stepper, note)


def step_apply_event(ctx, ds, choices, auto_forward) -> tuple:
    ds = _ds(ds)
    with ds.lock:
        stepper = _stepper(ds)
        stepper.set_selection(parse_choices(choices))
        record = stepper.apply()
        if auto_forward and not stepper.done:
            with compute_threads(stepper.loaded.params):
                stepper.forward()
    made = ", ".join(f"#{c['position']} `{c['token']}`" for c in record.committed)
    return render_stepper(stepper, f"Applied step {record.step}: {made}.")


def step_rewind_event(ctx, ds, to_step) -> tuple:
    ds = _ds(ds)
    with ds.lock:
        stepper = _stepper(ds)
        target = _whole("step", to_step, 0, stepper.step, default=stepper.step)
        with compute_threads(stepper.loaded.params):
            stepper.rewind(target)
    kept = "" if stepper.view is not None else " Press Forward pass to see its candidates."
    return render_stepper(stepper, f"Rewound to step {target}.{kept}")


def step_finish_event(ctx, ds, n, strategy) -> tuple:
    ds = _ds(ds)
    with ds.lock:
        stepper = _stepper(ds)
        stepper.set_selection({})
        before = stepper.step
        with compute_threads(stepper.loaded.params):
            stepper.finish(_whole("positions per step", n, 1, default=1), strategy)
    return render_stepper(stepper, f"Finished with {strategy}, {n} per step: "
                                   f"{stepper.step - before} more steps.")


def analyze_stepper(loaded, stepper):
    """An Analysis of the stepper's current (partly masked) sequence, one model."""
    from datetime import datetime, timezone

    from analysis.result import Analysis
    from analysis.run import analyze_model

    text, _ = stepper.analysis_prompt()
    result = analyze_model(loaded, [text], seed=0, input_ids=list(stepper.ids))
    return Analysis(prompts=[text], results=[result],
                    settings={"source": "diffusion step", "step": stepper.step,
                              "length": stepper.length, "block_length": stepper.block_length},
                    created=datetime.now(timezone.utc).isoformat(timespec="seconds"), seed=0)


def step_analyze_event(ctx, session, ds) -> str:
    """Store an analysis of the current sequence as the session's Analysis (Layer Analysis
    redraws from it)."""
    from reports.bundle import analysis_log_entry

    session, ds = _session(session), _ds(ds)
    with ds.lock:
        stepper = _stepper(ds)
        t0 = time.perf_counter()
        with compute_threads(stepper.loaded.params):
            analysis = analyze_stepper(stepper.loaded, stepper)
    session.set_analysis(analysis)
    entry = analysis_log_entry(analysis, action=f"analyze diffusion step {stepper.step}")
    entry["seconds"] = round(time.perf_counter() - t0, 2)
    session.add_entry(entry)
    r = analysis.results[0]
    return (f"Analysed step {stepper.step} of **{r.name}** ({r.trace.n_tokens} tokens, "
            f"{sum(t == stepper.loaded.tokenizer.mask_token for t in r.trace.tokens)} masked) in "
            f"{time.perf_counter() - t0:.2f} s. Open "
            "the **Layer Analysis** tab for its attention patterns and head metrics.")


# ---------------------------------------------------------------------------- layout


def _returning_state(fn):
    """Also return the event's DiffusionSession (its first argument) as the last output, so
    Gradio stores it again and its time-to-live restarts."""

    @functools.wraps(fn)
    def wrapper(ds, *args, **kwargs):
        out = fn(ds, *args, **kwargs)
        return (*(out if isinstance(out, tuple) else (out,)), ds)

    return wrapper


@dataclass
class DiffusionTab:
    state: gr.State
    settings: list  # the shared settings panel's inputs, in `parse_settings` order
    ar_model: gr.Dropdown
    generate_btn: gr.Button
    run_outputs: list
    analyzed: list  # the "Analyze this step" events (the Layer Analysis tab chains onto them)


def build(ctx) -> DiffusionTab:
    diff_names, ar_names = diffusion_models(ctx), causal_models(ctx)
    gr.HTML(f"<style>{CSS}</style>", elem_id="diffusion-css", padding=False)
    gr.Markdown("### Masked diffusion vs autoregressive generation\nA masked diffusion model "
                "starts from a fully masked answer and commits tokens over a few steps, each step "
                "one forward pass with bidirectional attention; an autoregressive model writes one "
                "token per forward pass, left to right. **Run** records one diffusion generation, "
                "**Side by side** adds an autoregressive model, **Step by step** lets you take the "
                "sampler's decisions yourself.", elem_id="diffusion-help")
    if not diff_names:
        gr.Markdown("**No diffusion or fill-mask model is offered**, so this tab cannot generate. "
                    "Start the dashboard with e.g. `--models tiny-bert,tiny-gpt2`.",
                    elem_id="diffusion-no-models")
    # dropped (with the stepper's logits) this long after an event last stored it, like the
    # session's analysis; the events that make or replace results return it to restart the clock
    ds_state = gr.State(new_diffusion_session,
                        time_to_live=getattr(ctx.config, "session_ttl_s", None))
    with gr.Group(elem_id="diff-settings"):
        with gr.Row(elem_id="diff-settings-row-1"):
            prompt = gr.Textbox(label="Prompt", value="the capital of japan is", lines=1, scale=3,
                                elem_id="diff-prompt")
            model = gr.Dropdown(choices=diff_names, value=diff_names[0] if diff_names else None,
                                label="Diffusion model", elem_id="diff-model", scale=1,
                                info="diffusion models first, then fill-mask (BERT) models")
            ar_model = gr.Dropdown(choices=ar_names, value=ar_names[0] if ar_names else None,
                                   label="Autoregressive model", elem_id="diff-ar-model", scale=1)
        with gr.Row(elem_id="diff-settings-row-2"):
            length = gr.Number(value=8, precision=0, minimum=1,
                               maximum=int(ctx.config.max_generation_length),
                               label="Length", info="canvas positions", elem_id="diff-length",
                               min_width=110)
            steps = gr.Number(value=8, precision=0, minimum=0, label="Steps", info="0 = length",
                              elem_id="diff-steps", min_width=110)
            block_length = gr.Number(value=0, precision=0, minimum=0, label="Block length",
                                     info="0 = one block", elem_id="diff-block-length",
                                     min_width=110)
            strategy = gr.Dropdown(choices=STRATEGY_CHOICES, value="low_confidence",
                                   label="Strategy", info="which masked positions commit first",
                                   elem_id="diff-strategy", scale=3)
            threshold = gr.Number(value=0, minimum=0, maximum=1, label="Threshold",
                                  info="0 = off", elem_id="diff-threshold", min_width=110)
            temperature = gr.Number(value=0, minimum=0, label="Temperature", info="0 = greedy",
                                    elem_id="diff-temperature", min_width=110)
            seed = gr.Number(value=0, precision=0, minimum=0, maximum=2**32 - 1, label="Seed",
                             info="for sampling",
                             elem_id="diff-seed", min_width=90)
    settings = [model, prompt, length, steps, block_length, strategy, threshold, temperature, seed]

    with gr.Tabs(elem_id="diffusion-views"):
        # ------------------------------------------------------------ Run
        with gr.Tab("Run", id="diff-run", elem_id="diff-run-tab"):
            with gr.Row(elem_id="diff-run-row"):
                generate_btn = gr.Button("Generate", variant="primary", elem_id="diff-generate-btn",
                                         scale=0, min_width=160, interactive=bool(diff_names))
                run_summary = gr.Markdown("", elem_id="diff-summary")
            run_text = gr.Textbox(label="Generated text", interactive=False, elem_id="diff-text")
            run_slider = gr.Slider(minimum=0, maximum=1, value=0, step=1, interactive=False,
                                   label="Step", elem_id="diff-step")
            run_caption = gr.Markdown("", elem_id="diff-step-info")
            run_tokens = gr.HTML("", elem_id="diff-tokens")
            heatmap = gr.Plot(label="Positions x steps", elem_id="diff-heatmap", format="png",
                              show_label=False)
            with gr.Row(equal_height=False, elem_id="diff-export-row"):
                # the GIF carries its own title: a floating label would cover it
                gif = gr.Image(label="Steps (GIF)", type="filepath", interactive=False,
                               elem_id="diff-gif", buttons=["download", "fullscreen"], scale=3,
                               show_label=False)
                files = gr.File(label="Downloads: HTML step viewer, ZIP (trace.json, GIF, viewer)",
                                file_count="multiple", interactive=False, elem_id="diff-files",
                                scale=1)
            with gr.Accordion("Step viewer (the exported HTML page)", open=True,
                              elem_id="diff-viewer-accordion"):
                viewer = gr.HTML("", elem_id="diff-viewer")

        # ------------------------------------------------------------ Side by side
        with gr.Tab("Side by side", id="diff-pair", elem_id="diff-pair-tab"):
            pair_btn = gr.Button("Generate with both", variant="primary", elem_id="diff-pair-btn",
                                 interactive=bool(diff_names and ar_names))
            side = []
            with gr.Row(equal_height=False, elem_id="diff-pair-row"):
                for key, title in (("diffusion", "Masked diffusion"),
                                   ("ar", "Autoregressive")):
                    with gr.Column(elem_id=f"pair-{key}-column"):
                        gr.Markdown(f"#### {title}", elem_id=f"pair-{key}-title")
                        p_text = gr.Textbox(label="Generated text", interactive=False,
                                            elem_id=f"pair-{key}-text")
                        p_info = gr.Markdown("", elem_id=f"pair-{key}-info")
                        p_slider = gr.Slider(minimum=0, maximum=1, value=0, step=1,
                                             interactive=False, label="Step",
                                             elem_id=f"pair-{key}-step")
                        p_tokens = gr.HTML("", elem_id=f"pair-{key}-tokens")
                        side.append((p_text, p_info, p_slider, p_tokens))
            pair_table = gr.Dataframe(label="Metrics (one generation each; see Details for the "
                                            "definitions)", elem_id="pair-metrics",
                                      interactive=False, wrap=True)
            pair_bars = gr.Plot(label="Metrics", elem_id="pair-bars", format="png", show_label=False)
            gr.Markdown("#### Compare on a prompt set\nRuns both models on every prompt (the "
                        "settings above, not the prompt) and scores whether the answer appears in "
                        "the generated text. Default: the bundled capitals set (`models/data/"
                        "capitals.tsv`, one `prompt<TAB>answer` per line).",
                        elem_id="compare-help")
            with gr.Row(elem_id="compare-row"):
                upload = gr.File(label="Prompt file (optional; .txt/.tsv, prompt<TAB>answer)",
                                 file_types=[".txt", ".tsv"], elem_id="compare-file", scale=2,
                                 height=120)
                compare_btn = gr.Button("Compare on the prompt set", elem_id="compare-btn",
                                        scale=1, interactive=bool(diff_names and ar_names))
            compare_note = gr.Markdown("", elem_id="compare-note")
            compare_table = gr.Dataframe(label="Accuracy and speed per paradigm",
                                         elem_id="compare-table", interactive=False, wrap=True,
                                         column_widths=["12%", "12%", "9%", "7%", "10%", "10%",
                                                        "11%", "9%", "10%", "10%"])
            compare_bars_plot = gr.Plot(label="Accuracy and speed", elem_id="compare-bars",
                                        format="png", show_label=False)
            with gr.Accordion("Every prompt", open=False, elem_id="compare-runs-accordion"):
                compare_runs = gr.Dataframe(elem_id="compare-runs", interactive=False, wrap=True,
                                            max_height=420, show_label=False)

        # ------------------------------------------------------------ Step by step
        with gr.Tab("Step by step", id="diff-step", elem_id="diff-step-tab"):
            gr.Markdown("Uses the prompt, diffusion model, length, block length and seed above. "
                        "**Forward pass** runs the model once; changing temperature, Gumbel noise "
                        "or the top-k / top-p only reprocesses the stored logits. Choose tokens by "
                        "hand in the list, auto-select more by a strategy, then **Apply**. "
                        "**Rewind** restores an earlier step exactly.", elem_id="step-help")
            with gr.Row(elem_id="step-row-1"):
                init_btn = gr.Button("Initialise", variant="primary", elem_id="step-init-btn",
                                     interactive=bool(diff_names))
                forward_btn = gr.Button("Forward pass", elem_id="step-forward-btn")
                auto_forward = gr.Checkbox(value=True, label="Forward pass after initialise and "
                                                             "apply", elem_id="step-auto-forward")
                analyze_btn = gr.Button("Analyze this step", elem_id="step-analyze-btn")
            analyze_info = gr.Markdown("", elem_id="step-analyze-info")
            with gr.Row(elem_id="step-row-2"):
                s_temp = gr.Slider(0.05, 5, value=1.0, step=0.05, label="Temperature",
                                   info="softmax", elem_id="step-temperature")
                s_gumbel = gr.Slider(0, 2, value=0, step=0.05, label="Gumbel noise",
                                     info="0 = off", elem_id="step-gumbel")
                s_show = gr.Slider(1, 30, value=8, step=1, label="Shown top-k",
                                   info="per position", elem_id="step-show-k")
                s_topk = gr.Slider(0, 100, value=0, step=1, label="Selectable top-k",
                                   info="0 = all", elem_id="step-top-k")
                s_topp = gr.Slider(0.01, 1, value=1.0, step=0.01, label="Top-p",
                                   info="selectable nucleus", elem_id="step-top-p")
            step_info_md = gr.Markdown("Press **Initialise** to start.", elem_id="step-info")
            seq = gr.HTML("", elem_id="step-sequence")
            cands = gr.HTML("", elem_id="step-candidates")
            with gr.Row(elem_id="step-row-3"):
                choices = gr.Dropdown(choices=[], value=[], multiselect=True,
                                      allow_custom_value=True, interactive=False, scale=3,
                                      label="Chosen tokens (position: token (probability))",
                                      elem_id="step-choices")
                with gr.Column(scale=2, elem_id="step-auto-column"):
                    with gr.Row(elem_id="step-auto-row"):
                        n_auto = gr.Number(value=1, precision=0, minimum=1, label="N positions",
                                           elem_id="step-n", min_width=90, scale=1)
                        s_strategy = gr.Dropdown(choices=STRATEGY_CHOICES, value="low_confidence",
                                                 label="Auto-select strategy", scale=3,
                                                 elem_id="step-strategy")
                    with gr.Row(elem_id="step-buttons-row"):
                        auto_btn = gr.Button("Auto-select N", elem_id="step-auto-btn")
                        apply_btn = gr.Button("Apply", variant="primary", elem_id="step-apply-btn")
                        clear_btn = gr.Button("Clear", elem_id="step-clear-btn")
                        finish_btn = gr.Button("Run to the end", elem_id="step-finish-btn")
            with gr.Row(elem_id="step-rewind-row"):
                rewind_to = gr.Slider(minimum=0, maximum=1, value=0, step=1, interactive=False,
                                      label="Rewind to step", elem_id="step-rewind-to", scale=3)
                rewind_btn = gr.Button("Rewind", elem_id="step-rewind-btn", scale=1)

    # ------------------------------------------------------------------ events
    model_kw = dict(concurrency_id=limits.MODEL_CONCURRENCY_ID, concurrency_limit=1)
    view_kw = dict(concurrency_id="diffusion-view", concurrency_limit=4)

    run_outputs = [run_text, run_summary, run_slider, run_tokens, run_caption, heatmap, gif,
                   viewer, files]

    @_returning_state
    @friendly_errors
    def on_generate(ds, session, *values):
        return generate_event(ctx, session, ds, *values)

    generate_btn.click(on_generate, [ds_state, ctx.state, *settings], [*run_outputs, ds_state],
                       api_name="diffusion_generate", **model_kw)

    @friendly_errors
    def on_run_step(ds, step):
        return run_step_event(ctx, ds, step)

    run_slider.change(on_run_step, [ds_state, run_slider], [run_tokens, run_caption],
                      api_name="diffusion_step", trigger_mode="always_last",
                      show_progress="hidden", **view_kw)

    pair_outputs = [*side[0], *side[1], pair_table, pair_bars]

    @_returning_state
    @friendly_errors
    def on_pair(ds, session, *values):
        return pair_event(ctx, session, ds, *values)

    pair_btn.click(on_pair, [ds_state, ctx.state, *settings, ar_model], [*pair_outputs, ds_state],
                   api_name="diffusion_side_by_side", **model_kw)
    for which, (_t, p_info, p_slider, p_tokens) in enumerate(side):
        def on_pair_step(ds, step, which=which):
            return friendly_errors(pair_step_event)(ctx, ds, which, step)

        p_slider.change(on_pair_step, [ds_state, p_slider], [p_tokens, p_info],
                        api_name=f"diffusion_pair_step_{'diffusion' if which == 0 else 'ar'}",
                        trigger_mode="always_last", show_progress="hidden", **view_kw)

    @_returning_state
    @friendly_errors
    def on_compare(ds, session, *values, progress=gr.Progress()):
        return compare_set_event(ctx, session, ds, *values, progress=progress)

    compare_btn.click(on_compare, [ds_state, ctx.state, *settings, ar_model, upload],
                      [compare_table, compare_runs, compare_bars_plot, compare_note, ds_state],
                      api_name="diffusion_compare", **model_kw)

    step_outputs = [seq, cands, choices, step_info_md, rewind_to]
    processing = [s_temp, s_gumbel, s_show, s_topk, s_topp]

    @_returning_state
    @friendly_errors
    def on_init(ds, model_v, prompt_v, length_v, block_v, seed_v, *rest):
        return step_init_event(ctx, ds, model_v, prompt_v, length_v, block_v, seed_v, *rest)

    init_btn.click(on_init, [ds_state, model, prompt, length, block_length, seed, *processing,
                             auto_forward], [*step_outputs, ds_state], api_name="step_init",
                   **model_kw)

    @_returning_state
    @friendly_errors
    def on_forward(ds, *values):
        return step_forward_event(ctx, ds, *values)

    forward_btn.click(on_forward, [ds_state, *processing], [*step_outputs, ds_state],
                      api_name="step_forward", **model_kw)

    @friendly_errors
    def on_reprocess(ds, *values):
        return step_reprocess_event(ctx, ds, *values)

    for comp in processing:
        comp.change(on_reprocess, [ds_state, *processing], step_outputs,
                     api_name="step_reprocess" if comp is s_temp else None,
                     api_visibility="public" if comp is s_temp else "private",
                     trigger_mode="always_last", show_progress="hidden", **view_kw)

    @friendly_errors
    def on_select(ds, values):
        return step_select_event(ctx, ds, values)

    choices.input(on_select, [ds_state, choices], step_outputs, api_name="step_select",
                  trigger_mode="always_last", show_progress="hidden", **view_kw)

    @friendly_errors
    def on_auto(ds, values, n, strategy_v):
        return step_auto_event(ctx, ds, values, n, strategy_v)

    auto_btn.click(on_auto, [ds_state, choices, n_auto, s_strategy], step_outputs,
                   api_name="step_auto", **view_kw)

    @friendly_errors
    def on_clear(ds):
        return step_select_event(ctx, ds, [])

    clear_btn.click(on_clear, [ds_state], step_outputs, api_name="step_clear", **view_kw)

    @_returning_state
    @friendly_errors
    def on_apply(ds, values, auto_fw):
        return step_apply_event(ctx, ds, values, auto_fw)

    apply_btn.click(on_apply, [ds_state, choices, auto_forward], [*step_outputs, ds_state],
                    api_name="step_apply", **model_kw)

    @friendly_errors
    def on_rewind(ds, to_step):
        return step_rewind_event(ctx, ds, to_step)

    rewind_btn.click(on_rewind, [ds_state, rewind_to], step_outputs, api_name="step_rewind",
                     **view_kw)

    @_returning_state
    @friendly_errors
    def on_finish(ds, n, strategy_v):
        return step_finish_event(ctx, ds, n, strategy_v)

    finish_btn.click(on_finish, [ds_state, n_auto, s_strategy], [*step_outputs, ds_state],
                     api_name="step_finish", **model_kw)

    @friendly_errors
    def on_analyze(ds, session):
        return step_analyze_event(ctx, session, ds)

    analyzed = [analyze_btn.click(on_analyze, [ds_state, ctx.state], [analyze_info],
                                  api_name="step_analyze", **model_kw)]
    # the Layer Analysis tab (built before this one) redraws from the new analysis, exactly as
    # after the Overall tab's Analyze
    if "layer" in ctx.tabs:
        from ui import layer_tab

        layer_tab.wire_analysis(ctx, analyzed, ctx.tabs["layer"])
    if "overall" in ctx.tabs:  # and the Overall tab (metrics, predictions, its ZIP) shows it too
        from ui import overall_tab

        for event in analyzed:
            event.success(friendly_errors(lambda s: overall_tab.show_event(ctx, s)), [ctx.state],
                          ctx.tabs["overall"].outputs, api_visibility="private",
                          concurrency_id="layer-view", concurrency_limit=4, show_progress="hidden")
    return DiffusionTab(ds_state, settings, ar_model, generate_btn, run_outputs, analyzed)
