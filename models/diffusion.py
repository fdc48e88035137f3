"""Masked-diffusion samplers: LLaDA's commit mode (with Fast-dLLM's block KV cache and early
stopping) and the RoBERTa-as-diffusion schedule re-masking mode.

- ``diffusion_generate``: the generated region starts fully masked; every step runs one forward
  pass, proposes a token for every masked position and *commits* some of them (a committed
  token never changes). Semi-autoregressive blocks, a confidence threshold (adaptive number of
  steps), classifier-free guidance, a block-wise approximate KV cache (``cache``: prefix or
  dual, models.kv_cache) and early stopping (``early_stop``).
- ``remask_generate``: every step re-predicts *all* generated positions, then re-masks the
  least confident fraction given by a schedule (reference 002). Tokens may change.

A uniform-noise block diffusion model (DiffusionGemma, ``loaded.paradigm == "uniform"``) has
nothing to unmask: ``diffusion_generate`` hands it to ``models.uniform_diffusion``, and the
re-masking mode refuses it.

Definitions: ``models.generation``'s docstring. Every run holds ``loaded.lock`` for its passes.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass
from typing import Any

import torch

from models.common import UserError, encode_prompt, finite_number, whole_number
from models.kv_cache import BlockKV, check_cache, full_pass, window_pass
from models.measure import measured
from models.sampling import (
    MAX_SEED,
    SAMPLINGS,
    SCHEDULES,
    STRATEGIES,
    check_choice,
    check_fits,
    check_prompt,
    check_sampling,
    check_unmasking_model,
    choose,
    content_length,
    decode_content,
    end_ids,
    first_end,
    forbidden_ids,
    logits_of,
    mask_text,
    mask_token_id,
    model_device,
    num_transfer_tokens,
    process_logits,
    ranked,
    remask_counts,
    split_steps,
    stop_ids,
    strategy_scores,
    top_candidates,
)
from models.trace import GenerationResult, RawStep, records, same_steps
from models.uniform_diffusion import is_uniform, uniform_generate

# --------------------------------------------------------------------------------------------
# The canvas and its forward passes


@dataclass
class Canvas:
    """The whole input of an unmasking model: the prompt, the region to generate (masked at
    first) and the tokenizer's final special token, if any."""

    ids: list[int]  # the whole sequence with the region masked
    start: int  # first position of the generated region
    length: int


def canvas(loaded: Any, prompt: str, length: int, mask_id: int,
           use_chat_template: bool) -> Canvas:
    """[CLS] prompt [MASK]*length [SEP] for BERT-like tokenizers (the masks go before a final
    [SEP]); the masks are appended when the encoded prompt does not end with one."""
    ids = encode_prompt(loaded.tokenizer, prompt, use_chat_template, loaded.name)
    sep = getattr(loaded.tokenizer, "sep_token_id", None)
    suffix: list[int] = []
    if sep is not None and ids and ids[-1] == sep and not use_chat_template:
        ids, suffix = ids[:-1], [ids[-1]]
    check_fits(loaded, len(ids) + len(suffix), length)
    return Canvas(ids + [mask_id] * length + suffix, len(ids), length)


def with_guidance(x: torch.Tensor, lay: Canvas, mask_id: int, cfg_scale: float) -> torch.Tensor:
    """The batch one pass runs: ``x``, and with classifier-free guidance also the unconditional
    sequence (every prompt position masked)."""
    if cfg_scale <= 0:
        return x
    uncond = x.clone()
    uncond[:, :lay.start] = mask_id
    return torch.cat([x, uncond], dim=0)


def guided(logits: torch.Tensor, cfg_scale: float) -> torch.Tensor:
    """One row of logits [token, vocab] from a pass's batch: the conditional row, or with
    guidance uncond + (cfg + 1) (cond - uncond) in float64."""
    if cfg_scale <= 0:
        return logits[0]
    both = logits.to(torch.float64)
    cond, unc = both[0], both[1]
    return unc + (cfg_scale + 1.0) * (cond - unc)


