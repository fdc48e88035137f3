"""Dataset-mode accumulation: exact against the single-prompt formulas, invariant to batching,
merging, saving and processes."""

from __future__ import annotations

import json
import math
import os
import socket
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from analysis import accumulate as A
from analysis import dataset_math
from analysis import metrics as M
from analysis.attention import role_scores
from models.errors import UserError
from tests.dist_accumulate_worker import (
    D_MODEL,
    N_LAYERS,
    feed,
    make_accumulator,
    result_dict,
    synthetic_texts,
)

WORKER = Path(__file__).with_name("dist_accumulate_worker.py")
TEXTS = synthetic_texts(50)  # lengths 1..40, +1000 on 3 dimensions


def _close(a, b, rel: float = 1e-12, abs_: float = 1e-14, path: str = "") -> None:
    """Recursive equality of JSON-like values: floats to `rel` or `abs_` (the numbers are of
    size ~1 with rounding ~1e-16; a std of near-equal values, e.g. cosines 0.99999 +- 4e-6,
    keeps that absolute rounding), everything else exactly."""
    if isinstance(a, dict):
        assert a.keys() == b.keys(), path
        for k in a:
            _close(a[k], b[k], rel, abs_, f"{path}.{k}")
    elif isinstance(a, (list, tuple)):
        assert len(a) == len(b), path
        for i, (x, y) in enumerate(zip(a, b, strict=True)):
            _close(x, y, rel, abs_, f"{path}[{i}]")
    elif isinstance(a, float) and isinstance(b, float):
        assert b == pytest.approx(a, rel=rel, abs=abs_), path
    else:
        assert a == b, path


def _run(batch_size: int, ids=None, texts=TEXTS, **kw) -> A.DatasetAccumulator:
    acc = make_accumulator(**kw)
    feed(acc, texts, range(len(texts)) if ids is None else ids, batch_size)
    return acc


def _pooled_attention_entropy(layer: int) -> float:
    """All texts' rows of each head pooled (metrics.attention_entropy_rows), mean over heads."""
    heads = TEXTS[0][1].shape[1]
    return float(np.mean([np.concatenate([M.attention_entropy_rows(a[layer - 1, h], causal=True)
                                          for _, a in TEXTS]).mean() for h in range(heads)]))


@pytest.fixture(scope="module")
def one_pass():
    acc = _run(7)
    return acc, acc.finalize(bootstrap=200, entropy_bootstrap=10)


@pytest.fixture(scope="module")
def want(one_pass):
    """Every number of the 7-per-batch pass."""
    return result_dict(one_pass[0])


@pytest.fixture(scope="module")
def others():
    """The same texts fed 1 and 50 per batch, and as two strided halves merged."""
    return {"1 per batch": _run(1), "50 per batch": _run(50),
            "halves": _run(5, ids=range(0, 50, 2)).merge(_run(3, ids=range(1, 50, 2)))}


# --- exact all-token metrics ------------------------------------------------------------------

def test_all_tokens_equal_single_prompt_formulas_on_concatenated_rows(one_pass):
    _, r = one_pass
    assert r.texts == 50 and r.tokens == sum(h.shape[1] for h, _ in TEXTS)
    h0 = np.concatenate([h[0] for h, _ in TEXTS])
    for layer in range(N_LAYERS + 1):
        cat = np.concatenate([h[layer] for h, _ in TEXTS])  # [all rows, d], no padding
        want = {"effective_rank": M.effective_rank(cat), "participation_ratio": M.participation_ratio(cat),
                "intrinsic_dim_pca95": M.intrinsic_dim_pca95(cat), "anisotropy": M.anisotropy(cat),
                "cosine_to_input": M.cosine_to_input(cat, h0),
                "attention_entropy": None if layer == 0 else _pooled_attention_entropy(layer)}
        got = r.layers[layer].all_tokens
        assert got.keys() == want.keys()
        for k, v in want.items():
            assert (got[k] is None) == (v is None), k
            if v is not None:
                assert got[k] == pytest.approx(v, rel=1e-9), (layer, k)


def test_rank_3_dataset_has_effective_rank_and_pca95_at_most_3():
    rng = np.random.default_rng(3)
    basis = np.linalg.qr(rng.normal(size=(D_MODEL, 3)))[0]  # rows live in a 3-dim subspace
    texts = []
    for h, a in synthetic_texts(20, seed=3, min_len=5):
        h = rng.normal(size=h.shape[:2] + (3,)) * [3.0, 1.0, 0.3] @ basis.T
        h[..., :3] += 1000.0  # an offset: affine, still 3 directions after centring
        texts.append((h, a))
    r = _run(6, texts=texts).finalize(bootstrap=10, entropy_bootstrap=2)
    for s in r.layers:
        assert s.all_tokens["effective_rank"] <= 3.0
        assert s.all_tokens["intrinsic_dim_pca95"] <= 3
        assert s.all_tokens["participation_ratio"] <= 3.0


