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
    lm = r.layers
    assert lm.n_layers == L and lm.effective_rank.shape == (L + 1,)
    assert lm.value("attention_entropy", 0) is None
    assert lm.value("cosine_to_input", 0) == pytest.approx(1.0)
    assert np.all((lm.attention_entropy[1:] >= 0) & (lm.attention_entropy[1:] <= 1))
    # the metrics are those of the full hidden state, recomputed here independently
    for layer in range(L + 1):
        erank = lm.value("effective_rank", layer)
        assert erank == pytest.approx(metrics.effective_rank(r.trace.hidden[layer]))
        assert erank <= len(r.trace.tokens) - 1 + 1e-9  # centring costs one rank
    assert r.heads.shape == (L, H) and len(r.heads.rows()) == L * H
    assert r.predictions.top[0].token == "tokyo"
    probs = [p.probability for p in r.predictions.top]
    assert probs == sorted(probs, reverse=True) and sum(probs) <= 1 + 1e-9
    # logit lens: the last layer reproduces the model's own top-1
    assert r.lens.top_tokens[-1][-1].strip() == "tokyo"
    assert r.lens.top_probs[-1][-1] == pytest.approx(probs[0], rel=1e-4)
    assert r.lens.positions == list(range(len(r.trace.tokens)))  # short: every position
    # attribution covers every token; rollout rows are distributions
    ta = r.attribution
    assert ta.target == "tokyo" and len(ta.grad_x_input) == len(r.trace.tokens)
    assert ta.rollout.sum() == pytest.approx(1.0)
    assert r.heads.attribution.shape == (L, H) and np.abs(r.heads.attribution).sum() > 0


@pytest.mark.parametrize("fixture,prompt", [("gpt2", "red ball moon tree red ball moon"),
                                            ("bert", "the opposite of hot is [MASK].")])
def test_head_ablation_and_gradient_share_one_sign(fixture, prompt, request):
    """Both methods give the head's *support*, log p(all heads) - log p(head removed): on a
    prompt whose prediction is not saturated the first-order (gradient) estimate agrees with the
    exact ablation: positively correlated, and the same head supports the prediction most."""
    loaded = request.getfixturevalue(fixture)
    grad = analyze_model(loaded, [prompt]).heads.attribution
    r = analyze_model(loaded, [prompt], ablation=True)
    abl = r.heads.attribution
    assert r.heads.attribution_method == "ablation"
    assert abl.shape == grad.shape and np.isfinite(abl).all()
    assert np.corrcoef(grad.ravel(), abl.ravel())[0, 1] > 0.9
    assert np.unravel_index(grad.argmax(), grad.shape) == np.unravel_index(abl.argmax(), abl.shape)
    assert abl.max() > 0  # some head supports the prediction: removing it lowers log p
    # the exact support of the strongest head, recomputed here with the head's gate at 0
    import torch

    from models.attention import AttentionCall

    layer, head = np.unravel_index(abl.argmax(), abl.shape)
    pos, tid = r.attribution.position, r.predictions.top[0].token_id
    gates = torch.ones(loaded.n_layers, loaded.n_heads)

    def logp():
        with torch.no_grad():
            z = loaded.model(input_ids=torch.tensor([r.trace.token_ids]),
                             dashboard=AttentionCall(gates=gates)).logits[0, pos]
        return float(torch.log_softmax(z.double(), -1)[tid])

    full = logp()
    gates[layer, head] = 0.0
    assert abl[layer, head] == pytest.approx(full - logp(), rel=1e-5)  # float32 logits


def test_bert_fill_mask_and_rollout(bert):
    r = analyze_model(bert, ["the capital of japan is [MASK]."])
    assert r.predictions.top[0].token == "tokyo"
    assert r.attribution.position == r.trace.tokens.index("[MASK]")
    roll = attention_rollout(r.trace.attentions)
    assert np.allclose(roll.sum(-1), 1)


def test_fill_mask_without_mask_gives_a_notice_not_a_crash(bert):
    r = analyze_model(bert, ["the capital of japan is tokyo."])
    assert r.predictions is None and r.attribution is None
    assert any("[MASK]" in n for n in r.trace.notices)
    assert r.layers.value("effective_rank", 1) is not None


def test_empty_prompt_is_a_user_error(gpt2):
    for bad in ["", "   \n\t "]:
        with pytest.raises(UserError, match="empty"):
            analyze_model(gpt2, [bad])


