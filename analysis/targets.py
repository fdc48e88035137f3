"""A chosen target token, not only the top-1: its attribution, head support and logit lens.

The objective f is read at the prediction position (the last token of a causal model, the
first [MASK] of a masked one; `position` chooses another):

- target alone:            f = log p(target)
- target against contrast: f = logit(target) - logit(contrast)  (= log p(target) - log p(contrast))

One sign convention, as docs/reference.md: positive supports the target (over the contrast).

- token attribution: gradient x input, d f / d e_t . e_t per token t; attention rollout (the
  position's row; it does not depend on the target);
- head support: f(all heads) - f(head removed), exact by ablation (one forward pass per head)
  or its first-order estimate d f / d g at gate g = 1 (one forward and backward pass);
- logit lens of the token: every layer's hidden state (layer L = block L's output before the
  final norm) through the final norm and the output head, as analysis.attribution.logit_lens:
  the token's probability and rank (1 = the top token) at every layer and lens position, and
  the logit difference when there is a contrast.

With target = the top-1 prediction and no contrast this is the analysis's own attribution.
Every use of the model holds `loaded.lock`.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from analysis import attribution as attr_mod
from analysis.capture import activation_bytes, forward_pass, gradient_inputs
from analysis.result import ModelResult, TokenAttribution
from models.attention import NAME as ATTENTION_NAME
from models.attention import AttentionCall
from models.common import UserError

METHODS = ("gradient", "ablation")


@dataclass(frozen=True)
class Token:
    """One vocabulary entry: its id and its text."""

    id: int
    text: str


@dataclass
class TargetAttribution:
    """Why the model would say `target` (rather than `contrast`) at `position`."""

    model: str
    position: int
    target: Token
    contrast: Token | None
    value: float  # f with every head: log p(target), or logit(target) - logit(contrast)
    probability: float  # p(target) at the position
    rank: int  # of the target in the model's logits at the position (1 = the top-1)
    grad_x_input: np.ndarray  # [token]: d f / d e_t . e_t
    rollout: np.ndarray  # [token]: the position's attention-rollout row
    head_support: np.ndarray  # [layer, head]: f(all) - f(head removed), or d f / d g
    method: str  # "gradient" (first-order) | "ablation" (exact)

    @property
    def objective(self) -> str:
        return (f"log p({self.target.text!r})" if self.contrast is None
                else f"logit({self.target.text!r}) - logit({self.contrast.text!r})")

    def as_token_attribution(self) -> TokenAttribution:
        """The analysis's own type (what its figures draw); `log_prob` holds f."""
        return TokenAttribution(self.target.text, self.target.id, self.position, self.rollout,
                                self.grad_x_input, self.value)


@dataclass
class TokenLens:
    """The logit lens restricted to one token: `[layer + 1, P]` over `positions`."""

    target: Token
    contrast: Token | None
    positions: list[int]  # token positions covered, P of them (analysis.attribution.lens_positions)
    predicted: list[int]  # the positions whose prediction is shown (always covered)
    probs: np.ndarray  # [layer + 1, P] p(target) read through the lens
    ranks: np.ndarray  # [layer + 1, P] int64, 1 = the lens's top token
    logit_diff: np.ndarray | None = None  # [layer + 1, P] logit(target) - logit(contrast)

    def at(self, position: int) -> tuple[np.ndarray, np.ndarray]:
        """(probability `[layer + 1]`, rank `[layer + 1]`) of the target at one position."""
        if position not in self.positions:
            raise KeyError(f"position {position} is not covered by the lens ({self.positions})")
        j = self.positions.index(position)
        return self.probs[:, j], self.ranks[:, j]


# ---------------------------------------------------------------------------- choosing tokens


def resolve_token(tokenizer, text: str, prefer: Sequence[int] = ()) -> Token:
    """The single vocabulary token a user means by `text`.

    `text` may be a token as the predictions show it ('tokyo'), with its leading space
    (' tokyo'), or an id written 'id:123'. Byte-level BPE vocabularies (GPT-2, Llama) spell a
    word after a space with the space: both spellings are tried, and one in `prefer` (the
    top-k predictions) wins, then the spaced one. A text that is several tokens is refused
    with its pieces, so the user can pick one."""
    raw = "" if text is None else str(text)
    if not raw.strip():
        raise UserError("Type a target token (e.g. one of the top predictions).")
    vocab = len(tokenizer)
    if raw.strip().lower().startswith("id:"):
        try:
            tid = int(raw.strip()[3:])
        except ValueError:
            raise UserError(f"{raw.strip()!r} is not a token id; write e.g. 'id:123'.") from None
        if not 0 <= tid < vocab:
            raise UserError(f"Token id {tid} does not exist: the vocabulary has ids 0..{vocab - 1}.")
        return Token(tid, _text(tokenizer, tid))
    word = raw.strip()
    candidates = list(dict.fromkeys([raw, " " + word, word]))
    singles: list[int] = []
    pieces: list[str] = []
    for c in candidates:
        ids = tokenizer.encode(c, add_special_tokens=False)
        if len(ids) == 1 and ids[0] not in singles:
            singles.append(int(ids[0]))
        elif len(ids) > 1 and (not pieces or c == " " + word):  # as it would follow a space
            pieces = [_text(tokenizer, i) for i in ids]
    if not singles:
        shown = " + ".join(repr(p) for p in pieces) if pieces else "nothing"
        raise UserError(f"{word!r} is not one token for this model (it splits into {shown}): "
                        "pick a single token, e.g. its first piece, or write 'id:N'.")
    preferred = [i for i in singles if i in set(int(p) for p in prefer)]
    spaced = tokenizer.encode(" " + word, add_special_tokens=False)
    if preferred:
        tid = preferred[0]
    elif len(spaced) == 1 and raw == word:  # a bare word: the spelling that follows a space
        tid = int(spaced[0])
    else:
        tid = singles[0]
    return Token(tid, _text(tokenizer, tid))


