"""Registry and loading: offline-aware, eager, eval, safetensors only, bounded cache, clear errors."""

import json
import shutil
import subprocess
import sys
import time

import pytest

from models.common import UserError
from models.loading import LoadOptions, ModelStore, load_uncached
from models.registry import availability, builtin_entries, describe, resolve
from tests.conftest import EMBEDDED, ROOT

EMBEDDED_NAMES = ["tiny-bert", "tiny-gpt2", "tiny-llama"]


def test_hub_entries_are_registered_with_tasks():
    by_name = {e.name: e for e in builtin_entries()}
    assert by_name["bert-base-uncased"].task == "fill-mask"
    assert by_name["gpt2"].task == "causal"
    assert by_name["TinyLlama/TinyLlama-1.1B-Chat-v1.0"].task == "causal"
    assert by_name["roberta-base"].task == "fill-mask"
    assert by_name["GSAI-ML/LLaDA-8B-Instruct"].task == "diffusion"
    assert by_name["GSAI-ML/LLaDA-8B-Instruct"].needs_remote_code


def test_offline_hub_model_is_unavailable_quickly():
    entry = resolve("gpt2")
    t0 = time.perf_counter()
    av = availability(entry)
    assert time.perf_counter() - t0 < 2.0
    if av.available:  # only if someone has it in their local cache
        assert "cache" in av.reason
    else:
        assert "HF_HUB_OFFLINE" in av.reason


def test_models_json_lists_embedded_models_with_real_counts(tmp_path):
    out = tmp_path / "models.json"
    t0 = time.perf_counter()
    proc = subprocess.run([sys.executable, "dashboard.py", "models", "--json", str(out)],
                          cwd=ROOT, capture_output=True, text=True,
                          env={"HF_HUB_OFFLINE": "1", "PATH": "/usr/bin:/bin"})
    assert proc.returncode == 0, proc.stderr
    assert time.perf_counter() - t0 < 20
    rows = {r["name"]: r for r in json.loads(out.read_text())}
    for name in EMBEDDED_NAMES:
        r = rows[name]
        assert r["available"] is True and r["family"] == "embedded"
        cfg = json.loads((EMBEDDED / name / "config.json").read_text())
        assert r["n_layers"] == cfg.get("num_hidden_layers", cfg.get("n_layer"))
        assert r["n_heads"] == cfg.get("num_attention_heads", cfg.get("n_head"))
        assert 100_000 < r["params"] < 2_500_000
    assert rows["gpt2"]["available"] is False
    assert set(rows["gpt2"]) == {"name", "family", "task", "available", "reason", "n_layers",
                                 "n_heads", "params"}


def test_embedded_models_are_small_and_have_distinct_depths():
    depths = []
    for name in EMBEDDED_NAMES:
        row = describe(resolve(name))
        size = sum(p.stat().st_size for p in (EMBEDDED / name).iterdir())
        assert size < 10 * 2**20, f"{name} is {size} bytes"
        depths.append(row["n_layers"])
    assert len(set(depths)) == len(depths) and 12 not in depths


def test_loaded_models_run_eager_attention_in_eval_mode(gpt2, bert, llama):
    """Loaded with eager attention, then switched to the project's registered implementation
    (models.attention) only because it gives exactly eager's numbers: the same logits and
    attention weights as a fresh eager load of the same checkpoint."""
    import torch
    from transformers import AutoModelForCausalLM, AutoModelForMaskedLM

    for loaded in (gpt2, bert, llama):
        assert not any(m.training for m in loaded.model.modules())
        assert loaded.model.config._attn_implementation == loaded.attention == "dashboard"
        auto = AutoModelForCausalLM if loaded.causal else AutoModelForMaskedLM
        eager = auto.from_pretrained(loaded.entry.source, attn_implementation="eager").eval()
        ids = torch.tensor([[3, 7, 11, 5, 9, 13]])
        with torch.no_grad():
            ref = eager(input_ids=ids, output_attentions=True)
            got = loaded.model(input_ids=ids, output_attentions=True)
        assert torch.equal(ref.logits, got.logits)
        for a, b in zip(ref.attentions, got.attentions, strict=True):
            assert torch.equal(a, b)


