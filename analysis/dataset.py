"""Dataset mode: every layer's geometry over many texts, in memory that does not grow with them.

design.md "Dataset mode". A source (a file, a HuggingFace `datasets` id or folder, or a bundled
name) is read as a stream of texts, WINDOW_BATCHES batches' worth at a time; each text is
tokenised with the model's special tokens and cut to `max_tokens`; inside a window texts of
similar length share a batch (RIGHT padding and an attention mask); one forward pass per batch
gives the hidden states (layer L = block L's output before the final norm) and, layer by layer
as the pass goes, each layer's attention, reduced on the spot to per-text head statistics; the
accumulator (analysis.accumulate) adds the batch and forgets it. Nothing depends on how texts
are batched except float rounding (the accumulator's statistics merge exactly).

Text ids: a text's id is the index of its record in the source, counted from 0: the line of a
.txt or .jsonl file (blank lines keep their numbers), the data row of a .csv/.tsv (header
excluded), the item of a .json list, the row of a `datasets` split, the line after the header of
a bundled file. Blank texts (empty or whitespace only, or a null value) are skipped and counted,
not analysed; `limit` counts the non-blank texts. The ids decide everything that must not depend
on batching or processes: the token sample's priorities, the text a process takes under
torchrun (id % world == rank), where a resumed run continues.

Padding never enters a statistic: padded positions are outside the mask the accumulator
counts, outside the attention rows and keys of the head statistics, and (right padding) never
attended to by a text's own tokens.
"""

from __future__ import annotations

import json
import logging
import os
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from analysis.accumulate import (
    DatasetAccumulator,
    DatasetSummary,
    reduce_distributed,
    stack_head_stats,
    text_head_stats,
)
from analysis.capture import output_head
from analysis.dataset_dist import (  # noqa: F401 (close_distributed, DIST_TIMEOUT_S re-exported)
    DIST_TIMEOUT_S,
    Position,
    checkpoint_path,
    close_distributed,
    exchange_reports,
    init_distributed,
    load_checkpoint,
    save_checkpoint,
)
from analysis.dataset_sources import TextSource, open_source, read_texts  # noqa: F401 (re-exported)
from models.attention import KWARG, AttentionCall
from models.attention import NAME as ATTENTION_NAME
from models.common import UserError, check_text, context_limit, whole_number

log = logging.getLogger(__name__)

WINDOW_BATCHES = 8  # texts are read this many batches at a time and batched by length within



# --- tokens and batches ---------------------------------------------------------------------

@dataclass
class Tokens:
    """One tokenised text: `ids` with the model's special tokens, `special` marks those the
    tokenizer added (BOS/CLS/SEP); `cut` when it was truncated."""
    text_id: int
    ids: list[int]
    special: list[int]
    cut: bool


@dataclass
class Batch:
    """One padded batch: `ids`, `attention`, `special  # [text, token]` (right padding)."""
    text_ids: np.ndarray  # [text] record ids
    ids: torch.Tensor  # [text, token] long
    attention: torch.Tensor  # [text, token] bool: real tokens
    special: torch.Tensor  # [text, token] bool: the special tokens the tokenizer added
    truncated: int  # texts cut to the token limit


def tokenize(tokenizer, texts: list[tuple[int, str]], limit: int) -> list[Tokens]:
    """Tokenise with the model's special tokens and cut each text to its first `limit` tokens
    (its trailing special tokens, e.g. [SEP], kept)."""
    if not texts:
        return []
    enc = tokenizer([t for _, t in texts], add_special_tokens=True, return_special_tokens_mask=True,
                    return_attention_mask=False)
    out = []
    for (tid, _), ids, sp in zip(texts, enc["input_ids"], enc["special_tokens_mask"], strict=True):
        cut = len(ids) > limit
        if cut:
            tail = 0
            while tail < min(len(sp), limit - 1) and sp[len(sp) - 1 - tail]:
                tail += 1
            ids = ids[:limit - tail] + ids[len(ids) - tail:]
            sp = sp[:limit - tail] + sp[len(sp) - tail:]
        out.append(Tokens(int(tid), list(ids), list(sp), cut))
    return out


