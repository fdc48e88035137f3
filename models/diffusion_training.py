"""Fine-tune a masked language model into a masked-diffusion language model.

    python -m models.diffusion_training            # the tiny-diffusion recipe (from tiny-bert)
    python dashboard.py train-diffusion --base tiny-bert --out DIR [--grow-layers 2]

A masked-diffusion LM (LLaDA, Nie et al. 2025; RoBERTa-as-diffusion, reference 002) is a
bidirectional transformer trained to predict the masked tokens of a sequence at *every* masking
rate from almost nothing masked to everything masked, so generation can start from a fully
masked answer and unmask it a few tokens per step (models/generation.py). A BERT-style masked LM
only ever saw ~15-25% masked; fine-tuning it with variable-rate masking turns it into one.

The pieces:

- ``DiffusionCollator``: masks each example at its own random rate t, either continuous
  t ~ U(eps, 1] (masked diffusion; loss weight 1/t) or one of ``levels`` discrete levels of a
  linear, cosine or exponential schedule (reference 002; unweighted). Masked tokens become the
  mask token (no BERT 80/10/10 replacement). A protected prompt prefix is never masked (half the
  lines by default, split after "is", "?", "says", "goes" or "in", else at a random length), so
  the model learns to complete answers given prompts. A random number of end-of-sequence filler
  tokens (SEP) is put before the final SEP, as LLaDA pads with EOS: the samplers generate into a
  fixed-length masked region followed by the final SEP, and the model must learn to end the
  answer and fill the rest with SEP (which ``diffusion_generate`` then cuts off).
- ``upscale_depth`` (``grow_layers`` of ``train_diffusion``): depth up-scaling (as in SOLAR),
  duplicated layers spread evenly over the stack: 4 layers grown by 2 are [0, 1, 1, 2, 2, 3].
- ``train_diffusion``: the shared loop (models.train_loop.fit: AdamW, warm-up and cosine decay,
  gradient clipping) with this collator and loss, a tqdm bar, the mean loss per masking level
  (t bucketed into 10 levels) every ``log_every`` steps, and a checkpoint with a model card
  (the checks and the card: models/diffusion_eval.py).
- ``recipe_tiny_diffusion``: models/embedded/tiny-diffusion from models/embedded/tiny-bert.

Loss (continuous): for an example with L maskable tokens masked at rate t, the loss is
sum over masked tokens of cross-entropy / (t L), averaged over the batch: an unbiased estimate of
the masked-diffusion ELBO per token. Because every example gets at least one masked token, the
effective rate is at least 1/L; the weight uses max(t, 1/L) so a tiny t cannot blow a single
forced token up a thousandfold. Discrete schedules: the plain mean cross-entropy over all masked
tokens of the batch (reference 002).
"""

from __future__ import annotations

import argparse
import copy
import hashlib
import json
import logging
import math
import random
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from models import corpus as corpus_mod
from models.common import UserError, whole_number
from models.diffusion_eval import evaluate_diffusion, model_card
from models.loading import Loaded, LoadOptions, load_uncached
from models.registry import EMBEDDED_DIR, ModelEntry, resolve
from models.train_loop import fit, save_checkpoint

log = logging.getLogger(__name__)

SCHEDULES = ("continuous", "linear", "cosine", "exponential")
SPLIT_WORDS = ("is", "?", "says", "goes", "in")
N_BUCKETS = 10  # masking levels for loss logging: (0, 0.1], (0.1, 0.2], ..., (0.9, 1]


# ----------------------------------------------------------------------------- schedules

def schedule_levels(schedule: str, levels: int = 10) -> list[float]:
    """The discrete masking rates of a schedule, highest first, all in (0, 1].

    They are the fractions still masked before each step of the matching re-masking sampler
    (models.generation.mask_schedule), k = 0 .. levels-1:
    linear 1 - k/levels (1.0, 0.9, ..., 0.1 for 10 levels, reference 002's schedule without its
    0), cosine cos(pi/2 k/levels), exponential exp(-5 k/levels).
    """
    if schedule not in SCHEDULES[1:]:
        raise UserError(f"Unknown masking schedule '{schedule}'; choose one of "
                        f"{', '.join(SCHEDULES[1:])} (or continuous).")
    if isinstance(levels, bool) or not isinstance(levels, int) or levels < 1:
        raise UserError(f"levels must be a whole number of at least 1, got {levels!r}.")
    out = []
    for k in range(levels):
        f = k / levels
        if schedule == "linear":
            out.append(1.0 - f)
        elif schedule == "cosine":
            out.append(math.cos(math.pi / 2 * f))
        else:
            out.append(math.exp(-5.0 * f))
    return out


