"""What a generation leaves behind: the result, its step-by-step trace, and reading it back.

One result type (``GenerationResult``) and one trace format for every sampler and the stepper,
so the UI, the command line, the exports and the comparison read the same data. Trace
positions count from 0 at the first generated token; ``step`` counts from 1 (step i is the
state after i steps); ``block`` counts from 0.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from typing import Any

from models.common import token_texts
from models.sampling import first_end

PENDING = "<pending>"  # autoregressive trace: a position not generated yet


@dataclass
class StepRecord:
    step: int  # 1-based: the state after this many steps
    block: int  # 0-based block index of the positions committed in this step
    committed: list[dict]  # [{position, token, token_id, confidence}], position in the region
    tokens: list[str]  # the whole generated region after the step (mask text where masked)
    candidates: list[dict] = field(default_factory=list)  # [{position, top: [{token, prob..}]}]
    end: int | None = None  # the region's first end-of-sequence/padding position after the step
    kv_cache: str | None = None  # the step's forward pass: "refreshed" | "reused" the KV cache
    note: str = ""  # e.g. why the run stopped early after this step
    elapsed: float | None = None  # seconds from the run's start to the end of this step
    # uniform-noise diffusion only (None for masked diffusion and autoregressive runs, and then
    # left out of the JSON): the positions whose shown token differs from the previous step's,
    # and those of them that the sampler had accepted at an earlier step of their block, i.e. an
    # accepted token that changed: [{position, token, token_id, previous, previous_id,
    # accepted_step}]
    changed: list[int] | None = None
    revised: list[dict] | None = None

    def to_json(self) -> dict:
        out = {
            "step": self.step,
            "block": self.block,
            "committed": [{"position": c["position"], "token": c["token"],
                           "confidence": c["confidence"]} for c in self.committed],
            "tokens": list(self.tokens),
            "end": self.end,
            "candidates": self.candidates,
            "elapsed": self.elapsed,
        }
        if self.kv_cache is not None:
            out["kv_cache"] = self.kv_cache
        if self.note:
            out["note"] = self.note
        if self.changed is not None:
            out["changed"] = list(self.changed)
        if self.revised is not None:
            out["revised"] = [dict(r) for r in self.revised]
        return out


@dataclass
class GenerationResult:
    model: str
    paradigm: str  # "diffusion" | "autoregressive"
    prompt: str
    length: int  # the requested length: the canvas (= positions)
    steps: int  # steps actually taken (threshold mode: the real count)
    block_length: int | None
    strategy: str
    threshold: float | None
    nfe: int
    seconds: float
    tokens_per_second: float  # content tokens / seconds
    peak_memory_mb: float | None
    text: str  # the generated region decoded, cut before the first end-of-sequence token
    trace: list[StepRecord]
    token_ids: list[int]  # the generated region, ids (autoregressive: the tokens written)
    generated_tokens: int  # content tokens: before the first end-of-sequence/padding token
    positions: int  # the canvas size
    temperature: float = 0.0
    seed: int = 0
    time_per_token: float | None = None  # seconds per content token; None when there is none
    mask_token: str = "[MASK]"  # the placeholder text in trace tokens (PENDING for AR)
    sampling: str = "greedy"  # greedy | sample | top_k | nucleus
    peak_memory_note: str = ""  # how peak_memory_mb was measured, or why it is None
    cache: str = "none"  # diffusion: none | prefix | dual (models.kv_cache); AR: exact | none
    kv_refreshes: int = 0  # forward passes that rebuilt the block KV cache
    early_stop: bool = False  # asked to stop once the content is decided
    stop_note: str = ""  # why the run stopped before filling its canvas ("" when it did not)
    # filled by models.compare: agreement with a reference run on the same prompt
    agreement: dict | None = None
    # diffusion: "masked" (a committed token never changes) or "uniform" (uniform-noise block
    # diffusion, models.uniform_diffusion: every position always holds a token, accepted tokens
    # may change); the three fields below appear in the JSON of uniform runs only
    noise: str = "masked"
    encoder_passes: int = 0  # uniform: encoder passes that wrote the prompt/blocks' KV cache
    sampler: dict | None = None  # uniform: the sampler's settings (entropy bound, schedule ..)

    @property
    def tokens(self) -> list[str]:
        return list(self.trace[-1].tokens) if self.trace else []

    @property
    def tokens_per_forward_pass(self) -> float:
        """Content tokens per forward pass."""
        return self.generated_tokens / self.nfe if self.nfe else 0.0

    @property
    def positions_per_forward_pass(self) -> float:
        return self.positions / self.nfe if self.nfe else 0.0

    def to_json(self) -> dict:
        """The ``generate --json`` object of design.md (trace entries also carry candidates)."""
        out = {
            "model": self.model,
            "paradigm": self.paradigm,
            "prompt": self.prompt,
            "length": self.length,
            "positions": self.positions,
            "steps": self.steps,
            "block_length": self.block_length,
            "strategy": self.strategy,
            "threshold": self.threshold,
            "nfe": self.nfe,
            "generated_tokens": self.generated_tokens,
            "seconds": self.seconds,
            "tokens_per_second": self.tokens_per_second,
            "peak_memory_mb": self.peak_memory_mb,
            "peak_memory_note": self.peak_memory_note,
            "cache": self.cache,
            "kv_refreshes": self.kv_refreshes,
            "early_stop": self.early_stop,
            "stop_note": self.stop_note,
            "text": self.text,
            "trace": [r.to_json() for r in self.trace],
        }
        if self.agreement is not None:
            out["agreement"] = self.agreement
        if self.noise != "masked":
            out["noise"] = self.noise
            out["encoder_passes"] = self.encoder_passes
            out["sampler"] = self.sampler
        return out

    def dumps(self) -> str:
        return json.dumps(self.to_json(), ensure_ascii=False)


# (label, GenerationResult attribute, scale, format): the side-by-side metrics table and bars
RESULT_METRICS = [
    ("content tokens", "generated_tokens", 1.0, "{:.0f}"),
    ("canvas positions", "positions", 1.0, "{:.0f}"),
    ("steps", "steps", 1.0, "{:.0f}"),
    ("forward passes (NFE)", "nfe", 1.0, "{:.0f}"),
    ("content tokens per forward pass", "tokens_per_forward_pass", 1.0, "{:.2f}"),
    ("positions per forward pass", "positions_per_forward_pass", 1.0, "{:.2f}"),
    ("seconds", "seconds", 1.0, "{:.4f}"),
    ("content tokens / s", "tokens_per_second", 1.0, "{:.1f}"),
    ("ms per content token", "time_per_token", 1000.0, "{:.3f}"),
    ("peak memory (MB)", "peak_memory_mb", 1.0, "{:.3f}"),
]
# the ones drawn as bars (the canvas and the steps are settings more than results)
BAR_METRICS = ("generated_tokens", "nfe", "tokens_per_forward_pass", "seconds",
               "tokens_per_second", "peak_memory_mb")


# --------------------------------------------------------------------------------------------
# Building a trace from what a sampler recorded


@dataclass
class RawStep:
    """One step as a sampler records it (ids only; ``records`` turns them into text)."""

    block: int
    committed: list[tuple[int, int, float]]  # (position, token id, confidence)
    region: list[int]  # region ids after the step
    candidates: list[tuple]  # (position, [ids], [probs])
    kv_cache: str | None = None  # "refreshed" | "reused" | None (no cache)
    note: str = ""
    elapsed: float | None = None  # seconds since the run started, at the end of the step
    changed: list[int] | None = None  # uniform: positions whose region id changed in the step
    # uniform: (position, new id, previous id, step that had accepted it) of accepted tokens
    # that changed
    revised: list[tuple[int, int, int, int]] | None = None


def records(tokenizer: Any, raw: list[RawStep], mask_id: int | None, mask_token: str,
            ends: set[int]) -> list[StepRecord]:
    """StepRecords (token texts, each id converted once) of a sampler's raw steps."""
    texts: dict[int, str] = {}

    def text(i: int) -> str:
        if i not in texts:
            texts[i] = mask_token if i == mask_id else token_texts(tokenizer, [i])[0]
        return texts[i]

    out = []
    for n, r in enumerate(raw, start=1):
        committed = [{"position": p, "token": text(t), "token_id": t, "confidence": c}
                     for p, t, c in r.committed]
        cands = [{"position": p, "top": [{"token": text(i), "probability": v}
                                         for i, v in zip(ids, vals, strict=True)]}
                 for p, ids, vals in r.candidates]
        revised = None if r.revised is None else [
            {"position": p, "token": text(t), "token_id": t, "previous": text(old),
             "previous_id": old, "accepted_step": s} for p, t, old, s in r.revised]
        out.append(StepRecord(n, r.block, committed, [text(i) for i in r.region], cands,
                              first_end(r.region, ends), r.kv_cache, r.note, r.elapsed,
                              None if r.changed is None else list(r.changed), revised))
    return out


