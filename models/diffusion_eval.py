"""The checks a trained masked-diffusion LM's model card reports, and the card itself.

- ``diffusion_capital_accuracy``: the corpus capitals answered by ``diffusion_generate``, one
  token per step or at a confidence threshold.
- ``tokens_per_forward``: tokens committed per forward pass at a threshold.
- ``evaluate_diffusion``: both, as the facts models/diffusion_training.py writes to
  training.json; ``model_card``: the checkpoint's README.md from those facts.
"""

from __future__ import annotations

import re
import textwrap
from typing import Any

from models import corpus as corpus_mod
from models.generation import diffusion_generate
from models.loading import Loaded


def contains_word(text: str, word: str) -> bool:
    return re.search(rf"(?<![a-z0-9]){re.escape(word.lower())}(?![a-z0-9])", text.lower()) is not None


def diffusion_capital_accuracy(loaded: Any, threshold: float | None = None, length: int = 4,
                               steps: int | None = None) -> tuple[float, list[str]]:
    """Fraction of corpus capitals whose generated answer to "the capital of X is" contains
    the capital as a word: one token per step (steps = length) or, with ``threshold``, every
    masked position at least that confident per step."""
    misses = []
    facts = corpus_mod.capital_facts()
    for country, capital in facts:
        res = diffusion_generate(loaded, f"the capital of {country} is", length,
                                 steps=steps if steps is not None else length,
                                 threshold=threshold, n_candidates=0, measure_memory=False)
        if not contains_word(res.text, capital):
            misses.append(f"{country}: {res.text!r}")
    return 1 - len(misses) / len(facts), misses


def tokens_per_forward(loaded: Any, prompt: str = "the capital of japan is", length: int = 64,
                       threshold: float = 0.9) -> dict:
    """Tokens committed per forward pass when generating ``length`` tokens at ``threshold``."""
    res = diffusion_generate(loaded, prompt, length, threshold=threshold, n_candidates=0,
                             measure_memory=False)
    return {"prompt": prompt, "length": length, "threshold": threshold, "nfe": res.nfe,
            "tokens_per_forward": round(length / res.nfe, 2), "text": res.text}


def evaluate_diffusion(loaded: Loaded) -> dict:
    """The model-card checks: corpus capitals answered one token per step and at threshold 0.9,
    and the tokens committed per forward pass at threshold 0.9 with length 64."""
    acc1, miss1 = diffusion_capital_accuracy(loaded)
    acc2, miss2 = diffusion_capital_accuracy(loaded, threshold=0.9)
    return {"capital_accuracy_one_per_step": acc1, "capital_accuracy_threshold": acc2,
            "capital_misses_one_per_step": miss1, "capital_misses_threshold": miss2,
            "threshold_64": tokens_per_forward(loaded)}


def model_card(f: dict) -> str:
    """README.md of a trained checkpoint: what it is, how it was made, what it can do, limits."""
    c = f["train_config"]
    grown = (f"first grown from {f['base_layers']} to {f['n_layers']} layers by depth up-scaling "
             f"(new layer i is a copy of base layer {f['layer_order']}[i]), then "
             if f["grow_layers"] else "")
    rates = ("continuous masking rates t ~ U(0.001, 1] and the 1/t loss weight of masked "
             "diffusion" if c["schedule"] == "continuous"
             else f"{c['levels']} masking levels of a {c['schedule']} schedule and an unweighted loss")
    if "capital_accuracy_one_per_step" in f:
        tpf = f["threshold_64"]
        checks = (f"Asked `the capital of X is` with 4 masked tokens (diffusion_generate, greedy, "
                  f"low-confidence remasking), it answers the capital for "
                  f"{f['capital_accuracy_one_per_step']:.0%} of the corpus's "
                  f"{len(corpus_mod.CAPITALS)} countries when it commits one token per step, and "
                  f"for {f['capital_accuracy_threshold']:.0%} at confidence threshold 0.9. At "
                  f"threshold 0.9 with 64 masked tokens it commits {tpf['tokens_per_forward']} "
                  f"tokens per forward pass on `{tpf['prompt']}` ({tpf['nfe']} passes: "
                  f"{tpf['text']!r}).")
    else:
        checks = "No capital check was run."
    levels = " ".join(f"{k}: {v:.3f}," for k, v in f["level_losses"].items()).rstrip(",")
    paragraphs = [
        f"A masked-diffusion language model: a {f['class']} with {f['n_layers']} layers, "
        f"{f['n_heads']} heads, hidden size {f['hidden_size']} and {f['params']:,} parameters "
        "that generates by starting from a fully masked answer and unmasking it over a few steps "
        "(LLaDA-style; see models/generation.py). It keeps BERT's architecture and mask token; "
        "only the training differs.",
        "How it was made (models/diffusion_training.py):",
        "    " + f["command"],
        f"Base: `{f['base']}` ({f['base_layers']} layers), {grown}fine-tuned for {c['steps']} "
        f"steps of AdamW (lr {c['lr']}, {c['warmup']} warm-up steps, cosine decay, batch "
        f"{c['batch_size']}) with {rates}. Half of the lines keep a prompt prefix unmasked (split "
        "after \"is\", \"?\", \"says\", \"goes\" or \"in\", else at a random point), and "
        f"half of the batches carry up to {c['eos_fill']} [SEP] fillers before the final [SEP] "
        "so the model learns to end an answer and fill the rest of a fixed-length region. "
        f"Training data: {f['corpus_lines']} lines of the project corpus (models/corpus.py). "
        f"Trained on {c['threads']} CPU threads in {f['train_seconds']} s wall time "
        f"({f['train_cpu_seconds']} s of CPU time); final loss {f['final_loss']}.",
        f"Mean cross-entropy per masking level at the end of training: {levels}.",
        checks,
        "Limits: it knows only the toy corpus (capitals, animal sounds, colours, opposites, short "
        "stories, repeated word sequences) and nothing else. It saw lines of at most "
        f"{c['max_len']} tokens in a context of {f['context']} positions; long generations end "
        "with [SEP] fillers, which the samplers cut off. It is a toy for watching a diffusion LM "
        "unmask, not a language model for use.",
    ]
    body = "\n\n".join(p if p.startswith("    ") else textwrap.fill(p, 96) for p in paragraphs)
    return f"# {f['name']}\n\n{body}\n"
