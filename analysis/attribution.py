"""Why the model predicts what it predicts: token attribution, per-head attribution, logit lens.

- gradient x input: d log p(target) / d embedding, dotted with the embedding, per token.
- attention rollout (Abnar & Zuidema 2020): heads averaged, 0.5 A + 0.5 I, rows renormalised,
  multiplied through the layers; the target position's row.
- per-head attribution: a gate g_h = 1 multiplies each head's output before the attention output
  projection; the gradient d log p / d g_h is the head's first-order effect ("gradient"), or the
  exact change of log p when g_h = 0 ("ablation", one forward pass per head).
- logit lens: each layer's hidden state through the final norm and the unembedding (causal models)
  or the MLM head (encoders): the top token and its probability at every layer and position.
"""

from __future__ import annotations

import logging
from contextlib import contextmanager

import numpy as np

log = logging.getLogger(__name__)

_OUT_PROJ_SUFFIXES = ("attention.output.dense", "attn.c_proj", "self_attn.o_proj",
                      "attention.o_proj", "attn.out_proj", "attn_out")


LENS_POSITIONS = 24  # the logit lens covers the last this many positions (the figure's)

def attention_out_projections(model) -> list:
    """The attention output projection of every layer, in layer order."""
    found = [m for name, m in model.named_modules() if name.endswith(_OUT_PROJ_SUFFIXES)
             and "crossattention" not in name]
    return found