class Passes:
    """The forward passes of commit-mode unmasking with or without the block KV cache.

    ``logits(x, block)``: (logits [n, vocab] of region positions first .. first + n - 1, first,
    what the pass did with the cache: None without one, "refreshed" at a block boundary (a full
    pass that rebuilt it), "reused" inside a block (a window pass that read it))."""

    def __init__(self, model: Any, lay: Canvas, mask_id: int, cfg_scale: float, cache: str,
                 block_length: int):
        self.model, self.lay, self.mask_id = model, lay, mask_id
        self.cfg_scale, self.cache, self.block_length = cfg_scale, cache, block_length
        self.kv: BlockKV | None = None
        self.kv_block: int | None = None
        self.refreshes = 0

    @property
    def per_pass(self) -> int:
        """Forward passes one step counts (guidance runs two sequences)."""
        return 2 if self.cfg_scale > 0 else 1

    def logits(self, x: torch.Tensor, block: int) -> tuple[torch.Tensor, int, str | None]:
        lay = self.lay
        batch = with_guidance(x, lay, self.mask_id, self.cfg_scale)
        region = slice(lay.start, lay.start + lay.length)
        if self.cache == "none":
            return guided(logits_of(self.model, batch)[:, region], self.cfg_scale), 0, None
        if self.kv_block != block:
            out, self.kv = full_pass(self.model, batch)
            self.kv_block = block
            self.refreshes += 1
            return guided(out[:, region], self.cfg_scale), 0, "refreshed"
        first = block * self.block_length
        start = lay.start + first
        end = start + self.block_length
        out = window_pass(self.model, batch, start, end, self.kv, self.cache)
        n = self.block_length if self.cache == "dual" else lay.length - first
        return guided(out[:, :n], self.cfg_scale), first, "reused"


# --------------------------------------------------------------------------------------------
# Commit mode (LLaDA-style)


@dataclass(frozen=True)
class CommitSettings:
    """Checked settings of one commit-mode run (see ``diffusion_generate``)."""

    length: int
    steps: int
    block_length: int
    strategy: str
    threshold: float | None
    temperature: float
    top_k: int | None
    top_p: float | None
    seed: int
    cfg_scale: float
    n_candidates: int
    cache: str
    early_stop: bool

    @property
    def n_blocks(self) -> int:
        return self.length // self.block_length


def commit_settings(loaded: Any, length: Any, steps: Any = None, block_length: Any = None,
                    strategy: str = "low_confidence", threshold: Any = None,
                    temperature: Any = 0.0, top_k: Any = None, top_p: Any = None, seed: Any = 0,
                    cfg_scale: Any = 0.0, n_candidates: Any = 5, cache: str = "none",
                    early_stop: bool = False) -> CommitSettings:
    """The settings checked once, here; UserError with a message that says what works."""
    check_unmasking_model(loaded)
    length = whole_number("length", length, 1)
    steps = length if steps is None else whole_number("steps", steps, 1, length)
    block_length = length if block_length is None else whole_number("block_length",
                                                                    block_length, 1, length)
    if length % block_length:
        raise UserError(f"length {length} must be a multiple of block_length {block_length}.")
    n_blocks = length // block_length
    if threshold is None and steps < n_blocks:
        raise UserError(f"steps ({steps}) must be at least the number of blocks ({n_blocks}): "
                        "every block needs a step.")
    if threshold is not None:
        threshold = finite_number("threshold", threshold)
        if not 0 < threshold <= 1:
            raise UserError(f"threshold must be in (0, 1], got {threshold}.")
    check_choice("strategy", strategy, STRATEGIES)
    temperature = check_sampling(temperature, top_k, top_p)
    cfg_scale = finite_number("cfg_scale", cfg_scale)
    if cfg_scale < 0:
        raise UserError(f"cfg_scale must be 0 (off) or positive, got {cfg_scale}.")
    n_candidates = whole_number("n_candidates", n_candidates, 0)
    seed = whole_number("seed", seed, 0, MAX_SEED)
    cache = check_cache(loaded, cache, n_blocks, length)
    return CommitSettings(length, steps, block_length, strategy, threshold, temperature, top_k,
                          top_p, seed, cfg_scale, n_candidates, cache, bool(early_stop))


