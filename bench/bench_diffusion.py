"""Diffusion at full speed: tiny-diffusion with Fast-dLLM's block KV cache, confidence-threshold
parallel decoding and early stopping, against tiny-gpt2 with its KV cache, counting content
tokens.

    python bench/bench_diffusion.py [--prompts N] [--lengths 32,64]

Over the capitals set (models/data/capitals.tsv), for every prompt and both canvas lengths,
one process runs alternately (the order turns from prompt to prompt, so every configuration
sees the same machine state):
- tiny-gpt2, autoregressive, KV cache, stopping at its end-of-sequence token (at most 64 tokens);
- tiny-diffusion: one block at threshold 0.9 (the plain sampler); blocks of 16 with early stop,
  uncached, prefix cache and dual cache at threshold 0.9; the dual cache at threshold 0.7;
- untimed references: the uncached run of the same settings and the uncached one-token-per-step
  run (blocks of 16), for the agreement figures.

What counts (models.generation): *content tokens* are the tokens before the first end-of-
sequence/padding token; tokens/s = content tokens / the samplers' own clock (the sampling loop),
one thread, memory not measured. Accuracy: the first word of the text is the expected capital.
Agreement: the text is the same as the reference's.
"""

from common import line  # noqa: I001

import argparse
import time
from dataclasses import dataclass, field

import torch

from models.compare import CAPITALS_FILE, read_prompts_file
from models.generation import autoregressive_generate, diffusion_generate
from models.loading import load, set_threads

AR_BUDGET = 64
BLOCK = 16


@dataclass(frozen=True)
class Config:
    name: str
    block_length: int | None
    threshold: float
    cache: str = "none"
    early_stop: bool = False

    def run(self, model, prompt: str, length: int):
        return diffusion_generate(model, prompt, length, block_length=self.block_length,
                                  threshold=self.threshold, cache=self.cache,
                                  early_stop=self.early_stop, measure_memory=False)

    def uncached(self) -> "Config":
        return Config(self.name + " (uncached)", self.block_length, self.threshold, "none",
                      self.early_stop)


CONFIGS = [
    Config("one block, threshold 0.9", None, 0.9),
    Config(f"blocks of {BLOCK}, 0.9, early stop, no cache", BLOCK, 0.9, "none", True),
    Config(f"blocks of {BLOCK}, 0.9, early stop, prefix cache", BLOCK, 0.9, "prefix", True),
    Config(f"blocks of {BLOCK}, 0.9, early stop, dual cache", BLOCK, 0.9, "dual", True),
    Config(f"blocks of {BLOCK}, 0.7, early stop, dual cache", BLOCK, 0.7, "dual", True),
]


@dataclass
class Tally:
    """Sums over the prompts of one configuration."""

    name: str
    seconds: float = 0.0
    content: int = 0
    positions: int = 0
    nfe: int = 0
    right: int = 0
    runs: int = 0
    same_uncached: int = 0
    same_one_per_step: int = 0
    refreshes: int = 0
    stopped: int = 0
    texts: list = field(default_factory=list)

    def add(self, res, expected: str) -> None:
        self.seconds += res.seconds
        self.content += res.generated_tokens
        self.positions += res.positions
        self.nfe += res.nfe
        self.refreshes += res.kv_refreshes
        self.stopped += bool(res.stop_note)
        words = res.text.replace(".", " ").split()
        self.right += bool(words) and words[0].lower() == expected.lower()
        self.runs += 1
        self.texts.append(res.text)

    @property
    def tokens_per_second(self) -> float:
        return self.content / self.seconds

    def row(self, ar: "Tally | None") -> str:
        ratio = f"{self.tokens_per_second / ar.tokens_per_second:.2f}x" if ar else "1x"
        agree = (f"{self.same_uncached}/{self.runs}" if ar else "-")
        one = (f"{self.same_one_per_step}/{self.runs}" if ar else "-")
        return (f"| {self.name} | {self.right}/{self.runs} | {self.nfe / self.runs:.2f} | "
                f"{self.content / self.nfe:.2f} | {self.tokens_per_second:.1f} | {ratio} | "
                f"{agree} | {one} | {self.refreshes / self.runs:.2f} | {self.stopped} |")


def reference_texts(model, pairs, length: int) -> tuple[dict, dict]:
    """(uncached text per (config, prompt), one-token-per-step text per prompt), untimed."""
    uncached, one = {}, {}
    for prompt, _ in pairs:
        for c in CONFIGS:
            uncached[c.name, prompt] = c.uncached().run(model, prompt, length).text
        one[prompt] = diffusion_generate(model, prompt, length, steps=length, block_length=BLOCK,
                                         measure_memory=False, n_candidates=0).text
    return uncached, one


