"""Target 3: interaction on the embedded models, server-side (the UI's event functions).

    python bench/bench_interaction.py

Baseline, timed in this run: re-running the model's analysis (what a dashboard that recomputes
on every change would pay). Measured:
- switching layer or head, at most 150 ms. In the app, right after an analysis, a background
  event (layer_tab.prewarm_event) draws every head pattern and layer grid of a small model into
  the session's cache, so a switch after that is a cache hit. Printed: the switch without that
  (first draw: the session's kept pattern and grid figures get the new layer's data and only
  the image, the title and the colour bar are drawn again, over a kept background), how long
  the pre-drawing takes, and the switch after it;
- the full Overall analysis of one embedded model (capture, metrics, predictions, attribution,
  the Overall figures), at most 3 s; its baseline is one bare forward pass.
"""

from common import line, median_time  # noqa: I001

import statistics
import time

import torch

from analysis.run import analyze_model
from ui import layer_tab, overall_tab
from ui.app import AppConfig, make_context
from ui.state import Session

PROMPT = "the capital of japan is"


def main() -> None:
    torch.set_num_threads(2)
    ctx = make_context(AppConfig())
    for name in ("tiny-gpt2", "tiny-bert", "tiny-llama"):
        bench_model(ctx, name, PROMPT + (" [MASK]." if name == "tiny-bert" else ""))


def switch_times(ctx, session, name: str, n_layers: int, n_heads: int) -> list[float]:
    """Seconds of each switch as a user walks every layer (head 0) and then its heads."""
    times = []
    for layer in range(1, n_layers + 1):
        for head in range(n_heads):
            fn = layer_tab.layer_event if head == 0 else layer_tab.head_event
            t0 = time.perf_counter()
            fn(ctx, session, name, layer, head)
            times.append(time.perf_counter() - t0)
    return times


def bench_model(ctx, name: str, prompt: str) -> None:
    session = Session()
    overall_tab.analyze_event(ctx, session, [name], None, prompt)  # warm: model loaded
    result = session.analysis.result(name)
    loaded = ctx.load(name)
    x = torch.tensor([result.trace.token_ids])

    def bare():
        with torch.no_grad():
            loaded.model(input_ids=x, output_attentions=True, output_hidden_states=True)

    rerun = median_time(lambda: analyze_model(loaded, [prompt]), repeat=3)
    layer_tab.model_event(ctx, session, name, 1, 0)
    n_layers, n_heads = result.trace.n_layers, result.trace.n_heads
    first = switch_times(ctx, session, name, n_layers, n_heads)
    again = switch_times(ctx, session, name, n_layers, n_heads)
    line(f"{name}: layer/head switch, first draw, worst of {len(first)}", max(first), "s",
         rerun, "<= 0.150 s absolute")
    line(f"{name}: layer/head switch, first draw, median", statistics.median(first), "s",
         rerun, "<= 0.150 s absolute")
    line(f"{name}: layer/head switch, drawn before, worst", max(again), "s", rerun,
         "<= 0.150 s absolute")
    fresh = Session()  # what the app does: analysis, then the background pre-drawing
    overall_tab.analyze_event(ctx, fresh, [name], None, prompt)
    t0 = time.perf_counter()
    layer_tab.prewarm_event(ctx, fresh, name)
    line(f"{name}: background pre-drawing of all {n_layers * n_heads} heads and {n_layers} "
         "layers after the analysis", time.perf_counter() - t0, "s", rerun, "(off the click path)")
    after = switch_times(ctx, fresh, name, n_layers, n_heads)
    line(f"{name}: layer/head switch after pre-drawing, worst", max(after), "s", rerun,
         "<= 0.150 s absolute")

    def overall():
        overall_tab.analyze_event(ctx, Session(), [name], None, prompt)

    line(f"{name}: full Overall analysis with figures", median_time(overall, repeat=3), "s",
         median_time(bare, repeat=5), "<= 3 s absolute")


if __name__ == "__main__":
    main()
