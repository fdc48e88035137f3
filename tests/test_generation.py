"""Tests for models/generation.py and reports/diffusion_export.py on tiny random models."""

from __future__ import annotations

import io
import math
import zipfile
from types import SimpleNamespace

import pytest
import torch

from models.common import UserError
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


class EndsAt(Peaked):
    """Like Peaked, but from absolute position ``end`` on every position predicts [SEP] (id 3):
    a diffusion model that fills the rest of its canvas with end-of-sequence tokens."""

    def __init__(self, vocab: int, end: int):
        super().__init__(vocab)
        self.end = end
        self.calls: list[bool] = []  # per forward pass: was the torch profiler running?

    def forward(self, input_ids, **_):
        self.calls.append(torch.autograd._profiler_enabled())
        out = super().forward(input_ids)
        out.logits[:, self.end:] = 0.0
        out.logits[:, self.end:, 3] = 30.0
        return out


class Hungry(Peaked):
    """Peaked that allocates (and frees) an 8 MiB scratch tensor in every forward pass."""

    def forward(self, input_ids, **_):
        scratch = torch.ones(2**21)  # 2**21 float32 = 8 MiB
        out = super().forward(input_ids)
        out.logits += scratch[0] - 1.0
        return out


class Fickle(Peaked):
    """Peaked whose predictions change from call to call: a replay cannot reproduce it."""

    def __init__(self, vocab: int):
        super().__init__(vocab)
        self.n = 0

    def forward(self, input_ids, **_):
        self.n += 1
        b, t = input_ids.shape
        logits = torch.zeros(b, t, self.vocab)
        logits[:, :, len(SPECIAL) + self.n % 7] = 30.0
        return SimpleNamespace(logits=logits)


class Scripted(torch.nn.Module):
    """A fake causal LM: after the prompt it writes ``script`` (ids), then 'cat' for ever."""

    def __init__(self, vocab: int, n_prompt: int, script: list[int], after: int):
        super().__init__()
        self.vocab, self.n_prompt, self.script, self.after = vocab, n_prompt, script, after
        self.dummy = torch.nn.Parameter(torch.zeros(1))
        self.config = SimpleNamespace(n_positions=64, model_type="fake")

    def forward(self, input_ids, past_key_values=None, use_cache=None, **_):
        past = past_key_values or 0
        b, t = input_ids.shape
        logits = torch.zeros(b, t, self.vocab)
        for i in range(t):
            g = past + i + 1 - self.n_prompt  # the generated index this position predicts
            logits[:, i, self.script[g] if 0 <= g < len(self.script) else self.after] = 30.0
        return SimpleNamespace(logits=logits, past_key_values=past + t)


@pytest.fixture(scope="module")
def ends(bert):
    # [CLS] + five prompt words = region start 6; content: three words, then [SEP] for ever
    return Loaded(_entry("ends", "diffusion"), EndsAt(len(bert.tokenizer), 9), bert.tokenizer)


@pytest.fixture(scope="module")
def scripted(gpt2):
    tok = gpt2.tokenizer
    script = [tok.convert_tokens_to_ids(w) for w in ("tokyo", ".")] + [tok.eos_token_id]
    model = Scripted(len(tok), len(tok("the cat")["input_ids"]), script,
                     tok.convert_tokens_to_ids("cat"))
    return Loaded(_entry("scripted", "causal"), model, tok)


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
    assert res.tokens_per_second == pytest.approx(res.generated_tokens / res.seconds)
    assert res.positions == res.length == 8
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


class Inputs:
    """Records the input ids of every forward pass of a model (a forward pre-hook)."""

    def __init__(self, module):
        self.ids: list[list[list[int]]] = []
        self.handle = module.register_forward_pre_hook(self.hook, with_kwargs=True)

    def hook(self, _module, args, kwargs):
        x = kwargs.get("input_ids", args[0] if args else None)
        self.ids.append(x.tolist())

    def __enter__(self):
        return self

    def __exit__(self, *_):
        self.handle.remove()


