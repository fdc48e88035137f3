"""What the embedded models' heads do, measured: the figures the README quotes.

    python bench/bench_heads.py

For each embedded model: the best previous-token score on two natural prompts from its corpus,
the three highest induction scores (repeated random sequence of 10 probe words), and for the
causal models how far their copying reaches: the share of the second copy of a repeated random
sequence predicted correctly (greedy, teacher-forced), by the length of the repeated block.
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from analysis.attention import repeated_sequence  # noqa: E402
from analysis.run import analyze_model, induction_probe, induction_scores  # noqa: E402
from models.loading import load  # noqa: E402

PROMPTS = ["anna met tom at the market. tom asked anna about the capital of japan. anna said the "
           "capital of japan is",
           "mia and leo went to the park. mia saw a dog. the dog says woof. leo laughed at the dog."]
PERIODS = (5, 10, 15, 20, 25, 30, 40)
SEEDS = 5


def head_name(flat: int, n_heads: int) -> str:
    return f"L{flat // n_heads + 1}H{flat % n_heads}"


def copying(loaded, period: int) -> float:
    """Mean share of second-copy tokens (after its first) that greedy prediction gets right."""
    pool, _ = induction_probe(loaded)
    prefix = [loaded.tokenizer.bos_token_id] if loaded.tokenizer.bos_token_id is not None else []
    shares = []
    for seed in range(SEEDS):
        ids = repeated_sequence(pool, period, seed, prefix)
        with torch.no_grad():
            pred = loaded.model(input_ids=torch.tensor([ids])).logits[0].argmax(-1).numpy()
        start = len(prefix) + period  # first position of the second copy
        shares.append(np.mean([pred[i - 1] == ids[i] for i in range(start + 1, start + period)]))
    return float(np.mean(shares))


def main() -> None:
    for name in ("tiny-gpt2", "tiny-bert", "tiny-llama", "tiny-diffusion"):
        loaded = load(name)
        best = []
        for prompt in PROMPTS:
            if loaded.task != "causal":
                prompt += " [MASK]."
            r = analyze_model(loaded, [prompt], gradients=False)
            prev = r.heads.previous_token_score.ravel()
            best.append(f"{prev.max():.2f} ({head_name(int(prev.argmax()), loaded.n_heads)})")
        ind = induction_scores(loaded, 0).ravel()
        top = ", ".join(f"{head_name(int(i), loaded.n_heads)} {ind[i]:.3f}"
                        for i in np.argsort(-ind)[:3])
        print(f"{name:15s} best previous-token score per prompt: {'; '.join(best)}")
        print(f"{'':15s} top induction scores: {top}")
        if loaded.task == "causal":
            shares = ", ".join(f"{p}: {copying(loaded, p):.2f}" for p in PERIODS)
            print(f"{'':15s} copying (block length: share right): {shares}")


if __name__ == "__main__":
    main()
