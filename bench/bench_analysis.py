"""Target 1: analysis overhead on a GPT-2-124M-shaped model at 128 tokens.

    python bench/bench_analysis.py

Baseline: one bare forward pass with output_attentions and output_hidden_states, timed in this
run. Measured:
- capture + every layer and head metric (no figures, no gradient attribution): layer metrics,
  head statistics, clustering and induction scores. Induction scores do not depend on the
  prompt: the first analysis of a loaded model runs their probe pass (and scans the
  vocabulary for probe words), later analyses reuse them; both are printed;
- the whole analysis as the Overall tab shows it: capture, metrics, head clustering, induction
  probe, predictions, gradient attribution, rollout, logit lens. The 12-token greedy
  continuation (a generation: 11 more forward passes after the capture's own next token) is
  written by the event that follows the shown analysis; it is timed on its own line, and the
  whole analysis with it (what `dashboard.py analyze` runs) for information.
Profile lines say where the two figures above their targets go: the induction probe pass and
vocabulary scan that only a model's first analysis pays, and one decoding step of the
continuation (it reads every weight once: its time is the weights over memory bandwidth).
"""

from common import line, prompt_of, random_model, shown_then_continued  # noqa: I001

import statistics
import time

import torch

from analysis.capture import capture, encode
from analysis.run import analyze_model, induction_probe, induction_scores, layer_metrics_of
from analysis import attention as att_mod
from models.generation import cache_keyword


def main() -> None:
    torch.set_num_threads(2)
    loaded = random_model("gpt2-124m")
    prompt = prompt_of(128, bos=False)
    ids, _ = encode(loaded, prompt)
    assert len(ids) == 128, len(ids)
    x = torch.tensor([ids])

    def bare():
        with torch.no_grad():
            loaded.model(input_ids=x, output_attentions=True, output_hidden_states=True)

    def metrics_only():
        trace = capture(loaded, prompt)
        layer_metrics_of(trace)
        att_mod.cluster_features(att_mod.features_from_stats(trace.head_stats))
        induction_scores(loaded)

    def metrics_first():  # the first analysis after loading: no induction scores to reuse
        loaded.memo.clear()
        metrics_only()

    def with_continuation():
        loaded.memo.clear()
        analyze_model(loaded, [prompt])

    def probe_parts():  # what the first analysis adds: (probe word scan, probe pass) seconds
        loaded.memo.clear()
        t0 = time.perf_counter()
        induction_probe(loaded)
        t1 = time.perf_counter()
        induction_scores(loaded)
        return t1 - t0, time.perf_counter() - t1

    def decode_step():  # one greedy step from a 128-token KV cache, as the continuation takes
        with torch.no_grad():
            out = loaded.model(input_ids=x, use_cache=True)
            cache = out.past_key_values
            t0 = time.perf_counter()
            loaded.model(input_ids=x[:, -1:], use_cache=True, **{cache_keyword(loaded.model): cache})
            return time.perf_counter() - t0

    # measured alternately so drift on a shared machine reaches all alike; medians of 7
    for fn in (bare, metrics_first, metrics_only, with_continuation):
        fn()  # warm-up
    shown_then_continued(loaded, prompt)
    times: dict = {k: [] for k in ("bare", "first", "metrics", "shown", "continuation", "with",
                                   "scan", "probe", "step")}
    for _ in range(7):
        for name, fn in (("bare", bare), ("first", metrics_first), ("metrics", metrics_only),
                         ("with", with_continuation)):
            t0 = time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - t0)
        shown, continued = shown_then_continued(loaded, prompt)
        times["shown"].append(shown)
        times["continuation"].append(continued)
        scan, probe = probe_parts()
        times["scan"].append(scan)
        times["probe"].append(probe)
        times["step"].append(decode_step())
    base = statistics.median(times["bare"])
    med = {k: statistics.median(v) for k, v in times.items()}
    line("capture + layer and head metrics, gpt2-124m, 128 tokens (induction scores reused)",
         med["metrics"], "s", base, "<= 1.3x")
    line("  the same, first analysis of the loaded model (induction probe pass)", med["first"],
         "s", base, "<= 1.3x")
    line("    of which the induction probe pass (21 tokens, every layer; once per loaded model)",
         med["probe"], "s", base, "(profile)")
    line("    and the scan of the vocabulary for whole-word probe tokens (once per loaded model)",
         med["scan"], "s", base, "(profile)")
    line("whole analysis as shown (gradient attribution, lens, induction, predictions), "
         "gpt2-124m, 128 tokens", med["shown"], "s", base, "<= 3.5x")
    line("  then the 12-token greedy continuation (11 decoding steps after the capture's own "
         "next token, each reading all weights)",
         med["continuation"], "s", base, "(information)")
    weights = sum(p.numel() * p.element_size() for p in loaded.model.parameters()) / 1e9
    line(f"    one decoding step; it reads all {weights:.2f} GB of weights: "
         f"{weights / med['step']:.1f} GB/s", med["step"], "s", base, "(profile)")
    line("  whole analysis with the continuation in one call (the CLI)", med["with"], "s", base,
         "(information)")


if __name__ == "__main__":
    main()