def test_long_causal_prompt_keeps_its_end_and_says_which_tokens(gpt2):
    """Past the context a causal model is analysed on the END of the prompt: its next token is
    predicted after the last token typed, and the notice names the analysed range."""
    prompt = "the capital of france is paris. " * 40 + PROMPT
    n = len(gpt2.tokenizer(prompt)["input_ids"])
    limit = gpt2.model.config.n_positions
    r = analyze_model(gpt2, [prompt])
    assert r.trace.token_ids == gpt2.tokenizer(prompt)["input_ids"][-limit:]
    assert r.trace.tokens[-1].strip() == "is"
    notice = " ".join(r.trace.notices)
    assert f"has {n} tokens" in notice and f"tokens {n - limit}..{n - 1}" in notice
    assert "start dropped" in notice


def test_long_fill_mask_prompt_keeps_its_mask(bert):
    """A [MASK] near the start of a prompt longer than the context stays in the analysed window
    (with [CLS] and [SEP]); masks spanning more than the context are refused clearly."""
    prompt = "the capital of japan is [MASK]. " + "the capital of france is paris. " * 40
    r = analyze_model(bert, [prompt])
    limit = bert.model.config.max_position_embeddings
    assert r.trace.n_tokens == limit
    assert r.trace.tokens[0] == "[CLS]" and r.trace.tokens[-1] == "[SEP]"
    assert "[MASK]" in r.trace.tokens and r.predictions.top
    assert not any("No [MASK]" in n for n in r.trace.notices)
    assert any(f"takes {limit}" in n for n in r.trace.notices)
    far = "[MASK] " + "the capital of france is paris. " * 40 + "[MASK]."
    with pytest.raises(UserError, match="masks span"):
        analyze_model(bert, [far])


def test_too_few_tokens_leave_only_that_metric_empty(gpt2):
    r = analyze_model(gpt2, ["japan"])
    assert r.layers.value("intrinsic_dim_twonn", 1) is None  # fewer than 10 distinct rows
    assert r.layers.value("cosine_to_input", 1) is not None


def test_several_prompts_are_refused_in_favour_of_dataset_mode(gpt2):
    with pytest.raises(UserError, match="dataset"):
        analyze_model(gpt2, [PROMPT, "the capital of france is"])


def test_several_models_side_by_side(gpt2, bert, llama):
    by = {"tiny-gpt2": gpt2, "tiny-bert": bert, "tiny-llama": llama}
    a = analyze(list(by), ["the capital of japan is [MASK]."], load=by.__getitem__)
    assert [r.name for r in a.results] == list(by)
    js = summary_json(a)
    assert {m["name"] for m in js["models"]} == set(by)
    for m in js["models"]:
        assert len(m["layer_metrics"]) == m["n_layers"] + 1
        assert len(m["head_metrics"]) == m["n_layers"] * m["n_heads"]


def test_induction_head_in_a_causal_embedded_model(llama):
    """tiny-llama, trained on repeated sequences, has heads that attend to the token after the
    previous copy: above 0.5 and several times the median head, and not in layer 1 (an induction
    head needs a previous-token head below it to compose with).

    (tiny-gpt2, same corpus, has none: its best head scores about 0.3 and it copies a repeated
    sequence only in part. The test says so below rather than asserting what is not there.)"""
    r = analyze_model(llama, [PROMPT])
    assert "trained to copy" in r.info.induction_probe
    scores = r.heads.induction_score
    layer, head = np.unravel_index(np.argmax(scores), scores.shape)
    assert scores.max() > 0.5 and scores.max() > 4 * np.median(scores)
    assert layer >= 1  # 0-based: layer 2 or above
    assert r.heads.top("induction_score")[:2] == (layer + 1, head)
    assert r.heads.role[layer, head] == "induction"