# --- per text ---------------------------------------------------------------------------------

def test_per_text_values_equal_single_prompt_metrics(one_pass):
    _, r = one_pass
    assert r.text_ids.tolist() == list(range(50))
    singles = {"effective_rank": M.effective_rank, "participation_ratio": M.participation_ratio,
               "intrinsic_dim_pca95": M.intrinsic_dim_pca95, "intrinsic_dim_twonn": M.intrinsic_dim_twonn,
               "activation_entropy": M.activation_entropy, "anisotropy": M.anisotropy}
    for i, (h, att) in enumerate(TEXTS):
        for layer in range(N_LAYERS + 1):
            want = {k: f(h[layer]) for k, f in singles.items()}
            want["cosine_to_input"] = M.cosine_to_input(h[layer], h[0])
            want["attention_entropy"] = (None if layer == 0
                                         else M.layer_attention_entropy(att[layer - 1], causal=True))
            for j, name in enumerate(A.METRICS):
                got = r.text_values[i, layer, j]
                if want[name] is None:
                    assert np.isnan(got), (i, layer, name)
                else:
                    assert got == pytest.approx(want[name], rel=1e-9), (i, layer, name)


def test_per_text_twonn_merges_repeated_rows_and_measures_near_ones_exactly():
    """Repeated tokens give identical rows (layer 0 of models without position embeddings):
    they are one point. Rows 1e-6 apart are distinct points whose distances |a|^2 + |b|^2 - 2 a.b
    gets wrong (here at 1e-4): they are measured again exactly."""
    texts = synthetic_texts(3, seed=5, min_len=30, max_len=30)
    noise = np.random.default_rng(0).normal(size=(N_LAYERS + 1, 3, D_MODEL))
    for h, _ in texts:
        h[:, 10:15] = h[:, 3:4]  # five copies of row 3
        h[:, 20:23] = h[:, 21:22] + 1e-6 * noise  # a tight cluster of 3: mu ~ 1, kept by the fit
    h, _ = texts[1]
    h[:, 12:30] = h[:, 0:1]  # text 1: 12 distinct rows of 30
    r = _run(3, texts=texts).finalize(bootstrap=2, entropy_bootstrap=2)
    j = A.METRICS.index("intrinsic_dim_twonn")
    for i, (h, _) in enumerate(texts):
        for layer in range(N_LAYERS + 1):
            assert r.text_values[i, layer, j] == pytest.approx(M.intrinsic_dim_twonn(h[layer]), rel=1e-9)


def test_per_text_summary_counts_short_texts_as_skipped():
    texts = synthetic_texts(6, seed=1, min_len=12, max_len=20)
    texts[2] = (texts[2][0][:, :2], texts[2][1][:, :, :2, :2])  # a text of 2 tokens
    acc = _run(4, texts=texts)
    acc.add_batch(torch.full((N_LAYERS + 1, 1, 3, D_MODEL), 1e6), np.zeros((1, 3), bool), [6])  # empty
    r = acc.finalize(bootstrap=10, entropy_bootstrap=2)
    assert (r.texts, r.skipped_texts) == (7, 1)
    per = r.layers[1].per_text
    assert (per["intrinsic_dim_twonn"].n, per["intrinsic_dim_twonn"].skipped) == (5, 2)  # < 10 rows
    assert (per["activation_entropy"].n, per["activation_entropy"].skipped) == (5, 2)  # < 3 rows
    assert (per["effective_rank"].n, per["effective_rank"].skipped) == (6, 1)  # 2 rows suffice
    vals = r.text_values[[0, 1, 3, 4, 5], 1, A.METRICS.index("effective_rank")]
    vals = np.append(vals, r.text_values[2, 1, A.METRICS.index("effective_rank")])
    assert per["effective_rank"].mean == pytest.approx(vals.mean(), rel=1e-12)
    assert per["effective_rank"].std == pytest.approx(vals.std(ddof=1), rel=1e-12)
    half = 2.5705818366147395 * vals.std(ddof=1) / math.sqrt(6)  # t(0.975, df=5)
    assert per["effective_rank"].ci_high - per["effective_rank"].mean == pytest.approx(half, rel=1e-9)
    assert r.to_json()["layers"][1]["per_text"]["intrinsic_dim_twonn"]["n"] == 5


