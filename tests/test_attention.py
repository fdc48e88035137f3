"""Per-head analysis on synthetic attention patterns whose answers are known by hand."""

from __future__ import annotations

import numpy as np
import pytest

from analysis import attention as A


def _causal_uniform(t: int) -> np.ndarray:
    """[t, t]: row i uniform over keys 0..i."""
    return np.tril(np.ones((t, t))) / np.arange(1, t + 1)[:, None]


def _previous_token(t: int) -> np.ndarray:
    """[t, t]: row 0 on itself, row i >= 1 all on key i - 1."""
    a = np.zeros((t, t))
    a[0, 0] = 1
    a[np.arange(1, t), np.arange(t - 1)] = 1
    return a


def _first_token(t: int) -> np.ndarray:
    """[t, t]: every row on key 0."""
    a = np.zeros((t, t))
    a[:, 0] = 1
    return a


def test_head_entropies_shape_and_values():
    t = 7
    att = np.stack([np.stack([_causal_uniform(t), _first_token(t)]),
                    np.stack([_previous_token(t), _causal_uniform(t)])])  # [2, 2, t, t]
    ent = A.head_entropies(att, causal=True)
    assert ent.shape == (2, 2)
    np.testing.assert_allclose(ent, [[1.0, 0.0], [0.0, 1.0]], atol=1e-12)


def test_role_scores_previous_token_pattern():
    t = 8
    roles = A.role_scores(_previous_token(t)[None, None])
    assert roles["previous_token_score"][0, 0] == pytest.approx(1.0)
    # only row 1 (whose previous token IS the first token) puts weight on key 0
    assert roles["first_token_score"][0, 0] == pytest.approx(1 / (t - 1))
    # only row 0 attends to itself
    assert roles["self_score"][0, 0] == pytest.approx(1 / t)
    assert A.previous_token_score(_previous_token(t)) == pytest.approx(1.0)


def test_role_scores_first_token_and_self_patterns():
    t = 6
    assert A.first_token_score(_first_token(t)) == pytest.approx(1.0)
    assert A.previous_token_score(_first_token(t)) == pytest.approx(1 / (t - 1))  # row 1 again
    assert A.self_score(_first_token(t)) == pytest.approx(1 / t)  # row 0
    assert A.self_score(np.eye(t)) == pytest.approx(1.0)
    assert A.previous_token_score(np.eye(t)) == pytest.approx(0.0)
    assert A.first_token_score(np.eye(t)) == pytest.approx(0.0)


def test_role_scores_shapes_layer_major():
    att = np.zeros((3, 4, 5, 5))
    att[...] = np.eye(5)
    att[2, 1] = _previous_token(5)
    roles = A.role_scores(att)
    assert set(roles) == set(A.ROLE_NAMES)
    assert roles["previous_token_score"].shape == (3, 4)
    assert roles["previous_token_score"][2, 1] == pytest.approx(1.0)
    assert roles["previous_token_score"].sum() == pytest.approx(1.0)


def test_mean_attention_distance():
    t = 5
    # previous token: rows 1..4 at distance 1, row 0 at 0 -> (4 / 5) / 5
    d = A.mean_attention_distance(_previous_token(t)[None, None])
    assert d[0, 0] == pytest.approx(4 / 5 / 5)
    assert A.mean_attention_distance(np.eye(t)[None, None])[0, 0] == 0.0


def test_repeated_sequence_layout():
    pool = list(range(100, 200))
    seq = A.repeated_sequence(pool, period=10, seed=3, prefix=[1])
    assert len(seq) == 21
    assert seq[0] == 1
    assert seq[1:11] == seq[11:21]
    assert len(set(seq[1:11])) == 10  # drawn without replacement from a large pool
    assert all(t in pool for t in seq[1:])
    assert seq == A.repeated_sequence(pool, period=10, seed=3, prefix=[1])  # deterministic
    assert seq != A.repeated_sequence(pool, period=10, seed=4, prefix=[1])
    short = A.repeated_sequence([5, 6], period=4, seed=0, prefix=[])
    assert len(short) == 8 and short[:4] == short[4:]


