"""One forward pass -> a Trace: tokens, hidden states, attentions, logits.

Everything downstream (metrics, head analysis, figures, UI, bundle) reads the Trace; nothing
re-runs the model to draw a plot.
"""

from __future__ import annotations

import logging
import os
import threading
from contextlib import ExitStack
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
    logits: np.ndarray  # [row, vocab] float32: the positions `logit_rows` (None: every token)
    causal: bool  # True when row i may attend to keys 0..i only
    notices: list[str] = field(default_factory=list)  # e.g. truncation, shown to the user
    segments: list[tuple[int, int]] = field(default_factory=list)  # corpus mode: [start, end) rows
    # per-head statistics computed during capture: {name: [layer, head]} for STAT_NAMES
    head_stats: dict = field(default_factory=dict)
    attention_file: str | None = None  # the .npy file behind `attentions` when kept on disk
    # causal models: the forward pass's KV cache, so a greedy continuation needs no second
    # prefill (analysis.run drops it after use: it is not kept with a result)
    cache: object = field(default=None, repr=False, compare=False)
    # which positions `logits` holds: those the predictions read (causal: the last; masked
    # models: every mask); None when it holds every position
    logit_rows: list[int] | None = None
    # gradient attribution taken from the capture's own forward pass (see `capture`): position,
    # target, grad_x_input [T], head [layer, head], log_prob; None when not asked or not merged
    gradient: dict | None = field(default=None, repr=False)

    def logits_at(self, position: int) -> np.ndarray:
        """The logits [vocab] at token `position` (negative counts from the end)."""
        if position < 0:
            position += self.n_tokens
        if self.logit_rows is None:
            return self.logits[position]
        if position not in self.logit_rows:
            raise KeyError(f"the capture kept no logits at position {position}")
        return self.logits[self.logit_rows.index(position)]

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
    prompt = check_text(str(prompt))
    tok = loaded.tokenizer
    mask = getattr(tok, "mask_token", None)
    if mask and mask != "[MASK]":  # let users type [MASK] for RoBERTa's <mask> and the like
        prompt = prompt.replace("[MASK]", mask)
    ids = tok(prompt, add_special_tokens=True)["input_ids"]
    limit = context_length(loaded)
    whose = f"the context length of {loaded.name}"
    if max_tokens is not None and max_tokens < limit:
        limit, whose = max_tokens, "this server's limit, --max-prompt-tokens"
    notices = []
    if len(ids) > limit:
        notices.append(f"The prompt has {len(ids)} tokens; only the first {limit} were analysed "
                       f"({whose}).")
        ids = ids[:limit]
    return ids, notices


def check_text(prompt: str) -> str:
    """The prompt unchanged when it is valid Unicode text; UserError when it holds undecodable
    bytes (lone surrogates, e.g. invalid UTF-8 on the command line or \\udcxx in JSON)."""
    try:
        prompt.encode("utf-8")
    except UnicodeEncodeError as exc:
        raise UserError(f"The prompt is not valid UTF-8 text (undecodable data at character "
                        f"{exc.start}); retype it or paste it as plain text.") from None
    return prompt


def context_length(loaded) -> int:
    cfg = loaded.model.config
    for key in ("max_position_embeddings", "n_positions", "n_ctx"):
        v = getattr(cfg, key, None)
        if isinstance(v, int) and v > 0:
            return v
    return 2048


# Attention arrays over this size are kept as float16 in a file on disk, not in memory.
ATTENTION_MEMORY_LIMIT = 256 * 2**20


