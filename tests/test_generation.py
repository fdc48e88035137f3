"""Tests for models/generation.py and reports/diffusion_export.py on tiny random models."""

from __future__ import annotations

import io
import math
import zipfile
from types import SimpleNamespace

import pytest
import torch

from models.errors import UserError
from models.generation import (
    PENDING,
    GenerationResult,
    autoregressive_generate,
    compare,
    diffusion_generate,
    mask_schedule,
    num_transfer_tokens,
    process_logits,
    read_prompts_file,
    remask_counts,
    remask_generate,
    split_steps,
)
from models.loading import Loaded
from models.registry import ModelEntry

WORDS = ["the", "capital", "of", "japan", "is", "tokyo", "france", "paris", "a", "cat", "sat",
         "on", "mat", "dog", "ran", "to", "big", "red", "house", "."]
SPECIAL = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]


def _entry(name: str, task: str) -> ModelEntry:
    return ModelEntry(name, "local", task, "/nonexistent")


@pytest.fixture(scope="module")
def bert():
    from transformers import BertConfig, BertForMaskedLM, BertTokenizer

    vocab = SPECIAL + WORDS
    tok = BertTokenizer(vocab={w: i for i, w in enumerate(vocab)})
    torch.manual_seed(0)
    cfg = BertConfig(vocab_size=len(vocab), hidden_size=32, num_hidden_layers=2,
                     num_attention_heads=2, intermediate_size=64, max_position_embeddings=64,
                     attn_implementation="eager")
    model = BertForMaskedLM(cfg).eval()
    return Loaded(_entry("test-diffusion", "diffusion"), model, tok)


@pytest.fixture(scope="module")
def gpt2():
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import GPT2Config, GPT2LMHeadModel, PreTrainedTokenizerFast

    vocab = ["<eos>", "<unk>"] + WORDS
    wl = Tokenizer(models.WordLevel({w: i for i, w in enumerate(vocab)}, unk_token="<unk>"))
    wl.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    tok = PreTrainedTokenizerFast(tokenizer_object=wl, eos_token="<eos>", unk_token="<unk>")
    torch.manual_seed(0)
    cfg = GPT2Config(vocab_size=len(vocab), n_embd=32, n_layer=2, n_head=2, n_positions=64,
                     bos_token_id=0, eos_token_id=0, attn_implementation="eager")
    model = GPT2LMHeadModel(cfg).eval()
    return Loaded(_entry("test-gpt2", "causal"), model, tok)


class Peaked(torch.nn.Module):
    """A fake masked LM: every position predicts word WORDS[position % 5] with logit 30."""

    def __init__(self, vocab: int):
        super().__init__()
        self.vocab = vocab
        self.dummy = torch.nn.Parameter(torch.zeros(1))
        self.config = SimpleNamespace(max_position_embeddings=64, model_type="fake")

    def forward(self, input_ids, **_):
        b, t = input_ids.shape
        logits = torch.zeros(b, t, self.vocab)
        target = len(SPECIAL) + torch.arange(t) % 5
        logits[:, torch.arange(t), target] = 30.0
        return SimpleNamespace(logits=logits)


@pytest.fixture(scope="module")
def peaked(bert):
    return Loaded(_entry("peaked", "diffusion"), Peaked(len(bert.tokenizer)), bert.tokenizer)


PROMPT = "the capital of japan is"


def _masked_positions(result: GenerationResult, record) -> set[int]:
    return {p for p, t in enumerate(record.tokens) if t == result.mask_token}


# ---------------------------------------------------------------------------- schedules


def test_num_transfer_tokens_spreads_evenly():
    assert num_transfer_tokens(10, 4) == [3, 3, 2, 2]
    assert num_transfer_tokens(8, 8) == [1] * 8
    assert sum(num_transfer_tokens(17, 5)) == 17
    assert split_steps(10, 4) == [3, 3, 2, 2]


