"""Layer metrics on inputs whose answers are known by hand."""

from __future__ import annotations

import math

import numpy as np
import pytest

from analysis import metrics as M
from analysis import parallel


def _rng(seed: int = 0) -> np.random.Generator:
    return np.random.default_rng(seed)


def _orthonormal(n: int, k: int, seed: int) -> np.ndarray:
    """[n, k] with orthonormal columns."""
    q, _ = np.linalg.qr(_rng(seed).normal(size=(n, k)))
    return q


def _equal_singular_values(t: int, d: int, k: int, seed: int = 0) -> np.ndarray:
    """Centred [t, d] matrix whose k nonzero singular values are all 3.0."""
    u, _ = np.linalg.qr(np.concatenate([np.ones((t, 1)), _rng(seed).normal(size=(t, k))], 1))
    u = u[:, 1:k + 1]  # orthonormal and orthogonal to the ones vector -> already centred
    v = _orthonormal(d, k, seed + 1)
    return 3.0 * u @ v.T


# --- effective rank, participation ratio, PCA95 -------------------------------------------

@pytest.mark.parametrize("k", [1, 3, 5])
def test_rank_k_matrix_bounds(k):
    h = _rng(k).normal(size=(40, k)) @ _rng(k + 10).normal(size=(k, 30))
    assert M.effective_rank(h) <= k + 1e-9
    assert 1 <= M.intrinsic_dim_pca95(h) <= k
    assert M.participation_ratio(h) <= k + 1e-9


@pytest.mark.parametrize("k", [2, 4, 7])
def test_equal_singular_values_give_exactly_k(k):
    h = _equal_singular_values(30, 20, k)
    assert M.effective_rank(h) == pytest.approx(k, abs=1e-9)
    assert M.participation_ratio(h) == pytest.approx(k, abs=1e-9)
    # k equal eigenvalues: k - 1 of them explain (k - 1) / k < 95%, so all k are needed
    assert M.intrinsic_dim_pca95(h) == k


def test_mean_offset_does_not_change_spectrum():
    h = _equal_singular_values(30, 20, 4) + 100.0  # constant row added, removed by centring
    assert M.effective_rank(h) == pytest.approx(4, abs=1e-6)


def test_isotropic_gaussian_close_to_d():
    h = _rng(1).normal(size=(2000, 10))
    assert M.participation_ratio(h) == pytest.approx(10, rel=0.10)
    assert M.effective_rank(h) == pytest.approx(10, rel=0.05)
    assert M.intrinsic_dim_pca95(h) in (9, 10)


def test_pca95_counts_dominant_directions():
    # eigenvalues proportional to 90, 6, 3, 1 (by column scaling of orthogonal columns)
    u = _equal_singular_values(50, 4, 4) / 3.0
    h = u * np.sqrt([90.0, 6.0, 3.0, 1.0])
    # 90 < 95, 96 >= 95
    assert M.intrinsic_dim_pca95(h @ _orthonormal(12, 4, 3).T) == 2


def test_degenerate_inputs_are_none():
    one = np.ones((1, 5))
    const = np.tile(np.arange(5.0), (7, 1))
    for f in (M.effective_rank, M.participation_ratio, M.intrinsic_dim_pca95,
              M.activation_entropy, M.anisotropy):
        assert f(one) is None
    for f in (M.effective_rank, M.participation_ratio, M.intrinsic_dim_pca95,
              M.activation_entropy):
        assert f(const) is None
    with pytest.raises(ValueError):
        M.effective_rank(np.ones(5))


# --- TwoNN --------------------------------------------------------------------------------

def test_twonn_plane_in_100d():
    plane = _rng(2).uniform(size=(1000, 2))
    h = plane @ _orthonormal(100, 2, 3).T  # random rotation into 100 dimensions
    assert 1.6 <= M.intrinsic_dim_twonn(h) <= 2.4


def test_twonn_5d_gaussian():
    h = _rng(4).normal(size=(1500, 5))
    assert 4.0 <= M.intrinsic_dim_twonn(h) <= 6.0


def test_twonn_needs_ten_distinct_rows():
    base = _rng(5).normal(size=(9, 6))
    assert M.intrinsic_dim_twonn(base) is None
    assert M.intrinsic_dim_twonn(np.concatenate([base, base, base])) is None  # 27 rows, 9 distinct
    with_dups = np.concatenate([_rng(6).normal(size=(40, 3))] * 2)  # duplicates are merged
    assert M.intrinsic_dim_twonn(with_dups) is not None


