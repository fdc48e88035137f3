"""Every hub entry of the registry, offline, through the code path a real checkpoint takes.

For bert-base-uncased, gpt2, TinyLlama/TinyLlama-1.1B-Chat-v1.0 and roberta-base a stand-in
(tests/standins.py: the real architecture and config values, 2 layers, random weights, a
tokenizer of the same kind) is placed in a temporary HuggingFace cache under the real repo id;
the registry then finds it "in the local HuggingFace cache" and transformers loads it by its hub
id with HF_HUB_OFFLINE=1, exactly as it would a downloaded checkpoint.
"""

from __future__ import annotations

import numpy as np
import pytest

from tests import standins

pytestmark = pytest.mark.slow

HUB = {"bert-base-uncased": "bert", "gpt2": "gpt2",
       "TinyLlama/TinyLlama-1.1B-Chat-v1.0": "tinyllama", "roberta-base": "roberta"}
LIMITS = {"bert-base-uncased": 512, "roberta-base": 512, "gpt2": 1024,
          "TinyLlama/TinyLlama-1.1B-Chat-v1.0": 2048}
COMMIT = "0" * 40


def install_in_cache(folder, repo_id: str, cache) -> None:
    """Lay a model folder out as huggingface_hub's cache does: models--org--name/snapshots/
    <commit>/<files> and refs/main holding the commit."""
    import shutil

    repo = cache / ("models--" + repo_id.replace("/", "--"))
    snapshot = repo / "snapshots" / COMMIT
    shutil.copytree(folder, snapshot)
    (repo / "refs").mkdir(parents=True, exist_ok=True)
    (repo / "refs" / "main").write_text(COMMIT)


@pytest.fixture(scope="module")
def hub_cache(tmp_path_factory):
    """A HuggingFace cache holding the four stand-ins; the hub constants point at it."""
    import huggingface_hub.constants as hf_constants

    from models.loading import MODELS

    cache = tmp_path_factory.mktemp("hf-cache")
    build = tmp_path_factory.mktemp("standins")
    for repo_id, kind in HUB.items():
        install_in_cache(standins.build(kind, build / kind), repo_id, cache)
    mp = pytest.MonkeyPatch()
    mp.setattr(hf_constants, "HF_HUB_CACHE", str(cache))
    mp.setenv("HF_HUB_OFFLINE", "1")
    MODELS.clear()
    yield cache
    MODELS.clear()
    mp.undo()


def _load(repo_id: str, dtype: str = "float32"):
    from models.loading import LoadOptions, load

    return load(repo_id, LoadOptions(dtype=dtype, device="cpu"))


@pytest.mark.parametrize("repo_id", list(HUB))
def test_hub_entry_is_found_in_the_cache_and_described(hub_cache, repo_id):
    from models.registry import describe, resolve

    row = describe(resolve(repo_id))
    assert row["available"] and "cache" in row["reason"], row
    assert row["n_layers"] == 2  # the stand-in's (the real config says more; see standin.json)
    assert row["params"] == _load(repo_id).params  # from safetensors headers, no weights loaded


@pytest.mark.parametrize("repo_id", list(HUB))
@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
def test_hub_entry_is_analysed_and_predicts(hub_cache, repo_id, dtype):
    from analysis.run import analyze_model, continuation_of
    from models.predictions import predict

    loaded = _load(repo_id, dtype)
    assert loaded.dtype == dtype and next(loaded.model.parameters()).dtype.__repr__().endswith(
        dtype)
    assert loaded.attention == "dashboard"  # eager-equivalent, checked at load
    masked = loaded.task == "fill-mask"
    prompt = "the capital of japan is [MASK]." if masked else "the capital of japan is"
    r = analyze_model(loaded, [prompt])
    assert r.info.dtype == dtype and r.layers.n_layers == 2
    # metrics are float64 whatever the weights' dtype, and defined on every layer
    assert r.layers.effective_rank.dtype == np.float64
    assert np.isfinite(r.layers.effective_rank).all()
    assert np.allclose(r.trace.attentions.sum(-1), 1.0, atol=2e-2 if dtype == "bfloat16" else 1e-4)
    if loaded.causal:
        assert np.all(np.triu(r.trace.attentions, k=1) == 0)
    else:
        assert np.triu(r.trace.attentions, k=1).max() > 0  # bidirectional
    probs = [p.probability for p in r.predictions.top]
    assert probs == sorted(probs, reverse=True) and 0 < sum(probs) <= 1 + 1e-6
    at = r.lens.positions.index(r.lens.predicted[0])
    lens_token, lens_prob = r.lens.top_tokens[-1][at].strip(), float(r.lens.top_probs[-1, at])
    top = r.predictions.top[0]
    if dtype == "float32":  # the lens's last layer is the model's own prediction
        assert lens_token == top.token
    else:  # the same, or a near tie (random weights) that bfloat16 rounding decided otherwise
        assert lens_token == top.token or abs(lens_prob - top.probability) <= 0.05 * top.probability
    if loaded.causal:
        assert isinstance(continuation_of(loaded, r), str)
    out = predict(loaded, prompt, top_k=3, max_new_tokens=4)
    assert len(out["predictions"]) == 3 and out["model"] == repo_id


