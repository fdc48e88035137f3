"""Why the model predicts what it predicts: token attribution, per-head attribution, logit lens.

- gradient x input: d log p(target) / d embedding, dotted with the embedding, per token.
- attention rollout (Abnar & Zuidema 2020): heads averaged, 0.5 A + 0.5 I, rows renormalised,
  multiplied through the layers; the target position's row.
- per-head attribution, one sign convention for both methods: the *support* of head h is
  log p(target | all heads) - log p(target | head h removed); positive = the head supports the
  prediction. A gate g_h = 1 multiplies each head's output before the attention output
  projection; "ablation" computes the support exactly (g_h = 0, one forward pass per head),
  "gradient" estimates it to first order by d log p / d g_h at g = 1 (removing the head moves
  g_h from 1 to 0).
- logit lens: each layer's hidden state through the final norm and the unembedding (causal models)
  or the MLM head (encoders): the top token and its probability at every layer and position.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from contextlib import contextmanager

import numpy as np

from analysis.capture import (
    activation_bytes,
    backward_attribution,
    forward_pass,
    gradient_inputs,
    readable_tokens,
    release_pages,
)
from models.attention import NAME as ATTENTION_NAME
from models.attention import AttentionCall
from models.common import UserError

log = logging.getLogger(__name__)

LENS_POSITIONS = 24  # the logit lens covers the last this many positions (the figure's)

# Above this many bytes of activations, the gradient pass recomputes each block in the backward
# pass instead of keeping every block's activations (gradient checkpointing).
CHECKPOINT_ABOVE = 1 * 2**30
# With fused attention nothing [T, T] is kept, and checkpointing (one more forward pass) pays
# only above twice that (TinyLlama-1.1B: not at 512 tokens, 1.5 GB; at 2048 tokens, 6 GB).
CHECKPOINT_FUSED_FACTOR = 2


@contextmanager
def checkpointed_blocks(loaded, enabled: bool):
    """Gradient checkpointing of every transformer block for one backward pass, through
    transformers' own public switches (`activation_checkpointing_enable` / `_disable`, and
    `disable_input_require_grads` for the embedding hook the enable adds and the disable keeps).
    transformers checkpoints a block only while the block module itself is in training mode:
    only the blocks' own flag is raised (their dropout and attention submodules stay in eval
    mode, so nothing computes differently) and everything is restored afterwards. The caller
    holds `loaded.lock`: no other pass sees the switch."""
    from models.loading import block_modules

    model = loaded.model
    blocks = block_modules(model)
    if not enabled or not blocks or not getattr(model, "supports_gradient_checkpointing", False):
        yield False
        return
    model.activation_checkpointing_enable({"use_reentrant": False})
    for block in blocks:
        block.training = True
    try:
        yield True
    finally:
        for block in blocks:
            block.training = False
        model.activation_checkpointing_disable()
        model.disable_input_require_grads()


def target_for(trace, mask_token_id: int | None) -> tuple[int, int] | None:
    """(position, token id) of the prediction to explain, or None (encoder, no [MASK])."""
    if trace.logits.size == 0:
        return None
    if trace.task in ("fill-mask", "diffusion"):
        masks = [i for i, t in enumerate(trace.token_ids) if t == mask_token_id]
        if not masks:
            return None
        pos = masks[0]
    else:
        pos = len(trace.token_ids) - 1
    return pos, int(np.argmax(trace.logits_at(pos)))


def gradient_attribution(loaded, token_ids: list[int], position: int, target: int
                         ) -> tuple[np.ndarray, np.ndarray, float]:
    """One forward and backward pass: (gradient x input per token [T], head gradients
    [layer, head], log p). The analysis takes these from its capture's pass when that fits
    (analysis.capture, MERGED_PASS_MAX); this separate pass serves longer inputs: fused
    attention (no [T, T] weights kept) and, above CHECKPOINT_ABOVE, checkpointed blocks."""
    import torch

    if loaded.attention not in (ATTENTION_NAME, "llada"):
        raise UserError(f"'{loaded.name}' runs its own eager attention: per-head attribution "
                        "needs the dashboard's attention implementation, which this model "
                        "does not match.")
    ids = torch.tensor([token_ids], device=loaded.torch_device)
    attention_bytes, other_bytes = activation_bytes(loaded, len(token_ids))
    with loaded.lock, torch.enable_grad():
        embeds, gates = gradient_inputs(loaded, ids)
        fused = attention_bytes > CHECKPOINT_ABOVE
        call = AttentionCall(gates=gates, fused=fused)
        limit = CHECKPOINT_ABOVE * (CHECKPOINT_FUSED_FACTOR if fused else 1)
        with checkpointed_blocks(loaded, other_bytes + (0 if fused else attention_bytes) > limit):
            _, logits = forward_pass(loaded, ids, [position], call, embeds)
        return backward_attribution(logits[0, 0], embeds, gates, target)


def head_ablation(loaded, token_ids: list[int], position: int, target: int) -> np.ndarray:
    """Exact support of each head, `[layer, head]`: log p(target | all heads) - log p(target |
    that head's output zeroed). Positive = the head supports the prediction (the same sign as
    the gradient method, its first-order estimate)."""
    import torch

    if loaded.attention not in (ATTENTION_NAME, "llada"):
        raise UserError(f"'{loaded.name}' runs its own eager attention: head ablation needs the "
                        "dashboard's attention implementation, which this model does not match.")
    n_layers, n_heads = loaded.n_layers, loaded.n_heads
    ids = torch.tensor([token_ids], device=loaded.torch_device)
    gates = torch.ones(n_layers, n_heads, device=loaded.torch_device)

    def logp() -> float:
        _, logits = forward_pass(loaded, ids, [position], AttentionCall(gates=gates))
        return float(torch.log_softmax(logits[0, 0].double(), -1)[target])

    out = np.zeros((n_layers, n_heads))
    with loaded.lock, torch.no_grad():
        base = logp()
        for layer in range(n_layers):
            for head in range(n_heads):
                gates[layer, head] = 0.0
                out[layer, head] = base - logp()
                gates[layer, head] = 1.0
    return out


def attention_rollout(attentions: np.ndarray) -> np.ndarray:
    """Rollout matrix [query, key] from `attentions  # [layer, head, query, key]`."""
    t = attentions.shape[-1]
    eye = np.eye(t)
    rollout = eye
    for layer in attentions:
        a = 0.5 * layer.astype(np.float64).mean(axis=0) + 0.5 * eye
        a = a / a.sum(axis=-1, keepdims=True)
        rollout = a @ rollout
    return rollout


def rollout_row(attentions: np.ndarray, position: int) -> np.ndarray:
    """Row `position` of `attention_rollout` without the T x T products: e_pos A'_L ... A'_1,
    one vector-matrix product per layer, reading the layers from the top (works on the
    memory-mapped float16 array of a long capture)."""
    t = attentions.shape[-1]
    v = np.zeros(t)
    v[position] = 1.0
    for layer in range(attentions.shape[0] - 1, -1, -1):
        a = 0.5 * attentions[layer].mean(axis=0, dtype=np.float64)  # no float64 copy of all heads
        release_pages(attentions)
        a[np.arange(t), np.arange(t)] += 0.5
        a /= a.sum(axis=-1, keepdims=True)
        v = v @ a
    return v


def _lens_parts(model):
    """(norm or None, head) to map a hidden state to vocabulary logits."""
    if hasattr(model, "cls"):  # BERT MLM head: transform + decoder
        return None, model.cls
    if hasattr(model, "lm_head") and hasattr(model, "roberta"):
        return None, model.lm_head
    for path in ("transformer.ln_f", "model.norm", "gpt_neox.final_layer_norm", "model.final_norm",
                 "model.transformer.ln_f"):
        obj = model
        try:
            for part in path.split("."):
                obj = getattr(obj, part)
        except AttributeError:
            continue
        return obj, model.get_output_embeddings()
    return None, model.get_output_embeddings()


def lens_positions(n_tokens: int, include: Sequence[int] = (), last: int | None = LENS_POSITIONS
                   ) -> list[int]:
    """The positions the logit lens covers: the last `last` (None: all) plus every position in
    `include` (those whose prediction is shown: a [MASK] anywhere, the last token), sorted."""
    start = 0 if last is None else max(0, n_tokens - int(last))
    return sorted(set(range(start, n_tokens)) | {int(p) for p in include if 0 <= p < n_tokens})


def logit_lens(loaded, hidden: np.ndarray, tokenizer, include: Sequence[int] = (),
               last: int | None = LENS_POSITIONS, final_is_normed: bool = False) -> dict:
    """Top token and probability at every layer of the positions `lens_positions(T, include,
    last)` from `hidden  # [layer+1, T, d]`; "positions" lists which.

    Each layer and position costs one LM-head product (d x vocab): for all positions that is
    L + 1 times the model's own LM head over the prompt (GPT-2 small at 128 tokens: 1.7 s, six
    forward passes), so by default only the positions the figure shows are projected.
    Every layer (layer L is block L's output, before the final norm; see analysis.capture) goes
    through the model's final norm, so the last layer reproduces the model's logits;
    `final_is_normed`: the capture could only read layer L after the final norm (not normed again).
    """
    import torch

    norm, head = _lens_parts(loaded.model)
    if head is None:
        return {"positions": [], "top_tokens": [], "top_probs": np.zeros((0, 0)),
                "top_ids": np.zeros((0, 0))}
    n, t = hidden.shape[:2]
    positions = lens_positions(t, include, last)
    k = len(positions)
    param = next(loaded.model.parameters())
    with loaded.lock, torch.no_grad():
        h = torch.from_numpy(np.ascontiguousarray(hidden[:, positions], dtype=np.float32)).to(
            device=param.device, dtype=param.dtype)
        if norm is not None:  # every layer but a final one the model already normed
            upto = n - 1 if final_is_normed else n
            h = torch.cat([norm(h[:upto]), h[upto:]])
        h = h.reshape(n * k, -1)
        # all layers and positions through the head in few large products (one per 64 MB of
        # logits: 2x faster than one per layer); the top probability without a softmax
        # array: p = 1 / sum(exp(logits - max))
        vocab = int(getattr(loaded.model.config, "vocab_size", 0) or 2**16)
        step = max(1, (64 * 2**20) // (4 * vocab))
        ids, probs = [], []
        for r in range(0, n * k, step):
            logits = head(h[r:r + step]).float()
            m, i = logits.max(-1)
            logits.sub_(m[:, None]).exp_()
            ids.append(i)
            probs.append(1.0 / logits.sum(-1).double())
        top_ids = torch.cat(ids).reshape(n, k).cpu().numpy()
        top_probs = torch.cat(probs).reshape(n, k).cpu().numpy()
    tokens = [readable_tokens(tokenizer, list(row)) for row in top_ids]
    return {"positions": positions, "predicted": sorted(int(p) for p in include),
            "top_tokens": tokens, "top_probs": top_probs,
            "top_ids": top_ids}