def test_twonn_small_chunks_match(monkeypatch):
    h = _rng(7).normal(size=(300, 4))
    full = M.intrinsic_dim_twonn(h)
    monkeypatch.setattr(M, "_TWONN_CHUNK_BYTES", 8 * 300 * 7)  # 7 rows per chunk
    assert M.intrinsic_dim_twonn(h) == pytest.approx(full, rel=1e-12)


def test_two_nearest_matches_brute_force():
    x = _rng(8).normal(size=(60, 5)) + 1e3  # far from the origin: screening must re-measure
    d = np.linalg.norm(x[:, None] - x[None], axis=-1)
    np.fill_diagonal(d, np.inf)
    brute = np.sort(d, axis=1)[:, :2]
    np.testing.assert_allclose(M._two_nearest(x), brute, rtol=1e-9)


def test_two_nearest_in_small_blocks_matches_brute_force(monkeypatch):
    # candidate pairs re-measured 7 at a time (the last block short), chunks of 13 rows
    x = _rng(9).normal(size=(60, 5)) + 1e3
    d = np.linalg.norm(x[:, None] - x[None], axis=-1)
    np.fill_diagonal(d, np.inf)
    brute = np.sort(d, axis=1)[:, :2]
    monkeypatch.setattr(M, "_TWONN_BLOCK_BYTES", 8 * 5 * 7)
    monkeypatch.setattr(M, "_TWONN_CHUNK_BYTES", 8 * 60 * 13)
    np.testing.assert_allclose(M._two_nearest(x), brute, rtol=1e-9)


def test_two_nearest_with_many_equidistant_neighbours():
    # a grid far from the origin: most points have 4-6 neighbours at exactly the same distance,
    # which the screening cannot order; each one is re-measured and the two nearest are 1, 1
    g = np.stack(np.meshgrid(*[np.arange(6.0)] * 3, indexing="ij"), -1).reshape(-1, 3) + 1e4
    d = np.linalg.norm(g[:, None] - g[None], axis=-1)
    np.fill_diagonal(d, np.inf)
    brute = np.sort(d, axis=1)[:, :2]
    np.testing.assert_array_equal(brute, 1.0)
    np.testing.assert_allclose(M._two_nearest(g), brute, rtol=1e-12)


# --- activation entropy ---------------------------------------------------------------------

def test_activation_entropy_orthogonal_equal_norm_is_one():
    # +e_i and -e_i: mean zero, so the centred rows are orthogonal up to sign, all norm 2.
    d = 6
    h = 2.0 * np.concatenate([np.eye(d), -np.eye(d)])
    assert M.activation_entropy(h) == pytest.approx(1.0, abs=1e-12)


def test_activation_entropy_line_is_zero():
    t = np.linspace(-1, 2, 15)[:, None]
    h = np.array([1.0, 2.0, 0.5]) + t * np.array([0.3, -1.0, 2.0])
    assert M.activation_entropy(h) == pytest.approx(0.0, abs=1e-9)


def test_activation_entropy_in_unit_interval():
    h = _rng(9).normal(size=(50, 8))
    assert 0.0 < M.activation_entropy(h) <= 1.0


def test_activation_entropy_wide_and_tall_agree_with_gram():
    for shape in [(40, 8), (8, 40)]:
        h = _rng(10).normal(size=shape)
        hc = h - h.mean(0)
        z = hc / np.linalg.norm(hc, axis=1, keepdims=True)
        lam = np.clip(np.linalg.eigvalsh(z @ z.T), 0, None)
        lam = lam / lam.sum()
        lam = lam[lam > 0]
        expect = -np.sum(lam * np.log(lam)) / math.log(min(shape[0] - 1, shape[1]))
        assert M.activation_entropy(h) == pytest.approx(expect, abs=1e-9)


@pytest.mark.parametrize("t", [3, 8, 24])
def test_activation_entropy_regular_simplex_reaches_one(t):
    # T one-hot rows (d = T): centred, they span T - 1 directions with equal weight (a regular
    # simplex), the largest entropy T points can have, so the normalised value is exactly 1
    # whatever T is (log(min(T - 1, d)) normaliser; log(min(T, d)) capped 8 tokens at 0.936).
    assert M.activation_entropy(np.eye(t)) == pytest.approx(1.0, abs=1e-12)
    # and d > T changes nothing: the rank is still T - 1
    wide = np.concatenate([np.eye(t), np.zeros((t, 5))], axis=1)
    assert M.activation_entropy(wide) == pytest.approx(1.0, abs=1e-12)


def test_activation_entropy_needs_three_tokens():
    # two centred rows are +v and -v: one direction, log(min(1, d)) = 0: undefined
    assert M.activation_entropy(np.array([[1.0, 2.0], [3.0, 5.0]])) is None


# --- cosine to input, anisotropy --------------------------------------------------------------

