"""Dataset mode under torchrun, and the float64 model tests/test_dataset.py shares.

    python -m torch.distributed.run --nproc-per-node 2 tests/dist_dataset_worker.py --out r.json

Each process loads tiny-gpt2 as a float64 copy (see `float64_copy`), runs
analysis.dataset.analyze_dataset on the bundled corpus (it takes the texts with id % 2 == rank)
and process 0 writes `result_dict` as JSON. `--fail-rank R` makes process R raise after its
first batch; `--hang-rank R` makes it sleep instead (the others then time out after
`--timeout` seconds). Like the command line, a UserError prints one line and exits 2.
"""

from __future__ import annotations

import argparse
import copy
import dataclasses
import functools
import json
import os
import sys
import threading
import time
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
os.environ.setdefault("HF_HUB_OFFLINE", "1")

import models.attention as attention_mod  # noqa: E402
from analysis import dataset as D  # noqa: E402
from models.errors import UserError  # noqa: E402

SMALL = dict(sample_tokens=300, bootstrap=50, entropy_bootstrap=3)  # fast finalisation


@contextmanager
def float64_softmax():
    """The project's attention takes its softmax in float32 (as HF's eager functions do), so
    even a float64 model's outputs then depend on the batch's padded length at ~1e-8. Inside
    this context it runs in the model's own dtype, and a float64 model's hidden states agree
    across batch shapes to ~1e-15: what lets tests compare batchings and process counts at
    1e-9."""
    saved = attention_mod._eager
    attention_mod._eager = functools.partial(saved, softmax_dtype=None)  # the query's dtype
    try:
        yield
    finally:
        attention_mod._eager = saved


def float64_copy(loaded):
    """A float64 copy of a loaded model (its own lock; the block hook comes with the copy)."""
    return dataclasses.replace(loaded, model=copy.deepcopy(loaded.model).double(), dtype="float64",
                               memo={}, lock=threading.RLock())


def result_dict(r: D.DatasetResult) -> dict:
    """Every number of a result, JSON-ready: the summary (timings removed), per-text values,
    head moments and the token sample's keys."""
    keys, _ = r.accumulator.sample.ordered()

    def clean(a):
        return [None if not np.isfinite(v) else float(v) for v in np.asarray(a, float).ravel()]
    j = r.to_json()
    for k in ("seconds", "tokens_per_second", "notices", "processes"):
        j.pop(k)
    return {"json": j, "sample_keys": keys.tolist(), "text_ids": r.summary.text_ids.tolist(),
            "text_values": clean(r.summary.text_values),
            "head_mean": {k: clean(v) for k, v in r.summary.head_mean.items()},
            "head_std": {k: clean(v) for k, v in r.summary.head_std.items()}}


def main() -> int:
    from models.loading import load

    p = argparse.ArgumentParser()
    p.add_argument("--out", required=True)
    p.add_argument("--limit", type=int, default=40)
    p.add_argument("--batch-size", type=int, default=6)
    p.add_argument("--fail-rank", type=int, default=-1)
    p.add_argument("--hang-rank", type=int, default=-1)
    p.add_argument("--timeout", type=float, default=D.DIST_TIMEOUT_S)
    args = p.parse_args()
    torch.set_num_threads(1)
    rank, world = D.init_distributed(timeout_s=args.timeout)

    def progress(done, total, rate, left):
        if rank == args.fail_rank:
            raise RuntimeError(f"injected failure on process {rank}")
        if rank == args.hang_rank:
            time.sleep(3600)
    try:
        with float64_softmax():
            loaded = float64_copy(load("tiny-gpt2"))
            r = D.analyze_dataset(loaded, "corpus", limit=args.limit, batch_size=args.batch_size,
                                  progress=progress, **SMALL)
    except UserError as exc:
        print(f"error: {exc}", file=sys.stderr, flush=True)
        return 2
    finally:
        D.close_distributed()
    if r is not None:
        Path(args.out).write_text(json.dumps({"processes": r.processes, **result_dict(r)}, allow_nan=False))
    return 0


if __name__ == "__main__":
    sys.exit(main())
