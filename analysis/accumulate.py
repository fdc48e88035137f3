"""Dataset mode: layer geometry over many texts in bounded memory, exact and mergeable.

design.md "Dataset mode". A `DatasetAccumulator` takes padded batches of one model's hidden
states (`hidden  # [layer + 1, batch, token, d_model]`, layer 0 = embeddings) and keeps:
- all tokens: per layer (count, mean, centred scatter M2) merged with Chan et al.'s parallel
  formula, sums of unit rows, cosine-to-input sums, attention row-entropy sums: exact metrics;
- a token sample: the K rows with the smallest seeded hash priority of (seed, text_id, position),
  so the sample does not depend on batching or on the number of processes;
- per text: every single-prompt metric of each text, [text, layer + 1, metric], and per-head
  moments; plus the mean-pooled vector of up to `pooled_texts` texts (same priority rule) for
  the dataset entropy.
Two accumulators of disjoint texts merge into the accumulator of all of them (float64
summation order aside), so batching, resuming and torch.distributed ranks are one computation.
Math runs in float64 torch on the batch's device; per-text values, samples and pooled vectors
are kept as numpy on the CPU.
"""

from __future__ import annotations

import json
import logging
import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import NamedTuple

import numpy as np
import torch
from scipy import stats

from analysis import metrics as M
from models.common import UserError, atomic_file

log = logging.getLogger(__name__)

METRICS = ("effective_rank", "participation_ratio", "intrinsic_dim_pca95", "intrinsic_dim_twonn",
           "activation_entropy", "cosine_to_input", "anisotropy", "attention_entropy")  # per text
ALL_TOKEN_METRICS = ("effective_rank", "participation_ratio", "intrinsic_dim_pca95", "anisotropy",
                     "cosine_to_input", "attention_entropy")
SAMPLE_METRICS = ("intrinsic_dim_twonn", "activation_entropy")
HEAD_STATS = ("attention_entropy", "previous_token_score", "first_token_score")
# add_batch's head_stats: {name: [batch, layer, head]} as text_head_stats gives per layer
HEAD_INPUTS = ("entropy_sum", "entropy_rows", "previous_token_score", "first_token_score")
FORMAT = 1
_TINY = 1e-300
_CHUNK_BYTES = 64 * 2**20  # float64 temporaries held at once (attention, bootstrap)
_NEAR = 1e-4  # TwoNN: squared neighbour distances below this fraction of |x|^2 are re-measured
_M64 = 0xFFFFFFFFFFFFFFFF


# --- seeded priorities ----------------------------------------------------------------------