def bench_length(diff, ar, pairs, length: int) -> tuple[Tally, list[Tally]]:
    tallies = [Tally(c.name) for c in CONFIGS]
    auto = Tally(f"tiny-gpt2, KV cache, stops at EOS (at most {AR_BUDGET})")
    for k, (prompt, expected) in enumerate(pairs):
        order = list(range(len(CONFIGS)))
        order = order[k % len(order):] + order[:k % len(order)]  # turn the order each prompt
        if k % 2 == 0:
            auto.add(autoregressive_generate(ar, prompt, AR_BUDGET, measure_memory=False),
                     expected)
        for i in order:
            tallies[i].add(CONFIGS[i].run(diff, prompt, length), expected)
        if k % 2 == 1:
            auto.add(autoregressive_generate(ar, prompt, AR_BUDGET, measure_memory=False),
                     expected)
    uncached, one = reference_texts(diff, pairs, length)
    for c, t in zip(CONFIGS, tallies, strict=True):
        for (prompt, _), text in zip(pairs, t.texts, strict=True):
            t.same_uncached += text == uncached[c.name, prompt]
            t.same_one_per_step += text == one[prompt]
    return auto, tallies


def median_ms(fn, n: int = 15) -> float:
    import statistics

    fn()
    times = []
    for _ in range(n):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times) * 1000


def profile_lines(diff, ar, prompt: str, length: int, auto: Tally, fast: Tally) -> None:
    """Why the fast configuration is as fast as it is: the cost of its two kinds of forward
    pass against tiny-gpt2's step, measured now, and the best ratio two passes allow."""
    from models.autoregressive import cache_keyword
    from models.kv_cache import full_pass, window_pass

    tok = diff.tokenizer
    ids = tok(prompt)["input_ids"]
    x = torch.tensor([ids[:-1] + [tok.mask_token_id] * length + [ids[-1]]])
    start = len(ids) - 1
    g_ids = torch.tensor([ar.tokenizer(prompt)["input_ids"]])
    kw = cache_keyword(ar.model)
    with torch.inference_mode():
        _, kv = full_pass(diff.model, x)
        full = median_ms(lambda: full_pass(diff.model, x))
        window = median_ms(lambda: window_pass(diff.model, x, start, start + BLOCK, kv, "dual"))
        out = ar.model(input_ids=g_ids, use_cache=True)
        nxt = g_ids[:, -1:]
        step = median_ms(lambda: ar.model(input_ids=nxt, use_cache=True,
                                          **{kw: out.past_key_values.copy()
                                             if hasattr(out.past_key_values, "copy")
                                             else out.past_key_values}))
    content = fast.content / fast.runs
    best = content / ((full + window) / 1000)
    print(f"  profile, length {length}: tiny-diffusion full pass over {x.shape[1]} tokens "
          f"(6 layers) {full:.1f} ms, dual-cache window of {BLOCK} {window:.1f} ms; tiny-gpt2 "
          f"decoding step (3 layers) {step:.1f} ms; the fast configuration takes "
          f"{fast.nfe / fast.runs:.2f} passes per run (the first in a block is full, the rest "
          f"windows); with exactly 1 full + 1 window pass and no sampler time, "
          f"{content:.1f} content tokens would take {full + window:.1f} "
          f"ms: at most {best:.0f} content tokens/s = {best / auto.tokens_per_second:.2f}x "
          "tiny-gpt2 as measured here", flush=True)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--prompts", type=int, default=None, help="first N capitals only")
    parser.add_argument("--lengths", default="32,64")
    args = parser.parse_args()
    set_threads(1_300_000)  # tiny models: one thread (models.loading.set_threads)
    torch.manual_seed(0)
    diff, ar = load("tiny-diffusion"), load("tiny-gpt2")
    pairs = [(p, e or "") for p, e in read_prompts_file(CAPITALS_FILE)][:args.prompts]
    for c in CONFIGS:  # warm up every path, untimed
        c.run(diff, pairs[0][0], 32)
    autoregressive_generate(ar, pairs[0][0], AR_BUDGET, measure_memory=False)
    t0 = time.perf_counter()
    header = ("| configuration | accuracy | passes per run | content tokens per pass | content "
              "tokens/s | vs tiny-gpt2 | same text as uncached | same text as uncached 1 per "
              f"step (blocks of {BLOCK}) | KV refreshes per run | stopped early |\n"
              "|---|---|---|---|---|---|---|---|---|---|")
    for length in (int(n) for n in args.lengths.split(",")):
        auto, tallies = bench_length(diff, ar, pairs, length)
        print(f"\n{len(pairs)} capitals prompts, canvas {length}; content = tokens before the "
              "first end-of-sequence token; one thread, alternating order\n")
        print(header)
        print(auto.row(None))
        for t in tallies:
            print(t.row(auto))
        fast = tallies[-1]
        line(f"  length {length}: {fast.name}: content tokens/s vs tiny-gpt2",
             fast.tokens_per_second, "tokens/s", auto.tokens_per_second, ">= 1.5x")
        line(f"  length {length}: {fast.name}: content tokens per forward pass",
             fast.content / fast.nfe, "tokens", 1.0, ">= 2")
        dual = tallies[3]
        print(f"  length {length}: dual cache (0.9) answer = uncached answer: "
              f"{dual.same_uncached}/{dual.runs} = {dual.same_uncached / dual.runs:.0%} "
              "(target >= 95%)", flush=True)
        profile_lines(diff, ar, pairs[0][0], length, auto, fast)
    print(f"\n(bench took {time.perf_counter() - t0:.0f} s)")


if __name__ == "__main__":
    main()