@pytest.mark.parametrize("repo_id", list(HUB))
def test_a_prompt_over_the_real_context_limit_is_fitted(hub_cache, repo_id, tmp_path_factory):
    """A prompt longer than the checkpoint's real context is analysed at exactly that limit
    (TinyLlama at 2048 tokens runs a quarter-width stand-in: real width takes minutes here)."""
    import huggingface_hub.constants as hf_constants

    from analysis.run import analyze_model
    from models.common import context_limit
    from models.loading import MODELS

    limit = LIMITS[repo_id]
    mp = pytest.MonkeyPatch()
    try:
        if HUB[repo_id] == "tinyllama":
            cache = tmp_path_factory.mktemp("hf-cache-narrow")
            folder = standins.build_tinyllama(tmp_path_factory.mktemp("narrow") / "t", width="narrow")
            install_in_cache(folder, repo_id, cache)
            mp.setattr(hf_constants, "HF_HUB_CACHE", str(cache))
            MODELS.clear()
        loaded = _load(repo_id)
        assert context_limit(loaded.model) == limit
        masked = loaded.task == "fill-mask"
        words = " ".join(["the capital of japan is tokyo ."] * (limit // 3))
        prompt = ("the capital of japan is [MASK]. " + words) if masked else words
        r = analyze_model(loaded, [prompt], gradients=False)  # the fitting is what is tested
        assert r.trace.n_tokens == limit
        assert any(f"takes {limit}" in n or f"{repo_id} takes" in n for n in r.trace.notices)
        if masked:
            assert r.predictions is not None  # the [MASK] was kept in the window
    finally:
        mp.undo()
        if HUB[repo_id] == "tinyllama":
            MODELS.clear()


MASKED_LMS = [repo_id for repo_id, kind in HUB.items() if kind in ("bert", "roberta")]


@pytest.mark.parametrize("repo_id", MASKED_LMS)
def test_masked_lm_generates_by_diffusion_and_in_step_mode(hub_cache, repo_id):
    """The masked LMs (real vocabulary, 2 layers) through `generate`'s sampler and step mode:
    3 positions, 3 steps, so each step commits exactly one position and never changes it."""
    from models.common import token_texts
    from models.generation import diffusion_generate
    from models.interactive import Stepper

    loaded = _load(repo_id)
    assert loaded.task == "fill-mask" and loaded.paradigm == "masked"
    prompt = "the capital of japan is"
    r = diffusion_generate(loaded, prompt, 3, steps=3, seed=0)
    assert r.paradigm == "diffusion" and r.noise == "masked" and r.positions == 3
    assert r.nfe == r.steps == len(r.trace) == 3
    assert sorted(c["position"] for rec in r.trace for c in rec.committed) == [0, 1, 2]
    for i, rec in enumerate(r.trace):
        assert rec.tokens.count(r.mask_token) == 2 - i and len(rec.committed) == 1
        c = rec.committed[0]
        assert 0 < c["confidence"] <= 1
        assert all(later.tokens[c["position"]] == c["token"] for later in r.trace[i:])
    assert r.trace[-1].tokens == token_texts(loaded.tokenizer, r.token_ids)
    assert loaded.mask_id not in r.token_ids
    assert r.peak_memory_mb is not None and r.peak_memory_mb > 0  # the CPU profiler's replay
    # step mode: one forward pass, the most confident position committed with its candidate
    s = Stepper(loaded, prompt, 3, seed=0)
    assert s.step == 0 and s.masked == [0, 1, 2] and s.region == [loaded.mask_id] * 3
    view = s.forward()
    assert s.n_forward == 1 and [v.position for v in view] == [0, 1, 2]
    best = max(view, key=lambda v: v.confidence)
    assert s.auto_select(1, "low_confidence") == [best.position]
    rec = s.apply()
    assert s.step == 1 and rec.committed[0]["position"] == best.position
    assert s.region[best.position] == best.candidate_id
    assert s.masked == [p for p in (0, 1, 2) if p != best.position]
    # stepping greedily one position a step is the sampler's run, token for token
    s.finish(1)
    assert s.done and s.region == r.token_ids and s.n_forward == 3
