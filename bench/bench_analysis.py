"""Target 1: analysis overhead on a GPT-2-124M-shaped model at 128 tokens.

    python bench/bench_analysis.py

Baseline: one bare forward pass with output_attentions and output_hidden_states, timed in this
run. Measured: capture + every layer and head metric (no figures, no gradient attribution), and
the whole analysis as the app runs it (gradient attribution, logit lens, induction probe, the
predictions and a 12-token greedy continuation); for information also the whole analysis
without the continuation.
"""

from common import line, prompt_of, random_model  # noqa: I001

import statistics
import time

import torch

from analysis.capture import capture, encode
from analysis.run import analyze_model, layer_metrics_of
from analysis import attention as att_mod


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

    def whole():
        loaded.derived.clear()  # no reuse of the induction probe: every analysis pays for it
        analyze_model(loaded, [prompt])

    def without_continuation():  # the same minus the 12-token greedy continuation
        loaded.derived.clear()
        analyze_model(loaded, [prompt], continuation_tokens=0)

    # measured alternately (bare, metrics, whole, bare, ...) so drift on a shared machine
    # reaches all three alike; medians of 5
    for fn in (bare, metrics_only, whole, without_continuation):
        fn()  # warm-up
    times: dict = {bare: [], metrics_only: [], whole: [], without_continuation: []}
    for _ in range(5):
        for fn in times:
            t0 = time.perf_counter()
            fn()
            times[fn].append(time.perf_counter() - t0)
    base = statistics.median(times[bare])
    line("capture + layer and head metrics, gpt2-124m, 128 tokens",
         statistics.median(times[metrics_only]), "s", base, "<= 1.3x")
    line("whole analysis incl. gradient attribution, gpt2-124m, 128 tokens",
         statistics.median(times[whole]), "s", base, "<= 3.5x")
    line("  the same without its 12-token greedy continuation (12 decoding steps, each reading "
         "all weights)", statistics.median(times[without_continuation]), "s", base,
         "(information)")

if __name__ == "__main__":
    main()