def test_mask_schedules_by_hand():
    assert mask_schedule("linear", 5) == pytest.approx([0.8, 0.6, 0.4, 0.2, 0.0])
    cos = mask_schedule("cosine", 4)
    assert cos[:3] == pytest.approx([math.cos(math.pi / 8), math.cos(math.pi / 4),
                                     math.cos(3 * math.pi / 8)])
    assert cos[-1] == 0.0
    exp = mask_schedule("exponential", 5)
    assert exp[:4] == pytest.approx([math.exp(-1), math.exp(-2), math.exp(-3), math.exp(-4)])
    assert exp[-1] == 0.0
    assert remask_counts(10, 5, "linear") == [8, 6, 4, 2, 0]


def test_process_logits_top_k_top_p_and_forbidden():
    logits = torch.log(torch.tensor([0.5, 0.3, 0.15, 0.05]))
    z = process_logits(logits, top_k=2)
    assert torch.isinf(z[2:]).all() and torch.isfinite(z[:2]).all()
    z = process_logits(logits, top_p=0.7)  # 0.5 < 0.7 <= 0.8: keep the first two
    assert torch.isfinite(z[:2]).all() and torch.isinf(z[2:]).all()
    z = process_logits(logits, top_p=0.4)  # the most probable token always stays
    assert torch.isfinite(z[0]) and torch.isinf(z[1:]).all()
    z = process_logits(logits, forbidden=torch.tensor([True, False, False, False]))
    assert torch.isinf(z[0]) and z.dtype == torch.float64
    assert torch.isfinite(logits).all()  # input untouched


# ---------------------------------------------------------------------------- diffusion


def test_committed_tokens_never_change_and_no_mask_left(bert):
    res = diffusion_generate(bert, PROMPT, 8, steps=8)
    assert len(res.trace) == res.steps == 8
    assert res.nfe == 8
    seen: dict[int, str] = {}
    for r in res.trace:
        for c in r.committed:
            assert c["position"] not in seen
            seen[c["position"]] = c["token"]
            assert 0 < c["confidence"] <= 1
        for p, t in seen.items():
            assert r.tokens[p] == t
        assert len(r.tokens) == 8
    assert sorted(seen) == list(range(8))
    assert res.mask_token not in res.tokens
    assert res.trace[-1].tokens == res.tokens
    assert res.tokens == [bert.tokenizer.convert_ids_to_tokens(i) for i in res.token_ids]
    assert res.tokens_per_second == pytest.approx(res.length / res.seconds)
    assert res.time_per_token == pytest.approx(res.seconds / res.length)
    # special tokens other than [SEP] are never proposed
    banned = {bert.tokenizer.cls_token_id, bert.tokenizer.pad_token_id,
              bert.tokenizer.mask_token_id, bert.tokenizer.unk_token_id}
    assert not banned & set(res.token_ids)


def test_steps_fewer_than_length_commit_several_per_step(bert):
    res = diffusion_generate(bert, PROMPT, 8, steps=3)
    assert [len(r.committed) for r in res.trace] == [3, 3, 2]
    assert res.nfe == 3


def test_block_order_is_respected(bert):
    res = diffusion_generate(bert, PROMPT, 12, steps=6, block_length=4)
    assert len(res.trace) == 6
    done: set[int] = set()
    for r in res.trace:
        for c in r.committed:
            assert c["position"] // 4 == r.block
        assert all(p in done for p in range(4 * r.block))  # earlier blocks complete
        done |= {c["position"] for c in r.committed}
    assert [r.block for r in res.trace] == [0, 0, 1, 1, 2, 2]


def test_steps_not_divisible_by_blocks(bert):
    res = diffusion_generate(bert, PROMPT, 8, steps=5, block_length=4)
    assert [r.block for r in res.trace] == [0, 0, 0, 1, 1]
    assert res.mask_token not in res.tokens


def test_low_and_high_confidence_pick_extremes(bert):
    for strategy, pick in (("low_confidence", max), ("high_confidence", min)):
        res = diffusion_generate(bert, PROMPT, 6, steps=6, strategy=strategy, n_candidates=3)
        for r in res.trace:
            top1 = [c["top"][0]["probability"] for c in r.candidates]
            assert r.committed[0]["confidence"] == pytest.approx(pick(top1))


