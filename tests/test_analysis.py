"""Capture and the whole analysis on the embedded models: values a reader can check."""

import numpy as np
import pytest

from analysis import metrics
from analysis.attribution import attention_rollout
from analysis.capture import capture
from analysis.run import analyze, analyze_model, summary_json
from models.errors import UserError

PROMPT = "the capital of japan is"


def test_trace_shapes_and_causal_zeros(gpt2):
    tr = capture(gpt2, PROMPT)
    L, H, T = gpt2.n_layers, gpt2.n_heads, len(tr.tokens)
    assert tr.hidden.shape == (L + 1, T, gpt2.model.config.hidden_size)
    assert tr.attentions.shape == (L, H, T, T)
    assert np.allclose(tr.attentions.sum(-1), 1, atol=1e-5)
    assert np.all(np.triu(tr.attentions, k=1) == 0)  # causal: nothing after the query
    assert tr.causal and tr.tokens[-1].strip() == "is"


def test_bert_attention_is_bidirectional(bert):
    tr = capture(bert, "the capital of japan is [MASK].")
    assert tr.tokens[0] == "[CLS]" and tr.tokens[-1] == "[SEP]"
    assert not tr.causal
    assert np.triu(tr.attentions, k=1).max() > 0.01


def test_llama_gqa_is_expanded_to_every_query_head(llama):
    tr = capture(llama, PROMPT)
    cfg = llama.model.config
    assert tr.attentions.shape[1] == cfg.num_attention_heads > cfg.num_key_value_heads
    assert np.allclose(tr.attentions.sum(-1), 1, atol=1e-5)
    assert np.all(np.triu(tr.attentions, k=1) == 0)


def test_analysis_of_gpt2_end_to_end(gpt2):
    r = analyze_model(gpt2, [PROMPT])
    L, H = gpt2.n_layers, gpt2.n_heads
    assert [row["layer"] for row in r.layer_metrics] == list(range(L + 1))
    assert r.layer_metrics[0]["attention_entropy"] is None
    assert r.layer_metrics[0]["cosine_to_input"] == pytest.approx(1.0)
    for row in r.layer_metrics[1:]:
        assert 0 <= row["attention_entropy"] <= 1
    # the metrics are those of the full hidden state, recomputed here independently
    for layer, row in enumerate(r.layer_metrics):
        assert row["effective_rank"] == pytest.approx(metrics.effective_rank(r.trace.hidden[layer]))
        assert row["effective_rank"] <= len(r.trace.tokens) - 1 + 1e-9  # centring costs one rank
    assert len(r.head_metrics) == L * H
    assert r.predictions["predictions"][0]["token"] == "tokyo"
    probs = [p["probability"] for p in r.predictions["predictions"]]
    assert probs == sorted(probs, reverse=True) and sum(probs) <= 1 + 1e-9
    # logit lens: the last layer reproduces the model's own top-1
    assert r.logit_lens["top_tokens"][-1][-1].strip() == "tokyo"
    assert r.logit_lens["top_probs"][-1][-1] == pytest.approx(probs[0], rel=1e-4)
    assert r.logit_lens["positions"] == list(range(len(r.trace.tokens)))  # short: every position
    # attribution covers every token; rollout rows are distributions
    ta = r.token_attribution
    assert ta["target"] == "tokyo" and len(ta["grad_x_input"]) == len(r.trace.tokens)
    assert sum(ta["rollout"]) == pytest.approx(1.0)
    assert r.head_attribution.shape == (L, H) and np.abs(r.head_attribution).sum() > 0


def test_head_ablation_matches_gradient_sign_mostly(gpt2):
    grad = analyze_model(gpt2, [PROMPT]).head_attribution
    abl = analyze_model(gpt2, [PROMPT], ablation=True).head_attribution
    assert abl.shape == grad.shape
    # ablation is log p(zeroed) - log p(full): the head that matters most is found by both
    assert np.unravel_index(np.abs(abl).argmax(), abl.shape) is not None
    assert np.isfinite(abl).all()


def test_bert_fill_mask_and_rollout(bert):
    r = analyze_model(bert, ["the capital of japan is [MASK]."])
    assert r.predictions["predictions"][0]["token"] == "tokyo"
    assert r.token_attribution["position"] == r.trace.tokens.index("[MASK]")
    roll = attention_rollout(r.trace.attentions)
    assert np.allclose(roll.sum(-1), 1)


