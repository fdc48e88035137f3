"""The whole analysis of one or more models on one prompt: capture, every layer and head
metric, predictions, attribution and logit lens, as the typed `ModelResult`.

The result is finished when `analyze` returns. A causal model's greedy continuation is a
generation, not part of the analysis: callers ask for it with `continuation_of` (the CLI and the
page do, and pass it to the JSON and bundle writers beside the analysis).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from datetime import datetime, timezone

import numpy as np

from analysis import attention as att_mod
from analysis import attribution as attr_mod
from analysis import metrics as met
from analysis.capture import Trace, capture
from analysis.result import (
    Analysis,
    HeadMetrics,
    LayerMetrics,
    LogitLens,
    ModelInfo,
    ModelResult,
    TokenAttribution,
)
from models import predictions as pred_mod
from models.common import UserError

log = logging.getLogger(__name__)

INDUCTION_PERIOD = 10


def layer_metrics_of(trace: Trace) -> LayerMetrics:
    """Every layer metric of a capture (the attention entropies come from its per-head
    statistics, computed during the forward pass with the same formula)."""
    ent = trace.head_stats.get("attention_entropy") if trace.head_stats else None
    if ent is not None:
        per_layer = [None if np.isnan(row).all() else float(np.nanmean(row)) for row in ent]
        return LayerMetrics(**met.layer_metrics(trace.hidden, None, trace.causal,
                                                attention_entropy=per_layer))
    return LayerMetrics(**met.layer_metrics(trace.hidden, trace.attentions, trace.causal))


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


def probe_words(loaded) -> list[int] | None:
    """Single-token ids of the words the model's registry entry names as its copying vocabulary
    (`ModelEntry.probe_words`: the embedded models were trained to copy repeated sequences of
    models.corpus.POOL only, and their induction heads work on those words and not on the rest
    of the vocabulary), else None."""
    words = getattr(loaded.entry, "probe_words", ()) or ()
    ids = []
    for word in words:
        piece = loaded.tokenizer(" " + word, add_special_tokens=False)["input_ids"]
        if len(piece) == 1:
            ids.append(piece[0])
    return sorted(set(ids)) if len(ids) >= 2 * INDUCTION_PERIOD else None


def induction_probe(loaded) -> tuple[list[int], str]:
    """The token ids the induction probe draws from, and a sentence saying which they are
    (computed once per loaded model)."""
    if "induction_probe" not in loaded.memo:
        trained = probe_words(loaded)
        if trained is not None:
            text = (f"Induction scores: probed with the {len(trained)} words {loaded.name} was "
                    "trained to copy (its registry entry's probe words); its copying does not "
                    "extend to the rest of its vocabulary.")
            loaded.memo["induction_probe"] = (trained, text)
        else:
            pool = word_pool(loaded.tokenizer)
            loaded.memo["induction_probe"] = (pool, "Induction scores: probed with random tokens "
                                              f"from {len(pool)} whole-word tokens.")
    ids, text = loaded.memo["induction_probe"]
    return list(ids), text


def induction_scores(loaded, seed: int = 0, pool: list[int] | None = None) -> np.ndarray:
    """[layer, head] induction scores on a repeated random sequence of probe tokens (one
    forward pass; see `induction_probe`, and analysis.attention.induction_score for the
    layout). They depend on the model and seed only, not on the prompt: computed once per
    loaded model and seed (the default pool) and reused by later analyses."""
    key = ("induction", seed, INDUCTION_PERIOD)
    if pool is None and key in loaded.memo:
        return loaded.memo[key].copy()
    tok = loaded.tokenizer
    prefix = tok("", add_special_tokens=True)["input_ids"][:1]  # BOS / [CLS] if the model uses one
    probe = pool if pool is not None else induction_probe(loaded)[0]
    if not prefix:
        prefix = [probe[0]]
    ids = att_mod.repeated_sequence(probe, INDUCTION_PERIOD, seed, prefix)
    trace = capture(loaded, "", input_ids=ids, logits=False)
    scores = att_mod.induction_score(trace.attentions, INDUCTION_PERIOD)
    if pool is None:
        loaded.memo[key] = scores.copy()
    return scores


def analyze_model(loaded, prompts: list[str] | str, top_k: int = 5, ablation: bool = False,
                  seed: int = 0, max_tokens: int | None = None, gradients: bool = True,
                  input_ids: list[int] | None = None, chat_template: bool = False
                  ) -> ModelResult:
    """Capture, every layer and head metric, predictions, attribution and logit lens of one
    prompt (`prompts`: the prompt, or a list holding it).

    `input_ids` analyses exactly these token ids, e.g. a diffusion model's partly masked
    sequence, instead of tokenising the prompt text. `ablation`: per-head attribution by exact
    ablation (one pass per head) instead of the gradient estimate."""
    t0 = time.perf_counter()
    prompt = _one_prompt(prompts)
    trace = capture(loaded, prompt, max_tokens, input_ids=input_ids, gradient=gradients,
                    chat_template=chat_template)
    layers = layer_metrics_of(trace)
    if trace.n_tokens < met.TWONN_RELIABLE_TOKENS and np.isfinite(layers.intrinsic_dim_twonn).any():
        trace.notices.append(
            f"TwoNN intrinsic dimension from {trace.n_tokens} tokens is unreliable (below "
            f"{met.TWONN_RELIABLE_TOKENS} tokens it is mostly noise): read its 95% interval, or "
            "measure a dataset (analyze --dataset).")
    predictions = _predictions(loaded, trace, top_k)
    target = attr_mod.target_for(trace, loaded.mask_id)
    attribution, support = None, None
    if target is not None:
        attribution, support = _attribution(loaded, trace, target, gradients, ablation)
    trace.gradient = None  # kept in the attribution
    heads = _head_metrics(loaded, trace, support, "ablation" if ablation else "gradient", seed)
    lens = None
    parts = attr_mod.logit_lens(loaded, trace.hidden, loaded.tokenizer,
                                include=list(trace.logit_rows or []),
                                final_is_normed=trace.last_layer_normed)
    if parts["top_tokens"]:
        lens = LogitLens(parts["positions"], parts["predicted"], parts["top_ids"],
                         parts["top_tokens"], parts["top_probs"])
    return ModelResult(trace=trace, layers=layers, heads=heads, info=model_info(loaded),
                       predictions=predictions, attribution=attribution, lens=lens,
                       hidden_projection=att_mod.shared_projection(trace.hidden),
                       seconds=time.perf_counter() - t0)


def _one_prompt(prompts: list[str] | str) -> str:
    if isinstance(prompts, str):
        prompts = [prompts]
    prompts = [p for p in prompts if p and p.strip()]
    if not prompts:
        raise UserError("The prompt is empty. Type some text to analyse.")
    if len(prompts) > 1:
        raise UserError("One prompt at a time; to measure many texts use dataset mode "
                        "(analyze --dataset FILE).")
    return prompts[0]


def _predictions(loaded, trace: Trace, top_k: int):
    if loaded.task in ("fill-mask", "diffusion"):
        if not trace.logit_rows:
            trace.notices.append(f"No {loaded.mask_text or '[MASK]'} in the prompt: "
                                 "no mask prediction or attribution.")
            return None
        return pred_mod.fill_mask(loaded, trace.prompt, trace.token_ids, trace.logits, top_k,
                                  trace.logit_rows, trace.chat_template)
    if loaded.task == "causal":
        return pred_mod.next_token(loaded, trace.prompt, trace.logits, top_k, trace.chat_template)
    return None


def _attribution(loaded, trace: Trace, target: tuple[int, int], gradients: bool, ablation: bool
                 ) -> tuple[TokenAttribution, np.ndarray | None]:
    """Token attribution of the target and each head's support for it ([layer, head])."""
    pos, tid = target
    attribution = TokenAttribution(loaded.tokenizer.decode([tid]).strip(), tid, pos,
                                   attr_mod.rollout_row(trace.attentions, pos))
    support = None
    if gradients:
        g = trace.gradient  # from the capture's own pass when that fitted in memory
        if g is not None and (g["position"], g["target"]) == (pos, tid):
            gxi, support, logp = g["grad_x_input"], g["head"], g["log_prob"]
        else:
            gxi, support, logp = attr_mod.gradient_attribution(loaded, trace.token_ids, pos, tid)
        attribution.grad_x_input, attribution.log_prob = np.asarray(gxi), float(logp)
    if ablation:
        support = attr_mod.head_ablation(loaded, trace.token_ids, pos, tid)
    return attribution, support