class _CommitRun:
    """One commit-mode generation: blocks left to right, steps inside each block. Callable, and
    deterministic for its seed, so the peak-memory replay repeats it exactly."""

    def __init__(self, loaded: Any, s: CommitSettings, lay: Canvas, mask_id: int):
        self.loaded, self.s, self.lay, self.mask_id = loaded, s, lay, mask_id
        self.device = model_device(loaded.model)
        self.stops, self.ends = stop_ids(loaded), end_ids(loaded)
        self.block_steps = split_steps(s.steps, s.n_blocks)
        self.forbidden: torch.Tensor | None = None

    def __call__(self) -> tuple[list[int], list[RawStep], int, int]:
        """(region ids at the end, raw steps, forward passes, KV-cache refreshes)."""
        s, lay = self.s, self.lay
        gen = torch.Generator(device=self.device).manual_seed(s.seed)
        passes = Passes(self.loaded.model, lay, self.mask_id, s.cfg_scale, s.cache,
                        s.block_length)
        raw: list[RawStep] = []
        nfe = 0
        t0 = time.perf_counter()
        x = torch.tensor([lay.ids], dtype=torch.long, device=self.device)
        masked = torch.ones(s.length, dtype=torch.bool, device=self.device)
        block_of = torch.arange(s.length, device=self.device) // s.block_length
        for b in range(s.n_blocks):
            in_block = block_of == b
            plan = (None if s.threshold is not None
                    else num_transfer_tokens(s.block_length, self.block_steps[b]))
            i = 0
            while bool((masked & in_block).any()):
                logits, first, kv = passes.logits(x, b)
                nfe += passes.per_pass
                step = self._step(logits, first, x, masked, in_block, b,
                                  None if plan is None else plan[i], gen)
                step.kv_cache, step.elapsed = kv, time.perf_counter() - t0
                raw.append(step)
                i += 1
                if s.early_stop and self._stop(step, masked, b):
                    return step.region, raw, nfe, passes.refreshes
        return x[0, lay.start:lay.start + s.length].tolist(), raw, nfe, passes.refreshes

    def _step(self, logits: torch.Tensor, first: int, x: torch.Tensor, masked: torch.Tensor,
              in_block: torch.Tensor, block: int, n_take: int | None,
              gen: torch.Generator) -> RawStep:
        """Choose and commit in one step from the logits of region positions ``first`` ..
        (every masked one of them is a row); the committed positions are unmasked in place."""
        s, lay = self.s, self.lay
        if self.forbidden is None:
            self.forbidden = forbidden_ids(self.loaded, logits.shape[-1], self.mask_id,
                                           self.stops, self.device)
        rows = masked.nonzero().squeeze(-1)  # masked positions of the region ...
        if first or logits.shape[0] < s.length:  # ... that the pass computed
            rows = rows[(rows >= first) & (rows < first + logits.shape[0])]
        z = process_logits(logits[rows - first], self.forbidden, s.top_k, s.top_p)
        probs = torch.softmax(z, dim=-1)
        cand = choose(z, s.temperature, gen)
        conf = probs.gather(-1, cand[:, None]).squeeze(-1)
        eligible = in_block[rows]
        scores = strategy_scores(s.strategy, conf, probs, gen)
        scores = scores.masked_fill(~eligible, -math.inf)
        order = ranked(scores)
        if n_take is not None:
            take = order[:n_take]
        else:
            sure = (eligible & (conf >= s.threshold)).nonzero().squeeze(-1)
            take = sure if sure.numel() else order[:1]
        pos = rows[take]
        x[0, lay.start + pos] = cand[take]
        masked[pos] = False
        return RawStep(
            block,
            list(zip(pos.tolist(), cand[take].tolist(), conf[take].tolist(), strict=True)),
            x[0, lay.start:lay.start + s.length].tolist(),
            top_candidates(probs, rows.tolist(), s.n_candidates))

    def _stop(self, step: RawStep, masked: torch.Tensor, block: int) -> bool:
        """Early stopping: True (with the reason in the step's note) once the content is
        decided: an end-of-sequence token is committed, no position before it is masked, and
        masked positions are left after it (padding, whatever they would become)."""
        end = first_end([t if not m else -1 for t, m in zip(step.region, masked.tolist(),
                                                             strict=True)], self.ends)
        if end is None or bool(masked[:end].any()) or not bool(masked.any()):
            return False
        left = int(masked.sum())
        blocks = self.s.n_blocks - block - 1
        later = f", {blocks} later block{'s' if blocks != 1 else ''} never run" if blocks else ""
        step.note = (f"early stop: the content ends at position {end} (an end-of-sequence token "
                     f"committed with nothing masked before it); {left} masked position"
                     f"{'s' if left != 1 else ''} after it left uncomputed{later}")
        return True