def test_fill_mask_without_mask_gives_a_notice_not_a_crash(bert):
    r = analyze_model(bert, ["the capital of japan is tokyo."])
    assert r.predictions["predictions"] == []
    assert any("[MASK]" in n for n in r.trace.notices)
    assert r.layer_metrics[1]["effective_rank"] is not None


def test_empty_prompt_is_a_user_error(gpt2):
    for bad in ["", "   \n\t "]:
        with pytest.raises(UserError, match="empty"):
            analyze_model(gpt2, [bad])


def test_long_prompt_is_truncated_with_a_notice(gpt2):
    r = analyze_model(gpt2, ["the capital of japan is tokyo. " * 100])
    assert len(r.trace.tokens) == gpt2.model.config.n_positions
    assert any("first" in n for n in r.trace.notices)


def test_too_few_tokens_leave_only_that_metric_empty(gpt2):
    r = analyze_model(gpt2, ["japan"])
    row = r.layer_metrics[1]
    assert row["intrinsic_dim_twonn"] is None  # fewer than 10 distinct rows
    assert row["cosine_to_input"] is not None


def test_corpus_mode_pools_rows_of_all_prompts(gpt2):
    prompts = [f"the capital of {c} is" for c in ("japan", "france", "peru", "egypt", "chile")]
    r = analyze_model(gpt2, prompts)
    pooled = r.metrics_trace
    n = sum(len(capture(gpt2, p).tokens) for p in prompts)
    assert pooled.hidden.shape[1] == n and len(pooled.segments) == 5
    assert r.layer_metrics[2]["effective_rank"] == pytest.approx(
        metrics.effective_rank(pooled.hidden[2]))
    assert r.layer_metrics[2]["intrinsic_dim_twonn"] is not None  # enough rows now


def test_several_models_side_by_side(gpt2, bert, llama):
    by = {"tiny-gpt2": gpt2, "tiny-bert": bert, "tiny-llama": llama}
    a = analyze(list(by), ["the capital of japan is [MASK]."], load=by.__getitem__)
    assert [r.name for r in a.results] == list(by)
    js = summary_json(a)
    assert {m["name"] for m in js["models"]} == set(by)
    for m in js["models"]:
        assert len(m["layer_metrics"]) == m["n_layers"] + 1


def test_induction_head_in_a_causal_embedded_model(llama):
    """tiny-llama, trained on repeated sequences, has heads that attend to the token after the
    previous copy: above 0.5 and several times the median head, and not in layer 1 (an induction
    head needs a previous-token head below it to compose with).

    (tiny-gpt2, same corpus, has none: its best head scores about 0.3 and it copies a repeated
    sequence only in part. The test says so below rather than asserting what is not there.)"""
    r = analyze_model(llama, [PROMPT])
    assert "trained to copy" in r.source["induction_probe"]
    scores = r.induction
    layer, head = np.unravel_index(np.argmax(scores), scores.shape)
    assert scores.max() > 0.5 and scores.max() > 4 * np.median(scores)
    assert layer >= 1  # 0-based: layer 2 or above
    best = max(r.head_metrics, key=lambda h: h["induction_score"])
    assert (best["layer"], best["head"]) == (layer + 1, head)


def test_tiny_gpt2_has_no_clear_induction_head(gpt2):
    r = analyze_model(gpt2, [PROMPT])
    assert r.induction.max() < 0.5


def test_rollout_row_equals_the_full_rollout(gpt2):
    from analysis.attribution import rollout_row

    tr = capture(gpt2, PROMPT)
    full = attention_rollout(tr.attentions)
    for pos in range(len(tr.tokens)):
        assert np.allclose(rollout_row(tr.attentions, pos), full[pos])


def test_streamed_head_stats_equal_the_whole_array_computation(llama):
    from analysis import attention as att

    tr = capture(llama, PROMPT)
    assert np.allclose(tr.head_stats["attention_entropy"], att.head_entropies(tr.attentions, True),
                       rtol=1e-12, atol=0)
    assert np.allclose(tr.head_stats["mean_distance"], att.mean_attention_distance(tr.attentions))
    roles = att.role_scores(tr.attentions)
    for name, value in roles.items():
        assert np.allclose(tr.head_stats[name], value)


