"""Diffusion fine-tuning: the variable-rate masking collator, schedules, depth up-scaling, a fast
training run, and (when it is there) the shipped tiny-diffusion checkpoint."""

import json
import math

import pytest
import torch

from models import corpus
from models.common import UserError
from models.diffusion_eval import contains_word, diffusion_capital_accuracy
from models.diffusion_training import (
    DiffusionCollator,
    DiffusionConfig,
    bucket_name,
    grown_order,
    level_bucket,
    schedule_levels,
    train_diffusion,
    train_loop,
    upscale_depth,
)
from tests.conftest import have

SMALL = corpus.CorpusConfig(stories=60, repeats=60, fact_repeats=1)


@pytest.fixture(scope="module")
def lines():
    return corpus.generate(SMALL)


@pytest.fixture(scope="module")
def tokenizer(lines):
    from models.training import bert_tokenizer

    return bert_tokenizer(lines)


def tiny_bert(tokenizer, layers=2, hidden=32):
    from transformers import BertConfig, BertForMaskedLM

    torch.manual_seed(0)
    cfg = BertConfig(vocab_size=len(tokenizer), hidden_size=hidden, num_hidden_layers=layers,
                     num_attention_heads=2, intermediate_size=2 * hidden, max_position_embeddings=128,
                     pad_token_id=tokenizer.pad_token_id, attn_implementation="eager")
    return BertForMaskedLM(cfg)


# ----------------------------------------------------------------------------- schedules

def test_schedule_levels_as_defined():
    assert schedule_levels("linear", 10) == pytest.approx([1 - k / 10 for k in range(10)])
    assert schedule_levels("cosine", 8) == pytest.approx([math.cos(math.pi / 2 * k / 8)
                                                          for k in range(8)])
    assert schedule_levels("exponential", 5) == pytest.approx([math.exp(-5 * k / 5)
                                                               for k in range(5)])
    for s in ("linear", "cosine", "exponential"):
        lv = schedule_levels(s, 10)
        assert len(lv) == 10 and lv[0] == 1.0 and all(0 < x <= 1 for x in lv)
        assert lv == sorted(lv, reverse=True)


def test_schedule_levels_match_the_remasking_sampler():
    """Level k+1 is the fraction still masked after step k of generation.mask_schedule."""
    from models.generation import mask_schedule

    for s in ("linear", "cosine", "exponential"):
        assert schedule_levels(s, 10)[1:] == pytest.approx(mask_schedule(s, 10)[:-1])


def test_schedule_errors():
    with pytest.raises(UserError):
        schedule_levels("quadratic")
    with pytest.raises(UserError):
        schedule_levels("linear", 0)


def test_level_buckets():
    assert [level_bucket(t) for t in (0.001, 0.1, 0.1001, 0.5, 0.95, 1.0)] == [0, 0, 1, 4, 9, 9]
    assert bucket_name(0) == "0.0-0.1" and bucket_name(9) == "0.9-1.0"


def test_contains_word():
    assert contains_word("tokyo.", "tokyo") and contains_word("a tokyo b", "tokyo")
    assert not contains_word("tokyoite", "tokyo")


# ----------------------------------------------------------------------------- collator

def _encode(tokenizer, lines):
    return [tokenizer(line)["input_ids"] for line in lines]


@pytest.mark.parametrize("schedule", ["continuous", "linear", "exponential"])
def test_collator_masks_at_the_drawn_rate(tokenizer, lines, schedule):
    c = DiffusionCollator(tokenizer, schedule=schedule, prompt_fraction=0.0, seed=1)
    enc = [e for e in _encode(tokenizer, lines) if len(e) >= 22][:32]
    diffs, rates = [], []
    for _ in range(60):
        b = c(enc)
        masked = b["labels"] != -100
        frac = masked.sum(1) / b["maskable"].sum(1)
        diffs += (frac.double() - b["t"]).tolist()
        rates += b["t"].tolist()
    assert abs(sum(diffs) / len(diffs)) < 0.02  # unbiased (the forced token adds < 1/20)
    if schedule == "continuous":
        assert min(rates) > 0 and max(rates) <= 1
        assert abs(sum(rates) / len(rates) - 0.5) < 0.03
    else:
        assert set(round(r, 9) for r in rates) <= set(round(r, 9) for r in schedule_levels(schedule))