def pad_batch(rows: list[Tokens], pad_id: int | None, device) -> Batch:
    """Right padding to the longest text of the batch, with the attention mask."""
    t = max(1, max(len(r.ids) for r in rows))
    ids = torch.full((len(rows), t), int(pad_id or 0), dtype=torch.long)
    special = torch.zeros(len(rows), t, dtype=torch.bool)
    attention = torch.zeros(len(rows), t, dtype=torch.bool)
    for b, r in enumerate(rows):
        ids[b, :len(r.ids)] = torch.tensor(r.ids, dtype=torch.long)
        special[b, :len(r.special)] = torch.tensor(r.special, dtype=torch.bool)
        attention[b, :len(r.ids)] = True
    return Batch(np.array([r.text_id for r in rows], np.int64), ids.to(device), attention.to(device),
                 special.to(device), sum(r.cut for r in rows))


def pad_id(tokenizer) -> int:
    """The id padding positions hold (never attended to, never counted): pad, else EOS, else 0."""
    return next((int(p) for p in (tokenizer.pad_token_id, tokenizer.eos_token_id) if p is not None), 0)


def encode_batch(tokenizer, texts: list[tuple[int, str]], limit: int, device) -> Batch:
    """`tokenize` then `pad_batch`: one batch of texts as the model takes it."""
    return pad_batch(tokenize(tokenizer, texts, limit), pad_id(tokenizer), device)


def by_length(rows: list[Tokens], size: int) -> list[list[Tokens]]:
    """Batches of `size` texts of similar length (sorted by (tokens, id)): padding costs model
    time and the per-text statistics' time (they grow with the padded length cubed), never
    numbers."""
    rows = sorted(rows, key=lambda r: (len(r.ids), r.text_id))
    return [rows[i:i + size] for i in range(0, len(rows), size)]


def _model_outputs(loaded, ids: torch.Tensor, attention: torch.Tensor, call: AttentionCall | None):
    """The forward pass with hidden states (and, without `call`, every layer's attention);
    logits skipped where the model allows it (a masked LM's backbone alone, a causal LM's last
    position only), as analysis.capture.forward_pass does."""
    inputs = dict(input_ids=ids, attention_mask=attention.long(), output_hidden_states=True)
    if call is None:
        inputs["output_attentions"] = True
    how, _ = output_head(loaded)
    if how == "head":
        return loaded.model.base_model(**inputs, **({KWARG: call} if call is not None else {}))
    if how == "keep":
        return loaded.run(call, **inputs, use_cache=False, logits_to_keep=1)
    return loaded.run(call, **inputs)


def forward_batch(loaded, batch: Batch) -> tuple[list[torch.Tensor], dict | None, bool]:
    """One forward pass under the model's lock: (hidden, the layers' `[text, token, d]` on the
    model's device, head statistics {name: [text, layer, head]}, whether layer L had to be the
    final-normed state). With the dashboard attention each layer's weights are reduced as the
    pass goes (never every layer's attention at once); a model on its own eager attention
    returns them all at once (output_attentions)."""
    lengths = batch.attention.sum(1)
    per_layer: dict[int, dict] = {}

    def record(layer: int, weights: torch.Tensor) -> None:  # [text, head, query, key]
        per_layer[layer] = text_head_stats(weights, lengths, loaded.causal)
    call = AttentionCall(record=record) if loaded.attention == ATTENTION_NAME else None
    with loaded.lock, torch.no_grad():
        out = _model_outputs(loaded, batch.ids, batch.attention, call)
        if call is None:
            for layer, a in enumerate(out.attentions or ()):
                if a is not None:
                    per_layer[layer] = text_head_stats(a, lengths, loaded.causal)
        states = list(out.hidden_states)
        normed = call is None or call.last_block is None
        if not normed:
            states[-1] = call.last_block
        hidden = [s.to(states[0].device) for s in states]  # not stacked: a copy add_batch needs not
    del out
    heads = (stack_head_stats([per_layer[i] for i in range(loaded.n_layers)])
             if len(per_layer) == loaded.n_layers else None)
    return hidden, heads, normed


