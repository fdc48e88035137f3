"""Autoregressive and masked-diffusion samplers that record every step.

Three samplers share one result type (``GenerationResult``) and one trace format, so the UI, the
command line, the GIF/HTML exports and the comparison all read the same data:

- ``diffusion_generate``: masked diffusion with low-confidence remasking as in LLaDA (Nie et al.
  2025). The generated region starts fully masked; every step runs one forward pass over the
  whole sequence (bidirectional attention), proposes a token for every masked position and
  *commits* some of them. A committed token never changes. Optional semi-autoregressive blocks,
  a confidence threshold (adaptive number of steps), classifier-free guidance.
- ``remask_generate``: the RoBERTa-as-diffusion schedule (reference 002): every step re-predicts
  *all* generated positions, then re-masks the least confident fraction given by a schedule.
  Tokens may change from step to step.
- ``autoregressive_generate``: one token per forward pass with the KV cache.

Definitions (the Details tab quotes these):

- *processed logits*: the model's logits in float64 with the never-chosen special tokens set to
  -inf, then restricted to the ``top_k`` largest and/or the smallest set whose probability
  reaches ``top_p``.
- *candidate*: the argmax of the processed logits at temperature 0; otherwise a sample from
  softmax(processed / temperature) drawn with the Gumbel-max trick in float64.
- *confidence*: softmax(processed logits) at temperature 1, read at the candidate. The same
  distribution gives the per-position ``candidates`` (top tokens) and the entropy.
- ``nfe``: forward passes of the model (a classifier-free-guidance step counts 2: the
  conditional and the unconditional sequence, run as one batch of two).
- ``seconds``: wall time of the sampling loop (forward passes, choices and a small per-step copy
  for the trace; not tokenisation and not turning ids into strings afterwards). On CUDA the
  clock stops after a synchronise.
- ``tokens_per_second`` = generated tokens / seconds; prompt tokens never count.
- ``peak_memory_mb`` (MB = 2**20 bytes): on CUDA, ``torch.cuda.max_memory_allocated`` during the
  generation minus what was allocated when it started (exact allocator high-water mark). On CPU
  the resident set size is *sampled* from /proc/self/statm before the loop and after every step;
  the value is the largest sample minus the first, so a transient peak inside one forward pass
  can be missed, and memory the allocator keeps from earlier work is not counted again. ``None``
  where /proc is not available (macOS, Windows).
- Trace positions count from 0 at the first generated token. ``step`` counts from 1 (step i is
  the state after i steps); ``block`` counts from 0.
"""

from __future__ import annotations

import inspect
import json
import logging
import math
import os
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from models.errors import UserError

log = logging.getLogger(__name__)

STRATEGIES = ("low_confidence", "high_confidence", "low_entropy", "high_entropy", "random")
SCHEDULES = ("linear", "cosine", "exponential")
SAMPLINGS = ("greedy", "top_k", "nucleus")
PENDING = "<pending>"  # autoregressive trace: a position not generated yet
LLADA_MASK_ID = 126336  # GSAI-ML/LLaDA's <|mdm_mask|>, when neither tokenizer nor config says
MAX_PROMPTS = 1000
MAX_PROMPTS_BYTES = 1_000_000


# --------------------------------------------------------------------------------------------
# Result types


@dataclass
class StepRecord:
    step: int  # 1-based: the state after this many steps
    block: int  # 0-based block index of the positions committed in this step
    committed: list[dict]  # [{position, token, token_id, confidence}], position in the region
    tokens: list[str]  # the whole generated region after the step (mask text where masked)
    candidates: list[dict] = field(default_factory=list)  # [{position, top: [{token, prob..}]}]

    def to_json(self) -> dict:
        return {
            "step": self.step,
            "block": self.block,
            "committed": [{"position": c["position"], "token": c["token"],
                           "confidence": c["confidence"]} for c in self.committed],
            "tokens": list(self.tokens),
            "candidates": self.candidates,
        }


@dataclass
class GenerationResult:
    model: str
    paradigm: str  # "diffusion" | "autoregressive"
    prompt: str
    length: int  # generated tokens
    steps: int  # steps actually taken (threshold mode: the real count)
    block_length: int | None
    strategy: str
    threshold: float | None
    nfe: int
    seconds: float
    tokens_per_second: float
    peak_memory_mb: float | None
    text: str  # the generated region decoded, cut before the first end-of-sequence token
    trace: list[StepRecord]
    token_ids: list[int]  # the generated region, ids
    temperature: float = 0.0
    seed: int = 0
    time_per_token: float = 0.0
    mask_token: str = "[MASK]"  # the placeholder text in trace tokens (PENDING for AR)
    sampling: str = "greedy"  # greedy | sample | top_k | nucleus

    @property
    def tokens(self) -> list[str]:
        return list(self.trace[-1].tokens) if self.trace else []

    def to_json(self) -> dict:
        """The ``generate --json`` object of design.md (trace entries also carry candidates)."""
        return {
            "model": self.model,
            "paradigm": self.paradigm,
            "prompt": self.prompt,
            "length": self.length,
            "steps": self.steps,
            "block_length": self.block_length,
            "strategy": self.strategy,
            "threshold": self.threshold,
            "nfe": self.nfe,
            "seconds": self.seconds,
            "tokens_per_second": self.tokens_per_second,
            "peak_memory_mb": self.peak_memory_mb,
            "text": self.text,
            "trace": [r.to_json() for r in self.trace],
        }

    def dumps(self) -> str:
        return json.dumps(self.to_json(), ensure_ascii=False)