def same_steps(a: tuple, b: tuple) -> bool:
    """Two runs of a sampler gave the same token ids at every step (the replay check)."""
    return a[0] == b[0] and [r.region for r in a[1]] == [r.region for r in b[1]]


# --------------------------------------------------------------------------------------------
# Reading a trace back


def shown_positions(result: GenerationResult) -> int:
    """Positions worth drawing: the canvas of a diffusion run; the tokens an autoregressive run
    wrote (one that stopped at its end-of-sequence token never writes the rest)."""
    n = len(result.trace[0].tokens) if result.trace else result.length
    if result.paradigm == "autoregressive" and result.trace:
        n = min(n, len(result.trace))
    return n


def end_of(cells_end: int | None, position: int) -> str | None:
    """Where ``position`` lies against the region's first end-of-sequence token ``cells_end``:
    None (before it: content, or no end yet), "eos" (the end token) or "after" (past it)."""
    if cells_end is None or position < cells_end:
        return None
    return "eos" if position == cells_end else "after"


def region_at(result: GenerationResult, step: int) -> list[dict]:
    """The generated region after ``step`` steps of a recorded generation (0 = all masked):
    [{token, state: masked | new | old, confidence (None while masked), step (of commit),
    end: None | "eos" | "after" (against the first end-of-sequence token committed so far)}].
    An autoregressive run shows the positions it wrote (``shown_positions``); a uniform-noise
    run's cells are ``_uniform_region``'s."""
    n_steps = len(result.trace)
    step = min(max(int(step), 0), n_steps)
    n = shown_positions(result)
    tokens = list(result.trace[step - 1].tokens)[:n] if step else [result.mask_token] * n
    end = result.trace[step - 1].end if step else None
    when: dict[int, tuple[int, float]] = {}
    for rec in result.trace[:step]:
        for c in rec.committed:
            when[c["position"]] = (rec.step, float(c["confidence"]))
    if result.noise == "uniform" and step:
        return _uniform_region(result, result.trace[step - 1], tokens, when, end)
    out = []
    for p, tok in enumerate(tokens):
        if tok == result.mask_token or p not in when:
            out.append({"token": tok, "state": "masked", "confidence": None, "step": None,
                        "end": end_of(end, p)})
        else:
            s, conf = when[p]
            out.append({"token": tok, "state": "new" if s == step else "old", "confidence": conf,
                        "step": s, "end": end_of(end, p)})
    return out


