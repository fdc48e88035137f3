"""Uniform-noise block diffusion (DiffusionGemma, transformers' ``diffusion_gemma``), every
denoising step recorded in the project's trace format.

The model's own ``generate`` (transformers/models/diffusion_gemma/generation_diffusion_gemma.py)
runs its loop in one call; this module runs the same algorithm as its own loop over the model's
forward passes, so every step is seen, timed and counted like ``models.diffusion``'s samplers.
Same semantics, same random draws in the same order (a seeded run gives the tokens of
``model.generate`` after ``torch.manual_seed(seed)`` on the CPU; a test checks it):

- *Blocks*: the region is written in blocks of the model's ``canvas_length`` C positions, left
  to right (autoregressively over blocks); ``length`` is rounded up to whole blocks, as the
  model's ``generate`` does with ``max_new_tokens``. Before a block the encoder reads what is not
  cached yet (the prompt, then the previous block's final tokens) into the KV cache: one
  *encoder pass*. The decoder reads that cache and never writes it.
- *Uniform noise*: a block's canvas starts as C tokens drawn uniformly from the vocabulary.
  Nothing is ever masked: every position always holds a token.
- *A denoising step* (``cur`` = N, N-1, .., 1 steps left, N = ``steps``, the model's
  ``max_denoising_steps``) is one decoder forward pass over the canvas, with the previous step's
  processed logits as self-conditioning (none at a block's first step). The logits are divided by
  the temperature t_min + (t_max - t_min) * cur / N (the *processed* logits); a token is sampled
  at every position from their softmax, and the *draft* is their argmax.
- *Acceptance* (the entropy-bound sampler): with the positions sorted by the entropy of the
  processed distribution, the k lowest-entropy ones are accepted while (sum of their entropies)
  - (the largest of them) <= ``entropy_bound`` (so at least one per step). *Re-noising*: the
  accepted positions keep their sampled token in the canvas, every other position gets a fresh
  uniform token. The next step sees the accepted tokens, but nothing is committed: a position
  accepted now is re-noised later unless it is accepted again, and its token may change.
- *Adaptive stop*: a block ends when its draft equals the drafts of the previous
  ``stability_threshold`` steps and the mean entropy of the processed distribution is below
  ``confidence_threshold``; otherwise after N steps. The block's tokens are its last draft.
- After a block holding an end-of-sequence token (the generation config's), every position
  after the first one becomes padding and the run ends: later blocks are never run.

The trace (models.trace): one ``StepRecord`` per denoising step = per decoder forward pass.
``tokens``: finished blocks' final tokens, the current block's draft, later blocks as
``PENDING``; ``committed``: the positions accepted in the step, with the sampled token and its
probability under the processed distribution (the *confidence*); ``candidates``: the top tokens
of that distribution at every position of the block; ``changed``: positions whose shown token
differs from the previous step's; ``revised``: those of them the sampler had accepted at an
earlier step of their block (an accepted token that changed), also named in the step's ``note``.

Counts (``models.generation``'s definitions): ``nfe`` = decoder forward passes (= steps = trace
records; the model's own ``tokens_per_forward`` divides by the same count); ``encoder_passes``
apart; content tokens end at the first end-of-sequence/padding token; seconds and peak memory by
``models.measure``. Every run holds ``loaded.lock`` for its passes.
"""

from __future__ import annotations

import math
import time
from collections import deque
from dataclasses import dataclass
from typing import Any

import torch

from models.common import UserError, encode_prompt, finite_number, whole_number
from models.measure import measured
from models.sampling import (
    MAX_SEED,
    check_prompt,
    content_length,
    decode_content,
    end_ids,
    id_list,
    model_device,
    stop_ids,
    top_candidates,
)
from models.trace import PENDING, GenerationResult, RawStep, records, same_steps