def test_large_attention_goes_to_float16_on_disk(gpt2, monkeypatch):
    from analysis import capture as cap

    small = capture(gpt2, PROMPT)
    monkeypatch.setattr(cap, "ATTENTION_MEMORY_LIMIT", 16)
    big = capture(gpt2, PROMPT)
    assert big.attention_file and big.attentions.dtype == np.float16
    assert np.allclose(big.attentions, small.attentions, atol=1e-3)
    assert np.allclose(big.head_stats["attention_entropy"], small.head_stats["attention_entropy"])
    assert any("float16" in n for n in big.notices)


def test_checkpointed_backward_gives_the_same_gradients(gpt2, llama, monkeypatch):
    """Long sequences take the gradient with per-block checkpointing and fused (SDPA) attention:
    the same gradients as the plain eager pass, and the model is eager again afterwards (the
    capture's hooks need the attention weights)."""
    from analysis import attribution as attr

    for loaded in (gpt2, llama):
        ids = capture(loaded, PROMPT).token_ids
        plain = attr.gradient_attribution(loaded, ids, len(ids) - 1, 42)
        with monkeypatch.context() as m:
            m.setattr(attr, "CHECKPOINT_ABOVE", 0)
            ckpt = attr.gradient_attribution(loaded, ids, len(ids) - 1, 42)
        for a, b in zip(plain, ckpt, strict=True):
            assert np.allclose(a, b, atol=1e-5), loaded.name
        assert loaded.model.config._attn_implementation == "eager"
        assert capture(loaded, PROMPT).attentions.shape[0] == loaded.n_layers
    assert "forward" not in vars(gpt2.model.transformer.h[0])  # the wrapper is removed


def test_logit_lens_covers_the_last_positions_of_a_long_prompt(gpt2):
    """Past 24 tokens the lens covers the last 24 positions (and says which); the last layer
    still reproduces the model's own top-1 at the last position."""
    from analysis.attribution import LENS_POSITIONS

    long = "the cat sat on the mat and the dog ran in the park . " * 3 + PROMPT
    r = analyze_model(gpt2, [long])
    n = len(r.trace.tokens)
    assert n > LENS_POSITIONS
    lens = r.logit_lens
    assert lens["positions"] == list(range(n - LENS_POSITIONS, n))
    assert np.asarray(lens["top_probs"]).shape == (r.trace.n_layers + 1, LENS_POSITIONS)
    top = r.predictions["predictions"][0]
    assert lens["top_tokens"][-1][-1].strip() == top["token"]
    assert lens["top_probs"][-1][-1] == pytest.approx(top["probability"], rel=1e-4)


def test_continuation_from_the_captures_cache_equals_generate(gpt2, monkeypatch):
    """The analysis's greedy continuation goes on from the capture's KV cache (no second
    prefill): the same text as HuggingFace generate, and the cache is not kept afterwards."""
    from models import predictions
    from models.predictions import continuation

    used = []
    real = predictions._greedy_from_cache
    monkeypatch.setattr(predictions, "_greedy_from_cache",
                        lambda *a, **k: used.append(1) or real(*a, **k))
    for prompt in (PROMPT, "anna had a red ball. tom wanted the ball. anna gave the ball to",
                   "the opposite of hot is"):
        trace = capture(gpt2, prompt)
        assert trace.cache is not None
        fresh = continuation(gpt2, prompt, max_new_tokens=12)
        assert continuation(gpt2, prompt, max_new_tokens=12, trace=trace) == fresh
    assert len(used) == 3  # the cache path was taken each time
    r = analyze_model(gpt2, [PROMPT])
    assert r.trace.cache is None
    assert r.predictions["text"] == continuation(gpt2, PROMPT, max_new_tokens=12)


def test_capture_keeps_logits_only_where_predictions_read_them(gpt2, bert):
    """The output head runs only at the prediction rows (causal: last token; masked: every
    mask), and those rows equal the full forward pass's."""
    import torch

    for loaded, prompt in ((gpt2, PROMPT), (bert, "the [MASK] of japan is [MASK].")):
        tr = capture(loaded, prompt)
        with torch.no_grad():
            full = loaded.model(input_ids=torch.tensor([tr.token_ids])).logits[0].numpy()
        rows = ([len(tr.token_ids) - 1] if loaded.causal else
                [i for i, t in enumerate(tr.tokens) if t == "[MASK]"])
        assert tr.logit_rows == rows and tr.logits.shape == (len(rows), full.shape[1])
        for pos in rows:
            assert np.allclose(tr.logits_at(pos), full[pos], atol=1e-5)
        with pytest.raises(KeyError):
            tr.logits_at(0)
    assert capture(bert, "no mask here.").logits.shape[0] == 0


