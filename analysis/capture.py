"""One forward pass -> a Trace: tokens, hidden states, attentions, logits.

Everything downstream (metrics, head analysis, figures, UI, bundle) reads the Trace; nothing
re-runs the model to draw a plot.
"""

from __future__ import annotations

import logging
import os
from contextlib import ExitStack
from dataclasses import dataclass, field

import numpy as np

from analysis import attention as att_mod
from models.attention import KWARG, AttentionCall
from models.attention import NAME as ATTENTION_NAME
from models.common import UserError, context_limit, prepare_input, token_texts

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
    # which positions `logits` holds: those the predictions read (causal: the last; masked
    # models: every mask); None when it holds every position
    logit_rows: list[int] | None = None
    # gradient attribution taken from the capture's own forward pass (see `capture`): position,
    # target, grad_x_input [T], head [layer, head], log_prob; None when not asked or not merged
    gradient: dict | None = field(default=None, repr=False)
    # True only when layer L could not be read before the model's final norm (no block found)
    last_layer_normed: bool = False
    chat_template: bool = False  # token_ids are the prompt inside the model's chat template

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
    """Token strings a person can read (models.common.token_texts)."""
    return token_texts(tokenizer, ids)


def encode(loaded, prompt: str, max_tokens: int | None = None, chat_template: bool = False
           ) -> tuple[list[int], list[str]]:
    """models.common.prepare_input: the ids every part of the analysis reads, and notices."""
    return prepare_input(loaded, prompt, max_tokens, chat_template)


def context_length(loaded) -> int:
    """The most tokens `loaded` takes (models.common.context_limit; 2048 when unknown)."""
    return context_limit(loaded.model) or 2048


# Attention arrays over this size are kept as float16 in a file on disk, not in memory.
ATTENTION_MEMORY_LIMIT = 256 * 2**20


class AttentionStore:
    """Receives one layer's attention `[head, query, key]` at a time as the forward pass goes.

    It computes the per-head statistics on the spot (so nothing needs every layer at once) and
    keeps the pattern: float32 in memory when the whole array fits ATTENTION_MEMORY_LIMIT,
    otherwise float16 appended to an .npy file that is memory-mapped afterwards.
    """

    def __init__(self, n_layers: int, n_heads: int, n_tokens: int, causal: bool):
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

    def buffer(self, layer: int):
        """Where layer `layer`'s weights may be written as they are computed, `[1, head, query,
        key]` float32 (a view of the in-memory store), or None (kept on disk)."""
        import torch

        if self.on_disk or not 0 <= layer < self.shape[0]:
            return None
        return torch.from_numpy(self._array[layer])[None]

    def add(self, layer: int, att) -> None:
        """One layer's weights, `att  # torch.Tensor or array [head or kv-head, query, key]`
        (already in place when the attention wrote them into `buffer(layer)`)."""
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
        elif a.__array_interface__["data"][0] != self._array[layer].__array_interface__["data"][0]:
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


