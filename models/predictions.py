"""What a model predicts: fill-mask top-k, next-token top-k, and continuation.

Each returns the `predict --json` dict: {"model", "task", "prompt", "predictions": [{"token",
"probability"}], "text"} (plus "masks" for several [MASK]s and "notices").
"""

from __future__ import annotations

import math

import numpy as np

from models.errors import UserError
from models.loading import Loaded

LONG_PREFILL = 512  # tokens; above this the continuation runs with fused attention


def _softmax(x: np.ndarray) -> np.ndarray:
    x = np.asarray(x, dtype=np.float64)
    e = np.exp(x - x.max(axis=-1, keepdims=True))
    return e / e.sum(axis=-1, keepdims=True)


def _top(tokenizer, probs: np.ndarray, k: int) -> list[dict]:
    order = np.argsort(-probs)[:k]
    return [{"token": tokenizer.decode([int(i)]).strip() or tokenizer.convert_ids_to_tokens(int(i)),
             "token_id": int(i), "probability": float(probs[i])} for i in order]


def check_top_k(top_k: int) -> int:
    if not isinstance(top_k, int) or top_k < 1 or top_k > 1000:
        raise UserError(f"top-k must be an integer from 1 to 1000, got {top_k!r}.")
    return top_k


def mask_positions(loaded: Loaded, ids: list[int]) -> list[int]:
    mask_id = loaded.tokenizer.mask_token_id
    if mask_id is None:
        raise UserError(f"'{loaded.name}' has no mask token, so it cannot fill masks.")
    return [i for i, t in enumerate(ids) if t == mask_id]


def fill_mask_from_logits(loaded: Loaded, prompt: str, ids: list[int], logits: np.ndarray,
                          top_k: int = 5, rows: list[int] | None = None) -> dict:
    """Top-k at every [MASK]; `logits  # [token, vocab]` from one forward pass, or only the
    positions `rows` of it (a Trace's logits and logit_rows)."""
    tok = loaded.tokenizer
    positions = mask_positions(loaded, ids)
    if not positions:
        raise UserError(f"The prompt has no {tok.mask_token} token for '{loaded.name}' to fill. "
                        f"Example: 'the capital of japan is {tok.mask_token}.'")
    masks = []
    filled = list(ids)
    for pos in positions:
        probs = _softmax(logits[pos if rows is None else rows.index(pos)])
        masks.append({"position": pos, "predictions": _top(tok, probs, top_k)})
        filled[pos] = int(np.argmax(probs))
    text = tok.decode(filled, skip_special_tokens=True)
    return {"model": loaded.name, "task": loaded.task, "prompt": prompt,
            "predictions": masks[0]["predictions"], "masks": masks, "text": text}


def next_token_from_logits(loaded: Loaded, prompt: str, logits: np.ndarray,
                           top_k: int = 5) -> dict:
    probs = _softmax(logits[-1])
    preds = _top(loaded.tokenizer, probs, top_k)
    return {"model": loaded.name, "task": loaded.task, "prompt": prompt, "predictions": preds,
            "text": preds[0]["token"]}