def test_llama_uses_grouped_query_attention(llama):
    cfg = llama.model.config
    assert cfg.num_key_value_heads < cfg.num_attention_heads
    assert llama.tokenizer.chat_template


def test_unknown_and_bad_names_raise_user_error():
    for bad in ["", "   ", "nope-not-a-model", "../../etc", "https://evil.example/x",
                "a;rm -rf /", "$(reboot)"]:
        with pytest.raises(UserError):
            ModelStore().get(bad)


def test_folder_without_model_and_corrupt_weights(tmp_path):
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(UserError, match="no config.json"):
        resolve(str(empty))
    broken = tmp_path / "broken"
    shutil.copytree(EMBEDDED / "tiny-gpt2", broken)
    (broken / "model.safetensors").write_bytes(b"\x00garbage" * 10)
    with pytest.raises(UserError, match="Could not load"):
        load_uncached(resolve(str(broken)))


def test_pickle_only_folder_is_refused_without_flag(tmp_path):
    folder = tmp_path / "pickled"
    shutil.copytree(EMBEDDED / "tiny-gpt2", folder)
    (folder / "model.safetensors").unlink()
    (folder / "pytorch_model.bin").write_bytes(b"not really")
    with pytest.raises(UserError, match="pickle"):
        load_uncached(resolve(str(folder)))


def test_remote_code_needs_the_flag():
    entry = resolve("GSAI-ML/LLaDA-8B-Instruct")
    with pytest.raises(UserError, match="trust-remote-code"):
        load_uncached(entry, LoadOptions(trust_remote_code=False))


def test_local_folder_loads_and_infers_task(tmp_path):
    folder = tmp_path / "copy"
    shutil.copytree(EMBEDDED / "tiny-bert", folder)
    entry = resolve(str(folder))
    assert entry.family == "local" and entry.task == "fill-mask"
    loaded = load_uncached(entry)
    assert loaded.n_layers == describe(resolve("tiny-bert"))["n_layers"]


def test_cache_is_lru_bounded_and_survives_a_failed_load(tmp_path):
    cache = ModelStore(max_models=2)
    a = cache.get("tiny-gpt2")
    cache.get("tiny-bert")
    assert cache.get("tiny-gpt2") is a  # a hit moves it to the end
    broken = tmp_path / "broken"
    shutil.copytree(EMBEDDED / "tiny-gpt2", broken)
    (broken / "model.safetensors").write_bytes(b"junk")
    with pytest.raises(UserError):
        cache.get(str(broken))
    assert cache.names() == ["tiny-bert", "tiny-gpt2"]  # the failure changed nothing
    assert cache.get("tiny-gpt2") is a  # still usable
    cache.get("tiny-llama")  # evicts the least recently used: tiny-bert
    assert cache.names() == ["tiny-gpt2", "tiny-llama"]


def test_loads_freeze_long_lived_objects_and_evicted_models_are_freed():
    """After a load the garbage collector's long-lived objects are frozen (no 0.5 s full
    collections later); an evicted model is still freed, even from inside a reference cycle."""
    import gc
    import weakref

    cache = ModelStore(max_models=1)
    first = cache.get("tiny-gpt2")
    assert gc.get_freeze_count() > 0
    first.model.cycle = [first.model]  # a reference cycle only the collector can free
    gone = weakref.ref(first.model)
    del first
    cache.get("tiny-bert")  # evicts tiny-gpt2
    assert gone() is None


def test_task_mismatch_is_a_user_error(gpt2):
    from models.loading import require_task

    with pytest.raises(UserError, match="causal model"):
        require_task(gpt2, ("fill-mask",), "mask filling")
