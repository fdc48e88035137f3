"""Dataset mode: memory that does not grow with the texts, GPT-2-size memory, and throughput.

    python bench/bench_dataset.py [--part memory|gpt2|throughput|all] [--gpt2-texts 2000]

- memory: peak RSS of tiny-gpt2 over 20,000 texts vs over 200 (each in a fresh process, so
  the peaks do not mix); target ratio <= 1.2.
- gpt2: GPT-2-124M's shape (random weights, GPT2Config defaults: 12 layers, 12 heads, 768
  wide; eager, eval) over 2,000 texts of exactly 128 tokens, batch 16, K = 5000 sampled
  tokens: peak RSS minus the weights' size (target <= 2 GB), and the finalisation's time.
- throughput: tokens/s of the dataset loop (tokenise, forward with the per-layer attention
  record, accumulate) vs a bare batched forward pass with hidden states, same model and
  batches (16 x 128 tokens), measured alternately in one process; once at 1 thread and once
  at 2 threads (two processes: thread counts are set once per process). Target >= 0.8x. A
  floor line gives the ratio the float64 work of the formulas alone would allow, a profile
  line where the dataset loop's time goes.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
os.environ.setdefault("HF_HUB_OFFLINE", "1")

from bench.common import peak_rss_mb, random_model, rss_mb  # noqa: E402

BATCH, LENGTH = 16, 128


def set_threads(n: int) -> None:
    """`n` torch threads; numpy's BLAS and the allocator as the app sets them."""
    from models.loading import use_threads

    use_threads(n)


def corpus_file(n: int, folder: Path) -> Path:
    """n lines of the generated corpus (several seeds of models.corpus.generate)."""
    from models.corpus import CorpusConfig, generate

    lines: list[str] = []
    seed = 0
    while len(lines) < n:
        lines += generate(CorpusConfig(seed=seed))
        seed += 1
    path = folder / f"corpus_{n}.txt"
    path.write_text("\n".join(lines[:n]) + "\n")
    return path


def word_texts(n: int, folder: Path) -> Path:
    """n texts of exactly LENGTH tokens of bench.common's word-level tokenizer."""
    path = folder / f"words_{n}.txt"
    with path.open("w") as fh:
        for i in range(n):
            rng = random.Random(i)
            fh.write(" ".join(f"t{rng.randint(3, 50000)}" for _ in range(LENGTH)) + "\n")
    return path


def gpt2_124m():
    """bench.common's random GPT-2 small, switched to the dashboard attention as the loader does."""
    from models import attention as attention_mod
    from models.loading import block_modules

    loaded = random_model("gpt2-124m")
    if attention_mod.install(loaded.model):
        loaded.attention = attention_mod.NAME
    loaded.block_hook = attention_mod.install_block_hook(block_modules(loaded.model)[-1])
    return loaded


# --- children (one fresh process each) ------------------------------------------------------

def child_tiny(texts: int) -> dict:
    from analysis.dataset import analyze_dataset
    from models.loading import load

    set_threads(1)
    with tempfile.TemporaryDirectory() as tmp:
        path = corpus_file(texts, Path(tmp))
        loaded = load("tiny-gpt2")
        before = rss_mb()
        t0 = time.perf_counter()
        r = analyze_dataset(loaded, str(path), batch_size=BATCH)
        seconds = time.perf_counter() - t0
    return {"texts": r.texts, "tokens": r.tokens, "peak_rss_mb": peak_rss_mb(), "rss_before_mb": before,
            "seconds": seconds, "finalize_seconds": r.finalize_seconds}


def child_gpt2(texts: int, threads: int) -> dict:
    from analysis.dataset import analyze_dataset

    set_threads(threads)
    with tempfile.TemporaryDirectory() as tmp:
        path = word_texts(texts, Path(tmp))
        loaded = gpt2_124m()
        weights = sum(p.numel() * p.element_size() for p in loaded.model.parameters()) / 2**20
        before = rss_mb()
        t0 = time.perf_counter()
        r = analyze_dataset(loaded, str(path), batch_size=BATCH, sample_tokens=5000)
        seconds = time.perf_counter() - t0
    acc, mb = r.accumulator, 2**-20
    return {"texts": r.texts, "tokens": r.tokens, "peak_rss_mb": peak_rss_mb(), "rss_before_mb": before,
            "weights_mb": weights, "seconds": seconds, "finalize_seconds": r.finalize_seconds,
            "tokens_per_second": r.tokens_per_second, "scatter_mb": acc.m2.numel() * 8 * mb,
            "sample_mb": acc.sample.values.nbytes * mb, "pooled_mb": acc.pooled.values.nbytes * mb,
            "pooled_cap": acc.meta["pooled_texts"], "pooled_per_text_mb": 13 * 768 * 8 * mb}