def test_cosine_to_input_self_is_one():
    h = _rng(11).normal(size=(12, 7))
    assert M.cosine_to_input(h, h) == pytest.approx(1.0)
    assert M.cosine_to_input(-h, h) == pytest.approx(-1.0)


def test_anisotropy_same_direction_is_one():
    v = np.array([1.0, -2.0, 3.0])
    h = np.outer([1.0, 2.0, 0.5, 7.0], v)
    assert M.anisotropy(h) == pytest.approx(1.0)


def test_anisotropy_opposite_pairs_negative():
    v = np.array([1.0, 2.0, 2.0])
    assert M.anisotropy(np.stack([v, -v])) == pytest.approx(-1.0)
    # v, -v, w, -w with v orthogonal to w: pairs cos -1, -1 and four zeros -> -2*2/12
    h = np.array([[1.0, 0], [-1, 0], [0, 1], [0, -1]])
    assert M.anisotropy(h) == pytest.approx(-4 / 12)


def test_anisotropy_matches_pairwise_loop():
    h = _rng(12).normal(size=(9, 4)) + 0.5
    u = h / np.linalg.norm(h, axis=1, keepdims=True)
    c = u @ u.T
    expect = (c.sum() - np.trace(c)) / (9 * 8)
    assert M.anisotropy(h) == pytest.approx(expect)


# --- attention entropy ------------------------------------------------------------------------

def test_uniform_row_entropy_one_and_one_hot_zero():
    t = 5
    assert np.allclose(M.attention_entropy_rows(np.full((t, t), 1 / t), causal=False), 1.0)
    assert np.allclose(M.attention_entropy_rows(np.eye(t), causal=False), 0.0)
    assert M.head_attention_entropy(np.eye(t), causal=False) == pytest.approx(0.0)


def test_causal_uniform_rows_and_row_zero_skipped():
    t = 6
    att = np.tril(np.ones((t, t))) / np.arange(1, t + 1)[:, None]
    rows = M.attention_entropy_rows(att, causal=True)
    assert rows.shape == (t - 1,)
    assert np.allclose(rows, 1.0)
    # row i attends only to key 0: entropy 0 on every kept row
    first = np.zeros((t, t))
    first[:, 0] = 1
    assert np.allclose(M.attention_entropy_rows(first, causal=True), 0.0)


def test_half_split_row_value():
    # row 3 of a causal head split evenly over 2 of its 4 keys: log 2 / log 4 = 0.5
    att = np.zeros((4, 4))
    att[0, 0] = 1
    att[1, :2] = 0.5
    att[2, :3] = 1 / 3
    att[3, [0, 3]] = 0.5
    rows = M.attention_entropy_rows(att, causal=True)
    np.testing.assert_allclose(rows, [1.0, 1.0, 0.5])
    assert M.head_attention_entropy(att, causal=True) == pytest.approx(2.5 / 3)


def test_layer_entropy_is_mean_over_heads():
    t = 4
    att = np.stack([np.full((t, t), 1 / t), np.eye(t)])
    assert M.layer_attention_entropy(att, causal=False) == pytest.approx(0.5)
    assert M.layer_attention_entropy(np.ones((2, 1, 1)), causal=True) is None


# --- layer_metrics ------------------------------------------------------------------------------

def _causal_uniform(layers: int, heads: int, t: int) -> np.ndarray:
    row = np.tril(np.ones((t, t))) / np.arange(1, t + 1)[:, None]
    return np.broadcast_to(row, (layers, heads, t, t)).copy()


KEYS = ["layer", "effective_rank", "participation_ratio", "intrinsic_dim_pca95",
        "intrinsic_dim_twonn", "activation_entropy", "cosine_to_input", "anisotropy",
        "attention_entropy", "intrinsic_dim_twonn_ci_low", "intrinsic_dim_twonn_ci_high"]


def test_layer_metrics_rows():
    n_layers, t, d = 3, 24, 16
    hidden = _rng(13).normal(size=(n_layers + 1, t, d)).astype(np.float32)
    out = M.layer_metrics(hidden, _causal_uniform(n_layers, 2, t), causal=True)
    assert list(out) == KEYS[1:]
    for name, values in out.items():
        assert values.shape == (n_layers + 1,) and values.dtype == np.float64, name
        finite = np.isfinite(values)
        assert finite[1:].all(), name  # every metric is defined on blocks 1..L here
        assert finite[0] == (name != "attention_entropy"), name  # no attention on layer 0
    assert out["cosine_to_input"][0] == pytest.approx(1.0)
    assert out["intrinsic_dim_pca95"][2] == int(out["intrinsic_dim_pca95"][2])
    assert np.allclose(out["attention_entropy"][1:], 1.0)  # uniform causal attention
    # same numbers as the single functions
    h2 = hidden[2].astype(np.float64)
    assert out["effective_rank"][2] == pytest.approx(M.effective_rank(h2))
    assert out["participation_ratio"][2] == pytest.approx(M.participation_ratio(h2))
    assert out["intrinsic_dim_pca95"][2] == M.intrinsic_dim_pca95(h2)


