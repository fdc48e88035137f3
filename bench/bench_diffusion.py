"""Target 4: parallel decoding on tiny-diffusion against tiny-gpt2, counting content tokens.

    python bench/bench_diffusion.py

Over the capitals set (models/data/capitals.tsv), for every prompt, run alternately (the order
flips from prompt to prompt, so both see the same machine state):
- tiny-diffusion with threshold 0.9 on a canvas of 32 and of 64 positions;
- tiny-gpt2 autoregressive with the KV cache, stopping at its end-of-sequence token (budget 64);
- tiny-diffusion one token per step (64 steps), the unparallel baseline (for the answer check).

What counts (models.generation): *content tokens* are the generated tokens before the first
end-of-sequence/padding token ([SEP] for tiny-diffusion, <|endoftext|> for tiny-gpt2). A
diffusion model commits its whole canvas, and at threshold 0.9 most of it is [SEP] committed in
the first pass: those positions are canvas, not text. Printed per configuration: content tokens
per forward pass, canvas positions per forward pass, content tokens/s, and the ratio of content
tokens/s to the autoregressive run; accuracy = the first word of the text is the expected capital.
Timing: the samplers' own clock (the sampling loop only), one thread; memory is not measured here.
"""

from common import line  # noqa: I001

import statistics

import torch

from models.generation import autoregressive_generate, diffusion_generate, read_prompts_file
from models.loading import load
from ui.diffusion_tab import CAPITALS_FILE

LENGTHS = (32, 64)
THRESHOLD = 0.9
AR_BUDGET = 64


def first_word(text: str) -> str:
    words = text.replace(".", " ").split()
    return words[0].lower() if words else ""


def first_sentence(text: str) -> str:
    return text.split(".")[0].strip().lower()


class Tally:
    """Sums over the prompts of one configuration."""

    def __init__(self, name: str):
        self.name = name
        self.seconds = 0.0
        self.content = self.positions = self.nfe = self.right = self.runs = 0

    def add(self, res, expected: str) -> None:
        self.seconds += res.seconds
        self.content += res.generated_tokens
        self.positions += res.positions
        self.nfe += res.nfe
        self.right += first_word(res.text) == expected.lower()
        self.runs += 1

    @property
    def tokens_per_second(self) -> float:
        return self.content / self.seconds

    def report(self, ar: "Tally | None", target: str = ">= 1x") -> None:
        print(f"{self.name}: accuracy {self.right}/{self.runs} = {self.right / self.runs:.0%}; "
              f"{self.content / self.runs:.1f} content tokens of {self.positions / self.runs:.0f} "
              f"positions per run; {self.nfe / self.runs:.2f} forward passes per run; "
              f"{self.content / self.nfe:.2f} content tokens per forward pass, "
              f"{self.positions / self.nfe:.2f} positions per forward pass; "
              f"{self.tokens_per_second:.1f} content tokens/s "
              f"({self.positions / self.seconds:.1f} positions/s)", flush=True)
        if ar is not None:
            line(f"  {self.name} content tokens/s vs tiny-gpt2 autoregressive (KV cache, stops "
                 "at EOS)", self.tokens_per_second, "tokens/s", ar.tokens_per_second, target)


def main() -> None:
    torch.set_num_threads(1)  # tiny models: one thread is fastest (see analysis.run.compute_threads)
    diff, ar = load("tiny-diffusion"), load("tiny-gpt2")
    pairs = read_prompts_file(CAPITALS_FILE)
    first = pairs[0][0]
    for n in LENGTHS:  # warm up both, untimed
        diffusion_generate(diff, first, n, threshold=THRESHOLD, measure_memory=False)
    autoregressive_generate(ar, first, AR_BUDGET, measure_memory=False)

    tallies = {n: Tally(f"tiny-diffusion, {n} positions, threshold {THRESHOLD}") for n in LENGTHS}
    auto = Tally(f"tiny-gpt2 autoregressive, KV cache, stops at EOS (budget {AR_BUDGET})")
    one = Tally("tiny-diffusion, 64 positions, one token per step")
    same_answer = 0
    per_pass = []
    for k, (prompt, expected) in enumerate(pairs):
        expected = expected or ""

        def run_ar(prompt=prompt, expected=expected):
            auto.add(autoregressive_generate(ar, prompt, AR_BUDGET, measure_memory=False),
                     expected)

        def run_diff(prompt=prompt, expected=expected):
            for n in LENGTHS:
                res = diffusion_generate(diff, prompt, n, threshold=THRESHOLD,
                                         measure_memory=False)
                tallies[n].add(res, expected)
                if n == 64:
                    fast = res
            return fast

        if k % 2 == 0:
            run_ar()
            fast = run_diff()
        else:
            fast = run_diff()
            run_ar()
        slow = diffusion_generate(diff, prompt, 64, steps=64, measure_memory=False)
        one.add(slow, expected)
        same_answer += first_sentence(fast.text) == first_sentence(slow.text)
        per_pass.append(fast.tokens_per_forward_pass)

    n = len(pairs)
    print(f"{n} capitals prompts; content = generated tokens before the first end-of-sequence "
          "token; one thread, alternating order")
    auto.report(None)
    for t in tallies.values():
        t.report(auto)
    one.report(auto, "(for reference)")
    line("threshold 0.9, 64 positions: content tokens per forward pass (mean over prompts)",
         statistics.mean(per_pass), "tokens", 1.0,
         ">= 3x (baseline: one position committed per forward pass)")
    print(f"threshold 0.9 vs one-token-per-step (64 positions): same answer (text up to the first "
          f"full stop) in {same_answer}/{n} = {same_answer / n:.0%} of prompts (target >= 90%)")


if __name__ == "__main__":
    main()
