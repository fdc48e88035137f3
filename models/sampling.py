"""Sampling primitives shared by the samplers and the stepper: schedules, the per-step maths on
logits, what the tokenizer says about special tokens, and the checks of sampler settings.

Plain functions on tensors and ids; the definitions are those of ``models.generation``'s
docstring (processed logits, candidate, confidence, end of a region).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import torch

from models.common import UserError, check_text, context_limit, finite_number, whole_number

STRATEGIES = ("low_confidence", "high_confidence", "low_entropy", "high_entropy", "random")
SCHEDULES = ("linear", "cosine", "exponential")
SAMPLINGS = ("greedy", "top_k", "nucleus")
MAX_SEED = 2**32 - 1  # seeds are 0 .. MAX_SEED (torch generators take 64 bits; keep headroom)
LLADA_MASK_ID = 126336  # GSAI-ML/LLaDA's <|mdm_mask|>, when neither tokenizer nor config says


# --------------------------------------------------------------------------------------------
# Schedules


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
    check_choice("schedule", schedule, SCHEDULES)
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


# --------------------------------------------------------------------------------------------
# Per-step maths


def process_logits(logits: torch.Tensor, forbidden: torch.Tensor | None = None,
                   top_k: int | None = None, top_p: float | None = None) -> torch.Tensor:
    """logits [..., vocab] -> float64 processed logits: the forbidden ids at -inf, then the
    ``top_k`` largest and/or the smallest set whose probability reaches ``top_p``; a new tensor."""
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


def top_candidates(probs: torch.Tensor, positions: list[int], n: int) -> list[tuple]:
    """(position, [ids], [probs]) of the ``n`` most probable tokens of each row of ``probs``
    (``positions`` names the rows); [] when ``n`` is 0."""
    if n <= 0 or not positions:
        return []
    k = min(n, probs.shape[-1])
    top = torch.topk(probs, k, dim=-1)
    vals, idx = top.values.tolist(), top.indices.tolist()
    return [(p, idx[i], vals[i]) for i, p in enumerate(positions)]


# --------------------------------------------------------------------------------------------
# What the tokenizer and config say


def id_list(value: Any) -> list[int]:
    """A config or tokenizer token-id field (None, one id, or a list with Nones) as a list."""
    if value is None:
        return []
    if isinstance(value, (list, tuple, set)):
        return [int(v) for v in value if v is not None]
    return [int(value)]


def mask_token_id(loaded: Any) -> int:
    """The id a masked position holds; UserError for a model that has none."""
    tok_id = getattr(loaded.tokenizer, "mask_token_id", None)
    if tok_id is None:
        tok_id = getattr(loaded.model.config, "mask_token_id", None)
    if tok_id is None and "llada" in str(getattr(loaded.model.config, "model_type", "")).lower():
        tok_id = LLADA_MASK_ID
    if tok_id is None:
        raise UserError(f"'{loaded.name}' has no mask token, so it cannot generate by unmasking. "
                        "Use a masked or diffusion language model (e.g. tiny-diffusion).")
    return int(tok_id)


def mask_text(tokenizer: Any, mask_id: int) -> str:
    """The placeholder text of a masked position in traces."""
    t = getattr(tokenizer, "mask_token", None)
    if t:
        return str(t)
    t = tokenizer.convert_ids_to_tokens(mask_id)
    return t if t else "[MASK]"


def stop_ids(loaded: Any) -> set[int]:
    """End-of-sequence ids: the tokenizer's EOS and SEP and the config's EOS ids."""
    tok, cfg = loaded.tokenizer, loaded.model.config
    out = set(id_list(getattr(tok, "eos_token_id", None)) + id_list(getattr(tok, "sep_token_id", None)))
    out.update(id_list(getattr(cfg, "eos_token_id", None)))
    gen = getattr(loaded.model, "generation_config", None)
    if gen is not None:
        out.update(id_list(getattr(gen, "eos_token_id", None)))
    return out


def end_ids(loaded: Any) -> set[int]:
    """Ids that end the content of a generated region: ``stop_ids`` and the padding token."""
    return stop_ids(loaded) | set(id_list(getattr(loaded.tokenizer, "pad_token_id", None)))


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


def forbidden_ids(loaded: Any, vocab: int, mask_id: int | None, stops: set[int],
                  device: torch.device) -> torch.Tensor:
    """Bool [vocab]: ids never proposed: the mask, CLS/BOS, PAD and UNK, unless they are EOS."""
    tok = loaded.tokenizer
    ids = set(id_list(mask_id))
    for name in ("cls_token_id", "bos_token_id", "pad_token_id", "unk_token_id", "mask_token_id"):
        ids.update(id_list(getattr(tok, name, None)))
    ids -= stops
    mask = torch.zeros(vocab, dtype=torch.bool, device=device)
    valid = [i for i in ids if 0 <= i < vocab]
    if valid:
        mask[valid] = True
    return mask


def decode_content(tokenizer: Any, ids: Sequence[int], ends: set[int]) -> str:
    """The text of a region's content: its ids before the first end id, decoded."""
    end = first_end(ids, ends)
    return tokenizer.decode(list(ids) if end is None else list(ids)[:end],
                            skip_special_tokens=True)