def _head_metrics(loaded, trace: Trace, support: np.ndarray | None, method: str, seed: int
                  ) -> HeadMetrics:
    stats = trace.head_stats
    labels, projection = att_mod.cluster_features(att_mod.features_from_stats(stats), seed=seed)
    induction = induction_scores(loaded, seed)
    shape = stats["attention_entropy"].shape
    return HeadMetrics(
        attention_entropy=stats["attention_entropy"],
        previous_token_score=stats["previous_token_score"],
        first_token_score=stats["first_token_score"], self_score=stats["self_score"],
        mean_distance=stats["mean_distance"], induction_score=induction,
        cluster=np.asarray(labels, dtype=np.int64).reshape(shape),
        role=att_mod.head_roles(stats["previous_token_score"], stats["first_token_score"],
                                stats["self_score"], induction),
        projection=projection, attribution=support, attribution_method=method)


def model_info(loaded) -> ModelInfo:
    cfg = loaded.model.config
    return ModelInfo(name=loaded.name, source=loaded.entry.source, family=loaded.entry.family,
                     cls=type(loaded.model).__name__, n_layers=loaded.n_layers,
                     n_heads=loaded.n_heads, hidden_size=int(cfg.hidden_size),
                     params=loaded.params, revision=getattr(cfg, "_commit_hash", None),
                     device=loaded.device, dtype=loaded.dtype, attention=loaded.attention,
                     placement=loaded.placement, induction_probe=induction_probe(loaded)[1])