# --- TwoNN uncertainty -------------------------------------------------------------------------

def test_twonn_interval_covers_the_true_dimension_and_narrows_with_points():
    """Points filling a 3-D cube embedded in 12 dimensions: TwoNN's bootstrap interval contains
    3 and the estimate; with 24 points it is several units wide (prompt-length TwoNN is noise),
    with 2000 points it is tight."""
    embed = _orthonormal(12, 3, 5).T  # [3, 12]
    widths = []
    for n in (24, 2000):
        h = _rng(n).uniform(size=(n, 3)) @ embed
        ratios = M.twonn_ratios(h)
        est = M.twonn_fit(*ratios)
        lo, hi = M.twonn_interval(*ratios)
        assert lo <= est <= hi
        assert lo <= 3.0 <= hi
        widths.append(hi - lo)
    assert widths[0] > 1.0 and widths[1] < 0.5 and widths[0] > 3 * widths[1]


def test_layer_metrics_report_the_twonn_interval():
    hidden = _rng(21).normal(size=(2, 30, 6))
    out = M.layer_metrics(hidden, _causal_uniform(1, 2, 30), causal=True)
    assert np.all(out["intrinsic_dim_twonn_ci_low"] <= out["intrinsic_dim_twonn"])
    assert np.all(out["intrinsic_dim_twonn"] <= out["intrinsic_dim_twonn_ci_high"])
    assert M.TWONN_RELIABLE_TOKENS >= 100


@pytest.mark.parametrize("shape", [(40, 64), (64, 40), (12, 12), (3, 8)])
def test_one_gram_per_layer_gives_the_separate_functions_numbers(shape):
    """layer_metrics shares one centred Gram matrix between the spectrum, the activation
    entropy and the TwoNN screening when T <= d: the numbers equal the single functions'."""
    rng = _rng(sum(shape))
    hidden = rng.normal(size=(2, *shape)) @ np.diag(rng.uniform(0.1, 3.0, shape[1]))
    hidden[1, :2] = hidden[1, 2]  # duplicate rows: TwoNN merges them
    out = M.layer_metrics(hidden, None, causal=True, attention_entropy=[0.5])
    for layer in range(2):
        h = hidden[layer]
        for name, fn in (("effective_rank", M.effective_rank),
                         ("participation_ratio", M.participation_ratio),
                         ("intrinsic_dim_pca95", M.intrinsic_dim_pca95),
                         ("intrinsic_dim_twonn", M.intrinsic_dim_twonn),
                         ("activation_entropy", M.activation_entropy)):
            expect = fn(h)
            got = out[name][layer]
            if expect is None:
                assert np.isnan(got), (name, layer)
            else:
                assert got == pytest.approx(expect, rel=1e-10, abs=1e-12), (name, layer)


def test_layers_side_by_side_give_the_same_numbers(monkeypatch):
    # map_layers on a pool of threads (numpy's BLAS on one thread, as set_threads leaves it)
    # and one layer at a time: every metric of every layer bit for bit the same
    from threadpoolctl import threadpool_limits

    hidden = np.cumsum(_rng(21).normal(size=(7, 40, 16)), axis=0)
    with threadpool_limits(1, user_api="blas"):
        monkeypatch.setattr(parallel, "layer_workers", lambda n: 2)
        pooled = M.layer_metrics(hidden, attention_entropy=[0.5] * 6)
        monkeypatch.setattr(parallel, "layer_workers", lambda n: 1)
        alone = M.layer_metrics(hidden, attention_entropy=[0.5] * 6)
    assert set(pooled) == set(alone)
    for name in alone:
        np.testing.assert_array_equal(pooled[name], alone[name])
    assert np.isfinite(alone["intrinsic_dim_twonn"]).all()


def test_layer_workers_stay_at_one_on_a_multithreaded_blas(monkeypatch):
    import threadpoolctl

    monkeypatch.setattr(parallel.os, "cpu_count", lambda: 4)
    blas = {"user_api": "blas", "internal_api": "openblas", "num_threads": 2}
    monkeypatch.setattr(threadpoolctl, "threadpool_info", lambda: [blas])
    assert parallel.layer_workers(13) == 1  # two BLAS teams of every core would fight
    blas["num_threads"] = 1
    assert parallel.layer_workers(13) == 4
    assert parallel.layer_workers(3) == 3
    assert parallel.layer_workers(1) == 1