# --------------------------------------------------------------------------------------------
# Plain functions: schedules and the per-step maths


MAX_SEED = 2**32 - 1  # seeds are 0 .. MAX_SEED (torch generators take 64 bits; keep headroom)


def num_transfer_tokens(n: int, steps: int) -> list[int]:
    """Tokens committed per step for ``n`` masked positions over ``steps`` steps (LLaDA's
    get_num_transfer_tokens): base = n // steps, the first n % steps steps get one more."""
    base, extra = divmod(n, steps)
    return [base + (1 if i < extra else 0) for i in range(steps)]


def split_steps(steps: int, n_blocks: int) -> list[int]:
    """Steps per block when ``steps`` is not a multiple of the number of blocks: as evenly as
    possible, the earlier blocks get the extra steps (e.g. 10 steps over 4 blocks: 3, 3, 2, 2)."""
    return num_transfer_tokens(steps, n_blocks)


def mask_schedule(schedule: str, steps: int) -> list[float]:
    """Fraction of the generated region left masked after step t = 0..steps-1 (remask mode).

    linear: 1 - (t+1)/steps; cosine: cos(pi/2 (t+1)/steps); exponential: exp(-5 (t+1)/steps).
    The last step is always 0 so nothing stays masked.
    """
    if schedule not in SCHEDULES:
        raise UserError(f"Unknown schedule '{schedule}'; choose one of {', '.join(SCHEDULES)}.")
    out = []
    for t in range(steps):
        f = (t + 1) / steps
        if schedule == "linear":
            r = 1.0 - f
        elif schedule == "cosine":
            r = math.cos(math.pi / 2 * f)
        else:
            r = math.exp(-5.0 * f)
        out.append(0.0 if t == steps - 1 else max(0.0, r))
    return out


def remask_counts(length: int, steps: int, schedule: str) -> list[int]:
    """Masked positions left after each step: floor(length * fraction) (reference 002's int())."""
    return [int(math.floor(length * r + 1e-9)) for r in mask_schedule(schedule, steps)]


def process_logits(logits: torch.Tensor, forbidden: torch.Tensor | None = None,
                   top_k: int | None = None, top_p: float | None = None) -> torch.Tensor:
    """logits [..., vocab] -> float64 processed logits (see the module docstring); a new tensor."""
    z = logits.to(torch.float64)
    if forbidden is not None:
        z = z.masked_fill(forbidden, -math.inf)
    else:
        z = z.clone()
    vocab = z.shape[-1]
    if top_k is not None and top_k < vocab:
        kth = torch.topk(z, top_k, dim=-1).values[..., -1:]
        z = z.masked_fill(z < kth, -math.inf)
    if top_p is not None and top_p < 1.0:
        sorted_z, order = torch.sort(z, dim=-1, descending=True)
        p = torch.softmax(sorted_z, dim=-1)
        mass_before = torch.cumsum(p, dim=-1) - p
        drop_sorted = mass_before >= top_p  # the first token always stays
        drop = torch.zeros_like(drop_sorted).scatter(-1, order, drop_sorted)
        z = z.masked_fill(drop, -math.inf)
    return z


def choose(processed: torch.Tensor, temperature: float,
           generator: torch.Generator | None) -> torch.Tensor:
    """Candidate ids [...]: argmax at temperature 0, else Gumbel-max at the temperature."""
    if temperature == 0:
        return processed.argmax(dim=-1)
    u = torch.rand(processed.shape, dtype=torch.float64, device=processed.device,
                   generator=generator)
    gumbel = -torch.log(-torch.log(u))  # u = 0 gives -inf: never chosen
    return (processed / temperature + gumbel).argmax(dim=-1)


def entropy(probs: torch.Tensor) -> torch.Tensor:
    """Shannon entropy in nats over the last axis (0 log 0 = 0)."""
    return torch.special.entr(probs).sum(dim=-1)


def strategy_scores(strategy: str, confidence: torch.Tensor, probs: torch.Tensor,
                    generator: torch.Generator | None) -> torch.Tensor:
    """Higher score = committed earlier. ``low_confidence`` is LLaDA's name: the low-confidence
    positions stay masked (are remasked), so the most confident ones are committed first."""
    if strategy == "low_confidence":
        return confidence
    if strategy == "high_confidence":
        return -confidence
    if strategy == "low_entropy":
        return -entropy(probs)
    if strategy == "high_entropy":
        return entropy(probs)
    if strategy == "random":
        return torch.rand(confidence.shape, dtype=torch.float64, device=confidence.device,
                          generator=generator)
    raise UserError(f"Unknown strategy '{strategy}'; choose one of {', '.join(STRATEGIES)}.")


def ranked(scores: torch.Tensor) -> torch.Tensor:
    """Indices by descending score; ties keep position order (stable), so results are exact."""
    return torch.sort(scores, descending=True, stable=True).indices


