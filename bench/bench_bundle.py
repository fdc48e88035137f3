"""Target 5: building the ZIP bundle (figures, PDF, arrays, CSV, log) for one embedded model.

    python bench/bench_bundle.py

Baseline, timed in this run: the analysis the bundle is made from (capture, metrics,
predictions, attribution). Target: the bundle in at most 5 s per model (absolute).
"""

from common import line, median_time  # noqa: I001

import tempfile
from pathlib import Path

from analysis.run import analyze
from models.loading import load, set_threads
from reports.bundle import write_bundle

PROMPTS = {"tiny-gpt2": "the capital of japan is", "tiny-bert": "the capital of japan is [MASK].",
           "tiny-llama": "the capital of japan is", "tiny-diffusion": "the capital of japan is [MASK]."}


def main() -> None:
    folder = Path(tempfile.mkdtemp(prefix="bench-bundle-"))
    set_threads(max(load(name).params for name in PROMPTS))  # once, as the server does
    for name, prompt in PROMPTS.items():
        loaded = load(name)

        def run():
            return analyze([name], [prompt], load=lambda _n: loaded)  # noqa: B023

        base = median_time(run, repeat=3)
        analysis = run()
        out = folder / f"{name}.zip"
        t = median_time(lambda: write_bundle(analysis, out), repeat=3)  # noqa: B023
        line(f"{name}: bundle ({out.stat().st_size / 1e6:.1f} MB)", t, "s", base,
             "<= 5 s absolute")


if __name__ == "__main__":
    main()