def test_tiny_gpt2_has_no_clear_induction_head(gpt2):
    r = analyze_model(gpt2, [PROMPT])
    assert r.heads.induction_score.max() < 0.5


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
    the same gradients as the plain eager pass, and the shared model is exactly as before
    afterwards (the same attention implementation, eval mode everywhere, no checkpointing)."""
    from analysis import attribution as attr
    from models.loading import block_modules

    for loaded in (gpt2, llama):
        ids = capture(loaded, PROMPT).token_ids
        plain = attr.gradient_attribution(loaded, ids, len(ids) - 1, 42)
        with monkeypatch.context() as m:
            m.setattr(attr, "CHECKPOINT_ABOVE", 0)
            with attr.checkpointed_blocks(loaded, True) as on:
                assert on  # the switch really is used at this size
            ckpt = attr.gradient_attribution(loaded, ids, len(ids) - 1, 42)
        for a, b in zip(plain, ckpt, strict=True):
            assert np.allclose(a, b, atol=1e-5), loaded.name
        assert loaded.model.config._attn_implementation == "dashboard"
        assert not any(m.training for m in loaded.model.modules())
        assert not any(getattr(b, "gradient_checkpointing", False)
                       for b in block_modules(loaded.model))
        import torch  # and no hook left making the embeddings' output require grad

        assert not loaded.model.get_input_embeddings()(torch.tensor([ids])).requires_grad
        assert capture(loaded, PROMPT).attentions.shape[0] == loaded.n_layers


def test_logit_lens_covers_the_last_positions_of_a_long_prompt(gpt2):
    """Past 24 tokens the lens covers the last 24 positions (and says which); the last layer
    still reproduces the model's own top-1 at the last position."""
    from analysis.attribution import LENS_POSITIONS

    long = "the cat sat on the mat and the dog ran in the park . " * 3 + PROMPT
    r = analyze_model(gpt2, [long])
    n = len(r.trace.tokens)
    assert n > LENS_POSITIONS
    lens = r.lens
    assert lens.positions == list(range(n - LENS_POSITIONS, n))
    assert lens.top_probs.shape == (r.trace.n_layers + 1, LENS_POSITIONS)
    top = r.predictions.top[0]
    assert lens.top_tokens[-1][-1].strip() == top.token
    assert lens.top_probs[-1][-1] == pytest.approx(top.probability, rel=1e-4)


def test_continuation_is_an_explicit_step_on_the_analysed_ids(gpt2):
    """The analysis is finished when it returns (no KV cache kept in it); the caller asks for
    the greedy continuation of exactly the analysed ids, which equals HuggingFace generate."""
    import torch

    from analysis.run import continuation_of

    for prompt in (PROMPT, "anna had a red ball. tom wanted the ball. anna gave the ball to",
                   "the opposite of hot is"):
        r = analyze_model(gpt2, [prompt])
        assert not hasattr(r.trace, "cache")
        text = continuation_of(gpt2, r)
        ids = torch.tensor([r.trace.token_ids])
        with torch.no_grad():
            out = gpt2.model.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=12,
                                      do_sample=False, pad_token_id=gpt2.tokenizer.eos_token_id)
        assert text == gpt2.tokenizer.decode(out[0, ids.shape[1]:], skip_special_tokens=True).strip()
        assert text.startswith(r.predictions.top[0].token)


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
    from analysis import capture as cap

    monkeypatch.setattr(cap, "MERGED_PASS_MAX", 0)
    assert capture(gpt2, PROMPT, gradient=True).gradient is None
    calls = []
    real = attr.gradient_attribution
    monkeypatch.setattr(attr, "gradient_attribution", lambda *a: calls.append(1) or real(*a))
    separate = run.analyze_model(gpt2, [PROMPT])
    assert calls == [1]
    assert np.allclose(separate.heads.attribution, merged.heads.attribution, atol=1e-6)
    assert np.allclose(separate.attribution.grad_x_input, merged.attribution.grad_x_input,
                       atol=1e-6)


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
            if norm is not None:  # layer L is block L's output: the final norm applies to it too
                h = norm(h)
            with torch.no_grad():
                p = torch.softmax(head(h).double(), -1)
            assert np.array_equal(lens["top_ids"][layer], p.argmax(-1).numpy())
            assert np.allclose(lens["top_probs"][layer], p.max(-1).values.numpy(), rtol=1e-5)


def test_induction_scores_are_computed_once_per_model_and_seed(gpt2, monkeypatch):
    """They do not depend on the prompt: a later analysis reuses them (no probe pass), and the
    reused scores equal a fresh probe pass's."""
    from analysis import run

    first = analyze_model(gpt2, [PROMPT]).heads.induction_score
    fresh = run.induction_scores(gpt2, 0, pool=run.induction_probe(gpt2)[0])  # not cached
    assert np.array_equal(first, fresh)
    monkeypatch.setattr(run, "capture", lambda *a, **k: pytest.fail("probe pass again")
                        if k.get("input_ids") is not None else capture(*a, **k))
    again = analyze_model(gpt2, ["the opposite of hot is"]).heads.induction_score
    assert np.array_equal(first, again)


def _block_outputs(loaded, ids):
    """Every block's output, recorded here by forward hooks, and HF's hidden_states."""
    import torch

    blocks = {"gpt2": lambda m: m.transformer.h, "llama": lambda m: m.model.layers,
              "bert": lambda m: m.bert.encoder.layer}[loaded.model.config.model_type](loaded.model)
    seen = []
    handles = [b.register_forward_hook(
        lambda mod, args, out: seen.append((out[0] if isinstance(out, tuple) else out)[0].clone()))
        for b in blocks]
    try:
        with torch.no_grad():
            out = loaded.model(input_ids=torch.tensor([ids]), output_hidden_states=True)
    finally:
        for h in handles:
            h.remove()
    return [s.numpy() for s in seen], [h[0].numpy() for h in out.hidden_states]


