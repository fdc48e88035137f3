"""Autoregressive against masked diffusion on a prompt set: speed, accuracy, agreement with the
uncached one-token-per-step answer, quality (fluency, relevance) and consistency across seeds.

A uniform-noise diffusion model (DiffusionGemma) runs through the same ``diffusion_generate``
(which hands it to models.uniform_diffusion); it has no uncached one-token-per-step reference,
so its runs carry no agreement (None), and the masked-only settings get its UserError.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from models.autoregressive import autoregressive_generate
from models.common import UserError, whole_number
from models.diffusion import diffusion_generate
from models.quality import perplexity, relevance
from models.sampling import MAX_SEED, end_ids
from models.trace import GenerationResult
from models.uniform_diffusion import is_uniform

MAX_PROMPTS = 1000
MAX_PROMPTS_BYTES = 1_000_000
CAPITALS_FILE = Path(__file__).resolve().parent / "data" / "capitals.tsv"  # prompt<TAB>answer


def read_prompts_file(path: str | os.PathLike) -> list[tuple[str, str | None]]:
    """One prompt per line, optionally a TAB and the expected answer; blank lines and lines
    starting with '#' are skipped. UTF-8, at most 1 MB and 1000 prompts."""
    p = Path(path)
    if not p.is_file():
        raise UserError(f"Prompts file '{path}' does not exist or is not a file.")
    if p.stat().st_size > MAX_PROMPTS_BYTES:
        raise UserError(f"Prompts file '{path}' is larger than 1 MB; split it.")
    data = p.read_bytes()
    if b"\0" in data:
        raise UserError(f"Prompts file '{path}' looks binary; give a UTF-8 text file with one "
                        "prompt per line.")
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError:
        raise UserError(f"Prompts file '{path}' is not UTF-8 text.") from None
    out: list[tuple[str, str | None]] = []
    for n, line in enumerate(text.splitlines(), start=1):
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        prompt, _, expected = line.partition("\t")
        if not prompt.strip():
            raise UserError(f"Prompts file '{path}', line {n}: the prompt before the TAB is empty.")
        out.append((prompt.strip(), expected.strip() or None))
        if len(out) > MAX_PROMPTS:
            raise UserError(f"Prompts file '{path}' has more than {MAX_PROMPTS} prompts.")
    if not out:
        raise UserError(f"Prompts file '{path}' has no prompts (one per line, optional TAB and "
                        "the expected answer).")
    return out


def normalised(text: str) -> str:
    return " ".join(text.lower().split())


COMPARE_DEFINITIONS = {
    "generated_tokens": "content tokens of all runs: generated tokens before the first "
                        "end-of-sequence/padding token of each run's region",
    "positions": "canvas positions of all runs (the requested length each)",
    "tokens_per_second": "content tokens of all runs / their seconds (prompt, end-of-sequence "
                         "and padding tokens never count)",
    "tokens_per_forward_pass": "content tokens of all runs / their forward passes",
    "positions_per_forward_pass": "canvas positions of all runs / their forward passes",
    "mean_nfe": "forward passes per run (classifier-free guidance counts 2 per step)",
    "peak_memory_mb": "the largest per-run peak of the memory a generation allocated (MB = "
                      "2**20 bytes; see models.generation)",
    "accuracy": "fraction of runs with an expected answer whose text contains it "
                "(case-insensitive)",
    "consistency": "fraction of prompts whose text is the same for every seed",
    "agreement": "diffusion: fraction of runs whose text (lower-cased, whitespace-normalised) "
                 "equals the uncached one-token-per-step run's on the same prompt and seed "
                 "(same model, block length, strategy and temperature)",
    "token_agreement": "diffusion: mean over runs of the share of the reference run's content "
                       "positions and its end token at which the run wrote the same token",
    "fluency_perplexity": "mean over runs of the reference causal model's perplexity of the "
                          "text given the prompt (models.quality; lower = more expected)",
    "relevance": "mean over runs of the cosine similarity of all-MiniLM-L6-v2 sentence "
                 "embeddings of the prompt and the text (models.quality; higher = on topic)",
    "autoregressive": "stops at its end-of-sequence token",
}


@dataclass
class Quality:
    """The models the quality measures read (models.quality); None leaves a measure out."""

    fluency: Any = None  # a loaded causal model: perplexity of the text given the prompt
    relevance: Any = None  # a loaded sentence encoder (minilm-l6): cosine to the prompt


def agreement(run: GenerationResult, reference: GenerationResult, ends: set[int]) -> dict:
    """How far a run is from the reference answer on the same prompt: ``same_text`` (the
    normalised texts are equal) and ``token_agreement`` (the share of the reference's content
    positions and its end token where the run wrote the same token id)."""
    ref = reference.token_ids
    n = min(len(ref), reference.generated_tokens + 1)
    same = sum(1 for p in range(n) if p < len(run.token_ids) and run.token_ids[p] == ref[p])
    return {"reference": "uncached, one token per step",
            "same_text": normalised(run.text) == normalised(reference.text),
            "token_agreement": same / n if n else 1.0,
            "reference_text": reference.text}


def _mean(values: list) -> float | None:
    kept = [v for v in values if v is not None]
    return sum(kept) / len(kept) if kept else None


def _summary(model: str, paradigm: str, runs: list[dict], n_seeds: int) -> dict:
    scored = [r for r in runs if r["correct"] is not None]
    seconds = sum(r["seconds"] for r in runs)
    content = sum(r["generated_tokens"] for r in runs)
    positions = sum(r["positions"] for r in runs)
    nfe = sum(r["nfe"] for r in runs)
    peaks = [r["peak_memory_mb"] for r in runs if r["peak_memory_mb"] is not None]
    consistency = None
    if n_seeds > 1:
        by_prompt: dict[int, set[str]] = {}
        for r in runs:
            by_prompt.setdefault(r["prompt_index"], set()).add(normalised(r["text"]))
        consistency = sum(len(s) == 1 for s in by_prompt.values()) / len(by_prompt)
    agreed = [r["agreement"] for r in runs if r.get("agreement")]
    return {
        "model": model,
        "paradigm": paradigm,
        "runs": len(runs),
        "accuracy": (sum(r["correct"] for r in scored) / len(scored)) if scored else None,
        "n_scored": len(scored),
        "mean_seconds": seconds / len(runs),
        "generated_tokens": content,
        "positions": positions,
        "mean_generated_tokens": content / len(runs),
        "tokens_per_second": content / seconds,
        "mean_nfe": nfe / len(runs),
        "tokens_per_forward_pass": content / nfe if nfe else 0.0,
        "positions_per_forward_pass": positions / nfe if nfe else 0.0,
        "peak_memory_mb": max(peaks) if peaks else None,
        "consistency": consistency,
        "agreement": _mean([float(a["same_text"]) for a in agreed]),
        "token_agreement": _mean([a["token_agreement"] for a in agreed]),
        "fluency_perplexity": _mean([r.get("fluency_perplexity") for r in runs]),
        "relevance": _mean([r.get("relevance") for r in runs]),
    }


def _item(res: GenerationResult, expected: str | None, quality: Quality | None) -> dict:
    """One run's row of the comparison (and its quality measures)."""
    correct = None if expected is None else expected.strip().lower() in res.text.lower()
    item = {"text": res.text, "correct": correct, "seconds": res.seconds,
            "tokens_per_second": res.tokens_per_second, "nfe": res.nfe, "steps": res.steps,
            "length": res.length, "generated_tokens": res.generated_tokens,
            "positions": res.positions, "peak_memory_mb": res.peak_memory_mb,
            "agreement": res.agreement}
    if quality is not None and quality.fluency is not None:
        item["fluency_perplexity"] = perplexity(quality.fluency, res.prompt, res.text)
    if quality is not None and quality.relevance is not None:
        item["relevance"] = relevance(quality.relevance, res.prompt, res.text)
    return item