# --- the driver -----------------------------------------------------------------------------

class DatasetCancelled(Exception):
    """`cancel()` returned True: the run stopped between two batches. Nothing was written
    except, with `resume`, a checkpoint of every finished batch (the run can be resumed)."""

    def __init__(self, texts: int, checkpoint: Path | None):
        where = f"; resume from {checkpoint.parent}" if checkpoint else ""
        super().__init__(f"Dataset run cancelled after {texts} texts{where}.")
        self.texts = texts
        self.checkpoint = checkpoint


@dataclass
class DatasetResult:
    """One model over one dataset: design.md's summary.json "dataset" (`to_json`) and the
    accumulator behind it (the bundle writes it as dataset_<model>.npz: `accumulator.save`)."""
    model: str
    source: str  # as given
    fingerprint: str
    summary: DatasetSummary
    accumulator: DatasetAccumulator
    settings: dict  # what a resumed run must share (max_tokens, skip_special, column, ...)
    blank_texts: int  # blank records skipped (not in `texts`)
    truncated_texts: int  # texts cut to settings["max_tokens"]
    resumed_texts: int  # texts taken from a checkpoint rather than run now
    seconds: float  # this call's wall time: reading, forward passes, accumulation, finalisation
    finalize_seconds: float  # of which the finalisation (TwoNN, bootstrap, per-text statistics)
    tokens_per_second: float  # model tokens run now (padding excluded) / seconds before finalising
    processes: int
    notices: list[str] = field(default_factory=list)

    @property
    def texts(self) -> int:
        return self.summary.texts

    @property
    def tokens(self) -> int:
        return self.summary.tokens

    def to_json(self) -> dict:
        s = self.summary.to_json()
        out = {k: s[k] for k in ("texts", "tokens", "skipped_texts")}
        out.update(seconds=self.seconds, tokens_per_second=self.tokens_per_second,
                   sample_tokens=s["sample_tokens"], processes=self.processes)
        out.update({k: v for k, v in s.items() if k not in out})
        out.update(source=self.source, blank_texts=self.blank_texts, truncated_texts=self.truncated_texts,
                   settings=self.settings, notices=list(self.notices))
        return out


@dataclass
class _Run:
    loaded: object
    source: TextSource
    acc: DatasetAccumulator
    pos: Position
    identity: dict  # model, source, fingerprint, settings
    rank: int = 0
    world: int = 1
    checkpoint: Path | None = None
    resumed_texts: int = 0
    tokens_now: int = 0  # model tokens run in this call