def continuation_of(loaded, result: ModelResult, max_new_tokens: int = 12, seed: int = 0
                    ) -> str | None:
    """The greedy continuation of exactly the analysed ids (a causal model's), else None: a
    generation the caller asks for after the analysis."""
    if loaded.task != "causal":
        return None
    return pred_mod.continuation(loaded, result.trace.prompt, max_new_tokens=max_new_tokens,
                                 seed=seed, ids=result.trace.token_ids)


def analyze(models: list[str], prompts: list[str] | str, load: Callable | None = None,
            progress: Callable[[float, str], None] | None = None, **kwargs) -> Analysis:
    """Analyse each model on the same prompt. `load(name)` returns a Loaded model."""
    from models.loading import load as default_load

    load = load or default_load
    if not models:
        raise UserError("Choose at least one model.")
    models = list(dict.fromkeys(models))
    prompt = _one_prompt(prompts)
    results = []
    for i, name in enumerate(models):
        if progress:
            progress(i / len(models), f"analysing {name}")
        results.append(analyze_model(load(name), prompt, **kwargs))
    if progress:
        progress(1.0, "done")
    return Analysis(prompts=[prompt], results=results, settings=dict(kwargs),
                    created=datetime.now(timezone.utc).isoformat(timespec="seconds"),
                    seed=kwargs.get("seed", 0))


def summary_json(analysis: Analysis, continuations: dict[str, str | None] | None = None) -> dict:
    """What `analyze --json` writes; `continuations`: model name -> continuation text."""
    continuations = continuations or {}
    out = {"prompts": analysis.prompts, "created": analysis.created, "settings": analysis.settings,
           "models": []}
    for r in analysis.results:
        ind, prev = r.heads.top("induction_score"), r.heads.top("previous_token_score")
        out["models"].append({
            **r.info.to_json(), "task": r.trace.task, "tokens": r.trace.tokens,
            "notices": r.trace.notices, "seconds": round(r.seconds, 3),
            "layer_metrics": r.layers.rows(), "head_metrics": r.heads.rows(),
            "predictions": (r.predictions.to_json(continuations.get(r.name))
                            if r.predictions else None),
            "continuation": continuations.get(r.name),
            "token_attribution": r.attribution.to_json() if r.attribution else None,
            "top_induction_head": dict(zip(("layer", "head", "induction_score"), ind,
                                           strict=True)),
            "top_previous_token_head": dict(zip(("layer", "head", "previous_token_score"), prev,
                                                strict=True)),
            "logit_lens": r.lens.to_json() if r.lens else None,
        })
    return out