def _uniform_region(result: GenerationResult, rec: StepRecord, tokens: list[str],
                    when: dict[int, tuple[int, float]], end: int | None) -> list[dict]:
    """``region_at`` of a uniform-noise run after step ``rec``: "new" = accepted in this step;
    "old" = a finished block's final token; "masked" = a block not started yet (its tokens are
    the placeholder) or a position of the current block the sampler did not accept in this step
    (the canvas re-noised it: the box shows the model's current draft). ``revised``: the token
    changed in this step although an earlier step of its block had accepted it."""
    accepted = {c["position"]: float(c["confidence"]) for c in rec.committed}
    revised = {r["position"] for r in rec.revised or []}
    size = result.block_length or len(tokens)
    out = []
    for p, tok in enumerate(tokens):
        cell = {"token": tok, "state": "masked", "confidence": None, "step": None,
                "end": end_of(end, p), "revised": p in revised}
        if tok != result.mask_token and p // size < rec.block:
            s, conf = when.get(p, (None, None))
            cell.update(state="old", confidence=conf, step=s)
        elif p in accepted:
            cell.update(state="new", confidence=accepted[p], step=rec.step)
        out.append(cell)
    return out


@dataclass
class DecodeTable:
    """When each position was decoded and how confident the model was on the way."""

    commit_step: list[int | None]  # [position] step (1-based) that committed it
    commit_confidence: list[float | None]  # [position]
    best: list[list[float]] = field(default_factory=list)  # [position][step]: top-1 probability
    # of the still-masked position in that step's forward pass (NaN when unknown or committed)
    tokens: list[str] = field(default_factory=list)  # [position] the final token


def decode_table(result: GenerationResult) -> DecodeTable:
    n = len(result.trace[0].tokens) if result.trace else result.length
    steps = len(result.trace)
    commit_step: list[int | None] = [None] * n
    commit_conf: list[float | None] = [None] * n
    best = [[math.nan] * steps for _ in range(n)]
    for j, rec in enumerate(result.trace):
        for c in rec.candidates:
            if c["top"] and 0 <= c["position"] < n:
                best[c["position"]][j] = float(c["top"][0]["probability"])
        for c in rec.committed:
            p = c["position"]
            if 0 <= p < n:
                commit_step[p], commit_conf[p] = rec.step, float(c["confidence"])
                if math.isnan(best[p][j]):
                    best[p][j] = float(c["confidence"])
    tokens = list(result.trace[-1].tokens) if result.trace else [result.mask_token] * n
    return DecodeTable(commit_step, commit_conf, best, tokens)