def test_text_head_stats_known_patterns_and_padding_ignored():
    t = 5
    uniform = np.tril(np.ones((t, t))) / np.arange(1, t + 1)[:, None]  # causal row i uniform
    previous = np.zeros((t, t))
    previous[0, 0] = 1
    previous[np.arange(1, t), np.arange(t - 1)] = 1
    attn = np.full((2, 2, t + 2, t + 2), np.nan)  # [text, head, q, k]; padding is NaN garbage
    attn[:, :, :t, :t] = np.stack([uniform, previous])
    attn[1, :, :3, 3:] = 0.3  # text 1 has 3 tokens: its keys beyond are garbage too
    s = {k: v.numpy() for k, v in A.text_head_stats(torch.as_tensor(attn), [t, 3], causal=True).items()}
    np.testing.assert_allclose(s["entropy_rows"], [[4, 4], [2, 2]])  # rows i >= 1 inside the text
    np.testing.assert_allclose(s["entropy_sum"], [[4, 0], [2, 0]], atol=1e-12)  # uniform: 1 per row
    np.testing.assert_allclose(s["previous_token_score"], [[np.mean([1 / 2, 1 / 3, 1 / 4, 1 / 5]), 1],
                                                           [np.mean([1 / 2, 1 / 3]), 1]])
    np.testing.assert_allclose(s["first_token_score"], [[np.mean([1 / 2, 1 / 3, 1 / 4, 1 / 5]), 1 / 4],
                                                        [np.mean([1 / 2, 1 / 3]), 1 / 2]])
    one = A.text_head_stats(torch.ones(1, 2, 1, 1), [1], causal=True)
    assert one["entropy_rows"].tolist() == [[0.0, 0.0]] and np.isnan(one["previous_token_score"]).all()
    both = A.text_head_stats(torch.full((1, 1, 4, 4), 0.25), [4], causal=False)  # n_i = 4 for all rows
    assert both["entropy_rows"].item() == 4 and both["entropy_sum"].item() == pytest.approx(4.0)


def test_head_means_across_texts(one_pass):
    _, r = one_pass
    prev = np.array([role_scores(a)["previous_token_score"] for _, a in TEXTS])  # [text, layer, head]
    np.testing.assert_allclose(r.head_mean["previous_token_score"], np.nanmean(prev, 0), rtol=1e-12)
    np.testing.assert_allclose(r.head_std["previous_token_score"], np.nanstd(prev, 0, ddof=1), rtol=1e-10)


# --- token sample, dataset entropy ------------------------------------------------------------

def test_sample_is_the_k_smallest_priorities_for_any_batching_and_split(one_pass, others):
    acc, _ = one_pass
    ids = np.concatenate([np.full(h.shape[1], i) for i, (h, _) in enumerate(TEXTS)])
    pos = np.concatenate([np.arange(h.shape[1]) for h, _ in TEXTS])
    order = np.argsort(A.token_priority(7, ids, pos))[:150]
    want = sorted(zip(ids[order].tolist(), pos[order].tolist(), strict=True))
    for other in (acc, *others.values()):
        keys, values = other.sample.ordered()
        assert [tuple(k) for k in keys.tolist()] == want
        np.testing.assert_array_equal(values, acc.sample.ordered()[1])  # exact copies
    t, p = want[0]
    np.testing.assert_array_equal(acc.sample.ordered()[1][:, 0], TEXTS[t][0][:, p].astype(np.float32))


def test_dataset_entropy_uses_pooled_means_of_capped_texts(one_pass):
    _, r = one_pass
    assert (r.pooled_texts, r.pooled_exact) == (20, False)
    kept = np.sort(np.argsort(A.text_priority(7, np.arange(50)))[:20])
    pooled = np.stack([TEXTS[i][0].mean(1) for i in kept], 1)  # [layer + 1, text, d]
    for layer in range(N_LAYERS + 1):
        assert r.layers[layer].dataset_entropy == pytest.approx(M.activation_entropy(pooled[layer]), rel=1e-9)
    exact = _run(7, pooled_texts=50).finalize(bootstrap=2, entropy_bootstrap=2)
    assert (exact.pooled_texts, exact.pooled_exact) == (50, True)