def analyze_dataset(loaded, source: str, *, split: str | None = None, column: str | None = None,
                    limit: int | None = None, batch_size: int = 16, max_tokens: int | None = None,
                    sample_tokens: int = 5000, skip_special: bool = False, seed: int = 0,
                    resume: str | os.PathLike | None = None, checkpoint_every: int = 8,
                    progress: Callable[[int, int | None, float, float | None], None] | None = None,
                    cancel: Callable[[], bool] | None = None, bootstrap: int = 1000,
                    entropy_bootstrap: int = 25) -> DatasetResult | None:
    """Every dataset-mode number of one model over a source (design.md "Dataset mode").

    `limit`: the first N non-blank texts. `max_tokens`: each text cut to its first T tokens
    (default and at most the model's context). `skip_special`: the special tokens the tokenizer
    adds (BOS/CLS/SEP) are left out of the hidden-state statistics (attention statistics keep
    every real token). `resume=DIR`: a checkpoint every `checkpoint_every` batches, at the end
    and on cancel; a run started on a folder with a checkpoint continues it (same model,
    dataset and settings, else UserError). `progress(done, total, tokens_per_second,
    seconds_left)` after each batch: done = texts of the source passed so far (every process's
    share), total = texts to pass (None when unknown). `cancel()` is asked before each batch:
    True raises DatasetCancelled. Under torchrun (see `init_distributed`) each process takes
    the texts with id % world == rank; the accumulators are reduced and process 0 returns the
    result, the others None. `bootstrap`, `entropy_bootstrap`: finalisation replicates."""
    t0 = time.perf_counter()
    for name, v, lo in (("--batch-size", batch_size, 1), ("--sample-tokens", sample_tokens, 1),
                        ("checkpoint_every", checkpoint_every, 1), ("--seed", seed, 0)):
        whole_number(name, v, lo=lo)
    if limit is not None:
        whole_number("--limit", limit, lo=1)
    rank, world = init_distributed()
    run, error = None, None
    try:
        run = _start(loaded, source, split, column, limit, max_tokens, sample_tokens, skip_special,
                     seed, resume, rank, world, count=progress is not None)
        _accumulate(run, limit, batch_size, skip_special, checkpoint_every, progress, cancel)
    except Exception as exc:
        if world == 1:
            raise
        error = exc
    totals = {"tokens": run.tokens_now if run else 0, "truncated": run.pos.truncated if run else 0,
              "resumed": run.resumed_texts if run else 0, "normed": bool(run and run.pos.normed),
              "no_attention": bool(run and run.pos.no_attention)}
    acc = run.acc if run else None
    if world > 1:
        reports = exchange_reports(error, totals, world)
        acc = reduce_distributed(acc)
        if rank != 0:
            return None
        totals = {k: (any if isinstance(v, bool) else sum)(r[k] for r in reports) for k, v in totals.items()}
    return _finish(run, acc, totals, world, t0, bootstrap, entropy_bootstrap)


def token_limit(loaded, max_tokens: int | None) -> tuple[int, str]:
    """(tokens a text is cut to, why: the model's context or --max-tokens)."""
    ctx = context_limit(loaded.model) or 2048
    if max_tokens is None:
        return ctx, f"{loaded.name}'s context"
    whole_number("--max-tokens", max_tokens, lo=1)
    if max_tokens > ctx:
        return ctx, f"{loaded.name}'s context (--max-tokens {max_tokens} is more than it takes)"
    return max_tokens, "--max-tokens"


def _start(loaded, source, split, column, limit, max_tokens, sample_tokens, skip_special, seed,
           resume, rank, world, count: bool) -> _Run:
    """Open the source, make the accumulator, load the checkpoint when resuming."""
    src = open_source(source, split, column, count=count, limit=limit)
    limit_tokens, _ = token_limit(loaded, max_tokens)
    cfg = loaded.model.config
    settings = {"max_tokens": limit_tokens, "skip_special": bool(skip_special), "column": column,
                "split": split, "dtype": str(loaded.dtype), "attention": loaded.attention,
                "sample_tokens": int(sample_tokens), "seed": int(seed)}
    acc = DatasetAccumulator(loaded.name, loaded.n_layers, int(cfg.hidden_size), loaded.n_heads,
                             sample_tokens=sample_tokens, seed=seed, dataset=src.fingerprint,
                             settings=settings, device=loaded.torch_device)
    identity = {"model": loaded.name, "source": src.name, "fingerprint": src.fingerprint,
                "settings": json.loads(json.dumps(settings)), "processes": world, "rank": rank}
    run = _Run(loaded, src, acc, Position(), identity, rank, world)
    if resume is not None:
        run.checkpoint = checkpoint_path(resume, rank, world)
        found = load_checkpoint(run.checkpoint, acc, identity)
        run.checkpoint.parent.mkdir(parents=True, exist_ok=True)
        if found is not None:
            run.acc, run.pos = found
            run.resumed_texts = run.pos.fed
            log.info("%s: resumed from %s after %d texts", loaded.name, run.checkpoint, run.pos.texts)
    return run


