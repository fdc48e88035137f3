"""The dashboard's stable programmatic API: named endpoints that return the command line's JSON.

    from gradio_client import Client
    c = Client("http://localhost:7860/")
    summary = c.predict(["tiny-gpt2"], "the capital of japan is", api_name="/analyze")
    c.predict("tiny-bert", "the capital of japan is [MASK].", api_name="/predict")
    c.predict("tiny-diffusion", "the capital of japan is", 16, api_name="/generate")

Each endpoint is stateless (nothing is kept in a browser session) and returns exactly what the
command line writes with `--json` (docs/reference.md). The page's own events are
"undocumented": callable, but not part of this API and free to change.
"""

from __future__ import annotations

import logging

import gradio as gr

from models.common import UserError
from ui import limits
from ui.state import friendly_errors

log = logging.getLogger(__name__)


def _offered(ctx, name: str) -> str:
    if name not in ctx.models:
        raise UserError(f"Model '{name}' is not offered here. Choose from: {', '.join(ctx.models)}.")
    return name


def _prompt(prompt: str) -> str:
    from ui.inputs import check_prompt

    return check_prompt(prompt)


def analyze_json(ctx, models: list[str], prompt: str, chat_template: bool = False,
                 head_ablation: bool = False, top_k: int = 5) -> dict:
    """`analyze --json` of one prompt, with each causal model's greedy continuation."""
    from analysis.run import analyze, continuation_of, summary_json
    from models.predictions import check_top_k

    if isinstance(models, str):
        models = [models]
    names = [_offered(ctx, m) for m in dict.fromkeys(models or [])]
    if not names:
        raise UserError("Choose at least one model.")
    if len(names) > ctx.config.max_models_per_analysis:
        raise UserError(f"Choose at most {ctx.config.max_models_per_analysis} models at a time.")
    check_top_k(top_k)
    analysis = analyze(names, [_prompt(prompt)], load=ctx.load, top_k=int(top_k),
                       max_tokens=ctx.config.max_prompt_tokens, chat_template=bool(chat_template),
                       ablation=bool(head_ablation))
    continuations = {r.name: continuation_of(ctx.load(r.name), r) for r in analysis.results}
    return summary_json(analysis, continuations)


def predict_json(ctx, model: str, prompt: str, top_k: int = 5, chat_template: bool = False,
                 max_new_tokens: int = 12) -> dict:
    """`predict --json`: the top-k (next token or every [MASK]) and the text."""
    from models.predictions import predict

    n = limits.check_generation_length(ctx.config, max_new_tokens)
    return predict(ctx.load(_offered(ctx, model)), _prompt(prompt), top_k=int(top_k),
                   max_new_tokens=n, chat_template=bool(chat_template))


def generate_json(ctx, model: str, prompt: str, length: int, steps: int | None = None,
                  block_length: int | None = None, strategy: str = "low_confidence",
                  threshold: float | None = None, temperature: float = 0.0, seed: int = 0) -> dict:
    """`generate --json`: a diffusion or autoregressive generation with its full trace."""
    from models import generation as gen

    length = limits.check_generation_length(ctx.config, length)
    loaded = ctx.load(_offered(ctx, model))
    prompt = _prompt(prompt)
    if loaded.task == "causal":
        if steps not in (None, length) or block_length or threshold is not None:
            raise UserError(f"'{model}' is autoregressive: steps, block_length and threshold "
                            "apply to diffusion models only.")
        result = gen.autoregressive_generate(loaded, prompt, length, temperature=temperature,
                                             seed=seed)
    else:
        result = gen.diffusion_generate(loaded, prompt, length, steps=steps,
                                        block_length=block_length, strategy=strategy,
                                        threshold=threshold, temperature=temperature, seed=seed)
    return result.to_json()


def dataset_json(ctx, models: list[str], dataset: str, limit: int = 300) -> dict:
    """`analyze --dataset --json` over a bundled dataset (never a path on the server)."""
    from analysis.dataset import analyze_dataset
    from analysis.datasets_builtin import NAMES
    from models.common import whole_number
    from reports.dataset_report import summary_json

    if dataset not in NAMES:
        raise UserError(f"Unknown dataset '{dataset}'; the API reads the bundled ones: "
                        f"{', '.join(NAMES)}.")
    if isinstance(models, str):
        models = [models]
    names = [_offered(ctx, m) for m in dict.fromkeys(models or [])]
    if not names:
        raise UserError("Choose at least one model.")
    limit = whole_number("limit", limit, 1, ctx.config.max_dataset_texts)
    return summary_json([analyze_dataset(ctx.load(n), dataset, limit=limit,
                                         max_tokens=ctx.config.max_prompt_tokens)
                         for n in names])


def build(ctx) -> None:
    """Register the named endpoints (inside the app's gr.Blocks). They share the page's model
    concurrency group: one model job at a time on this server's shared models."""
    kw = dict(concurrency_id=limits.MODEL_CONCURRENCY_ID, concurrency_limit=1)

    @friendly_errors
    def analyze(models: list[str], prompt: str, chat_template: bool = False,
                head_ablation: bool = False, top_k: int = 5) -> dict:
        """Layer and head metrics, predictions, attribution and logit lens of one prompt for
        one or more models, as `dashboard.py analyze --json` writes them."""
        return analyze_json(ctx, models, prompt, chat_template, head_ablation, top_k)

    @friendly_errors
    def predict(model: str, prompt: str, top_k: int = 5, chat_template: bool = False,
                max_new_tokens: int = 12) -> dict:
        """Top-k prediction (next token, or every [MASK]) and the continuation or the filled
        sentence, as `dashboard.py predict --json` writes them."""
        return predict_json(ctx, model, prompt, top_k, chat_template, max_new_tokens)

    @friendly_errors
    def generate(model: str, prompt: str, length: int, steps: int | None = None,
                 block_length: int | None = None, strategy: str = "low_confidence",
                 threshold: float | None = None, temperature: float = 0.0,
                 seed: int = 0) -> dict:
        """A masked-diffusion or autoregressive generation with every step, as
        `dashboard.py generate --json` writes it."""
        return generate_json(ctx, model, prompt, length, steps, block_length, strategy,
                             threshold, temperature, seed)

    @friendly_errors
    def analyze_dataset(models: list[str], dataset: str = "stdlib-docstrings",
                        limit: int = 300) -> dict:
        """Layer geometry of one or more models over a bundled dataset (corpus,
        stdlib-docstrings), as `dashboard.py analyze --dataset --json` writes it."""
        return dataset_json(ctx, models, dataset, limit)

    gr.api(analyze, api_name="analyze", **kw)
    gr.api(analyze_dataset, api_name="analyze_dataset", **kw)
    gr.api(predict, api_name="predict", **kw)
    gr.api(generate, api_name="generate", **kw)
