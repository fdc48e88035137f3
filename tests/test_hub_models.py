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
    assert r.lens.top_tokens[-1][r.lens.positions.index(r.lens.predicted[0])].strip() == \
        r.predictions.top[0].token  # the lens's last layer is the model's own prediction
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