def _windows(src: TextSource, pos: Position, limit: int | None, rank: int, world: int, size: int
             ) -> Iterator[tuple[list[tuple[int, str]], tuple[int, int, int]]]:
    """This process's texts from `pos` in windows of up to `size`, each with the (records,
    texts, blank) counts of the source read up to its last text; a last (maybe empty) window
    carries the final counts. UserError when the source holds no text."""
    records, texts, blank = pos.records, pos.texts, pos.blank
    window: list[tuple[int, str]] = []
    for rid, text in src.records(pos.records):
        if limit is not None and texts >= limit:
            break
        records = rid + 1
        if text is None or not text.strip():
            blank += 1
            continue
        texts += 1
        if rid % world == rank:
            window.append((rid, check_text(text, f"Text {rid} of {src.name}")))
            if len(window) == size:
                yield window, (records, texts, blank)
                window = []
    if texts == 0:
        raise UserError(f"Every text in {src.name} is empty ({records} records): nothing to analyse."
                        if records else f"{src.name} holds no texts: nothing to analyse.")
    yield window, (records, texts, blank)


@dataclass
class _Loop:
    """What the batch loop needs besides the run."""
    skip_special: bool
    checkpoint_every: int
    progress: Callable | None
    cancel: Callable[[], bool] | None
    since: int = 0  # batches since the last checkpoint
    t_start: float = field(default_factory=time.perf_counter)
    start_texts: int = 0


def _accumulate(run: _Run, limit, batch_size, skip_special, checkpoint_every, progress, cancel) -> None:
    """Read, run and add every batch of this process, window by window; checkpoints at batch
    boundaries (the position then names the window's finished texts), progress after each."""
    loop = _Loop(skip_special, checkpoint_every, progress, cancel, start_texts=run.pos.texts)
    limit_tokens = run.identity["settings"]["max_tokens"]
    size = batch_size * WINDOW_BATCHES
    for texts, counts in _windows(run.source, run.pos, limit, run.rank, run.world, size):
        done = set(run.pos.done)
        rows = tokenize(run.loaded.tokenizer, [t for t in texts if t[0] not in done], limit_tokens)
        for batch_rows in by_length(rows, batch_size):
            _check_cancel(run, loop)
            _run_batch(run, loop, batch_rows)
            _after_batch(run, loop, counts)
        run.pos.records, run.pos.texts, run.pos.blank = counts
        run.pos.done = [i for i in run.pos.done if i >= counts[0]]  # a resumed run's other windows
    if run.checkpoint is not None:
        save_checkpoint(run.checkpoint, run.acc, run.pos, run.identity)  # a rerun only finalises


def _check_cancel(run: _Run, loop: _Loop) -> None:
    if loop.cancel is not None and loop.cancel():
        if run.checkpoint is not None:
            save_checkpoint(run.checkpoint, run.acc, run.pos, run.identity)
        raise DatasetCancelled(run.pos.fed, run.checkpoint)


def _run_batch(run: _Run, loop: _Loop, rows: list[Tokens]) -> None:
    batch = pad_batch(rows, pad_id(run.loaded.tokenizer), run.loaded.torch_device)
    hidden, heads, normed = forward_batch(run.loaded, batch)
    mask = batch.attention & ~batch.special if loop.skip_special else batch.attention
    run.acc.add_batch(hidden, mask, batch.text_ids, heads)
    del hidden
    tokens = int(batch.attention.sum())
    run.tokens_now += tokens
    p = run.pos
    p.fed, p.tokens, p.normed = p.fed + len(rows), p.tokens + tokens, p.normed or normed
    p.truncated += batch.truncated
    p.no_attention = p.no_attention or heads is None
    p.done += batch.text_ids.tolist()