def test_strategies_give_different_orders(bert):
    orders = {}
    for strategy in ("low_confidence", "high_confidence", "low_entropy", "high_entropy",
                     "random"):
        res = diffusion_generate(bert, PROMPT, 8, steps=8, strategy=strategy)
        orders[strategy] = tuple(r.committed[0]["position"] for r in res.trace)
    assert len(set(orders.values())) >= 4
    again = diffusion_generate(bert, PROMPT, 8, steps=8, strategy="random")
    assert tuple(r.committed[0]["position"] for r in again.trace) == orders["random"]


def test_threshold_commits_confident_tokens_at_once(peaked):
    res = diffusion_generate(peaked, PROMPT, 8, threshold=0.9, block_length=4)
    assert res.steps == 2 and res.nfe == 2  # one pass per block instead of 8
    assert [len(r.committed) for r in res.trace] == [4, 4]
    start = 6  # [CLS] + five prompt words; Peaked predicts WORDS[absolute position % 5]
    assert res.tokens == [WORDS[(start + p) % 5] for p in range(8)]
    assert res.mask_token not in res.tokens


def test_threshold_one_commits_one_per_step(bert):
    res = diffusion_generate(bert, PROMPT, 6, threshold=1.0)
    assert res.steps == 6 == res.nfe
    assert all(len(r.committed) == 1 for r in res.trace)


def test_sampling_is_seeded(bert):
    a = diffusion_generate(bert, PROMPT, 8, temperature=1.0, seed=3)
    b = diffusion_generate(bert, PROMPT, 8, temperature=1.0, seed=3)
    assert a.token_ids == b.token_ids
    c = [diffusion_generate(bert, PROMPT, 8, temperature=5.0, seed=s).token_ids
         for s in range(4)]
    assert len({tuple(x) for x in c}) > 1


def test_cfg_counts_two_passes(bert):
    res = diffusion_generate(bert, PROMPT, 4, steps=4, cfg_scale=1.0)
    assert res.nfe == 8 and res.steps == 4
    assert res.mask_token not in res.tokens


def test_masks_go_before_final_sep(bert):
    res = diffusion_generate(bert, PROMPT, 4, steps=2)
    assert len(res.token_ids) == 4 and res.length == 4


def test_json_has_design_keys(bert):
    res = diffusion_generate(bert, PROMPT, 4, steps=2)
    js = res.to_json()
    assert list(js) == ["model", "paradigm", "prompt", "length", "steps", "block_length",
                        "strategy", "threshold", "nfe", "seconds", "tokens_per_second",
                        "peak_memory_mb", "text", "trace"]
    assert js["paradigm"] == "diffusion"
    t = js["trace"][0]
    assert {"step", "block", "committed", "tokens"} <= set(t)
    assert set(t["committed"][0]) == {"position", "token", "confidence"}
    assert t["tokens"].count("[MASK]") == 2  # mask text where still masked
    assert js["peak_memory_mb"] is None or js["peak_memory_mb"] >= 0
    res.dumps()


# ---------------------------------------------------------------------------- remask mode


@pytest.mark.parametrize("schedule", ["linear", "cosine", "exponential"])
def test_remask_counts_follow_schedule(bert, schedule):
    res = remask_generate(bert, PROMPT, 10, 5, schedule=schedule)
    expected = remask_counts(10, 5, schedule)
    assert [len(_masked_positions(res, r)) for r in res.trace] == expected
    assert res.nfe == 5 and len(res.trace) == 5
    assert res.mask_token not in res.tokens


def test_remask_sampling_modes(bert):
    for sampling in ("top_k", "nucleus"):
        res = remask_generate(bert, PROMPT, 6, 3, sampling=sampling, top_k=5, top_p=0.5)
        assert res.mask_token not in res.tokens and res.sampling == sampling


# ---------------------------------------------------------------------------- autoregressive


