"""Per-head analysis of `attentions  # [layer, head, query, key]`: entropy, roles, clustering.

Row order of everything flattened over heads is layer-major: (layer 1, head 0), (layer 1,
head 1), ..., (layer 2, head 0), ... Array index 0 on the layer axis is block (layer) 1.
"""

from __future__ import annotations

import logging

import numpy as np
from sklearn.decomposition import PCA

from analysis.metrics import _row_entropies

log = logging.getLogger(__name__)

ROLE_NAMES = ("previous_token_score", "first_token_score", "self_score")
ROLE_THRESHOLD = 0.4  # a head's role is its largest score when that reaches this, else "mixed"
ROLES = ("previous", "first", "self", "induction", "mixed")
FEATURE_NAMES = ROLE_NAMES + ("attention_entropy", "mean_distance")


def head_roles(previous: np.ndarray, first: np.ndarray, self_: np.ndarray,
               induction: np.ndarray | None = None, threshold: float = ROLE_THRESHOLD
               ) -> np.ndarray:
    """The dominant role of every head, `[layer, head]` strings: previous / first / self /
    induction, whichever score is largest (ties in that order) when it is at least
    `threshold`, else "mixed". Undefined (NaN) scores never win."""
    scores = [previous, first, self_] + ([induction] if induction is not None else [])
    stack = np.stack([np.asarray(a, dtype=np.float64) for a in scores])  # [role, layer, head]
    filled = np.where(np.isfinite(stack), stack, -np.inf)
    best = filled.argmax(axis=0)
    value = filled.max(axis=0)
    names = np.array(ROLES[:len(scores)], dtype=object)
    return np.where(value >= threshold, names[best], "mixed").astype(object)


def shared_projection(hidden: np.ndarray) -> np.ndarray:
    """`hidden  # [layer + 1, token, d_model]` -> `[layer + 1, token, 2]` on one shared basis
    (the layer-transition view): each layer centred and scaled to unit RMS (late layers with
    large norms do not dominate), all layers stacked, and the top-2 principal axes of the stack
    project every layer, so the axes are the same in every frame."""
    h = np.asarray(hidden, dtype=np.float64)
    hc = h - h.mean(axis=1, keepdims=True)
    rms = np.sqrt((hc ** 2).sum(axis=(1, 2), keepdims=True) / max(1, h.shape[1]))
    hc = hc / np.where(rms > 0, rms, 1.0)
    stacked = hc.reshape(-1, h.shape[2])
    if stacked.shape[0] < 2:
        return np.zeros(h.shape[:2] + (2,))
    _, _, vt = np.linalg.svd(stacked - stacked.mean(0), full_matrices=False)
    basis = vt[:2].T
    if basis.shape[1] < 2:
        basis = np.pad(basis, ((0, 0), (0, 2 - basis.shape[1])))
    return hc @ basis


def _as_4d(attentions: np.ndarray) -> np.ndarray:
    a = np.asarray(attentions)
    if a.ndim != 4:
        raise ValueError(f"attentions must be 4-D [layer, head, query, key], got {a.shape}")
    return a


def head_entropies(attentions: np.ndarray, causal: bool) -> np.ndarray:
    """Mean normalised row entropy of every head (design.md), `[layer, head]` float64.

    `attentions  # [layer, head, query, key]`. Heads with no kept row (one token) are NaN.
    """
    a = _as_4d(attentions)
    out = np.full(a.shape[:2], np.nan)
    for layer in range(a.shape[0]):  # one layer at a time keeps float64 temporaries small
        e = _row_entropies(a[layer], causal)  # [head, query]
        if not np.isnan(e).all():
            out[layer] = np.nanmean(e, axis=1)
    return out


def xlogx(a):
    """a log a elementwise with 0 log 0 = 0, `a  # torch.Tensor` float64 >= 0: the same values
    as torch.special.xlogy(a, a) at 2.5x its speed (log is vectorised; a clamp at 1e-300 keeps
    log finite where a = 0 and changes no weight that came from float32 or bfloat16)."""
    return a.clamp_min(1e-300).log_().mul_(a)


