"""The interactive diffusion state machine (models/interactive.py), without any UI."""

import math

import pytest

from tests.conftest import Calls, have

pytestmark = pytest.mark.skipif(not have("tiny-bert"), reason="embedded tiny-bert missing")

PROMPT = "the capital of japan is"


@pytest.fixture(scope="module")
def model():
    """tiny-diffusion when it has been trained, else tiny-bert (the sampler accepts both)."""
    from models.loading import load

    return load("tiny-diffusion" if have("tiny-diffusion") else "tiny-bert")


def stepper(model, length=8, block_length=None, seed=0):
    from models.interactive import Stepper

    return Stepper(model, PROMPT, length, block_length, seed=seed)


def test_init_forward_auto_select_apply(model):
    s = stepper(model)
    mask = model.tokenizer.mask_token_id
    assert s.step == 0 and s.masked == list(range(8)) and s.region == [mask] * 8
    with Calls(model.model) as calls:
        view = s.forward()
    assert calls.n == 1 and s.n_forward == 1
    assert [v.position for v in view] == list(range(8))
    for v in view:
        probs = [t["probability"] for t in v.top]
        assert probs == sorted(probs, reverse=True) and 0 < probs[0] <= 1
        assert math.isclose(v.confidence, max(probs), rel_tol=1e-9)  # no top-k: candidate = top
        assert v.candidate_id == v.top[0]["token_id"]
    picked = s.auto_select(2, "low_confidence")
    # low_confidence (LLaDA's name) commits the two most confident positions
    best = sorted(view, key=lambda v: -v.confidence)[:2]
    assert sorted(picked) == sorted(v.position for v in best)
    record = s.apply()
    assert s.step == 1 and record.step == 1 and len(record.committed) == 2
    for c in record.committed:
        assert s.region[c["position"]] == c["token_id"] != mask
    assert len(s.masked) == 6
    assert s.view is None and s.selection == {}  # the logits are stale after applying
    with pytest.raises(Exception, match="forward pass"):
        s.auto_select(1)


def test_manual_choice_and_combination_with_auto(model):
    s = stepper(model)
    s.forward()
    v = next(v for v in s.view if v.position == 5)
    second = v.top[1]  # a token that is not the candidate
    s.select(5, second["token_id"])
    picked = s.auto_select(1, "high_entropy")
    assert 5 not in picked and len(picked) == 1
    rec = s.apply()
    by_pos = {c["position"]: c for c in rec.committed}
    assert set(by_pos) == {5, picked[0]}
    assert by_pos[5]["token_id"] == second["token_id"]
    assert math.isclose(by_pos[5]["confidence"], second["probability"], rel_tol=1e-9)
    assert s.tokens()[5] == second["token"]


def test_refuses_bad_choices(model):
    from models.common import UserError
    from models.interactive import Settings

    s = stepper(model, length=8, block_length=4)
    with pytest.raises(UserError, match="forward pass"):
        s.select(0, 5)
    s.forward()
    with pytest.raises(UserError, match="block"):
        s.select(6, s.view[6].candidate_id)  # block 1 while block 0 has masks
    with pytest.raises(UserError, match="Nothing is selected"):
        s.apply()
    s.process(Settings(top_k=1))
    with pytest.raises(UserError, match="not selectable"):
        s.select(0, s.view[0].top[1]["token_id"])


