"""analysis/targets.py: attribution, head support and the logit lens of a chosen token."""

import numpy as np
import pytest

from models.common import UserError
from tests.conftest import have

pytestmark = pytest.mark.skipif(not have("tiny-gpt2"), reason="embedded tiny-gpt2 missing")

PROMPT = "the capital of japan is"


@pytest.fixture(scope="module")
def result(gpt2):
    from analysis.run import analyze_model

    return analyze_model(gpt2, PROMPT)


def _softmax_rank(logits: np.ndarray, tid: int) -> tuple[float, int]:
    x = np.asarray(logits, dtype=np.float64)
    p = np.exp(x - x.max())
    p /= p.sum()
    return float(p[tid]), int((x > x[tid]).sum()) + 1


def test_top1_without_contrast_is_the_analysis_own_attribution(gpt2, result):
    from analysis import targets

    own = result.attribution
    t = targets.attribute(gpt2, result, own.target_id)
    assert t.position == own.position == result.trace.n_tokens - 1
    assert t.target.id == own.target_id and t.rank == 1
    assert t.value == pytest.approx(own.log_prob, abs=1e-6)  # f = log p(top-1)
    assert t.probability == pytest.approx(np.exp(own.log_prob), rel=1e-6)
    np.testing.assert_allclose(t.grad_x_input, own.grad_x_input, rtol=1e-4, atol=1e-7)
    np.testing.assert_allclose(t.head_support, result.heads.attribution, rtol=1e-4, atol=1e-7)
    np.testing.assert_allclose(t.rollout, own.rollout)  # rollout does not depend on the target


def test_contrast_with_itself_gives_zeros(gpt2, result):
    from analysis import targets

    tid = result.attribution.target_id
    for method in ("gradient", "ablation"):
        t = targets.attribute(gpt2, result, tid, contrast=tid, method=method)
        assert t.value == 0.0
        assert not t.grad_x_input.any() and not t.head_support.any()
        assert t.head_support.shape == (result.trace.n_layers, result.trace.n_heads)


def test_logit_difference_is_the_difference_of_log_probabilities(gpt2, result):
    """f(t, c) = log p(t) - log p(c) exactly, so its gradients are the differences of the
    single-token gradients, and swapping target and contrast flips every sign."""
    from analysis import targets

    top = result.predictions.top
    t_id, c_id = top[0].token_id, top[1].token_id
    t = targets.attribute(gpt2, result, t_id)
    c = targets.attribute(gpt2, result, c_id)
    tc = targets.attribute(gpt2, result, t_id, contrast=c_id)
    ct = targets.attribute(gpt2, result, c_id, contrast=t_id)
    assert tc.value == pytest.approx(t.value - c.value, abs=1e-9)
    assert tc.value > 0  # the top-1 is more likely than the second: the difference supports it
    np.testing.assert_allclose(tc.grad_x_input, t.grad_x_input - c.grad_x_input, atol=1e-6)
    np.testing.assert_allclose(tc.head_support, t.head_support - c.head_support, atol=1e-6)
    np.testing.assert_allclose(ct.grad_x_input, -tc.grad_x_input, atol=1e-9)
    assert c.rank == 2 and c.probability == pytest.approx(top[1].probability, rel=1e-5)
    assert "logit" in tc.objective and tc.contrast.id == c_id


def test_ablation_is_exact_support(gpt2, result):
    """Ablation for the top-1 equals the analysis run with --head-ablation; with a contrast it is
    f(all) - f(head removed) of the logit difference (checked for one head by hand)."""
    import torch

    from analysis import targets
    from analysis.capture import forward_pass
    from analysis.run import analyze_model
    from models.attention import AttentionCall

    exact = analyze_model(gpt2, PROMPT, ablation=True)
    t = targets.attribute(gpt2, result, result.attribution.target_id, method="ablation")
    np.testing.assert_allclose(t.head_support, exact.heads.attribution, atol=1e-9)
    top = result.predictions.top
    tc = targets.attribute(gpt2, result, top[0].token_id, contrast=top[2].token_id,
                           method="ablation")
    gates = torch.ones(gpt2.n_layers, gpt2.n_heads)
    x = torch.tensor([result.trace.token_ids])

    def diff() -> float:
        _, logits = forward_pass(gpt2, x, [tc.position], AttentionCall(gates=gates))
        row = logits[0, 0].double()
        return float(row[top[0].token_id] - row[top[2].token_id])

    with gpt2.lock, torch.no_grad():
        full = diff()
        gates[1, 2] = 0.0
        removed = diff()
    assert tc.value == pytest.approx(full, abs=1e-6)
    assert tc.head_support[1, 2] == pytest.approx(full - removed, abs=1e-6)