def test_masks_go_before_final_sep(bert):
    tok = bert.tokenizer
    encoded = tok(PROMPT)["input_ids"]  # [CLS] the capital of japan is [SEP]
    assert encoded[0] == tok.cls_token_id and encoded[-1] == tok.sep_token_id
    with Inputs(bert.model) as seen:
        res = diffusion_generate(bert, PROMPT, 4, steps=2)
    start = len(encoded) - 1  # the region starts where the prompt's [SEP] was
    first = seen.ids[0][0]
    # the first pass sees [CLS] prompt [MASK]*4 [SEP]: the masks sit before the final [SEP]
    assert first == encoded[:-1] + [tok.mask_token_id] * 4 + [tok.sep_token_id]
    # the second pass: the same frame, two of the four region positions committed
    second = seen.ids[1][0]
    assert second[:start] == encoded[:-1] and second[-1] == tok.sep_token_id
    assert len(second) == len(first)
    assert second[start:-1].count(tok.mask_token_id) == 2
    committed = {c["position"]: c["token_id"] for c in res.trace[0].committed}
    assert {p: second[start + p] for p in committed} == committed
    assert len(res.token_ids) == 4 and all(res.token_ids[p] == t for p, t in committed.items())


def test_json_has_design_keys(bert):
    res = diffusion_generate(bert, PROMPT, 4, steps=2)
    js = res.to_json()
    assert list(js) == ["model", "paradigm", "prompt", "length", "positions", "steps",
                        "block_length", "strategy", "threshold", "nfe", "generated_tokens",
                        "seconds", "tokens_per_second", "peak_memory_mb", "peak_memory_note",
                        "cache", "kv_refreshes", "early_stop", "stop_note", "text", "trace"]
    assert js["paradigm"] == "diffusion"
    t = js["trace"][0]
    assert {"step", "block", "committed", "tokens"} <= set(t)
    assert set(t["committed"][0]) == {"position", "token", "confidence"}
    assert t["tokens"].count("[MASK]") == 2  # mask text where still masked
    assert js["positions"] == js["length"] == 4
    assert js["generated_tokens"] == res.generated_tokens
    assert js["peak_memory_mb"] > 0  # allocation-based: never 0 for a real model
    res.dumps()



# ---------------------------------------------------------------------------- what is counted


def test_content_tokens_stop_at_the_first_end_of_sequence(ends, bert):
    res = diffusion_generate(ends, PROMPT, 8, threshold=0.9)
    sep = bert.tokenizer.sep_token_id
    assert res.token_ids[:3] == [len(SPECIAL) + p % 5 for p in (6, 7, 8)]
    assert res.token_ids[3:] == [sep] * 5  # five [SEP] committed: canvas, not content
    assert res.generated_tokens == 3 and res.positions == res.length == 8
    assert res.tokens_per_second == pytest.approx(3 / res.seconds)
    assert res.time_per_token == pytest.approx(res.seconds / 3)
    assert res.tokens_per_forward_pass == pytest.approx(3 / res.nfe)
    assert res.positions_per_forward_pass == pytest.approx(8 / res.nfe)
    assert res.text == "capital of japan"  # WORDS[p % 5] at absolute positions 6, 7, 8
    assert res.trace[-1].end == 3  # the first end-of-sequence position of the region
    js = res.to_json()
    assert js["generated_tokens"] == 3 and js["positions"] == 8
    assert js["trace"][-1]["end"] == 3


def test_content_tokens_zero_when_the_region_starts_with_an_end(bert):
    model = EndsAt(len(bert.tokenizer), 0)
    res = diffusion_generate(Loaded(_entry("ends0", "diffusion"), model, bert.tokenizer), PROMPT,
                             4, threshold=0.9)
    assert res.generated_tokens == 0 and res.tokens_per_second == 0.0
    assert res.time_per_token is None and res.text == ""


def test_remask_counts_content_tokens(ends):
    res = remask_generate(ends, PROMPT, 8, 2)
    assert res.generated_tokens == 3 and res.positions == 8
    assert res.tokens_per_second == pytest.approx(3 / res.seconds)