# --------------------------------------------------------------------------------------------
# Model and tokenizer facts


def context_limit(model: Any) -> int | None:
    """Longest sequence the model's position embeddings allow, or None when it does not say."""
    cfg = model.config
    for key in ("max_position_embeddings", "n_positions", "max_sequence_length", "n_ctx"):
        v = getattr(cfg, key, None)
        if isinstance(v, int) and not isinstance(v, bool) and v > 0:
            model_type = str(getattr(cfg, "model_type", ""))
            if key == "max_position_embeddings" and ("roberta" in model_type
                                                     or model_type == "camembert"):
                pad = getattr(cfg, "pad_token_id", 1)
                v -= (pad if isinstance(pad, int) else 1) + 1  # RoBERTa positions start at pad+1
            return v
    return None


def mask_token_id(loaded: Any) -> int:
    tok_id = getattr(loaded.tokenizer, "mask_token_id", None)
    if tok_id is None:
        tok_id = getattr(loaded.model.config, "mask_token_id", None)
    if tok_id is None and "llada" in str(getattr(loaded.model.config, "model_type", "")).lower():
        tok_id = LLADA_MASK_ID
    if tok_id is None:
        raise UserError(f"'{loaded.name}' has no mask token, so it cannot generate by unmasking. "
                        "Use a masked or diffusion language model (e.g. tiny-diffusion).")
    return int(tok_id)


def _ids(value: Any) -> list[int]:
    if value is None:
        return []
    if isinstance(value, (list, tuple, set)):
        return [int(v) for v in value if v is not None]
    return [int(value)]


def stop_ids(loaded: Any) -> set[int]:
    """End-of-sequence ids: the tokenizer's EOS and SEP and the config's EOS ids."""
    tok, cfg = loaded.tokenizer, loaded.model.config
    out = set(_ids(getattr(tok, "eos_token_id", None)) + _ids(getattr(tok, "sep_token_id", None)))
    out.update(_ids(getattr(cfg, "eos_token_id", None)))
    gen = getattr(loaded.model, "generation_config", None)
    if gen is not None:
        out.update(_ids(getattr(gen, "eos_token_id", None)))
    return out


def _forbidden(loaded: Any, vocab: int, mask_id: int | None, stops: set[int],
               device: torch.device) -> torch.Tensor:
    """Bool [vocab]: ids never proposed: the mask, CLS/BOS, PAD and UNK, unless they are EOS."""
    tok = loaded.tokenizer
    ids = set(_ids(mask_id))
    for name in ("cls_token_id", "bos_token_id", "pad_token_id", "unk_token_id", "mask_token_id"):
        ids.update(_ids(getattr(tok, name, None)))
    ids -= stops
    mask = torch.zeros(vocab, dtype=torch.bool, device=device)
    valid = [i for i in ids if 0 <= i < vocab]
    if valid:
        mask[valid] = True
    return mask


def token_texts(tokenizer: Any, ids: Sequence[int]) -> list[str]:
    """Readable token strings: byte-level 'Ġ' and sentencepiece '▁' shown as a space."""
    out = []
    for i in ids:
        t = tokenizer.convert_ids_to_tokens(int(i))
        if t is None:
            t = f"<{int(i)}>"
        out.append(t.replace("Ġ", " ").replace("▁", " ").replace("Ċ", "\\n"))
    return out


def _decode(tokenizer: Any, ids: Sequence[int], stops: set[int]) -> str:
    cut = list(ids)
    for i, t in enumerate(cut):
        if t in stops:
            cut = cut[:i]
            break
    return tokenizer.decode(cut, skip_special_tokens=True)


def _encode(loaded: Any, prompt: str, use_chat_template: bool) -> list[int]:
    tok = loaded.tokenizer
    if use_chat_template:
        if not getattr(tok, "chat_template", None):
            raise UserError(f"'{loaded.name}' has no chat template; generate without it.")
        ids = tok.apply_chat_template([{"role": "user", "content": prompt}],
                                      add_generation_prompt=True, tokenize=True)
        if isinstance(ids, Mapping):
            ids = ids["input_ids"]
        if ids and isinstance(ids[0], (list, tuple)):
            ids = ids[0]
        return [int(i) for i in ids]
    return [int(i) for i in tok(prompt, add_special_tokens=True)["input_ids"]]


def cache_keyword(model: Any) -> str:
    """The name of the KV-cache argument of `model.forward`: transformers 5.x renamed
    `past_key_values` (deprecated) to `cache`; older models take only the former."""
    return "cache" if "cache" in inspect.signature(model.forward).parameters else "past_key_values"


def _device(model: Any) -> torch.device:
    try:
        return next(model.parameters()).device
    except (StopIteration, AttributeError):
        return torch.device("cpu")


def _logits(model: Any, x: torch.Tensor) -> torch.Tensor:
    out = model(input_ids=x)
    return out.logits if hasattr(out, "logits") else out[0]


# --------------------------------------------------------------------------------------------
# Validation


