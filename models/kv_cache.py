"""The block-wise approximate KV cache of Fast-dLLM (Wu et al. 2025) for masked diffusion.

A masked diffusion model attends bidirectionally, so every committed token changes the keys and
values of every position: an exact cache does not exist. Fast-dLLM's observation is that
within one block of semi-autoregressive decoding the keys and values *outside* the block change
little from step to step, so they can be computed once per block and reused:

- at each block boundary one full forward pass over the whole sequence gives the block's first
  logits and, per layer, the key/value states of every position (``full_pass``);
- ``prefix`` mode: the later steps of the block run the model on the block *and everything
  after it*; the prompt and the finished blocks (the prefix) are read from the cache;
- ``dual`` mode: the later steps run the model on the block only; the prefix *and* the still
  masked suffix are read from the cache.

What it approximates: the cached states were computed when the current block was still fully
masked (and, in dual mode, the suffix as it was then). A committed token in the block would
have changed them slightly; the cache ignores that until the next block boundary, where
everything is recomputed. With blocks of one position every step is a block boundary, so the
cache changes nothing.

The cache is used through ``models.attention``'s per-call argument (``AttentionCall``: keep_kv
fills it, prefix/suffix read it), so the shared model is never modified. A window keeps its
absolute positions (``position_ids``), so learned and rotary position embeddings are right.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

from models.attention import KWARG, AttentionCall
from models.common import UserError
from models.sampling import logits_of

CACHE_MODES = ("none", "prefix", "dual")


@dataclass
class BlockKV:
    """Per layer (key, value) ``[batch, kv_head, token, head_dim]`` of the whole sequence, from
    the forward pass at a block boundary; ``step`` is the 0-based step that computed them."""

    kv: list[tuple[torch.Tensor, torch.Tensor]]
    step: int

    def before(self, start: int) -> list[tuple[torch.Tensor, torch.Tensor]]:
        return [(k[:, :, :start], v[:, :, :start]) for k, v in self.kv]

    def after(self, end: int) -> list[tuple[torch.Tensor, torch.Tensor]]:
        return [(k[:, :, end:], v[:, :, end:]) for k, v in self.kv]


def check_cache(loaded: Any, cache: str, n_blocks: int, length: int) -> str:
    """The cache mode when this model and these settings can use it, else a UserError that
    says what works."""
    if cache not in CACHE_MODES:
        raise UserError(f"Unknown cache '{cache}'; choose one of {', '.join(CACHE_MODES)}.")
    if cache == "none":
        return cache
    if n_blocks < 2:
        raise UserError(f"cache '{cache}' needs blocks: it is rebuilt at each block boundary and "
                        f"reused inside the block, and length {length} is one block. Set a "
                        "block length that divides the length and is smaller than it (e.g. "
                        f"{max(1, length // 4)}), or use cache 'none'.")
    if getattr(loaded, "attention", None) != "dashboard":
        raise UserError(f"cache '{cache}' needs the dashboard's attention implementation, which "
                        f"'{loaded.name}' does not run (its own attention code); use cache "
                        "'none' with it. The cache works with models loaded through transformers' "
                        "attention interface, e.g. tiny-diffusion or bert-base-uncased.")
    return cache


def position_offset(model: Any) -> int:
    """The first position id a model gives its first token: 0, or for RoBERTa-style
    embeddings (they count positions from padding_idx + 1) padding_idx + 1."""
    base = getattr(model, "base_model", model)
    pad = getattr(getattr(base, "embeddings", None), "padding_idx", None)
    return int(pad) + 1 if isinstance(pad, int) else 0


def full_pass(model: Any, x: torch.Tensor) -> tuple[torch.Tensor, BlockKV]:
    """Logits [batch, token, vocab] of the whole sequence and every layer's key/value states."""
    call = AttentionCall(keep_kv=True)
    logits = logits_of(model, x, **{KWARG: call})
    return logits, BlockKV(call.kv, -1)


def window_pass(model: Any, x: torch.Tensor, start: int, end: int, cache: BlockKV,
                mode: str) -> torch.Tensor:
    """Logits [batch, end' - start, vocab] of the window that starts at ``start``: positions
    start..end-1 (dual: the prefix before and the suffix after them from the cache) or
    start..the last (prefix: only the prefix from the cache)."""
    stop = end if mode == "dual" else x.shape[1]
    first = start + position_offset(model)  # the ids the full pass gave these positions
    positions = torch.arange(first, first + stop - start, device=x.device).expand(x.shape[0], -1)
    call = AttentionCall(prefix=cache.before(start),
                         suffix=cache.after(end) if mode == "dual" else None)
    return logits_of(model, x[:, start:stop], position_ids=positions, **{KWARG: call})
