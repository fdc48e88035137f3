"""Masked diffusion one step at a time: forward pass, inspect, choose, commit, rewind.

The state machine behind the Diffusion tab's step mode (the LLaDA visualizer of reference 004),
without any UI, so it can be tested alone::

    s = Stepper(loaded, "the capital of japan is", length=8, block_length=4)
    s.forward()                       # runs the model once; keeps the logits of the masked rows
    s.process(Settings(temperature=0.7, top_k=5))   # no model call: the stored logits again
    s.auto_select(2, "low_confidence")               # the strategy picks 2 positions ...
    s.select(3, token_id)                            # ... and a hand-picked token joins them
    s.apply()                         # commit the selection: step 1
    s.rewind(0)                       # back to the start, exactly

It lays out the sequence, runs the same forward passes (with or without the block KV cache),
forbids the same special tokens and ranks positions with the same functions as
``models.diffusion.diffusion_generate``, so stepping with ``Settings()`` (temperature 1, no
noise, no top-k/top-p) and ``auto_select(n)`` reproduces the sampler's greedy run token for
token, cache included.

Definitions (the tab quotes them):

- ``logits``: the model's output at the masked positions of the generated region after one
  forward pass, float32 on the CPU  # [masked position, vocab]. With the dual KV cache a pass
  inside a block computes only the block's positions, so only those have logits.
- ``cache``: "none", "prefix" or "dual" (models.kv_cache): the first forward pass in a block
  rebuilds the cache (``kv_event`` "refreshed"), the later ones read it ("reused").
- *selectable* tokens: those left finite by ``process_logits`` (never-chosen special tokens
  removed, then the selectable ``top_k`` and/or ``top_p``).
- ``probs`` = softmax(processed logits / ``temperature``) over the selectable tokens; the
  *confidence* of a token is its entry there, *entropy* is in nats.
- *candidate* of a position: argmax of log probs + ``gumbel`` * G, with G standard Gumbel noise
  drawn once per (seed, step), so reprocessing with the same settings gives the same candidate
  (``gumbel`` = 0: the most probable token; ``gumbel`` = 1 samples from probs).
- *shown* candidates: the ``show_k`` most probable tokens of softmax(logits / temperature)
  before the top-k/top-p filter, each marked selectable or not (reference 004's visual vs
  actual top-k).
- ``auto_select(n, strategy)``: among the *eligible* positions (masked, in the current block,
  not selected yet) the ``n`` with the highest ``strategy_scores`` get their candidate. The
  names are the sampler's: ``low_confidence`` (LLaDA's remasking name) leaves the
  low-confidence positions masked, i.e. commits the most confident first.
- A *step* is one ``apply``; ``step`` counts them from 0. Positions count from 0 at the first
  generated token; blocks from 0 (the current block is the first one with a masked position).
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Mapping
from dataclasses import dataclass, replace
from typing import Any

import torch

from models.common import UserError, finite_number, token_texts, whole_number
from models.diffusion import Passes, canvas
from models.kv_cache import BlockKV, check_cache
from models.sampling import (
    MAX_SEED,
    STRATEGIES,
    check_choice,
    check_prompt,
    check_unmasking_model,
    decode_content,
    end_ids,
    entropy,
    first_end,
    forbidden_ids,
    mask_text,
    mask_token_id,
    model_device,
    process_logits,
    ranked,
    stop_ids,
    strategy_scores,
)
from models.trace import GenerationResult, StepRecord

log = logging.getLogger(__name__)

KEEP_LOGITS_BYTES = 256 * 2**20  # logits kept in the history for exact rewinds (newest first)
MAX_SHOW_K = 100


@dataclass(frozen=True)
class Settings:
    """How stored logits are turned into probabilities and candidates (no model call)."""

    temperature: float = 1.0  # softmax temperature of the shown probabilities, > 0
    gumbel: float = 0.0  # Gumbel noise scale for choosing the candidate; 0 = most probable
    top_k: int | None = None  # selectable top-k (None: all)
    top_p: float | None = None  # selectable nucleus (None or 1: all)
    show_k: int = 8  # candidates shown per position

    def checked(self) -> Settings:
        t = finite_number("temperature", self.temperature)
        if t <= 0:
            raise UserError(f"temperature must be positive, got {self.temperature}.")
        g = finite_number("Gumbel noise", self.gumbel)
        if g < 0:
            raise UserError(f"Gumbel noise must be 0 (off) or positive, got {self.gumbel}.")
        k = None if self.top_k in (None, 0) else whole_number("top_k", self.top_k, 1)
        p = None if self.top_p is None else finite_number("top_p", self.top_p)
        if p is not None and not 0 < p <= 1:
            raise UserError(f"top_p must be in (0, 1], got {self.top_p}.")
        show = whole_number("shown top-k", self.show_k, 1, MAX_SHOW_K)
        return Settings(t, g, k, None if p is None or p >= 1 else p, show)


@dataclass
class PositionView:
    """One masked position after processing."""

    position: int
    eligible: bool  # in the current block (may be committed now)
    candidate_id: int
    candidate: str
    confidence: float  # probs[candidate]
    entropy: float  # of probs, nats
    top: list[dict]  # shown: [{token, token_id, probability, selectable}]


@dataclass
class Snapshot:
    """The state after ``step`` applies: what a rewind restores."""

    ids: list[int]  # the whole sequence
    logits: torch.Tensor | None = None  # [masked position, vocab] of a forward pass at this state
    rows: list[int] | None = None  # the masked positions the logits rows belong to
    kv: BlockKV | None = None  # the block KV cache in force after that pass (shared, not copied)
    kv_block: int | None = None  # the block it was built for
    kv_event: str | None = None  # what that pass did with the cache: refreshed | reused


class Stepper:
    """Interactive masked-diffusion generation (see the module docstring)."""

    def __init__(self, loaded: Any, prompt: str, length: int, block_length: int | None = None,
                 seed: int = 0, use_chat_template: bool = False, cache: str = "none"):
        check_unmasking_model(loaded)
        prompt = check_prompt(prompt)
        length = whole_number("length", length, 1)
        block_length = length if block_length in (None, 0) else whole_number(
            "block_length", block_length, 1, length)
        if length % block_length:
            raise UserError(f"length {length} must be a multiple of block_length {block_length}.")
        self.loaded = loaded
        self.prompt = prompt
        self.length = length
        self.block_length = block_length
        self.seed = whole_number("seed", seed, 0, MAX_SEED)
        self.cache = check_cache(loaded, cache, length // block_length, length)
        self.mask_id = mask_token_id(loaded)
        lay = canvas(loaded, prompt, length, self.mask_id, use_chat_template)
        self.passes = Passes(loaded.model, lay, self.mask_id, 0.0, self.cache, block_length)
        self.start = lay.start
        self.stops = stop_ids(loaded)
        self.ends = end_ids(loaded)
        self.mask_text = mask_text(loaded.tokenizer, self.mask_id)
        self.ids: list[int] = list(lay.ids)
        self.history: list[Snapshot] = [Snapshot(list(self.ids))]
        self.records: list[StepRecord] = []
        self.settings = Settings()
        self.logits: torch.Tensor | None = None  # [masked position, vocab]
        self.rows: list[int] = []
        self.view: list[PositionView] | None = None
        self.selection: dict[int, int] = {}  # position -> token id
        self.n_forward = 0
        self.forward_seconds: float | None = None  # the last forward pass
        self.process_seconds: float | None = None  # the last processing of stored logits
        self.total_forward_seconds = 0.0
        self._forbidden: torch.Tensor | None = None
        self._probs: torch.Tensor | None = None  # [masked position, vocab] float64

    # ------------------------------------------------------------------ facts

    @property
    def step(self) -> int:
        return len(self.history) - 1

    @property
    def region(self) -> list[int]:
        return self.ids[self.start:self.start + self.length]

    @property
    def masked(self) -> list[int]:
        return [p for p, t in enumerate(self.region) if t == self.mask_id]

    @property
    def done(self) -> bool:
        return not self.masked

    @property
    def block(self) -> int | None:
        """The current block: the first with a masked position (None when done)."""
        m = self.masked
        return m[0] // self.block_length if m else None

    @property
    def n_blocks(self) -> int:
        return self.length // self.block_length

    def eligible(self, position: int) -> bool:
        return (0 <= position < self.length and self.region[position] == self.mask_id
                and position // self.block_length == self.block)

    def tokens(self) -> list[str]:
        """The generated region as token strings (the mask token's text where masked)."""
        return [self.mask_text if i == self.mask_id else t
                for i, t in zip(self.region, token_texts(self.loaded.tokenizer, self.region),
                                strict=True)]

    def prompt_tokens(self) -> list[str]:
        return token_texts(self.loaded.tokenizer, self.ids[:self.start])

    def text(self) -> str:
        """The committed part of the region decoded (masked positions left out)."""
        return decode_content(self.loaded.tokenizer,
                              [i for i in self.region if i != self.mask_id], self.ends)

    @property
    def end(self) -> int | None:
        """The first committed end-of-sequence/padding position of the region, or None."""
        return first_end(self.region, self.ends)

    @property
    def generated_tokens(self) -> int:
        """Content tokens so far: committed positions before the first committed end."""
        end = self.end
        before = self.region if end is None else self.region[:end]
        return sum(i != self.mask_id for i in before)

    def token_text(self, token_id: int) -> str:
        return token_texts(self.loaded.tokenizer, [token_id])[0]

    # ------------------------------------------------------------------ the model

    @property
    def kv_event(self) -> str | None:
        """What the last forward pass at this state did with the KV cache (None: no cache or
        no pass yet): "refreshed" (a full pass at a block boundary) or "reused"."""
        return self.history[-1].kv_event

    def forward(self) -> list[PositionView]:
        """Run the model once on the current sequence (a full pass, or with the KV cache a
        window pass inside a block) and process its logits."""
        if self.done:
            raise UserError("Every position is committed: nothing left to predict. Rewind to an "
                            "earlier step or initialise a new generation.")
        device = model_device(self.loaded.model)
        t0 = time.perf_counter()
        with self.loaded.lock, torch.inference_mode():
            x = torch.tensor([self.ids], dtype=torch.long, device=device)
            logits, first, event = self.passes.logits(x, self.block)
            rows = [p for p in self.masked if first <= p < first + logits.shape[0]]
            kept = logits[[p - first for p in rows]].float().cpu()
        self.forward_seconds = time.perf_counter() - t0
        self.total_forward_seconds += self.forward_seconds
        self.n_forward += 1
        self.logits, self.rows = kept, rows
        snap = self.history[-1]
        snap.logits, snap.rows = kept, list(rows)
        snap.kv, snap.kv_block, snap.kv_event = self.passes.kv, self.passes.kv_block, event
        self._trim_kept_logits()
        return self.process()

    def _trim_kept_logits(self) -> None:
        total = 0
        for snap in reversed(self.history):
            if snap.logits is None:
                continue
            size = snap.logits.numel() * snap.logits.element_size()
            if total + size > KEEP_LOGITS_BYTES and snap is not self.history[-1]:
                snap.logits, snap.rows = None, None
            else:
                total += size

    # ------------------------------------------------------------------ processing

    def _noise_generator(self, salt: int) -> torch.Generator:
        return torch.Generator().manual_seed(self.seed * 1_000_003 + self.step * 7919 + salt)

    def process(self, settings: Settings | None = None) -> list[PositionView]:
        """Probabilities, candidates and shown tokens from the stored logits (no model call)."""
        if settings is not None:
            self.settings = settings.checked()
        if self.logits is None:
            raise UserError("Run a forward pass first: there are no logits for this step yet.")
        s = self.settings
        t0 = time.perf_counter()
        if self._forbidden is None:
            self._forbidden = forbidden_ids(self.loaded, self.logits.shape[-1], self.mask_id,
                                            self.stops, torch.device("cpu"))
        z = process_logits(self.logits, self._forbidden, s.top_k, s.top_p)  # float64
        probs = torch.softmax(z / s.temperature, dim=-1)
        if s.gumbel > 0:
            u = torch.rand(z.shape, dtype=torch.float64, generator=self._noise_generator(1))
            noisy = torch.log(probs) + s.gumbel * -torch.log(-torch.log(u))
            cand = noisy.argmax(dim=-1)
        else:
            cand = probs.argmax(dim=-1)
        conf = probs.gather(-1, cand[:, None]).squeeze(-1)
        ent = entropy(probs)
        shown_z = process_logits(self.logits, self._forbidden) / s.temperature
        shown_p = torch.softmax(shown_z, dim=-1)
        k = min(s.show_k, shown_p.shape[-1])
        top = torch.topk(shown_p, k, dim=-1)
        selectable = torch.isfinite(z)
        tok = self.loaded.tokenizer
        texts: dict[int, str] = {}

        def text(i: int) -> str:
            if i not in texts:
                texts[i] = token_texts(tok, [i])[0]
            return texts[i]

        view = []
        top_ids, top_vals = top.indices.tolist(), top.values.tolist()
        for r, pos in enumerate(self.rows):
            shown = [{"token": text(i), "token_id": i, "probability": v,
                      "selectable": bool(selectable[r, i])}
                     for i, v in zip(top_ids[r], top_vals[r], strict=True) if v > 0]
            c = int(cand[r])
            view.append(PositionView(pos, self.eligible(pos), c, text(c), float(conf[r]),
                                     float(ent[r]), shown))
        self._probs = probs
        self._conf, self._cand = conf, cand
        self.view = view
        self.process_seconds = time.perf_counter() - t0
        return view

    def _row(self, position: int) -> int:
        try:
            return self.rows.index(position)
        except ValueError:
            raise UserError(f"Position {position} is not masked at this step.") from None

    def probability(self, position: int, token_id: int) -> float:
        """probs[position, token] of the current processing."""
        if self._probs is None:
            raise UserError("Run a forward pass first.")
        return float(self._probs[self._row(position), token_id])

    # ------------------------------------------------------------------ choosing

    def _require_view(self) -> None:
        if self.view is None:
            raise UserError("Run a forward pass first: choose tokens from its candidates.")

    def auto_select(self, n: int, strategy: str = "low_confidence") -> list[int]:
        """Select the candidates of ``n`` eligible positions by ``strategy``; the positions."""
        self._require_view()
        n = whole_number("number of positions", n, 1)
        check_choice("strategy", strategy, STRATEGIES)
        ok = torch.tensor([self.eligible(p) and p not in self.selection for p in self.rows])
        if not bool(ok.any()):
            return []
        gen = self._noise_generator(2 + len(self.selection))
        scores = strategy_scores(strategy, self._conf, self._probs, gen)
        scores = scores.masked_fill(~ok, -math.inf)
        order = ranked(scores)[:min(n, int(ok.sum()))]
        chosen = []
        for r in order.tolist():
            pos = self.rows[r]
            self.selection[pos] = int(self._cand[r])
            chosen.append(pos)
        return chosen

    def select(self, position: int, token_id: int) -> None:
        """Choose ``token_id`` for ``position`` by hand (replaces an earlier choice there)."""
        self._require_view()
        position, token_id = int(position), int(token_id)
        row = self._row(position)
        if not self.eligible(position):
            raise UserError(f"Position {position} is in block {position // self.block_length}; "
                            f"block {self.block} still has masked positions (blocks are filled "
                            "left to right).")
        if not 0 <= token_id < self._probs.shape[-1] or self._probs[row, token_id] <= 0:
            raise UserError(f"Token {token_id} is not selectable at position {position} with the "
                            "current top-k / top-p.")
        self.selection[position] = token_id

    def set_selection(self, selection: Mapping[int, int]) -> None:
        """Replace the whole selection (checked like ``select``)."""
        self.selection = {}
        for p, t in selection.items():
            self.select(p, t)

    # ------------------------------------------------------------------ committing

    def apply(self) -> StepRecord:
        """Commit the selection: one step. The logits become stale (forward again)."""
        self._require_view()
        if not self.selection:
            raise UserError("Nothing is selected: auto-select positions or choose tokens first.")
        committed = []
        for pos in sorted(self.selection):
            tid = self.selection[pos]
            committed.append({"position": pos, "token": self.token_text(tid), "token_id": tid,
                              "confidence": self.probability(pos, tid)})
        block = self.block
        candidates = [{"position": v.position,
                       "top": [{"token": t["token"], "probability": t["probability"]}
                               for t in v.top[:5]]} for v in self.view or []]
        event = self.kv_event
        for c in committed:
            self.ids[self.start + c["position"]] = c["token_id"]
        self.history.append(Snapshot(list(self.ids)))
        record = StepRecord(self.step, block, committed, self.tokens(), candidates, self.end,
                            event, elapsed=self.total_forward_seconds)
        self.records.append(record)
        self._stale()
        return record

    def _stale(self) -> None:
        self.logits, self.rows, self.view, self._probs = None, [], None, None
        self.selection = {}

    def rewind(self, step: int) -> None:
        """Back to the state after ``step`` applies (0 = all masked), exactly; continue there."""
        step = whole_number("step", step, 0, self.step)
        self.history = self.history[:step + 1]
        self.records = self.records[:step]
        snap = self.history[-1]
        self.ids = list(snap.ids)
        self._stale()
        kept = next((h for h in reversed(self.history) if h.kv is not None), None)
        self.passes.kv = None if kept is None else kept.kv  # the cache in force at that state
        self.passes.kv_block = None if kept is None else kept.kv_block
        if snap.logits is not None:  # the forward pass made at that state, kept: no re-run
            self.logits, self.rows = snap.logits, list(snap.rows)
            self.process()

    def finish(self, n_per_step: int = 1, strategy: str = "low_confidence") -> None:
        """Forward, auto-select ``n_per_step`` (after any hand-made selection) and apply until
        nothing is masked."""
        n_per_step = whole_number("positions per step", n_per_step, 1)
        for _ in range(self.length + 1):
            if self.done:
                return
            if self.view is None:
                self.forward()
            if not self.selection:
                self.auto_select(n_per_step, strategy)
            self.apply()

    # ------------------------------------------------------------------ export

    def to_result(self) -> GenerationResult:
        """The steps so far as a GenerationResult (for the GIF / HTML exports). ``seconds`` is
        the time of the forward passes only (the choosing was yours); content tokens count the
        committed positions before the first committed end-of-sequence token."""
        seconds = max(self.total_forward_seconds, 1e-9)
        s = self.settings
        content = self.generated_tokens
        return GenerationResult(
            model=self.loaded.name, paradigm="diffusion", prompt=self.prompt, length=self.length,
            steps=self.step, block_length=self.block_length, strategy="interactive",
            threshold=None, nfe=self.n_forward, seconds=seconds,
            tokens_per_second=content / seconds, peak_memory_mb=None,
            text=self.text(), trace=[replace(r) for r in self.records], token_ids=self.region,
            generated_tokens=content, positions=self.length, temperature=s.temperature,
            seed=self.seed, time_per_token=seconds / content if content else None,
            mask_token=self.mask_text, sampling="interactive",
            peak_memory_note="not measured in step mode", cache=self.cache,
            kv_refreshes=sum(r.kv_cache == "refreshed" for r in self.records))

    def analysis_prompt(self) -> tuple[str, bool]:
        """The current sequence (masks included) as text for the analysis pipeline, and whether
        tokenising that text gives back exactly the current ids."""
        tok = self.loaded.tokenizer
        ids = list(self.ids)
        cls, sep = getattr(tok, "cls_token_id", None), getattr(tok, "sep_token_id", None)
        bos = getattr(tok, "bos_token_id", None)
        inner = ids
        if inner and inner[0] in {cls, bos} - {None}:
            inner = inner[1:]
        if inner and sep is not None and inner[-1] == sep:
            inner = inner[:-1]
        text = tok.decode(inner, skip_special_tokens=False, clean_up_tokenization_spaces=False)
        mask = getattr(tok, "mask_token", None)
        if mask and mask != "[MASK]":
            text = text.replace(mask, "[MASK]")  # analysis.capture.encode maps it back
        again = tok(text.replace("[MASK]", mask) if mask else text, add_special_tokens=True)
        return text, list(again["input_ids"]) == ids
