"""Dataset accumulation under torchrun, and the synthetic texts tests/test_accumulate.py shares.

    python -m torch.distributed.run --nproc-per-node 2 tests/dist_accumulate_worker.py --out r.json

Each rank feeds a strided share (texts rank, rank + world, ...) of the same synthetic texts,
the accumulators are reduced over gloo, and rank 0 writes `result_dict` as JSON.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from analysis.accumulate import (  # noqa: E402
    DatasetAccumulator,
    reduce_distributed,
    stack_head_stats,
    text_head_stats,
)

N_LAYERS, D_MODEL, N_HEADS = 2, 16, 2
PAD = 1e6  # padding rows of the hidden states: garbage that must never count


def synthetic_texts(n: int, seed: int = 0, min_len: int = 1, max_len: int = 40, offset: float = 1000.0
                    ) -> list[tuple[np.ndarray, np.ndarray]]:
    """n texts of random lengths: (hidden [layer + 1, token, d], attention [layer, head, q, k]
    causal, rows sum to 1). `offset` is added to 3 dimensions of every row (GPT-2-like means)."""
    rng = np.random.default_rng(seed)
    mix = rng.normal(size=(D_MODEL, D_MODEL))
    out = []
    for _ in range(n):
        t = int(rng.integers(min_len, max_len + 1))
        h = rng.normal(size=(N_LAYERS + 1, t, D_MODEL)) @ mix * 0.5
        h[:, :, :3] += offset
        logits = rng.normal(size=(N_LAYERS, N_HEADS, t, t)) * 2.0
        logits[..., np.triu_indices(t, 1)[0], np.triu_indices(t, 1)[1]] = -np.inf
        a = np.exp(logits - logits.max(-1, keepdims=True))
        out.append((h, a / a.sum(-1, keepdims=True)))
    return out


def make_accumulator(**kw) -> DatasetAccumulator:
    kw = {"sample_tokens": 150, "pooled_texts": 20, "seed": 7, "dataset": "synthetic-v1",
          "settings": {"max_tokens": 40}, **kw}
    return DatasetAccumulator("synthetic", N_LAYERS, D_MODEL, N_HEADS, **kw)


def feed(acc: DatasetAccumulator, texts, ids, batch_size: int) -> None:
    """Right-padded batches (hidden padding = PAD, attention padding = NaN rows / 0.25 keys)."""
    ids = list(ids)
    for s in range(0, len(ids), batch_size):
        chunk = ids[s:s + batch_size]
        lengths = [texts[i][0].shape[1] for i in chunk]
        t = max(lengths)
        hidden = np.full((N_LAYERS + 1, len(chunk), t, D_MODEL), PAD)
        attn = np.full((N_LAYERS, len(chunk), N_HEADS, t, t), 0.25)
        mask = np.zeros((len(chunk), t), bool)
        for k, (i, n) in enumerate(zip(chunk, lengths, strict=True)):
            hidden[:, k, :n] = texts[i][0]
            attn[:, k, :, :n, :n] = texts[i][1]
            attn[:, k, :, n:, :] = np.nan
            mask[k, :n] = True
        heads = stack_head_stats([text_head_stats(torch.as_tensor(a), lengths, causal=True) for a in attn])
        acc.add_batch(torch.as_tensor(hidden), mask, np.array(chunk), heads)


def result_dict(acc: DatasetAccumulator) -> dict:
    """Every number the accumulator produces, JSON-ready (NaN as None)."""
    r = acc.finalize(bootstrap=200, entropy_bootstrap=10)
    keys, _ = acc.sample.ordered()

    def clean(a: np.ndarray):
        return [None if not np.isfinite(v) else float(v) for v in np.asarray(a, float).ravel()]
    return {"json": r.to_json(), "sample_keys": keys.tolist(), "text_ids": r.text_ids.tolist(),
            "text_values": clean(r.text_values), "pooled_texts": r.pooled_texts,
            "head_mean": {k: clean(v) for k, v in r.head_mean.items()},
            "head_std": {k: clean(v) for k, v in r.head_std.items()}}


def main() -> None:
    import torch.distributed as dist

    p = argparse.ArgumentParser()
    p.add_argument("--out", required=True)
    p.add_argument("--texts", type=int, default=30)
    p.add_argument("--batch-size", type=int, default=4)
    args = p.parse_args()
    dist.init_process_group("gloo")
    rank, world = dist.get_rank(), dist.get_world_size()
    texts = synthetic_texts(args.texts)
    acc = make_accumulator()
    feed(acc, texts, range(rank, args.texts, world), args.batch_size)
    total = reduce_distributed(acc)
    result = result_dict(total)  # every rank finalises the same state
    if rank == 0:
        Path(args.out).write_text(json.dumps(result, allow_nan=False))
    dist.destroy_process_group()


if __name__ == "__main__":
    main()