def _mix64(x: np.ndarray) -> np.ndarray:
    """SplitMix64 finaliser, elementwise on uint64 (wrapping arithmetic)."""
    x = np.atleast_1d(np.asarray(x).astype(np.uint64))
    with np.errstate(over="ignore"):
        x = x + np.uint64(0x9E3779B97F4A7C15)
        x = (x ^ (x >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
        x = (x ^ (x >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
    return x ^ (x >> np.uint64(31))


def token_priority(seed: int, text_ids: np.ndarray, positions: np.ndarray) -> np.ndarray:
    """uint64 priority of each token row [row] from (seed, text_id, position); position = index
    of the row among its text's counted rows. Smallest K priorities = the token sample."""
    key = _mix64(np.uint64(seed & _M64)) ^ np.asarray(text_ids).astype(np.uint64)
    return _mix64(_mix64(key) ^ np.asarray(positions).astype(np.uint64))


def text_priority(seed: int, text_ids: np.ndarray) -> np.ndarray:
    """uint64 priority of each text [text] (a different stream from the token priorities)."""
    return _mix64(_mix64(np.uint64((seed ^ 0x5EED7E47) & _M64)) ^ np.asarray(text_ids).astype(np.uint64))


@dataclass
class _Smallest:
    """The `cap` entries with the smallest (priority, text_id, position) offered so far.

    Entries sit in arbitrary slots; `ordered()` gives them sorted by (text_id, position)."""
    cap: int
    dtype: type  # of the values
    priority: np.ndarray = field(default_factory=lambda: np.zeros(0, np.uint64))  # [entry]
    keys: np.ndarray = field(default_factory=lambda: np.zeros((0, 2), np.int64))  # [entry, 2]
    values: np.ndarray | None = None  # [layer + 1, capacity >= entry, d_model]

    def offer(self, priority: np.ndarray, keys: np.ndarray, take: Callable[[np.ndarray], np.ndarray]
              ) -> None:
        """Offer entries; `take(index)` returns the values [layer + 1, len(index), d] of those
        that enter (only they are copied)."""
        n_old = self.priority.size
        if n_old == self.cap and n_old:  # quick reject: nothing above the current worst enters
            cand = np.nonzero(priority <= self.priority.max())[0]
            priority, keys, take = priority[cand], keys[cand], (lambda i, t=take, c=cand: t(c[i]))
        if priority.size == 0:
            return
        allp = np.concatenate([self.priority, priority])
        allk = np.concatenate([self.keys, keys])
        order = np.lexsort((allk[:, 1], allk[:, 0], allp))[:self.cap]
        enter = order[order >= n_old] - n_old
        if enter.size == 0:
            return
        n_new = order.size
        free = np.concatenate([np.setdiff1d(np.arange(n_old), order[order < n_old]),
                               np.arange(n_old, n_new)])
        new = take(enter)
        if self.values is None or self.values.shape[1] < n_new:  # grow by doubling, up to cap
            grown = np.empty((new.shape[0], min(self.cap, max(n_new, 2 * n_old)), new.shape[2]), self.dtype)
            if n_old:
                grown[:, :n_old] = self.values[:, :n_old]
            self.values = grown
        self.values[:, free] = new
        self.priority = np.concatenate([self.priority, np.zeros(n_new - n_old, np.uint64)])
        self.keys = np.concatenate([self.keys, np.zeros((n_new - n_old, 2), np.int64)])
        self.priority[free], self.keys[free] = priority[enter], keys[enter]

    def ordered(self) -> tuple[np.ndarray, np.ndarray]:
        """(keys [entry, 2], values [layer + 1, entry, d]) sorted by (text_id, position)."""
        o = np.lexsort((self.keys[:, 1], self.keys[:, 0]))
        return self.keys[o], (self.values[:, o] if self.values is not None else None)


# --- per-text math (batched torch, float64) -------------------------------------------------

def _gram(a: torch.Tensor) -> torch.Tensor:
    """a a^T or a^T a of `a  # [..., n, d]`, whichever is smaller (same nonzero eigenvalues)."""
    return a @ a.mT if a.shape[-2] <= a.shape[-1] else a.mT @ a


def _spectra(lam: torch.Tensor, n: torch.Tensor, d: int, frob: torch.Tensor) -> torch.Tensor:
    """(effective_rank, participation_ratio, intrinsic_dim_pca95) [text, 3] from the eigenvalues
    `lam  # [text, k]` of each text's centred Gram, as metrics.py (numerical zeros below
    lam_max * max(n, d) * eps dropped; NaN with n < 2 or no variance). `frob`: |H|_F [text]."""
    lam = lam.clamp_min(0.0).sort(dim=-1, descending=True).values
    top = lam[:, 0]
    ok = (n >= 2) & (top > 0) & (top.sqrt() > M._ZERO_VARIANCE_REL * frob)
    keep = lam > (top * torch.clamp(n, min=d) * M._EPS)[:, None]
    lam = torch.where(keep, lam, 0.0)
    s = lam.sqrt()
    p = s / s.sum(-1, keepdim=True).clamp_min(_TINY)
    erank = torch.exp(-torch.special.xlogy(p, p).sum(-1))
    pr = lam.sum(-1) ** 2 / (lam**2).sum(-1).clamp_min(_TINY)
    cum = lam.cumsum(-1)
    pca = (cum < M._PCA_LEVEL * cum[:, -1:] * (1.0 - 1e-12)).sum(-1) + 1
    pca = torch.minimum(pca, keep.sum(-1)).double()
    return torch.where(ok[:, None], torch.stack([erank, pr, pca], -1), math.nan)


def _normalised_entropy(k: torch.Tensor, n: torch.Tensor, ok: torch.Tensor, d: int) -> torch.Tensor:
    """-sum p log p / log(min(n - 1, d)), p = eig(k) / trace, for `k  # [set, m, m]` the Gram
    of unit rows (either side); NaN where not `ok`."""
    lam = torch.linalg.eigvalsh(k).clamp_min(0.0)
    p = lam / lam.sum(-1, keepdim=True).clamp_min(_TINY)
    denom = torch.log(torch.clamp(n - 1, min=1.0, max=float(d)))
    s = torch.where(denom > 0, -torch.special.xlogy(p, p).sum(-1) / denom.clamp_min(_TINY), 0.0)
    return torch.where(ok, s.clamp(0.0, 1.0), math.nan)


def entropies(x: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
    """activation_entropy [set] of weighted row sets: `x  # [set, row, d]`, `w  # [set, row]`
    (0/1 for a mask, counts for a bootstrap resample; row i stands for w_i copies).

    Centre with the weighted mean, rows of Hc to unit length, lambda = eig(Z^T W Z) / trace,
    S = -sum lambda log lambda / log(min(n - 1, d)), n = sum w (design.md). NaN with n < 3 or
    no variance."""
    n = w.sum(-1)
    mean = (w[..., None] * x).sum(-2) / n.clamp_min(1.0)[:, None]
    xc = torch.where(w[..., None] > 0, x - mean[:, None], 0.0)
    norms = xc.norm(dim=-1)
    top = norms.amax(-1)
    keep = (w > 0) & (norms > top[:, None] * 1e-12)
    frob = (w * torch.where(w[..., None] > 0, x * x, 0.0).sum(-1)).sum(-1).sqrt()
    ok = (n >= 3) & (top > M._ZERO_VARIANCE_REL * frob) & (keep.sum(-1) >= 2)
    z = torch.where(keep[..., None], xc * (w.sqrt() / norms.clamp_min(_TINY))[..., None], 0.0)
    return _normalised_entropy(_gram(z), n, ok, x.shape[-1])


def _text_twonn(x: torch.Tensor, xc: torch.Tensor, g: torch.Tensor, mask: torch.Tensor
                ) -> torch.Tensor:
    """TwoNN [text] as metrics.intrinsic_dim_twonn from `x`, `xc` (rows, centred rows) and
    `g = xc xc^T  # [text, token, token]`. Rows equal to an earlier row are merged (checked
    exactly on `x` where the screened distance is ~0); nearest distances come from
    |a|^2 + |b|^2 - 2 a.b and are re-measured exactly where they are small against |a|^2."""
    b_, t, _ = x.shape
    if t < M._TWONN_MIN_POINTS:
        return torch.full((b_,), math.nan, dtype=torch.float64, device=x.device)
    sq = g.diagonal(dim1=-2, dim2=-1)
    d2 = sq[:, :, None] + sq[:, None, :] - 2.0 * g
    idx = torch.arange(t, device=x.device)
    pair = mask[:, :, None] & mask[:, None, :]
    near = pair & (idx[:, None] > idx[None, :]) & (d2 <= _NEAR * (sq[:, :, None] + sq[:, None, :]))
    b, i, j = near.nonzero(as_tuple=True)
    same = (x[b, i] == x[b, j]).all(-1)
    keep = mask.clone()
    keep[b[same], i[same]] = False
    n = keep.sum(-1).double()
    pair = keep[:, :, None] & keep[:, None, :] & (idx[:, None] != idx[None, :])
    top = torch.where(pair, d2, math.inf).topk(2, dim=-1, largest=False)
    r = top.values.clamp_min(0.0).sqrt()  # [text, token, 2]
    sqmax = torch.where(keep, sq, 0.0).amax(-1)
    fix = (keep & (top.values[..., 0] < _NEAR * sqmax[:, None])).nonzero(as_tuple=True)
    if fix[0].numel():
        cand = top.indices[fix]  # [fixed, 2]
        exact = (xc[fix][:, None, :] - xc[fix[0][:, None], cand]).norm(dim=-1)
        r[fix] = exact.sort(dim=-1).values
    ok = keep & (r[..., 0] > 0)
    mu = torch.where(ok, r[..., 1] / r[..., 0].clamp_min(_TINY), math.inf).sort(dim=-1).values
    n_keep = torch.minimum(torch.floor(n * (1.0 - M._TWONN_DISCARD)), ok.sum(-1).double())
    use = idx[None, :] < n_keep[:, None]
    xs = torch.where(use, torch.log(torch.where(use, mu, 1.0)), 0.0)
    ys = torch.where(use, -torch.log(1.0 - (idx[None, :] + 1).double() / n.clamp_min(1)[:, None]), 0.0)
    denom = (xs * xs).sum(-1)
    good = (n >= M._TWONN_MIN_POINTS) & (n_keep >= 1) & (denom > 0)
    return torch.where(good, (xs * ys).sum(-1) / denom.clamp_min(_TINY), math.nan)


def _text_layer(x: torch.Tensor, x0: torch.Tensor, mask: torch.Tensor) -> dict[str, torch.Tensor]:
    """One layer of one batch: `x`, `x0  # [text, token, d]` float64 (padding rows zero; x0 =
    layer 0), `mask  # [text, token]`. Returns per-text metrics [text, 7] (METRICS without
    attention_entropy), pooled means [text, d] and the all-token sums of this batch."""
    d = x.shape[-1]
    m = mask[..., None]
    n = mask.sum(-1).double()
    pooled = x.sum(1) / n.clamp_min(1.0)[:, None]
    xc = torch.where(m, x - pooled[:, None], 0.0)
    g = xc @ xc.mT  # [text, token, token]
    frob = (x * x).sum((1, 2)).sqrt()
    spec = _spectra(torch.linalg.eigvalsh(g if x.shape[1] <= d else xc.mT @ xc), n, d, frob)
    if x.shape[1] > d:  # long texts: the d x d side is smaller
        ent = entropies(x, mask.double())
    else:  # the unit-row Gram straight from g
        nu = g.diagonal(dim1=-2, dim2=-1).clamp_min(0.0).sqrt()  # |row of Hc|
        top = nu.amax(-1)
        live = mask & (nu > top[:, None] * 1e-12)
        ok = (n >= 3) & (top > M._ZERO_VARIANCE_REL * frob) & (live.sum(-1) >= 2)
        k = g / (nu[:, :, None] * nu[:, None, :]).clamp_min(_TINY)
        ent = _normalised_entropy(torch.where(live[:, :, None] & live[:, None, :], k, 0.0), n, ok, d)
    twonn = _text_twonn(x, xc, g, mask)
    nx, n0 = x.norm(dim=-1), x0.norm(dim=-1)
    nz = mask & (nx > 0)
    unit = torch.where(nz[..., None], x / nx.clamp_min(_TINY)[..., None], 0.0)
    su = unit.sum(1)  # [text, d]
    c = nz.sum(-1).double()
    aniso = torch.where(c >= 2, ((su * su).sum(-1) - c) / (c * (c - 1)).clamp_min(1.0), math.nan)
    both = nz & (n0 > 0)
    cos = torch.where(both, ((x * x0).sum(-1) / (nx * n0).clamp_min(_TINY)).clamp(-1.0, 1.0), 0.0)
    c_n = both.sum(-1).double()
    cos_text = torch.where(c_n > 0, cos.sum(-1) / c_n.clamp_min(1.0), math.nan)
    values = torch.cat([spec, twonn[:, None], ent[:, None], cos_text[:, None], aniso[:, None]], 1)
    sums = torch.stack([c.sum(), cos.sum(), c_n.sum()])
    return {"values": values, "pooled": pooled, "unit_sum": su.sum(0), "sums": sums}


def text_head_stats(attn: torch.Tensor, lengths, causal: bool) -> dict[str, torch.Tensor]:
    """Per-text, per-head statistics of ONE layer, `attn  # [text, head, query, key]` (right
    padded; text b has `lengths[b]` tokens; rows and keys beyond it are ignored).

    Row i of text b counts if n_i > 1 (n_i = i + 1 causal, else length_b); its entropy is
    -sum a log a / log(n_i). Returns float64 CPU tensors [text, head]: entropy_sum, entropy_rows,
    previous_token_score (mean over rows i >= 1 of a[i, i - 1]) and first_token_score (of a[i,
    0]), NaN for a one-token text. Stack layers with `stack_head_stats`."""
    b_, h, q, k = attn.shape
    dev = attn.device
    length = torch.as_tensor(lengths, device=dev).long()
    i, j = torch.arange(q, device=dev), torch.arange(k, device=dev)
    n_i = (i + 1)[None, :].expand(b_, q) if causal else length[:, None].expand(b_, q)
    counted = (i[None, :] < length[:, None]) & (n_i > 1)  # [text, query]
    norm = torch.log(n_i.clamp_min(2).double())
    inside = ((i[None, :] < length[:, None])[:, None, :, None]
              & (j[None, :] < length[:, None])[:, None, None, :])  # [text, 1, query, key]
    later = (i[1:][None, :] < length[:, None]).double()  # rows i >= 1 inside the text
    out = {name: torch.empty(b_, h, dtype=torch.float64) for name in HEAD_INPUTS}
    step = max(1, _CHUNK_BYTES // (8 * h * q * k))
    for s in range(0, b_, step):
        c = slice(s, s + step)
        a = torch.where(inside[c], attn[c].double().clamp_min(0.0), 0.0)
        e = -torch.special.xlogy(a, a).sum(-1) / norm[c, None, :]
        out["entropy_sum"][c] = torch.where(counted[c, None], e, 0.0).sum(-1).cpu()
        out["entropy_rows"][c] = counted[c].sum(-1, keepdim=True).double().expand(-1, h).cpu()
        rows = later[c].sum(-1)[:, None]
        scale = torch.where(rows > 0, 1.0 / rows.clamp_min(1.0), math.nan)
        prev = a.diagonal(offset=-1, dim1=-2, dim2=-1)  # [text, head, q - 1]: a[i, i - 1]
        out["previous_token_score"][c] = ((prev * later[c, None]).sum(-1) * scale).cpu()
        out["first_token_score"][c] = ((a[:, :, 1:, 0] * later[c, None]).sum(-1) * scale).cpu()
    return out


def stack_head_stats(per_layer: Sequence[Mapping[str, torch.Tensor]]) -> dict[str, np.ndarray]:
    """`text_head_stats` of blocks 1..L -> {name: [text, layer, head]} for `add_batch`."""
    return {name: np.stack([np.asarray(s[name]) for s in per_layer], axis=1) for name in HEAD_INPUTS}


# --- token-sample statistics (numpy, finalisation) ------------------------------------------

def _interval(value: float, reps: np.ndarray, normal: bool = False) -> Interval:
    """95% bootstrap interval from replicates: percentile [q2.5, q97.5], or with `normal` the
    bias-corrected normal interval v - b +- 1.96 se (b = mean(reps) - v, se = std(reps)),
    clipped to [0, 1]: for few replicates of a statistic whose resamples are biased
    (duplicated rows lower a sample entropy, so its percentile interval misses the
    population value; tests/test_accumulate.py measures the coverage)."""
    reps = reps[np.isfinite(reps)]
    if not np.isfinite(value) or reps.size < 2:
        return Interval(_finite(value), None, None)
    if normal:
        centre, half = 2 * value - reps.mean(), 1.959964 * reps.std(ddof=1)
        lo, hi = np.clip([centre - half, centre + half], 0.0, 1.0)
    else:
        lo, hi = np.quantile(reps, [0.025, 0.975])
    return Interval(float(value), float(lo), float(hi))


def _finite(v) -> float | None:
    return float(v) if v is not None and np.isfinite(v) else None


def sample_intervals(h: np.ndarray, seed: int, twonn_boot: int, entropy_boot: int,
                     device: torch.device | str = "cpu") -> dict[str, Interval]:
    """TwoNN and activation entropy of the sampled rows `h  # [row, d]` with 95% bootstrap
    intervals: TwoNN resamples the mu ratios and refits (metrics.twonn_interval, percentile);
    the entropy resamples rows as multinomial weights, re-centred with the weighted mean (one
    [row, d]^T [row, d] product and one d x d eigvalsh per replicate; normal interval)."""
    found = M.twonn_ratios(h)
    value = None if found is None else M.twonn_fit(*found)
    iv = None if found is None else M.twonn_interval(*found, n_boot=twonn_boot, seed=seed)
    out = {"intrinsic_dim_twonn": Interval(value, *(iv or (None, None)))}
    x = torch.as_tensor(h, dtype=torch.float64, device=device)[None]
    k = x.shape[1]
    value = entropies(x, torch.ones(1, k, dtype=torch.float64, device=device))[0].item()
    rng = np.random.default_rng(seed)
    counts = rng.multinomial(k, np.full(k, 1.0 / k), size=entropy_boot) if k else np.zeros((0, 0))
    reps = np.array([entropies(x[:, c > 0], torch.as_tensor(c[c > 0], device=device)[None].double()
                               )[0].item() for c in counts])
    out["activation_entropy"] = _interval(value, reps, normal=True)
    return out


# --- results --------------------------------------------------------------------------------

class Interval(NamedTuple):
    value: float | None
    ci_low: float | None
    ci_high: float | None


class TextStat(NamedTuple):
    """Across texts: mean, sample std, 95% t-interval of the mean, n texts where the metric is
    defined, skipped = texts where it is not (too short, no variance)."""
    mean: float | None
    std: float | None
    ci_low: float | None
    ci_high: float | None
    n: int
    skipped: int


def text_stat(values: np.ndarray) -> TextStat:
    """`values  # [text]`, NaN where undefined."""
    v = values[np.isfinite(values)]
    n = int(v.size)
    if n == 0:
        return TextStat(None, None, None, None, 0, int(values.size))
    mean = float(v.mean())
    if n < 2:
        return TextStat(mean, None, None, None, 1, int(values.size) - 1)
    std = float(v.std(ddof=1))
    half = float(stats.t.ppf(0.975, n - 1)) * std / math.sqrt(n)
    return TextStat(mean, std, mean - half, mean + half, n, int(values.size) - n)


@dataclass
class LayerSummary:
    layer: int  # 0 = embeddings
    all_tokens: dict[str, float | int | None]  # ALL_TOKEN_METRICS
    token_sample: dict[str, Interval]  # SAMPLE_METRICS
    per_text: dict[str, TextStat]  # METRICS
    dataset_entropy: float | None


@dataclass
class DatasetSummary:
    model: str
    texts: int
    tokens: int  # counted token rows
    skipped_texts: int  # texts with no counted row
    sample_tokens: int
    pooled_texts: int  # texts whose mean-pooled vectors gave the dataset entropy
    pooled_exact: bool  # True when that is every non-empty text
    layers: list[LayerSummary]
    head_mean: dict[str, np.ndarray]  # HEAD_STATS -> [layer, head] (index 0 = block 1), NaN: none
    head_std: dict[str, np.ndarray]  # same, sample std across texts
    text_ids: np.ndarray  # [text] ascending
    text_values: np.ndarray  # [text, layer + 1, metric] METRICS order, NaN where undefined

    def to_json(self) -> dict:
        """design.md summary.json "dataset" (the driver adds seconds, tokens_per_second,
        processes)."""
        return {"texts": self.texts, "tokens": self.tokens, "skipped_texts": self.skipped_texts,
                "sample_tokens": self.sample_tokens, "layers": [{
                    "layer": s.layer, "all_tokens": dict(s.all_tokens),
                    "token_sample": {k: v._asdict() for k, v in s.token_sample.items()},
                    "per_text": {k: {f: getattr(v, f) for f in ("mean", "std", "ci_low", "ci_high", "n")}
                                 for k, v in s.per_text.items()},
                    "dataset_entropy": s.dataset_entropy} for s in self.layers]}


def _chan(n_a, mean_a, m2_a, n_b, mean_b, m2_b, outer: bool):
    """Chan et al.: merged (mean, M2) of two parts of n_a and n_b rows; elementwise (numpy
    counts), or with M2 d x d per layer (`outer`, python int counts)."""
    n = n_a + n_b
    delta = mean_b - mean_a
    f = n_b / np.maximum(n, 1) if isinstance(n, np.ndarray) else float(n_b) / max(n, 1)
    mean = mean_a + delta * f
    c = n_a * f
    m2 = m2_a + m2_b + (delta[..., :, None] * delta[..., None, :] * c if outer else delta * delta * c)
    return mean, m2


def _np(v) -> np.ndarray:
    return v.detach().cpu().numpy() if torch.is_tensor(v) else np.asarray(v)


def _check_meta(expected: Mapping, got: Mapping, what: str) -> None:
    diff = [f"{k}={got.get(k)!r} (expected {expected.get(k)!r})"
            for k in sorted(set(expected) | set(got)) if expected.get(k) != got.get(k)]
    if diff:
        raise UserError(f"{what} does not match: {'; '.join(diff)}. Use the same model, dataset and "
                        "settings, or start from a new --resume directory")


class DatasetAccumulator:
    """Streaming, mergeable dataset-mode statistics of one model (see the module docstring).

    Memory (float64 unless said): scatter [layer + 1, d, d] on the batch device; token sample
    [layer + 1, K, d] float32 (exact copies of 16/32-bit model outputs); pooled vectors
    [layer + 1, pooled_texts, d]; per text [text, layer + 1, 8] (64 (L + 1) bytes per text);
    heads [3, layer, head]."""

    def __init__(self, model: str, n_layers: int, d_model: int, n_heads: int = 0, *,
                 sample_tokens: int = 5000, pooled_texts: int | None = None, seed: int = 0,
                 dataset: str = "", settings: Mapping | None = None, device=None):
        self.meta = {"format": FORMAT, "model": model, "n_layers": int(n_layers),
                     "d_model": int(d_model), "n_heads": int(n_heads), "seed": int(seed),
                     "sample_tokens": int(sample_tokens),
                     "pooled_texts": int(sample_tokens if pooled_texts is None else pooled_texts),
                     "dataset": str(dataset),
                     "settings": json.loads(json.dumps(settings or {}, sort_keys=True))}
        self.device = None if device is None else torch.device(device)
        L1, d, L, H = n_layers + 1, d_model, n_layers, n_heads
        self.n_rows = 0  # counted token rows
        self.mean: torch.Tensor | None = None  # [layer + 1, d] (allocated on the first batch)
        self.m2: torch.Tensor | None = None  # [layer + 1, d, d] centred scatter
        self.unit_sum = np.zeros((L1, d))  # [layer + 1, d] sum of unit rows (zero rows skipped)
        self.sums = np.zeros((L1, 3))  # [layer + 1, (nonzero rows, cosine sum, cosine rows)]
        self.att_sum = np.zeros((L, H))  # [layer, head] sum of row entropies
        self.att_rows = np.zeros((L, H))  # [layer, head] rows counted
        self.head_n = np.zeros((3, L, H))  # [HEAD_STATS, layer, head] texts where defined
        self.head_mean = np.zeros((3, L, H))
        self.head_m2 = np.zeros((3, L, H))
        self._ids: list[np.ndarray] = []  # chunks of [text] ids
        self._rows: list[np.ndarray] = []  # [text] counted rows
        self._values: list[np.ndarray] = []  # [text, layer + 1, metric]
        # keys (text_id, position); rows stored float32: exact for 16/32-bit model outputs
        self.sample = _Smallest(int(sample_tokens), np.float32)
        self.pooled = _Smallest(self.meta["pooled_texts"], np.float64)  # keys (text_id, 0)

    @property
    def texts(self) -> int:
        return int(sum(a.size for a in self._ids))

    def _ensure_state(self, device: torch.device) -> None:
        if self.mean is None:
            self.device = self.device or device
            L1, d = self.meta["n_layers"] + 1, self.meta["d_model"]
            self.mean = torch.zeros(L1, d, dtype=torch.float64, device=self.device)
            self.m2 = torch.zeros(L1, d, d, dtype=torch.float64, device=self.device)

    def add_batch(self, hidden: torch.Tensor, mask, text_ids, head_stats: Mapping | None = None) -> None:
        """Add one padded batch. `hidden  # [layer + 1, text, token, d]` (any float dtype/device);
        `mask  # [text, token]` bool, True for counted rows; `text_ids  # [text]` global ids
        (each text once over the whole run); `head_stats`: {HEAD_INPUTS: [text, layer, head]}
        (see `text_head_stats`, `stack_head_stats`), None when attention is not available.
        Inputs are checked first; an error while adding (e.g. out of memory) leaves the
        accumulator part-updated: reload the last checkpoint."""
        L1, d = self.meta["n_layers"] + 1, self.meta["d_model"]
        if hidden.ndim != 4 or hidden.shape[0] != L1 or hidden.shape[3] != d:
            raise ValueError(f"hidden must be [{L1}, text, token, {d}], got {tuple(hidden.shape)}")
        dev = hidden.device
        mask = torch.as_tensor(mask, device=dev).bool()
        ids = _np(text_ids).astype(np.int64).reshape(-1)
        if mask.shape != hidden.shape[1:3] or ids.size != hidden.shape[1]:
            raise ValueError(f"mask {tuple(mask.shape)}, text_ids {ids.shape}: not [text, token] of "
                             f"{tuple(hidden.shape)}")
        heads = None if head_stats is None else self._head_arrays(head_stats, ids.size)
        self._ensure_state(dev)
        parts, x0 = [], None
        for layer in range(L1):
            x = torch.where(mask[..., None], hidden[layer].double(), 0.0)  # [text, token, d]
            x0 = x if layer == 0 else x0
            self._add_scatter(layer, x[mask])
            parts.append(_text_layer(x, x0, mask))
        got = {k: torch.stack([p[k] for p in parts]).cpu().numpy() for k in parts[0]}  # one transfer
        values = np.full((ids.size, L1, len(METRICS)), np.nan)
        values[:, :, :7] = got["values"].transpose(1, 0, 2)
        self.unit_sum += got["unit_sum"]
        self.sums += got["sums"]
        mask_np = mask.cpu().numpy()
        self.n_rows += int(mask_np.sum())
        if heads is not None:
            self._add_heads(heads, values)
        counts = mask_np.sum(1)
        self._ids.append(ids)
        self._rows.append(counts.astype(np.int64))
        self._values.append(values)
        full = np.nonzero(counts > 0)[0]
        self.pooled.offer(text_priority(self.meta["seed"], ids[full]),
                          np.stack([ids[full], np.zeros_like(full)], 1), lambda i: got["pooled"][:, full[i]])
        self._offer_rows(hidden, mask_np, ids)

    def _add_scatter(self, layer: int, rows: torch.Tensor) -> None:
        """Chan's merge of this batch's (count, mean, centred scatter) of one layer, in place."""
        nb = rows.shape[0]
        if nb == 0:
            return
        rows = rows.to(self.device)
        mb = rows.mean(0)
        rc = rows - mb
        n = self.n_rows + nb
        delta = mb - self.mean[layer]
        self.mean[layer] += delta * (nb / n)
        self.m2[layer].addmm_(rc.mT, rc).addr_(delta, delta, alpha=self.n_rows * nb / n)

    def _offer_rows(self, hidden: torch.Tensor, mask: np.ndarray, ids: np.ndarray) -> None:
        b, t = np.nonzero(mask)
        pos = (np.cumsum(mask, axis=1) - 1)[b, t]  # index among the text's counted rows

        def take(i: np.ndarray) -> np.ndarray:
            bi, ti = (torch.as_tensor(a[i], device=hidden.device) for a in (b, t))
            return hidden[:, bi, ti].float().cpu().numpy()  # [layer + 1, row, d]
        self.sample.offer(token_priority(self.meta["seed"], ids[b], pos), np.stack([ids[b], pos], 1), take)

    def _head_arrays(self, head_stats: Mapping, texts: int) -> dict[str, np.ndarray]:
        want = (texts, self.meta["n_layers"], self.meta["n_heads"])
        if set(HEAD_INPUTS) - set(head_stats):
            raise ValueError(f"head_stats needs {HEAD_INPUTS}, got {tuple(head_stats)}")
        hs = {k: _np(head_stats[k]).astype(np.float64) for k in HEAD_INPUTS}
        if any(v.shape != want for v in hs.values()):
            raise ValueError(f"head_stats arrays must be [text, layer, head] = {want}")
        return hs

    def _add_heads(self, hs: dict[str, np.ndarray], values: np.ndarray) -> None:
        """Attention sums and per-head moments; per-text attention_entropy into `values`."""
        self.att_sum += hs["entropy_sum"].sum(0)
        self.att_rows += hs["entropy_rows"].sum(0)
        rows = hs["entropy_rows"]
        ent = np.where(rows > 0, hs["entropy_sum"] / np.maximum(rows, 1), np.nan)  # [text, layer, head]
        values[:, 1:, METRICS.index("attention_entropy")] = ent.mean(-1)
        v = np.stack([ent, hs["previous_token_score"], hs["first_token_score"]])  # [3, text, layer, head]
        ok = np.isfinite(v)
        cnt = ok.sum(1).astype(np.float64)
        mean = np.where(ok, v, 0.0).sum(1) / np.maximum(cnt, 1)
        m2 = np.where(ok, (v - mean[:, None]) ** 2, 0.0).sum(1)
        self.head_mean, self.head_m2 = _chan(self.head_n, self.head_mean, self.head_m2, cnt, mean, m2, False)
        self.head_n = self.head_n + cnt

    def _texts(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(ids [text], counted rows [text], values [text, layer + 1, metric]) sorted by id."""
        L1 = self.meta["n_layers"] + 1
        ids = np.concatenate(self._ids) if self._ids else np.zeros(0, np.int64)
        rows = np.concatenate(self._rows) if self._rows else np.zeros(0, np.int64)
        values = np.concatenate(self._values) if self._values else np.zeros((0, L1, len(METRICS)))
        order = np.argsort(ids, kind="stable")
        ids, rows, values = ids[order], rows[order], values[order]
        twice = ids[1:][np.diff(ids) == 0]
        if twice.size:
            raise UserError(f"text {int(twice[0])} was added twice ({twice.size} repeats): each text id "
                            "must be fed once; do not merge a run with itself or replay resumed batches")
        self._ids, self._rows, self._values = [ids], [rows], [values]
        return ids, rows, values

    def merge(self, other: DatasetAccumulator) -> DatasetAccumulator:
        """Add `other` (same model and settings, disjoint texts) into self; returns self."""
        _check_meta(self.meta, other.meta, "the accumulator to merge")
        if other.n_rows:
            self._ensure_state(other.device)
            mo, m2o = other.mean.to(self.device), other.m2.to(self.device)
            self.mean, self.m2 = _chan(self.n_rows, self.mean, self.m2, other.n_rows, mo, m2o, True)
            self.n_rows += other.n_rows
        self.unit_sum = self.unit_sum + other.unit_sum
        self.sums = self.sums + other.sums
        self.att_sum = self.att_sum + other.att_sum
        self.att_rows = self.att_rows + other.att_rows
        self.head_mean, self.head_m2 = _chan(self.head_n, self.head_mean, self.head_m2, other.head_n,
                                             other.head_mean, other.head_m2, False)
        self.head_n = self.head_n + other.head_n
        self._ids += list(other._ids)
        self._rows += list(other._rows)
        self._values += list(other._values)
        self._texts()  # sorts and rejects repeated texts
        for mine, theirs in ((self.sample, other.sample), (self.pooled, other.pooled)):
            mine.offer(theirs.priority, theirs.keys, lambda i, s=theirs: s.values[:, i])
        return self

    def state_dict(self) -> dict[str, np.ndarray]:
        """Everything as CPU numpy arrays (+ "meta", a JSON string): for np.savez, pickling,
        all_gather_object. `from_state_dict` inverts it."""
        L1, d = self.meta["n_layers"] + 1, self.meta["d_model"]
        ids, rows, values = self._texts()
        out = {"meta": np.array(json.dumps(self.meta)), "n_rows": np.array(self.n_rows, np.int64),
               "mean": np.zeros((L1, d)) if self.mean is None else self.mean.cpu().numpy(),
               "m2": np.zeros((L1, d, d)) if self.m2 is None else self.m2.cpu().numpy(),
               "text_ids": ids, "text_rows": rows, "text_values": values}
        for name in ("unit_sum", "sums", "att_sum", "att_rows", "head_n", "head_mean", "head_m2"):
            out[name] = getattr(self, name)
        for name, s in (("sample", self.sample), ("pooled", self.pooled)):
            out[f"{name}_priority"], out[f"{name}_keys"] = s.priority, s.keys
            n = s.priority.size
            out[f"{name}_values"] = np.zeros((L1, 0, d), np.float32) if s.values is None else s.values[:, :n]
        return out

    @classmethod
    def from_state_dict(cls, state: Mapping[str, np.ndarray], device=None) -> DatasetAccumulator:
        meta = json.loads(str(state["meta"]))
        if meta.get("format") != FORMAT:
            raise UserError(f"accumulator format {meta.get('format')!r} is not {FORMAT}: rerun the dataset")
        acc = cls(meta["model"], meta["n_layers"], meta["d_model"], meta["n_heads"],
                  sample_tokens=meta["sample_tokens"], pooled_texts=meta["pooled_texts"], seed=meta["seed"],
                  dataset=meta["dataset"], settings=meta["settings"], device=device)
        acc.n_rows = int(state["n_rows"])
        if acc.n_rows:
            dev = acc.device or torch.device("cpu")
            acc.mean = torch.as_tensor(np.array(state["mean"]), device=dev)
            acc.m2 = torch.as_tensor(np.array(state["m2"]), device=dev)
            acc.device = dev
        for name in ("unit_sum", "sums", "att_sum", "att_rows", "head_n", "head_mean", "head_m2"):
            setattr(acc, name, np.array(state[name], dtype=np.float64))
        acc._ids, acc._rows, acc._values = ([np.array(state[k])]
                                            for k in ("text_ids", "text_rows", "text_values"))
        for name, s in (("sample", acc.sample), ("pooled", acc.pooled)):
            s.priority = np.array(state[f"{name}_priority"], np.uint64)
            s.keys = np.array(state[f"{name}_keys"], np.int64).reshape(-1, 2)
            s.values = np.array(state[f"{name}_values"]) if s.priority.size else None
        return acc

    def save(self, path) -> None:
        """Write an .npz (atomically: a killed run leaves the previous checkpoint intact)."""
        with atomic_file(path) as f:
            np.savez(f, **self.state_dict())

    @classmethod
    def load(cls, path, expect_meta: Mapping | None = None, device=None) -> DatasetAccumulator:
        """Read `save`'s file; with `expect_meta` (e.g. a fresh accumulator's .meta) raise a
        UserError unless model, sizes, seed, K, dataset and settings all match."""
        try:
            with np.load(path, allow_pickle=False) as z:
                state = {k: z[k] for k in z.files}
            if "meta" not in state:
                raise ValueError("no metadata entry")
        except (OSError, ValueError, EOFError) as e:
            raise UserError(f"{path} is not a dataset accumulator ({e}); delete it or use another "
                            "--resume directory") from e
        acc = cls.from_state_dict(state, device=device)
        if expect_meta is not None:
            _check_meta(expect_meta, acc.meta, f"the checkpoint {path}")
        return acc

    def _all_token_metrics(self) -> list[dict]:
        L1, d, n = self.meta["n_layers"] + 1, self.meta["d_model"], self.n_rows
        mean = None if self.mean is None else self.mean.cpu().numpy()
        m2 = None if self.m2 is None else self.m2.cpu().numpy()
        out = []
        for layer in range(L1):
            row: dict = dict.fromkeys(ALL_TOKEN_METRICS)
            if n >= 2:
                lam = np.clip(np.linalg.eigvalsh(m2[layer])[::-1], 0.0, None)  # = s^2 of Hc
                frob = math.sqrt(max(float(np.trace(m2[layer]) + n * mean[layer] @ mean[layer]), 0.0))
                if lam[0] > 0 and math.sqrt(lam[0]) > M._ZERO_VARIANCE_REL * frob:
                    s = np.sqrt(lam[lam > lam[0] * max(n, d) * M._EPS])
                    row.update(effective_rank=M._erank_from_s(s), participation_ratio=M._pr_from_s(s, n),
                               intrinsic_dim_pca95=M._pca_dim_from_s(s))
            k, cos_sum, cos_n = self.sums[layer]
            u = self.unit_sum[layer]
            row["anisotropy"] = float((u @ u - k) / (k * (k - 1))) if k >= 2 else None
            row["cosine_to_input"] = float(cos_sum / cos_n) if cos_n > 0 else None
            e_sum, e_rows = (self.att_sum[layer - 1], self.att_rows[layer - 1]) if layer else (0, 0)
            if layer and (e_rows > 0).any():
                row["attention_entropy"] = float(np.mean(e_sum[e_rows > 0] / e_rows[e_rows > 0]))
            out.append(row)
        return out

    def finalize(self, bootstrap: int = 1000, entropy_bootstrap: int = 25) -> DatasetSummary:
        """The numbers of design.md "Dataset mode". `bootstrap` TwoNN and `entropy_bootstrap`
        activation-entropy replicates per layer (the latter cost one [K, d]^T [K, d] product
        and one d x d eigvalsh each)."""
        L1, seed = self.meta["n_layers"] + 1, self.meta["seed"]
        ids, rows, values = self._texts()
        all_tokens = self._all_token_metrics()
        _, sample = self.sample.ordered()
        _, pooled = self.pooled.ordered()
        dev = self.device or "cpu"
        layers = []
        for layer in range(L1):
            layer_seed = (seed & _M64) * 1024 + layer
            ts = (dict.fromkeys(SAMPLE_METRICS, Interval(None, None, None)) if sample is None else
                  sample_intervals(sample[layer], layer_seed, bootstrap, entropy_bootstrap, dev))
            de = None
            if pooled is not None:
                x = torch.as_tensor(pooled[layer], device=dev)[None]
                de = _finite(entropies(x, torch.ones(x.shape[:2], dtype=torch.float64, device=dev))[0].item())
            per_text = {m: text_stat(values[:, layer, j]) for j, m in enumerate(METRICS)}
            layers.append(LayerSummary(layer, all_tokens[layer], ts, per_text, de))
        with np.errstate(divide="ignore", invalid="ignore"):
            hm = np.where(self.head_n > 0, self.head_mean, np.nan)
            hs = np.where(self.head_n > 1, np.sqrt(self.head_m2 / (self.head_n - 1)), np.nan)
        n_pooled = self.pooled.priority.size
        return DatasetSummary(
            model=self.meta["model"], texts=int(ids.size), tokens=self.n_rows,
            skipped_texts=int((rows == 0).sum()), sample_tokens=int(self.sample.priority.size),
            pooled_texts=n_pooled, pooled_exact=n_pooled == int((rows > 0).sum()), layers=layers,
            head_mean=dict(zip(HEAD_STATS, hm, strict=True)), head_std=dict(zip(HEAD_STATS, hs, strict=True)),
            text_ids=ids, text_values=values)


def reduce_distributed(acc: DatasetAccumulator, group=None) -> DatasetAccumulator:
    """Every rank's accumulator gathered (all_gather_object of the CPU state) and merged in
    rank order, so every rank returns the same, equal to one process up to float64 summation
    order. Without an initialised process group, returns `acc`. Each rank briefly holds all
    ranks' states (world size x state size)."""
    import torch.distributed as dist
    if not (dist.is_available() and dist.is_initialized()):
        return acc
    states: list = [None] * dist.get_world_size(group)
    dist.all_gather_object(states, acc.state_dict(), group=group)
    out = DatasetAccumulator.from_state_dict(states[0], device=acc.device)
    for s in states[1:]:
        out.merge(DatasetAccumulator.from_state_dict(s))
    return out
