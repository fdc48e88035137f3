"""The whole analysis of one or more models on a prompt (or a corpus of prompts)."""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from contextlib import contextmanager
from datetime import datetime, timezone

import numpy as np

from analysis import attention as att_mod
from analysis import attribution as attr_mod
from analysis import metrics as met
from analysis.capture import Trace, capture
from analysis.result import Analysis, ModelResult
from models.errors import UserError

log = logging.getLogger(__name__)

INDUCTION_PERIOD = 10


# Below this many parameters a model runs fastest on one thread: its matrices are tiny, and on
# a busy machine every multi-threaded (OpenMP/BLAS) region waits for a second core to be
# scheduled. Measured on the 2-core box under load: tiny-gpt2 analysis 5.1 s -> 0.09 s,
# all-MiniLM-L6 (23 M parameters) 2.9 s -> 0.13 s.
SINGLE_THREAD_MAX_PARAMS = 50_000_000


@contextmanager
def compute_threads(params: int | None):
    """One thread for torch/BLAS/OpenMP while analysing small models; the default otherwise."""
    if params is None or params > SINGLE_THREAD_MAX_PARAMS:
        yield
        return
    from threadpoolctl import threadpool_limits

    with threadpool_limits(1):
        yield


def pool_traces(traces: list[Trace]) -> Trace:
    """Corpus mode: token rows of all prompts stacked per layer; attention block-diagonal."""
    if len(traces) == 1:
        return traces[0]
    lengths = [t.n_tokens for t in traces]
    total = sum(lengths)
    first = traces[0]
    attn = np.zeros((first.n_layers, first.n_heads, total, total), dtype=np.float32)
    segments, start = [], 0
    for t, n in zip(traces, lengths, strict=True):
        attn[:, :, start:start + n, start:start + n] = t.attentions
        segments.append((start, start + n))
        start += n
    return Trace(model=first.model, task=first.task, prompt="\n".join(t.prompt for t in traces),
                 token_ids=[i for t in traces for i in t.token_ids],
                 tokens=[s for t in traces for s in t.tokens],
                 hidden=np.concatenate([t.hidden for t in traces], axis=1),
                 attentions=attn, logits=np.concatenate([t.logits for t in traces], axis=0),
                 causal=first.causal, notices=[n for t in traces for n in t.notices],
                 segments=segments,
                 logit_rows=[s + r for t, (s, _) in zip(traces, segments, strict=True)
                             for r in (t.logit_rows if t.logit_rows is not None
                                       else range(t.n_tokens))])


def layer_metrics_of(trace: Trace) -> list[dict]:
    if trace.segments:
        per_segment = [trace.attentions[:, :, s:e, s:e] for s, e in trace.segments]
        return met.layer_metrics(trace.hidden, per_segment, trace.causal, trace.segments)
    if trace.head_stats:  # computed during the forward pass, the same formula
        ent = trace.head_stats["attention_entropy"]
        per_layer = [None if np.isnan(row).all() else float(np.nanmean(row)) for row in ent]
        return met.layer_metrics(trace.hidden, None, trace.causal, attention_entropy=per_layer)
    return met.layer_metrics(trace.hidden, trace.attentions, trace.causal)


def word_pool(tokenizer) -> list[int]:
    """Token ids for random probe sequences: whole-word tokens made of letters (byte-level 'Ġ'
    or sentencepiece '▁' word starts; WordPiece pieces without '##'), else every non-special id."""
    special = set(tokenizer.all_special_ids)
    ids = [i for i in range(len(tokenizer)) if i not in special]
    toks = [t or "" for t in tokenizer.convert_ids_to_tokens(ids)]  # one call: 50k ids in ms
    marked = any(t[:1] in ("Ġ", "▁") for t in toks)
    words = [i for i, t in zip(ids, toks, strict=True)
             if (t[1:].isalpha() and len(t) >= 3 and t[:1] in ("Ġ", "▁")) if marked
             or (t.isalpha() and len(t) >= 2)]
    return words if len(words) >= 4 * INDUCTION_PERIOD else ids