def _check_int(name: str, value: Any, lo: int, hi: int | None = None) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise UserError(f"{name} must be a whole number, got {value!r}.")
    if value < lo or (hi is not None and value > hi):
        rng = f"at least {lo}" if hi is None else f"between {lo} and {hi}"
        raise UserError(f"{name} must be {rng}, got {value}.")
    return value


def _check_float(name: str, value: Any) -> float:
    try:
        v = float(value)
    except (TypeError, ValueError):
        raise UserError(f"{name} must be a number, got {value!r}.") from None
    if not math.isfinite(v):
        raise UserError(f"{name} must be a finite number, got {value!r}.")
    return v


def _check_sampling(temperature: Any, top_k: Any, top_p: Any) -> float:
    t = _check_float("temperature", temperature)
    if t < 0:
        raise UserError(f"temperature must be 0 (greedy) or positive, got {temperature}.")
    if top_k is not None:
        _check_int("top_k", top_k, 1)
    if top_p is not None:
        p = _check_float("top_p", top_p)
        if not 0 < p <= 1:
            raise UserError(f"top_p must be in (0, 1], got {top_p}.")
    return t


def _check_prompt(prompt: Any) -> str:
    from analysis.capture import check_text

    if not isinstance(prompt, str) or not prompt.strip():
        raise UserError("The prompt is empty. Type some text to start from.")
    return check_text(prompt)


def _check_fits(loaded: Any, n_prompt: int, length: int) -> None:
    limit = context_limit(loaded.model)
    if limit is not None and n_prompt + length > limit:
        room = max(0, limit - n_prompt)
        raise UserError(f"length {length} does not fit: '{loaded.name}' takes {limit} tokens and "
                        f"the prompt uses {n_prompt}, so length can be at most {room}.")


def _check_diffusion_model(loaded: Any) -> None:
    if loaded.task == "causal":
        raise UserError(f"'{loaded.name}' is a causal (autoregressive) model; diffusion generation "
                        "needs a masked or diffusion model (e.g. tiny-diffusion). Use the "
                        "autoregressive mode for it.")
    if loaded.task == "encoder":
        raise UserError(f"'{loaded.name}' is an encoder without a language-model head; it "
                        "cannot predict tokens.")


# --------------------------------------------------------------------------------------------
# Measurement


def _rss_bytes() -> int | None:
    try:
        with open("/proc/self/statm") as fh:
            return int(fh.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, IndexError, AttributeError):
        return None


class _Meter:
    """Wall clock and peak memory of one generation (see the module docstring)."""

    def __init__(self, device: torch.device):
        self.device = device
        self.cuda = device.type == "cuda"

    def start(self) -> None:
        if self.cuda:
            torch.cuda.synchronize(self.device)
            torch.cuda.reset_peak_memory_stats(self.device)
            self.base = torch.cuda.memory_allocated(self.device)
        else:
            self.base = _rss_bytes()
            self.peak = self.base
        self.t0 = time.perf_counter()

    def sample(self) -> None:
        if not self.cuda and self.base is not None:
            rss = _rss_bytes()
            if rss is not None:
                self.peak = max(self.peak, rss)

    def stop(self) -> tuple[float, float | None]:
        if self.cuda:
            torch.cuda.synchronize(self.device)
        seconds = max(time.perf_counter() - self.t0, 1e-9)
        if self.cuda:
            peak = (torch.cuda.max_memory_allocated(self.device) - self.base) / 2**20
        elif self.base is None:
            peak = None
        else:
            self.sample()
            peak = (self.peak - self.base) / 2**20
        return seconds, (None if peak is None else max(0.0, float(peak)))


# --------------------------------------------------------------------------------------------
# Shared pieces of the diffusion samplers


@dataclass
class _Layout:
    ids: list[int]  # the whole sequence with the region masked
    start: int  # first position of the generated region
    length: int


def _layout(loaded: Any, prompt: str, length: int, mask_id: int,
            use_chat_template: bool) -> _Layout:
    """[CLS] prompt [MASK]*length [SEP] for BERT-like tokenizers (the masks go before a final
    [SEP]); the masks are appended when the encoded prompt does not end with one."""
    ids = _encode(loaded, prompt, use_chat_template)
    sep = getattr(loaded.tokenizer, "sep_token_id", None)
    suffix: list[int] = []
    if sep is not None and ids and ids[-1] == sep and not use_chat_template:
        ids, suffix = ids[:-1], [ids[-1]]
    _check_fits(loaded, len(ids) + len(suffix), length)
    return _Layout(ids + [mask_id] * length + suffix, len(ids), length)


def _region_logits(model: Any, x: torch.Tensor, lay: _Layout, mask_id: int,
                   cfg_scale: float) -> torch.Tensor:
    """Logits [length, vocab] of the generated region, with classifier-free guidance when asked:
    the unconditional sequence has every prompt position masked;
    logits = uncond + (cfg + 1) (cond - uncond)."""
    region = slice(lay.start, lay.start + lay.length)
    if cfg_scale > 0:
        uncond = x.clone()
        uncond[:, :lay.start] = mask_id
        both = _logits(model, torch.cat([x, uncond], dim=0))[:, region].to(torch.float64)
        cond, unc = both[0], both[1]
        return unc + (cfg_scale + 1.0) * (cond - unc)
    return _logits(model, x)[0, region]