PENDING_ID = -1  # region id of a position whose block has not started (shown as PENDING)
STRATEGY = "entropy_bound"  # what GenerationResult.strategy says for these runs
# transformers' defaults for what a checkpoint's generation_config.json leaves unset
# (DiffusionGemmaGenerationConfig._get_default_generation_params)
LIBRARY_DEFAULTS = {"max_denoising_steps": 48, "entropy_bound": 0.1, "t_min": 0.4, "t_max": 0.8,
                    "stability_threshold": 1, "confidence_threshold": 0.005}
MAX_STEPS = 10_000  # denoising steps per block the settings accept
MAX_NOTED_REVISIONS = 6  # revisions named in a step's note (all are in ``revised``)


def is_uniform(loaded: Any) -> bool:
    """True for a uniform-noise diffusion model (models.loading.Loaded.paradigm)."""
    return getattr(loaded, "paradigm", "masked") == "uniform"


def model_defaults(model: Any) -> dict:
    """The sampler settings of the checkpoint's generation config, transformers' defaults for
    what it leaves unset."""
    gen = getattr(model, "generation_config", None)
    out = dict(LIBRARY_DEFAULTS)
    for key in ("max_denoising_steps", "t_min", "t_max", "stability_threshold",
                "confidence_threshold"):
        value = getattr(gen, key, None)
        if value is not None:
            out[key] = value
    sampler = getattr(gen, "sampler_config", None)
    bound = (sampler.get("entropy_bound") if isinstance(sampler, dict)
             else getattr(sampler, "entropy_bound", None))
    if bound is not None:
        out["entropy_bound"] = bound
    return out


# --------------------------------------------------------------------------------------------
# Settings: checked once, here


@dataclass(frozen=True)
class UniformSettings:
    length: int  # asked for
    canvas: int  # the model's canvas_length: the block length
    n_blocks: int
    steps: int  # the most denoising steps per block (max_denoising_steps)
    entropy_bound: float
    t_min: float
    t_max: float
    stability_threshold: int
    confidence_threshold: float
    seed: int
    n_candidates: int
    early_stop: bool

    @property
    def positions(self) -> int:
        return self.n_blocks * self.canvas

    def sampler(self) -> dict:
        """What GenerationResult.sampler (and the JSON) records."""
        return {"name": "entropy-bound sampler, uniform noise", "canvas_length": self.canvas,
                "max_denoising_steps": self.steps, "entropy_bound": self.entropy_bound,
                "t_max": self.t_max, "t_min": self.t_min,
                "stability_threshold": self.stability_threshold,
                "confidence_threshold": self.confidence_threshold}


def _refuse(loaded: Any, setting: str, why: str) -> UserError:
    return UserError(f"{setting} does not apply to '{loaded.name}', a uniform-noise block "
                     f"diffusion model (DiffusionGemma): {why}")