@dataclass
class _Runs:
    """How each paradigm runs one prompt and seed in a comparison (settings bound)."""

    ar: Any
    diff: Any
    length: int
    diffusion: dict  # diffusion_generate keywords (steps, block_length, ..., cache, early_stop)
    autoregressive: dict  # autoregressive_generate keywords (temperature, top_k, top_p, ...)
    ar_length: int
    measure_memory: bool

    def run_ar(self, prompt: str, seed: int, n: int | None = None) -> GenerationResult:
        n = self.ar_length if n is None else n
        return autoregressive_generate(self.ar, prompt, n, seed=seed, n_candidates=0,
                                       measure_memory=self.measure_memory and n > 1,
                                       **self.autoregressive)

    def run_diff(self, prompt: str, seed: int) -> GenerationResult:
        return diffusion_generate(self.diff, prompt, self.length, seed=seed, n_candidates=0,
                                  measure_memory=self.measure_memory, **self.diffusion)

    def reference(self, prompt: str, seed: int, run: GenerationResult) -> GenerationResult:
        """The uncached, one-token-per-step run of the same settings (untimed, not counted);
        ``run`` itself when its settings are those already (early stopping never changes the
        content, so it does not count)."""
        d = self.diffusion
        if (d["steps"] in (None, self.length) and d["threshold"] is None
                and d["cache"] == "none" and not run.stop_note):
            return run
        kw = dict(d, steps=self.length, threshold=None, cache="none", early_stop=False)
        return diffusion_generate(self.diff, prompt, self.length, seed=seed, n_candidates=0,
                                  measure_memory=False, **kw)

    def warm_up(self, prompt: str, seed: int) -> None:
        self.run_ar(prompt, seed, 1)
        chat = self.diffusion.get("use_chat_template", False)
        # one position in one step (a uniform-noise model: one step of one block)
        diffusion_generate(self.diff, prompt, 1, steps=1, strategy=self.diffusion["strategy"],
                           n_candidates=0, use_chat_template=chat, measure_memory=False)