def test_ar_stops_at_eos_by_default(scripted, gpt2):
    tok = gpt2.tokenizer
    res = autoregressive_generate(scripted, "the cat", 10)
    assert res.token_ids == [tok.convert_tokens_to_ids("tokyo"), tok.convert_tokens_to_ids("."),
                             tok.eos_token_id]
    assert res.nfe == res.steps == len(res.trace) == 3
    assert res.generated_tokens == 2  # the end-of-sequence token is not content
    assert res.positions == res.length == 10  # the canvas: the most it was allowed to write
    assert res.tokens_per_second == pytest.approx(2 / res.seconds)
    assert res.text == "tokyo ."
    assert res.trace[-1].end == 2 and res.trace[0].end is None
    assert res.to_json()["generated_tokens"] == 2
    # asked to, it writes past the end; the content still ends there
    on = autoregressive_generate(scripted, "the cat", 10, stop_at_eos=False)
    assert on.nfe == 10 and on.token_ids[:3] == res.token_ids
    assert on.generated_tokens == 2 and on.text == res.text
    assert on.tokens_per_second == pytest.approx(2 / on.seconds)


# ---------------------------------------------------------------------------- peak memory


def test_peak_memory_counts_allocations(bert):
    hungry = Loaded(_entry("hungry", "diffusion"), Hungry(len(bert.tokenizer)), bert.tokenizer)
    res = diffusion_generate(hungry, PROMPT, 4, steps=2)
    assert res.peak_memory_mb >= 8.0  # the 8 MiB scratch tensor, allocated and freed each pass
    assert res.peak_memory_mb < 16.0  # freed before the next pass: never two at once
    assert "replay" in res.peak_memory_note


def test_peak_memory_is_positive_for_real_models(bert, gpt2):
    d = diffusion_generate(bert, PROMPT, 8, steps=4)
    a = autoregressive_generate(gpt2, "the cat", 8)
    for res in (d, a):
        assert isinstance(res.peak_memory_mb, float) and res.peak_memory_mb > 0
    r = remask_generate(bert, PROMPT, 6, 3)
    assert r.peak_memory_mb > 0


def test_timed_run_is_not_profiled(bert):
    model = EndsAt(len(bert.tokenizer), 9)
    loaded = Loaded(_entry("ends", "diffusion"), model, bert.tokenizer)
    res = diffusion_generate(loaded, PROMPT, 8, steps=4)
    # the timed run first, without the profiler; then the profiled replay for the memory
    assert model.calls == [False] * res.nfe + [True] * res.nfe
    model.calls.clear()
    res = diffusion_generate(loaded, PROMPT, 8, steps=4, measure_memory=False)
    assert model.calls == [False] * res.nfe
    assert res.peak_memory_mb is None and "not measured" in res.peak_memory_note


def test_peak_memory_leaves_a_running_profiler_alone(bert, monkeypatch):
    from torch.profiler import ProfilerActivity, profile

    from models import measure

    with profile(activities=[ProfilerActivity.CPU]) as prof:
        res = diffusion_generate(bert, PROMPT, 4, steps=2)
    assert res.peak_memory_mb is None and "already running" in res.peak_memory_note
    assert any(e.name == "aten::softmax" for e in prof.events())  # the caller's profile is whole
    # torch's private profiler entry points gone: the public profiler gives the same peak
    fast = diffusion_generate(bert, PROMPT, 4, steps=2).peak_memory_mb

    def missing(_run):
        raise measure._NoPrivateProfiler("gone")

    monkeypatch.setattr(measure, "_memory_only_profile", missing)
    assert diffusion_generate(bert, PROMPT, 4, steps=2).peak_memory_mb == fast > 0


def test_peak_memory_on_cuda_is_the_allocator_high_water_mark(monkeypatch):
    """The CUDA branch (no GPU needed): reset, time one run, max_memory_allocated - start; no
    replay."""
    from models import measure

    calls = []
    state = {"allocated": 300 * 2**20, "peak": 300 * 2**20}
    monkeypatch.setattr(torch.cuda, "synchronize", lambda d=None: calls.append("sync"))
    monkeypatch.setattr(torch.cuda, "reset_peak_memory_stats",
                        lambda d=None: calls.append("reset"))
    monkeypatch.setattr(torch.cuda, "memory_allocated", lambda d=None: state["allocated"])
    monkeypatch.setattr(torch.cuda, "max_memory_allocated", lambda d=None: state["peak"])

    def run():
        calls.append("run")
        state["peak"] += 12 * 2**20  # the generation's high-water mark: 12 MiB on top
        return [1, 2, 3]

    out, seconds, peak, note = measure.measured(torch.device("cuda"), run, True,
                                                lambda a, b: a == b)
    assert out == [1, 2, 3] and seconds > 0
    assert calls == ["sync", "reset", "run", "sync"]  # reset before, one timed run, no replay
    assert peak == 12.0 and "max_memory_allocated" in note