def prediction_rows(loaded, ids: list[int]) -> list[int]:
    """The positions whose logits the analysis reads: the last (causal models) or every mask
    token (masked and diffusion models); none for encoders."""
    if loaded.task == "causal":
        return [len(ids) - 1]
    if loaded.task in ("fill-mask", "diffusion"):
        mask = loaded.mask_id
        return [i for i, t in enumerate(ids) if mask is not None and t == mask]
    return []


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
    MERGED_PASS_MAX and the model runs the dashboard attention (which gates head outputs)."""
    return (sum(activation_bytes(loaded, t)) <= MERGED_PASS_MAX
            and loaded.attention in (ATTENTION_NAME, "llada"))


def gradient_inputs(loaded, ids):
    """(input embeddings as a leaf that requires grad, head gates of ones) for `ids  # [1, T]`."""
    import torch

    embeds = loaded.model.get_input_embeddings()(ids).detach().requires_grad_(True)
    gates = torch.ones(loaded.n_layers, loaded.n_heads, device=ids.device, requires_grad=True)
    return embeds, gates


def backward_attribution(logits_row, embeds, gates, target: int
                         ) -> tuple[np.ndarray, np.ndarray, float]:
    """Backward from log p(target) of `logits_row  # [vocab]`: (gradient x input per token,
    head gradients [layer, head], log p)."""
    import torch

    with torch.enable_grad():  # the caller's forward pass made the graph; this may run outside
        logp = torch.log_softmax(logits_row.double(), -1)[target]
        logp.backward()
    gxi = (embeds.grad[0] * embeds[0]).sum(-1).detach().double().cpu().numpy()
    return gxi, gates.grad.detach().double().cpu().numpy(), float(logp.detach())



class NoAttentionWeights(RuntimeError):
    """A model returned no attention weights (it was not run with eager attention)."""


def output_head(loaded) -> tuple[str, object | None]:
    """How the capture gets logits only at the prediction rows, per call and without touching
    the model: ("keep", None) when its forward takes `logits_to_keep` (transformers' causal LMs),
    ("head", module) when it is a masked LM whose head can be applied to the backbone's last
    hidden state (BERT's `cls`, RoBERTa's `lm_head`), else ("all", None)."""
    import inspect

    model = loaded.model
    if loaded.adapter != "transformers":
        return "all", None
    params = inspect.signature(model.forward).parameters
    if "logits_to_keep" in params:
        return "keep", None
    backbone = getattr(model, "base_model", None)
    if backbone is not None and backbone is not model:
        for name in ("cls", "lm_head"):
            head = getattr(model, name, None)
            if head is not None:
                return "head", head
    return "all", None


def forward_pass(loaded, ids, rows: list[int], call, embeds=None):
    """One forward pass with hidden states; logits only at `rows` where the model allows it.
    Returns (the model's output, logits [1, len(rows) or T, vocab] or None). The caller holds
    `loaded.lock`; `call` None: the model's own eager attention, weights returned at once."""
    import torch

    inputs = {"inputs_embeds": embeds} if embeds is not None else {"input_ids": ids}
    if call is None:
        inputs["output_attentions"] = True
    how, head = output_head(loaded)
    if how == "head":
        kw = {KWARG: call} if call is not None else {}
        out = loaded.model.base_model(**inputs, output_hidden_states=True, **kw)
        logits = head(out.last_hidden_state[:, rows]) if rows else None
        return out, logits
    if how == "keep":
        keep = torch.tensor(rows, device=ids.device) if rows else 1
        out = loaded.run(call, **inputs, output_hidden_states=True, use_cache=False,
                         logits_to_keep=keep)
        return out, (out.logits if rows else None)
    out = loaded.run(call, **inputs, output_hidden_states=True)
    logits = getattr(out, "logits", None)
    if logits is not None and rows and logits.shape[1] == ids.shape[1] and len(rows) != ids.shape[1]:
        logits = logits[:, rows]
    return out, (logits if rows else None)


def capture(loaded, prompt: str, max_tokens: int | None = None,
            input_ids: list[int] | None = None, gradient: bool = False,
            logits: bool = True, chat_template: bool = False) -> Trace:
    """Run one forward pass with hidden states and attentions and keep them as numpy arrays.

    Holds the model's lock for the pass. Attention is taken layer by layer as the pass goes
    (models.attention's per-call `record`; never all layers at once as float32 tensors),
    reduced to per-head statistics on the spot and stored (float16 on disk when large; see
    AttentionStore). Layer L is block L's output before the final norm (the loader's block
    hook). Logits are computed and kept only at `prediction_rows` (none when ``logits`` is
    False). ``input_ids`` (already tokenised, e.g. a partly masked diffusion state) bypasses
    encoding.

    ``gradient``: the same pass also gives the gradient attribution of the prediction at the
    first prediction row (its top token): one backward pass instead of a second forward and
    backward (Trace.gradient). Done only when the backward's memory fits
    (analysis.attribution.merged_pass_fits); otherwise Trace.gradient stays None.
    """
    import torch

    if input_ids is None:
        ids, notices = encode(loaded, prompt, max_tokens, chat_template)
    else:
        ids, notices = list(input_ids), []
    rows = prediction_rows(loaded, ids) if logits else []
    registered = loaded.attention in (ATTENTION_NAME, "llada")  # per-call recording works
    merged = bool(gradient and rows and registered and merged_pass_fits(loaded, len(ids)))
    store = AttentionStore(loaded.n_layers, loaded.n_heads, len(ids), loaded.causal)
    call = None
    if registered:
        call = AttentionCall(record=lambda layer, w: store.add(layer, w[0]),
                             weights_out=store.buffer)
    x = torch.tensor([ids], device=loaded.torch_device)
    embeds = None
    try:
        with loaded.lock, ExitStack() as stack:
            if merged:
                embeds, gates = gradient_inputs(loaded, x)
                call.gates = gates
                stack.enter_context(torch.enable_grad())
            else:
                stack.enter_context(torch.no_grad())
            out, logit_t = forward_pass(loaded, x, rows, call, embeds)
            if call is None:  # the model's own eager attention: all layers at once
                if not out.attentions or out.attentions[0] is None:
                    raise NoAttentionWeights(f"'{loaded.name}' returned no attention weights (it "
                                             "must run eager attention)")
                for layer, a in enumerate(out.attentions):
                    store.add(layer, a[0])
            attentions = store.finish()
            grad = None
            if merged:
                target = int(logit_t[0, 0].argmax())
                gxi, head_grad, logp = backward_attribution(logit_t[0, 0], embeds, gates,
                                                                 target)
                grad = {"position": rows[0], "target": target, "grad_x_input": gxi,
                        "head": head_grad, "log_prob": logp}
    except NoAttentionWeights as exc:
        store.discard()
        raise UserError(str(exc)) from None
    except BaseException:
        store.discard()
        raise
    if store.on_disk:
        notices.append(f"The attention array ({np.prod(store.shape) * 4 / 2**20:.0f} MB as "
                       "float32) is kept as float16 on disk.")
    hidden, last_normed = _hidden_states(loaded, out, call, notices)
    kept = (logit_t[0].detach().float().cpu().numpy() if logit_t is not None
            else np.zeros((len(rows), 0), np.float32))
    if kept.nbytes > ATTENTION_MEMORY_LIMIT:
        kept = kept.astype(np.float16)
    del out
    return Trace(model=loaded.name, task=loaded.task, prompt=prompt, token_ids=ids,
                 tokens=readable_tokens(loaded.tokenizer, ids), hidden=hidden,
                 attentions=attentions, logits=kept, causal=loaded.causal, notices=notices,
                 head_stats=store.stats, attention_file=store.path, logit_rows=rows,
                 gradient=grad, last_layer_normed=last_normed,
                 chat_template=bool(chat_template and input_ids is None
                                    and getattr(loaded.tokenizer, "chat_template", None)))


def _hidden_states(loaded, out, call, notices: list[str]) -> tuple[np.ndarray, bool]:
    """(hidden  # [layer + 1, token, d] float32, whether layer L is the final-normed state):
    layer L is block L's output recorded by the block hook when there is one (a notice says
    so when there is not)."""
    states = list(out.hidden_states)
    last_normed = call is None or call.last_block is None
    if not last_normed:
        states[-1] = call.last_block
    else:
        notices.append(f"The last layer of '{loaded.name}' could not be read before its final "
                       "norm: layer L is the model's final (normed) hidden state.")
    return np.stack([h[0].detach().float().cpu().numpy() for h in states]), last_normed


