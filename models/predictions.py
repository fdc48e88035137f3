"""What a model predicts: fill-mask top-k, next-token top-k (typed `Predictions`), and the
continuation (a generation the caller asks for explicitly). `predict` gives the `predict --json`
dict: {"model", "task", "prompt", "predictions": [{"token", "token_id", "probability"}], "text",
"chat_template", "notices"} (plus "masks" for several [MASK]s).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np

from models.common import UserError, context_limit, encode_prompt, prepare_input
from models.loading import Loaded


def _softmax(x: np.ndarray) -> np.ndarray:
    x = np.asarray(x, dtype=np.float64)
    e = np.exp(x - x.max(axis=-1, keepdims=True))
    return e / e.sum(axis=-1, keepdims=True)


@dataclass
class TokenProb:
    token: str
    token_id: int
    probability: float


@dataclass
class MaskFill:
    position: int  # token position of the mask
    top: list[TokenProb]


@dataclass
class Predictions:
    """What the model predicts from the analysed ids: the top-k at the prediction position
    (the last token of a causal model, the first [MASK] of a masked one), every mask's top-k,
    and for fill-mask the sentence with each mask filled by its top-1."""

    model: str
    task: str
    prompt: str
    top: list[TokenProb] = field(default_factory=list)
    masks: list[MaskFill] = field(default_factory=list)
    filled: str = ""
    chat_template: bool = False

    def to_json(self, continuation: str | None = None) -> dict:
        """`predict --json`; "text" is the continuation (causal) or the filled sentence."""
        out = {"model": self.model, "task": self.task, "prompt": self.prompt,
               "predictions": [vars(t) for t in self.top],
               "text": self.filled if self.task != "causal" else (continuation or ""),
               "chat_template": self.chat_template}
        if len(self.masks) > 1:
            out["masks"] = [{"position": m.position, "predictions": [vars(t) for t in m.top]}
                            for m in self.masks]
        return out


def _top(tokenizer, probs: np.ndarray, k: int) -> list[TokenProb]:
    order = np.argsort(-probs)[:k]
    return [TokenProb(tokenizer.decode([int(i)]).strip() or tokenizer.convert_ids_to_tokens(int(i)),
                      int(i), float(probs[i])) for i in order]


def check_top_k(top_k: int) -> int:
    if not isinstance(top_k, int) or top_k < 1 or top_k > 1000:
        raise UserError(f"top-k must be an integer from 1 to 1000, got {top_k!r}.")
    return top_k


def mask_positions(loaded: Loaded, ids: list[int]) -> list[int]:
    mask_id = loaded.mask_id
    if mask_id is None:
        raise UserError(f"'{loaded.name}' has no mask token, so it cannot fill masks.")
    return [i for i, t in enumerate(ids) if t == mask_id]


def fill_mask(loaded: Loaded, prompt: str, ids: list[int], logits: np.ndarray,
              top_k: int = 5, rows: list[int] | None = None, chat_template: bool = False
              ) -> Predictions:
    """Top-k at every [MASK]; `logits  # [token, vocab]` from one forward pass, or only the
    positions `rows` of it (a Trace's logits and logit_rows)."""
    tok = loaded.tokenizer
    positions = mask_positions(loaded, ids)
    if not positions:
        raise UserError(f"The prompt has no {loaded.mask_text} token for '{loaded.name}' to fill. "
                        "Example: 'the capital of japan is [MASK].'")
    masks = []
    filled = list(ids)
    for pos in positions:
        probs = _softmax(logits[pos if rows is None else rows.index(pos)])
        masks.append(MaskFill(pos, _top(tok, probs, top_k)))
        filled[pos] = int(np.argmax(probs))
    return Predictions(loaded.name, loaded.task, prompt, masks[0].top, masks,
                       tok.decode(filled, skip_special_tokens=True), chat_template)


def next_token(loaded: Loaded, prompt: str, logits: np.ndarray, top_k: int = 5,
               chat_template: bool = False) -> Predictions:
    """Top-k of the next token from `logits  # [row, vocab]` (the last row is read)."""
    probs = _softmax(logits[-1])
    return Predictions(loaded.name, loaded.task, prompt, _top(loaded.tokenizer, probs, top_k),
                       chat_template=chat_template)


def continuation(loaded: Loaded, prompt: str, max_new_tokens: int = 12, temperature: float = 0.0,
                 top_p: float = 1.0, seed: int = 0, chat_template: bool = False,
                 ids: list[int] | None = None) -> str:
    """Greedy (temperature 0) or sampled continuation of exactly the ids that were analysed:
    `ids` when given (a Trace's token_ids), else the prompt encoded as `encode_prompt` does (the
    chat template only when `chat_template`). The input is never cut: near the end of the
    context fewer tokens are generated. A generation, not an analysis: the caller asks for it
    after the analysis (one prefill, then one forward pass per new token)."""
    import torch

    if not math.isfinite(temperature) or temperature < 0:
        raise UserError(f"temperature must be a finite number >= 0, got {temperature}.")
    if not (0 < top_p <= 1):
        raise UserError(f"top-p must be in (0, 1], got {top_p}.")
    tok = loaded.tokenizer
    if ids is None:
        ids = encode_prompt(tok, prompt, chat_template, loaded.name)
    ids = list(ids)
    max_new_tokens = min(max_new_tokens, (context_limit(loaded.model) or 2048) - len(ids))
    if max_new_tokens < 1:
        return ""
    kwargs = dict(max_new_tokens=max_new_tokens, pad_token_id=tok.pad_token_id or tok.eos_token_id)
    if temperature > 0:
        kwargs.update(do_sample=True, temperature=temperature, top_p=top_p)
    else:
        kwargs.update(do_sample=False)
    x = torch.tensor([ids], device=loaded.torch_device)
    with loaded.lock, torch.no_grad():
        torch.manual_seed(seed)
        out = loaded.model.generate(x, attention_mask=torch.ones_like(x), **kwargs)
    return tok.decode(out[0, len(ids):], skip_special_tokens=True).strip()


def predict(loaded: Loaded, prompt: str, top_k: int = 5, max_new_tokens: int = 12,
            temperature: float = 0.0, top_p: float = 1.0, seed: int = 0,
            chat_template: bool = False) -> dict:
    """The `predict --json` dict for any model (runs its own forward pass)."""
    import torch

    check_top_k(top_k)
    if loaded.task == "encoder":
        raise UserError(f"'{loaded.name}' is an encoder without an LM head; it predicts nothing. "
                        "Use `analyze` to look inside it.")
    limit = context_limit(loaded.model) or 2048
    if loaded.task == "causal" and max_new_tokens >= limit:
        raise UserError(f"{max_new_tokens} new tokens do not fit the context of '{loaded.name}' "
                        f"({limit} tokens, the prompt included).")
    # a causal model's prompt is fitted so that the continuation has room
    room = limit - max_new_tokens if loaded.task == "causal" else None
    ids, notices = prepare_input(loaded, prompt, max_tokens=room, chat_template=chat_template,
                                 max_reason=f"{loaded.name} with room for {max_new_tokens} new "
                                            "tokens")
    with loaded.lock, torch.no_grad():
        logits = loaded.model(input_ids=torch.tensor([ids], device=loaded.torch_device)
                              ).logits[0].float().cpu().numpy()
    if loaded.task in ("fill-mask", "diffusion"):
        out = fill_mask(loaded, prompt, ids, logits, top_k, chat_template=chat_template).to_json()
    else:
        text = continuation(loaded, prompt, max_new_tokens, temperature, top_p, seed, ids=ids)
        out = next_token(loaded, prompt, logits, top_k, chat_template).to_json(text)
    out["notices"] = notices
    return out