def test_reprocess_without_a_forward_pass(model):
    from models.interactive import Settings

    s = stepper(model)
    with Calls(model.model) as calls:
        s.forward()
        base = {v.position: v for v in s.view}
        s.process(Settings(temperature=0.5))
        sharp = {v.position: v for v in s.view}
        s.process(Settings(temperature=2.0))
        flat = {v.position: v for v in s.view}
        s.process(Settings(top_k=3, show_k=5))
        top3 = {v.position: v for v in s.view}
        s.process(Settings(temperature=1.0, gumbel=1.0))
        s.process(Settings(temperature=1.0, top_p=0.5))
        nucleus = {v.position: v for v in s.view}
        s.process(Settings())
    assert calls.n == 1 and s.n_forward == 1  # six reprocessings, one model call
    for p, v in base.items():
        # a lower temperature sharpens, a higher one flattens the same logits
        assert sharp[p].confidence >= v.confidence - 1e-12 >= flat[p].confidence - 1e-12
        assert sharp[p].candidate_id == v.candidate_id == flat[p].candidate_id
        # top-k 3: only three selectable tokens, the rest shown struck out
        assert sum(t["selectable"] for t in top3[p].top) == min(3, len(top3[p].top))
        assert len(top3[p].top) <= 5 and top3[p].confidence >= v.confidence - 1e-12
        # top-p 0.5: the kept tokens are the fewest whose mass reaches 0.5
        kept = [t for t in nucleus[p].top if t["selectable"]]
        assert kept and sum(t["probability"] for t in kept) <= 1 + 1e-9
    assert {p: v.confidence for p, v in base.items()} == {v.position: v.confidence for v in s.view}


def test_gumbel_noise_is_fixed_per_step(model):
    from models.interactive import Settings

    s = stepper(model, seed=3)
    s.forward()
    noisy = Settings(temperature=1.0, gumbel=2.0)
    a = [v.candidate_id for v in s.process(noisy)]
    b = [v.candidate_id for v in s.process(noisy)]
    assert a == b  # same settings, same noise: same candidates
    greedy = [v.candidate_id for v in s.process(Settings())]
    assert greedy == [v.top[0]["token_id"] for v in s.view]


def test_rewind_restores_exactly(model):
    s = stepper(model, length=8, block_length=4)
    s.forward()
    at0 = (list(s.ids), s.step, [v.candidate_id for v in s.view])
    s.auto_select(2)
    s.apply()
    s.forward()
    at1 = (list(s.ids), s.step, [(v.position, v.confidence) for v in s.view])
    s.auto_select(2, "random")
    s.apply()
    s.forward()
    s.auto_select(3)
    s.apply()
    assert s.step == 3 and len(s.masked) == 1
    with Calls(model.model) as calls:
        s.rewind(1)
        assert (s.ids, s.step) == (at1[0], at1[1]) and len(s.records) == 1
        assert [(v.position, v.confidence) for v in s.view] == at1[2]  # kept logits, no re-run
        s.rewind(0)
    assert calls.n == 0
    assert (s.ids, s.step) == (at0[0], 0) and s.records == []
    assert [v.candidate_id for v in s.view] == at0[2]
    assert s.masked == list(range(8))
    # and it continues from there
    s.auto_select(1)
    s.apply()
    assert s.step == 1 and len(s.masked) == 7
    with pytest.raises(Exception, match="between 0 and 1"):
        s.rewind(5)


def test_finish_leaves_no_masks_and_matches_the_sampler(model):
    from models.generation import diffusion_generate

    s = stepper(model, length=8, block_length=4)
    s.forward()
    s.select(0, s.view[0].top[0]["token_id"])
    s.finish(1, "low_confidence")
    assert s.done and s.masked == [] and model.tokenizer.mask_token_id not in s.region
    assert s.step == 8  # one position per step
    # the committed blocks went left to right
    assert [r.block for r in s.records] == [0] * 4 + [1] * 4
    # stepping with the default settings is the greedy sampler, token for token
    fresh = stepper(model, length=8, block_length=4)
    fresh.finish(1, "low_confidence")
    ref = diffusion_generate(model, PROMPT, 8, steps=8, block_length=4)
    assert fresh.region == ref.token_ids
    assert fresh.text() == ref.text
    res = fresh.to_result()
    assert res.steps == 8 and res.nfe == 8 and res.tokens == ref.tokens
    with pytest.raises(Exception, match="nothing left"):
        fresh.forward()


def test_analysis_prompt_round_trips(model):
    s = stepper(model, length=4)
    s.finish(2)
    s.rewind(1)
    text, exact = s.analysis_prompt()
    assert "[MASK]" in text and text.startswith(PROMPT) and exact