def diffusion_generate(loaded: Any, prompt: str, length: int, steps: int | None = None,
                       block_length: int | None = None, strategy: str = "low_confidence",
                       threshold: float | None = None, temperature: float = 0.0,
                       top_k: int | None = None, top_p: float | None = None, seed: int = 0,
                       cfg_scale: float = 0.0, n_candidates: int = 5,
                       use_chat_template: bool = False, measure_memory: bool = True,
                       cache: str = "none", early_stop: bool = False) -> GenerationResult:
    """Generate ``length`` tokens by iterative unmasking; see the module docstring.

    Blocks: the region is split into ``length // block_length`` blocks filled left to right
    (semi-autoregressive); only masked positions of the current block can be committed. Steps:
    ``steps`` (default ``length``) are split over the blocks as evenly as possible (earlier
    blocks get the extra step when they do not divide), and within a block the tokens per step
    follow ``num_transfer_tokens``. Threshold mode (``threshold`` in (0, 1]): every step commits
    each masked position of the current block whose confidence is at least ``threshold`` (at
    least the strategy's best one), so the number of steps adapts; ``steps`` is then only
    checked, not used, and the steps actually taken are reported. ``cache``: "none", or
    Fast-dLLM's block KV cache, "prefix" or "dual" (models.kv_cache; needs two or more blocks).
    ``early_stop``: end the run once its content is decided (an end-of-sequence token committed
    with nothing masked before it); the trace's last step says so, and ``token_ids`` then end
    at that token like an autoregressive run's. ``measure_memory=False`` skips the peak-memory
    measurement (on CPU an untimed profiled replay). A uniform-noise model (``loaded.paradigm``
    "uniform", DiffusionGemma) runs ``models.uniform_diffusion.uniform_generate`` instead, with
    these settings checked there (those of masked diffusion only at their defaults).
    """
    if is_uniform(loaded):  # DiffusionGemma: its own sampler, settings checked there
        return uniform_generate(loaded, prompt, length, steps=steps, block_length=block_length,
                                strategy=strategy, threshold=threshold, temperature=temperature,
                                top_k=top_k, top_p=top_p, seed=seed, cfg_scale=cfg_scale,
                                n_candidates=n_candidates, use_chat_template=use_chat_template,
                                measure_memory=measure_memory, cache=cache,
                                early_stop=early_stop)
    s = commit_settings(loaded, length, steps, block_length, strategy, threshold, temperature,
                        top_k, top_p, seed, cfg_scale, n_candidates, cache, early_stop)
    prompt = check_prompt(prompt)
    mask_id = mask_token_id(loaded)
    lay = canvas(loaded, prompt, s.length, mask_id, use_chat_template)
    run = _CommitRun(loaded, s, lay, mask_id)
    device = run.device
    with loaded.lock, torch.inference_mode():
        (region, raw, nfe, refreshes), seconds, peak, note = measured(
            device, run, measure_memory, same_steps)
    stop_note = raw[-1].note if raw else ""
    if stop_note:
        region = region[:first_end(region, run.ends) + 1]  # the content and its end token
    return _result(loaded, prompt, s.length, region, raw, nfe, seconds, peak, note, mask_id,
                   block_length=s.block_length, strategy=s.strategy, threshold=s.threshold,
                   temperature=s.temperature, seed=s.seed,
                   sampling="greedy" if s.temperature == 0 else "sample", cache=s.cache,
                   kv_refreshes=refreshes, early_stop=s.early_stop, stop_note=stop_note)