def model_device(model: Any) -> torch.device:
    try:
        return next(model.parameters()).device
    except (StopIteration, AttributeError):
        return torch.device("cpu")


def logits_of(model: Any, x: torch.Tensor, **kwargs) -> torch.Tensor:
    """The logits [batch, token, vocab] of one forward pass."""
    out = model(input_ids=x, **kwargs)
    return out.logits if hasattr(out, "logits") else out[0]


# --------------------------------------------------------------------------------------------
# Checks of sampler settings (the one place they are validated)


def check_choice(name: str, value: Any, choices: Sequence[str]) -> str:
    if value not in choices:
        raise UserError(f"Unknown {name} '{value}'; choose one of {', '.join(choices)}.")
    return value


def check_sampling(temperature: Any, top_k: Any, top_p: Any) -> float:
    """The temperature (0 = greedy, else positive) after checking top-k and top-p."""
    t = finite_number("temperature", temperature)
    if t < 0:
        raise UserError(f"temperature must be 0 (greedy) or positive, got {temperature}.")
    if top_k is not None:
        whole_number("top_k", top_k, 1)
    if top_p is not None:
        p = finite_number("top_p", top_p)
        if not 0 < p <= 1:
            raise UserError(f"top_p must be in (0, 1], got {top_p}.")
    return t


def check_prompt(prompt: Any) -> str:
    if not isinstance(prompt, str) or not prompt.strip():
        raise UserError("The prompt is empty. Type some text to start from.")
    return check_text(prompt)


def check_fits(loaded: Any, n_prompt: int, length: int) -> None:
    """UserError when the prompt and ``length`` generated positions exceed the context."""
    limit = context_limit(loaded.model)
    if limit is not None and n_prompt + length > limit:
        room = max(0, limit - n_prompt)
        raise UserError(f"length {length} does not fit: '{loaded.name}' takes {limit} tokens and "
                        f"the prompt uses {n_prompt}, so length can be at most {room}.")


def check_unmasking_model(loaded: Any) -> None:
    """UserError unless the model predicts masked tokens (diffusion or fill-mask); a
    uniform-noise diffusion model (DiffusionGemma) has no masked positions to unmask."""
    if getattr(loaded, "paradigm", "masked") == "uniform":
        raise UserError(f"'{loaded.name}' is a uniform-noise block diffusion model (DiffusionGemma):"
                        " nothing is masked, every position always holds a token, so step mode "
                        "and the re-mask schedule (--schedule) do not apply. Generate in the "
                        "commit mode, which runs the model's own sampler.")
    if loaded.task == "causal":
        raise UserError(f"'{loaded.name}' is a causal (autoregressive) model; diffusion generation "
                        "needs a masked or diffusion model (e.g. tiny-diffusion). Use the "
                        "autoregressive mode for it.")
    if loaded.task == "encoder":
        raise UserError(f"'{loaded.name}' is an encoder without a language-model head; it "
                        "cannot predict tokens.")
