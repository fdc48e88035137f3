"""The project's attention implementation, chosen through transformers' registry.

transformers picks a model's attention function by name (``AttentionInterface``). This module
registers one, ``"dashboard"``: eager attention (q k^T * scale + mask, softmax in float32,
weights @ v: the same numbers as each model's own eager function, checked when a model is
loaded), plus what the analysis and the samplers ask for *per forward pass* through one keyword
argument, ``dashboard=AttentionCall(...)``, which transformers passes down to every attention
call. A shared, cached model is therefore never modified per request:

- ``record(layer, weights)``: each layer's attention weights `[batch, head, query, key]` as the
  pass goes (the capture streams them into its statistics and store);
- ``weights_out(layer)``: where the softmax may write that layer's weights (the capture's store,
  so they are not copied there afterwards), or None;
- ``gates`` `[layer, head]`: each head's output is multiplied by its gate before the attention
  output projection (per-head attribution: a gradient at g = 1, or an ablation at g = 0);
- ``fused``: PyTorch's scaled_dot_product_attention instead (no [T, T] weights are kept; for
  gradient passes and prefills of long inputs that need no weights);
- ``prefix``/``suffix``: key/value states of positions outside the current query window, per
  layer (the block-wise approximate KV caches of Fast-dLLM, models.samplers): keys and values
  are the cached prefix, the window's own, then the cached suffix;
- ``keep_kv``: store every layer's key/value states of this pass (to build such a cache).

Without the keyword the function is plain eager attention. The output of the last block (the
residual stream before the final norm, design.md's layer L) is recorded by a forward hook the
loader installs once (`install_block_hook`), which reads the same call object from the block's
keyword arguments.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch

log = logging.getLogger(__name__)

NAME = "dashboard"
KWARG = "dashboard"


@dataclass
class AttentionCall:
    """Instructions for one forward pass (see the module docstring). Layers count from 0 here
    (the attention module's ``layer_idx``, or the order of the calls when a model has none)."""

    record: Callable[[int, torch.Tensor], None] | None = None
    weights_out: Callable[[int], torch.Tensor | None] | None = None
    gates: torch.Tensor | None = None  # [layer, head]
    fused: bool = False
    prefix: list[tuple[torch.Tensor, torch.Tensor]] | None = None  # per layer (k, v) [b, kv, t, dh]
    suffix: list[tuple[torch.Tensor, torch.Tensor]] | None = None
    keep_kv: bool = False
    kv: list[tuple[torch.Tensor, torch.Tensor]] = field(default_factory=list)  # filled by keep_kv
    last_block: torch.Tensor | None = None  # [batch, token, d]: block L's output (install_block_hook)
    calls: int = 0  # attention calls so far in this pass

    def layer_of(self, module: Any) -> int:
        idx = getattr(module, "layer_idx", None)
        layer = int(idx) if isinstance(idx, int) else self.calls
        self.calls += 1
        return layer


def _eager(query: torch.Tensor, key: torch.Tensor, value: torch.Tensor,
           mask: torch.Tensor | None, scaling: float, softcap: float | None,
           softmax_dtype: torch.dtype | None = torch.float32, out: torch.Tensor | None = None
           ) -> tuple[torch.Tensor, torch.Tensor]:
    """Attention weights [b, h, q, k] and output [b, q, h, dh] of eager attention. The softmax
    runs in float32, as HF's eager functions; `softmax_dtype=None` runs it in the query's dtype
    (float64 for a float64 model: what tests comparing batchings at 1e-9 need). `out`: a tensor
    the weights are written into when its shape and dtype fit and no gradient is taken."""
    weights = torch.matmul(query, key.transpose(2, 3)) * scaling
    if softcap is not None:
        weights = torch.tanh(weights / softcap) * softcap
    if mask is not None:
        if mask.dtype == torch.bool:
            weights = weights.masked_fill(~mask, torch.finfo(weights.dtype).min)
        else:
            weights = weights + mask[..., : key.shape[-2]]
    dtype = softmax_dtype or query.dtype
    if (out is not None and out.shape == weights.shape and out.dtype == dtype == query.dtype
            and out.device == weights.device and not weights.requires_grad):
        weights = torch.softmax(weights, dim=-1, dtype=dtype, out=out)
    else:
        weights = torch.softmax(weights, dim=-1, dtype=dtype).to(query.dtype)
    return weights, torch.matmul(weights, value).transpose(1, 2).contiguous()


def _window_mask(mask: torch.Tensor | None, n_prefix: int, n_suffix: int) -> torch.Tensor | None:
    """The mask of the window's own keys widened to the cached prefix and suffix keys (all
    visible: the caches are used by bidirectional masked-diffusion models)."""
    if mask is None or (n_prefix == 0 and n_suffix == 0):
        return mask
    zeros = torch.zeros if mask.dtype != torch.bool else torch.ones
    fill = dict(dtype=mask.dtype, device=mask.device)
    parts = [zeros(*mask.shape[:-1], n_prefix, **fill), mask,
             zeros(*mask.shape[:-1], n_suffix, **fill)]
    return torch.cat(parts, dim=-1)


def attention(module: torch.nn.Module, query: torch.Tensor, key: torch.Tensor,
              value: torch.Tensor, attention_mask: torch.Tensor | None, scaling: float | None = None,
              dropout: float = 0.0, **kwargs) -> tuple[torch.Tensor, torch.Tensor | None]:
    """The registered attention function: `query  # [batch, head, q, dh]`, `key`/`value`
    `[batch, kv_head, k, dh]`; returns (output [batch, q, head, dh], weights or None)."""
    call: AttentionCall | None = kwargs.get(KWARG)
    layer = call.layer_of(module) if call is not None else -1
    if scaling is None:
        scaling = query.shape[-1] ** -0.5
    if call is not None and call.keep_kv:
        call.kv.append((key.detach(), value.detach()))
    if call is not None and (call.prefix is not None or call.suffix is not None):
        pre = call.prefix[layer] if call.prefix is not None else None
        suf = call.suffix[layer] if call.suffix is not None else None
        n_pre = 0 if pre is None else pre[0].shape[-2]
        n_suf = 0 if suf is None else suf[0].shape[-2]
        keys = [t for t in (pre[0] if pre else None, key, suf[0] if suf else None) if t is not None]
        vals = [t for t in (pre[1] if pre else None, value, suf[1] if suf else None) if t is not None]
        key, value = torch.cat(keys, dim=-2), torch.cat(vals, dim=-2)
        attention_mask = _window_mask(attention_mask, n_pre, n_suf)
    groups = query.shape[1] // key.shape[1]
    if groups > 1:  # grouped-query attention: every query head sees its key/value head
        key = key.repeat_interleave(groups, dim=1)
        value = value.repeat_interleave(groups, dim=1)
    if call is not None and call.fused:
        mask = attention_mask[..., : key.shape[-2]] if attention_mask is not None else None
        causal = mask is None and query.shape[-2] > 1 and bool(getattr(module, "is_causal", False))
        out = torch.nn.functional.scaled_dot_product_attention(
            query, key, value, attn_mask=mask, is_causal=causal, scale=scaling)
        out, weights = out.transpose(1, 2).contiguous(), None
    else:
        into = call.weights_out(layer) if call is not None and call.weights_out else None
        weights, out = _eager(query, key, value, attention_mask, scaling, kwargs.get("softcap"),
                              out=into)
        if dropout and module.training:
            raise RuntimeError("the dashboard attention runs models in eval mode only")
        if call is not None and call.record is not None:
            call.record(layer, weights)
    if call is not None and call.gates is not None:
        out = out * call.gates[layer].to(out.dtype)[None, None, :, None]
    return out, weights


def register() -> None:
    """Register the implementation (and the additive-mask builder it reads) once per process."""
    from transformers import AttentionInterface
    from transformers.masking_utils import AttentionMaskInterface, eager_mask

    AttentionInterface.register(NAME, attention)
    AttentionMaskInterface.register(NAME, eager_mask)


def install(model: Any) -> bool:
    """Switch a model loaded with eager attention to the dashboard implementation when it gives
    exactly the same outputs on a short probe (True); otherwise leave it on eager (False: the
    capture then records through output_attentions, and per-call gates, fused attention and
    caches are unavailable). Done once, by the loader, before the model is shared."""
    register()
    if not hasattr(model, "set_attn_implementation"):
        return False
    vocab = int(getattr(model.config, "vocab_size", 0) or 0)
    if vocab < 8:
        return False
    ids = torch.arange(3, 3 + min(6, vocab - 3))[None] % vocab
    device = next(model.parameters()).device
    try:
        with torch.no_grad():
            ref = _probe(model, ids.to(device))
            model.set_attn_implementation(NAME)
            got = _probe(model, ids.to(device), AttentionCall())
    except Exception as exc:  # noqa: BLE001 - any failure: keep the model's own eager attention
        log.info("dashboard attention not used for %s: %s", type(model).__name__, exc)
        _back_to_eager(model)
        return False
    tol = 1e-5 if ref.dtype == torch.float32 else 2e-2
    if ref.shape != got.shape or not torch.allclose(ref.float(), got.float(), atol=tol, rtol=tol):
        log.info("dashboard attention differs from eager for %s: kept eager", type(model).__name__)
        _back_to_eager(model)
        return False
    return True


def _probe(model: Any, ids: torch.Tensor, call: AttentionCall | None = None) -> torch.Tensor:
    kwargs = {KWARG: call} if call is not None else {}
    out = model(input_ids=ids, **kwargs)
    logits = getattr(out, "logits", None)
    return logits if logits is not None else out[0]


def _back_to_eager(model: Any) -> None:
    try:
        model.set_attn_implementation("eager")
    except Exception:  # noqa: BLE001 - it was eager before the probe
        pass


def install_block_hook(block: torch.nn.Module) -> Any:
    """A forward hook on the last transformer block that copies its output (the residual stream
    before the final norm) into the AttentionCall of the pass, when there is one."""

    def hook(module, args, kwargs, output):
        call = kwargs.get(KWARG)
        if isinstance(call, AttentionCall):
            call.last_block = output[0] if isinstance(output, tuple) else output

    return block.register_forward_hook(hook, with_kwargs=True)