def test_trace_helpers(model):
    from models.generation import diffusion_generate
    from models.trace import decode_table, region_at

    res = diffusion_generate(model, PROMPT, 6, steps=3)
    start = region_at(res, 0)
    assert all(c["state"] == "masked" for c in start)
    mid = region_at(res, 2)
    assert sum(c["state"] == "new" for c in mid) == 2 and sum(c["state"] == "old" for c in mid) == 2
    end = region_at(res, 3)
    assert [c["token"] for c in end] == res.tokens
    assert all(c["confidence"] is not None for c in end)
    t = decode_table(res)
    assert sorted(t.commit_step) == [1, 1, 2, 2, 3, 3]
    for p, step in enumerate(t.commit_step):
        assert all(not math.isnan(x) for x in t.best[p][:step])  # known while masked
        assert all(math.isnan(x) for x in t.best[p][step:])  # nothing after the commit


def test_content_tokens_and_the_end_in_step_mode(model):
    from models.trace import region_at

    sep = model.tokenizer.sep_token_id
    s = stepper(model, length=6)
    s.forward()
    assert s.end is None and s.generated_tokens == 0
    s.select(2, sep)  # an end-of-sequence token, chosen by hand, ...
    s.select(0, s.view[0].candidate_id)  # ... and one content token before it
    s.select(4, s.view[4].candidate_id)  # ... and one after it
    rec = s.apply()
    assert rec.end == 2 and s.end == 2
    assert s.generated_tokens == 1  # position 0; 1 is still masked, 4 lies past the end
    res = s.to_result()
    assert res.generated_tokens == 1 and res.positions == 6 and res.nfe == 1
    assert res.tokens_per_second == pytest.approx(1 / res.seconds)
    assert res.peak_memory_mb is None and "step mode" in res.peak_memory_note
    cells = region_at(res, 1)
    assert [c["end"] for c in cells] == [None, None, "eos", "after", "after", "after"]
    assert [c["state"] for c in cells] == ["new", "masked", "new", "masked", "new", "masked"]
    assert cells[4]["token"] == s.token_text(s.region[4])  # greyed, not hidden
    assert [c["end"] for c in region_at(res, 0)] == [None] * 6


def test_region_of_an_autoregressive_run_that_stopped(gpt2):
    from models.generation import autoregressive_generate
    from models.trace import region_at, shown_positions

    res = autoregressive_generate(gpt2, PROMPT, 40)
    n = len(res.trace)
    assert res.token_ids[-1] == gpt2.tokenizer.eos_token_id and n < 40  # stopped at <eos>
    assert shown_positions(res) == n and res.positions == 40
    final = region_at(res, n)
    assert len(final) == n and final[-1]["end"] == "eos"
    assert all(c["end"] is None for c in final[:-1])
    mid = region_at(res, 2)
    assert len(mid) == n and [c["state"] for c in mid[:3]] == ["old", "new", "masked"]


@pytest.mark.parametrize("cache", ["prefix", "dual"])
def test_step_mode_with_the_kv_cache_is_the_cached_sampler(model, cache):
    """Stepping with the cache (auto-selecting one position per step) is the cached sampler,
    token for token; the first pass in a block refreshes the cache, the later ones reuse it,
    and a rewind brings back the cache that was in force then."""
    from models.generation import diffusion_generate
    from models.interactive import Stepper

    if model.attention != "dashboard":
        pytest.skip("the model runs its own attention: no cache")
    s = Stepper(model, PROMPT, 8, 4, cache=cache)
    events = []
    for _ in range(8):
        s.forward()
        events.append(s.kv_event)
        s.auto_select(1)
        s.apply()
    assert events == ["refreshed", "reused", "reused", "reused"] * 2
    ref = diffusion_generate(model, PROMPT, 8, steps=8, block_length=4, cache=cache,
                             measure_memory=False)
    assert s.region == ref.token_ids
    assert [r.kv_cache for r in s.records] == [r.kv_cache for r in ref.trace]
    assert s.to_result().kv_refreshes == 2 and s.to_result().cache == cache
    s.rewind(5)  # inside block 1: its cache (built at step 4) is in force again
    assert s.passes.kv_block == 1 and s.passes.kv is s.history[4].kv
    s.forward()
    assert s.kv_event == "reused"
    s.rewind(2)
    assert s.passes.kv_block == 0
    with pytest.raises(Exception, match="needs blocks"):
        Stepper(model, PROMPT, 8, None, cache=cache)
