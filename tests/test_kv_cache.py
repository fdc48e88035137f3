"""Fast-dLLM's block KV cache (models/kv_cache.py) and early stopping (models/diffusion.py):
positions handled exactly, cache = no cache when a block is one position, refreshed once per
block, early stopping never drops a content token, and clear messages for what cannot work."""

from __future__ import annotations

import pytest
import torch

from models.common import UserError
from models.generation import diffusion_generate
from models.kv_cache import full_pass, window_pass
from models.loading import prepare
from models.registry import ModelEntry
from tests.conftest import have

WORDS = ["the", "capital", "of", "japan", "is", "tokyo", "france", "paris", "a", "cat", "sat",
         "on", "mat", "dog", "ran", "to", "big", "red", "house", "."]
SPECIAL = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
PROMPT = "the capital of japan is"


def _entry(name: str, task: str) -> ModelEntry:
    return ModelEntry(name, "local", task, "/nonexistent")


@pytest.fixture(scope="module")
def bert():
    """A tiny random BERT masked LM with the dashboard attention (so it can use the cache)."""
    from transformers import BertConfig, BertForMaskedLM, BertTokenizer

    vocab = SPECIAL + WORDS
    tok = BertTokenizer(vocab={w: i for i, w in enumerate(vocab)})
    torch.manual_seed(0)
    cfg = BertConfig(vocab_size=len(vocab), hidden_size=32, num_hidden_layers=2,
                     num_attention_heads=2, intermediate_size=64, max_position_embeddings=64,
                     attn_implementation="eager")
    loaded = prepare(_entry("test-bert", "diffusion"), BertForMaskedLM(cfg), tok)
    assert loaded.attention == "dashboard"
    return loaded


@pytest.fixture(scope="module")
def roberta(bert):
    """A tiny random RoBERTa: its positions start at padding_idx + 1, not 0."""
    from transformers import RobertaConfig, RobertaForMaskedLM

    torch.manual_seed(1)
    cfg = RobertaConfig(vocab_size=len(bert.tokenizer), hidden_size=32, num_hidden_layers=2,
                        num_attention_heads=2, intermediate_size=64, max_position_embeddings=70,
                        pad_token_id=0, attn_implementation="eager")
    loaded = prepare(_entry("test-roberta", "fill-mask"), RobertaForMaskedLM(cfg), bert.tokenizer)
    assert loaded.attention == "dashboard"
    return loaded


def _sequence(loaded, length: int) -> tuple[torch.Tensor, int]:
    tok = loaded.tokenizer
    ids = tok(PROMPT)["input_ids"]
    return torch.tensor([ids[:-1] + [tok.mask_token_id] * length + [ids[-1]]]), len(ids) - 1