def level_bucket(t: float) -> int:
    """0 .. N_BUCKETS-1: the level of a masking rate t in (0, 1] ((0, 0.1] is 0, (0.9, 1] is 9)."""
    return min(N_BUCKETS - 1, max(0, math.ceil(t * N_BUCKETS - 1e-9) - 1))


def bucket_name(b: int) -> str:
    return f"{b / N_BUCKETS:.1f}-{(b + 1) / N_BUCKETS:.1f}"


# ----------------------------------------------------------------------------- collator

class DiffusionCollator:
    """Turns a list of token-id lists (each ``tokenizer(line)["input_ids"]``, with the special
    tokens) into a masked-diffusion training batch.

    Per example: a masking rate t (continuous: U(eps, 1]; otherwise uniformly one of
    ``schedule_levels(schedule, levels)``); with probability ``prompt_fraction`` a protected
    prefix (``prompt_split``); every maskable token is masked with probability t, and at least one
    is. Maskable = a real (attended) token that is not a special token and not in the protected
    prefix, plus the SEP fillers. Per batch: with probability ``fill_prob`` a number of SEP
    fillers k, log-uniform in 1 .. ``eos_fill``, inserted before each example's final SEP.

    Returns a dict of tensors: ``input_ids`` (masked), ``attention_mask``, ``labels`` (the
    original id where masked, -100 elsewhere), ``t`` [B] (the drawn rate), ``weights`` [B, T]
    (the per-token loss weights, summing to the loss's normaliser, see the module docstring),
    ``maskable`` and ``protected`` [B, T] (bool).
    """

    def __init__(self, tokenizer: Any, schedule: str = "continuous", levels: int = 10,
                 prompt_fraction: float = 0.5, eos_fill: int = 0, fill_prob: float = 0.5,
                 eps: float = 1e-3, seed: int = 0, max_length: int | None = None):
        if schedule not in SCHEDULES:
            raise UserError(f"Unknown masking schedule '{schedule}'; choose one of "
                            f"{', '.join(SCHEDULES)}.")
        if tokenizer.mask_token_id is None:
            raise UserError("The tokenizer has no mask token; diffusion training needs one.")
        if not 0 <= prompt_fraction <= 1 or not 0 <= fill_prob <= 1 or not 0 < eps < 1:
            raise UserError("prompt_fraction and fill_prob must be in [0, 1], eps in (0, 1).")
        self.tokenizer = tokenizer
        self.schedule = schedule
        self.levels = schedule_levels(schedule, levels) if schedule != "continuous" else None
        self.prompt_fraction = prompt_fraction
        self.eos_fill = max(0, int(eos_fill))
        self.fill_prob = fill_prob
        self.eps = eps
        self.max_length = max_length  # fillers never make a row longer than this
        self.rng = random.Random(seed)
        self.gen = torch.Generator().manual_seed(seed)
        self.mask_id = int(tokenizer.mask_token_id)
        self.pad_id = int(tokenizer.pad_token_id if tokenizer.pad_token_id is not None
                          else tokenizer.mask_token_id)
        fill = tokenizer.sep_token_id if tokenizer.sep_token_id is not None else tokenizer.eos_token_id
        self.fill_id = None if fill is None else int(fill)
        self.special = set(int(i) for i in tokenizer.all_special_ids)
        self.split_ids = set()
        for w in SPLIT_WORDS:
            for variant in (w, "Ġ" + w, "▁" + w):
                i = tokenizer.convert_tokens_to_ids(variant)
                if isinstance(i, int) and i != tokenizer.unk_token_id:
                    self.split_ids.add(i)

    # -- pieces, public so tests and callers can use them

    def draw_t(self) -> float:
        if self.levels is None:
            return self.eps + (1.0 - self.eps) * (1.0 - self.rng.random())  # (eps, 1]
        return self.rng.choice(self.levels)

    def content_span(self, ids: Sequence[int]) -> tuple[int, int]:
        """[start, end) of the non-special tokens between the leading and trailing specials."""
        start, end = 0, len(ids)
        while start < end and ids[start] in self.special:
            start += 1
        while end > start and ids[end - 1] in self.special:
            end -= 1
        return start, end

    def prompt_split(self, ids: Sequence[int]) -> int:
        """Index of the first unprotected token: just after a split word ("is", "?", ...) chosen
        at random among those followed by at least one more content token, else a random point
        leaving at least one content token unprotected."""
        start, end = self.content_span(ids)
        if end - start < 2:
            return start
        cands = [j + 1 for j in range(start, end - 1) if ids[j] in self.split_ids]
        if cands:
            return self.rng.choice(cands)
        return self.rng.randint(start + 1, end - 1)

    def __call__(self, examples: Sequence[Sequence[int]]) -> dict[str, torch.Tensor]:
        k = 0
        if self.eos_fill and self.fill_id is not None and self.rng.random() < self.fill_prob:
            k = max(1, min(self.eos_fill, int(self.eos_fill ** self.rng.random())))
            if self.max_length is not None:
                k = max(0, min(k, self.max_length - max(len(ex) for ex in examples)))
        rows, spans = [], []
        for ex in examples:
            ex = list(ex)
            start, end = self.content_span(ex)
            p = self.prompt_split(ex) if self.rng.random() < self.prompt_fraction else start
            # fillers go right after the content, before the trailing special tokens
            rows.append(ex[:end] + [self.fill_id] * k + ex[end:])
            spans.append((start, p, end, k))
        width = max(len(r) for r in rows)
        b = len(rows)
        ids = torch.full((b, width), self.pad_id, dtype=torch.long)
        att = torch.zeros((b, width), dtype=torch.long)
        maskable = torch.zeros((b, width), dtype=torch.bool)
        protected = torch.zeros((b, width), dtype=torch.bool)
        for i, r in enumerate(rows):
            ids[i, :len(r)] = torch.tensor(r, dtype=torch.long)
            att[i, :len(r)] = 1
            start, p, end, n_fill = spans[i]
            maskable[i, p:end] = torch.tensor([x not in self.special for x in r[p:end]],
                                              dtype=torch.bool)
            maskable[i, end:end + n_fill] = True  # the SEP fillers are targets too
            protected[i, start:p] = True
        t = torch.tensor([self.draw_t() for _ in rows], dtype=torch.float64)
        u = torch.rand((b, width), generator=self.gen, dtype=torch.float64)
        masked = (u < t[:, None]) & maskable
        n_maskable = maskable.sum(dim=1)
        for i in range(b):  # at least one masked token wherever there is one to mask
            if n_maskable[i] > 0 and not masked[i].any():
                where = maskable[i].nonzero().squeeze(-1)
                j = int(torch.randint(len(where), (1,), generator=self.gen))
                masked[i, where[j]] = True
        labels = torch.where(masked, ids, torch.full_like(ids, -100))
        inputs = ids.masked_fill(masked, self.mask_id)
        if self.levels is None:
            eff = torch.maximum(t, 1.0 / n_maskable.clamp(min=1).to(torch.float64))
            per = 1.0 / (eff * n_maskable.clamp(min=1).to(torch.float64)) / b
            weights = masked.to(torch.float64) * per[:, None]
        else:
            weights = masked.to(torch.float64) / max(1, int(masked.sum()))
        return {"input_ids": inputs, "attention_mask": att, "labels": labels, "t": t,
                "weights": weights.to(torch.float32), "maskable": maskable, "protected": protected}


