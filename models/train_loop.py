"""The training loop both recipes share, and how they write a checkpoint.

models/training.py (the embedded models, trained from scratch) and models/diffusion_training.py
(a masked LM fine-tuned into a masked-diffusion LM) differ only in how a batch of token-id lists
becomes a loss and in what they log; ``fit`` does the rest: shuffled batches, AdamW, warm-up then
cosine decay, gradient clipping at 1.0, one loss per step.

torch gives the optimizer and the scheduler (LambdaLR). The masking, the causal labels and the
warm-up stay the recipes' own (``models.training.mask_tokens`` and ``train``,
``models.diffusion_training.DiffusionCollator``, ``warmup_cosine``): transformers' versions draw,
label or step differently, so the shipped checkpoints could no longer be reproduced bit for bit
(each measured in its docstring).
"""

from __future__ import annotations

import json
import math
import random
from collections.abc import Callable, Iterator, Sequence
from functools import partial
from pathlib import Path
from typing import Any, Protocol

import torch

from models.common import UserError, atomic_write

Batch = list[list[int]]  # token ids per example, unpadded


class LoopSettings(Protocol):
    """What ``fit`` reads from a recipe's config (TrainConfig, DiffusionConfig)."""

    steps: int
    batch_size: int
    lr: float
    warmup: int
    weight_decay: float
    seed: int
    threads: int


def warmup_cosine(step: int, warmup: int, steps: int, floor: float = 0.05) -> float:
    """Learning-rate factor before optimizer step ``step`` (0-based): linear warm-up reaching 1 at
    the last warm-up step, (step + 1) / warmup, then cosine decay from 1 towards ``floor``.

    Why not transformers' get_cosine_with_min_lr_schedule_with_warmup(min_lr_rate=0.05)? After
    warm-up its factor equals this one bit for bit (tests/test_training.py), but its warm-up is
    step / warmup: the first step runs at lr 0 and every warm-up step one step behind. Measured
    on the 30-step recipes (seed 0), the loss then differs from the second step on (tiny-gpt2
    7.0902 here, 7.1064 there; last 5.4175 vs 5.4952, with warm-up 5 4.1109 vs 4.2299; tiny-bert
    last 5.6947 vs 5.7098) and so does every weight: the shipped checkpoints could no longer be
    reproduced. torch's LambdaLR applies it (LinearLR + CosineAnnealingLR update the rate
    recursively, so they are not bit-identical either).
    """
    if step < warmup:
        return (step + 1) / warmup
    progress = (step - warmup) / max(1, steps - warmup)
    return floor + (1 - floor) * 0.5 * (1 + math.cos(math.pi * progress))


def shuffled_batches(examples: Sequence[list[int]], batch_size: int, rng: random.Random) -> Iterator[Batch]:
    """Endless batches of ``batch_size`` examples: each pass a new shuffle, the remainder dropped."""
    while True:
        order = list(range(len(examples)))
        rng.shuffle(order)
        for i in range(0, len(order) - batch_size + 1, batch_size):
            yield [examples[j] for j in order[i:i + batch_size]]


def fit(model: Any, examples: Sequence[list[int]], step_loss: Callable[[Batch], torch.Tensor],
        cfg: LoopSettings, on_step: Callable[[int, list[float]], None] | None = None
        ) -> list[float]:
    """Train ``model`` in place for ``cfg.steps`` steps; returns the loss of every step.

    Each step takes the next shuffled batch of ``examples`` (token-id lists; at most
    ``cfg.batch_size``, fewer only when there are fewer examples), asks ``step_loss`` for the
    loss to minimise (it pads, masks and runs the model), and takes an AdamW step with gradients
    clipped to norm 1 and the learning rate of ``warmup_cosine``. ``on_step(step, losses)`` runs
    after each step (logging). The model is left in eval mode.

    Random numbers: ``torch.manual_seed(cfg.seed)`` (dropout), a ``random.Random(cfg.seed)``
    for the shuffles; the recipes' masking draws from its own generators.
    """
    torch.manual_seed(cfg.seed)
    torch.set_num_threads(cfg.threads)
    batch_size = min(cfg.batch_size, len(examples))
    if batch_size < 1:
        raise UserError("No training lines: give at least one line of text to train on.")
    batches = shuffled_batches(examples, batch_size, random.Random(cfg.seed))
    opt = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, partial(warmup_cosine, warmup=cfg.warmup, steps=cfg.steps))
    model.train()
    losses: list[float] = []
    for step in range(cfg.steps):
        loss = step_loss(next(batches))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        sched.step()
        losses.append(float(loss.detach()))
        if on_step is not None:
            on_step(step, losses)
    model.eval()
    return losses


def save_checkpoint(model: Any, tokenizer: Any, out_dir: str | Path, facts: dict, card: str) -> Path:
    """Safetensors weights, config and tokenizer, plus training.json (``facts``) and README.md
    (``card``), the last two written atomically; returns the folder."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out_dir, safe_serialization=True)
    tokenizer.save_pretrained(out_dir)
    atomic_write(out_dir / "training.json", json.dumps(facts, indent=2))
    atomic_write(out_dir / "README.md", card)
    return out_dir