class AttentionStore:
    """Receives one layer's attention `[head, query, key]` at a time as the forward pass goes.

    It computes the per-head statistics on the spot (so nothing needs every layer at once) and
    keeps the pattern: float32 in memory when the whole array fits ATTENTION_MEMORY_LIMIT,
    otherwise float16 appended to an .npy file that is memory-mapped afterwards.
    """

    def __init__(self, n_layers: int, n_heads: int, n_tokens: int, causal: bool):
        from analysis import attention as att_mod

        self._att = att_mod
        self.shape = (n_layers, n_heads, n_tokens, n_tokens)
        self.causal = causal
        self.stats = {name: np.full((n_layers, n_heads), np.nan) for name in STAT_NAMES}
        self.on_disk = 4 * int(np.prod(self.shape, dtype=np.int64)) > ATTENTION_MEMORY_LIMIT
        self.seen = 0
        if self.on_disk:
            import tempfile

            self._dir = tempfile.mkdtemp(prefix="attention-")
            self.path = os.path.join(self._dir, "attention.npy")
            self._fh = open(self.path, "wb")  # noqa: SIM115 - closed in finish()
            np.lib.format.write_array_header_1_0(
                self._fh, {"descr": np.lib.format.dtype_to_descr(np.dtype(np.float16)),
                           "fortran_order": False, "shape": self.shape})
        else:
            self.path = None
            self._array = np.empty(self.shape, dtype=np.float32)

    def add(self, layer: int, att) -> None:
        """One layer's weights, `att  # torch.Tensor or array [head or kv-head, query, key]`."""
        import torch

        w = torch.as_tensor(att).detach().float().cpu()
        if w.shape[0] != self.shape[1]:  # grouped-query attention: every query head
            w = w.repeat_interleave(self.shape[1] // w.shape[0], dim=0)
        a = w.numpy()
        roles = self._att.role_scores(a[None])
        for name in ("previous_token_score", "first_token_score", "self_score"):
            self.stats[name][layer] = roles[name][0]
        entropy, distance = self._att.layer_head_stats(w, self.causal)
        self.stats["attention_entropy"][layer] = entropy
        self.stats["mean_distance"][layer] = distance
        if self.on_disk:
            self._fh.write(w.half().numpy().tobytes())  # torch: ~50x faster than numpy astype
        else:
            self._array[layer] = a
        self.seen += 1

    def finish(self) -> np.ndarray:
        if self.seen != self.shape[0]:
            raise RuntimeError(f"captured {self.seen} attention layers of {self.shape[0]}")
        if not self.on_disk:
            return self._array
        self._fh.close()
        array = np.load(self.path, mmap_mode="r")
        self._remove_file()  # the mapping keeps the data; nothing is left behind in the temp dir
        return array

    def discard(self) -> None:
        """After a failed capture: close and remove the partial on-disk array, if any."""
        if self.on_disk:
            self._fh.close()
            self._remove_file()

    def _remove_file(self) -> None:
        try:  # POSIX: the name goes now, the space when the last mapping of it is dropped
            os.unlink(self.path)
            os.rmdir(self._dir)
        except OSError:  # e.g. Windows cannot unlink a mapped file: leave it to the OS temp cleanup
            pass


def release_pages(array) -> None:
    """Drop this process's resident pages of a memory-mapped array (the float16 attention of a
    long capture) after reading a part of it: the data stays in the OS page cache and on disk,
    but no longer counts as this process's memory. No-op for ordinary arrays."""
    import mmap

    mm = getattr(array, "_mmap", None)
    if mm is not None and hasattr(mm, "madvise") and hasattr(mmap, "MADV_DONTNEED"):
        try:
            mm.madvise(mmap.MADV_DONTNEED)
        except (OSError, ValueError):
            pass


STAT_NAMES = ("attention_entropy", "previous_token_score", "first_token_score", "self_score",
              "mean_distance")


def attention_modules(model) -> tuple[list, int] | None:
    """The modules whose output[index] is a layer's attention weights, in layer order.

    Read from the model's own output-recording declaration (transformers 5); None when a model
    does not declare one (then the capture asks for output_attentions instead).
    """
    spec = (getattr(model, "_can_record_outputs", None) or {}).get("attentions")
    if spec is None:
        return None
    if isinstance(spec, type):
        cls, index, suffix = spec, 1, None
    else:
        cls, index, suffix = spec.target_class, spec.index, spec.layer_name
    mods = [m for name, m in model.named_modules()
            if isinstance(m, cls) and (not suffix or name.endswith(suffix))]
    n_layers = getattr(model.config, "num_hidden_layers", None)
    if not mods or (n_layers and len(mods) != n_layers):
        return None
    return mods, index


def prediction_rows(loaded, ids: list[int]) -> list[int]:
    """The positions whose logits the analysis reads: the last (causal models) or every mask
    token (masked and diffusion models); none for encoders."""
    if loaded.task == "causal":
        return [len(ids) - 1]
    if loaded.task in ("fill-mask", "diffusion"):
        mask = getattr(loaded.tokenizer, "mask_token_id", None)
        return [i for i, t in enumerate(ids) if mask is not None and t == mask]
    return []


def capture(loaded, prompt: str, max_tokens: int | None = None,
            input_ids: list[int] | None = None, gradient: bool = False,
            logits: bool = True) -> Trace:
    """Run one forward pass with hidden states and attentions and keep them as numpy arrays.

    Attention is taken layer by layer with forward hooks as the pass goes (never all layers at
    once as float32 tensors), reduced to per-head statistics on the spot and stored (float16
    on disk when large; see AttentionStore). Logits are computed and kept only at
    `prediction_rows` (none when ``logits`` is False). ``input_ids`` (already tokenised, e.g.
    a partly masked diffusion state) bypasses encoding.

    ``gradient``: the same pass also gives the gradient attribution of the prediction at the
    first prediction row (its top token): one backward pass instead of a second forward and
    backward (Trace.gradient). Done only when the backward's memory fits
    (analysis.attribution.merged_pass_fits); otherwise Trace.gradient stays None.
    """
    import torch

    from analysis import attribution as attr

    if input_ids is None:
        ids, notices = encode(loaded, prompt, max_tokens)
    else:
        ids, notices = list(input_ids), []
    model = loaded.model
    rows = prediction_rows(loaded, ids) if logits else []
    merged = bool(gradient and rows and attr.merged_pass_fits(loaded, len(ids)))
    store = AttentionStore(loaded.n_layers, loaded.n_heads, len(ids), loaded.causal)
    found = attention_modules(model)
    handles = []
    me = threading.get_ident()
    if found is not None:
        mods, index = found
        for layer, mod in enumerate(mods):
            def hook(module, args, output, layer=layer, index=index):
                if threading.get_ident() != me:  # another thread's forward pass on this shared
                    return  # model (a generation, another session): not ours to record
                w = output[index] if isinstance(output, tuple) and len(output) > index else None
                if w is None:
                    raise RuntimeError("attention weights not returned: load the model with "
                                       "attn_implementation='eager'")
                store.add(layer, w[0])
            handles.append(mod.register_forward_hook(hook))
    x = torch.tensor([ids])
    if merged:
        embeds, gates = attr.gradient_inputs(loaded, x)
        inputs = {"inputs_embeds": embeds}
    else:
        inputs = {"input_ids": x}
    try:
        with ExitStack() as stack:
            if merged:
                stack.enter_context(torch.enable_grad())
                stack.enter_context(attr.head_gates(model, loaded.n_layers, loaded.n_heads, gates))
            else:
                stack.enter_context(torch.no_grad())
            stack.enter_context(attr.logit_rows(model, rows, len(ids)))
            out = model(**inputs, output_hidden_states=True, output_attentions=found is None)
    except RuntimeError as exc:
        store.discard()
        raise UserError(f"'{loaded.name}' gave no attention weights ({exc}).") from None
    except BaseException:
        store.discard()
        raise
    finally:
        for h in handles:
            h.remove()
    try:
        if found is None:
            if not out.attentions or out.attentions[0] is None:
                raise UserError(f"'{loaded.name}' returned no attention weights (it must be "
                                "loaded with attn_implementation='eager').")
            for layer, a in enumerate(out.attentions):
                store.add(layer, a[0])
        attentions = store.finish()
    except BaseException:
        store.discard()
        raise
    if store.on_disk:
        notices.append(f"The attention array ({np.prod(store.shape) * 4 / 2**20:.0f} MB as "
                       "float32) is kept as float16 on disk.")
    hidden = np.stack([h[0].detach().float().numpy() for h in out.hidden_states])
    logits = getattr(out, "logits", None)  # from here on the output's logits tensor
    if logits is not None and logits.shape[1] == len(ids) and len(rows) != len(ids):
        logits = logits[:, rows]  # a head the row hook did not reach computed every position
    grad = None
    if merged:
        pos = rows[0]
        target = int(logits[0, 0].argmax())
        gxi, head_grad, logp = attr.backward_attribution(logits[0, 0], embeds, gates, target)
        grad = {"position": pos, "target": target, "grad_x_input": gxi, "head": head_grad,
                "log_prob": logp}
    logits = (logits[0].detach().float().numpy() if logits is not None
              else np.zeros((len(rows), 0), np.float32))
    if logits.nbytes > ATTENTION_MEMORY_LIMIT:
        logits = logits.astype(np.float16)
    cache = getattr(out, "past_key_values", None) if loaded.task == "causal" else None
    if merged:
        _detach_cache(cache)
    del out
    return Trace(model=loaded.name, task=loaded.task, prompt=prompt, token_ids=ids,
                 tokens=readable_tokens(loaded.tokenizer, ids), hidden=hidden,
                 attentions=attentions, logits=logits, causal=loaded.causal, notices=notices,
                 head_stats=store.stats, attention_file=store.path,
                 cache=cache, logit_rows=rows, gradient=grad)


def _detach_cache(cache) -> None:
    """A KV cache made with grad enabled, detached in place (transformers' DynamicCache
    layers) so a continuation from it keeps no autograd graph alive."""
    for layer in getattr(cache, "layers", None) or []:
        for name in ("keys", "values"):
            value = getattr(layer, name, None)
            if value is not None and hasattr(value, "detach"):
                setattr(layer, name, value.detach())