def layer_head_stats(att, causal: bool) -> tuple[np.ndarray, np.ndarray]:
    """(`head_entropies`, `mean_attention_distance`) of one layer, each [head], from
    `att  # torch.Tensor [head, query, key]` of attention weights: the capture's per-layer
    statistics.

    The same formulas and precision (float64; 0 log 0 = 0, `xlogx`) in torch on both cores, one
    float64 copy serving both, in blocks of query rows. In a causal layer a block of rows
    r0..r1-1 reads only keys 0..r1-1: the others are exact zeros and add nothing to either sum,
    so about half the work is skipped. One TinyLlama-1.1B layer at 512 tokens [32, 512, 512]:
    0.03 s, against 0.26 s for numpy's float64 entropy and distance and float16 copy.
    """
    import torch

    h, q, k = att.shape
    n = (torch.arange(1, q + 1, dtype=torch.float64) if causal
         else torch.full((q,), float(k), dtype=torch.float64))
    norm = torch.where(n > 1, torch.log(n), torch.tensor(float("nan"), dtype=torch.float64))
    rows = max(1, min((64 * 2**20) // (8 * h * k),  # a float64 block of at most 64 MB
                      -(-q // 8) if causal else q))  # causal: 8 blocks skip ~7/16 of the keys
    ent = torch.empty(h, q, dtype=torch.float64)
    dist = torch.zeros(h, dtype=torch.float64)
    for r0 in range(0, q, rows):
        r1 = min(q, r0 + rows)
        keys = min(k, r1) if causal else k
        a = att[:, r0:r1, :keys].double().clamp_(min=0.0)
        ent[:, r0:r1] = -xlogx(a).sum(-1)
        far = (torch.arange(r0, r1)[:, None] - torch.arange(keys)[None, :]).abs().double() / k
        dist += (a * far).sum((-1, -2))
    entropies = torch.nanmean(ent / norm, dim=-1).numpy()
    return entropies, (dist / q).numpy()


def previous_token_score(att: np.ndarray) -> float:
    """Mean over query rows i >= 1 of a[i, i - 1], `att  # [query, key]`; NaN with one row."""
    return float(role_scores(np.asarray(att)[None, None])["previous_token_score"][0, 0])


def first_token_score(att: np.ndarray) -> float:
    """Mean over query rows i >= 1 of a[i, 0], `att  # [query, key]`; NaN with one row."""
    return float(role_scores(np.asarray(att)[None, None])["first_token_score"][0, 0])


def self_score(att: np.ndarray) -> float:
    """Mean over all query rows i of a[i, i], `att  # [query, key]`."""
    return float(role_scores(np.asarray(att)[None, None])["self_score"][0, 0])


def role_scores(attentions: np.ndarray) -> dict[str, np.ndarray]:
    """Head-role scores, each `[layer, head]` float64, from `attentions  # [layer, head, q, k]`.

    previous_token_score: mean over rows i >= 1 of a[i, i - 1];
    first_token_score: mean over rows i >= 1 of a[i, 0] (row 0 is excluded because it can only
    attend to itself in a causal model; note row 1's previous token IS the first token);
    self_score: mean over all rows of a[i, i].
    With a single token the first two are NaN.
    """
    a = _as_4d(attentions)
    q = a.shape[2]
    prev = np.diagonal(a, offset=-1, axis1=2, axis2=3)  # [layer, head, q - 1]
    diag = np.diagonal(a, axis1=2, axis2=3)  # [layer, head, q]
    if q >= 2:
        previous = prev.astype(np.float64).mean(axis=-1)
        first = a[:, :, 1:, 0].astype(np.float64).mean(axis=-1)
    else:
        previous = np.full(a.shape[:2], np.nan)
        first = np.full(a.shape[:2], np.nan)
    return {
        "previous_token_score": previous,
        "first_token_score": first,
        "self_score": diag.astype(np.float64).mean(axis=-1),
    }


def mean_attention_distance(attentions: np.ndarray) -> np.ndarray:
    """Mean over rows i of sum_j a_ij |i - j| / T, `[layer, head]`; T = number of keys.

    `attentions  # [layer, head, query, key]`. 0 = attends to itself, near 1 = far away.
    """
    a = _as_4d(attentions)
    q, k = a.shape[2], a.shape[3]
    dist = np.abs(np.arange(q)[:, None] - np.arange(k)[None, :]).astype(np.float64) / k
    out = np.empty(a.shape[:2])
    for layer in range(a.shape[0]):
        out[layer] = np.einsum("hqk,qk->h", a[layer].astype(np.float64), dist) / q
    return out


def repeated_sequence(vocab_ids: list[int], period: int, seed: int, prefix: list[int]
                      ) -> list[int]:
    """`prefix + block + block`: a random block of `period` ids from `vocab_ids`, repeated.

    The block is drawn with numpy `default_rng(seed)`, without replacement when the pool is
    large enough (so each token's previous occurrence is unique), else with replacement.
    Layout with p = len(prefix): first copy at positions p .. p + period - 1, second copy at
    p + period .. p + 2 * period - 1 (the last `period` positions), e.g. prefix = [BOS] gives
    the layout `induction_score` expects by default.
    """
    if period < 1:
        raise ValueError(f"period must be >= 1, got {period}")
    pool = np.asarray(list(vocab_ids), dtype=np.int64)
    if pool.size == 0:
        raise ValueError("vocab_ids is empty")
    rng = np.random.default_rng(seed)
    block = rng.choice(pool, size=period, replace=pool.size < period).tolist()
    return [int(t) for t in prefix] + [int(t) for t in block] * 2


def induction_score(attentions: np.ndarray, period: int, offset: int | None = None
                    ) -> np.ndarray:
    """Induction score of every head on a repeated random sequence, `[layer, head]` float64.

    `attentions  # [layer, head, query, key]` from a sequence laid out as `repeated_sequence`
    builds it: positions 0 .. offset - 1 are a prefix (e.g. BOS), the block of `period` random
    tokens is at offset .. offset + period - 1 and again at offset + period ..
    offset + 2 * period - 1. For each query position i of the second copy, the current token
    previously occurred at i - period, so an induction head attends to the key right after it,
    i - period + 1. The score is the mean of a[i, i - period + 1] over the `period` queries of
    the second copy (1 = perfect induction head). `offset` defaults to T - 2 * period, i.e. the
    sequence ends with the second copy; pass `len(prefix)` when tokens follow it (e.g. [SEP]).
    """
    a = _as_4d(attentions)
    t = a.shape[2]
    if period < 1:
        raise ValueError(f"period must be >= 1, got {period}")
    if offset is None:
        offset = t - 2 * period
    if offset < 0 or offset + 2 * period > t:
        raise ValueError(f"a sequence of {t} tokens cannot hold a prefix of {offset} and two "
                         f"copies of {period} tokens")
    queries = np.arange(offset + period, offset + 2 * period)
    keys = queries - period + 1
    return a[:, :, queries, keys].astype(np.float64).mean(axis=-1)


def head_features(attentions: np.ndarray, causal: bool) -> np.ndarray:
    """Unstandardised clustering features, `[layer * head, 5]` layer-major, in FEATURE_NAMES order.

    previous, first and self scores, attention entropy and mean attention distance; NaN (one
    token) becomes 0.
    """
    a = _as_4d(attentions)
    roles = role_scores(a)
    cols = [roles[name] for name in ROLE_NAMES]
    cols += [head_entropies(a, causal), mean_attention_distance(a)]
    feats = np.stack([c.reshape(-1) for c in cols], axis=1)
    return np.nan_to_num(feats, nan=0.0)


# Every feature lies in [0, 1]; a spread below this is treated as noise and not blown up to
# unit variance by the standardisation (else near-constant features dominate the clustering).
_MIN_FEATURE_SCALE = 0.05


def _standardise(x: np.ndarray) -> np.ndarray:
    """Z-scores per column, dividing by max(std, _MIN_FEATURE_SCALE)."""
    sd = np.maximum(x.std(axis=0), _MIN_FEATURE_SCALE)
    return (x - x.mean(axis=0)) / sd


def _canonical_labels(labels: np.ndarray) -> np.ndarray:
    """Renumber clusters in order of first appearance (head order), so labels are stable."""
    mapping: dict[int, int] = {}
    for lab in labels:
        mapping.setdefault(int(lab), len(mapping))
    return np.array([mapping[int(lab)] for lab in labels], dtype=np.int64)


def cluster_heads(attentions: np.ndarray, causal: bool, n_clusters: int | None = None,
                  seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """`cluster_features` of `head_features(attentions, causal)`."""
    return cluster_features(head_features(attentions, causal), n_clusters, seed)


def features_from_stats(stats: dict[str, np.ndarray]) -> np.ndarray:
    """`head_features` from per-head statistics `{name: [layer, head]}` (FEATURE_NAMES keys,
    "attention_entropy" and "mean_distance" included) computed elsewhere, e.g. by the capture."""
    cols = [np.asarray(stats[name], dtype=np.float64).reshape(-1) for name in FEATURE_NAMES]
    return np.nan_to_num(np.stack(cols, axis=1), nan=0.0)


def kmeans(z: np.ndarray, k: int, n_init: int = 10, seed: int = 0, max_iter: int = 300
           ) -> np.ndarray:
    """k-means labels of the rows of `z  # [point, feature]`: `n_init` runs from k-means++
    starts (rng = numpy default_rng(seed)), each Lloyd iterations until no label changes (at
    most `max_iter`); the run with the smallest inertia (sum of squared distances to the
    centres) wins, the first on ties. A cluster left empty takes the point farthest from its
    centre. All runs advance together as [run, point, cluster] arrays: for a model's few
    hundred heads this is ~10x faster than scikit-learn's KMeans, whose per-call overhead
    dominated at this size."""
    z = np.asarray(z, dtype=np.float64)
    n = z.shape[0]
    k = max(1, min(int(k), n))
    rng = np.random.default_rng(seed)
    sq = np.einsum("ij,ij->i", z, z)

    def dist2(c):  # [run, k, d] -> squared distances [run, point, k], clipped at 0
        d = sq[None, :, None] - 2.0 * (z @ c.transpose(0, 2, 1)) + (c * c).sum(axis=2)[:, None, :]
        return np.maximum(d, 0.0)

    # k-means++: the first centre uniformly, each next one with probability ~ D(x)^2
    idx = np.empty((n_init, k), dtype=np.int64)
    idx[:, 0] = rng.integers(n, size=n_init)
    closest = np.sum((z[None, :, :] - z[idx[:, 0]][:, None, :]) ** 2, axis=2)  # [run, point]
    for j in range(1, k):
        total = closest.sum(axis=1, keepdims=True)
        p = np.where(total > 0, closest / np.where(total > 0, total, 1.0), 1.0 / n)
        u = rng.random(n_init)[:, None]
        pick = np.minimum((np.cumsum(p, axis=1) < u * p.sum(axis=1, keepdims=True)).sum(axis=1),
                          n - 1)
        idx[:, j] = pick
        closest = np.minimum(closest, np.sum((z[None] - z[pick][:, None, :]) ** 2, axis=2))
    centres = z[idx]  # [run, k, d]
    labels = np.full((n_init, n), -1, dtype=np.int64)
    for _ in range(max_iter):
        d2 = dist2(centres)
        new = d2.argmin(axis=2)
        if np.array_equal(new, labels):
            break
        labels = new
        onehot = (labels[:, :, None] == np.arange(k)[None, None, :]).astype(np.float64)
        counts = onehot.sum(axis=1)  # [run, k]
        centres = (onehot.transpose(0, 2, 1) @ z) / np.maximum(counts, 1.0)[:, :, None]
        if (counts == 0).any():  # an empty cluster takes the point farthest from its centre
            assigned = np.take_along_axis(d2, labels[:, :, None], axis=2)[:, :, 0]
            for r, j in zip(*np.nonzero(counts == 0), strict=True):
                far = int(np.argmax(assigned[r]))
                centres[r, j] = z[far]
                assigned[r, far] = -1.0
                labels[r, far] = -1  # forces another iteration
    else:  # no convergence within max_iter: the labels of the last centres
        d2 = dist2(centres)
        labels = d2.argmin(axis=2)
    inertia = np.take_along_axis(d2, labels[:, :, None], axis=2)[:, :, 0].sum(axis=1)
    return labels[int(np.argmin(inertia))]


def silhouette(z: np.ndarray, labels: np.ndarray) -> float:
    """Mean silhouette (Rousseeuw 1987) of `labels` on the rows of `z`, Euclidean distances:
    s = (b - a) / max(a, b), a = mean distance to the rest of its own cluster, b = smallest
    mean distance to another cluster; 0 for a point alone in its cluster (scikit-learn's
    convention). Needs at least 2 clusters."""
    z = np.asarray(z, dtype=np.float64)
    labels = np.asarray(labels)
    uniq, lab = np.unique(labels, return_inverse=True)
    if uniq.size < 2:
        raise ValueError("silhouette needs at least 2 clusters")
    sq = np.einsum("ij,ij->i", z, z)
    d = np.sqrt(np.maximum(sq[:, None] + sq[None, :] - 2.0 * z @ z.T, 0.0))
    np.fill_diagonal(d, 0.0)
    onehot = (lab[:, None] == np.arange(uniq.size)[None, :]).astype(np.float64)
    sums = d @ onehot  # [point, cluster] summed distances
    counts = onehot.sum(axis=0)
    own = counts[lab]
    a = sums[np.arange(len(lab)), lab] / np.maximum(own - 1, 1)
    other = sums / counts[None, :]
    other[np.arange(len(lab)), lab] = np.inf
    b = other.min(axis=1)
    denom = np.maximum(a, b)
    s = np.where((own > 1) & (denom > 0), (b - a) / np.where(denom > 0, denom, 1.0), 0.0)
    return float(s.mean())


def cluster_features(features: np.ndarray, n_clusters: int | None = None,
                     seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Cluster heads by behaviour: (labels `[layer * head]` int, projection `[layer * head, 2]`).

    Features per head (`head_features`, each in [0, 1]) are standardised (z-scores, the scale
    floored at 0.05 so a feature that only varies by noise is not inflated); `kmeans` (k-means++,
    10 starts from `seed`) groups them. With `n_clusters=None` k is chosen by the best silhouette
    over 2 .. min(6, n - 1) (n = number of heads; ties go to the smaller k), falling back to
    min(4, n) when that range is empty. k never exceeds the number of distinct feature rows.
    Labels are renumbered by first appearance. The projection is PCA of the standardised
    features onto 2 components (zero-padded when fewer exist). Rows are layer-major.
    """
    z = _standardise(np.asarray(features, dtype=np.float64))
    n = z.shape[0]
    n_distinct = int(np.unique(z, axis=0).shape[0]) if n else 0
    if n_distinct <= 1:
        labels = np.zeros(n, dtype=np.int64)
    else:
        if n_clusters is not None:
            ks = [max(1, min(int(n_clusters), n_distinct))]
        else:
            ks = list(range(2, min(6, n - 1, n_distinct) + 1)) or [min(4, n_distinct)]
        best_labels, best_score = None, -np.inf
        for k in ks:
            labs = kmeans(z, k, n_init=10, seed=seed)
            if len(ks) == 1:
                best_labels = labs
                break
            score = silhouette(z, labs) if len(set(labs.tolist())) > 1 else -1.0
            log.debug("cluster_heads: k=%d silhouette=%.3f", k, score)
            if score > best_score + 1e-12:
                best_labels, best_score = labs, score
        labels = _canonical_labels(best_labels)
    projection = np.zeros((n, 2))
    n_comp = min(2, n, z.shape[1])
    if n >= 2 and n_distinct > 1:
        projection[:, :n_comp] = PCA(n_components=n_comp, random_state=seed).fit_transform(z)
    return labels, projection