def test_sample_metrics_equal_formulas_on_the_sample(one_pass):
    acc, r = one_pass
    _, values = acc.sample.ordered()
    for layer in range(N_LAYERS + 1):
        ts = r.layers[layer].token_sample
        twonn = M.intrinsic_dim_twonn(values[layer])
        assert ts["intrinsic_dim_twonn"].value == pytest.approx(twonn, rel=1e-12)
        assert ts["activation_entropy"].value == pytest.approx(M.activation_entropy(values[layer]), rel=1e-9)
        assert ts["intrinsic_dim_twonn"].ci_low < ts["intrinsic_dim_twonn"].ci_high
        assert 0 <= ts["activation_entropy"].ci_low < ts["activation_entropy"].ci_high <= 1


def test_entropy_interval_covers_the_population_value():
    """Resampled rows repeat, which lowers a sample's entropy by about as much as sampling
    lowered it from the population value (more the larger d / K; GPT-2 at K = 5000: 0.15): the
    percentile interval then misses the population value; the bias-corrected normal one covers it."""
    rng = np.random.default_rng(11)
    d, k, runs, boot = 24, 300, 30, 25
    scale = np.exp(-np.arange(d) / 12.0)
    truth = M.activation_entropy(rng.normal(size=(100_000, d)) * scale)
    covered = {"normal": 0, "percentile": 0}
    for _ in range(runs):
        x = torch.as_tensor(rng.normal(size=(k, d)) * scale + 5.0)[None]
        value = A.entropies(x, torch.ones(1, k, dtype=torch.float64))[0].item()
        counts = torch.as_tensor(rng.multinomial(k, np.full(k, 1 / k), size=boot)).double()
        reps = A.entropies(x.expand(boot, k, d), counts).numpy()  # zero weights drop rows
        for kind in covered:
            iv = dataset_math._interval(value, reps, normal=kind == "normal")
            covered[kind] += iv.ci_low <= truth <= iv.ci_high
    assert covered["normal"] / runs >= 0.8
    assert covered["percentile"] / runs <= 0.2


# --- invariance: batching, merging, saving, processes ----------------------------------------

def test_every_number_is_invariant_to_batch_size_and_split(want, others):
    for other in others.values():
        _close(want, result_dict(other))


def test_merge_of_two_halves_equals_one_pass_in_either_order(want):
    a, b = (range(0, 23), range(23, 50))
    _close(want, result_dict(_run(7, ids=a).merge(_run(4, ids=b))))
    _close(want, result_dict(_run(4, ids=b).merge(_run(7, ids=a))))
    with pytest.raises(UserError, match="added twice"):
        _run(7, ids=a).merge(_run(7, ids=range(20, 30)))


def test_save_load_round_trip_and_mismatch(tmp_path, one_pass, want):
    path = tmp_path / "dataset_synthetic.npz"
    one_pass[0].save(path)
    back = A.DatasetAccumulator.load(path, expect_meta=make_accumulator().meta)
    _close(want, result_dict(back), rel=0.0, abs_=0.0)  # bit for bit
    changes = ({"sample_tokens": 100}, {"seed": 8}, {"dataset": "other"}, {"settings": {"max_tokens": 9}})
    for change in changes:
        with pytest.raises(UserError, match="does not match.*--resume"):
            A.DatasetAccumulator.load(path, expect_meta=make_accumulator(**change).meta)
        with pytest.raises(UserError):
            make_accumulator(**change).merge(back)
    (tmp_path / "junk.npz").write_bytes(b"not a zip")
    with pytest.raises(UserError, match="not a dataset accumulator"):
        A.DatasetAccumulator.load(tmp_path / "junk.npz")


def test_json_has_the_design_shape_and_no_nan(one_pass):
    out = one_pass[1].to_json()
    json.dumps(out, allow_nan=False)
    assert list(out) == ["texts", "tokens", "skipped_texts", "sample_tokens", "layers"]
    layer = out["layers"][0]
    assert list(layer) == ["layer", "all_tokens", "token_sample", "per_text", "dataset_entropy"]
    assert list(layer["all_tokens"]) == list(A.ALL_TOKEN_METRICS)
    assert layer["token_sample"]["activation_entropy"].keys() == {"value", "ci_low", "ci_high"}
    assert list(layer["per_text"]) == list(A.METRICS)
    assert list(layer["per_text"]["effective_rank"]) == ["mean", "std", "ci_low", "ci_high", "n"]
    assert layer["all_tokens"]["attention_entropy"] is None  # layer 0 has no attention
    assert layer["per_text"]["attention_entropy"] == {"mean": None, "std": None, "ci_low": None,
                                                      "ci_high": None, "n": 0}


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.slow
def test_two_torchrun_ranks_equal_one_process(tmp_path):
    out = tmp_path / "dist.json"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", "2", "--master-addr",
           "127.0.0.1", "--master-port", str(_free_port()), str(WORKER), "--out", str(out), "--texts", "30"]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=90, env=env)
    assert proc.returncode == 0, proc.stderr[-3000:]
    got = json.loads(out.read_text())
    want = result_dict(_run(4, ids=range(30), texts=synthetic_texts(30)))
    assert got["sample_keys"] == want["sample_keys"]
    _close(json.loads(json.dumps(want)), got)