def test_collator_labels_specials_and_protected_prefix(tokenizer, lines):
    c = DiffusionCollator(tokenizer, schedule="continuous", prompt_fraction=1.0, eos_fill=6,
                          fill_prob=1.0, seed=2)
    enc = _encode(tokenizer, lines[:64])
    special = torch.tensor([tokenizer.cls_token_id, tokenizer.sep_token_id, tokenizer.pad_token_id])
    for _ in range(20):
        b = c(enc)
        ids, labels = b["input_ids"], b["labels"]
        masked = ids == tokenizer.mask_token_id
        # labels are -100 exactly where not masked, the original token where masked
        assert torch.equal(labels != -100, masked)
        assert masked.any(dim=1).all()  # at least one per example
        assert not (masked & ~b["maskable"]).any()
        assert not (masked & b["protected"]).any()
        assert not (b["maskable"] & b["protected"]).any()
        assert b["protected"].any(dim=1).all()  # prompt_fraction=1: every line has a prompt
        # original = input where not masked, label where masked; its special tokens stay
        original = torch.where(masked, labels, ids)
        is_special = torch.isin(original, special)
        # CLS, the final SEP and padding are never masked; only the SEP fillers may be
        assert not masked[:, 0].any()
        att = b["attention_mask"].bool()
        last = att.sum(1) - 1
        assert not masked[torch.arange(len(enc)), last].any()
        assert not (masked & ~att).any()
        fillers = is_special & b["maskable"]
        assert (original[fillers] == tokenizer.sep_token_id).all()
        # weights: nonzero exactly where masked
        assert torch.equal(b["weights"] > 0, masked)


def test_collator_without_fillers_never_masks_special_tokens(tokenizer, lines):
    c = DiffusionCollator(tokenizer, schedule="linear", prompt_fraction=0.5, seed=3)
    enc = _encode(tokenizer, lines[:64])
    special = set(tokenizer.all_special_ids)
    for _ in range(10):
        b = c(enc)
        masked = b["labels"] != -100
        assert not any(int(t) in special for t in b["labels"][masked])
        assert b["weights"].sum().item() == pytest.approx(1.0, abs=1e-5)  # discrete: mean CE


def test_collator_protects_the_question(tokenizer):
    c = DiffusionCollator(tokenizer, prompt_fraction=1.0, seed=0)
    ids = tokenizer("the capital of japan is tokyo.")["input_ids"]
    for _ in range(10):
        b = c([ids])
        prot = b["input_ids"][0][b["protected"][0]].tolist()
        assert tokenizer.decode(prot) == "the capital of japan is"
        assert tokenizer.mask_token_id in b["input_ids"][0].tolist()
    q = tokenizer("what is the capital of peru? the capital of peru is lima.")["input_ids"]
    prompts = set()
    for _ in range(30):
        b = c([q])
        prompts.add(tokenizer.decode(b["input_ids"][0][b["protected"][0]].tolist()))
    assert "what is the capital of peru?" in prompts
    assert all(p.startswith("what is") for p in prompts)


def test_continuous_weights_are_one_over_t(tokenizer, lines):
    c = DiffusionCollator(tokenizer, schedule="continuous", prompt_fraction=0.0, seed=4)
    enc = [e for e in _encode(tokenizer, lines) if len(e) >= 12][:16]
    b = c(enc)
    n = b["maskable"].sum(1).double()
    eff = torch.maximum(b["t"], 1 / n)
    expect = 1 / (eff * n * len(enc))
    for i in range(len(enc)):
        w = b["weights"][i][b["labels"][i] != -100].double()
        assert torch.allclose(w, expect[i].expand_as(w).to(w.dtype), rtol=1e-5)


def test_fillers_respect_the_context(tokenizer, lines):
    c = DiffusionCollator(tokenizer, eos_fill=500, fill_prob=1.0, seed=5, max_length=40)
    enc = _encode(tokenizer, lines[:8])
    for _ in range(10):
        assert c(enc)["input_ids"].shape[1] <= max(40, max(len(e) for e in enc))


# ----------------------------------------------------------------------------- depth up-scaling

def test_grown_order():
    assert grown_order(4, 0) == [0, 1, 2, 3]
    assert grown_order(4, 2) == [0, 1, 1, 2, 2, 3]
    assert len(grown_order(3, 7)) == 10
    with pytest.raises(UserError):
        grown_order(4, -1)


