"""Dataset mode's math: every single-prompt metric of each text of a padded batch (batched
float64 torch, `[text, layer + 1, metric]`), per-text head statistics from each layer's
attention, bootstrap intervals on the token sample, and the across-text summaries (mean, std,
95% t-interval). analysis/accumulate.py keeps the state; the formulas are docs/reference.md's,
tested against analysis/metrics.py."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import NamedTuple

import numpy as np
import torch
from scipy import stats

from analysis import attention as att_mod
from analysis import metrics as M

# text_head_stats' output per layer, {name: [text, head]} (DatasetAccumulator.add_batch's input)
HEAD_INPUTS = ("entropy_sum", "entropy_rows", "previous_token_score", "first_token_score")
_TINY = 1e-300
_CHUNK_BYTES = 64 * 2**20  # float64 temporaries held at once (attention, bootstrap)
# Zeroing masked entries: masked_fill_ in place, 6x faster than torch.where with a broadcast
# mask ([16, 12, 128, 128] attention on one thread: 7 ms against 43 ms), the same values.
_NEAR = 1e-4  # TwoNN: squared neighbour distances below this fraction of |x|^2 are re-measured


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


def add_gram(m2: torch.Tensor, rows: torch.Tensor, blocks: int = 4) -> None:
    """m2 += rows^T rows for `rows  # [n, d]`, in place: the blocks on and below the diagonal are
    multiplied (10 of 16 with 4 blocks), those above copied from them. GPT-2's 768 x 768 from
    2,048 rows: 31 ms against 38 ms for the full product on one thread, 25 against 34 on two."""
    d = rows.shape[1]
    step = -(-d // blocks)
    for i in range(0, d, step):
        e = min(d, i + step)
        m2[i:e, :e].addmm_(rows[:, i:e].mT, rows[:, :e])
        m2[:i, i:e] = m2[i:e, :i].mT


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


def text_layer_metrics(x: torch.Tensor, x0: torch.Tensor, mask: torch.Tensor,
                       n0: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
    """One layer of one batch: `x`, `x0  # [text, token, d]` float64 (padding rows zero; x0 =
    layer 0), `mask  # [text, token]`; `n0`: the row norms of x0 when the caller has them.
    Returns per-text metrics [text, 7] (METRICS without attention_entropy), pooled means
    [text, d] and the all-token sums of this batch."""
    d = x.shape[-1]
    full = bool(mask.all())  # no padding: nothing to zero
    n = mask.sum(-1).double()
    pooled = x.sum(1) / n.clamp_min(1.0)[:, None]
    xc = x - pooled[:, None]
    if not full:
        xc.masked_fill_(~mask[..., None], 0.0)
    g = xc @ xc.mT  # [text, token, token]
    nx = x.norm(dim=-1)  # [text, token]
    frob = (nx * nx).sum(-1).sqrt()
    spec = _spectra(torch.linalg.eigvalsh(g if x.shape[1] <= d else xc.mT @ xc), n, d, frob)
    if x.shape[1] > d:  # long texts: the d x d side is smaller
        ent = entropies(x, mask.double())
    else:  # the unit-row Gram straight from g
        nu = g.diagonal(dim1=-2, dim2=-1).clamp_min(0.0).sqrt()  # |row of Hc|
        top = nu.amax(-1)
        live = mask & (nu > top[:, None] * 1e-12)
        ok = (n >= 3) & (top > M._ZERO_VARIANCE_REL * frob) & (live.sum(-1) >= 2)
        k = g / (nu[:, :, None] * nu[:, None, :]).clamp_min(_TINY)
        if not bool(live.all()):
            k.masked_fill_(~(live[:, :, None] & live[:, None, :]), 0.0)
        ent = _normalised_entropy(k, n, ok, d)
    twonn = _text_twonn(x, xc, g, mask)
    n0 = x0.norm(dim=-1) if n0 is None else n0
    nz = mask & (nx > 0)
    inv = torch.where(nz, 1.0 / nx.clamp_min(_TINY), 0.0)  # zero rows (and padding) left out
    su = (inv[:, None, :] @ x)[:, 0]  # sum of unit rows [text, d]
    c = nz.sum(-1).double()
    aniso = torch.where(c >= 2, ((su * su).sum(-1) - c) / (c * (c - 1)).clamp_min(1.0), math.nan)
    both = nz & (n0 > 0)
    cos = torch.where(both, ((x * x0).sum(-1) / (nx * n0).clamp_min(_TINY)).clamp(-1.0, 1.0), 0.0)
    c_n = both.sum(-1).double()
    cos_text = torch.where(c_n > 0, cos.sum(-1) / c_n.clamp_min(1.0), math.nan)
    values = torch.cat([spec, twonn[:, None], ent[:, None], cos_text[:, None], aniso[:, None]], 1)
    sums = torch.stack([c.sum(), cos.sum(), c_n.sum()])
    return {"values": values, "pooled": pooled, "unit_sum": su.sum(0), "sums": sums}


def _row_blocks(q: int, k: int, causal: bool) -> list[tuple[int, int, int]]:
    """(first row, end row, end key) blocks of an attention matrix: with causal attention a
    block of rows reads only the keys up to its last row (the rest are weight 0), about 5/8 of
    the entries with 4 blocks; one block otherwise."""
    if not causal or q != k or q < 64:
        return [(0, q, k)]
    step = -(-q // 4)
    return [(r, min(q, r + step), min(q, r + step)) for r in range(0, q, step)]


def text_head_stats(attn: torch.Tensor, lengths, causal: bool) -> dict[str, torch.Tensor]:
    """Per-text, per-head statistics of ONE layer, `attn  # [text, head, query, key]` (right
    padded; text b has `lengths[b]` tokens; rows and keys beyond it are ignored).

    Row i of text b counts if n_i > 1 (n_i = i + 1 causal, else length_b); its entropy is
    -sum a log a / log(n_i) (causal: over keys j <= i; a causal model gives the others weight
    0). Returns float64 CPU tensors [text, head]: entropy_sum, entropy_rows,
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
    later = i[1:][None, :] < length[:, None]  # rows i >= 1 inside the text [text, query - 1]
    full = q == k and bool((length == q).all())
    out = {name: torch.empty(b_, h, dtype=torch.float64) for name in HEAD_INPUTS}
    step = max(1, _CHUNK_BYTES // (8 * h * q * k))
    e = torch.empty(min(step, b_), h, q, dtype=torch.float64, device=dev)  # row entropies
    for s in range(0, b_, step):
        c = slice(s, s + step)
        n_c = attn[c].shape[0]
        for r0, r1, k1 in _row_blocks(q, k, causal):
            a = attn[c, :, r0:r1, :k1].to(torch.float64, copy=True).clamp_min_(0.0)
            if not full:  # padding: rows and keys beyond a text's length count for nothing
                a.masked_fill_(~inside[c, :, r0:r1, :k1], 0.0)
            e[:n_c, :, r0:r1] = -att_mod.xlogx(a).sum(-1) / norm[c, None, r0:r1]
        out["entropy_sum"][c] = torch.where(counted[c, None], e[:n_c], 0.0).sum(-1).cpu()
        out["entropy_rows"][c] = counted[c].sum(-1, keepdim=True).double().expand(-1, h).cpu()
        rows = later[c].sum(-1)[:, None].double()
        scale = torch.where(rows > 0, 1.0 / rows.clamp_min(1.0), math.nan)
        for name, v in (("previous_token_score", attn[c].diagonal(offset=-1, dim1=-2, dim2=-1)),  # a[i, i-1]
                        ("first_token_score", attn[c, :, 1:, 0])):  # [text, head, q - 1]
            v = torch.where(later[c, None], v.double().clamp_min(0.0), 0.0)
            out[name][c] = (v.sum(-1) * scale).cpu()
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
        return Interval(finite_or_none(value), None, None)
    if normal:
        centre, half = 2 * value - reps.mean(), 1.959964 * reps.std(ddof=1)
        lo, hi = np.clip([centre - half, centre + half], 0.0, 1.0)
    else:
        lo, hi = np.quantile(reps, [0.025, 0.975])
    return Interval(float(value), float(lo), float(hi))


def finite_or_none(v) -> float | None:
    return float(v) if v is not None and np.isfinite(v) else None


def sample_twonn(h: np.ndarray, seed: int, twonn_boot: int) -> Interval:
    """TwoNN of the sampled rows `h  # [row, d]` with its 95% bootstrap interval (the mu ratios
    resampled and refitted, metrics.twonn_interval, percentile). numpy only: layers can run
    side by side (analysis.parallel.map_layers)."""
    found = M.twonn_ratios(h)
    value = None if found is None else M.twonn_fit(*found)
    iv = None if found is None else M.twonn_interval(*found, n_boot=twonn_boot, seed=seed)
    return Interval(value, *(iv or (None, None)))


def sample_intervals(h: np.ndarray, seed: int, twonn_boot: int, entropy_boot: int,
                     device: torch.device | str = "cpu", twonn: Interval | None = None
                     ) -> dict[str, Interval]:
    """TwoNN and activation entropy of the sampled rows `h  # [row, d]` with 95% bootstrap
    intervals: TwoNN as `sample_twonn` (or `twonn`, when the caller computed it already);
    the entropy resamples rows as multinomial weights, re-centred with the weighted mean (one
    [row, d]^T [row, d] product and one d x d eigvalsh per replicate; normal interval)."""
    out = {"intrinsic_dim_twonn": twonn if twonn is not None else sample_twonn(h, seed, twonn_boot)}
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