def trained_copy_words(loaded) -> list[int] | None:
    """Single-token ids of the words an embedded model was trained to copy, else None.

    The embedded models saw repeated random sequences of models.corpus.POOL only (their
    training.json's corpus_config; "repeat_pool" absent means POOL). Their induction heads work
    on those words and not on the rest of the vocabulary (tiny-llama: 98% of a third copy of a
    POOL sequence predicted, 2% for other corpus words), so they are probed on POOL words.
    """
    import json
    from pathlib import Path

    from models.corpus import POOL

    if loaded.entry.family != "embedded":
        return None
    try:
        facts = json.loads((Path(loaded.entry.source) / "training.json").read_text())
    except (OSError, ValueError):
        return None
    corpus = facts.get("corpus_config") or {}
    if not corpus.get("repeats") or corpus.get("repeat_pool", "pool") != "pool":
        return None
    ids = []
    for word in POOL:
        piece = loaded.tokenizer(" " + word, add_special_tokens=False)["input_ids"]
        if len(piece) == 1:
            ids.append(piece[0])
    return sorted(set(ids)) if len(ids) >= 2 * INDUCTION_PERIOD else None


def induction_probe(loaded) -> tuple[list[int], str]:
    """The token ids the induction probe draws from, and a sentence saying which they are
    (computed once per loaded model)."""
    if "induction_probe" not in loaded.derived:
        loaded.derived["induction_probe"] = _induction_probe(loaded)
    ids, text = loaded.derived["induction_probe"]
    return list(ids), text


def _induction_probe(loaded) -> tuple[list[int], str]:
    trained = trained_copy_words(loaded)
    if trained is not None:
        return trained, (f"Induction scores: probed with the {len(trained)} words {loaded.name} "
                         "was trained to copy (models/corpus.py POOL); its copying does not "
                         "extend to the rest of its vocabulary.")
    pool = word_pool(loaded.tokenizer)
    return pool, f"Induction scores: probed with random tokens from {len(pool)} whole-word tokens."


def induction_scores(loaded, seed: int = 0, pool: list[int] | None = None) -> np.ndarray:
    """[layer, head] induction scores on a repeated random sequence of probe tokens (one
    forward pass; see `induction_probe`, and analysis.attention.induction_score for the
    layout). They depend on the model and seed only, not on the prompt: computed once per
    loaded model and seed (the default pool) and reused by later analyses."""
    key = ("induction", seed, INDUCTION_PERIOD)
    if pool is None and key in loaded.derived:
        return loaded.derived[key].copy()
    tok = loaded.tokenizer
    prefix = tok("", add_special_tokens=True)["input_ids"][:1]  # BOS / [CLS] if the model uses one
    probe = pool if pool is not None else induction_probe(loaded)[0]
    if not prefix:
        prefix = [probe[0]]
    ids = att_mod.repeated_sequence(probe, INDUCTION_PERIOD, seed, prefix)
    trace = capture(loaded, "", input_ids=ids, logits=False)
    scores = att_mod.induction_score(trace.attentions, INDUCTION_PERIOD)
    if pool is None:
        loaded.derived[key] = scores.copy()
    return scores