class Timers:
    """Wall time spent inside named functions (wrapped for this process only)."""

    def __init__(self):
        self.seconds: dict[str, float] = {}

    def wrap(self, owner, name: str, label: str) -> None:
        fn = getattr(owner, name)

        def timed(*a, **kw):
            t0 = time.perf_counter()
            try:
                return fn(*a, **kw)
            finally:
                self.seconds[label] = self.seconds.get(label, 0.0) + time.perf_counter() - t0
        setattr(owner, name, timed)


def floor_seconds(texts, loaded, repeats: int = 3) -> float:
    """Seconds a batch needs for the float64 work the formulas themselves call for, with nothing
    else: each layer's rows in float64, centred, added to the d x d scatter; each text's Gram
    and its two eigendecompositions (design.md: effective rank and the activation entropy's
    unit-row Gram); each attention layer's a log a over the causal part. Layers side by side
    as the accumulator runs them (analysis.parallel). Median of `repeats`."""
    import torch

    from analysis import attention as att_mod
    from analysis import dataset as D
    from analysis import parallel
    from analysis.dataset_math import _row_blocks, add_gram

    b = D.encode_batch(loaded.tokenizer, texts, LENGTH, "cpu")
    hidden, _, _ = D.forward_batch(loaded, b)
    d, heads = hidden[0].shape[-1], loaded.n_heads
    scores = torch.randn(BATCH, heads, LENGTH, LENGTH).masked_fill_(
        torch.ones(LENGTH, LENGTH, dtype=torch.bool).triu(1), -torch.inf)
    attn = torch.softmax(scores, -1)  # a causal attention layer's shape
    m2 = torch.zeros(len(hidden), d, d, dtype=torch.float64)

    def layer(i: int) -> None:
        x = hidden[i].to(torch.float64, copy=True)
        rows = x.reshape(-1, d)
        add_gram(m2[i], rows - rows.mean(0))
        g = x @ x.mT
        torch.linalg.eigvalsh(g)
        torch.linalg.eigvalsh(g)
        if i > 0:
            for r0, r1, k1 in _row_blocks(LENGTH, LENGTH, True):
                att_mod.xlogx(attn[:, :, r0:r1, :k1].to(torch.float64, copy=True)).sum(-1)
    seconds = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        parallel.map_torch_layers(layer, range(len(hidden)))
        seconds.append(time.perf_counter() - t0)
    return statistics.median(seconds)


def child_throughput(threads: int, rounds: int) -> dict:
    import torch

    from analysis import accumulate as A
    from analysis import dataset as D

    set_threads(threads)
    loaded = gpt2_124m()
    rng = random.Random(0)
    batches = [[(b * BATCH + i, " ".join(f"t{rng.randint(3, 50000)}" for _ in range(LENGTH)))
                for i in range(BATCH)] for b in range(rounds + 1)]
    acc = A.DatasetAccumulator("gpt2-124m", 12, 768, 12, sample_tokens=5000)
    timers = Timers()
    for owner, name, label in ((D, "forward_batch", "forward+record"), (D, "text_head_stats", "head stats"),
                               (A.DatasetAccumulator, "add_batch", "accumulate"),
                               (A, "text_layer_metrics", "per-text metrics"),
                               (A.DatasetAccumulator, "_add_scatter", "scatter"),
                               (A.DatasetAccumulator, "_offer_rows", "token sample"),
                               (A.DatasetAccumulator, "_add_heads", "head moments")):
        timers.wrap(owner, name, label)

    def bare(texts):
        b = D.encode_batch(loaded.tokenizer, texts, LENGTH, "cpu")
        with torch.no_grad():
            loaded.model(input_ids=b.ids, attention_mask=b.attention.long(), output_hidden_states=True,
                         use_cache=False, logits_to_keep=1)

    def dataset_step(texts):
        b = D.encode_batch(loaded.tokenizer, texts, LENGTH, "cpu")
        hidden, heads, _ = D.forward_batch(loaded, b)
        acc.add_batch(hidden, b.attention, b.text_ids, heads)

    bare(batches[0])
    dataset_step(batches[0])  # warm-up (and the sample's first fill)
    timers.seconds.clear()
    t_bare, t_data = [], []
    for texts in batches[1:]:
        for fn, out in ((bare, t_bare), (dataset_step, t_data)):
            t0 = time.perf_counter()
            fn(texts)
            out.append(time.perf_counter() - t0)
    tokens = BATCH * LENGTH
    profile = {k: v / sum(t_data) for k, v in timers.seconds.items()}  # before the floor's own pass
    floor = floor_seconds(batches[-1], loaded)
    return {"threads": threads, "floor_seconds": floor, "bare_seconds": statistics.median(t_bare),
            "bare_tps": [tokens / t for t in t_bare],
            "dataset_tps": [tokens / t for t in t_data],
            "ratios": [b / d for b, d in zip(t_bare, t_data, strict=True)],
            "profile": profile}


# --- the parent: runs children and prints ratios --------------------------------------------

