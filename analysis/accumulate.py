"""Dataset mode: layer geometry over many texts in bounded memory, exact and mergeable.

design.md "Dataset mode". A `DatasetAccumulator` takes padded batches of one model's hidden
states (`hidden  # [layer + 1, batch, token, d_model]`, layer 0 = embeddings) and keeps:
- all tokens: per layer (count, mean, centred scatter M2) merged with Chan et al.'s parallel
  formula, sums of unit rows, cosine-to-input sums, attention row-entropy sums: exact metrics;
- a token sample: the K rows with the smallest seeded hash priority of (seed, text_id, position),
  so the sample does not depend on batching or on the number of processes;
- per text: every single-prompt metric of each text, [text, layer + 1, metric], and per-head
  moments; plus the mean-pooled vector of up to `pooled_texts` texts (same priority rule) for
  the dataset entropy.
Two accumulators of disjoint texts merge into the accumulator of all of them (float64
summation order aside), so batching, resuming and torch.distributed ranks are one computation.
Math runs in float64 torch on the batch's device; per-text values, samples and pooled vectors
are kept as numpy on the CPU.
"""

from __future__ import annotations

import json
import logging
import math
from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np
import torch

from analysis import metrics as M
from analysis import parallel
from analysis.dataset_math import (  # noqa: F401 (text_head_stats, stack_head_stats re-exported)
    HEAD_INPUTS,
    Interval,
    TextStat,
    add_gram,
    entropies,
    finite_or_none,
    sample_intervals,
    sample_twonn,
    stack_head_stats,
    text_head_stats,
    text_layer_metrics,
    text_stat,
)
from analysis.priority_sample import (  # noqa: F401 (the priorities re-exported)
    M64,
    Smallest,
    text_priority,
    token_priority,
)
from models.common import UserError, atomic_file

log = logging.getLogger(__name__)

METRICS = ("effective_rank", "participation_ratio", "intrinsic_dim_pca95", "intrinsic_dim_twonn",
           "activation_entropy", "cosine_to_input", "anisotropy", "attention_entropy")  # per text
ALL_TOKEN_METRICS = ("effective_rank", "participation_ratio", "intrinsic_dim_pca95", "anisotropy",
                     "cosine_to_input", "attention_entropy")
SAMPLE_METRICS = ("intrinsic_dim_twonn", "activation_entropy")
HEAD_STATS = ("attention_entropy", "previous_token_score", "first_token_score")
FORMAT = 1
@dataclass
class LayerSummary:
    layer: int  # 0 = embeddings
    all_tokens: dict[str, float | int | None]  # ALL_TOKEN_METRICS
    token_sample: dict[str, Interval]  # SAMPLE_METRICS
    per_text: dict[str, TextStat]  # METRICS
    dataset_entropy: float | None


@dataclass
class DatasetSummary:
    model: str
    texts: int
    tokens: int  # counted token rows
    skipped_texts: int  # texts with no counted row
    sample_tokens: int
    pooled_texts: int  # texts whose mean-pooled vectors gave the dataset entropy
    pooled_exact: bool  # True when that is every non-empty text
    layers: list[LayerSummary]
    head_mean: dict[str, np.ndarray]  # HEAD_STATS -> [layer, head] (index 0 = block 1), NaN: none
    head_std: dict[str, np.ndarray]  # same, sample std across texts
    text_ids: np.ndarray  # [text] ascending
    text_values: np.ndarray  # [text, layer + 1, metric] METRICS order, NaN where undefined

    def to_json(self) -> dict:
        """design.md summary.json "dataset" (the driver adds seconds, tokens_per_second,
        processes)."""
        return {"texts": self.texts, "tokens": self.tokens, "skipped_texts": self.skipped_texts,
                "sample_tokens": self.sample_tokens, "layers": [{
                    "layer": s.layer, "all_tokens": dict(s.all_tokens),
                    "token_sample": {k: v._asdict() for k, v in s.token_sample.items()},
                    "per_text": {k: {f: getattr(v, f) for f in ("mean", "std", "ci_low", "ci_high", "n")}
                                 for k, v in s.per_text.items()},
                    "dataset_entropy": s.dataset_entropy} for s in self.layers]}