def test_ar_cache_matches_no_cache(gpt2):
    a = autoregressive_generate(gpt2, "the capital of", 10, use_cache=True)
    b = autoregressive_generate(gpt2, "the capital of", 10, use_cache=False)
    assert a.token_ids == b.token_ids
    assert a.nfe == a.steps == 10 == len(a.trace)
    full = gpt2.model(input_ids=torch.tensor([gpt2.tokenizer("the capital of")["input_ids"]
                                              + a.token_ids[:3]])).logits[0, -1]
    z = process_logits(full, torch.zeros(full.shape[-1], dtype=torch.bool)
                       .index_fill(0, torch.tensor([1]), True))  # <unk> is never proposed
    assert int(z.argmax()) == a.token_ids[3]


def test_ar_trace_format(gpt2):
    res = autoregressive_generate(gpt2, "the cat", 5)
    assert res.paradigm == "autoregressive" and res.block_length == 1
    for i, r in enumerate(res.trace, start=1):
        assert r.step == i and r.block == i - 1
        assert len(r.committed) == 1 and r.committed[0]["position"] == i - 1
        assert r.tokens[i:] == [PENDING] * (5 - i)
        assert PENDING not in r.tokens[:i]
    assert res.tokens_per_second == pytest.approx(5 / res.seconds)


def test_ar_stop_at_eos(gpt2):
    # sampling at a high temperature from a random model reaches <eos> (id 0) soon
    for seed in range(50):
        res = autoregressive_generate(gpt2, "the cat", 30, temperature=50.0, seed=seed)
        if 0 in res.token_ids:
            cut = res.token_ids.index(0)
            stopped = autoregressive_generate(gpt2, "the cat", 30, temperature=50.0, seed=seed,
                                              stop_at_eos=True)
            assert stopped.token_ids == res.token_ids[:cut + 1]
            assert stopped.length == stopped.nfe == cut + 1
            assert stopped.text == res.text
            return
    pytest.skip("no <eos> sampled")


# ---------------------------------------------------------------------------- bad input


@pytest.mark.parametrize("kwargs, match", [
    (dict(length=0), "length"),
    (dict(length=70), "at most"),
    (dict(length=8, steps=0), "steps"),
    (dict(length=8, steps=9), "steps"),
    (dict(length=8, block_length=3), "multiple"),
    (dict(length=8, steps=1, block_length=4), "number of blocks"),
    (dict(length=8, threshold=0.0), "threshold"),
    (dict(length=8, threshold=1.5), "threshold"),
    (dict(length=8, threshold=float("nan")), "threshold"),
    (dict(length=8, temperature=-1.0), "temperature"),
    (dict(length=8, temperature=float("nan")), "temperature"),
    (dict(length=8, temperature=float("inf")), "temperature"),
    (dict(length=8, top_k=0), "top_k"),
    (dict(length=8, top_p=0.0), "top_p"),
    (dict(length=8, top_p=1.2), "top_p"),
    (dict(length=8, strategy="best"), "strategy"),
    (dict(length=8, prompt="   "), "empty"),
    (dict(length=8, cfg_scale=-1.0), "cfg_scale"),
])
def test_diffusion_bad_input(bert, kwargs, match):
    kwargs = dict(kwargs)
    prompt = kwargs.pop("prompt", PROMPT)
    with pytest.raises(UserError, match=match):
        diffusion_generate(bert, prompt, **kwargs)


def test_causal_model_refused_by_diffusion(gpt2):
    with pytest.raises(UserError, match="causal"):
        diffusion_generate(gpt2, PROMPT, 4)


def test_model_without_mask_token_refused(gpt2):
    fake = Loaded(_entry("no-mask", "fill-mask"), gpt2.model, gpt2.tokenizer)
    with pytest.raises(UserError, match="no mask token"):
        diffusion_generate(fake, PROMPT, 4)


def test_remask_bad_input(bert):
    with pytest.raises(UserError, match="schedule"):
        remask_generate(bert, PROMPT, 4, 2, schedule="square")
    with pytest.raises(UserError, match="sampling"):
        remask_generate(bert, PROMPT, 4, 2, sampling="beam")
    with pytest.raises(UserError, match="steps"):
        remask_generate(bert, PROMPT, 4, 5)