def test_peak_memory_none_when_the_replay_differs(bert):
    fickle = Loaded(_entry("fickle", "diffusion"), Fickle(len(bert.tokenizer)), bert.tokenizer)
    res = diffusion_generate(fickle, PROMPT, 4, steps=4)
    assert res.peak_memory_mb is None
    assert "replay" in res.peak_memory_note and "differ" in res.peak_memory_note

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
    a = autoregressive_generate(gpt2, "the capital of", 10, use_cache=True, stop_at_eos=False)
    b = autoregressive_generate(gpt2, "the capital of", 10, use_cache=False, stop_at_eos=False)
    assert a.token_ids == b.token_ids
    assert a.nfe == a.steps == 10 == len(a.trace)
    full = gpt2.model(input_ids=torch.tensor([gpt2.tokenizer("the capital of")["input_ids"]
                                              + a.token_ids[:3]])).logits[0, -1]
    z = process_logits(full, torch.zeros(full.shape[-1], dtype=torch.bool)
                       .index_fill(0, torch.tensor([1]), True))  # <unk> is never proposed
    assert int(z.argmax()) == a.token_ids[3]


def test_ar_trace_format(gpt2):
    res = autoregressive_generate(gpt2, "the cat", 5, stop_at_eos=False)
    assert res.paradigm == "autoregressive" and res.block_length == 1
    for i, r in enumerate(res.trace, start=1):
        assert r.step == i and r.block == i - 1
        assert len(r.committed) == 1 and r.committed[0]["position"] == i - 1
        assert r.tokens[i:] == [PENDING] * (5 - i)
        assert PENDING not in r.tokens[:i]
    assert res.tokens_per_second == pytest.approx(res.generated_tokens / res.seconds)


def test_ar_stop_at_eos(gpt2):
    # sampling at a high temperature from a random model reaches <eos> (id 0) soon
    for seed in range(50):
        res = autoregressive_generate(gpt2, "the cat", 30, temperature=50.0, seed=seed,
                                      stop_at_eos=False)
        if 0 in res.token_ids:
            cut = res.token_ids.index(0)
            stopped = autoregressive_generate(gpt2, "the cat", 30, temperature=50.0, seed=seed)
            assert stopped.token_ids == res.token_ids[:cut + 1]
            assert stopped.nfe == stopped.steps == cut + 1
            assert stopped.generated_tokens == res.generated_tokens == cut
            assert stopped.length == stopped.positions == 30
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
        assert s["tokens_per_second"] > 0
        # diffusion: one pass per step; autoregressive: one per token, up to its <eos>
        assert (s["mean_nfe"] == 4) if paradigm == "diffusion" else (1 <= s["mean_nfe"] <= 4)
        for row in out["runs"]:
            r = row[paradigm]
            if row["expected"] is None:
                assert r["correct"] is None
            else:
                assert r["correct"] == (row["expected"] in r["text"].lower())
    greedy = compare(gpt2, bert, prompts[1:], length=4, warmup=False)
    assert greedy["diffusion"]["peak_memory_mb"] > 0 < greedy["autoregressive"]["peak_memory_mb"]
    assert greedy["autoregressive"]["accuracy"] is None
    assert greedy["diffusion"]["consistency"] is None


def test_compare_counts_content_tokens(scripted, ends):
    out = compare(scripted, ends, [("the cat", "tokyo")] * 2, length=8, threshold=0.9)
    # "the cat": the region starts at absolute position 3 ([CLS] the cat), so `ends` (which
    # writes [SEP] from position 9 on) has six content tokens
    for paradigm, content in (("autoregressive", 2), ("diffusion", 6)):
        s = out[paradigm]
        runs = [row[paradigm] for row in out["runs"]]
        assert [r["generated_tokens"] for r in runs] == [content, content]
        assert [r["positions"] for r in runs] == [8, 8]
        seconds = sum(r["seconds"] for r in runs)
        assert s["tokens_per_second"] == pytest.approx(2 * content / seconds)
        assert s["generated_tokens"] == 2 * content and s["positions"] == 16
        assert s["tokens_per_forward_pass"] == pytest.approx(2 * content / (2 * s["mean_nfe"]))
        assert s["positions_per_forward_pass"] == pytest.approx(16 / (2 * s["mean_nfe"]))
        assert s["peak_memory_mb"] > 0
    assert out["autoregressive"]["mean_nfe"] == 3  # stopped at <eos>, not 8 passes
    assert "content" in out["definitions"]["tokens_per_second"]