def _chan(n_a, mean_a, m2_a, n_b, mean_b, m2_b, outer: bool):
    """Chan et al.: merged (mean, M2) of two parts of n_a and n_b rows; elementwise (numpy
    counts), or with M2 d x d per layer (`outer`, python int counts)."""
    n = n_a + n_b
    delta = mean_b - mean_a
    f = n_b / np.maximum(n, 1) if isinstance(n, np.ndarray) else float(n_b) / max(n, 1)
    mean = mean_a + delta * f
    c = n_a * f
    m2 = m2_a + m2_b + (delta[..., :, None] * delta[..., None, :] * c if outer else delta * delta * c)
    return mean, m2


def _np(v) -> np.ndarray:
    return v.detach().cpu().numpy() if torch.is_tensor(v) else np.asarray(v)


def _check_meta(expected: Mapping, got: Mapping, what: str) -> None:
    diff = [f"{k}={got.get(k)!r} (expected {expected.get(k)!r})"
            for k in sorted(set(expected) | set(got)) if expected.get(k) != got.get(k)]
    if diff:
        raise UserError(f"{what} does not match: {'; '.join(diff)}. Use the same model, dataset and "
                        "settings, or start from a new --resume directory")


class DatasetAccumulator:
    """Streaming, mergeable dataset-mode statistics of one model (see the module docstring).

    Memory (float64 unless said): scatter [layer + 1, d, d] on the batch device; token sample
    [layer + 1, K, d] float32 (exact copies of 16/32-bit model outputs); pooled vectors
    [layer + 1, pooled_texts, d]; per text [text, layer + 1, 8] (64 (L + 1) bytes per text);
    heads [3, layer, head]."""

    def __init__(self, model: str, n_layers: int, d_model: int, n_heads: int = 0, *,
                 sample_tokens: int = 5000, pooled_texts: int | None = None, seed: int = 0,
                 dataset: str = "", settings: Mapping | None = None, device=None):
        self.meta = {"format": FORMAT, "model": model, "n_layers": int(n_layers),
                     "d_model": int(d_model), "n_heads": int(n_heads), "seed": int(seed),
                     "sample_tokens": int(sample_tokens),
                     "pooled_texts": int(sample_tokens if pooled_texts is None else pooled_texts),
                     "dataset": str(dataset),
                     "settings": json.loads(json.dumps(settings or {}, sort_keys=True))}
        self.device = None if device is None else torch.device(device)
        L1, d, L, H = n_layers + 1, d_model, n_layers, n_heads
        self.n_rows = 0  # counted token rows
        self.mean: torch.Tensor | None = None  # [layer + 1, d] (allocated on the first batch)
        self.m2: torch.Tensor | None = None  # [layer + 1, d, d] centred scatter
        self.unit_sum = np.zeros((L1, d))  # [layer + 1, d] sum of unit rows (zero rows skipped)
        self.sums = np.zeros((L1, 3))  # [layer + 1, (nonzero rows, cosine sum, cosine rows)]
        self.att_sum = np.zeros((L, H))  # [layer, head] sum of row entropies
        self.att_rows = np.zeros((L, H))  # [layer, head] rows counted
        self.head_n = np.zeros((3, L, H))  # [HEAD_STATS, layer, head] texts where defined
        self.head_mean = np.zeros((3, L, H))
        self.head_m2 = np.zeros((3, L, H))
        self._ids: list[np.ndarray] = []  # chunks of [text] ids
        self._rows: list[np.ndarray] = []  # [text] counted rows
        self._values: list[np.ndarray] = []  # [text, layer + 1, metric]
        # keys (text_id, position); rows stored float32: exact for 16/32-bit model outputs
        self.sample = Smallest(int(sample_tokens), np.float32)
        self.pooled = Smallest(self.meta["pooled_texts"], np.float64)  # keys (text_id, 0)

    @property
    def texts(self) -> int:
        return int(sum(a.size for a in self._ids))

    def _ensure_state(self, device: torch.device) -> None:
        if self.mean is None:
            self.device = self.device or device
            L1, d = self.meta["n_layers"] + 1, self.meta["d_model"]
            self.mean = torch.zeros(L1, d, dtype=torch.float64, device=self.device)
            self.m2 = torch.zeros(L1, d, d, dtype=torch.float64, device=self.device)

    def add_batch(self, hidden, mask, text_ids, head_stats: Mapping | None = None) -> None:
        """Add one padded batch. `hidden`: `[layer + 1, text, token, d]`, one tensor or a sequence
        of the layers' `[text, token, d]` (any float dtype/device); `mask  # [text, token]` bool,
        True for counted rows; `text_ids  # [text]` global ids (each text once over the whole
        run); `head_stats`: {HEAD_INPUTS: [text, layer, head]} (see `text_head_stats`,
        `stack_head_stats`), None when attention is not available. Inputs are checked first; an
        error while adding (e.g. out of memory) leaves the accumulator part-updated: reload the
        last checkpoint."""
        L1, d = self.meta["n_layers"] + 1, self.meta["d_model"]
        layers = list(hidden.unbind(0)) if isinstance(hidden, torch.Tensor) and hidden.ndim == 4 else (
            [hidden] if isinstance(hidden, torch.Tensor) else list(hidden))
        shape = tuple(layers[0].shape) if layers else ()
        if (len(layers) != L1 or len(shape) != 3 or shape[2] != d
                or any(tuple(h.shape) != shape for h in layers)):
            got = tuple(hidden.shape) if isinstance(hidden, torch.Tensor) else f"{len(layers)} x {shape}"
            raise ValueError(f"hidden must be [{L1}, text, token, {d}], got {got}")
        dev = layers[0].device
        mask = torch.as_tensor(mask, device=dev).bool()
        ids = _np(text_ids).astype(np.int64).reshape(-1)
        if mask.shape != shape[:2] or ids.size != shape[0]:
            raise ValueError(f"mask {tuple(mask.shape)}, text_ids {ids.shape}: not [text, token] of "
                             f"{(L1, *shape)}")
        heads = None if head_stats is None else self._head_arrays(head_stats, ids.size)
        self._ensure_state(dev)
        full = bool(mask.all())  # no padding: every row counts, nothing to zero or gather

        def rows64(layer: int) -> torch.Tensor:  # [text, token, d] float64, padding rows zero
            x = layers[layer].to(torch.float64, copy=True)
            return x if full else x.masked_fill_(~mask[..., None], 0.0)
        x0 = rows64(0)
        n0 = x0.norm(dim=-1)

        mask_np = mask.cpu().numpy()

        def one_layer(layer: int) -> dict[str, torch.Tensor] | None:
            if layer < 0:  # the token sample's turn (it reads the layers, writes only the sample)
                return self._offer_rows(layers, mask_np, ids)
            x = x0 if layer == 0 else rows64(layer)
            self._add_scatter(layer, x.reshape(-1, d) if full else x[mask])
            return text_layer_metrics(x, x0, mask, n0)
        # layers side by side; each writes only its own rows of the state
        parts = parallel.map_torch_layers(one_layer, range(-1, L1), dev)[1:]
        got = {k: torch.stack([p[k] for p in parts]).cpu().numpy() for k in parts[0]}  # one transfer
        values = np.full((ids.size, L1, len(METRICS)), np.nan)
        values[:, :, :7] = got["values"].transpose(1, 0, 2)
        self.unit_sum += got["unit_sum"]
        self.sums += got["sums"]
        self.n_rows += int(mask_np.sum())
        if heads is not None:
            self._add_heads(heads, values)
        counts = mask_np.sum(1)
        self._ids.append(ids)
        self._rows.append(counts.astype(np.int64))
        self._values.append(values)
        some = np.nonzero(counts > 0)[0]  # texts with a counted row
        self.pooled.offer(text_priority(self.meta["seed"], ids[some]),
                          np.stack([ids[some], np.zeros_like(some)], 1), lambda i: got["pooled"][:, some[i]])

    def _add_scatter(self, layer: int, rows: torch.Tensor) -> None:
        """Chan's merge of this batch's (count, mean, centred scatter) of one layer, in place."""
        nb = rows.shape[0]
        if nb == 0:
            return
        rows = rows.to(self.device)
        mb, n = rows.mean(0), self.n_rows + nb
        rc, delta = rows - mb, mb - self.mean[layer]
        self.mean[layer] += delta * (nb / n)
        add_gram(self.m2[layer], rc)
        self.m2[layer].addr_(delta, delta, alpha=self.n_rows * nb / n)

    def _offer_rows(self, layers: list[torch.Tensor], mask: np.ndarray, ids: np.ndarray) -> None:
        b, t = np.nonzero(mask)
        pos = (np.cumsum(mask, axis=1) - 1)[b, t]  # index among the text's counted rows

        def take(i: np.ndarray) -> np.ndarray:
            rows = torch.as_tensor(b[i] * mask.shape[1] + t[i], device=layers[0].device)
            return torch.stack([h.flatten(0, 1).index_select(0, rows).float() for h in layers]
                               ).cpu().numpy()  # [layer + 1, row, d]
        self.sample.offer(token_priority(self.meta["seed"], ids[b], pos), np.stack([ids[b], pos], 1), take)

    def _head_arrays(self, head_stats: Mapping, texts: int) -> dict[str, np.ndarray]:
        want = (texts, self.meta["n_layers"], self.meta["n_heads"])
        if set(HEAD_INPUTS) - set(head_stats):
            raise ValueError(f"head_stats needs {HEAD_INPUTS}, got {tuple(head_stats)}")
        hs = {k: _np(head_stats[k]).astype(np.float64) for k in HEAD_INPUTS}
        if any(v.shape != want for v in hs.values()):
            raise ValueError(f"head_stats arrays must be [text, layer, head] = {want}")
        return hs

    def _add_heads(self, hs: dict[str, np.ndarray], values: np.ndarray) -> None:
        """Attention sums and per-head moments; per-text attention_entropy into `values`."""
        self.att_sum += hs["entropy_sum"].sum(0)
        self.att_rows += hs["entropy_rows"].sum(0)
        rows = hs["entropy_rows"]
        ent = np.where(rows > 0, hs["entropy_sum"] / np.maximum(rows, 1), np.nan)  # [text, layer, head]
        values[:, 1:, METRICS.index("attention_entropy")] = ent.mean(-1)
        v = np.stack([ent, hs["previous_token_score"], hs["first_token_score"]])  # [3, text, layer, head]
        ok = np.isfinite(v)
        cnt = ok.sum(1).astype(np.float64)
        mean = np.where(ok, v, 0.0).sum(1) / np.maximum(cnt, 1)
        m2 = np.where(ok, (v - mean[:, None]) ** 2, 0.0).sum(1)
        self.head_mean, self.head_m2 = _chan(self.head_n, self.head_mean, self.head_m2, cnt, mean, m2, False)
        self.head_n = self.head_n + cnt

    def _texts(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(ids [text], counted rows [text], values [text, layer + 1, metric]) sorted by id."""
        L1 = self.meta["n_layers"] + 1
        ids = np.concatenate(self._ids) if self._ids else np.zeros(0, np.int64)
        rows = np.concatenate(self._rows) if self._rows else np.zeros(0, np.int64)
        values = np.concatenate(self._values) if self._values else np.zeros((0, L1, len(METRICS)))
        order = np.argsort(ids, kind="stable")
        ids, rows, values = ids[order], rows[order], values[order]
        twice = ids[1:][np.diff(ids) == 0]
        if twice.size:
            raise UserError(f"text {int(twice[0])} was added twice ({twice.size} repeats): each text id "
                            "must be fed once; do not merge a run with itself or replay resumed batches")
        self._ids, self._rows, self._values = [ids], [rows], [values]
        return ids, rows, values

    def merge(self, other: DatasetAccumulator) -> DatasetAccumulator:
        """Add `other` (same model and settings, disjoint texts) into self; returns self."""
        _check_meta(self.meta, other.meta, "the accumulator to merge")
        if other.n_rows:
            self._ensure_state(other.device)
            mo, m2o = other.mean.to(self.device), other.m2.to(self.device)
            self.mean, self.m2 = _chan(self.n_rows, self.mean, self.m2, other.n_rows, mo, m2o, True)
            self.n_rows += other.n_rows
        self.unit_sum = self.unit_sum + other.unit_sum
        self.sums = self.sums + other.sums
        self.att_sum = self.att_sum + other.att_sum
        self.att_rows = self.att_rows + other.att_rows
        self.head_mean, self.head_m2 = _chan(self.head_n, self.head_mean, self.head_m2, other.head_n,
                                             other.head_mean, other.head_m2, False)
        self.head_n = self.head_n + other.head_n
        self._ids += list(other._ids)
        self._rows += list(other._rows)
        self._values += list(other._values)
        self._texts()  # sorts and rejects repeated texts
        for mine, theirs in ((self.sample, other.sample), (self.pooled, other.pooled)):
            mine.offer(theirs.priority, theirs.keys, lambda i, s=theirs: s.values[:, i])
        return self

    def state_dict(self) -> dict[str, np.ndarray]:
        """Everything as CPU numpy arrays (+ "meta", a JSON string): for np.savez, pickling,
        all_gather_object. `from_state_dict` inverts it."""
        L1, d = self.meta["n_layers"] + 1, self.meta["d_model"]
        ids, rows, values = self._texts()
        out = {"meta": np.array(json.dumps(self.meta)), "n_rows": np.array(self.n_rows, np.int64),
               "mean": np.zeros((L1, d)) if self.mean is None else self.mean.cpu().numpy(),
               "m2": np.zeros((L1, d, d)) if self.m2 is None else self.m2.cpu().numpy(),
               "text_ids": ids, "text_rows": rows, "text_values": values}
        for name in ("unit_sum", "sums", "att_sum", "att_rows", "head_n", "head_mean", "head_m2"):
            out[name] = getattr(self, name)
        for name, s in (("sample", self.sample), ("pooled", self.pooled)):
            out[f"{name}_priority"], out[f"{name}_keys"] = s.priority, s.keys
            n = s.priority.size
            out[f"{name}_values"] = np.zeros((L1, 0, d), np.float32) if s.values is None else s.values[:, :n]
        return out

    @classmethod
    def from_state_dict(cls, state: Mapping[str, np.ndarray], device=None) -> DatasetAccumulator:
        meta = json.loads(str(state["meta"]))
        if meta.get("format") != FORMAT:
            raise UserError(f"accumulator format {meta.get('format')!r} is not {FORMAT}: rerun the dataset")
        acc = cls(meta["model"], meta["n_layers"], meta["d_model"], meta["n_heads"],
                  sample_tokens=meta["sample_tokens"], pooled_texts=meta["pooled_texts"], seed=meta["seed"],
                  dataset=meta["dataset"], settings=meta["settings"], device=device)
        acc.n_rows = int(state["n_rows"])
        if acc.n_rows:
            dev = acc.device or torch.device("cpu")
            acc.mean = torch.as_tensor(np.array(state["mean"]), device=dev)
            acc.m2 = torch.as_tensor(np.array(state["m2"]), device=dev)
            acc.device = dev
        for name in ("unit_sum", "sums", "att_sum", "att_rows", "head_n", "head_mean", "head_m2"):
            setattr(acc, name, np.array(state[name], dtype=np.float64))
        acc._ids, acc._rows, acc._values = ([np.array(state[k])]
                                            for k in ("text_ids", "text_rows", "text_values"))
        for name, s in (("sample", acc.sample), ("pooled", acc.pooled)):
            s.priority = np.array(state[f"{name}_priority"], np.uint64)
            s.keys = np.array(state[f"{name}_keys"], np.int64).reshape(-1, 2)
            s.values = np.array(state[f"{name}_values"]) if s.priority.size else None
        return acc

    def save(self, path) -> None:
        """Write an .npz (atomically: a killed run leaves the previous checkpoint intact)."""
        with atomic_file(path) as f:
            np.savez(f, **self.state_dict())

    @classmethod
    def load(cls, path, expect_meta: Mapping | None = None, device=None) -> DatasetAccumulator:
        """Read `save`'s file; with `expect_meta` (e.g. a fresh accumulator's .meta) raise a
        UserError unless model, sizes, seed, K, dataset and settings all match."""
        try:
            with np.load(path, allow_pickle=False) as z:
                state = {k: z[k] for k in z.files}
            if "meta" not in state:
                raise ValueError("no metadata entry")
        except (OSError, ValueError, EOFError) as e:
            raise UserError(f"{path} is not a dataset accumulator ({e}); delete it or use another "
                            "--resume directory") from e
        acc = cls.from_state_dict(state, device=device)
        if expect_meta is not None:
            _check_meta(expect_meta, acc.meta, f"the checkpoint {path}")
        return acc

    def _all_token_metrics(self) -> list[dict]:
        L1, d, n = self.meta["n_layers"] + 1, self.meta["d_model"], self.n_rows
        mean = None if self.mean is None else self.mean.cpu().numpy()
        m2 = None if self.m2 is None else self.m2.cpu().numpy()
        out = []
        for layer in range(L1):
            row: dict = dict.fromkeys(ALL_TOKEN_METRICS)
            if n >= 2:
                lam = np.clip(np.linalg.eigvalsh(m2[layer])[::-1], 0.0, None)  # = s^2 of Hc
                frob = math.sqrt(max(float(np.trace(m2[layer]) + n * mean[layer] @ mean[layer]), 0.0))
                if lam[0] > 0 and math.sqrt(lam[0]) > M._ZERO_VARIANCE_REL * frob:
                    s = np.sqrt(lam[lam > lam[0] * max(n, d) * M._EPS])
                    row.update(effective_rank=M._erank_from_s(s), participation_ratio=M._pr_from_s(s, n),
                               intrinsic_dim_pca95=M._pca_dim_from_s(s))
            k, cos_sum, cos_n = self.sums[layer]
            u = self.unit_sum[layer]
            row["anisotropy"] = float((u @ u - k) / (k * (k - 1))) if k >= 2 else None
            row["cosine_to_input"] = float(cos_sum / cos_n) if cos_n > 0 else None
            e_sum, e_rows = (self.att_sum[layer - 1], self.att_rows[layer - 1]) if layer else (0, 0)
            if layer and (e_rows > 0).any():
                row["attention_entropy"] = float(np.mean(e_sum[e_rows > 0] / e_rows[e_rows > 0]))
            out.append(row)
        return out

    def finalize(self, bootstrap: int = 1000, entropy_bootstrap: int = 25) -> DatasetSummary:
        """The numbers of design.md "Dataset mode". `bootstrap` TwoNN and `entropy_bootstrap`
        activation-entropy replicates per layer (the latter cost one [K, d]^T [K, d] product
        and one d x d eigvalsh each)."""
        L1, seed = self.meta["n_layers"] + 1, self.meta["seed"]
        ids, rows, values = self._texts()
        all_tokens = self._all_token_metrics()
        _, sample = self.sample.ordered()
        _, pooled = self.pooled.ordered()
        dev = self.device or "cpu"
        layer_seed = [(seed & M64) * 1024 + layer for layer in range(L1)]
        # the TwoNN searches (numpy) side by side over layers, the torch part after them
        twonn = None if sample is None else parallel.map_layers(
            lambda layer: sample_twonn(sample[layer], layer_seed[layer], bootstrap), range(L1))
        layers = []
        for layer in range(L1):
            ts = (dict.fromkeys(SAMPLE_METRICS, Interval(None, None, None)) if sample is None else
                  sample_intervals(sample[layer], layer_seed[layer], bootstrap, entropy_bootstrap,
                                   dev, twonn=twonn[layer]))
            de = None
            if pooled is not None:
                x = torch.as_tensor(pooled[layer], device=dev)[None]
                ones = torch.ones(x.shape[:2], dtype=torch.float64, device=dev)
                de = finite_or_none(entropies(x, ones)[0].item())
            per_text = {m: text_stat(values[:, layer, j]) for j, m in enumerate(METRICS)}
            layers.append(LayerSummary(layer, all_tokens[layer], ts, per_text, de))
        with np.errstate(divide="ignore", invalid="ignore"):
            hm = np.where(self.head_n > 0, self.head_mean, np.nan)
            hs = np.where(self.head_n > 1, np.sqrt(self.head_m2 / (self.head_n - 1)), np.nan)
        n_pooled = self.pooled.priority.size
        return DatasetSummary(
            model=self.meta["model"], texts=int(ids.size), tokens=self.n_rows,
            skipped_texts=int((rows == 0).sum()), sample_tokens=int(self.sample.priority.size),
            pooled_texts=n_pooled, pooled_exact=n_pooled == int((rows > 0).sum()), layers=layers,
            head_mean=dict(zip(HEAD_STATS, hm, strict=True)), head_std=dict(zip(HEAD_STATS, hs, strict=True)),
            text_ids=ids, text_values=values)


def reduce_distributed(acc: DatasetAccumulator, group=None) -> DatasetAccumulator:
    """Every rank's accumulator gathered (all_gather_object of the CPU state) and merged in
    rank order, so every rank returns the same, equal to one process up to float64 summation
    order. Without an initialised process group, returns `acc`. Each rank briefly holds all
    ranks' states (world size x state size)."""
    import torch.distributed as dist
    if not (dist.is_available() and dist.is_initialized()):
        return acc
    states: list = [None] * dist.get_world_size(group)
    dist.all_gather_object(states, acc.state_dict(), group=group)
    out = DatasetAccumulator.from_state_dict(states[0], device=acc.device)
    for s in states[1:]:
        out.merge(DatasetAccumulator.from_state_dict(s))
    return out