def _perfect_induction(period: int, prefix: int) -> np.ndarray:
    """Causal [t, t]: second-copy query i attends to key i - period + 1; others to key 0."""
    t = prefix + 2 * period
    a = np.zeros((t, t))
    a[:, 0] = 1
    for i in range(prefix + period, t):
        a[i] = 0
        a[i, i - period + 1] = 1
    return a


def test_induction_score_perfect_and_uniform():
    period = 10
    att = np.stack([np.stack([_perfect_induction(period, 1), _causal_uniform(1 + 2 * period)])])
    score = A.induction_score(att, period)
    assert score.shape == (1, 2)
    assert score[0, 0] == pytest.approx(1.0)
    # uniform causal: mean of 1 / (i + 1) over i = 11..20 -> about 0.06
    expect = np.mean(1 / (np.arange(11, 21) + 1))
    assert score[0, 1] == pytest.approx(expect)
    assert score[0, 1] < 0.1
    # a previous-token head is not an induction head
    assert A.induction_score(_previous_token(21)[None, None], period)[0, 0] == 0.0


def test_induction_score_offset_with_trailing_token():
    period = 6
    a = np.zeros((2 + 2 * period + 1,) * 2)  # [CLS] x2 prefix, two copies, then [SEP]
    a[:, 0] = 1
    for i in range(2 + period, 2 + 2 * period):
        a[i] = 0
        a[i, i - period + 1] = 1
    assert A.induction_score(a[None, None], period, offset=2)[0, 0] == pytest.approx(1.0)
    with pytest.raises(ValueError):
        A.induction_score(a[None, None], period=20)


def _prev_and_first_heads(n_layers: int = 3, n_heads: int = 4, t: int = 12) -> np.ndarray:
    """Even heads previous-token, odd heads first-token, with a little noise."""
    rng = np.random.default_rng(0)
    att = np.zeros((n_layers, n_heads, t, t))
    for layer in range(n_layers):
        for head in range(n_heads):
            base = _previous_token(t) if head % 2 == 0 else _first_token(t)
            noisy = base + 0.02 * rng.uniform(size=(t, t)) * np.tril(np.ones((t, t)))
            att[layer, head] = noisy / noisy.sum(axis=1, keepdims=True)
    return att


def test_cluster_heads_separates_previous_from_first():
    att = _prev_and_first_heads()
    labels, proj = A.cluster_heads(att, causal=True, seed=0)
    assert labels.shape == (12,) and proj.shape == (12, 2)
    prev, first = set(labels[0::2].tolist()), set(labels[1::2].tolist())
    assert not prev & first  # no cluster mixes the two kinds
    assert len(prev) == 1 and len(first) == 1  # silhouette picks k = 2
    assert labels[0] == 0  # renumbered by first appearance
    # previous-token and first-token heads land apart in the projection
    assert np.linalg.norm(proj[0] - proj[1]) > np.linalg.norm(proj[0] - proj[2])


def test_cluster_heads_fixed_k_and_deterministic():
    att = _prev_and_first_heads()
    l1, p1 = A.cluster_heads(att, causal=True, n_clusters=2, seed=5)
    l2, p2 = A.cluster_heads(att, causal=True, n_clusters=2, seed=5)
    np.testing.assert_array_equal(l1, l2)
    np.testing.assert_allclose(p1, p2)
    assert set(l1.tolist()) == {0, 1}
    assert l1[0] != l1[1]


def test_cluster_heads_degenerate():
    same = np.broadcast_to(_causal_uniform(5), (2, 3, 5, 5))
    labels, proj = A.cluster_heads(same, causal=True)
    np.testing.assert_array_equal(labels, 0)
    np.testing.assert_array_equal(proj, 0.0)
    one = A.cluster_heads(_previous_token(4)[None, None], causal=True)
    assert one[0].shape == (1,) and one[1].shape == (1, 2)


def test_cluster_heads_three_kinds():
    t = 10
    kinds = [_previous_token(t), _first_token(t), np.eye(t)]
    att = np.stack([np.stack(kinds), np.stack(kinds[::-1])])  # [2, 3, t, t]
    labels, _ = A.cluster_heads(att, causal=True)
    kind_of = [0, 1, 2, 2, 1, 0]
    groups = {k: {int(lab) for lab, kk in zip(labels, kind_of, strict=True) if kk == k}
              for k in range(3)}
    assert all(len(g) == 1 for g in groups.values())
    assert len(set().union(*groups.values())) == 3