# ---------------------------------------------------------------------------- exports


def test_export_zip(bert, gpt2, tmp_path):
    from PIL import Image

    from reports.diffusion_export import export_zip, trace_gif, trace_html

    res = diffusion_generate(bert, PROMPT, 8, steps=4, block_length=4)
    out = export_zip(res, tmp_path / "sub" / "steps.zip")
    with zipfile.ZipFile(out) as zf:
        assert sorted(zf.namelist()) == sorted(
            ["steps.gif", "trace.json", "viewer.html",
             *(f"frames/step_{i:03d}.png" for i in range(len(res.trace) + 1))])
        assert zf.read("frames/step_000.png")[:8] == b"\x89PNG\r\n\x1a\n"
        html = zf.read("viewer.html").decode()
        gif = Image.open(io.BytesIO(zf.read("steps.gif")))
        assert gif.n_frames == len(res.trace) + 1
    assert "<script src" not in html.lower()
    assert "ArrowLeft" in html and 'type="range"' in html
    assert not list((tmp_path / "sub").glob(".*.tmp"))  # written through a temporary file
    # a prompt that tries to close the script element stays data
    evil = diffusion_generate(bert, "the cat </script><script>alert(1)</script>", 2)
    html = trace_html(evil)
    assert html.count("</script>") == 2
    ar = autoregressive_generate(gpt2, "the cat", 3, stop_at_eos=False)
    path = trace_gif(ar, tmp_path / "ar.gif")
    assert Image.open(path).n_frames == 4


def test_compare_reports_agreement_with_the_uncached_one_token_per_step_answer(gpt2, bert):
    from models.compare import Quality, agreement

    prompts = [("the capital of japan is", "tokyo"), ("the cat sat on", None)]
    out = compare(gpt2, bert, prompts, length=4, threshold=0.5, block_length=2, warmup=False,
                  measure_memory=False, quality=Quality(fluency=gpt2))
    for row in out["runs"]:
        a = row["diffusion"]["agreement"]
        assert a["reference"] == "uncached, one token per step"
        ref = diffusion_generate(bert, row["prompt"], 4, steps=4, block_length=2,
                                 measure_memory=False)
        assert a["reference_text"] == ref.text
        assert a["same_text"] == (row["diffusion"]["text"].split() == ref.text.split())
        assert 0 <= a["token_agreement"] <= 1
        assert row["autoregressive"]["agreement"] is None  # the AR side has nothing to agree with
        assert row["diffusion"]["fluency_perplexity"] is None or \
            row["diffusion"]["fluency_perplexity"] > 0
    s = out["diffusion"]
    assert s["agreement"] == sum(r["diffusion"]["agreement"]["same_text"]
                                 for r in out["runs"]) / 2
    assert out["settings"]["fluency_model"] == "test-gpt2"
    assert "uncached one-token-per-step" in out["definitions"]["agreement"]
    # one token per step itself agrees fully; and the agreement of a run with itself is 1
    same = compare(gpt2, bert, prompts[:1], length=4, warmup=False, measure_memory=False)
    assert same["diffusion"]["agreement"] == 1.0 and same["diffusion"]["token_agreement"] == 1.0
    res = diffusion_generate(bert, PROMPT, 4, steps=4, measure_memory=False)
    assert agreement(res, res, {3}) ["token_agreement"] == 1.0
    off = compare(gpt2, bert, prompts[:1], length=4, warmup=False, measure_memory=False,
                  reference=False)
    assert off["diffusion"]["agreement"] is None


def test_compare_gives_the_autoregressive_side_its_own_settings(scripted, ends):
    out = compare(scripted, ends, [("the cat", "tokyo")], length=8, threshold=0.9,
                  ar_length=2, ar_temperature=0.0, warmup=False, measure_memory=False)
    ar = out["runs"][0]["autoregressive"]
    assert ar["positions"] == 2 and ar["nfe"] == 2  # its own length: two tokens at most
    assert out["runs"][0]["diffusion"]["positions"] == 8
    assert out["settings"]["ar_length"] == 2