@pytest.mark.parametrize("which", ["bert", "roberta"])
@pytest.mark.parametrize("mode", ["prefix", "dual"])
def test_a_window_over_a_fresh_cache_is_the_full_pass(which, mode, request):
    """Nothing changed since the cache was built: reading it gives the full pass's logits, so
    the window's absolute positions (learned embeddings, RoBERTa's offset) are right."""
    loaded = request.getfixturevalue(which)
    x, start = _sequence(loaded, 12)
    with torch.inference_mode():
        full, kv = full_pass(loaded.model, x)
        plain = loaded.model(input_ids=x).logits
        for first in (0, 4, 8):
            win = window_pass(loaded.model, x, start + first, start + first + 4, kv, mode)
            stop = start + first + 4 if mode == "dual" else x.shape[1]
            assert win.shape[1] == stop - start - first
            torch.testing.assert_close(win, full[:, start + first:stop], atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(full, plain)  # keeping the key/value states changes nothing


@pytest.mark.parametrize("mode", ["prefix", "dual"])
@pytest.mark.parametrize("kwargs", [dict(steps=8), dict(threshold=0.5),
                                    dict(temperature=1.0, seed=3), dict(steps=8, cfg_scale=1.0),
                                    dict(strategy="random", steps=8)])
def test_cache_equals_no_cache_when_the_block_is_one_position(bert, mode, kwargs):
    """Every step is a block boundary: the cache is rebuilt by a full pass each time."""
    plain = diffusion_generate(bert, PROMPT, 8, block_length=1, measure_memory=False, **kwargs)
    cached = diffusion_generate(bert, PROMPT, 8, block_length=1, cache=mode,
                                measure_memory=False, **kwargs)
    assert cached.token_ids == plain.token_ids and cached.text == plain.text
    assert [r.committed for r in cached.trace] == [r.committed for r in plain.trace]
    assert [r.candidates for r in cached.trace] == [r.candidates for r in plain.trace]
    assert cached.nfe == plain.nfe and cached.kv_refreshes == 8
    assert {r.kv_cache for r in cached.trace} == {"refreshed"}
    assert {r.kv_cache for r in plain.trace} == {None} and plain.kv_refreshes == 0


@pytest.mark.parametrize("mode", ["prefix", "dual"])
def test_refreshed_at_each_block_boundary_and_reused_inside(bert, mode):
    res = diffusion_generate(bert, PROMPT, 12, steps=12, block_length=4, cache=mode,
                             measure_memory=False)
    assert res.kv_refreshes == 3 and res.cache == mode
    for r in res.trace:  # one position per step: steps 1, 5, 9 open blocks 0, 1, 2
        assert r.kv_cache == ("refreshed" if (r.step - 1) % 4 == 0 else "reused"), r.step
    assert [r.block for r in res.trace] == [0] * 4 + [1] * 4 + [2] * 4
    assert res.mask_token not in res.tokens
    js = res.to_json()
    assert js["cache"] == mode and js["kv_refreshes"] == 3
    assert js["trace"][0]["kv_cache"] == "refreshed" and js["trace"][1]["kv_cache"] == "reused"


def test_a_dual_window_reads_only_its_block(bert):
    """The dual cache's passes compute the block's positions: the trace's candidates inside a
    block cover the block only (the full pass at its boundary covers every masked position)."""
    res = diffusion_generate(bert, PROMPT, 8, steps=8, block_length=4, cache="dual",
                             measure_memory=False)
    for r in res.trace:
        positions = {c["position"] for c in r.candidates}
        if r.kv_cache == "reused":
            assert positions <= set(range(4 * r.block, 4 * r.block + 4))
        else:
            assert max(positions) >= 4 * (r.block + 1) or r.block == 1


# ---------------------------------------------------------------------------- early stop


class EndsAt(torch.nn.Module):
    """A fake masked LM: content WORDS[position % 5] before absolute position ``end``, [SEP]
    (id 3) from there on; counts its forward passes."""

    def __init__(self, vocab: int, end: int):
        from types import SimpleNamespace

        super().__init__()
        self.vocab, self.end, self.calls = vocab, end, 0
        self.dummy = torch.nn.Parameter(torch.zeros(1))
        self.config = SimpleNamespace(max_position_embeddings=64, model_type="fake")

    def forward(self, input_ids, **_):
        from types import SimpleNamespace

        self.calls += 1
        b, t = input_ids.shape
        logits = torch.zeros(b, t, self.vocab)
        logits[:, torch.arange(t), len(SPECIAL) + torch.arange(t) % 5] = 30.0
        logits[:, self.end:] = 0.0
        logits[:, self.end:, 3] = 30.0
        return SimpleNamespace(logits=logits)


def test_early_stop_skips_the_blocks_after_the_end(bert):
    from models.loading import Loaded

    # [CLS] + five prompt words: the region starts at 6; content 3 tokens, [SEP] from 9 on
    model = EndsAt(len(bert.tokenizer), 9)
    fake = Loaded(_entry("ends", "diffusion"), model, bert.tokenizer)
    full = diffusion_generate(fake, PROMPT, 16, block_length=4, threshold=0.9,
                              measure_memory=False)
    assert full.nfe == 4 and not full.stop_note  # one pass per block
    early = diffusion_generate(fake, PROMPT, 16, block_length=4, threshold=0.9, early_stop=True,
                               measure_memory=False)
    assert early.nfe == 1 and early.steps == 1  # block 0 holds the end: blocks 1-3 never run
    assert early.text == full.text and early.generated_tokens == full.generated_tokens == 3
    assert early.token_ids == full.token_ids[:4]  # content and its end token, like an AR run
    assert "early stop" in early.trace[-1].note and early.stop_note == early.trace[-1].note
    assert "12 masked positions" in early.stop_note and "3 later blocks never run" in early.stop_note
    assert early.trace[-1].tokens[4:] == [early.mask_token] * 12  # never computed: still masked
    assert early.to_json()["stop_note"] == early.stop_note


@pytest.mark.skipif(not have("tiny-diffusion"), reason="embedded tiny-diffusion missing")
def test_early_stop_never_drops_a_content_token():
    """On the capitals prompts and several settings, stopping early gives the same content
    (ids and text) as running every block, with at most as many forward passes."""
    from models.compare import CAPITALS_FILE, read_prompts_file
    from models.loading import load

    model = load("tiny-diffusion")
    prompts = [p for p, _ in read_prompts_file(CAPITALS_FILE)][:6]
    settings = [dict(length=32, block_length=8, threshold=0.9),
                dict(length=32, block_length=16, threshold=0.7, cache="dual"),
                dict(length=16, block_length=4, steps=8),
                dict(length=24, block_length=8, steps=24, strategy="low_entropy")]
    stopped = 0
    for kw in settings:
        for p in prompts:
            n = kw["length"]
            rest = {k: v for k, v in kw.items() if k != "length"}
            a = diffusion_generate(model, p, n, measure_memory=False, n_candidates=0, **rest)
            b = diffusion_generate(model, p, n, measure_memory=False, n_candidates=0,
                                   early_stop=True, **rest)
            content = a.generated_tokens
            assert b.generated_tokens == content and b.text == a.text, (p, kw)
            assert b.token_ids[:content] == a.token_ids[:content], (p, kw)
            assert b.nfe <= a.nfe
            stopped += bool(b.stop_note)
    assert stopped > 0  # and it did stop early somewhere


# ---------------------------------------------------------------------------- bad input


def test_a_cache_needs_blocks(bert):
    with pytest.raises(UserError, match="needs blocks.*block length.*cache 'none'"):
        diffusion_generate(bert, PROMPT, 8, cache="dual")
    with pytest.raises(UserError, match="needs blocks"):
        diffusion_generate(bert, PROMPT, 8, block_length=8, cache="prefix")
    with pytest.raises(UserError, match="Unknown cache 'full'; choose one of none, prefix, dual"):
        diffusion_generate(bert, PROMPT, 8, block_length=4, cache="full")


def test_a_cache_needs_the_dashboard_attention(bert):
    from models.loading import Loaded

    own = Loaded(_entry("own-attention", "diffusion"), EndsAt(len(bert.tokenizer), 9),
                 bert.tokenizer)  # runs its own attention code, like LLaDA's remote code
    with pytest.raises(UserError, match="does not run.*use cache 'none'"):
        diffusion_generate(own, PROMPT, 8, block_length=4, cache="dual")


def test_an_autoregressive_model_gets_the_diffusion_message(bert):
    from transformers import GPT2Config, GPT2LMHeadModel

    cfg = GPT2Config(vocab_size=len(bert.tokenizer), n_embd=16, n_layer=1, n_head=2,
                     n_positions=32)
    gpt = prepare(_entry("test-gpt", "causal"), GPT2LMHeadModel(cfg), bert.tokenizer)
    with pytest.raises(UserError, match="causal.*masked or diffusion model"):
        diffusion_generate(gpt, PROMPT, 8, block_length=4, cache="dual")