def test_layer_head_stats_in_torch_equal_the_numpy_formulas():
    """The capture's torch statistics (causal: row blocks reading only keys up to the block)
    against the numpy float64 paths: causal and not, uniform rows (entropy 1), one-hot rows
    (0), and a single token (NaN entropy: no row kept)."""
    import torch

    from analysis.attention import head_entropies, layer_head_stats, mean_attention_distance

    rng = np.random.default_rng(0)
    for causal in (True, False):
        for t in (1, 2, 37, 130):
            x = rng.standard_normal((4, t, t)) * 3
            if causal:
                x = np.where(np.tril(np.ones((t, t), bool)), x, -np.inf)
            a = np.exp(x - x.max(-1, keepdims=True))
            a = (a / a.sum(-1, keepdims=True)).astype(np.float32)
            ent, dist = layer_head_stats(torch.from_numpy(a), causal)
            assert np.allclose(ent, head_entropies(a[None], causal)[0], rtol=1e-12, atol=0,
                               equal_nan=True)
            assert np.allclose(dist, mean_attention_distance(a[None])[0], rtol=1e-12, atol=0)
    uniform = np.tril(np.ones((6, 6))) / np.arange(1, 7)[:, None]
    onehot = np.eye(6)
    both = torch.tensor(np.stack([uniform, onehot]), dtype=torch.float32)
    ent, dist = layer_head_stats(both, True)
    assert np.allclose(ent, [1.0, 0.0], atol=1e-6) and dist[1] == 0.0
    assert np.isnan(layer_head_stats(torch.ones(2, 1, 1), True)[0]).all()


def test_kmeans_recovers_planted_blobs_and_is_deterministic():
    rng = np.random.default_rng(3)
    truth = np.repeat(np.arange(3), 40)
    z = rng.normal(scale=0.3, size=(120, 4)) + np.array([[0, 0, 0, 0], [4, 0, 0, 0], [0, 4, 0, 0]])[truth]
    labels = A.kmeans(z, 3, seed=7)
    # the same partition as the planted one (up to renaming)
    pairs = {(int(a), int(b)) for a, b in zip(labels, truth, strict=True)}
    assert len(pairs) == 3 and len({a for a, _ in pairs}) == 3
    np.testing.assert_array_equal(labels, A.kmeans(z, 3, seed=7))


def test_kmeans_inertia_matches_scikit_learn_on_random_points():
    """10 k-means++ starts reach about the same optimum as scikit-learn's KMeans(n_init=10)."""
    from sklearn.cluster import KMeans

    def inertia(z, labels):
        return sum(float(((z[labels == c] - z[labels == c].mean(0)) ** 2).sum()) for c in set(labels))

    rng = np.random.default_rng(0)
    for _ in range(3):
        z = rng.normal(size=(144, 5))
        for k in (2, 4, 6):
            ours = inertia(z, A.kmeans(z, k, seed=0))
            theirs = inertia(z, KMeans(n_clusters=k, n_init=10, random_state=0).fit_predict(z))
            assert ours <= theirs * 1.03, (k, ours, theirs)


def test_kmeans_as_many_clusters_as_points():
    z = np.array([[0.0, 0.0], [1.0, 0.0], [0.0, 1.0], [5.0, 5.0]])
    assert sorted(A.kmeans(z, 4, seed=0).tolist()) == [0, 1, 2, 3]  # no cluster left empty


def test_silhouette_matches_scikit_learn_and_a_hand_value():
    from sklearn.metrics import silhouette_score

    rng = np.random.default_rng(1)
    z = rng.normal(size=(50, 3))
    labels = rng.integers(0, 4, size=50)
    labels[0] = 9  # a singleton cluster counts 0
    assert A.silhouette(z, labels) == pytest.approx(silhouette_score(z, labels), rel=1e-12)
    # 1-D points 0, 1 | 11, 12: a = 1 for every point, b = mean distance to the other pair
    z = np.array([[0.0], [1.0], [11.0], [12.0]])
    b = [np.mean([11, 12]), np.mean([10, 11]), np.mean([10, 11]), np.mean([11, 12])]
    s = [(bi - 1) / bi for bi in b]
    assert A.silhouette(z, [0, 0, 1, 1]) == pytest.approx(np.mean(s), rel=1e-12)