def continuation(loaded: Loaded, prompt: str, max_new_tokens: int = 12, temperature: float = 0.0,
                 top_p: float = 1.0, seed: int = 0, use_chat_template: bool | None = None,
                 trace=None) -> str:
    """Greedy (temperature 0) or sampled continuation; the chat template for chat models.

    `trace`: a capture of exactly these prompt ids with its KV cache (`Trace.cache`): a greedy
    continuation then goes on from it instead of running the prompt through the model again
    (the same tokens as `generate`; tested)."""
    import torch

    if not math.isfinite(temperature) or temperature < 0:
        raise UserError(f"temperature must be a finite number >= 0, got {temperature}.")
    if not (0 < top_p <= 1):
        raise UserError(f"top-p must be in (0, 1], got {top_p}.")
    tok = loaded.tokenizer
    chat = loaded.entry.chat if use_chat_template is None else use_chat_template
    if chat and getattr(tok, "chat_template", None):
        text = tok.apply_chat_template([{"role": "user", "content": prompt}],
                                       add_generation_prompt=True, tokenize=False)
        ids = tok(text, add_special_tokens=False)["input_ids"]
        if tok.bos_token_id is not None and (not ids or ids[0] != tok.bos_token_id):
            ids = [tok.bos_token_id] + ids
    else:
        ids = tok(prompt)["input_ids"]
    from analysis.capture import context_length

    room = context_length(loaded) - max_new_tokens
    if room < 1:
        raise UserError(f"{max_new_tokens} new tokens do not fit the context of '{loaded.name}'.")
    ids = ids[-room:]  # the most recent context when the prompt is longer than the model's window
    if (trace is not None and getattr(trace, "cache", None) is not None and temperature == 0
            and list(trace.token_ids) == list(ids)):
        return _greedy_from_cache(loaded, trace, max_new_tokens)
    torch.manual_seed(seed)
    kwargs = dict(max_new_tokens=max_new_tokens, pad_token_id=tok.pad_token_id or tok.eos_token_id)
    if temperature > 0:
        kwargs.update(do_sample=True, temperature=temperature, top_p=top_p)
    else:
        kwargs.update(do_sample=False)
    from analysis.attribution import fused_attention

    # a long prompt's prefill with eager attention holds [head, T, T] per layer: use SDPA
    with torch.no_grad(), fused_attention(loaded.model, len(ids) > LONG_PREFILL):
        out = loaded.model.generate(torch.tensor([ids]), attention_mask=torch.ones(1, len(ids),
                                    dtype=torch.long), **kwargs)
    return tok.decode(out[0, len(ids):], skip_special_tokens=True).strip()


def _greedy_from_cache(loaded: Loaded, trace, max_new_tokens: int) -> str:
    """Greedy decoding that starts from a capture's last logits and KV cache; stops after an
    end-of-sequence token as `generate` does."""
    import torch

    from models.generation import cache_keyword

    model, tok = loaded.model, loaded.tokenizer
    eos = getattr(getattr(model, "generation_config", None), "eos_token_id", None)
    if eos is None:
        eos = tok.eos_token_id
    stops = set(eos if isinstance(eos, list | tuple) else [eos]) - {None}
    kw = cache_keyword(model)
    cache, out_ids = trace.cache, []
    nxt = int(np.argmax(trace.logits_at(-1)))
    with torch.no_grad():
        for step in range(max_new_tokens):
            out_ids.append(nxt)
            if nxt in stops or step == max_new_tokens - 1:
                break
            out = model(input_ids=torch.tensor([[nxt]]), use_cache=True, **{kw: cache})
            cache = out.past_key_values
            nxt = int(out.logits[0, -1].argmax())
    return tok.decode(out_ids, skip_special_tokens=True).strip()


def predict(loaded: Loaded, prompt: str, top_k: int = 5, max_new_tokens: int = 12,
            temperature: float = 0.0, top_p: float = 1.0, seed: int = 0) -> dict:
    """The `predict --json` dict for any model (runs its own forward pass)."""
    import torch

    from analysis.capture import encode

    check_top_k(top_k)
    if loaded.task == "encoder":
        raise UserError(f"'{loaded.name}' is an encoder without an LM head; it predicts nothing. "
                        "Use `analyze` to look inside it.")
    ids, notices = encode(loaded, prompt)
    with torch.no_grad():
        logits = loaded.model(input_ids=torch.tensor([ids])).logits[0].float().numpy()
    if loaded.task in ("fill-mask", "diffusion"):
        out = fill_mask_from_logits(loaded, prompt, ids, logits, top_k)
    else:
        out = next_token_from_logits(loaded, prompt, logits, top_k)
        out["text"] = continuation(loaded, prompt, max_new_tokens, temperature, top_p, seed)
    out["notices"] = notices
    return out