def _candidates(probs: torch.Tensor, positions: list[int], n: int) -> list[tuple]:
    if n <= 0 or not positions:
        return []
    k = min(n, probs.shape[-1])
    top = torch.topk(probs, k, dim=-1)
    vals, idx = top.values.tolist(), top.indices.tolist()
    return [(p, idx[i], vals[i]) for i, p in enumerate(positions)]


@dataclass
class _RawStep:
    block: int
    committed: list[tuple[int, int, float]]  # (position, token id, confidence)
    region: list[int]  # region ids after the step
    candidates: list[tuple]  # (position, [ids], [probs])


def _records(tokenizer: Any, raw: list[_RawStep], mask_id: int | None,
             mask_text: str) -> list[StepRecord]:
    cache: dict[int, str] = {}

    def text(i: int) -> str:
        if i not in cache:
            cache[i] = mask_text if i == mask_id else token_texts(tokenizer, [i])[0]
        return cache[i]

    out = []
    for n, r in enumerate(raw, start=1):
        committed = [{"position": p, "token": text(t), "token_id": t, "confidence": c}
                     for p, t, c in r.committed]
        cands = [{"position": p, "top": [{"token": text(i), "probability": v}
                                         for i, v in zip(ids, vals, strict=True)]}
                 for p, ids, vals in r.candidates]
        out.append(StepRecord(n, r.block, committed, [text(i) for i in r.region], cands))
    return out


def _mask_text(tokenizer: Any, mask_id: int) -> str:
    t = getattr(tokenizer, "mask_token", None)
    if t:
        return str(t)
    t = tokenizer.convert_ids_to_tokens(mask_id)
    return t if t else "[MASK]"


# --------------------------------------------------------------------------------------------
# Masked diffusion (LLaDA-style)


def diffusion_generate(loaded: Any, prompt: str, length: int, steps: int | None = None,
                       block_length: int | None = None, strategy: str = "low_confidence",
                       threshold: float | None = None, temperature: float = 0.0,
                       top_k: int | None = None, top_p: float | None = None, seed: int = 0,
                       cfg_scale: float = 0.0, n_candidates: int = 5,
                       use_chat_template: bool = False) -> GenerationResult:
    """Generate ``length`` tokens by iterative unmasking; see the module docstring.

    Blocks: the region is split into ``length // block_length`` blocks filled left to right
    (semi-autoregressive); only masked positions of the current block can be committed. Steps:
    ``steps`` (default ``length``) are split over the blocks as evenly as possible (earlier
    blocks get the extra step when they do not divide), and within a block the tokens per step
    follow ``num_transfer_tokens``. Threshold mode (``threshold`` in (0, 1]): every step commits
    each masked position of the current block whose confidence is at least ``threshold`` (at
    least the strategy's best one), so the number of steps adapts; ``steps`` is then only
    checked, not used, and the steps actually taken are reported.
    """
    _check_diffusion_model(loaded)
    prompt = _check_prompt(prompt)
    length = _check_int("length", length, 1)
    steps = length if steps is None else _check_int("steps", steps, 1, length)
    block_length = length if block_length is None else _check_int("block_length",
                                                                  block_length, 1, length)
    if length % block_length:
        raise UserError(f"length {length} must be a multiple of block_length {block_length}.")
    n_blocks = length // block_length
    if threshold is None and steps < n_blocks:
        raise UserError(f"steps ({steps}) must be at least the number of blocks ({n_blocks}): "
                        "every block needs a step.")
    if threshold is not None:
        threshold = _check_float("threshold", threshold)
        if not 0 < threshold <= 1:
            raise UserError(f"threshold must be in (0, 1], got {threshold}.")
    if strategy not in STRATEGIES:
        raise UserError(f"Unknown strategy '{strategy}'; choose one of {', '.join(STRATEGIES)}.")
    temperature = _check_sampling(temperature, top_k, top_p)
    cfg_scale = _check_float("cfg_scale", cfg_scale)
    if cfg_scale < 0:
        raise UserError(f"cfg_scale must be 0 (off) or positive, got {cfg_scale}.")
    n_candidates = _check_int("n_candidates", n_candidates, 0)
    seed = _check_int("seed", seed, 0, MAX_SEED)
    mask_id = mask_token_id(loaded)

    model, tok = loaded.model, loaded.tokenizer
    device = _device(model)
    lay = _layout(loaded, prompt, length, mask_id, use_chat_template)
    stops = stop_ids(loaded)
    gen = torch.Generator(device=device).manual_seed(seed)
    block_steps = split_steps(steps, n_blocks)
    raw: list[_RawStep] = []
    nfe = 0
    meter = _Meter(device)
    with torch.inference_mode():
        x = torch.tensor([lay.ids], dtype=torch.long, device=device)
        masked = torch.ones(length, dtype=torch.bool, device=device)
        block_of = torch.arange(length, device=device) // block_length
        forbidden = None
        meter.start()
        for b in range(n_blocks):
            in_block = block_of == b
            plan = (None if threshold is not None
                    else num_transfer_tokens(block_length, block_steps[b]))
            i = 0
            while bool((masked & in_block).any()):
                logits = _region_logits(model, x, lay, mask_id, cfg_scale)
                nfe += 2 if cfg_scale > 0 else 1
                if forbidden is None:
                    forbidden = _forbidden(loaded, logits.shape[-1], mask_id, stops, device)
                rows = masked.nonzero().squeeze(-1)  # masked positions of the whole region
                z = process_logits(logits[rows], forbidden, top_k, top_p)
                probs = torch.softmax(z, dim=-1)
                cand = choose(z, temperature, gen)
                conf = probs.gather(-1, cand[:, None]).squeeze(-1)
                eligible = in_block[rows]
                scores = strategy_scores(strategy, conf, probs, gen)
                scores = scores.masked_fill(~eligible, -math.inf)
                order = ranked(scores)
                if threshold is None:
                    take = order[:plan[i]]
                else:
                    sure = (eligible & (conf >= threshold)).nonzero().squeeze(-1)
                    take = sure if sure.numel() else order[:1]
                pos = rows[take]
                x[0, lay.start + pos] = cand[take]
                masked[pos] = False
                positions = rows.tolist()
                raw.append(_RawStep(
                    b,
                    list(zip(pos.tolist(), cand[take].tolist(), conf[take].tolist(), strict=True)),
                    x[0, lay.start:lay.start + length].tolist(),
                    _candidates(probs, positions, n_candidates)))
                meter.sample()
                i += 1
        seconds, peak = meter.stop()
    region = x[0, lay.start:lay.start + length].tolist()
    mask_text = _mask_text(tok, mask_id)
    return GenerationResult(
        model=loaded.name, paradigm="diffusion", prompt=prompt, length=length, steps=len(raw),
        block_length=block_length, strategy=strategy, threshold=threshold, nfe=nfe,
        seconds=seconds, tokens_per_second=length / seconds, peak_memory_mb=peak,
        text=_decode(tok, region, stops), trace=_records(tok, raw, mask_id, mask_text),
        token_ids=region, temperature=temperature, seed=seed, time_per_token=seconds / length,
        mask_token=mask_text, sampling="greedy" if temperature == 0 else "sample")


