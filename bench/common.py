"""Shared helpers for the benchmarks: real-shaped random models, timing, memory."""

from __future__ import annotations

import os
import resource
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
os.environ.setdefault("HF_HUB_OFFLINE", "1")


def synthetic_tokenizer(vocab_size: int, bos: bool):
    """A word-level tokenizer 't3 .. tN' so real-sized vocabularies need no download.

    The special tokens have names that cannot occur inside a word ('t1' would: special tokens
    are matched as substrings before splitting, so 't12' would become 't1' + '2')."""
    from tokenizers import Tokenizer, pre_tokenizers, processors
    from tokenizers.models import WordLevel
    from transformers import PreTrainedTokenizerFast

    vocab = {"<unk>": 0, "<s>": 1, "</s>": 2, **{f"t{i}": i for i in range(3, vocab_size)}}
    tok = Tokenizer(WordLevel(vocab, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    if bos:
        tok.post_processor = processors.TemplateProcessing(single="<s> $A", special_tokens=[("<s>", 1)])
    return PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="<unk>", bos_token="<s>",
                                   eos_token="</s>", pad_token="</s>")


def random_model(kind: str):
    """A randomly initialised model with the real architecture (compute cost needs no weights)."""
    import torch
    from transformers import GPT2Config, GPT2LMHeadModel, LlamaConfig, LlamaForCausalLM

    from models.loading import prepare
    from models.registry import ModelEntry

    torch.manual_seed(0)
    if kind == "gpt2-124m":
        cfg = GPT2Config(attn_implementation="eager")  # the defaults are GPT-2 small
        model = GPT2LMHeadModel(cfg)
        tok = synthetic_tokenizer(cfg.vocab_size, bos=False)
    elif kind == "tinyllama-1.1b":
        cfg = LlamaConfig(vocab_size=32000, hidden_size=2048, intermediate_size=5632,
                          num_hidden_layers=22, num_attention_heads=32, num_key_value_heads=4,
                          max_position_embeddings=2048, rms_norm_eps=1e-5,
                          attn_implementation="eager", bos_token_id=1, eos_token_id=2)
        model = LlamaForCausalLM(cfg)
        tok = synthetic_tokenizer(cfg.vocab_size, bos=True)
    else:
        raise ValueError(kind)
    entry = ModelEntry(kind, "local", "causal", "", "random weights, real shape")
    return prepare(entry, model, tok)


def prompt_of(n_tokens: int, bos: bool) -> str:
    import random

    rng = random.Random(0)
    return " ".join(f"t{rng.randint(3, 30000)}" for _ in range(n_tokens - (1 if bos else 0)))


def median_time(fn, repeat: int = 3, warmup: int = 1) -> float:
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def shown_then_continued(loaded, prompt: str) -> tuple[float, float]:
    """Seconds of (the analysis as the Overall tab shows it, then the 12-token continuation
    the page asks for after it), with no induction scores reused: every analysis pays for
    their probe."""
    from analysis.run import analyze_model, continuation_of

    loaded.memo.clear()
    t0 = time.perf_counter()
    result = analyze_model(loaded, [prompt])
    t1 = time.perf_counter()
    continuation_of(loaded, result)
    return t1 - t0, time.perf_counter() - t1


def rss_mb() -> float:
    with open("/proc/self/statm") as fh:
        return int(fh.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def line(name: str, value: float, unit: str, baseline: float, target: str) -> None:
    """One figure: value, baseline measured in the same run, ratio."""
    print(f"{name}: {value:.3f} {unit} vs baseline {baseline:.3f} {unit} -> "
          f"ratio {value / baseline:.2f}x (target {target})", flush=True)
