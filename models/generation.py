"""Autoregressive and masked-diffusion samplers that record every step: the public API.

The samplers live in small modules; this one names what callers use and defines what they
count. Four samplers share one result type (``GenerationResult``, models.trace) and one trace
format, so the UI, the command line, the GIF/HTML exports and the comparison read the same data:

- ``diffusion_generate``: masked diffusion with low-confidence remasking as in LLaDA (Nie et al.
  2025). The generated region starts fully masked; every step runs one forward pass over the
  whole sequence (bidirectional attention), proposes a token for every masked position and
  *commits* some of them. A committed token never changes. Optional semi-autoregressive blocks,
  a confidence threshold (adaptive number of steps), classifier-free guidance, Fast-dLLM's
  block-wise approximate KV cache (``cache="prefix"|"dual"``, models.kv_cache) and early
  stopping (models.diffusion).
- ``remask_generate``: the RoBERTa-as-diffusion schedule (reference 002): every step re-predicts
  *all* generated positions, then re-masks the least confident fraction given by a schedule.
  Tokens may change from step to step.
- ``autoregressive_generate``: one token per forward pass with the KV cache
  (models.autoregressive).
- ``uniform_generate``: uniform-noise block diffusion (DiffusionGemma, models.uniform_diffusion):
  nothing is masked, the canvas starts as random tokens, each step accepts the lowest-entropy
  positions and re-noises the rest, so an accepted token can change later; blocks stop
  adaptively. ``diffusion_generate`` hands a model with ``loaded.paradigm == "uniform"`` to it.

``compare`` (models.compare) runs both paradigms over a prompt set; ``models.quality`` measures
the texts; ``models.interactive.Stepper`` takes the diffusion sampler's decisions one at a time.

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
  conditional and the unconditional sequence, run as one batch of two). A pass over a cached
  window counts 1 like a full pass; ``kv_refreshes`` counts the full passes that rebuilt the
  block KV cache. Content tokens per
  forward pass = generated_tokens / nfe; positions per forward pass = positions / nfe.
- ``seconds``: wall time of the sampling loop (forward passes, choices and a small per-step copy
  for the trace; not tokenisation and not turning ids into strings afterwards) of a run that is
  not profiled. On CUDA the clock stops after a synchronise.
- ``tokens_per_second`` = generated_tokens / seconds (content tokens: prompt, end-of-sequence
  and padding tokens never count); ``time_per_token`` = seconds / generated_tokens (None when
  nothing was generated).
- An autoregressive run stops at its end-of-sequence token (``stop_at_eos=False`` writes on to
  ``length``; the content still ends at the first end token). A diffusion run with
  ``early_stop`` ends once its content is decided (an end token committed with nothing masked
  before it); its ``stop_note`` and the last step's ``note`` say so.
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

from models.autoregressive import autoregressive_generate, cache_keyword
from models.compare import COMPARE_DEFINITIONS, Quality, agreement, compare, read_prompts_file
from models.diffusion import diffusion_generate, remask_generate
from models.kv_cache import CACHE_MODES
from models.sampling import (
    MAX_SEED,
    SAMPLINGS,
    SCHEDULES,
    STRATEGIES,
    mask_schedule,
    num_transfer_tokens,
    process_logits,
    remask_counts,
    split_steps,
)
from models.trace import BAR_METRICS, PENDING, RESULT_METRICS, GenerationResult, StepRecord
from models.uniform_diffusion import uniform_generate

__all__ = ["autoregressive_generate", "cache_keyword", "COMPARE_DEFINITIONS", "Quality",
           "agreement", "compare", "read_prompts_file", "diffusion_generate", "remask_generate",
           "CACHE_MODES", "MAX_SEED", "SAMPLINGS", "SCHEDULES", "STRATEGIES", "mask_schedule",
           "num_transfer_tokens", "process_logits", "remask_counts", "split_steps",
           "BAR_METRICS", "PENDING", "RESULT_METRICS", "GenerationResult", "StepRecord",
           "uniform_generate"]
