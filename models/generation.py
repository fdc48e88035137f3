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
- *end* of a region: its first position holding an end-of-sequence or padding token (the
  tokenizer's EOS, SEP and PAD ids and the config's EOS ids; ``end_ids``). A masked position is
  not an end.
- ``generated_tokens`` (*content tokens*): the positions of the generated region before its end
  (all of them when it has none). A diffusion model that fills the rest of its canvas with
  [SEP]/EOS has not generated those; the end-of-sequence token itself is not content either.
- ``positions``: the canvas, the number of positions the run may fill (= ``length``). A
  diffusion model predicts every one of them; an autoregressive run that stops at its
  end-of-sequence token leaves the rest unwritten.
- ``nfe``: forward passes of the model (a classifier-free-guidance step counts 2: the
  conditional and the unconditional sequence, run as one batch of two). Content tokens per
  forward pass = generated_tokens / nfe; positions per forward pass = positions / nfe.
- ``seconds``: wall time of the sampling loop (forward passes, choices and a small per-step copy
  for the trace; not tokenisation and not turning ids into strings afterwards) of a run that is
  not profiled. On CUDA the clock stops after a synchronise.
- ``tokens_per_second`` = generated_tokens / seconds (content tokens: prompt, end-of-sequence
  and padding tokens never count); ``time_per_token`` = seconds / generated_tokens (None when
  nothing was generated).
- An autoregressive run stops at its end-of-sequence token (``stop_at_eos=False`` writes on to
  ``length``; the content still ends at the first end token).