def test_token_lens_last_layer_is_the_model_own_logits(gpt2, result):
    from analysis import targets

    pos = result.attribution.position
    for rank_wanted in (0, 3):
        tid = result.predictions.top[rank_wanted].token_id
        lens = targets.token_lens(gpt2, result, tid)
        assert lens.probs.shape == lens.ranks.shape == (result.trace.n_layers + 1,
                                                        len(lens.positions))
        probs, ranks = lens.at(pos)
        p, r = _softmax_rank(result.trace.logits_at(pos), tid)
        assert ranks[-1] == r == rank_wanted + 1
        assert probs[-1] == pytest.approx(p, rel=1e-4)
        assert pos in lens.positions and lens.predicted == [pos]


def test_token_lens_agrees_with_the_analysis_lens(gpt2, result):
    """Where the analysis's lens says token x is on top, x has rank 1 and the same probability."""
    from analysis import targets

    own = result.lens
    for layer in (0, 1, result.trace.n_layers):
        j = len(own.positions) - 1
        tid = int(own.top_ids[layer, j])
        lens = targets.token_lens(gpt2, result, tid)
        assert lens.positions == own.positions
        assert lens.ranks[layer, j] == 1
        assert lens.probs[layer, j] == pytest.approx(own.top_probs[layer, j], rel=1e-4)
        assert (lens.ranks >= 1).all() and ((lens.probs >= 0) & (lens.probs <= 1)).all()


def test_token_lens_contrast_is_a_logit_difference(gpt2, result):
    from analysis import targets

    top = result.predictions.top
    lens = targets.token_lens(gpt2, result, top[0].token_id, contrast=top[1].token_id)
    other = targets.token_lens(gpt2, result, top[1].token_id)
    # logit difference = log p(t) - log p(c) through the same lens
    np.testing.assert_allclose(lens.logit_diff, np.log(lens.probs) - np.log(other.probs),
                               atol=1e-4)
    assert lens.logit_diff[-1, -1] > 0


def test_resolve_token_spellings_ids_and_refusals(gpt2, result):
    from analysis.targets import Token, resolve_token

    tok = gpt2.tokenizer
    top = result.predictions.top[0]
    want = top.token_id
    prefer = [p.token_id for p in result.predictions.top]
    assert resolve_token(tok, top.token, prefer).id == want  # as the predictions show it
    assert resolve_token(tok, " " + top.token.strip(), prefer).id == want
    assert resolve_token(tok, f"id:{want}") == Token(want, tok.decode([want]))
    with pytest.raises(UserError, match="not one token"):
        resolve_token(tok, "tokyo japan capital")
    with pytest.raises(UserError, match="vocabulary has ids"):
        resolve_token(tok, "id:99999999")
    with pytest.raises(UserError, match="Type a target"):
        resolve_token(tok, "  ")


@pytest.mark.skipif(not have("tiny-bert"), reason="embedded tiny-bert missing")
def test_fill_mask_explains_the_mask_and_refuses_without_one(bert):
    from analysis import targets
    from analysis.run import analyze_model

    r = analyze_model(bert, "the capital of japan is [MASK].")
    pos = r.trace.token_ids.index(bert.tokenizer.mask_token_id)
    t = targets.attribute(bert, r, r.attribution.target_id)
    assert t.position == pos and t.rank == 1
    np.testing.assert_allclose(t.grad_x_input, r.attribution.grad_x_input, rtol=1e-4, atol=1e-7)
    lens = targets.token_lens(bert, r, r.attribution.target_id)
    assert lens.at(pos)[1][-1] == 1
    plain = analyze_model(bert, PROMPT)  # no [MASK]: nothing predicted
    with pytest.raises(UserError, match="no position"):
        targets.attribute(bert, plain, 5)


def test_bad_method_position_and_foreign_model(gpt2, result):
    from analysis import targets

    with pytest.raises(UserError, match="Unknown method"):
        targets.attribute(gpt2, result, 5, method="magic")
    with pytest.raises(UserError, match="Position 99"):
        targets.attribute(gpt2, result, 5, position=99)
    if have("tiny-bert"):
        from models.loading import load

        with pytest.raises(UserError, match="did not make"):
            targets.attribute(load("tiny-bert"), result, 5)