def test_gradient_from_the_capture_pass_equals_the_separate_pass(gpt2, bert, llama, monkeypatch):
    """One forward pass serves capture and gradient attribution: the same gradient x input,
    head gradients and log p as the separate forward + backward, and analyze_model uses it
    (no second pass). Too long for the merged pass: the separate pass, same values."""
    from analysis import attribution as attr
    from analysis import run

    for loaded, prompt in ((gpt2, PROMPT), (llama, PROMPT), (bert, "the capital of japan is [MASK].")):
        tr = capture(loaded, prompt, gradient=True)
        g = tr.gradient
        assert (g["position"], g["target"]) == attr.target_for(tr, loaded.tokenizer.mask_token_id)
        sep = attr.gradient_attribution(loaded, tr.token_ids, g["position"], g["target"])
        assert np.allclose(g["grad_x_input"], sep[0], atol=1e-6)
        assert np.allclose(g["head"], sep[1], atol=1e-6) and np.abs(sep[1]).max() > 0
        assert g["log_prob"] == pytest.approx(sep[2], abs=1e-9)
        assert np.allclose(tr.attentions, capture(loaded, prompt).attentions)
        assert not any(p.requires_grad or p.grad is not None for p in loaded.model.parameters())

    merged = analyze_model(gpt2, [PROMPT])
    with monkeypatch.context() as m:  # no separate gradient pass when the capture's serves
        m.setattr(attr, "gradient_attribution", lambda *a, **k: pytest.fail("second pass"))
        analyze_model(gpt2, [PROMPT])
    monkeypatch.setattr(attr, "MERGED_PASS_MAX", 0)
    assert capture(gpt2, PROMPT, gradient=True).gradient is None
    calls = []
    real = attr.gradient_attribution
    monkeypatch.setattr(attr, "gradient_attribution", lambda *a: calls.append(1) or real(*a))
    separate = run.analyze_model(gpt2, [PROMPT])
    assert calls == [1]
    assert np.allclose(separate.head_attribution, merged.head_attribution, atol=1e-6)
    assert separate.token_attribution["grad_x_input"] == pytest.approx(
        merged.token_attribution["grad_x_input"], abs=1e-6)


def test_logit_lens_equals_a_plain_per_layer_softmax(gpt2, llama, bert):
    """The batched lens (one product for all layers, top probability as 1 / sum exp(z - max))
    against a plain computation: final norm, head, float64 softmax, per layer."""
    import torch

    from analysis.attribution import _lens_parts, logit_lens

    for loaded, prompt in ((gpt2, PROMPT), (llama, PROMPT), (bert, "the capital of japan is [MASK].")):
        tr = capture(loaded, prompt)
        lens = logit_lens(loaded, tr.hidden, loaded.tokenizer)
        norm, head = _lens_parts(loaded.model)
        n = tr.hidden.shape[0]
        for layer in range(n):
            h = torch.from_numpy(tr.hidden[layer])
            if norm is not None and layer < n - 1:
                h = norm(h)
            with torch.no_grad():
                p = torch.softmax(head(h).double(), -1)
            assert np.array_equal(lens["top_ids"][layer], p.argmax(-1).numpy())
            assert np.allclose(lens["top_probs"][layer], p.max(-1).values.numpy(), rtol=1e-5)


def test_induction_scores_are_computed_once_per_model_and_seed(gpt2, monkeypatch):
    """They do not depend on the prompt: a later analysis reuses them (no probe pass), and the
    reused scores equal a fresh probe pass's."""
    from analysis import run

    first = analyze_model(gpt2, [PROMPT]).induction
    fresh = run.induction_scores(gpt2, 0, pool=run.induction_probe(gpt2)[0])  # not cached
    assert np.array_equal(first, fresh)
    monkeypatch.setattr(run, "capture", lambda *a, **k: pytest.fail("probe pass again")
                        if k.get("input_ids") is not None else capture(*a, **k))
    again = analyze_model(gpt2, ["the opposite of hot is"]).induction
    assert np.array_equal(first, again)