def _run_abba(runs: _Runs, prompts: Sequence[tuple[str, str | None]], seeds: list[int],
              reference: bool, quality: Quality | None,
              progress: Callable[[int, int, str], None] | None
              ) -> tuple[list[dict], dict[str, list[dict]]]:
    """Every prompt and seed through both paradigms, alternating which goes first (ABBA):
    (the comparison's rows, each paradigm's run items with their ``prompt_index``)."""
    ends = end_ids(runs.diff)
    rows: list[dict] = []
    per: dict[str, list[dict]] = {"autoregressive": [], "diffusion": []}
    total, k = len(prompts) * len(seeds), 0
    for pi, (prompt, expected) in enumerate(prompts):
        for seed in seeds:
            order = (("autoregressive", "diffusion") if k % 2 == 0
                     else ("diffusion", "autoregressive"))
            row: dict[str, Any] = {"prompt": prompt, "expected": expected, "seed": seed}
            for paradigm in order:
                res = (runs.run_ar(prompt, seed) if paradigm == "autoregressive"
                       else runs.run_diff(prompt, seed))
                if paradigm == "diffusion" and reference and not is_uniform(runs.diff):
                    res.agreement = agreement(res, runs.reference(prompt, seed, res), ends)
                row[paradigm] = _item(res, expected, quality)
                per[paradigm].append({**row[paradigm], "prompt_index": pi})
            rows.append(row)
            k += 1
            if progress is not None:
                progress(k, total, prompt)
    return rows, per