def _text(tokenizer, tid: int) -> str:
    text = tokenizer.decode([int(tid)])
    return text if text.strip() else tokenizer.convert_ids_to_tokens(int(tid))


def prediction_position(result: ModelResult) -> int:
    """Where the prediction is read: the analysis's attribution position, else its first
    prediction row; UserError for an encoder or a masked model without [MASK]."""
    if result.attribution is not None:
        return int(result.attribution.position)
    rows = result.trace.logit_rows or []
    if rows:
        return int(rows[0])
    if result.trace.task == "causal":
        return result.trace.n_tokens - 1
    raise UserError(f"'{result.name}' predicts nothing here (no [MASK] in the prompt, or no "
                    "language-model head): there is no position to explain a target at.")


def _check_position(result: ModelResult, position: int | None) -> int:
    if position is None:
        return prediction_position(result)
    t = result.trace
    if not 0 <= int(position) < t.n_tokens:
        raise UserError(f"Position {position} does not exist: the input has positions "
                        f"0..{t.n_tokens - 1}.")
    return int(position)


def _check_model(loaded, result: ModelResult) -> list[int]:
    ids = list(result.trace.token_ids or [])
    if not ids:
        raise UserError(f"This analysis of '{result.name}' has no token ids (it was opened from a "
                        "bundle): run the analysis again to choose a target.")
    if loaded.name != result.name:
        raise UserError(f"The model '{loaded.name}' did not make this analysis ('{result.name}').")
    if loaded.attention != ATTENTION_NAME:
        raise UserError(f"'{loaded.name}' runs its own eager attention: head support needs the "
                        "dashboard's attention implementation, which this model does not match.")
    return ids


# ---------------------------------------------------------------------------- attribution


def _objective(logits_row, target: int, contrast: int | None):
    """f of a `[vocab]` logits row (float64): log p(target), or the logit difference."""
    import torch

    row = logits_row.double()
    if contrast is None:
        return torch.log_softmax(row, -1)[target]
    return row[target] - row[contrast]


def _gradient(loaded, ids: list[int], position: int, target: int, contrast: int | None):
    """One forward and backward pass: (gradient x input [T], d f / d g [layer, head], f, logits
    row [vocab] float64 numpy). Fused attention and checkpointed blocks for long inputs, as
    analysis.attribution.gradient_attribution."""
    import torch

    x = torch.tensor([ids], device=loaded.torch_device)
    attention_bytes, other_bytes = activation_bytes(loaded, len(ids))
    fused = attention_bytes > attr_mod.CHECKPOINT_ABOVE
    limit = attr_mod.CHECKPOINT_ABOVE * (attr_mod.CHECKPOINT_FUSED_FACTOR if fused else 1)
    with loaded.lock, torch.enable_grad():
        embeds, gates = gradient_inputs(loaded, x)
        call = AttentionCall(gates=gates, fused=fused)
        with attr_mod.checkpointed_blocks(loaded, other_bytes + (0 if fused else attention_bytes)
                                          > limit):
            _, logits = forward_pass(loaded, x, [position], call, embeds)
        f = _objective(logits[0, 0], target, contrast)
        f.backward()
        gxi = (embeds.grad[0] * embeds[0]).sum(-1).detach().double().cpu().numpy()
        support = gates.grad.detach().double().cpu().numpy()
        row = logits[0, 0].detach().double().cpu().numpy()
    return gxi, support, float(f.detach()), row


def _ablation(loaded, ids: list[int], position: int, target: int, contrast: int | None
              ) -> np.ndarray:
    """Exact support `[layer, head]`: f(all heads) - f(that head's output zeroed)."""
    import torch

    x = torch.tensor([ids], device=loaded.torch_device)
    gates = torch.ones(loaded.n_layers, loaded.n_heads, device=loaded.torch_device)

    def f() -> float:
        _, logits = forward_pass(loaded, x, [position], AttentionCall(gates=gates))
        return float(_objective(logits[0, 0], target, contrast))

    out = np.zeros((loaded.n_layers, loaded.n_heads))
    with loaded.lock, torch.no_grad():
        base = f()
        for layer in range(loaded.n_layers):
            for head in range(loaded.n_heads):
                gates[layer, head] = 0.0
                out[layer, head] = base - f()
                gates[layer, head] = 1.0
    return out