def uniform_settings(loaded: Any, length: Any, steps: Any = None, block_length: Any = None,
                     strategy: str | None = None, threshold: Any = None, temperature: Any = 0.0,
                     top_k: Any = None, top_p: Any = None, seed: Any = 0, cfg_scale: Any = 0.0,
                     n_candidates: Any = 5, cache: str = "none", early_stop: bool = False,
                     entropy_bound: Any = None, t_min: Any = None, t_max: Any = None,
                     stability_threshold: Any = None,
                     confidence_threshold: Any = None) -> UniformSettings:
    """The settings of one run; a UserError naming what works for a setting of masked diffusion
    (cache modes, strategies, a confidence threshold, temperature, top-k/top-p, guidance)."""
    model = loaded.model
    size = getattr(model.config, "canvas_length", None)
    if not isinstance(size, int) or size < 1 or getattr(model, "model", None) is None or \
            getattr(model.model, "encoder", None) is None:
        raise UserError(f"'{loaded.name}' is marked as uniform-noise block diffusion but is not a "
                        "DiffusionGemmaForBlockDiffusion (no canvas_length, encoder and decoder).")
    length = whole_number("length", length, 1)
    if block_length not in (None, 0, size):
        raise _refuse(loaded, f"block length {block_length}",
                      f"its blocks are its canvas, {size} positions (canvas_length in its "
                      f"config). Leave the block length empty (or 0), or set it to {size}.")
    if strategy not in (None, "low_confidence"):
        raise _refuse(loaded, f"strategy '{strategy}'",
                      "it ranks masked positions; this model's sampler accepts the lowest-entropy "
                      "positions under an entropy bound. Leave the strategy at its default "
                      "(low_confidence).")
    if threshold is not None:
        raise _refuse(loaded, "a confidence threshold",
                      "its sampler accepts positions under an entropy bound and stops each block "
                      "adaptively (stable and confident). Leave the threshold empty.")
    if finite_number("temperature", temperature) != 0:
        raise _refuse(loaded, f"temperature {temperature}",
                      "it samples every step at its own linear temperature schedule (t_max to "
                      "t_min over a block's steps, from its generation config). Leave the "
                      "temperature at 0.")
    if top_k is not None or top_p is not None:
        raise _refuse(loaded, "top-k/top-p",
                      "it samples from the whole temperature-scaled distribution. Leave top-k "
                      "and top-p empty.")
    if finite_number("cfg_scale", cfg_scale) != 0:
        raise _refuse(loaded, "classifier-free guidance",
                      "its sampler has none. Use cfg_scale 0.")
    if cache != "none":
        raise _refuse(loaded, f"cache '{cache}'",
                      "Fast-dLLM's prefix and dual caches serve masked diffusion; this model "
                      "always keeps its own exact KV cache of the prompt and finished blocks (its "
                      "encoder writes it, its decoder reads it). Use cache none.")
    d = model_defaults(model)
    steps = whole_number("steps", d["max_denoising_steps"] if steps is None else steps, 1,
                         MAX_STEPS)
    bound = finite_number("entropy_bound", d["entropy_bound"] if entropy_bound is None
                          else entropy_bound)
    lo = finite_number("t_min", d["t_min"] if t_min is None else t_min)
    hi = finite_number("t_max", d["t_max"] if t_max is None else t_max)
    stable = whole_number("stability_threshold", d["stability_threshold"]
                          if stability_threshold is None else stability_threshold, 0)
    sure = finite_number("confidence_threshold", d["confidence_threshold"]
                         if confidence_threshold is None else confidence_threshold)
    if bound <= 0 or sure <= 0:
        raise UserError("entropy_bound and confidence_threshold must be positive.")
    if not 0 <= lo < hi:
        raise UserError(f"the temperature schedule needs 0 <= t_min < t_max (got {lo}, {hi}).")
    return UniformSettings(length, size, math.ceil(length / size), steps, bound, lo, hi, stable,
                           sure, whole_number("seed", seed, 0, MAX_SEED),
                           whole_number("n_candidates", n_candidates, 0), bool(early_stop))


def _check_fits(loaded: Any, n_prompt: int, positions: int) -> None:
    text = loaded.model.config.get_text_config()
    limit = getattr(text, "max_position_embeddings", None)
    if isinstance(limit, int) and n_prompt + positions > limit:
        raise UserError(f"length {positions} does not fit: '{loaded.name}' takes {limit} tokens "
                        f"and the prompt uses {n_prompt}.")


# --------------------------------------------------------------------------------------------
# The run


@dataclass
class _Denoised:
    """What one denoising step computed (batch of one)."""

    z: torch.Tensor  # processed (temperature-scaled) logits [1, C, vocab]
    probs: torch.Tensor  # their softmax, float32
    sampled: torch.Tensor  # [1, C] a sample at every position
    draft: torch.Tensor  # [1, C] the argmax
    entropy: torch.Tensor  # [1, C] nats
    take: torch.Tensor  # [1, C] bool: accepted
    canvas: torch.Tensor  # [1, C] the next step's input: accepted samples, the rest noise