def compare(ar_loaded: Any, diff_loaded: Any, prompts: Sequence[tuple[str, str | None]],
            length: int = 16, steps: int | None = None, block_length: int | None = None,
            strategy: str = "low_confidence", threshold: float | None = None,
            temperature: float = 0.0, top_k: int | None = None, top_p: float | None = None,
            seeds: Sequence[int] = (0,), ar_chat_template: bool = False,
            diffusion_chat_template: bool = False, warmup: bool = True,
            progress: Callable[[int, int, str], None] | None = None,
            measure_memory: bool = True, cache: str = "none", early_stop: bool = False,
            ar_length: int | None = None, ar_temperature: float | None = None,
            ar_top_p: float | None = None, reference: bool = True,
            quality: Quality | None = None) -> dict:
    """Run the autoregressive and the diffusion model on every prompt and seed, side by side.

    Order: the two paradigms alternate which goes first from one run to the next (ABBA), so
    a drift in machine speed affects both alike; ``warmup`` first runs each once on one token,
    untimed. The autoregressive model stops at its end-of-sequence token; its own settings
    (``ar_length``, ``ar_temperature``, ``ar_top_p``) default to the diffusion side's length,
    temperature and top-p. Per paradigm: ``accuracy`` = fraction of runs with an expected
    answer whose generated text contains it (case-insensitive; None without expectations);
    ``tokens_per_second`` = all *content* tokens (before each run's first end-of-sequence/
    padding token) / all seconds; ``generated_tokens`` and ``positions`` (totals),
    ``mean_generated_tokens``, ``tokens_per_forward_pass`` (content) and
    ``positions_per_forward_pass``; ``mean_seconds``, ``mean_nfe``; ``peak_memory_mb`` = the
    largest per-run peak (``measure_memory=False`` skips it); ``consistency`` (two or more
    seeds) = fraction of prompts whose normalised text is the same for every seed.
    ``reference``: every diffusion run also reports its ``agreement`` with the uncached
    one-token-per-step run of the same prompt and seed (run untimed), summed up as
    ``agreement`` and ``token_agreement``. ``quality``: fluency (perplexity) and relevance of
    every run's text (models.quality). The result's ``definitions`` says the same in words.
    """
    if not prompts:
        raise UserError("No prompts to compare; give at least one.")
    seeds = [whole_number("seed", s, 0, MAX_SEED) for s in seeds]
    if not seeds:
        raise UserError("Give at least one seed.")
    ar_t = temperature if ar_temperature is None else ar_temperature
    ar_p = top_p if ar_top_p is None else (None if ar_top_p >= 1 else ar_top_p)
    runs = _Runs(ar_loaded, diff_loaded, length,
                 dict(steps=steps, block_length=block_length, strategy=strategy,
                      threshold=threshold, temperature=temperature, top_k=top_k, top_p=top_p,
                      use_chat_template=diffusion_chat_template, cache=cache,
                      early_stop=early_stop),
                 dict(temperature=ar_t, top_k=top_k, top_p=ar_p,
                      use_chat_template=ar_chat_template),
                 length if ar_length is None else ar_length, measure_memory)
    if warmup:
        runs.warm_up(prompts[0][0], seeds[0])
    rows, per = _run_abba(runs, prompts, seeds, reference, quality, progress)
    return {
        "settings": {"length": length, "steps": steps, "block_length": block_length,
                     "strategy": strategy, "threshold": threshold, "temperature": temperature,
                     "top_k": top_k, "top_p": top_p, "seeds": seeds, "cache": cache,
                     "early_stop": early_stop, "ar_length": runs.ar_length,
                     "ar_temperature": ar_t, "ar_top_p": ar_p, "reference": reference,
                     "fluency_model": getattr(quality and quality.fluency, "name", None),
                     "relevance_model": getattr(quality and quality.relevance, "name", None)},
        "autoregressive": _summary(ar_loaded.name, "autoregressive", per["autoregressive"],
                                   len(seeds)),
        "diffusion": _summary(diff_loaded.name, "diffusion", per["diffusion"], len(seeds)),
        "runs": rows,
        "definitions": dict(COMPARE_DEFINITIONS),
    }