def _result(loaded: Any, prompt: str, length: int, region: list[int], raw: list[RawStep],
            nfe: int, seconds: float, peak: float | None, note: str, mask_id: int,
            **fields: Any) -> GenerationResult:
    """The GenerationResult of a diffusion run (content counted, the trace as text)."""
    tok, ends = loaded.tokenizer, end_ids(loaded)
    text_of_mask = mask_text(tok, mask_id)
    content = content_length(region, ends)
    return GenerationResult(
        model=loaded.name, paradigm="diffusion", prompt=prompt, length=length,
        steps=len(raw), nfe=nfe, seconds=seconds, tokens_per_second=content / seconds,
        peak_memory_mb=peak, text=decode_content(tok, region, ends),
        trace=records(tok, raw, mask_id, text_of_mask, ends), token_ids=region,
        generated_tokens=content, positions=length,
        time_per_token=seconds / content if content else None, mask_token=text_of_mask,
        peak_memory_note=note, **fields)


# --------------------------------------------------------------------------------------------
# Schedule re-masking (RoBERTa diffusion, reference 002)


def remask_generate(loaded: Any, prompt: str, length: int, steps: int,
                    schedule: str = "linear", sampling: str = "greedy", top_k: int = 50,
                    top_p: float = 0.9, temperature: float = 1.0, seed: int = 0,
                    n_candidates: int = 5, use_chat_template: bool = False,
                    measure_memory: bool = True) -> GenerationResult:
    """Start fully masked; each step re-predicts every generated position (greedy, top-k or
    nucleus sampling at ``temperature``) and then re-masks the ``remask_counts`` least
    confident positions. A step's ``committed`` lists the positions left unmasked whose token is
    new (was masked or different before the step)."""
    check_unmasking_model(loaded)
    prompt = check_prompt(prompt)
    length = whole_number("length", length, 1)
    steps = whole_number("steps", steps, 1, length)
    check_choice("schedule", schedule, SCHEDULES)
    check_choice("sampling", sampling, SAMPLINGS)
    temperature = check_sampling(temperature, top_k, top_p)
    if sampling != "greedy" and temperature == 0:
        raise UserError(f"{sampling} sampling needs a positive temperature.")
    seed = whole_number("seed", seed, 0, MAX_SEED)
    n_candidates = whole_number("n_candidates", n_candidates, 0)
    mask_id = mask_token_id(loaded)
    k = top_k if sampling == "top_k" else None
    p = top_p if sampling == "nucleus" else None
    t = 0.0 if sampling == "greedy" else temperature
    lay = canvas(loaded, prompt, length, mask_id, use_chat_template)
    counts = remask_counts(length, steps, schedule)
    model, device = loaded.model, model_device(loaded.model)
    stops = stop_ids(loaded)

    def run() -> tuple[list[int], list[RawStep], int]:
        gen = torch.Generator(device=device).manual_seed(seed)
        raw: list[RawStep] = []
        t0 = time.perf_counter()
        x = torch.tensor([lay.ids], dtype=torch.long, device=device)
        region = slice(lay.start, lay.start + length)
        forbidden = None
        for step in range(steps):
            logits = logits_of(model, x)[0, region]
            if forbidden is None:
                forbidden = forbidden_ids(loaded, logits.shape[-1], mask_id, stops, device)
            z = process_logits(logits, forbidden, k, p)
            probs = torch.softmax(z, dim=-1)
            cand = choose(z, t, gen)
            conf = probs.gather(-1, cand[:, None]).squeeze(-1)
            before = x[0, region].clone()
            was_masked = (before == mask_id).nonzero().squeeze(-1).tolist()
            new = cand.clone()
            new[ranked(-conf)[:counts[step]]] = mask_id  # the least confident, ties by position
            x[0, region] = new
            changed = ((new != before) & (new != mask_id)).nonzero().squeeze(-1)
            raw.append(RawStep(
                0, list(zip(changed.tolist(), new[changed].tolist(), conf[changed].tolist(),
                            strict=True)),
                new.tolist(), top_candidates(probs[was_masked], was_masked, n_candidates),
                elapsed=time.perf_counter() - t0))
        return x[0, region].tolist(), raw, steps

    with loaded.lock, torch.inference_mode():
        (region_ids, raw, nfe), seconds, peak, note = measured(device, run, measure_memory,
                                                               same_steps)
    return _result(loaded, prompt, length, region_ids, raw, nfe, seconds, peak, note, mask_id,
                   block_length=length, strategy=f"remask_{schedule}", threshold=None,
                   temperature=t, seed=seed, sampling=sampling)