# --------------------------------------------------------------------------------------------
# Schedule re-masking (RoBERTa diffusion, reference 002)


def remask_generate(loaded: Any, prompt: str, length: int, steps: int,
                    schedule: str = "linear", sampling: str = "greedy", top_k: int = 50,
                    top_p: float = 0.9, temperature: float = 1.0, seed: int = 0,
                    n_candidates: int = 5, use_chat_template: bool = False) -> GenerationResult:
    """Start fully masked; each step re-predicts every generated position (greedy, top-k or
    nucleus sampling at ``temperature``) and then re-masks the ``remask_counts`` least
    confident positions. A step's ``committed`` lists the positions left unmasked whose token is
    new (was masked or different before the step)."""
    _check_diffusion_model(loaded)
    prompt = _check_prompt(prompt)
    length = _check_int("length", length, 1)
    steps = _check_int("steps", steps, 1, length)
    if schedule not in SCHEDULES:
        raise UserError(f"Unknown schedule '{schedule}'; choose one of {', '.join(SCHEDULES)}.")
    if sampling not in SAMPLINGS:
        raise UserError(f"Unknown sampling '{sampling}'; choose one of {', '.join(SAMPLINGS)}.")
    temperature = _check_sampling(temperature, top_k, top_p)
    if sampling != "greedy" and temperature == 0:
        raise UserError(f"{sampling} sampling needs a positive temperature.")
    seed = _check_int("seed", seed, 0, MAX_SEED)
    n_candidates = _check_int("n_candidates", n_candidates, 0)
    mask_id = mask_token_id(loaded)
    k = top_k if sampling == "top_k" else None
    p = top_p if sampling == "nucleus" else None
    t = 0.0 if sampling == "greedy" else temperature

    model, tok = loaded.model, loaded.tokenizer
    device = _device(model)
    lay = _layout(loaded, prompt, length, mask_id, use_chat_template)
    stops = stop_ids(loaded)
    gen = torch.Generator(device=device).manual_seed(seed)
    counts = remask_counts(length, steps, schedule)
    raw: list[_RawStep] = []
    meter = _Meter(device)
    with torch.inference_mode():
        x = torch.tensor([lay.ids], dtype=torch.long, device=device)
        forbidden = None
        meter.start()
        for step in range(steps):
            logits = _region_logits(model, x, lay, mask_id, 0.0)
            if forbidden is None:
                forbidden = _forbidden(loaded, logits.shape[-1], mask_id, stops, device)
            z = process_logits(logits, forbidden, k, p)
            probs = torch.softmax(z, dim=-1)
            cand = choose(z, t, gen)
            conf = probs.gather(-1, cand[:, None]).squeeze(-1)
            before = x[0, lay.start:lay.start + length].clone()
            was_masked = (before == mask_id).nonzero().squeeze(-1).tolist()
            new = cand.clone()
            remask = ranked(-conf)[:counts[step]]  # the least confident, ties by position
            new[remask] = mask_id
            x[0, lay.start:lay.start + length] = new
            changed = ((new != before) & (new != mask_id)).nonzero().squeeze(-1)
            raw.append(_RawStep(
                0, list(zip(changed.tolist(), new[changed].tolist(), conf[changed].tolist(),
                            strict=True)),
                new.tolist(), _candidates(probs[was_masked], was_masked, n_candidates)))
            meter.sample()
        seconds, peak = meter.stop()
    region = x[0, lay.start:lay.start + length].tolist()
    mask_text = _mask_text(tok, mask_id)
    return GenerationResult(
        model=loaded.name, paradigm="diffusion", prompt=prompt, length=length, steps=steps,
        block_length=length, strategy=f"remask_{schedule}", threshold=None, nfe=steps,
        seconds=seconds, tokens_per_second=length / seconds, peak_memory_mb=peak,
        text=_decode(tok, region, stops), trace=_records(tok, raw, mask_id, mask_text),
        token_ids=region, temperature=t, seed=seed, time_per_token=seconds / length,
        mask_token=mask_text, sampling=sampling)