def test_upscale_depth_copies_layers(tokenizer):
    model = tiny_bert(tokenizer, layers=4)
    before = [{k: v.clone() for k, v in layer.state_dict().items()}
              for layer in model.bert.encoder.layer]
    order = upscale_depth(model, 2)
    assert order == [0, 1, 1, 2, 2, 3]
    assert model.config.num_hidden_layers == 6 and len(model.bert.encoder.layer) == 6
    for new, src in zip(model.bert.encoder.layer, order, strict=True):
        sd = new.state_dict()
        assert sd.keys() == before[src].keys()
        assert all(torch.equal(sd[k], before[src][k]) for k in sd)
    # copies are independent parameters
    w1, w2 = model.bert.encoder.layer[1], model.bert.encoder.layer[2]
    assert w1.output.dense.weight.data_ptr() != w2.output.dense.weight.data_ptr()
    model.eval()
    out = model(input_ids=torch.tensor([tokenizer("the capital of japan is")["input_ids"]]),
                output_attentions=True)
    assert len(out.attentions) == 6


# ----------------------------------------------------------------------------- training

def test_fast_training_loss_falls(tokenizer, lines):
    torch.set_num_threads(2)
    model = tiny_bert(tokenizer)
    cfg = DiffusionConfig(steps=60, batch_size=16, lr=3e-3, warmup=5, schedule="linear",
                          eos_fill=8, log_every=20)
    result = train_loop(model, tokenizer, lines, cfg, progress=False)
    losses = result["losses"]
    assert len(losses) == 60
    assert sum(losses[-10:]) / 10 < 0.8 * sum(losses[:5]) / 5
    assert len(result["history"]) == 3
    assert set(result["level_losses"]) <= {bucket_name(b) for b in range(10)}
    assert not model.training


def test_train_diffusion_saves_a_loadable_checkpoint(tokenizer, lines, tmp_path):
    from models.loading import load_uncached
    from models.registry import resolve

    base = tmp_path / "base"
    tiny_bert(tokenizer, layers=2).save_pretrained(base)
    tokenizer.save_pretrained(base)
    out = tmp_path / "diff"
    facts = train_diffusion(str(base), out, steps=6, grow_layers=1, batch_size=8, lines=lines,
                            progress=False, evaluate=False)
    assert facts["n_layers"] == 3 and facts["layer_order"] == [0, 1, 1]
    for f in ("model.safetensors", "tokenizer.json", "training.json", "README.md", "config.json"):
        assert (out / f).is_file()
    cfg = json.loads((out / "config.json").read_text())
    assert cfg["architectures"] == ["BertForMaskedLM"] and cfg["num_hidden_layers"] == 3
    assert json.loads((out / "training.json").read_text())["grow_layers"] == 1
    loaded = load_uncached(resolve(str(out)))
    assert loaded.n_layers == 3 and loaded.tokenizer.mask_token == "[MASK]"
    assert "depth up-scaling" in (out / "README.md").read_text()


def test_train_diffusion_rejects_bad_arguments(tmp_path):
    with pytest.raises(UserError):
        train_diffusion("tiny-gpt2", tmp_path / "x", steps=1, progress=False, evaluate=False)
    with pytest.raises(UserError):
        train_diffusion("tiny-bert", tmp_path / "x", steps=1, schedule="square")
    with pytest.raises(UserError):
        train_diffusion("tiny-bert", tmp_path / "x", steps=0)


def test_recipe_command_line_reports_bad_arguments(tmp_path, capsys):
    from models.diffusion_training import main

    with pytest.raises(SystemExit) as exc:
        main(["--steps", "0", "--out", str(tmp_path / "x"), "--no-progress"])
    assert exc.value.code == 2
    assert "error:" in capsys.readouterr().err and not (tmp_path / "x").exists()


# ----------------------------------------------------------------------------- the shipped model

needs_model = pytest.mark.skipif(not have("tiny-diffusion"), reason="tiny-diffusion not built")


@pytest.fixture(scope="module")
def diffusion():
    from models.loading import load

    return load("tiny-diffusion")


@needs_model
def test_tiny_diffusion_is_a_six_layer_bert(diffusion):
    assert diffusion.task == "diffusion"
    assert type(diffusion.model).__name__ == "BertForMaskedLM"
    assert diffusion.n_layers == 6
    assert diffusion.tokenizer.mask_token == "[MASK]"


@needs_model
@pytest.mark.parametrize("threshold", [None, 0.9])
def test_tiny_diffusion_answers_tokyo(diffusion, threshold):
    from models.generation import diffusion_generate

    res = diffusion_generate(diffusion, "the capital of japan is", 4, steps=4, threshold=threshold)
    assert contains_word(res.text, "tokyo"), res.text


@needs_model
@pytest.mark.parametrize("threshold", [None, 0.9])
def test_tiny_diffusion_knows_the_capitals(diffusion, threshold):
    acc, misses = diffusion_capital_accuracy(diffusion, threshold=threshold)
    assert len(corpus.CAPITALS) >= 30
    assert acc >= 0.9, misses
