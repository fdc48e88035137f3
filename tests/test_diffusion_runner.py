"""The Diffusion tab's runner (ui/diffusion_runner.py), without any UI: the panel's conventions
mapped onto the samplers, server limits, labels that name what a result shows, the session log."""

import pytest

from models.common import UserError
from tests.conftest import have

pytestmark = pytest.mark.skipif(not (have("tiny-bert") and have("tiny-gpt2")),
                                reason="embedded tiny-bert / tiny-gpt2 missing")

PROMPT = "the capital of japan is"
DIFF = "tiny-diffusion" if have("tiny-diffusion") else "tiny-bert"


@pytest.fixture(scope="module")
def ctx():
    from ui.app import AppConfig, make_context

    return make_context(AppConfig())


def test_zero_means_the_default_and_the_sampler_checks_the_rest(ctx):
    from ui.diffusion_runner import diffusion_settings

    s = diffusion_settings(ctx, DIFF, PROMPT, 16, 0, 0, "low_confidence", 0, None, None)
    assert (s.steps, s.block_length, s.threshold, s.temperature, s.seed) == (None, None, None,
                                                                             0.0, 0)
    assert (s.top_k, s.top_p, s.cache, s.early_stop, s.mode) == (None, None, "none", False,
                                                                 "commit")
    s = diffusion_settings(ctx, DIFF, PROMPT, 16, 8, 4, "random", 0.9, 0.5, 3, 5, 0.8, "dual",
                           True)
    assert s.commit_kwargs() == dict(steps=8, block_length=4, strategy="random", threshold=0.9,
                                     temperature=0.5, top_k=5, top_p=0.8, cache="dual",
                                     early_stop=True)
    label = s.label()
    for part in (DIFF, PROMPT, "16 positions", "threshold 0.9", "block length 4", "random",
                 "KV cache dual", "early stop", "temperature 0.5", "top-k 5", "seed 3"):
        assert part in label, part
    # the panel does not validate what the sampler validates: one message, from the sampler
    bad = diffusion_settings(ctx, DIFF, PROMPT, 8, 9, 0, "low_confidence", 0, 0, 0)
    with pytest.raises(UserError, match="steps must be between 1 and 8"):
        bad.run(ctx.load(DIFF))


def test_server_limits_and_offered_models(ctx):
    from ui.diffusion_runner import ar_settings, diffusion_settings, length_limit

    with pytest.raises(UserError, match="diffusion or fill-mask"):
        diffusion_settings(ctx, "tiny-gpt2", PROMPT, 8, 0, 0, "low_confidence", 0, 0, 0)
    with pytest.raises(UserError, match="over this server's limit"):
        diffusion_settings(ctx, DIFF, PROMPT, 10_000, 0, 0, "low_confidence", 0, 0, 0)
    with pytest.raises(UserError, match="autoregressive"):
        ar_settings(ctx, DIFF, 0, 0, 1, default_length=8)
    ar = ar_settings(ctx, "tiny-gpt2", 0, 0.7, 0.9, default_length=12)
    assert (ar.length, ar.temperature, ar.top_p) == (12, 0.7, 0.9)
    assert "at most 12 tokens" in ar.label() and "top-p 0.9" in ar.label()
    # the length box follows the model's context: 128 positions less [CLS] and [SEP]
    assert length_limit(ctx, DIFF) == min(126, ctx.config.max_generation_length)


def test_remask_mode_and_what_it_cannot_do(ctx):
    from ui.diffusion_runner import diffusion_settings

    s = diffusion_settings(ctx, DIFF, PROMPT, 8, 4, 0, "low_confidence", 0, 0.8, 0, 5, 1.0,
                           "none", False, "remask", "cosine", "top_k")
    res = s.run(ctx.load(DIFF))
    assert res.strategy == "remask_cosine" and res.sampling == "top_k" and res.steps == 4
    cached = diffusion_settings(ctx, DIFF, PROMPT, 8, 4, 4, "low_confidence", 0, 0, 0, 0, 1.0,
                                "dual", False, "remask")
    with pytest.raises(UserError, match="serve the commit mode"):
        cached.run(ctx.load(DIFF))


def test_runs_are_recorded_in_the_session_log_with_their_settings(ctx):
    from ui.diffusion_runner import DiffusionRunner, ar_settings, diffusion_settings
    from ui.state import Session

    session, runner = Session(), DiffusionRunner()
    s = diffusion_settings(ctx, DIFF, PROMPT, 8, 4, 4, "low_confidence", 0, 0, 0)
    result, exports = runner.generate(ctx, session, s)
    entry = session.log[-1]
    assert entry["action"] == "diffusion generate" and entry["settings"]["length"] == 8
    assert result.text in entry["result"] and "KV cache none" in entry["result"]
    assert runner.run_label == s.label() and runner.job == 1
    ar = ar_settings(ctx, "tiny-gpt2", 0, 0, 1, default_length=8)
    d, a, pair_exports = runner.side_by_side(ctx, session, s, ar)
    assert session.log[-1]["action"] == "diffusion vs autoregressive"
    assert session.log[-1]["settings"]["ar"]["model"] == "tiny-gpt2"
    assert not exports.gif.exists()  # the previous run's files are replaced
    assert pair_exports.pair_gif.read_bytes()[:3] == b"GIF" and runner.job == 2
    with pytest.raises(UserError, match="Initialise first"):
        runner.require_stepper()


def test_quality_needs_what_it_reads(ctx):
    from ui.diffusion_runner import DiffusionRunner

    assert DiffusionRunner._quality(ctx, "(none)", False) is None
    with pytest.raises(UserError, match="causal reference model"):
        DiffusionRunner._quality(ctx, "tiny-bert", False)
    q = DiffusionRunner._quality(ctx, "tiny-gpt2", False)
    assert q.fluency.name == "tiny-gpt2" and q.relevance is None