def diffusion_loss(logits: torch.Tensor, batch: dict[str, torch.Tensor]
                   ) -> tuple[torch.Tensor, torch.Tensor]:
    """(the weighted loss to minimise, the plain mean cross-entropy per example over its masked
    tokens [B], for per-level logging)."""
    labels = batch["labels"]
    ce = F.cross_entropy(logits.float().transpose(1, 2), labels.clamp(min=0), reduction="none")
    masked = labels != -100
    ce = ce * masked
    loss = (ce * batch["weights"]).sum()
    per_example = ce.sum(dim=1) / masked.sum(dim=1).clamp(min=1)
    return loss, per_example.detach()


# ----------------------------------------------------------------------------- depth up-scaling

def _layer_list(model: Any) -> torch.nn.ModuleList:
    n = int(model.config.num_hidden_layers)
    base = getattr(model, "base_model", model)
    enc = getattr(base, "encoder", None)
    if enc is not None and isinstance(getattr(enc, "layer", None), torch.nn.ModuleList):
        return enc.layer
    for module in model.modules():
        if isinstance(module, torch.nn.ModuleList) and len(module) == n:
            return module
    raise UserError(f"Cannot find the {n} transformer layers of {type(model).__name__} to grow.")


def grown_order(n_layers: int, grow: int) -> list[int]:
    """Source layer of each layer after inserting ``grow`` copies: the duplicated layers are
    spread evenly over the stack's interior and each copy sits right after its original
    (4 layers, grow 2: [0, 1, 1, 2, 2, 3]; grow 1: [0, 1, 2, 2, 3])."""
    if grow < 0:
        raise UserError(f"grow_layers must be 0 or more, got {grow}.")
    dup = [min(n_layers - 1, (i + 1) * n_layers // (grow + 1)) for i in range(grow)]
    return sorted(list(range(n_layers)) + dup)


def upscale_depth(model: Any, grow: int) -> list[int]:
    """Depth up-scaling in place: copy the layers per ``grown_order``; returns the order."""
    layers = _layer_list(model)
    order = grown_order(len(layers), grow)
    if grow == 0:
        return order
    new = [copy.deepcopy(layers[i]) for i in order]
    for idx, layer in enumerate(new):
        for m in layer.modules():
            if hasattr(m, "layer_idx"):
                m.layer_idx = idx
    layers._modules.clear()
    for idx, layer in enumerate(new):
        layers.add_module(str(idx), layer)
    model.config.num_hidden_layers = len(new)
    return order


# ----------------------------------------------------------------------------- training

@dataclass
class DiffusionConfig:
    steps: int = 2000
    batch_size: int = 32
    lr: float = 1e-3
    warmup: int = 100
    weight_decay: float = 0.01
    max_len: int = 64  # tokens per line (before fillers)
    schedule: str = "continuous"
    levels: int = 10
    prompt_fraction: float = 0.5
    eos_fill: int = 64  # at most this many SEP fillers (log-uniform), in fill_prob of batches
    fill_prob: float = 0.5
    eps: float = 1e-3
    grow_layers: int = 0
    seed: int = 0
    threads: int = 2
    log_every: int = 100


def _load_base(base: str, trust_remote_code: bool = False) -> Loaded:
    """The masked LM ``base`` ready to train: a private copy (training changes the weights in
    place; the dashboard's shared copy must not change, so nothing the loader installs to share
    a model is installed: eager attention, trainable weights), on the CPU in float32 as the
    recipe always ran."""
    options = LoadOptions(trust_remote_code=trust_remote_code, device="cpu", dtype="float32")
    loaded = load_uncached(resolve(base), options, shared=False)
    if loaded.task not in ("fill-mask", "diffusion"):
        raise UserError(f"'{base}' is a {loaded.task} model; diffusion training needs a masked "
                        "LM (e.g. tiny-bert, bert-base-uncased, roberta-base).")
    if getattr(loaded.tokenizer, "mask_token_id", None) is None:
        raise UserError(f"'{base}' has no mask token; diffusion training needs one.")
    return loaded


def _weights_digest(source: str) -> str | None:
    """sha256 of a local base's safetensors weights (which tiny-bert this was made from)."""
    files = sorted(Path(source).glob("*.safetensors")) if Path(source).is_dir() else []
    if not files:
        return None
    h = hashlib.sha256()
    for f in files:
        h.update(f.read_bytes())
    return h.hexdigest()


def encode_lines(tokenizer: Any, lines: Sequence[str], max_len: int) -> list[list[int]]:
    """Token ids of each line with its special tokens, cut to ``max_len`` keeping the final one."""
    encoded = []
    for line in lines:
        ids = tokenizer(line)["input_ids"]
        if len(ids) > max_len:
            ids = ids[:max_len - 1] + ids[-1:]
        encoded.append(ids)
    return encoded


def train_loop(model: Any, tokenizer: Any, lines: list[str], cfg: DiffusionConfig,
               progress: bool = True) -> dict:
    """Train in place (models.train_loop.fit with ``DiffusionCollator`` and ``diffusion_loss``);
    returns {"losses": per step, "level_losses": {bucket: mean CE} of the last log window,
    "history": [{"step", "loss", "level_losses"} every ``cfg.log_every`` steps and at the end]}."""
    from tqdm.auto import tqdm

    context = getattr(model.config, "max_position_embeddings", None)
    collator = DiffusionCollator(tokenizer, cfg.schedule, cfg.levels, cfg.prompt_fraction,
                                 cfg.eos_fill, cfg.fill_prob, cfg.eps, cfg.seed,
                                 max_length=context - 2 if context else None)
    window = [[0.0, 0] for _ in range(N_BUCKETS)]  # (sum, count) of CE per level since the last log
    history: list[dict] = []

    def step_loss(examples: list[list[int]]) -> torch.Tensor:
        batch = collator(examples)
        out = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"])
        loss, per_example = diffusion_loss(out.logits, batch)
        for t, ce in zip(batch["t"].tolist(), per_example.tolist(), strict=True):
            window[level_bucket(t)][0] += ce
            window[level_bucket(t)][1] += 1
        return loss

    def on_step(step: int, losses: list[float]) -> None:
        bar.update(1)
        bar.set_postfix(loss=f"{losses[-1]:.3f}")
        if (cfg.log_every and (step + 1) % cfg.log_every == 0) or step == cfg.steps - 1:
            levels = {bucket_name(b): round(s / n, 4) for b, (s, n) in enumerate(window) if n}
            recent = losses[-cfg.log_every:]
            history.append({"step": step + 1, "loss": round(sum(recent) / len(recent), 4),
                            "level_losses": levels})
            msg = (f"step {step + 1}/{cfg.steps} loss {history[-1]['loss']:.4f} per level: "
                   + " ".join(f"{k}:{v:.2f}" for k, v in levels.items()))
            if progress:
                bar.write(msg)
            log.info(msg)
            window[:] = [[0.0, 0] for _ in range(N_BUCKETS)]

    encoded = encode_lines(tokenizer, lines, cfg.max_len)
    with tqdm(total=cfg.steps, desc="diffusion training", disable=not progress,
              dynamic_ncols=True) as bar:
        losses = fit(model, encoded, step_loss, cfg, on_step)
    return {"losses": losses, "level_losses": history[-1]["level_losses"] if history else {},
            "history": history}


# ----------------------------------------------------------------------------- entry points

def _as_loaded(name: str, model: Any, tokenizer: Any, source: str = "") -> Loaded:
    return Loaded(ModelEntry(name, "local", "diffusion", source), model, tokenizer)


def train_diffusion(base: str, out: str | Path, steps: int = 2000, schedule: str = "continuous",
                    grow_layers: int = 0, lr: float = 1e-3, batch_size: int = 32, seed: int = 0,
                    lines: list[str] | None = None, progress: bool = True, levels: int = 10,
                    prompt_fraction: float = 0.5, eos_fill: int = 64, warmup: int | None = None,
                    evaluate: bool = True, trust_remote_code: bool = False,
                    name: str | None = None, command: str | None = None) -> dict:
    """Fine-tune the masked LM ``base`` (registry name, local folder or hub id) into a diffusion
    LM and save it to ``out``; returns the facts written to out/training.json.

    ``lines`` defaults to the project corpus. ``grow_layers`` > 0 first up-scales the depth
    (see ``upscale_depth``). ``evaluate`` checks the corpus capitals with ``diffusion_generate``
    (length 4, one token per step and at threshold 0.9) and the tokens committed per forward
    pass at threshold 0.9 with length 64.
    """
    if schedule not in SCHEDULES:
        raise UserError(f"Unknown masking schedule '{schedule}'; choose one of {', '.join(SCHEDULES)}.")
    steps, grow_layers = whole_number("steps", steps, 1), whole_number("grow_layers", grow_layers, 0)
    batch_size, seed = whole_number("batch_size", batch_size, 1), whole_number("seed", seed, 0)
    out = Path(out)
    name = name or out.name
    cfg = DiffusionConfig(steps=steps, batch_size=batch_size, lr=lr, schedule=schedule,
                          levels=levels, prompt_fraction=prompt_fraction, eos_fill=eos_fill,
                          grow_layers=grow_layers, seed=seed,
                          warmup=min(100, steps // 10) if warmup is None else warmup)
    lines = corpus_mod.generate() if lines is None else list(lines)
    loaded = _load_base(base, trust_remote_code)
    model, tokenizer = loaded.model, loaded.tokenizer
    base_layers = int(model.config.num_hidden_layers)
    torch.manual_seed(seed)
    order = upscale_depth(model, grow_layers)
    t0, c0 = time.perf_counter(), time.process_time()
    result = train_loop(model, tokenizer, lines, cfg, progress=progress)
    seconds, cpu_seconds = time.perf_counter() - t0, time.process_time() - c0
    model.config.architectures = [type(model).__name__]
    model.config.mask_token_id = int(tokenizer.mask_token_id)
    recent = result["losses"][-50:]
    facts: dict[str, Any] = {
        "name": name, "class": type(model).__name__, "base": base,
        "base_weights_sha256": _weights_digest(loaded.entry.source),
        "base_layers": base_layers, "grow_layers": grow_layers, "layer_order": order,
        "n_layers": int(model.config.num_hidden_layers),
        "n_heads": int(model.config.num_attention_heads),
        "hidden_size": int(model.config.hidden_size), "vocab_size": len(tokenizer),
        "params": sum(p.numel() for p in model.parameters()),
        "train_seconds": round(seconds, 1), "train_cpu_seconds": round(cpu_seconds, 1),
        "context": getattr(model.config, "max_position_embeddings", None),
        "command": command or (f"python dashboard.py train-diffusion --base {base} --out {out} "
                               f"--steps {steps} --schedule {schedule} --grow-layers {grow_layers} "
                               f"--seed {seed}"),
        "final_loss": round(sum(recent) / len(recent), 4),
        "level_losses": result["level_losses"], "loss_history": result["history"],
        "corpus_lines": len(lines), "train_config": asdict(cfg), "torch": torch.__version__,
    }
    if evaluate:
        facts.update(evaluate_diffusion(_as_loaded(name, model, tokenizer, str(out))))
    save_checkpoint(model, tokenizer, out, facts, model_card(facts))
    return facts


TINY_DIFFUSION = dict(steps=1000, schedule="continuous", grow_layers=2, lr=1e-3, batch_size=32,
                      seed=0)


def recipe_tiny_diffusion(out: Path | None = None, progress: bool = True, **overrides) -> dict:
    """models/embedded/tiny-diffusion: tiny-bert grown from 4 to 6 layers ([0, 1, 1, 2, 2, 3]) and
    fine-tuned as a masked-diffusion LM on the project corpus."""
    base = EMBEDDED_DIR / "tiny-bert"
    if not (base / "model.safetensors").is_file():
        raise UserError("models/embedded/tiny-bert is missing; run `python -m models.training "
                        "tiny-bert` first.")
    settings = {**TINY_DIFFUSION, **overrides}
    return train_diffusion("tiny-bert", out or EMBEDDED_DIR / "tiny-diffusion", progress=progress,
                           lines=corpus_mod.generate(), name="tiny-diffusion",
                           command="python -m models.diffusion_training", **settings)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=None, help="folder (default models/embedded/"
                        "tiny-diffusion)")
    parser.add_argument("--steps", type=int, default=None)
    parser.add_argument("--lr", type=float, default=None)
    parser.add_argument("--schedule", choices=SCHEDULES, default=None)
    parser.add_argument("--no-progress", action="store_true")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    overrides = {k: v for k, v in (("steps", args.steps), ("lr", args.lr),
                                   ("schedule", args.schedule)) if v is not None}
    try:
        facts = recipe_tiny_diffusion(args.out, progress=not args.no_progress, **overrides)
    except UserError as exc:
        parser.exit(2, f"error: {exc}\n")
    print(json.dumps({k: v for k, v in facts.items() if k not in ("loss_history",)}, indent=1))


if __name__ == "__main__":
    main()