def analyze_model(loaded, prompts: list[str], top_k: int = 5, ablation: bool = False,
                  seed: int = 0, max_tokens: int | None = None,
                  gradients: bool = True, continuation_tokens: int = 12,
                  input_ids: list[int] | None = None,
                  defer_continuation: bool = False) -> ModelResult:
    """Capture, every layer and head metric, predictions, attribution and logit lens.

    `input_ids` (one prompt only) analyses exactly these token ids, e.g. a diffusion model's
    partly masked sequence, instead of re-tokenising the prompt text.

    `defer_continuation`: a causal model's greedy continuation (a generation: one more forward
    pass per token) is not written now; the result keeps the capture's KV cache and
    predictions["continuation_pending"], and `finish_continuation` writes the text later (the
    app shows the analysis first and the continuation after it)."""
    from models import predictions as pred_mod

    t0 = time.perf_counter()
    prompts = [p for p in prompts if p and p.strip()]
    if not prompts:
        raise UserError("The prompt is empty. Type some text to analyse.")
    if input_ids is not None:
        if len(prompts) != 1:
            raise UserError("Token ids can be given for one prompt only.")
        traces = [capture(loaded, prompts[0], max_tokens, input_ids=list(input_ids),
                          gradient=gradients)]
    else:
        traces = []
        for p in prompts:  # only the first prompt is explained (gradient, continuation)
            t = capture(loaded, p, max_tokens, gradient=gradients and not traces)
            if traces:
                t.cache = None
            traces.append(t)
    trace = traces[0]
    pooled = pool_traces(traces)
    layers = layer_metrics_of(pooled)

    # heads: entropy, roles, clusters, induction
    roles = trace.head_stats
    entropy = roles["attention_entropy"]
    labels, projection = att_mod.cluster_features(att_mod.features_from_stats(roles), seed=seed)
    probe_text = induction_probe(loaded)[1]
    induction = induction_scores(loaded, seed)

    # predictions, attribution, logit lens
    target = attr_mod.target_for(trace, loaded.tokenizer.mask_token_id)
    predictions: dict = {"model": loaded.name, "task": loaded.task, "prompt": trace.prompt,
                         "predictions": [], "text": ""}
    if loaded.task in ("fill-mask", "diffusion"):
        if target is not None:
            predictions = pred_mod.fill_mask_from_logits(loaded, trace.prompt, trace.token_ids,
                                                         trace.logits, top_k, trace.logit_rows)
        else:
            trace.notices.append(f"No {loaded.tokenizer.mask_token} in the prompt: "
                                 "no mask prediction or attribution.")
    elif loaded.task == "causal":
        predictions = pred_mod.next_token_from_logits(loaded, trace.prompt, trace.logits, top_k)
        if continuation_tokens and defer_continuation and trace.cache is not None:
            predictions["continuation_pending"] = int(continuation_tokens)
        elif continuation_tokens:
            predictions["text"] = pred_mod.continuation(loaded, trace.prompt,
                                                        max_new_tokens=continuation_tokens, seed=seed,
                                                        trace=trace)
    if not predictions.get("continuation_pending"):
        trace.cache = None  # not kept with the result (memory)
    head_attr = np.zeros((trace.n_layers, trace.n_heads))
    token_attr: dict = {}
    if target is not None:
        pos, tid = target
        rollout = attr_mod.rollout_row(trace.attentions, pos)
        token_attr = {"target": loaded.tokenizer.decode([tid]).strip(), "position": pos,
                      "rollout": rollout.tolist(), "grad_x_input": [], "log_prob": None,
                      "head_method": "gradient"}
        if gradients:
            g = trace.gradient  # from the capture's own pass when that fitted in memory
            if g is not None and (g["position"], g["target"]) == (pos, tid):
                gxi, head_grad, logp = g["grad_x_input"], g["head"], g["log_prob"]
            else:
                gxi, head_grad, logp = attr_mod.gradient_attribution(loaded, trace.token_ids,
                                                                     pos, tid)
            token_attr["grad_x_input"] = gxi.tolist()
            token_attr["log_prob"] = logp
            head_attr = head_grad
        if ablation:
            head_attr = attr_mod.head_ablation(loaded, trace.token_ids, pos, tid)
            token_attr["head_method"] = "ablation"
    trace.gradient = None  # kept in token_attr and head_attr
    lens = attr_mod.logit_lens(loaded, trace.hidden, loaded.tokenizer)

    heads = []
    for layer in range(trace.n_layers):
        for head in range(trace.n_heads):
            i = layer * trace.n_heads + head
            heads.append({"layer": layer + 1, "head": head,
                          "attention_entropy": _f(entropy[layer, head]),
                          "cluster": int(labels[i]),
                          "previous_token_score": _f(roles["previous_token_score"][layer, head]),
                          "first_token_score": _f(roles["first_token_score"][layer, head]),
                          "self_score": _f(roles["self_score"][layer, head]),
                          "induction_score": _f(induction[layer, head]),
                          "attribution": _f(head_attr[layer, head]) if target else None})
    cfg = loaded.model.config
    source = {"name": loaded.name, "source": loaded.entry.source, "family": loaded.entry.family,
              "revision": getattr(cfg, "_commit_hash", None), "class": type(loaded.model).__name__,
              "n_layers": loaded.n_layers, "n_heads": loaded.n_heads,
              "hidden_size": int(cfg.hidden_size), "params": loaded.params,
              "induction_probe": probe_text}
    return ModelResult(trace=trace, layer_metrics=layers, head_metrics=heads,
                       head_projection=projection, predictions=predictions,
                       token_attribution=token_attr, head_attribution=head_attr, logit_lens=lens,
                       induction=induction, seconds=time.perf_counter() - t0, source=source,
                       pooled=pooled if len(traces) > 1 else None)