def attribute(loaded, result: ModelResult, target: Token | int, contrast: Token | int | None = None,
              method: str = "gradient", position: int | None = None) -> TargetAttribution:
    """Token attribution and head support of f (module docstring) for a chosen target.

    `target`, `contrast`: a Token (`resolve_token`) or a token id. `method`: "gradient" (one
    forward and backward pass; head support to first order) or "ablation" (the gradient pass
    for gradient x input, then one forward pass per head for the exact support)."""
    if method not in METHODS:
        raise UserError(f"Unknown method {method!r}; choose one of {', '.join(METHODS)}.")
    ids = _check_model(loaded, result)
    pos = _check_position(result, position)
    target, contrast = _token(loaded, target), None if contrast is None else _token(loaded, contrast)
    if contrast is not None and contrast.id == target.id:
        # f is identically 0: every gradient and every ablation difference is exactly 0
        n = result.trace.n_tokens
        gxi, support = np.zeros(n), np.zeros((loaded.n_layers, loaded.n_heads))
        _, _, _, row = _gradient(loaded, ids, pos, target.id, None)
        value = 0.0
    else:
        gxi, support, value, row = _gradient(loaded, ids, pos, target.id,
                                             None if contrast is None else contrast.id)
        if method == "ablation":
            support = _ablation(loaded, ids, pos, target.id, None if contrast is None else contrast.id)
    logp = row - _logsumexp(row)
    return TargetAttribution(
        model=result.name, position=pos, target=target, contrast=contrast, value=float(value),
        probability=float(np.exp(logp[target.id])), rank=int((row > row[target.id]).sum()) + 1,
        grad_x_input=np.asarray(gxi, dtype=np.float64),
        rollout=attr_mod.rollout_row(result.trace.attentions, pos), head_support=support,
        method=method)


def _token(loaded, t: Token | int) -> Token:
    if isinstance(t, Token):
        return t
    tid = int(t)
    vocab = len(loaded.tokenizer)
    if not 0 <= tid < vocab:
        raise UserError(f"Token id {tid} does not exist: the vocabulary has ids 0..{vocab - 1}.")
    return Token(tid, _text(loaded.tokenizer, tid))


def _logsumexp(x: np.ndarray) -> float:
    m = float(np.max(x))
    return m + float(np.log(np.exp(x - m).sum()))


# ---------------------------------------------------------------------------- logit lens


def token_lens(loaded, result: ModelResult, target: Token | int,
               contrast: Token | int | None = None, last: int | None = attr_mod.LENS_POSITIONS
               ) -> TokenLens:
    """The logit lens of one token over the analysis's lens positions (the last `last` and the
    predicted ones): its probability and rank at every layer 0..L, and logit(target) -
    logit(contrast) when a contrast is given. Layer L reads block L's output through the final
    norm, so its rank is the rank in the model's own logits."""
    import torch

    _check_model(loaded, result)
    target, contrast = _token(loaded, target), None if contrast is None else _token(loaded, contrast)
    t = result.trace
    norm, head = attr_mod._lens_parts(loaded.model)
    if head is None:
        raise UserError(f"'{result.name}' has no output head: no logit lens.")
    positions = attr_mod.lens_positions(t.n_tokens, t.logit_rows or [], last)
    hidden = t.hidden  # [layer + 1, token, d_model]
    n, k = hidden.shape[0], len(positions)
    param = next(loaded.model.parameters())
    with loaded.lock, torch.no_grad():
        h = torch.from_numpy(np.ascontiguousarray(hidden[:, positions], dtype=np.float32)).to(
            device=param.device, dtype=param.dtype)
        if norm is not None:  # every layer, but a last one the capture could only read normed
            upto = n - 1 if t.last_layer_normed else n
            h = torch.cat([norm(h[:upto]), h[upto:]])
        h = h.reshape(n * k, -1)
        vocab = int(getattr(loaded.model.config, "vocab_size", 0) or 2**16)
        step = max(1, (64 * 2**20) // (4 * vocab))
        probs, ranks, diffs = [], [], []
        for r in range(0, n * k, step):
            logits = head(h[r:r + step]).float()
            lt = logits[:, target.id]
            ranks.append((logits > lt[:, None]).sum(-1) + 1)
            probs.append(torch.exp(lt.double() - torch.logsumexp(logits.double(), -1)))
            if contrast is not None:
                diffs.append(lt - logits[:, contrast.id])
        probs_a = torch.cat(probs).reshape(n, k).cpu().numpy()
        ranks_a = torch.cat(ranks).reshape(n, k).cpu().numpy().astype(np.int64)
        diff_a = (torch.cat(diffs).reshape(n, k).double().cpu().numpy() if contrast is not None
                  else None)
    return TokenLens(target, contrast, list(positions), sorted(int(p) for p in t.logit_rows or []),
                     probs_a, ranks_a, diff_a)
