"""Quality measures of generated text, defined and computable here (the Details tab explains them).

- **fluency** (``perplexity``): the perplexity of the generated text under a reference causal
  model, given the prompt: with the prompt's ids p and the text's ids t_1..t_N (the text as the
  reference tokenizer splits it, after a space), PPL = exp(-(1/N) sum_i log q(t_i | p, t_<i)),
  q the reference model's next-token distribution. Lower = the reference model finds the text
  more expected. None for an empty text.
- **relevance** (``relevance``): the cosine similarity of the prompt's and the text's sentence
  embeddings from all-MiniLM-L6-v2 (registry name ``minilm-l6``), each the mean of the last
  hidden states over the text's tokens (padding excluded), as sentence-transformers computes
  them. In [-1, 1]; higher = the text is about what the prompt asks. None for an empty text.
- **consistency** (``models.compare``): the share of prompts whose text is the same for every
  seed.

Each measure holds its model's lock for the pass.
"""

from __future__ import annotations

import math
from typing import Any

import torch

from models.common import UserError
from models.sampling import model_device

RELEVANCE_MODEL = "minilm-l6"


def perplexity(reference: Any, prompt: str, text: str) -> float | None:
    """Fluency: the reference causal model's perplexity of ``text`` after ``prompt``."""
    if reference.task != "causal":
        raise UserError(f"Fluency needs a causal reference model (e.g. tiny-gpt2); "
                        f"'{reference.name}' is a {reference.task} model.")
    if not text.strip():
        return None
    tok = reference.tokenizer
    context = [int(i) for i in tok(prompt, add_special_tokens=True)["input_ids"]]
    target = [int(i) for i in tok(" " + text.strip(), add_special_tokens=False)["input_ids"]]
    if not target:
        return None
    if not context:  # a tokenizer that gives nothing for the prompt: start from its BOS/EOS
        bos = getattr(tok, "bos_token_id", None) or getattr(tok, "eos_token_id", None)
        context = [int(bos)] if bos is not None else []
    ids = torch.tensor([context + target], device=model_device(reference.model))
    with reference.lock, torch.inference_mode():
        logits = reference.model(input_ids=ids).logits[0].to(torch.float64)
    logp = torch.log_softmax(logits[:-1], dim=-1)  # row i predicts token i + 1
    first = max(len(context) - 1, 0)
    picked = logp[first:].gather(-1, ids[0, first + 1:, None]).squeeze(-1)
    if picked.numel() == 0:  # one token and no context to predict it from
        return None
    return float(math.exp(-picked.mean()))


def embed(encoder: Any, texts: list[str]) -> torch.Tensor:
    """Sentence embeddings [text, hidden]: the mean of the encoder's last hidden states over
    each text's tokens (padding excluded), L2-normalised (all-MiniLM-L6-v2's recipe)."""
    tok = encoder.tokenizer
    batch = tok(texts, padding=True, truncation=True, return_tensors="pt")
    batch = {k: v.to(model_device(encoder.model)) for k, v in batch.items()}
    with encoder.lock, torch.inference_mode():
        out = encoder.model(**batch)
    hidden = (out.last_hidden_state if hasattr(out, "last_hidden_state") else out[0]).float()
    weights = batch["attention_mask"].unsqueeze(-1).to(hidden.dtype)
    mean = (hidden * weights).sum(dim=1) / weights.sum(dim=1).clamp(min=1e-9)
    return torch.nn.functional.normalize(mean, dim=-1)


def relevance(encoder: Any, prompt: str, text: str) -> float | None:
    """Relevance: cosine similarity of the prompt's and the text's sentence embeddings."""
    if not text.strip():
        return None
    e = embed(encoder, [prompt, text.strip()])
    return float((e[0] * e[1]).sum())