_CONTINUATION_LOCK = threading.Lock()


def finish_continuation(loaded, result: ModelResult) -> bool:
    """Write a deferred greedy continuation (see analyze_model) into result.predictions["text"]
    from the kept KV cache, then drop the cache. False when none was pending (already written,
    or never deferred); safe to call from several threads."""
    from models import predictions as pred_mod

    with _CONTINUATION_LOCK:
        pending = (result.predictions or {}).get("continuation_pending")
        if not pending:
            return False
        try:
            result.predictions["text"] = pred_mod.continuation(
                loaded, result.trace.prompt, max_new_tokens=int(pending), trace=result.trace)
        finally:
            result.predictions.pop("continuation_pending", None)
            result.trace.cache = None
        return True


def _f(x) -> float | None:
    if x is None:
        return None
    x = float(x)
    return x if np.isfinite(x) else None


def analyze(models: list[str], prompts: list[str], load: Callable | None = None,
            progress: Callable[[float, str], None] | None = None, **kwargs) -> Analysis:
    """Analyse each model on the same prompt(s). `load(name)` returns a Loaded model."""
    from models.loading import load as default_load

    load = load or default_load
    if not models:
        raise UserError("Choose at least one model.")
    if len(set(models)) != len(models):
        models = list(dict.fromkeys(models))
    results = []
    for i, name in enumerate(models):
        if progress:
            progress(i / len(models), f"analysing {name}")
        loaded = load(name)
        with compute_threads(loaded.params):
            results.append(analyze_model(loaded, prompts, **kwargs))
    if progress:
        progress(1.0, "done")
    return Analysis(prompts=[p for p in prompts if p and p.strip()], results=results,
                    settings={k: v for k, v in kwargs.items() if k != "defer_continuation"},
                    created=datetime.now(timezone.utc).isoformat(timespec="seconds"),
                    seed=kwargs.get("seed", 0))


def summary_json(analysis: Analysis) -> dict:
    """What `analyze --json` writes."""
    out = {"prompts": analysis.prompts, "created": analysis.created, "settings": analysis.settings,
           "models": []}
    for r in analysis.results:
        best_ind = max(r.head_metrics, key=lambda h: h["induction_score"] or -1)
        best_prev = max(r.head_metrics, key=lambda h: h["previous_token_score"] or -1)
        out["models"].append({
            **r.source, "task": r.trace.task, "tokens": r.trace.tokens,
            "notices": r.trace.notices, "seconds": round(r.seconds, 3),
            "layer_metrics": r.layer_metrics, "head_metrics": r.head_metrics,
            "predictions": r.predictions, "token_attribution": r.token_attribution,
            "top_induction_head": {k: best_ind[k] for k in ("layer", "head", "induction_score")},
            "top_previous_token_head": {k: best_prev[k] for k in
                                        ("layer", "head", "previous_token_score")},
            "logit_lens": {"positions": r.logit_lens.get("positions"),
                           "top_tokens": r.logit_lens["top_tokens"],
                           "top_probs": np.round(r.logit_lens["top_probs"], 6).tolist()},
        })
    return out
