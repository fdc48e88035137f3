"""The autoregressive sampler: one token per forward pass, left to right, with the model's exact
KV cache, stopping at its end-of-sequence token. Same processed logits, candidates and
confidences as the diffusion samplers (``models.generation``'s docstring), same result type.
"""

from __future__ import annotations

import inspect
import time
from typing import Any

import torch

from models.common import UserError, encode_prompt, whole_number
from models.measure import measured
from models.sampling import (
    MAX_SEED,
    check_fits,
    check_prompt,
    check_sampling,
    choose,
    content_length,
    decode_content,
    end_ids,
    forbidden_ids,
    model_device,
    process_logits,
    stop_ids,
    top_candidates,
)
from models.trace import PENDING, GenerationResult, RawStep, records, same_steps


def cache_keyword(model: Any) -> str:
    """The name of the KV-cache argument of `model.forward`: transformers 5.x renamed
    `past_key_values` (deprecated) to `cache`; older models take only the former."""
    return "cache" if "cache" in inspect.signature(model.forward).parameters else "past_key_values"


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
    prompt = check_prompt(prompt)
    length = whole_number("length", length, 1)
    temperature = check_sampling(temperature, top_k, top_p)
    seed = whole_number("seed", seed, 0, MAX_SEED)
    n_candidates = whole_number("n_candidates", n_candidates, 0)
    ids = encode_prompt(loaded.tokenizer, prompt, use_chat_template, loaded.name)
    if not ids:
        raise UserError("The prompt encodes to no tokens; type some text.")
    check_fits(loaded, len(ids), length)
    model, device = loaded.model, model_device(loaded.model)
    stops, ends = stop_ids(loaded), end_ids(loaded)
    cache_kw = cache_keyword(model)

    def run() -> tuple[list[int], list[RawStep], int]:
        gen = torch.Generator(device=device).manual_seed(seed)
        raw: list[RawStep] = []
        generated: list[int] = []
        t0 = time.perf_counter()
        seq = torch.tensor([ids], dtype=torch.long, device=device)
        forbidden = None
        out = model(input_ids=seq, use_cache=use_cache)
        nfe = 1
        for step in range(length):
            logits = out.logits[0, -1]
            if forbidden is None:
                forbidden = forbidden_ids(loaded, logits.shape[-1], None, stops, device)
            z = process_logits(logits, forbidden, top_k, top_p)
            probs = torch.softmax(z, dim=-1)
            token = choose(z, temperature, gen)
            token_id = int(token)
            generated.append(token_id)
            raw.append(RawStep(step, [(step, token_id, float(probs[token]))], list(generated),
                               top_candidates(probs[None], [step], n_candidates),
                               elapsed=time.perf_counter() - t0))
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

    with loaded.lock, torch.inference_mode():
        (generated, raw, nfe), seconds, peak, note = measured(device, run, measure_memory,
                                                              same_steps)
    return _result(loaded, prompt, length, generated, raw, nfe, ends, seconds, peak, note,
                   temperature, seed, use_cache)


def _result(loaded: Any, prompt: str, length: int, generated: list[int], raw: list[RawStep],
            nfe: int, ends: set[int], seconds: float, peak: float | None, note: str,
            temperature: float, seed: int, use_cache: bool) -> GenerationResult:
    """The finished run as a GenerationResult: every step's tokens padded with ``"<pending>"`` to
    ``length`` positions, the content ending at the first end-of-sequence token."""
    trace = records(loaded.tokenizer, raw, None, PENDING, ends)
    for r in trace:
        r.tokens = r.tokens + [PENDING] * (length - len(r.tokens))
    content = content_length(generated, ends)
    return GenerationResult(
        model=loaded.name, paradigm="autoregressive", prompt=prompt, length=length,
        steps=len(generated), block_length=1, strategy="left_to_right", threshold=None, nfe=nfe,
        seconds=seconds, tokens_per_second=content / seconds, peak_memory_mb=peak,
        text=decode_content(loaded.tokenizer, generated, ends), trace=trace,
        token_ids=generated, generated_tokens=content, positions=length,
        temperature=temperature, seed=seed,
        time_per_token=seconds / content if content else None, mask_token=PENDING,
        sampling="greedy" if temperature == 0 else "sample", peak_memory_note=note,
        cache="exact" if use_cache else "none")