- ``peak_memory_mb`` (MB = 2**20 bytes): the peak of the memory the generation itself allocated,
  on top of what was allocated before it (the weights, earlier results). CUDA:
  ``torch.cuda.max_memory_allocated`` after ``reset_peak_memory_stats`` in the timed run, minus
  ``memory_allocated`` at its start (the allocator's exact high-water mark). CPU: torch keeps no
  CPU allocator statistics, so the same generation is run a second time (same seed, so the same
  tokens) under the torch profiler with ``profile_memory=True``, which records every allocation
  and free of PyTorch's CPU allocator made on the generating thread; the value is the highest
  running total of those bytes during the replay. The replay is not timed: it records the
  allocations and no operator events (only the user scope), which makes it about 1.1-1.6x
  slower than the timed run, so a call with the memory measured takes about 2.2-2.6x as long
  as one without (tiny models, one thread). Its token ids are checked against the timed run:
  if they differ (a nondeterministic model) the value is None and ``peak_memory_note`` says why.
  Allocations of other threads (another session's work) are not counted; a profiler the
  caller is already running is left alone (the value is then None).
  Memory that kernels take from other allocators (e.g. oneDNN scratch) and Python objects are
  not counted; allocator caching and RSS do not matter. None on other devices (MPS) or with
  ``measure_memory=False``; ``peak_memory_note`` always says how the value was obtained.
- Trace positions count from 0 at the first generated token. ``step`` counts from 1 (step i is
  the state after i steps); ``block`` counts from 0.
"""

from __future__ import annotations

import inspect
import json
import logging
import math
import os
import threading
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
    end: int | None = None  # the region's first end-of-sequence/padding position after the step

    def to_json(self) -> dict:
        return {
            "step": self.step,
            "block": self.block,
            "committed": [{"position": c["position"], "token": c["token"],
                           "confidence": c["confidence"]} for c in self.committed],
            "tokens": list(self.tokens),
            "end": self.end,
            "candidates": self.candidates,
        }


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
        return {
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
            "text": self.text,
            "trace": [r.to_json() for r in self.trace],
        }

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


def end_ids(loaded: Any) -> set[int]:
    """Ids that end the content of a generated region: ``stop_ids`` and the padding token."""
    return stop_ids(loaded) | set(_ids(getattr(loaded.tokenizer, "pad_token_id", None)))


def first_end(ids: Sequence[int], ends: set[int]) -> int | None:
    """The first position of ``ids`` holding an end id, or None."""
    for i, t in enumerate(ids):
        if t in ends:
            return i
    return None


def content_length(ids: Sequence[int], ends: set[int]) -> int:
    """Content tokens of a generated region: the positions before its first end id."""
    end = first_end(ids, ends)
    return len(ids) if end is None else end


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
    from models.common import check_text

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


NOT_MEASURED = "not measured (measure_memory=False)"
CUDA_NOTE = ("CUDA: torch.cuda.max_memory_allocated during the timed run minus what was "
             "allocated at its start")
CPU_NOTE = ("CPU: highest running total of the tensor allocations (PyTorch CPU allocator) of an "
            "untimed replay of the same generation under the torch profiler (same tokens)")
REPLAY_DIFFERS = ("not measured: the profiled replay's token ids differ from the timed run's "
                  "(a nondeterministic model), so its memory would not be this generation's")
_PROFILER_LOCK = threading.Lock()  # one profiled replay at a time in this process


def _allocation_peak(events: Any) -> int:
    """Bytes: the highest running total of a profile's CPU allocations (the profiler's
    "[memory]" events: + bytes allocated, - bytes freed, in time order) above its start. Blocks
    allocated before the replay and freed in it count 0 (they were never counted)."""
    cpu = torch.autograd.DeviceType.CPU
    mem = [(e.start_ns(), e.nbytes()) for e in events
           if e.name() == "[memory]" and e.device_type() == cpu]
    mem.sort(key=lambda e: e[0])  # stable: events sharing a timestamp keep their order
    total = peak = 0
    for _t, nbytes in mem:
        total += nbytes
        peak = max(peak, total)
    return peak


class _NoPrivateProfiler(Exception):
    """torch's private profiler entry points are not what this module expects."""


def _memory_only_profile(run: Callable[[], Any]) -> tuple[Any, Any]:
    """(run's output, the profiler's events) with memory profiling on and operator events
    recorded only for the user scope (record_function), so the replay runs about 1.1-1.3x its
    unprofiled time instead of about 2x; torch's private profiler entry points, so the caller
    falls back to ``torch.profiler.profile`` when they change."""
    try:
        from torch._C._profiler import (
            ProfilerActivity,
            ProfilerConfig,
            ProfilerState,
            RecordScope,
            _ExperimentalConfig,
        )

        config = ProfilerConfig(ProfilerState.KINETO, False, True, False, False, False,
                                _ExperimentalConfig())
        activities = {ProfilerActivity.CPU}
        prepare, enable = torch.autograd._prepare_profiler, torch.autograd._enable_profiler
    except (ImportError, AttributeError, TypeError) as exc:
        raise _NoPrivateProfiler(str(exc)) from exc
    prepare(config, activities)
    enable(config, activities, {RecordScope.USER_SCOPE})
    try:  # from here on, errors are the run's own or the profiler's: no fallback
        out = run()
    finally:
        result = torch.autograd._disable_profiler()
    return out, result.events()


def _full_profile(run: Callable[[], Any]) -> tuple[Any, Any]:
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        out = run()
    return out, prof.profiler.kineto_results.events()


def _profiled_peak(run: Callable[[], Any]) -> tuple[Any, float | None, str]:
    """Run ``run`` once more under the torch profiler: (its output, peak MB, note)."""
    os.environ.setdefault("KINETO_LOG_LEVEL", "6")  # no profiler_start/stop lines on stderr
    with _PROFILER_LOCK:
        if torch.autograd._profiler_enabled():  # the caller is profiling: leave its session be
            return None, None, "not measured: the torch profiler is already running"
        try:
            try:
                out, events = _memory_only_profile(run)
            except _NoPrivateProfiler as exc:
                log.debug("memory-only profiling unavailable (%s); profiling every op", exc)
                out, events = _full_profile(run)
            peak = _allocation_peak(events)
        except (RuntimeError, AttributeError, AssertionError, ImportError) as exc:
            log.warning("peak memory: the profiled replay failed: %s", exc)
            return None, None, f"not measured: the torch profiler failed ({exc})"
    return out, peak / 2**20, CPU_NOTE


def _measured(device: torch.device, run: Callable[[], Any], measure_memory: bool,
              same: Callable[[Any, Any], bool]) -> tuple[Any, float, float | None, str]:
    """Time ``run`` (a whole generation, deterministic for its seed) and measure its peak
    memory as the module docstring defines: (output, seconds, peak MB or None, note)."""
    cuda = device.type == "cuda"
    if cuda:
        torch.cuda.synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)
        base = torch.cuda.memory_allocated(device)
    t0 = time.perf_counter()
    out = run()
    if cuda:
        torch.cuda.synchronize(device)
    seconds = max(time.perf_counter() - t0, 1e-9)
    if not measure_memory:
        return out, seconds, None, NOT_MEASURED
    if cuda:
        peak = (torch.cuda.max_memory_allocated(device) - base) / 2**20
        return out, seconds, max(0.0, float(peak)), CUDA_NOTE
    if device.type != "cpu":
        return out, seconds, None, f"not measured: no allocator statistics on {device.type}"
    again, peak, note = _profiled_peak(run)
    if peak is None:
        return out, seconds, None, note
    if not same(out, again):
        return out, seconds, None, REPLAY_DIFFERS
    return out, seconds, float(peak), note


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
             mask_text: str, ends: set[int]) -> list[StepRecord]:
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
        out.append(StepRecord(n, r.block, committed, [text(i) for i in r.region], cands,
                              first_end(r.region, ends)))
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
                       use_chat_template: bool = False,
                       measure_memory: bool = True) -> GenerationResult:
    """Generate ``length`` tokens by iterative unmasking; see the module docstring.

    Blocks: the region is split into ``length // block_length`` blocks filled left to right
    (semi-autoregressive); only masked positions of the current block can be committed. Steps:
    ``steps`` (default ``length``) are split over the blocks as evenly as possible (earlier
    blocks get the extra step when they do not divide), and within a block the tokens per step
    follow ``num_transfer_tokens``. Threshold mode (``threshold`` in (0, 1]): every step commits
    each masked position of the current block whose confidence is at least ``threshold`` (at
    least the strategy's best one), so the number of steps adapts; ``steps`` is then only
    checked, not used, and the steps actually taken are reported. ``measure_memory=False``
    skips the peak-memory measurement (on CPU an untimed profiled replay).
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
    stops, ends = stop_ids(loaded), end_ids(loaded)
    block_steps = split_steps(steps, n_blocks)

    def run() -> tuple[list[int], list[_RawStep], int]:
        gen = torch.Generator(device=device).manual_seed(seed)
        raw: list[_RawStep] = []
        nfe = 0
        x = torch.tensor([lay.ids], dtype=torch.long, device=device)
        masked = torch.ones(length, dtype=torch.bool, device=device)
        block_of = torch.arange(length, device=device) // block_length
        forbidden = None
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
                i += 1
        return x[0, lay.start:lay.start + length].tolist(), raw, nfe

    with torch.inference_mode():
        (region, raw, nfe), seconds, peak, note = _measured(device, run, measure_memory,
                                                            _same_steps)
    mask_text = _mask_text(tok, mask_id)
    content = content_length(region, ends)
    return GenerationResult(
        model=loaded.name, paradigm="diffusion", prompt=prompt, length=length, steps=len(raw),
        block_length=block_length, strategy=strategy, threshold=threshold, nfe=nfe,
        seconds=seconds, tokens_per_second=content / seconds, peak_memory_mb=peak,
        text=_decode(tok, region, ends), trace=_records(tok, raw, mask_id, mask_text, ends),
        token_ids=region, generated_tokens=content, positions=length, temperature=temperature,
        seed=seed, time_per_token=seconds / content if content else None, mask_token=mask_text,
        sampling="greedy" if temperature == 0 else "sample", peak_memory_note=note)


def _same_steps(a: tuple, b: tuple) -> bool:
    """Two runs of a sampler gave the same token ids at every step (the replay check)."""
    return a[0] == b[0] and [r.region for r in a[1]] == [r.region for r in b[1]]


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
    stops, ends = stop_ids(loaded), end_ids(loaded)
    counts = remask_counts(length, steps, schedule)

    def run() -> tuple[list[int], list[_RawStep], int]:
        gen = torch.Generator(device=device).manual_seed(seed)
        raw: list[_RawStep] = []
        x = torch.tensor([lay.ids], dtype=torch.long, device=device)
        forbidden = None
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
        return x[0, lay.start:lay.start + length].tolist(), raw, steps

    with torch.inference_mode():
        (region, raw, nfe), seconds, peak, note = _measured(device, run, measure_memory,
                                                            _same_steps)
    mask_text = _mask_text(tok, mask_id)
    content = content_length(region, ends)
    return GenerationResult(
        model=loaded.name, paradigm="diffusion", prompt=prompt, length=length, steps=steps,
        block_length=length, strategy=f"remask_{schedule}", threshold=None, nfe=nfe,
        seconds=seconds, tokens_per_second=content / seconds, peak_memory_mb=peak,
        text=_decode(tok, region, ends), trace=_records(tok, raw, mask_id, mask_text, ends),
        token_ids=region, generated_tokens=content, positions=length, temperature=t, seed=seed,
        time_per_token=seconds / content if content else None, mask_token=mask_text,
        sampling=sampling, peak_memory_note=note)


# --------------------------------------------------------------------------------------------
# Autoregressive


def autoregressive_generate(loaded: Any, prompt: str, length: int, temperature: float = 0.0,
                            top_k: int | None = None, top_p: float | None = None, seed: int = 0,
                            use_chat_template: bool = False, n_candidates: int = 5,
                            stop_at_eos: bool = True, use_cache: bool = True,
                            measure_memory: bool = True) -> GenerationResult:
    """One token per forward pass, reusing the KV cache (``use_cache=False`` re-runs the whole
    sequence each step: same tokens, for checking and for showing what the cache saves).

    The trace has one step per token, in block ``step - 1`` (autoregression is block diffusion
    with blocks of one token, so ``block_length`` is 1 and the strategy ``left_to_right``);
    ``tokens`` lists the tokens generated so far followed by ``"<pending>"`` for the rest of the
    ``length`` positions. The run stops at its end-of-sequence token (that token is written and
    its forward pass counted, it is not content); ``stop_at_eos=False`` writes on to ``length``
    tokens (for checking), and the content still ends at the first end-of-sequence token.
    ``length`` and ``positions`` stay the requested canvas either way.
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
    stops, ends = stop_ids(loaded), end_ids(loaded)
    cache_kw = cache_keyword(model)

    def run() -> tuple[list[int], list[_RawStep], int]:
        gen = torch.Generator(device=device).manual_seed(seed)
        raw: list[_RawStep] = []
        generated: list[int] = []
        seq = torch.tensor([ids], dtype=torch.long, device=device)
        forbidden = None
        out = model(input_ids=seq, use_cache=use_cache)
        nfe = 1
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
            if step == length - 1 or (stop_at_eos and token_id in ends):
                break
            nxt = token.view(1, 1)
            if use_cache:
                out = model(input_ids=nxt, use_cache=True, **{cache_kw: out.past_key_values})
            else:
                seq = torch.cat([seq, nxt], dim=1)
                out = model(input_ids=seq, use_cache=False)
            nfe += 1
        return generated, raw, nfe

    with torch.inference_mode():
        (generated, raw, nfe), seconds, peak, note = _measured(device, run, measure_memory,
                                                               _same_steps)
    n = len(generated)
    records = _records(tok, raw, None, PENDING, ends)
    for r in records:
        r.tokens = r.tokens + [PENDING] * (length - len(r.tokens))
    content = content_length(generated, ends)
    return GenerationResult(
        model=loaded.name, paradigm="autoregressive", prompt=prompt, length=length, steps=n,
        block_length=1, strategy="left_to_right", threshold=None, nfe=nfe, seconds=seconds,
        tokens_per_second=content / seconds, peak_memory_mb=peak,
        text=_decode(tok, generated, ends), trace=records, token_ids=generated,
        generated_tokens=content, positions=length, temperature=temperature, seed=seed,
        time_per_token=seconds / content if content else None, mask_token=PENDING,
        sampling="greedy" if temperature == 0 else "sample", peak_memory_note=note)


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
    "autoregressive": "stops at its end-of-sequence token",
}


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
            by_prompt.setdefault(r["prompt_index"], set()).add(_normalise(r["text"]))
        consistency = sum(len(s) == 1 for s in by_prompt.values()) / len(by_prompt)
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
    }


