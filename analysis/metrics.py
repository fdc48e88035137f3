"""Per-layer metrics of hidden states and attention, exactly as in design.md "Metric definitions".

Every function is plain: it takes arrays and returns a number (or None where the metric is
undefined). Hidden-state metrics use the FULL matrix `h  # [token, d_model]` (every token,
every dimension) in float64. For one layer, `hc` is `h` minus its mean row.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence

import numpy as np
from scipy.special import xlogy

from analysis import parallel

log = logging.getLogger(__name__)

# Singular values below this fraction of the largest (times max(T, d) * eps, as numpy's
# matrix_rank) are numerical zeros of a rank-deficient matrix and are ignored.
_EPS = np.finfo(np.float64).eps
# Centring constant rows leaves round-off of about eps * |h|; below this relative size the
# centred matrix is treated as zero (no variance).
_ZERO_VARIANCE_REL = 1e-12
# TwoNN: bytes of float64 squared distances held at once; the fast (|x|^2 + |y|^2 - 2 x.y)
# screening's error is below ~(2 d + 8) eps (|x|^2 + |y|^2) (d the dimension): candidates within
# twice this slack (relative to |x|^2 + max |y|^2) of the second nearest are re-measured exactly.
_TWONN_CHUNK_BYTES = 32 * 1024 * 1024
_TWONN_SLACK = 1e-9
_TWONN_BLOCK_BYTES = 1024 * 1024
_TWONN_DISCARD = 0.10
_TWONN_MIN_POINTS = 10
_PCA_LEVEL = 0.95


def _as_matrix(h: np.ndarray, name: str = "h") -> np.ndarray:
    """`h` as a float64 array [token, d_model]; raises ValueError when it is not 2-D."""
    m = np.asarray(h, dtype=np.float64)
    if m.ndim != 2:
        raise ValueError(f"{name} must be 2-D [token, d_model], got shape {m.shape}")
    return m


def _centred_singular_values(m: np.ndarray) -> np.ndarray | None:
    """Singular values of the centred matrix with numerical zeros removed, largest first.

    `m  # [token, d_model]` float64. None when the centred matrix is (numerically) zero.
    """
    hc = m - m.mean(axis=0, keepdims=True)
    lam = _gram_eigenvalues(hc)
    scale = float(np.linalg.norm(m))
    if lam.size == 0 or lam[0] <= 0.0 or math.sqrt(lam[0]) <= _ZERO_VARIANCE_REL * scale:
        return None
    # eigenvalues of the Gram matrix carry absolute errors of about lam[0] * n * eps: smaller
    # ones are numerical zeros (singular values below ~1e-7 of the largest, for d = 768)
    tol = lam[0] * max(m.shape) * _EPS
    return np.sqrt(lam[lam > tol])


def _gram_eigenvalues(a: np.ndarray) -> np.ndarray:
    """Squared singular values of `a  # [n, d]` float64, largest first, from the eigenvalues of
    the smaller Gram matrix (a a^T or a^T a): the same numbers as svd(a)**2 up to rounding
    of ~eps * s_max**2, and 5-10x faster than an SVD for the layer shapes here."""
    g = a @ a.T if a.shape[0] <= a.shape[1] else a.T @ a
    lam = np.linalg.eigvalsh(g)[::-1]
    return np.clip(lam, 0.0, None)


def _erank_from_s(s: np.ndarray) -> float:
    p = s / s.sum()
    return float(np.exp(-np.sum(p * np.log(p))))


def _pr_from_s(s: np.ndarray, n_tokens: int) -> float:
    lam = s**2 / (n_tokens - 1)
    return float(lam.sum() ** 2 / np.sum(lam**2))


def _pca_dim_from_s(s: np.ndarray, level: float = _PCA_LEVEL) -> int:
    lam = s**2
    cum = np.cumsum(lam)
    # A relative slack of 1e-12 so that exactly 95% (up to round-off) counts as reaching it.
    k = int(np.searchsorted(cum, level * cum[-1] * (1.0 - 1e-12), side="left")) + 1
    return min(k, int(lam.size))


def effective_rank(h: np.ndarray) -> float | None:
    """Effective rank (Roy & Vetterli 2007) of `h  # [token, d_model]`.

    s = singular values of the centred matrix (zeros ignored), p = s / sum(s),
    erank = exp(-sum p log p). None with fewer than 2 tokens or no variance.
    """
    m = _as_matrix(h)
    if m.shape[0] < 2:
        return None
    s = _centred_singular_values(m)
    return None if s is None else _erank_from_s(s)


def participation_ratio(h: np.ndarray) -> float | None:
    """Participation ratio (sum l)^2 / sum l^2 of the covariance eigenvalues l = s^2 / (T - 1).

    `h  # [token, d_model]`. Not truncated to an integer. None with fewer than 2 tokens or no
    variance.
    """
    m = _as_matrix(h)
    if m.shape[0] < 2:
        return None
    s = _centred_singular_values(m)
    return None if s is None else _pr_from_s(s, m.shape[0])


def intrinsic_dim_pca95(h: np.ndarray) -> int | None:
    """Smallest k whose k largest covariance eigenvalues explain >= 95% of their sum.

    `h  # [token, d_model]`. None with fewer than 2 tokens or no variance.
    """
    m = _as_matrix(h)
    if m.shape[0] < 2:
        return None
    s = _centred_singular_values(m)
    return None if s is None else _pca_dim_from_s(s)


def _two_nearest(x: np.ndarray, gram: np.ndarray | None = None) -> np.ndarray:
    """Distances to the first and second nearest other row, `x  # [point, dim]` distinct rows.

    Centre `x` first (distances are unchanged, the screening below loses less to round-off).

    Returns [point, 2]. Works in row chunks so no N x N matrix is held: squared distances are
    screened with |x|^2 + |y|^2 - 2 x.y, and every point the screening cannot rule out is
    re-measured exactly: those within twice the screening's round-off bound of a row's second
    smallest screened distance (usually just the two, more when points are nearly equidistant).
    `gram  # [point, point]`: the rows' (centred) dot products when the caller has them
    already: the screening reads them instead of computing x x^T again.
    """
    n, dim = x.shape
    sq = np.einsum("ij,ij->i", x, x) if gram is None else np.diagonal(gram).copy()
    slack = max(_TWONN_SLACK, 16 * dim * _EPS) * (sq + sq.max())  # >> the round-off of d2
    chunk = max(1, min(n, _TWONN_CHUNK_BYTES // (8 * n)))
    out = np.empty((n, 2))
    for start in range(0, n, chunk):
        stop = min(n, start + chunk)
        d2 = x[start:stop] @ x.T if gram is None else gram[start:stop].copy()
        d2 *= -2.0
        d2 += sq[start:stop, None]
        d2 += sq[None, :]
        rows = np.arange(stop - start)
        d2[rows, np.arange(start, stop)] = np.inf  # a point is not its own neighbour
        first = d2.argmin(axis=1)
        best = d2[rows, first]
        d2[rows, first] = np.inf
        second = d2.min(axis=1)
        d2[rows, first] = best
        row, col = np.nonzero(d2 <= (second + 2.0 * slack[start:stop])[:, None])
        out[start:stop] = _two_smallest_exact(x, row + start, col, stop - start)
    return out


def _two_smallest_exact(x: np.ndarray, row: np.ndarray, col: np.ndarray, n_rows: int
                        ) -> np.ndarray:
    """The two smallest exact distances |x[row] - x[col]| of each of `n_rows` consecutive rows,
    from the candidate pairs (`row` ascending, at least two pairs a row), [n_rows, 2]. The
    differences are taken in blocks of ~1 MB that stay in cache."""
    exact = np.empty(row.size)
    block = max(1, _TWONN_BLOCK_BYTES // (8 * x.shape[1]))
    for b in range(0, row.size, block):
        diff = x[col[b:b + block]]
        np.subtract(x[row[b:b + block]], diff, out=diff)
        np.multiply(diff, diff, out=diff)
        exact[b:b + block] = np.sqrt(diff.sum(axis=1))
    order = np.lexsort((exact, row))  # by row, then by distance
    starts = np.searchsorted(row[order], row[0] + np.arange(n_rows))
    ranked = exact[order]
    return np.stack([ranked[starts], ranked[starts + 1]], axis=1)


def twonn_ratios(h: np.ndarray, gram: np.ndarray | None = None
                 ) -> tuple[np.ndarray, int] | None:
    """(mu = r2 / r1 of every distinct row with r1 > 0, N = number of distinct rows) for TwoNN,
    `h  # [token, d_model]`; None with fewer than 10 distinct rows. Identical rows are merged
    first: their r1 would be 0. `gram  # [token, token]`: the rows' centred dot products, when
    the caller has them (distances do not depend on the centre), for the neighbour screening."""
    raw = np.asarray(h)
    if raw.ndim != 2:
        raise ValueError(f"h must be 2-D [token, d_model], got shape {raw.shape}")
    if raw.shape[0] < _TWONN_MIN_POINTS:
        return None
    # Deduplicate in the input dtype (exact either way) and centre the copy in place: only
    # O(N d) memory besides one chunk of distances.
    first: dict[bytes, int] = {}  # row bytes -> first index (np.unique(axis=0) sorts: slower)
    keep = [i for i, row in enumerate(raw) if first.setdefault(row.tobytes(), i) == i]
    x = raw[keep].astype(np.float64)
    x -= x.mean(axis=0, keepdims=True)
    n = x.shape[0]
    if n < _TWONN_MIN_POINTS:
        log.debug("TwoNN: %d distinct rows, need %d", n, _TWONN_MIN_POINTS)
        return None
    r = _two_nearest(x, None if gram is None else gram[np.ix_(keep, keep)])
    ok = r[:, 0] > 0
    return r[ok, 1] / r[ok, 0], n


def _twonn_slopes(mu: np.ndarray, n: int) -> list[float | None]:
    """`twonn_fit` of each row of `mu  # [set, point]`, rows sorted ascending: the logarithms for
    every row at once, one slope per row (None where undefined)."""
    n_keep = min(int(math.floor(n * (1.0 - _TWONN_DISCARD))), mu.shape[1])
    if n_keep < 1:
        return [None] * mu.shape[0]
    xs = np.log(mu[:, :n_keep])
    ys = -np.log(1.0 - np.arange(1, n_keep + 1) / n)
    return [float(np.dot(r, ys)) / d if (d := float(np.dot(r, r))) > 0.0 else None for r in xs]


def twonn_fit(mu: np.ndarray, n: int) -> float | None:
    """The TwoNN slope from the ratios `mu` of `n` points: sort, drop the largest 10%, F = i / n,
    least-squares slope through the origin of -log(1 - F) on log(mu); None when undefined (no
    point kept, or every kept mu equal to 1)."""
    slope = _twonn_slopes(np.sort(np.asarray(mu, dtype=np.float64))[None], n)[0]
    if slope is None:
        log.debug("TwoNN: slope undefined (no kept point, or all kept mu equal 1)")
    return slope


def intrinsic_dim_twonn(h: np.ndarray) -> float | None:
    """TwoNN intrinsic dimension (Facco et al. 2017) of the rows of `h  # [token, d_model]`.

    Identical rows are merged first. For each point, r1 and r2 are the Euclidean distances to
    its two nearest other points and mu = r2 / r1. The mu are sorted, the largest 10% dropped,
    and the empirical CDF of the i-th kept value is F = i / N (i = 1.., N = all distinct points
    before dropping, as in Facco's code). The estimate is the least-squares slope through the
    origin of -log(1 - F) on log(mu). None with fewer than 10 distinct rows, or when every kept
    mu is 1 (the slope is undefined).
    """
    found = twonn_ratios(h)
    return None if found is None else twonn_fit(*found)


TWONN_BOOTSTRAP = 200  # resamples for the TwoNN interval
# Below this many distinct token rows a TwoNN estimate is flagged unreliable wherever it is
# shown: at 24 points with true dimension 10, 90% of estimates fall in [5.8, 12.2].
TWONN_RELIABLE_TOKENS = 100


def twonn_interval(mu: np.ndarray, n: int, level: float = 0.95, n_boot: int = TWONN_BOOTSTRAP,
                   seed: int = 0) -> tuple[float, float] | None:
    """Percentile bootstrap interval of the TwoNN estimate: the points' ratios `mu` resampled
    with replacement (`n_boot` times, numpy default_rng(seed)) and refitted. Resampling the
    ratios, not the rows, keeps each point's measured neighbours; it shows the spread of the
    fit, which dominates at prompt lengths. None when fewer than 3 resamples give a slope."""
    mu = np.asarray(mu, dtype=np.float64)
    if mu.size < 2:
        return None
    rng = np.random.default_rng(seed)
    draws = np.sort(mu[rng.integers(0, mu.size, size=(n_boot, mu.size))], axis=1)
    fits = [v for v in _twonn_slopes(draws, n) if v is not None]  # twonn_fit of each resample
    if len(fits) < 3:
        return None
    lo, hi = np.percentile(fits, [50 * (1 - level), 50 * (1 + level)])
    return float(lo), float(hi)


def activation_entropy(h: np.ndarray) -> float | None:
    """Normalised von Neumann entropy of the token Gram matrix of `h  # [token, d_model]`.

    Z = rows of the centred matrix scaled to unit length (rows of zero norm dropped),
    K = Z Z^T, lambda = eig(K) / trace(K), S = -sum lambda log lambda / log(min(T - 1, d)),
    in [0, 1], with T counting every token. Centring leaves rank at most T - 1, so that is the
    largest entropy T tokens can reach: a regular simplex (T one-hot rows) gives exactly 1.
    eig(Z Z^T) is taken as the squared singular values of Z. None with fewer than 3 tokens
    (log(min(T - 1, d)) = 0) or fewer than 2 usable rows.
    """
    m = _as_matrix(h)
    t, d = m.shape
    if t < 3:
        return None
    hc = m - m.mean(axis=0, keepdims=True)
    norms = np.linalg.norm(hc, axis=1)
    if norms.max(initial=0.0) <= _ZERO_VARIANCE_REL * float(np.linalg.norm(m)):
        return None
    keep = norms > norms.max() * 1e-12
    if int(keep.sum()) < 2:
        return None
    z = hc[keep] / norms[keep, None]
    lam = _gram_eigenvalues(z)
    lam = lam / lam.sum()
    denom = math.log(min(t - 1, d))
    if denom <= 0.0:  # d == 1: a single direction, no spread
        return 0.0
    s = -float(np.sum(xlogy(lam, lam))) / denom
    return float(min(max(s, 0.0), 1.0))


def cosine_to_input(h: np.ndarray, h0: np.ndarray) -> float | None:
    """Mean over tokens t of cos(h[t], h0[t]); `h`, `h0  # [token, d_model]` (h0 = layer 0).

    Tokens where either vector is zero are skipped; None when no token is left.
    """
    a = _as_matrix(h)
    b = _as_matrix(h0, "h0")
    if a.shape != b.shape:
        raise ValueError(f"h and h0 must have the same shape, got {a.shape} and {b.shape}")
    na = np.linalg.norm(a, axis=1)
    nb = np.linalg.norm(b, axis=1)
    ok = (na > 0) & (nb > 0)
    if not ok.any():
        return None
    if not ok.all():
        a, b, na, nb = a[ok], b[ok], na[ok], nb[ok]
    cos = np.einsum("ij,ij->i", a, b) / (na * nb)
    return float(np.mean(np.clip(cos, -1.0, 1.0)))


def anisotropy(h: np.ndarray) -> float | None:
    """Mean cosine over all pairs i != j of token vectors of `h  # [token, d_model]`.

    Vectors are NOT centred. With unit rows u, sum_{i != j} u_i.u_j = |sum u|^2 - n, so no
    pairwise matrix is built. Zero vectors are skipped; None with fewer than 2 usable tokens.
    """
    m = _as_matrix(h)
    norms = np.linalg.norm(m, axis=1)
    ok = norms > 0
    n = int(ok.sum())
    if n < 2:
        return None
    u = m[ok] / norms[ok, None]
    total = u.sum(axis=0)
    return float((np.dot(total, total) - n) / (n * (n - 1)))


def _row_entropies(att: np.ndarray, causal: bool) -> np.ndarray:
    """Normalised entropies of every row: `att  # [..., query, key]` -> [..., query].

    Row i is divided by log(n_i), n_i = i + 1 when causal else the number of keys; rows with
    n_i == 1 are NaN (the caller drops them). 0 log 0 = 0.
    """
    a = np.clip(np.asarray(att, dtype=np.float64), 0.0, None)
    q, k = a.shape[-2], a.shape[-1]
    n = np.arange(1, q + 1) if causal else np.full(q, k)
    with np.errstate(divide="ignore", invalid="ignore"):
        norm = np.where(n > 1, np.log(np.maximum(n, 1)), np.nan)
    ent = -xlogy(a, a).sum(axis=-1)
    return ent / norm


def attention_entropy_rows(att: np.ndarray, causal: bool) -> np.ndarray:
    """Per-row normalised entropy of one head, `att  # [query, key]` -> [kept rows].

    Row i: -sum_j a_ij log a_ij / log(n_i), n_i = i + 1 if causal else T (no padding is
    assumed). Rows with n_i == 1 are skipped, so a causal head returns rows 1..T-1.
    """
    a = np.asarray(att)
    if a.ndim != 2:
        raise ValueError(f"att must be 2-D [query, key], got shape {a.shape}")
    e = _row_entropies(a, causal)
    return e[~np.isnan(e)]


def head_attention_entropy(att: np.ndarray, causal: bool) -> float | None:
    """Mean normalised row entropy of one head `att  # [query, key]`; None if no row is kept."""
    rows = attention_entropy_rows(att, causal)
    return float(rows.mean()) if rows.size else None


def layer_attention_entropy(att: np.ndarray, causal: bool) -> float | None:
    """Mean over heads of the head entropies, `att  # [head, query, key]`; None if no rows."""
    a = np.asarray(att)
    if a.ndim != 3:
        raise ValueError(f"att must be 3-D [head, query, key], got shape {a.shape}")
    e = _row_entropies(a, causal)  # [head, query]
    if np.isnan(e).all():
        return None
    return float(np.nanmean(e, axis=1).mean())


def _clean(v: float | int | None) -> float | int | None:
    """Python number, or None for None / NaN / infinity."""
    if v is None:
        return None
    if isinstance(v, (int, np.integer)):
        return int(v)
    v = float(v)
    return v if math.isfinite(v) else None


def _spectrum_from_gram(lam: np.ndarray, m: np.ndarray) -> np.ndarray | None:
    """`_centred_singular_values` from the Gram eigenvalues `lam` (largest first) of the centred
    `m`: the same zero-variance test and numerical-zero tolerance."""
    lam = np.clip(lam, 0.0, None)
    scale = float(np.linalg.norm(m))
    if lam.size == 0 or lam[0] <= 0.0 or math.sqrt(lam[0]) <= _ZERO_VARIANCE_REL * scale:
        return None
    tol = lam[0] * max(m.shape) * _EPS
    return np.sqrt(lam[lam > tol])


def _entropy_from_gram(g: np.ndarray, m: np.ndarray) -> float | None:
    """`activation_entropy` from the token Gram `g = Hc Hc^T  # [token, token]` of `m`: the
    Gram of the unit rows is g / (|hc_i| |hc_j|), so no second product is needed."""
    t, d = m.shape
    if t < 3:
        return None
    norms = np.sqrt(np.clip(np.diagonal(g), 0.0, None))
    if norms.max(initial=0.0) <= _ZERO_VARIANCE_REL * float(np.linalg.norm(m)):
        return None
    keep = norms > norms.max() * 1e-12
    if int(keep.sum()) < 2:
        return None
    k = g[np.ix_(keep, keep)] / np.outer(norms[keep], norms[keep])
    lam = np.clip(np.linalg.eigvalsh(k), 0.0, None)
    lam = lam / lam.sum()
    denom = math.log(min(t - 1, d))
    if denom <= 0.0:
        return 0.0
    return float(min(max(-float(np.sum(xlogy(lam, lam))) / denom, 0.0), 1.0))


def _layer_values(m: np.ndarray, h0: np.ndarray) -> dict:
    """Every hidden-state metric of one layer `m  # [token, d_model]` float64. With no more
    tokens than dimensions one centred Gram matrix Hc Hc^T serves the singular values, the
    activation entropy and the TwoNN neighbour screening (one T x T x d product instead of
    three); otherwise each metric takes its own path. The same numbers either way (tested)."""
    t, d = m.shape
    if 2 <= t <= d:
        hc = m - m.mean(axis=0, keepdims=True)
        g = hc @ hc.T
        s = _spectrum_from_gram(np.linalg.eigvalsh(g)[::-1], m)
        ent = _entropy_from_gram(g, m)
        ratios = twonn_ratios(m, g)
    else:
        s = _centred_singular_values(m) if t >= 2 else None
        ent = activation_entropy(m)
        ratios = twonn_ratios(m)
    twonn = None if ratios is None else twonn_fit(*ratios)
    ci = None if twonn is None else twonn_interval(*ratios)
    return {
        "effective_rank": None if s is None else _erank_from_s(s),
        "participation_ratio": None if s is None else _pr_from_s(s, t),
        "intrinsic_dim_pca95": None if s is None else _pca_dim_from_s(s),
        "intrinsic_dim_twonn": twonn,
        "activation_entropy": ent,
        "cosine_to_input": cosine_to_input(m, h0),
        "anisotropy": anisotropy(m),
        "intrinsic_dim_twonn_ci_low": None if ci is None else ci[0],
        "intrinsic_dim_twonn_ci_high": None if ci is None else ci[1],
    }


LAYER_METRIC_NAMES = ("effective_rank", "participation_ratio", "intrinsic_dim_pca95",
                      "intrinsic_dim_twonn", "activation_entropy", "cosine_to_input", "anisotropy",
                      "attention_entropy", "intrinsic_dim_twonn_ci_low",
                      "intrinsic_dim_twonn_ci_high")


def layer_metrics(hidden: np.ndarray, attentions=None, causal: bool = False,
                  attention_entropy: Sequence[float | None] | None = None
                  ) -> dict[str, np.ndarray]:
    """Every metric of docs/reference.md for every layer: {name: float64 array [layer + 1]},
    NaN where undefined (analysis.result.LayerMetrics takes it as it is).

    `hidden  # [layer + 1, token, d_model]` (layer 0 = embeddings).
    `attentions  # [layer, head, query, key]`; "attention_entropy" is NaN on layer 0.
    `attention_entropy` (one value per block 1..L), when given, replaces the computation from
    `attentions` (the capture computes it layer by layer as the forward pass goes).
    """
    hid = np.asarray(hidden)
    if hid.ndim != 3:
        raise ValueError(f"hidden must be 3-D [layer + 1, token, d_model], got {hid.shape}")
    n_layers = hid.shape[0] - 1
    if attention_entropy is not None and len(attention_entropy) != n_layers:
        raise ValueError(f"{len(attention_entropy)} attention entropies for {n_layers} layers")
    if attention_entropy is None and np.asarray(attentions).shape[0] != n_layers:
        raise ValueError(f"attentions has {np.asarray(attentions).shape[0]} layers, "
                         f"hidden has {n_layers} + 1")
    out = {name: np.full(n_layers + 1, np.nan) for name in LAYER_METRIC_NAMES}
    h0 = np.asarray(hid[0], dtype=np.float64)
    per_layer = parallel.map_layers(lambda layer: _layer_values(np.asarray(hid[layer], dtype=np.float64), h0),
                           range(n_layers + 1))
    for layer in range(n_layers + 1):
        if layer == 0:
            att_ent = None
        elif attention_entropy is not None:
            att_ent = attention_entropy[layer - 1]
        else:
            att_ent = layer_attention_entropy(attentions[layer - 1], causal)
        values = {**per_layer[layer], "attention_entropy": att_ent}
        for name, v in values.items():
            v = _clean(v)
            if v is not None:
                out[name][layer] = v
        log.debug("layer %d metrics: %s", layer, values)
    return out