class _UniformRun:
    """One generation: blocks left to right, denoising steps inside each. Callable, and
    deterministic for its seed, so the peak-memory replay repeats it exactly."""

    def __init__(self, loaded: Any, s: UniformSettings, prompt_ids: list[int]):
        self.loaded, self.s, self.prompt_ids = loaded, s, prompt_ids
        model = loaded.model
        self.device = model_device(model)
        self.vocab = int(model.config.get_text_config().vocab_size)
        gen_cfg = getattr(model, "generation_config", None)
        self.eos = set(id_list(getattr(gen_cfg, "eos_token_id", None))) or stop_ids(loaded)
        pad = getattr(gen_cfg, "pad_token_id", None)
        if pad is None:
            pad = getattr(loaded.tokenizer, "pad_token_id", None)
        self.pad = None if pad is None else int(pad)
        decoder = getattr(model.model, "decoder", None)
        embed = getattr(decoder, "embed_tokens", None)
        self.sc_dtype = embed.weight.dtype if embed is not None else model.dtype

    def _encode(self, ids: list[int], first: int, cache: Any) -> None:
        """The encoder over positions first .. first + len(ids) - 1, written into ``cache``
        (causal over the prompt and finished blocks, as the model's generate builds it)."""
        model, device, n = self.loaded.model, self.device, len(ids)
        encoder = model.model.encoder
        x = torch.tensor([ids], dtype=torch.long, device=device)
        pos = torch.arange(first, first + n, dtype=torch.int32, device=device)[None]
        seen = torch.ones((1, first + n), dtype=torch.bool, device=device)
        masks: Any = seen
        make = getattr(encoder, "create_masks_for_generate", None)
        if callable(make):
            masks = make(config=model.config, attention_mask=seen, cache=cache, position_ids=pos,
                         inputs_embeds=torch.empty((1, n, 0), dtype=model.dtype, device=device))
        encoder(input_ids=x, attention_mask=masks, cache=cache, position_ids=pos)

    def _denoise(self, canvas: torch.Tensor, condition: torch.Tensor | None, cur: int,
                 pos: torch.Tensor, cache: Any, gen: torch.Generator) -> _Denoised:
        """One denoising step: the decoder's pass, the temperature, the samples, the draft, the
        entropy-bound acceptance and the re-noised canvas (random draws in generate()'s order:
        the samples, then the noise)."""
        s, vocab, size = self.s, self.vocab, self.s.canvas
        out = self.loaded.run(decoder_input_ids=canvas, self_conditioning_logits=condition,
                              cache=cache, decoder_position_ids=pos)
        temperature = s.t_min + (s.t_max - s.t_min) * (
            torch.tensor(cur, dtype=torch.int32, device=self.device) / s.steps)
        z = out.logits / temperature  # processed logits [1, size, vocab]
        probs = torch.softmax(z, dim=-1, dtype=torch.float32)
        sampled = torch.multinomial(probs.view(-1, vocab), 1, generator=gen).view(1, size)
        ent = torch.distributions.Categorical(logits=z).entropy()  # [1, size], nats
        low, order = torch.sort(ent, dim=-1)
        take_sorted = torch.cumsum(low, dim=-1) - low <= s.entropy_bound
        take = torch.zeros_like(take_sorted).scatter(-1, order, take_sorted)
        noise = torch.randint(0, vocab, (1, size), generator=gen, device=self.device)
        return _Denoised(z, probs, sampled, z.argmax(dim=-1), ent, take,
                         torch.where(take, sampled, noise))  # accepted kept, the rest re-noised

    def _stop_note(self, block: int, steps: int, mean_entropy: float) -> str:
        s = self.s
        stable = (f"its draft was unchanged for {s.stability_threshold} step"
                  f"{'s' if s.stability_threshold != 1 else ''} before and " if
                  s.stability_threshold else "")
        return (f"block {block} stopped adaptively after {steps} step{'s' * (steps != 1)}: "
                f"{stable}the mean entropy {mean_entropy:.4g} is below "
                f"{s.confidence_threshold:g}")

    def __call__(self) -> tuple[list[int], list[RawStep], int, int, str]:
        """(region ids of the blocks run, raw steps, decoder passes, encoder passes, stop note)."""
        from transformers import DynamicCache

        s, device, loaded, size = self.s, self.device, self.loaded, self.s.canvas
        gen = torch.Generator(device=device).manual_seed(s.seed)
        cache = DynamicCache(config=loaded.model.config.get_text_config(decoder=True))
        n_prompt = len(self.prompt_ids)
        region = [PENDING_ID] * s.positions
        raw: list[RawStep] = []
        nfe = encoder_passes = 0
        fresh, first = list(self.prompt_ids), 0  # what the encoder has not read yet, from where
        stop_note = ""
        t0 = time.perf_counter()
        for b in range(s.n_blocks):
            self._encode(fresh, first, cache)
            encoder_passes += 1
            start = n_prompt + b * size  # the block's first absolute position
            where = list(range(b * size, (b + 1) * size))  # its region positions
            canvas = torch.randint(0, self.vocab, (1, size), generator=gen, device=device)
            pos = torch.arange(start, start + size, dtype=torch.int32, device=device)[None]
            condition = None  # self-conditioning logits: none at a block's first step
            drafts: deque = deque(maxlen=max(s.stability_threshold, 1))  # the previous drafts
            accepted_at: dict[int, int] = {}  # block position -> step (1-based) last accepting it
            previous: list[int] | None = None  # the previous step's draft
            end = None
            for cur in range(s.steps, 0, -1):
                d = self._denoise(canvas, condition, cur, pos, cache, gen)
                nfe += 1
                canvas, condition = d.canvas, d.z.to(self.sc_dtype)
                mean_entropy = float(d.entropy.mean())
                stable = s.stability_threshold == 0 or (
                    len(drafts) == s.stability_threshold
                    and all(bool(torch.equal(x, d.draft)) for x in drafts))
                drafts.append(d.draft)
                stopped = stable and mean_entropy < s.confidence_threshold
                last = stopped or cur == 1
                draft = d.draft[0].tolist()
                ids = list(draft)
                if last:  # the block's tokens: its last draft, padded after an end token
                    end = next((i for i, t in enumerate(ids) if t in self.eos), None)
                    if end is not None and self.pad is not None:
                        ids[end + 1:] = [self.pad] * (size - end - 1)
                before = list(region)
                region[b * size:(b + 1) * size] = ids
                acc = d.take[0].nonzero().squeeze(-1).tolist()
                chosen = d.sampled[0, acc]
                conf = d.probs[0, acc].gather(-1, chosen[:, None]).squeeze(-1).tolist()
                revised = [] if previous is None else [
                    (where[i], draft[i], previous[i], accepted_at[i]) for i in range(size)
                    if draft[i] != previous[i] and i in accepted_at]
                previous = draft
                step_no = len(raw) + 1
                accepted_at.update((i, step_no) for i in acc)
                raw.append(RawStep(
                    b, [(where[i], t, c) for i, t, c in zip(acc, chosen.tolist(), conf,
                                                             strict=True)],
                    list(region), top_candidates(d.probs[0], where, s.n_candidates),
                    note=self._stop_note(b, s.steps - cur + 1, mean_entropy) if stopped else "",
                    elapsed=time.perf_counter() - t0,
                    changed=[p for p, (x, y) in enumerate(zip(before, region, strict=True))
                             if x != y],
                    revised=revised))
                if last:
                    break
            if end is not None:
                left = s.n_blocks - b - 1
                if left:
                    stop_note = (f"the end-of-sequence token at position {b * size + end} ended "
                                 f"the run after block {b}: {left} later block"
                                 f"{'s' if left != 1 else ''} never run")
                    raw[-1].note = "; ".join(x for x in (raw[-1].note, stop_note) if x)
                break
            fresh, first = ids, start
        return region[:len(region) - region.count(PENDING_ID)], raw, nfe, encoder_passes, stop_note