def run_child(*args: str, timeout: int = 4 * 3600) -> dict:
    proc = subprocess.run([sys.executable, __file__, "--child", *args], capture_output=True, text=True,
                          timeout=timeout, env={**os.environ, "OMP_NUM_THREADS": "1"})
    if proc.returncode != 0:
        raise SystemExit(f"child {args} failed:\n{proc.stderr[-3000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def part_memory() -> None:
    small, large = run_child("tiny", "200"), run_child("tiny", "20000")
    print(f"memory: tiny-gpt2 peak RSS {large['peak_rss_mb']:.0f} MB over {large['texts']} texts "
          f"({large['tokens']} tokens, {large['seconds']:.0f} s) vs {small['peak_rss_mb']:.0f} MB over "
          f"{small['texts']} texts -> ratio {large['peak_rss_mb'] / small['peak_rss_mb']:.3f}x "
          "(target <= 1.2); "
          f"growth over the loaded model: {large['peak_rss_mb'] - large['rss_before_mb']:.0f} MB vs "
          f"{small['peak_rss_mb'] - small['rss_before_mb']:.0f} MB", flush=True)


def part_gpt2(texts: int, threads: int) -> None:
    r = run_child("gpt2", str(texts), str(threads))
    over = r["peak_rss_mb"] - r["weights_mb"]
    print(f"gpt2-124m shape: {r['texts']} texts x {LENGTH} tokens, {threads} thread(s): peak RSS "
          f"{r['peak_rss_mb']:.0f} MB, weights {r['weights_mb']:.0f} MB -> peak minus weights {over:.0f} MB "
          f"(target <= 2048; RSS with the model loaded, before the run: {r['rss_before_mb']:.0f} MB); "
          f"whole run {r['seconds']:.0f} s at {r['tokens_per_second']:.0f} tokens/s, of which "
          f"finalisation {r['finalize_seconds']:.0f} s", flush=True)
    grow = r["pooled_per_text_mb"]
    print(f"  accumulator: scatter {r['scatter_mb']:.0f} MB, token sample {r['sample_mb']:.0f} MB, pooled "
          f"text means {r['pooled_mb']:.0f} MB (they grow {grow * 1024:.0f} KB a text up to "
          f"{r['pooled_cap']} texts, {grow * r['pooled_cap']:.0f} MB; nothing else grows with the texts "
          "but 8 floats per text and layer)", flush=True)
    if texts < 2000:
        more = (2000 - r["texts"]) * grow
        print(f"  at 2000 texts the pooled means add {more:.0f} MB: peak minus weights ~{over + more:.0f} MB "
              "(computed from this run, not measured)", flush=True)


def part_throughput(rounds: int) -> None:
    for threads in (1, 2):
        r = run_child("throughput", str(threads), str(rounds))
        ratios = r["ratios"]
        p = dict(r["profile"])
        wall = ", ".join(f"{k} {p.pop(k, 0):.0%}" for k in ("forward+record", "head stats", "accumulate"))
        inner = ", ".join(f"{k} {v:.0%}" for k, v in sorted(p.items(), key=lambda kv: -kv[1]))
        med = statistics.median
        print(f"throughput, {threads} thread(s): dataset loop {med(r['dataset_tps']):.0f} tokens/s vs "
              f"bare forward with hidden states {med(r['bare_tps']):.0f} tokens/s -> ratio median "
              f"{med(ratios):.2f}x, range {min(ratios):.2f}-{max(ratios):.2f}x over {len(ratios)} "
              "alternating rounds (target >= 0.8)", flush=True)
        floor, bare = r["floor_seconds"], r["bare_seconds"]
        print(f"  floor: the float64 work the formulas call for (scatter, per-text Grams and their two "
              f"eigendecompositions, head a log a) alone takes {floor:.2f} s a batch against the bare "
              f"pass's {bare:.2f} s: with everything else free the ratio could reach "
              f"{bare / (bare + floor):.2f}x",
              flush=True)
        print(f"  where the dataset loop's time goes: {wall} (head stats run inside forward+record); "
              f"inside accumulate, summed over the threads that run layers side by side: {inner}", flush=True)


def main() -> None:
    if len(sys.argv) > 1 and sys.argv[1] == "--child":
        kind, *rest = sys.argv[2:]
        fn = {"tiny": child_tiny, "gpt2": child_gpt2, "throughput": child_throughput}[kind]
        print(json.dumps(fn(*map(int, rest))))
        return
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--part", choices=("memory", "gpt2", "throughput", "all"), default="all")
    ap.add_argument("--gpt2-texts", type=int, default=2000)
    ap.add_argument("--gpt2-threads", type=int, default=1)  # faster here: see the throughput part
    ap.add_argument("--rounds", type=int, default=3)
    args = ap.parse_args()
    print("(a shared, noisy machine gives ranges, not constants: rerun before quoting a figure)", flush=True)
    if args.part in ("memory", "all"):
        part_memory()
    if args.part in ("throughput", "all"):
        part_throughput(args.rounds)
    if args.part in ("gpt2", "all"):
        part_gpt2(args.gpt2_texts, args.gpt2_threads)


if __name__ == "__main__":
    main()