@contextmanager
def head_gates(model, n_layers: int, n_heads: int, gates):
    """Multiply each head's output by gates[layer, head] (a tensor) inside the forward pass."""
    projections = attention_out_projections(model)
    if len(projections) != n_layers:
        raise RuntimeError(f"found {len(projections)} attention output projections for "
                           f"{n_layers} layers")
    handles = []
    for layer, proj in enumerate(projections):
        def pre_hook(module, args, layer=layer):
            x = args[0]
            shape = x.shape
            x = x.reshape(*shape[:-1], n_heads, shape[-1] // n_heads)
            x = x * gates[layer].to(x.dtype)[:, None]
            return (x.reshape(shape), *args[1:])
        handles.append(proj.register_forward_pre_hook(pre_hook))
    try:
        yield
    finally:
        for h in handles:
            h.remove()


# Above this many bytes of attention activations, the backward pass recomputes each block
# instead of keeping every block's attention (gradient checkpointing, eval mode kept).
CHECKPOINT_ABOVE = 1 * 2**30
# With fused attention nothing [T, T] is kept, and checkpointing (one more forward pass) pays
# only above twice that (TinyLlama-1.1B: not at 512 tokens, 1.5 GB; at 2048 tokens, 6 GB).
CHECKPOINT_FUSED_FACTOR = 2


@contextmanager
def checkpointed_blocks(model, enabled: bool):
    """Wrap each transformer block's forward in torch.utils.checkpoint (eval mode, no dropout)."""
    if not enabled:
        yield
        return
    from torch.utils.checkpoint import checkpoint

    spec = (getattr(model, "_can_record_outputs", None) or {}).get("hidden_states")
    blocks = [m for m in model.modules() if isinstance(spec, type) and isinstance(m, spec)]
    originals = []
    for block in blocks:
        original = block.forward

        def forward(*args, _original=original, **kwargs):
            return checkpoint(_original, *args, use_reentrant=False, **kwargs)
        originals.append((block, original))
        block.forward = forward
    try:
        yield
    finally:
        for block, _ in originals:
            del block.forward  # back to the class's forward


@contextmanager
def fused_attention(model, enabled: bool):
    """Run `model` with PyTorch's scaled_dot_product_attention instead of eager attention.

    The gradient pass needs no attention weights, and SDPA's CPU kernels never hold a
    [head, T, T] matrix, forward or backward (at 2048 tokens eager attention is 0.5 GB per
    layer and per copy). Restored to eager afterwards; the capture needs eager (its hooks read
    the weights). Callers run one model job at a time (the app's "model" queue, the CLI)."""
    current = getattr(model.config, "_attn_implementation", None)
    if not enabled or current != "eager" or not hasattr(model, "set_attn_implementation"):
        yield current == "sdpa"
        return
    try:
        model.set_attn_implementation("sdpa")
    except (ValueError, ImportError, NotImplementedError) as exc:  # not every model has SDPA
        log.debug("no SDPA for %s: %s", type(model).__name__, exc)
        yield False
        return
    try:
        yield True
    finally:
        model.set_attn_implementation("eager")


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


def activation_bytes(loaded, t: int) -> tuple[int, int]:
    """Rough bytes a backward pass keeps over `t` tokens: (eager attention, everything else)."""
    cfg = loaded.model.config
    n_layers, n_heads = loaded.n_layers, loaded.n_heads
    attention = 3 * 4 * n_layers * n_heads * t * t  # eager: kept for the backward pass
    d = int(getattr(cfg, "hidden_size", 0) or 0)
    d_ff = int(getattr(cfg, "intermediate_size", None) or getattr(cfg, "n_inner", None) or 4 * d)
    other = 4 * n_layers * t * (8 * d + 3 * d_ff)  # the rest a block keeps, roughly
    return attention, other


# The capture's forward pass also serves the gradient (one forward pass fewer) while a backward
# through eager attention keeps at most this much by `activation_bytes` (TinyLlama-1.1B at 512
# tokens: 3.7 GB estimated, whole analysis measured at 2.6 GB peak over the weights; at 2048
# tokens far over: a separate pass with fused attention and checkpointing, gradient_attribution).
MERGED_PASS_MAX = 4 * 2**30


def merged_pass_fits(loaded, t: int) -> bool:
    """Whether the capture of `t` tokens may also serve the gradient: its backward fits
    MERGED_PASS_MAX and every layer's head outputs can be gated (`head_gates`)."""
    return (sum(activation_bytes(loaded, t)) <= MERGED_PASS_MAX
            and len(attention_out_projections(loaded.model)) == loaded.n_layers)


def gradient_inputs(loaded, ids):
    """(input embeddings as a leaf that requires grad, head gates of ones) for `ids  # [1, T]`."""
    import torch

    embeds = loaded.model.get_input_embeddings()(ids).detach().requires_grad_(True)
    return embeds, torch.ones(loaded.n_layers, loaded.n_heads, requires_grad=True)


def backward_attribution(logits_row, embeds, gates, target: int
                         ) -> tuple[np.ndarray, np.ndarray, float]:
    """Backward from log p(target) of `logits_row  # [vocab]`: (gradient x input per token,
    head gradients [layer, head], log p)."""
    import torch

    with torch.enable_grad():  # the caller's forward pass made the graph; this may run outside
        logp = torch.log_softmax(logits_row.double(), -1)[target]
        logp.backward()
    gxi = (embeds.grad[0] * embeds[0]).sum(-1).detach().double().numpy()
    return gxi, gates.grad.detach().double().numpy(), float(logp.detach())


def gradient_attribution(loaded, token_ids: list[int], position: int, target: int
                         ) -> tuple[np.ndarray, np.ndarray, float]:
    """One forward and backward pass: (gradient x input per token [T], head gradients
    [layer, head], log p). The analysis takes these from its capture's pass when that fits
    (analysis.capture, MERGED_PASS_MAX); this separate pass serves longer inputs."""
    import torch

    model = loaded.model
    n_layers, n_heads = loaded.n_layers, loaded.n_heads
    embeds, gates = gradient_inputs(loaded, torch.tensor([token_ids]))
    attention_bytes, other_bytes = activation_bytes(loaded, len(token_ids))
    with torch.enable_grad(), head_gates(model, n_layers, n_heads, gates), \
            fused_attention(model, attention_bytes > CHECKPOINT_ABOVE) as fused, \
            checkpointed_blocks(model, other_bytes + (0 if fused else attention_bytes)
                                > CHECKPOINT_ABOVE * (CHECKPOINT_FUSED_FACTOR if fused else 1)), \
            logit_rows(model, [position], len(token_ids)):
        logits = model(inputs_embeds=embeds, use_cache=False).logits[0]
        row = logits[0] if logits.shape[0] == 1 else logits[position]
        return backward_attribution(row, embeds, gates, target)


@contextmanager
def logit_rows(model, rows: list[int], n_tokens: int):
    """Inside the block, `model`'s output head (LM head, MLM decoder) sees only the hidden
    states of positions `rows`: logits [rows, vocab] instead of [T, vocab] (for GPT-2 small at
    128 tokens the 50k-vocabulary head over every position is 44% of the forward pass). Only
    forward passes of the calling thread are changed. Callers check
    the logits' length: a model whose head is not its output embeddings module gives all rows.
    """
    import threading

    import torch

    head = model.get_output_embeddings() if hasattr(model, "get_output_embeddings") else None
    if head is None:
        yield
        return
    me = threading.get_ident()
    index = torch.tensor(rows, dtype=torch.long)

    def pre_hook(module, args):
        x = args[0] if args else None
        if (threading.get_ident() == me and isinstance(x, torch.Tensor) and x.dim() == 3
                and x.shape[1] == n_tokens):
            return (x[:, index], *args[1:])
        return None

    handle = head.register_forward_pre_hook(pre_hook)
    try:
        yield
    finally:
        handle.remove()


def head_ablation(loaded, token_ids: list[int], position: int, target: int) -> np.ndarray:
    """Exact: log p(target) with one head zeroed minus log p with all heads. [layer, head]"""
    import torch

    model = loaded.model
    n_layers, n_heads = loaded.n_layers, loaded.n_heads
    ids = torch.tensor([token_ids])
    gates = torch.ones(n_layers, n_heads)

    def logp() -> float:
        with torch.no_grad(), head_gates(model, n_layers, n_heads, gates):
            logits = model(input_ids=ids).logits[0, position]
        return float(torch.log_softmax(logits.double(), -1)[target])

    base = logp()
    out = np.zeros((n_layers, n_heads))
    for layer in range(n_layers):
        for head in range(n_heads):
            gates[layer, head] = 0.0
            out[layer, head] = logp() - base
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
    from analysis.capture import release_pages

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
    for path in ("transformer.ln_f", "model.norm", "gpt_neox.final_layer_norm", "model.final_norm"):
        obj = model
        try:
            for part in path.split("."):
                obj = getattr(obj, part)
        except AttributeError:
            continue
        return obj, model.get_output_embeddings()
    return None, model.get_output_embeddings()


def logit_lens(loaded, hidden: np.ndarray, tokenizer, final_is_normed: bool = True,
               last: int | None = LENS_POSITIONS) -> dict:
    """Top token and probability at every layer of the last `last` positions (None: all) from
    `hidden  # [layer+1, T, d]`; "positions" lists which.

    Each layer and position costs one LM-head product (d x vocab): for all positions that is
    L + 1 times the model's own LM head over the prompt (GPT-2 small at 128 tokens: 1.7 s, six
    forward passes), so by default only the positions the figure shows are projected.
    HuggingFace causal models return the last hidden state already through the final norm, so
    the final norm is applied to layers 0..L-1 only; the last layer reproduces the model's logits.
    """
    import torch

    norm, head = _lens_parts(loaded.model)
    if head is None:
        return {"positions": [], "top_tokens": [], "top_probs": np.zeros((0, 0)),
                "top_ids": np.zeros((0, 0))}
    n, t = hidden.shape[:2]
    start = 0 if last is None else max(0, t - int(last))
    k = t - start
    with torch.no_grad():
        h = torch.from_numpy(np.ascontiguousarray(hidden[:, start:], dtype=np.float32))
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
            logits = head(h[r:r + step])
            m, i = logits.max(-1)
            logits.sub_(m[:, None]).exp_()
            ids.append(i)
            probs.append(1.0 / logits.sum(-1).double())
        top_ids = torch.cat(ids).reshape(n, k).numpy()
        top_probs = torch.cat(probs).reshape(n, k).numpy()
    from analysis.capture import readable_tokens

    tokens = [readable_tokens(tokenizer, list(row)) for row in top_ids]
    return {"positions": list(range(start, t)), "top_tokens": tokens, "top_probs": top_probs,
            "top_ids": top_ids}