def _revision_note(rec: Any) -> str:
    items = [f"#{r['position']} {r['previous']!r} → {r['token']!r} (accepted at step "
             f"{r['accepted_step']})" for r in rec.revised[:MAX_NOTED_REVISIONS]]
    more = len(rec.revised) - len(items)
    return ("accepted earlier, changed now: " + ", ".join(items)
            + (f" and {more} more" if more > 0 else ""))


def uniform_generate(loaded: Any, prompt: str, length: int, steps: int | None = None,
                     block_length: int | None = None, strategy: str | None = None,
                     threshold: float | None = None, temperature: float = 0.0,
                     top_k: int | None = None, top_p: float | None = None, seed: int = 0,
                     cfg_scale: float = 0.0, n_candidates: int = 5,
                     use_chat_template: bool = False, measure_memory: bool = True,
                     cache: str = "none", early_stop: bool = False,
                     entropy_bound: float | None = None, t_min: float | None = None,
                     t_max: float | None = None, stability_threshold: int | None = None,
                     confidence_threshold: float | None = None) -> GenerationResult:
    """Generate about ``length`` tokens (rounded up to whole blocks) with a uniform-noise block
    diffusion model; see the module docstring. ``steps``: the most denoising steps per block
    (default: the model's ``max_denoising_steps``). ``entropy_bound``, ``t_min``, ``t_max``,
    ``stability_threshold``, ``confidence_threshold``: the sampler's settings (default: the
    model's generation config). The arguments of masked diffusion are taken so every caller can
    pass its settings through: at their defaults they are ignored, otherwise a UserError says
    what works. ``early_stop`` is recorded; the run always ends after the block holding an
    end-of-sequence token, as the model's own generate does."""
    s = uniform_settings(loaded, length, steps, block_length, strategy, threshold, temperature,
                         top_k, top_p, seed, cfg_scale, n_candidates, cache, early_stop,
                         entropy_bound, t_min, t_max, stability_threshold, confidence_threshold)
    prompt = check_prompt(prompt)
    ids = encode_prompt(loaded.tokenizer, prompt, use_chat_template, loaded.name)
    _check_fits(loaded, len(ids), s.positions)
    run = _UniformRun(loaded, s, ids)
    with loaded.lock, torch.inference_mode():
        (region, raw, nfe, encoder_passes, stop_note), seconds, peak, note = measured(
            run.device, run, measure_memory, same_steps)
    tok, ends = loaded.tokenizer, end_ids(loaded)
    trace = records(tok, raw, PENDING_ID, PENDING, ends)
    for rec in trace:
        if rec.revised:
            rec.note = "; ".join(x for x in (_revision_note(rec), rec.note) if x)
    content = content_length(region, ends)
    return GenerationResult(
        model=loaded.name, paradigm="diffusion", prompt=prompt, length=s.length, steps=len(raw),
        block_length=s.canvas, strategy=STRATEGY, threshold=None, nfe=nfe, seconds=seconds,
        tokens_per_second=content / seconds, peak_memory_mb=peak,
        text=decode_content(tok, region, ends), trace=trace, token_ids=region,
        generated_tokens=content, positions=s.positions, temperature=0.0, seed=s.seed,
        time_per_token=seconds / content if content else None, mask_token=PENDING,
        sampling="sample", peak_memory_note=note, cache="none", kv_refreshes=0,
        early_stop=s.early_stop, stop_note=stop_note, noise="uniform",
        encoder_passes=encoder_passes, sampler=s.sampler())