# --------------------------------------------------------------------------------------------
# Autoregressive


def autoregressive_generate(loaded: Any, prompt: str, length: int, temperature: float = 0.0,
                            top_k: int | None = None, top_p: float | None = None, seed: int = 0,
                            use_chat_template: bool = False, n_candidates: int = 5,
                            stop_at_eos: bool = False, use_cache: bool = True
                            ) -> GenerationResult:
    """One token per forward pass, reusing the KV cache (``use_cache=False`` re-runs the whole
    sequence each step: same tokens, for checking and for showing what the cache saves).

    The trace has one step per token, in block ``step - 1`` (autoregression is block diffusion
    with blocks of one token, so ``block_length`` is 1 and the strategy ``left_to_right``);
    ``tokens`` lists the tokens generated so far followed by ``"<pending>"`` for the rest. By
    default all ``length`` tokens are generated even past an end-of-sequence token (so lengths
    compare fairly; ``text`` is still cut there); ``stop_at_eos=True`` stops at it and reports
    the shorter length.
    """
    if loaded.task != "causal":
        raise UserError(f"'{loaded.name}' is a {loaded.task} model; autoregressive generation "
                        "needs a causal model (e.g. tiny-gpt2).")
    prompt = _check_prompt(prompt)
    length = _check_int("length", length, 1)
    temperature = _check_sampling(temperature, top_k, top_p)
    seed = _check_int("seed", seed, 0, MAX_SEED)
    n_candidates = _check_int("n_candidates", n_candidates, 0)
    model, tok = loaded.model, loaded.tokenizer
    ids = _encode(loaded, prompt, use_chat_template)
    if not ids:
        raise UserError("The prompt encodes to no tokens; type some text.")
    _check_fits(loaded, len(ids), length)
    device = _device(model)
    stops = stop_ids(loaded)
    gen = torch.Generator(device=device).manual_seed(seed)
    raw: list[_RawStep] = []
    generated: list[int] = []
    cache_kw = cache_keyword(model)
    nfe = 0
    meter = _Meter(device)
    with torch.inference_mode():
        seq = torch.tensor([ids], dtype=torch.long, device=device)
        forbidden = None
        meter.start()
        out = model(input_ids=seq, use_cache=use_cache)
        nfe += 1
        for step in range(length):
            logits = out.logits[0, -1]
            if forbidden is None:
                forbidden = _forbidden(loaded, logits.shape[-1], None, stops, device)
            z = process_logits(logits, forbidden, top_k, top_p)
            probs = torch.softmax(z, dim=-1)
            token = choose(z, temperature, gen)
            conf = float(probs[token])
            token_id = int(token)
            generated.append(token_id)
            raw.append(_RawStep(step, [(step, token_id, conf)], list(generated),
                                _candidates(probs[None], [step], n_candidates)))
            meter.sample()
            if step == length - 1 or (stop_at_eos and token_id in stops):
                break
            nxt = token.view(1, 1)
            if use_cache:
                out = model(input_ids=nxt, use_cache=True, **{cache_kw: out.past_key_values})
            else:
                seq = torch.cat([seq, nxt], dim=1)
                out = model(input_ids=seq, use_cache=False)
            nfe += 1
        seconds, peak = meter.stop()
    n = len(generated)
    records = _records(tok, raw, None, PENDING)
    for r in records:
        r.tokens = r.tokens + [PENDING] * (length - len(r.tokens))
    return GenerationResult(
        model=loaded.name, paradigm="autoregressive", prompt=prompt, length=n, steps=n,
        block_length=1, strategy="left_to_right", threshold=None, nfe=nfe, seconds=seconds,
        tokens_per_second=n / seconds, peak_memory_mb=peak, text=_decode(tok, generated, stops),
        trace=records, token_ids=generated, temperature=temperature, seed=seed,
        time_per_token=seconds / n, mask_token=PENDING,
        sampling="greedy" if temperature == 0 else "sample")


# --------------------------------------------------------------------------------------------
# Comparison


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


def _normalise(text: str) -> str:
    return " ".join(text.lower().split())


