"""One forward pass -> a Trace: tokens, hidden states, attentions, logits.

Everything downstream (metrics, head analysis, figures, UI, bundle) reads the Trace; nothing
re-runs the model to draw a plot.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field

import numpy as np

from models.errors import UserError

log = logging.getLogger(__name__)


@dataclass
class Trace:
    model: str  # registry name
    task: str  # fill-mask | causal | diffusion | encoder
    prompt: str
    token_ids: list[int]
    tokens: list[str]  # readable token strings, one per position
    hidden: np.ndarray  # [layer + 1, token, d_model] float32; layer 0 = embedding output
    attentions: np.ndarray  # [layer, head, query, key] float32 (GQA expanded to every query head)
    logits: np.ndarray  # [token, vocab] float32
    causal: bool  # True when row i may attend to keys 0..i only
    notices: list[str] = field(default_factory=list)  # e.g. truncation, shown to the user
    segments: list[tuple[int, int]] = field(default_factory=list)  # corpus mode: [start, end) rows

    @property
    def n_layers(self) -> int:
        return int(self.attentions.shape[0])

    @property
    def n_heads(self) -> int:
        return int(self.attentions.shape[1])

    @property
    def n_tokens(self) -> int:
        return len(self.tokens)


def readable_tokens(tokenizer, ids: list[int]) -> list[str]:
    """Token strings a person can read: byte-level 'Ġ' and sentencepiece '▁' shown as a space."""
    out = []
    for i in ids:
        tok = tokenizer.convert_ids_to_tokens(int(i))
        if tok is None:
            tok = f"<{i}>"
        tok = tok.replace("Ġ", " ").replace("▁", " ").replace("Ċ", "\\n")
        out.append(tok)
    return out


def encode(loaded, prompt: str, max_tokens: int | None = None) -> tuple[list[int], list[str]]:
    """Token ids for a prompt (special tokens as the model expects), truncated with a notice."""
    if prompt is None or not str(prompt).strip():
        raise UserError("The prompt is empty. Type some text to analyse.")
    tok = loaded.tokenizer
    mask = getattr(tok, "mask_token", None)
    if mask and mask != "[MASK]":  # let users type [MASK] for RoBERTa's <mask> and the like
        prompt = prompt.replace("[MASK]", mask)
    ids = tok(prompt, add_special_tokens=True)["input_ids"]
    limit = context_length(loaded)
    if max_tokens is not None:
        limit = min(limit, max_tokens)
    notices = []
    if len(ids) > limit:
        notices.append(f"The prompt has {len(ids)} tokens; only the first {limit} were analysed "
                       f"(the limit for {loaded.name}).")
        ids = ids[:limit]
    return ids, notices


def context_length(loaded) -> int:
    cfg = loaded.model.config
    for key in ("max_position_embeddings", "n_positions", "n_ctx"):
        v = getattr(cfg, key, None)
        if isinstance(v, int) and v > 0:
            return v
    return 2048


def _expand_heads(att: np.ndarray, n_heads: int) -> np.ndarray:
    """[head, q, k] with fewer heads (grouped-query attention) -> every query head."""
    if att.shape[0] == n_heads:
        return att
    return np.repeat(att, n_heads // att.shape[0], axis=0)


def capture(loaded, prompt: str, max_tokens: int | None = None,
            input_ids: list[int] | None = None) -> Trace:
    """Run one forward pass with hidden states and attentions and keep them as numpy arrays.

    ``input_ids`` (already tokenised, e.g. a partly masked diffusion state) bypasses encoding.
    """
    import torch

    if input_ids is None:
        ids, notices = encode(loaded, prompt, max_tokens)
    else:
        ids, notices = list(input_ids), []
    model = loaded.model
    with torch.no_grad():
        out = model(input_ids=torch.tensor([ids]), output_hidden_states=True,
                    output_attentions=True)
    if not out.attentions or out.attentions[0] is None:
        raise UserError(f"'{loaded.name}' returned no attention weights (it must be loaded with "
                        "attn_implementation='eager').")
    n_heads = loaded.n_heads
    hidden = np.stack([h[0].float().numpy() for h in out.hidden_states]).astype(np.float32)
    attentions = np.stack([_expand_heads(a[0].float().numpy(), n_heads)
                           for a in out.attentions]).astype(np.float32)
    logits = getattr(out, "logits", None)
    logits = (logits[0].float().numpy().astype(np.float32) if logits is not None
              else np.zeros((len(ids), 0), np.float32))
    return Trace(model=loaded.name, task=loaded.task, prompt=prompt, token_ids=ids,
                 tokens=readable_tokens(loaded.tokenizer, ids), hidden=hidden,
                 attentions=attentions, logits=logits, causal=loaded.causal, notices=notices)