def _after_batch(run: _Run, loop: _Loop, counts: tuple[int, int, int]) -> None:
    """Checkpoint when due; progress: texts of the source passed (exact with one process: the
    window's start plus its finished texts; under torchrun those times the processes)."""
    loop.since += 1
    _maybe_checkpoint(run, loop)
    if loop.progress is None:
        return
    elapsed = time.perf_counter() - loop.t_start
    done = min(run.pos.texts + len(run.pos.done) * run.world, counts[1])
    total = run.source.total
    left = (None if total is None or done == loop.start_texts
            else max(total - done, 0) * elapsed / (done - loop.start_texts))
    loop.progress(done, total, run.tokens_now / max(elapsed, 1e-9), left)


def _maybe_checkpoint(run: _Run, loop: _Loop) -> None:
    if run.checkpoint is not None and loop.since >= loop.checkpoint_every:
        save_checkpoint(run.checkpoint, run.acc, run.pos, run.identity)
        loop.since = 0


def _finish(run: _Run, acc: DatasetAccumulator, totals: dict, world: int, t0: float,
            bootstrap: int, entropy_bootstrap: int) -> DatasetResult:
    t_fin = time.perf_counter()
    summary = acc.finalize(bootstrap=bootstrap, entropy_bootstrap=entropy_bootstrap)
    done = time.perf_counter()
    result = DatasetResult(
        model=run.loaded.name, source=run.source.name, fingerprint=run.source.fingerprint, summary=summary,
        accumulator=acc, settings=dict(run.identity["settings"]), blank_texts=run.pos.blank,
        truncated_texts=totals["truncated"], resumed_texts=totals["resumed"], seconds=done - t0,
        finalize_seconds=done - t_fin, tokens_per_second=totals["tokens"] / max(t_fin - t0, 1e-9),
        processes=world)
    result.notices = _notices(run, result, totals)
    for n in result.notices:
        log.info("%s: %s", run.loaded.name, n)
    return result


def _notices(run: _Run, r: DatasetResult, totals: dict) -> list[str]:
    """What the user must know to read the numbers."""
    out = []
    name, s = run.loaded.name, r.summary
    limit = r.settings["max_tokens"]
    if r.truncated_texts:
        ctx = context_limit(run.loaded.model) or 2048
        why = f"{name}'s context" if limit == ctx else "--max-tokens"
        out.append(f"{r.truncated_texts} of {s.texts} texts had more than {limit} tokens ({why}) and were "
                   "cut to their first tokens (a closing special token such as [SEP] kept).")
    if r.blank_texts:
        out.append(f"{r.blank_texts} blank records were skipped (text ids still count them).")
    if s.skipped_texts:
        out.append(f"{s.skipped_texts} texts had no token left to count and add nothing to the statistics.")
    if r.settings["skip_special"] and not _adds_specials(run.loaded.tokenizer):
        out.append(f"--skip-special: {name}'s tokenizer adds no special tokens, so nothing was left out.")
    if run.loaded.attention != ATTENTION_NAME:
        out.append(f"{name} runs its own eager attention: each batch returned every layer's attention at "
                   "once (output_attentions), which is fine for small models; lower --batch-size for long "
                   "texts.")
    if totals["no_attention"]:
        out.append(f"{name} returned no attention weights for some batches: their texts add nothing to "
                   "the attention statistics (it must run eager attention).")
    if totals["normed"]:
        out.append(f"The last layer of {name} could not be read before its final norm: layer L is the "
                   "model's final (normed) hidden state.")
    if not s.pooled_exact:
        out.append(f"The dataset entropy uses the mean-pooled vectors of a seeded sample of "
                   f"{s.pooled_texts} of the {s.texts - s.skipped_texts} texts.")
    if r.resumed_texts:
        out.append(f"Resumed: {r.resumed_texts} texts came from the checkpoint in {run.checkpoint.parent}.")
    return out


def _adds_specials(tokenizer) -> bool:
    enc = tokenizer(["a"], add_special_tokens=True, return_special_tokens_mask=True)
    return any(enc["special_tokens_mask"][0])