def _summary(model: str, paradigm: str, runs: list[dict], n_seeds: int) -> dict:
    scored = [r for r in runs if r["correct"] is not None]
    seconds = sum(r["seconds"] for r in runs)
    tokens = sum(r["length"] for r in runs)
    peaks = [r["peak_memory_mb"] for r in runs if r["peak_memory_mb"] is not None]
    consistency = None
    if n_seeds > 1:
        by_prompt: dict[int, set[str]] = {}
        for r in runs:
            by_prompt.setdefault(r["prompt_index"], set()).add(_normalise(r["text"]))
        consistency = sum(len(s) == 1 for s in by_prompt.values()) / len(by_prompt)
    return {
        "model": model,
        "paradigm": paradigm,
        "runs": len(runs),
        "accuracy": (sum(r["correct"] for r in scored) / len(scored)) if scored else None,
        "n_scored": len(scored),
        "mean_seconds": seconds / len(runs),
        "tokens_per_second": tokens / seconds,
        "mean_nfe": sum(r["nfe"] for r in runs) / len(runs),
        "peak_memory_mb": max(peaks) if peaks else None,
        "consistency": consistency,
    }


def compare(ar_loaded: Any, diff_loaded: Any, prompts: Sequence[tuple[str, str | None]],
            length: int = 16, steps: int | None = None, block_length: int | None = None,
            strategy: str = "low_confidence", threshold: float | None = None,
            temperature: float = 0.0, top_k: int | None = None, top_p: float | None = None,
            seeds: Sequence[int] = (0,), ar_chat_template: bool = False,
            diffusion_chat_template: bool = False, warmup: bool = True,
            progress: Callable[[int, int, str], None] | None = None) -> dict:
    """Run the autoregressive and the diffusion model on every prompt and seed, side by side.

    Order: the two paradigms alternate which goes first from one run to the next (ABBA), so
    a drift in machine speed affects both alike; ``warmup`` first runs each once on one token,
    untimed. Per paradigm: ``accuracy`` = fraction of runs with an expected answer whose
    generated text contains it (case-insensitive; None without expectations);
    ``tokens_per_second`` = all generated tokens / all seconds; ``mean_seconds``, ``mean_nfe``;
    ``peak_memory_mb`` = the largest per-run peak; ``consistency`` (with two or more seeds) =
    fraction of prompts whose generated text (lower-cased, whitespace-normalised) is the same
    for every seed, else None.
    """
    if not prompts:
        raise UserError("No prompts to compare; give at least one.")
    seeds = list(seeds)
    if not seeds:
        raise UserError("Give at least one seed.")
    for s in seeds:
        _check_int("seed", s, 0, MAX_SEED)

    def run_ar(prompt: str, seed: int, n: int = length) -> GenerationResult:
        return autoregressive_generate(ar_loaded, prompt, n, temperature=temperature, top_k=top_k,
                                       top_p=top_p, seed=seed, use_chat_template=ar_chat_template,
                                       n_candidates=0)

    def run_diff(prompt: str, seed: int) -> GenerationResult:
        return diffusion_generate(diff_loaded, prompt, length, steps=steps,
                                  block_length=block_length, strategy=strategy,
                                  threshold=threshold, temperature=temperature, top_k=top_k,
                                  top_p=top_p, seed=seed, n_candidates=0,
                                  use_chat_template=diffusion_chat_template)

    if warmup:
        first = prompts[0][0]
        run_ar(first, seeds[0], 1)
        diffusion_generate(diff_loaded, first, 1, strategy=strategy, n_candidates=0,
                           use_chat_template=diffusion_chat_template)
    rows: list[dict] = []
    per: dict[str, list[dict]] = {"autoregressive": [], "diffusion": []}
    total = len(prompts) * len(seeds)
    k = 0
    for pi, (prompt, expected) in enumerate(prompts):
        for seed in seeds:
            order = ("autoregressive", "diffusion") if k % 2 == 0 else ("diffusion",
                                                                          "autoregressive")
            row: dict[str, Any] = {"prompt": prompt, "expected": expected, "seed": seed}
            for paradigm in order:
                res = run_ar(prompt, seed) if paradigm == "autoregressive" else run_diff(prompt,
                                                                                         seed)
                correct = (None if expected is None
                           else expected.strip().lower() in res.text.lower())
                item = {"text": res.text, "correct": correct, "seconds": res.seconds,
                        "tokens_per_second": res.tokens_per_second, "nfe": res.nfe,
                        "steps": res.steps, "length": res.length,
                        "peak_memory_mb": res.peak_memory_mb}
                row[paradigm] = item
                per[paradigm].append({**item, "prompt_index": pi})
            rows.append(row)
            k += 1
            if progress is not None:
                progress(k, total, prompt)
    return {
        "settings": {"length": length, "steps": steps, "block_length": block_length,
                     "strategy": strategy, "threshold": threshold, "temperature": temperature,
                     "top_k": top_k, "top_p": top_p, "seeds": seeds},
        "autoregressive": _summary(ar_loaded.name, "autoregressive", per["autoregressive"],
                                   len(seeds)),
        "diffusion": _summary(diff_loaded.name, "diffusion", per["diffusion"], len(seeds)),
        "runs": rows,
    }