def test_layers_side_by_side_give_the_same_accumulator(monkeypatch):
    # add_batch runs its layers (and the token sample) on analysis.parallel's pool when torch
    # has more than one thread: every number bit for bit the same as one layer at a time
    from analysis import parallel

    threads = torch.get_num_threads()
    try:
        torch.set_num_threads(1)  # the pool's threads run one torch thread each: the same here
        monkeypatch.setattr(parallel, "torch_layer_workers", lambda n, device=None: 2)
        side = result_dict(_run(7))
        monkeypatch.setattr(parallel, "torch_layer_workers", lambda n, device=None: 1)
        alone = result_dict(_run(7))
    finally:
        torch.set_num_threads(threads)
    assert side == alone
    assert side["json"]["layers"][2]["all_tokens"]["effective_rank"] > 1


def test_torch_layer_pool_runs_one_torch_thread_each_and_leaves_the_callers_count(monkeypatch):
    import threading

    from analysis import parallel

    monkeypatch.setattr(parallel.os, "cpu_count", lambda: 2)  # the CI machine's cores, anywhere
    threads = torch.get_num_threads()
    try:
        torch.set_num_threads(2)
        got = parallel.map_torch_layers(
            lambda i: (i, torch.get_num_threads(), threading.current_thread().name), range(7))
        assert [g[0] for g in got] == list(range(7))  # in order
        assert {g[1] for g in got} == {1}
        assert all(g[2].startswith("layers") for g in got)
        assert torch.get_num_threads() == 2  # the caller keeps its count
        later = []
        t = threading.Thread(target=lambda: later.append(torch.get_num_threads()))
        t.start()
        t.join()
        assert later == [2]  # and so do threads started after the pool
        nested = parallel.map_torch_layers(lambda i: parallel.map_torch_layers(lambda j: i * j, range(3)),
                                           range(4))
        assert nested == [[0, 0, 0], [0, 1, 2], [0, 2, 4], [0, 3, 6]]  # in place inside the pool
        assert parallel.torch_layer_workers(13, "meta") == 1  # not CPU: one at a time
        assert parallel.torch_layer_workers(1) == 1
    finally:
        torch.set_num_threads(threads)


def test_causal_head_stats_read_only_the_keys_up_to_each_row(monkeypatch):
    # row blocks of a causal layer read keys up to the block's last row; the numbers are those
    # of the whole matrix (the keys after a row have weight 0), padding included
    gen = torch.Generator().manual_seed(3)
    t = 100
    scores = torch.randn(3, 2, t, t, generator=gen, dtype=torch.float64)
    attn = torch.softmax(scores.masked_fill(torch.ones(t, t, dtype=torch.bool).triu(1), -math.inf), -1)
    attn[1, :, 70:] = math.nan  # text 1 has 70 tokens: its padding rows are garbage
    assert len(dataset_math._row_blocks(t, t, True)) == 4
    blocks = A.text_head_stats(attn, [t, 70, t], causal=True)
    monkeypatch.setattr(dataset_math, "_row_blocks", lambda q, k, causal: [(0, q, k)])
    whole = A.text_head_stats(attn, [t, 70, t], causal=True)
    for name in whole:
        np.testing.assert_allclose(blocks[name], whole[name], rtol=1e-14, atol=0)
    want = M.head_attention_entropy(attn[0, 0].numpy(), causal=True)
    mean = blocks["entropy_sum"][0, 0].item() / blocks["entropy_rows"][0, 0].item()
    assert mean == pytest.approx(want, rel=1e-12)


def test_add_batch_takes_the_layers_as_a_list():
    hidden, mask = np.random.default_rng(4).normal(size=(N_LAYERS + 1, 2, 5, D_MODEL)), np.ones((2, 5), bool)
    one, two = make_accumulator(), make_accumulator()
    one.add_batch(torch.as_tensor(hidden), mask, [0, 1])
    two.add_batch([torch.as_tensor(h) for h in hidden], mask, [0, 1])
    assert result_dict(one) == result_dict(two)
    with pytest.raises(ValueError, match="hidden must be"):
        two.add_batch([torch.as_tensor(h) for h in hidden[:-1]], mask, [2, 3])