@pytest.mark.parametrize("fixture", ["gpt2", "llama", "bert"])
def test_last_layer_is_the_last_blocks_output_not_the_final_norm(fixture, request):
    """design.md: layer L is block L's output (the residual stream) BEFORE the final norm; HF's
    hidden_states[-1] has GPT-2's ln_f / Llama's norm applied and is not a layer."""
    loaded = request.getfixturevalue(fixture)
    prompt = "the capital of japan is [MASK]." if fixture == "bert" else PROMPT
    tr = capture(loaded, prompt)
    blocks, hf = _block_outputs(loaded, tr.token_ids)
    assert len(blocks) == loaded.n_layers == tr.hidden.shape[0] - 1
    for layer in range(1, loaded.n_layers + 1):
        np.testing.assert_allclose(tr.hidden[layer], blocks[layer - 1], rtol=1e-5, atol=1e-5)
    if fixture == "bert":  # no final norm: HF's last hidden state is the block output
        np.testing.assert_allclose(tr.hidden[-1], hf[-1], rtol=1e-5, atol=1e-5)
    else:
        assert np.abs(tr.hidden[-1] - hf[-1]).max() > 0.1  # the final norm changes it


def test_metrics_of_the_last_layer_use_the_block_output(llama):
    r = analyze_model(llama, [PROMPT])
    blocks, hf = _block_outputs(llama, r.trace.token_ids)
    last = r.layers.value("effective_rank", llama.n_layers)
    assert last == pytest.approx(metrics.effective_rank(blocks[-1]), rel=1e-6)
    assert last != pytest.approx(metrics.effective_rank(hf[-1]), rel=1e-3)


def test_logit_lens_always_includes_the_mask_position(bert):
    """A [MASK] outside the last 24 positions is still in the lens (its prediction is shown),
    and the lens's last layer there reproduces the fill-mask top-1."""
    from analysis.attribution import LENS_POSITIONS

    prompt = "the capital of japan is [MASK]. " + "the capital of france is paris. " * 6
    r = analyze_model(bert, [prompt])
    mask = r.trace.tokens.index("[MASK]")
    assert r.trace.n_tokens - mask > LENS_POSITIONS  # outside the last-24 window
    lens = r.lens
    assert mask in lens.positions and mask in lens.predicted
    col = lens.positions.index(mask)
    assert lens.top_tokens[-1][col].strip() == r.predictions.top[0].token
    assert lens.top_probs[-1][col] == pytest.approx(
        r.predictions.top[0].probability, rel=1e-4)


@pytest.mark.parametrize("chat", [False, True])
def test_one_input_feeds_prediction_and_continuation(llama, chat):
    """tiny-llama has a chat template: whether or not it is applied, the next token shown and
    the greedy continuation come from the same ids (the continuation starts with the shown next
    token), and the result says which input it was."""
    prompt = "the capital of france is paris and the capital of japan is"
    r = analyze_model(llama, [prompt], chat_template=chat)
    assert r.trace.chat_template is chat and r.predictions.chat_template is chat
    if chat:
        assert "<|user|>" in "".join(r.trace.tokens)
    else:
        assert r.trace.token_ids == llama.tokenizer(prompt)["input_ids"]
    from analysis.run import continuation_of

    first = r.predictions.top[0]
    cont = llama.tokenizer(continuation_of(llama, r), add_special_tokens=False)["input_ids"]
    assert cont and llama.tokenizer.decode(cont[:1]).strip() == first.token


@pytest.mark.parametrize("name", ["gpt2", "bert", "llama"])
def test_captured_attention_is_the_models_own(name, request):
    # the capture's softmax writes each layer straight into its store (AttentionCall.weights_out);
    # what lands there equals the weights the model returns through output_attentions, and
    # every row over its visible keys sums to 1
    import torch

    from models.attention import NAME

    loaded = request.getfixturevalue(name)
    assert loaded.attention == NAME  # the per-call path that writes into the store
    trace = capture(loaded, "the capital of japan is tokyo and the capital of france is")
    with loaded.lock, torch.no_grad():
        out = loaded.model(input_ids=torch.tensor([trace.token_ids]), output_attentions=True)
    want = np.stack([a[0].float().numpy() for a in out.attentions])
    assert trace.attentions.shape == want.shape
    np.testing.assert_array_equal(trace.attentions, want)
    np.testing.assert_allclose(trace.attentions.sum(-1), 1.0, atol=1e-5)
    if trace.causal:
        assert np.all(np.triu(trace.attentions, k=1) == 0.0)
