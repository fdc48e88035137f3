"""The shared training loop (models/train_loop.py) and the from-scratch recipe's pieces
(models/training.py): learning-rate schedule, batching, the loop, BERT masking, checkpoints."""

import json
import math
from dataclasses import dataclass

import pytest
import torch

from models.common import UserError
from models.train_loop import fit, save_checkpoint, shuffled_batches, warmup_cosine
from models.training import main, mask_tokens


@dataclass
class Settings:
    steps: int = 40
    batch_size: int = 4
    lr: float = 0.1
    warmup: int = 4
    weight_decay: float = 0.0
    seed: int = 0
    threads: int = 1


# ----------------------------------------------------------------------------- schedule

def test_warmup_cosine_by_hand():
    # warm-up reaches 1 at its last step: 1/4, 2/4, 3/4, 4/4
    assert [warmup_cosine(s, 4, 14) for s in range(4)] == [0.25, 0.5, 0.75, 1.0]
    assert warmup_cosine(4, 4, 14) == 1.0  # cosine starts at the top
    assert warmup_cosine(9, 4, 14) == pytest.approx(0.05 + 0.95 * 0.5)  # half way: cos = 0
    assert warmup_cosine(14, 4, 14) == pytest.approx(0.05)  # the floor
    assert warmup_cosine(7, 4, 14) == pytest.approx(0.05 + 0.95 * 0.5 * (1 + math.cos(math.pi * 0.3)))


def test_warmup_cosine_against_the_library_schedule():
    """What the comment in warmup_cosine says: transformers' cosine-with-floor schedule is the
    same number after warm-up and one step behind during it."""
    from transformers import get_cosine_with_min_lr_schedule_with_warmup

    opt = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=1.0)
    lib = get_cosine_with_min_lr_schedule_with_warmup(opt, 10, 100, min_lr_rate=0.05).lr_lambdas[0]
    assert all(lib(s) == warmup_cosine(s, 10, 100) for s in range(10, 101))
    assert [lib(s) for s in range(10)] == [s / 10 for s in range(10)]
    assert [warmup_cosine(s, 10, 100) for s in range(10)] == [(s + 1) / 10 for s in range(10)]


# ----------------------------------------------------------------------------- batches

def test_shuffled_batches_are_passes_over_the_examples():
    import random

    examples = [[i] for i in range(10)]
    batches = shuffled_batches(examples, 3, random.Random(0))
    for _ in range(3):  # each pass: 3 batches of 3 distinct examples, the tenth left out
        one_pass = [next(batches) for _ in range(3)]
        assert all(len(b) == 3 for b in one_pass)
        seen = [x[0] for b in one_pass for x in b]
        assert len(set(seen)) == 9


# ----------------------------------------------------------------------------- the loop

def _line_fit(cfg: Settings, n: int = 8):
    """Fit y = 2x + 1 on x = 0 .. n-1 (scaled): a loss a reader can check goes to zero."""
    torch.manual_seed(0)
    model = torch.nn.Linear(1, 1)
    sizes = []

    def step_loss(batch):
        sizes.append(len(batch))
        x = torch.tensor(batch, dtype=torch.float32) / n
        return torch.nn.functional.mse_loss(model(x), 2 * x + 1)

    seen = []
    losses = fit(model, [[i] for i in range(n)], step_loss, cfg,
                 on_step=lambda step, losses: seen.append((step, len(losses))))
    return model, losses, sizes, seen


def test_fit_trains_and_is_deterministic():
    model, losses, sizes, seen = _line_fit(Settings())
    assert len(losses) == 40 and sizes == [4] * 40
    assert seen == [(s, s + 1) for s in range(40)]  # on_step after every step, losses so far
    assert losses[-1] < 0.05 * losses[0]
    assert not model.training
    assert _line_fit(Settings())[1] == losses  # same seed, same losses
    assert _line_fit(Settings(seed=1))[1] != losses


def test_fit_uses_all_examples_when_fewer_than_a_batch():
    _, losses, sizes, _ = _line_fit(Settings(steps=3, batch_size=32), n=5)
    assert sizes == [5, 5, 5] and len(losses) == 3


def test_fit_without_examples_is_a_user_error():
    with pytest.raises(UserError):
        fit(torch.nn.Linear(1, 1), [], lambda batch: torch.zeros(()), Settings())


# ----------------------------------------------------------------------------- BERT masking

class _Tok:
    pad_token_id, cls_token_id, sep_token_id, mask_token_id = 0, 2, 3, 4

    def __len__(self):
        return 100


def test_mask_tokens_chooses_real_words_and_splits_80_10_10():
    tok = _Tok()
    ids = torch.randint(5, 100, (64, 40), generator=torch.Generator().manual_seed(0))
    ids[:, 0], ids[:, 30], ids[:, 31:] = 2, 3, 0  # [CLS] words [SEP] padding
    att = (ids != 0).long()
    inputs, labels = mask_tokens(ids, att, tok, 0.25, torch.Generator().manual_seed(1))
    chosen = labels != -100
    assert not chosen[:, 0].any() and not chosen[:, 30:].any()  # never CLS, SEP, padding
    assert torch.equal(labels[chosen], ids[chosen])
    assert torch.equal(inputs[~chosen], ids[~chosen])
    n = int(chosen.sum())
    assert abs(n / (64 * 29) - 0.25) < 0.03
    as_mask = int((inputs[chosen] == 4).sum())
    kept = int((inputs[chosen] == ids[chosen]).sum())
    assert abs(as_mask / n - 0.8) < 0.04
    assert 0.06 < kept / n < 0.14  # 10% kept (plus the rare random draw of the same word)
    assert (inputs[chosen] >= 4).all()  # random replacements are never [PAD]/[CLS]/[SEP]


# ----------------------------------------------------------------------------- checkpoints

def test_save_checkpoint_writes_weights_facts_and_card(tmp_path):
    from transformers import BertConfig, BertForMaskedLM

    from models.training import bert_tokenizer

    tok = bert_tokenizer(["the capital of japan is tokyo."])
    model = BertForMaskedLM(BertConfig(vocab_size=len(tok), hidden_size=16, num_hidden_layers=1,
                                       num_attention_heads=2, intermediate_size=32))
    out = save_checkpoint(model, tok, tmp_path / "ckpt", {"name": "x", "steps": 3}, "# x\n")
    assert json.loads((out / "training.json").read_text()) == {"name": "x", "steps": 3}
    assert (out / "README.md").read_text() == "# x\n"
    assert (out / "model.safetensors").is_file() and (out / "tokenizer.json").is_file()
    assert not list(out.glob(".*.tmp"))  # the atomic writes left nothing behind


def test_cli_rejects_zero_steps(capsys):
    with pytest.raises(SystemExit) as exc:
        main(["tiny-gpt2", "--steps", "0"])
    assert exc.value.code == 2
    assert "--steps must be at least 1" in capsys.readouterr().err