@pytest.mark.parametrize("kwargs, match", [
    (dict(length=0), "length"),
    (dict(length=100), "at most"),
    (dict(length=4, temperature=-0.5), "temperature"),
    (dict(length=4, top_k=0), "top_k"),
    (dict(length=4, top_p=2.0), "top_p"),
])
def test_ar_bad_input(gpt2, kwargs, match):
    with pytest.raises(UserError, match=match):
        autoregressive_generate(gpt2, "the cat", **kwargs)


def test_ar_refuses_masked_model_and_empty_prompt(bert, gpt2):
    with pytest.raises(UserError, match="causal"):
        autoregressive_generate(bert, PROMPT, 4)
    with pytest.raises(UserError, match="empty"):
        autoregressive_generate(gpt2, "", 4)


# ---------------------------------------------------------------------------- comparison


def test_read_prompts_file(tmp_path):
    f = tmp_path / "p.txt"
    f.write_text("# comment\nthe capital of japan is\ttokyo\n\nthe cat sat on\n", encoding="utf-8")
    assert read_prompts_file(f) == [("the capital of japan is", "tokyo"), ("the cat sat on", None)]
    empty = tmp_path / "e.txt"
    empty.write_text("\n# nothing\n")
    binary = tmp_path / "b.bin"
    binary.write_bytes(b"abc\0def")
    huge = tmp_path / "h.txt"
    huge.write_bytes(b"a\n" * 600_000)
    for bad in (empty, binary, huge, tmp_path / "missing.txt", tmp_path):
        with pytest.raises(UserError):
            read_prompts_file(bad)


def test_compare(gpt2, bert):
    prompts = [("the capital of japan is", "tokyo"), ("the cat sat on", None)]
    out = compare(gpt2, bert, prompts, length=4, temperature=1.0, seeds=(0, 1))
    assert len(out["runs"]) == 4
    for paradigm in ("autoregressive", "diffusion"):
        s = out[paradigm]
        assert s["paradigm"] == paradigm and s["runs"] == 4
        assert s["n_scored"] == 2 and 0 <= s["accuracy"] <= 1
        assert 0 <= s["consistency"] <= 1
        assert s["tokens_per_second"] > 0 and s["mean_nfe"] == 4
        for row in out["runs"]:
            r = row[paradigm]
            if row["expected"] is None:
                assert r["correct"] is None
            else:
                assert r["correct"] == (row["expected"] in r["text"].lower())
    greedy = compare(gpt2, bert, prompts[1:], length=4, warmup=False)
    assert greedy["autoregressive"]["accuracy"] is None
    assert greedy["diffusion"]["consistency"] is None


# ---------------------------------------------------------------------------- exports


def test_export_zip(bert, gpt2, tmp_path):
    from PIL import Image

    from reports.diffusion_export import export_zip, trace_gif, trace_html

    res = diffusion_generate(bert, PROMPT, 8, steps=4, block_length=4)
    out = export_zip(res, tmp_path / "sub" / "steps.zip")
    with zipfile.ZipFile(out) as zf:
        assert sorted(zf.namelist()) == ["steps.gif", "trace.json", "viewer.html"]
        html = zf.read("viewer.html").decode()
        gif = Image.open(io.BytesIO(zf.read("steps.gif")))
        assert gif.n_frames == len(res.trace) + 1
    assert "<script src" not in html.lower()
    assert "ArrowLeft" in html and 'type="range"' in html
    assert not list((tmp_path / "sub").glob(".tmp-*"))
    # a prompt that tries to close the script element stays data
    evil = diffusion_generate(bert, "the cat </script><script>alert(1)</script>", 2)
    html = trace_html(evil)
    assert html.count("</script>") == 2
    ar = autoregressive_generate(gpt2, "the cat", 3)
    path = trace_gif(ar, tmp_path / "ar.gif")
    assert Image.open(path).n_frames == 4
