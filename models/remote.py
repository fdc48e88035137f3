"""Models whose modelling code ships with the checkpoint (`trust_remote_code`): LLaDA.

LLaDA's code (OLMo-derived, GSAI-ML/LLaDA-8B-Instruct) does not go through transformers'
attention registry: its blocks call a fused scaled_dot_product_attention and never return
attention weights, its forward takes no extra keyword arguments, and under transformers 5 it
needs three load-time fixes (post_init, tie_weights' arguments, use_cache=False on every call).
This module loads it from the folder's own code and installs, once, on the loaded model:

- on every block, a `_scaled_dot_product_attention` that computes the same attention itself
  (softmax(q k^T / sqrt(d) + bias) in float32) when the pass asks for weights or head gates,
  and otherwise calls the original fused one;
- a forward hook on the last block for design.md's layer L (before the final norm).

The pass's `models.attention.AttentionCall` reaches them through `Loaded.active_call`, set by
`run_llada` while the caller holds `loaded.lock`. `run_llada` is `Loaded.run` for these models.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

import torch

from models.common import UserError

log = logging.getLogger(__name__)

LLADA_MASK_ID = 126336  # GSAI-ML/LLaDA's <|mdm_mask|>, when neither tokenizer nor config says


def load_llada(folder: str, dtype: torch.dtype, revision: str | None = None) -> Any:
    """LLaDA's model class from the folder's own code (never AutoModel: the remote modules
    register "llada" process-wide when imported, after which AutoModel would run the
    first-loaded LLaDA code for every later LLaDA folder, and stop asking for
    trust_remote_code), with the load-time fixes transformers 5 needs."""
    from transformers.dynamic_module_utils import get_class_from_dynamic_module

    config_json = json.loads((Path(folder) / "config.json").read_text())
    auto_map = config_json.get("auto_map") or {}
    missing = [k for k in ("AutoConfig", "AutoModel") if k not in auto_map]
    if missing:
        raise UserError(f"'{folder}' declares remote code but its config.json auto_map has no "
                        f"{', '.join(missing)}.")
    config_cls = get_class_from_dynamic_module(auto_map["AutoConfig"], folder, revision=revision)
    model_cls = get_class_from_dynamic_module(auto_map["AutoModel"], folder, revision=revision)
    fix_for_transformers5(model_cls)
    config = config_cls.from_pretrained(folder)
    return model_cls.from_pretrained(folder, config=config, dtype=dtype,
                                     use_safetensors=True).eval()


def fix_for_transformers5(model_cls) -> None:
    """LLaDA's wrapper never calls post_init() (transformers 5 needs it: all_tied_weights_keys)
    and its tie_weights() takes no arguments (transformers 5 passes some). Done once per class."""
    if model_cls.__dict__.get("_dashboard_fixed", False):
        return
    init, tie = model_cls.__init__, model_cls.tie_weights

    def __init__(self, *args, **kw):
        init(self, *args, **kw)
        if not hasattr(self, "all_tied_weights_keys"):
            self.post_init()

    def tie_weights(self, *args, **kw):
        try:
            return tie(self, *args, **kw)
        except TypeError:
            return tie(self)

    model_cls.__init__, model_cls.tie_weights = __init__, tie_weights
    model_cls._dashboard_fixed = True


def llada_blocks(model) -> list:
    transformer = getattr(getattr(model, "model", None), "transformer", None)
    return list(transformer["blocks"]) if transformer is not None else []


def install_llada(loaded) -> None:
    """The per-block attention recorder and the last-block hook (once, by the loader)."""
    blocks = llada_blocks(loaded.model)
    if not blocks:
        raise UserError(f"'{loaded.name}' has no LLaDA blocks (model.transformer.blocks).")
    for layer, block in enumerate(blocks):
        block._scaled_dot_product_attention = _recording_sdpa(loaded, layer,
                                                              block._scaled_dot_product_attention)

    def last_block(module, args, output):
        call = loaded.active_call
        if call is not None:
            call.last_block = output[0] if isinstance(output, tuple) else output

    blocks[-1].register_forward_hook(last_block)


def _recording_sdpa(loaded, layer: int, fused):
    """LLaDA's attention kernel, computing the weights itself when the pass asks for them."""

    def sdpa(q, k, v, attn_mask=None, dropout_p=0.0, is_causal=False):
        call = loaded.active_call
        if call is None or (call.record is None and call.gates is None) or call.fused:
            out = fused(q, k, v, attn_mask=attn_mask, dropout_p=dropout_p, is_causal=is_causal)
        else:
            if k.shape[1] != q.shape[1]:  # grouped-query attention
                k = k.repeat_interleave(q.shape[1] // k.shape[1], dim=1)
                v = v.repeat_interleave(q.shape[1] // v.shape[1], dim=1)
            scores = torch.matmul(q.float(), k.float().transpose(-1, -2)) * q.shape[-1] ** -0.5
            if attn_mask is not None:
                scores = scores + attn_mask.float()
            weights = torch.softmax(scores, dim=-1)
            if call.record is not None:
                call.record(layer, weights)
            out = torch.matmul(weights.to(v.dtype), v)
        if call is not None and call.gates is not None:
            out = out * call.gates[layer].to(out.dtype)[None, :, None, None]
        return out

    return sdpa


def run_llada(loaded, call=None, input_ids=None, inputs_embeds=None, attention_mask=None,
              output_hidden_states: bool = False, **_ignored):
    """One LLaDA forward pass with the pass's AttentionCall (the caller holds loaded.lock).
    Position i's logits predict token i (not shifted); KV caches are refused by LLaDA's code."""
    kwargs = dict(attention_mask=attention_mask, output_hidden_states=output_hidden_states,
                  use_cache=False)
    if inputs_embeds is not None:
        kwargs["inputs_embeds"] = inputs_embeds
    else:
        kwargs["input_ids"] = input_ids
    loaded.active_call = call
    try:
        return loaded.model(**kwargs)
    finally:
        loaded.active_call = None