def compare(ar_loaded: Any, diff_loaded: Any, prompts: Sequence[tuple[str, str | None]],
            length: int = 16, steps: int | None = None, block_length: int | None = None,
            strategy: str = "low_confidence", threshold: float | None = None,
            temperature: float = 0.0, top_k: int | None = None, top_p: float | None = None,
            seeds: Sequence[int] = (0,), ar_chat_template: bool = False,
            diffusion_chat_template: bool = False, warmup: bool = True,
            progress: Callable[[int, int, str], None] | None = None,
            measure_memory: bool = True) -> dict:
    """Run the autoregressive and the diffusion model on every prompt and seed, side by side.

    Order: the two paradigms alternate which goes first from one run to the next (ABBA), so
    a drift in machine speed affects both alike; ``warmup`` first runs each once on one token,
    untimed. The autoregressive model stops at its end-of-sequence token. Per paradigm:
    ``accuracy`` = fraction of runs with an expected answer whose generated text contains it
    (case-insensitive; None without expectations); ``tokens_per_second`` = all *content* tokens
    (``generated_tokens``: before each run's first end-of-sequence/padding token, so a canvas
    filled with [SEP] does not count) / all seconds; ``generated_tokens`` and ``positions``
    (totals), ``mean_generated_tokens``, ``tokens_per_forward_pass`` (content) and
    ``positions_per_forward_pass``; ``mean_seconds``, ``mean_nfe``; ``peak_memory_mb`` = the
    largest per-run peak (each run measured as in ``diffusion_generate``; ``measure_memory=False``
    skips it); ``consistency`` (with two or more seeds) = fraction of prompts whose generated
    text (lower-cased, whitespace-normalised) is the same for every seed, else None. The result's
    ``definitions`` says the same in words.
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
                                       n_candidates=0, measure_memory=measure_memory and n > 1)

    def run_diff(prompt: str, seed: int) -> GenerationResult:
        return diffusion_generate(diff_loaded, prompt, length, steps=steps,
                                  block_length=block_length, strategy=strategy,
                                  threshold=threshold, temperature=temperature, top_k=top_k,
                                  top_p=top_p, seed=seed, n_candidates=0,
                                  use_chat_template=diffusion_chat_template,
                                  measure_memory=measure_memory)

    if warmup:
        first = prompts[0][0]
        run_ar(first, seeds[0], 1)
        diffusion_generate(diff_loaded, first, 1, strategy=strategy, n_candidates=0,
                           use_chat_template=diffusion_chat_template, measure_memory=False)
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
                        "generated_tokens": res.generated_tokens, "positions": res.positions,
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
        "definitions": dict(COMPARE_DEFINITIONS),
    }
