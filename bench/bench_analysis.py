"""Analysis overhead at real prompt lengths (GPT-2-124M shape, random weights).

    python bench/bench_analysis.py [--lengths 128 512] [--repeat 7]

Baseline, timed in this run: one bare forward pass with output_attentions and
output_hidden_states (what any tool must run to see the attention and the residual stream).
Measured, alternating with the baseline, medians of `--repeat`:
- capture + every layer metric + every head statistic + head clustering (induction scores
  reused: they depend on the model, not the prompt), i.e. what `analyze` computes before
  predictions and attribution. Targets: <= 1.1x at 128 tokens, <= 1.15x at 512.
Profile lines split it into the capture (the forward pass with the per-head statistics
computed as each layer's attention appears) and the layer metrics after it.
TransformerLens's `run_with_cache` (which computes no metric) is timed beside it when the
package is installed.
"""

from common import line, prompt_of, random_model  # noqa: I001

import argparse
import statistics
import time

import torch

from analysis import attention as att_mod
from analysis.capture import capture, encode
from analysis.parallel import layer_workers
from analysis.run import induction_scores, layer_metrics_of
from models.loading import set_threads


def transformer_lens_model():
    """TransformerLens 4's TransformerBridge over a GPT-2 small of random weights built like the
    measured one (no download; its own copy, so TransformerLens's hooks never touch the
    measured model), or None when the package is not installed."""
    try:
        from transformer_lens.model_bridge import TransformerBridge
    except ImportError:
        return None
    import tempfile  # pragma: no cover - only with transformer_lens installed

    from transformers import AutoTokenizer  # pragma: no cover

    twin = random_model("gpt2-124m")  # pragma: no cover
    with tempfile.TemporaryDirectory() as tmp:  # pragma: no cover
        twin.tokenizer.save_pretrained(tmp)  # it reads the tokenizer's name_or_path
        tok = AutoTokenizer.from_pretrained(tmp)
        return TransformerBridge.boot_transformers("gpt2", hf_model=twin.model, tokenizer=tok)


def bench_length(loaded, n_tokens: int, repeat: int, tl_model) -> None:
    prompt = prompt_of(n_tokens, bos=False)
    ids, _ = encode(loaded, prompt)
    assert len(ids) == n_tokens, len(ids)
    x = torch.tensor([ids])

    def bare():
        with torch.no_grad():
            loaded.model(input_ids=x, output_attentions=True, output_hidden_states=True)

    parts = {"capture": [], "metrics": []}

    def analysed():
        t0 = time.perf_counter()
        trace = capture(loaded, prompt, gradient=False)
        t1 = time.perf_counter()
        layer_metrics_of(trace)
        att_mod.cluster_features(att_mod.features_from_stats(trace.head_stats))
        induction_scores(loaded)  # reused after the first analysis
        parts["capture"].append(t1 - t0)
        parts["metrics"].append(time.perf_counter() - t1)

    def tl():  # pragma: no cover - only with transformer_lens installed
        with torch.no_grad():
            tl_model.run_with_cache(x)

    runs = {"bare": bare, "analysed": analysed} | ({"tl": tl} if tl_model else {})
    for fn in runs.values():
        fn()  # warm-up (and the induction probe, once)
    parts = {"capture": [], "metrics": []}
    times: dict[str, list[float]] = {k: [] for k in runs}
    for _ in range(repeat):
        for name, fn in runs.items():
            t0 = time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - t0)
    base = statistics.median(times["bare"])
    target = "<= 1.1x" if n_tokens <= 128 else "<= 1.15x"
    line(f"capture + every layer and head metric, gpt2-124m, {n_tokens} tokens",
         statistics.median(times["analysed"]), "s", base, target)
    line("  of which the capture (forward pass with per-head statistics)",
         statistics.median(parts["capture"]), "s", base, "(profile)")
    line(f"  and the layer metrics of {loaded.n_layers + 1} layers + clustering after it",
         statistics.median(parts["metrics"]), "s", base, "(profile)")
    floor(loaded, x, base, n_tokens)
    if tl_model:  # pragma: no cover
        line("  TransformerLens 4 TransformerBridge.run_with_cache (every activation, no metric)",
             statistics.median(times["tl"]), "s", base, "(information)")
    else:
        print("  TransformerLens is not installed here: its run_with_cache is not timed")


def floor(loaded, x, base: float, n_tokens: int) -> None:
    """The least any schedule can reach on this machine: the bare pass's CPU use (how busy it
    keeps the cores) and the two float64 T x T eigendecompositions per layer that the metric
    definitions need (the centred Gram's spectrum, the unit-row Gram's for the entropy), timed
    on one core. Even overlapped perfectly on idle cores they add their core-seconds / cores."""
    import os
    import resource

    import numpy as np

    with torch.no_grad():
        out = loaded.model(input_ids=x, output_hidden_states=True)
        r0, t0 = resource.getrusage(resource.RUSAGE_SELF), time.perf_counter()
        loaded.model(input_ids=x, output_attentions=True, output_hidden_states=True)
        wall, r1 = time.perf_counter() - t0, resource.getrusage(resource.RUSAGE_SELF)
    busy = (r1.ru_utime + r1.ru_stime - r0.ru_utime - r0.ru_stime) / wall
    grams = []
    for h in out.hidden_states:
        hc = h[0].double().numpy()
        hc = hc - hc.mean(axis=0)
        grams.append(hc @ hc.T)
    t0 = time.perf_counter()
    for g in grams:
        np.linalg.eigvalsh(g)
        np.linalg.eigvalsh(g)
    eig = time.perf_counter() - t0
    cores = os.cpu_count() or 1
    print(f"  floor: the bare pass keeps {busy:.2f} of {cores} cores busy; the "
          f"{2 * len(grams)} float64 {n_tokens} x {n_tokens} eigendecompositions take {eig:.3f} "
          f"core-s on one thread -> at least {1 + eig / (cores * base):.2f}x on {cores} cores "
          "with everything else free")


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--lengths", type=int, nargs="+", default=[128, 512])
    ap.add_argument("--repeat", type=int, default=7)
    args = ap.parse_args()
    loaded = random_model("gpt2-124m")
    # as the app sets up the process for this model: torch on every core, numpy's BLAS on one
    # (the layer metrics spread layers over the cores), the allocator keeping freed memory
    threads = set_threads(sum(p.numel() for p in loaded.model.parameters()))
    print(f"torch threads: {threads}, numpy BLAS threads: 1, layer workers: "
          f"{layer_workers(loaded.n_layers + 1)}")
    tl_model = transformer_lens_model()
    for n in args.lengths:
        bench_length(loaded, n, args.repeat, tl_model)


if __name__ == "__main__":
    main()
