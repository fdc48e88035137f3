"""What the page's forms are checked against: the models this app offers and the prompt's
size. Shared by the Overall tab, its dataset panel and the public API."""

from __future__ import annotations

from models.common import UserError

MAX_PROMPT_CHARS = 20_000


def chosen_models(ctx, models: list[str] | str | None, custom: str | None) -> list[str]:
    """The model names to analyse, checked against what this app offers."""
    if isinstance(models, str):
        models = [models]
    names = [m for m in (models or []) if m]
    typed = [m for m in names if m not in ctx.models]  # typed into the list, not chosen from it
    if typed and not ctx.config.allow_custom_models:
        raise UserError(f"Model '{typed[0]}' is not offered here. Choose from: "
                        f"{', '.join(ctx.models)}. Other models (a HuggingFace id or a local "
                        "folder) need the dashboard started with --allow-custom-models.")
    if typed:
        from models.registry import resolve

        names = [m if m in ctx.models else resolve(m, allow_custom=True).name for m in names]
    custom = (custom or "").strip()
    if custom:
        if not ctx.config.allow_custom_models:
            raise UserError("Custom models are disabled; start the dashboard with "
                            "--allow-custom-models to enable them.")
        from models.registry import resolve

        names.append(resolve(custom, allow_custom=True).name)
    names = list(dict.fromkeys(names))
    if not names:
        raise UserError("Choose at least one model.")
    limit = ctx.config.max_models_per_analysis
    if len(names) > limit:
        raise UserError(f"Choose at most {limit} models at a time (got {len(names)}).")
    return names


def check_prompt(prompt: str | None) -> str:
    prompt = prompt or ""
    if not prompt.strip():
        raise UserError("The prompt is empty. Type some text to analyse, or pick an example.")
    if len(prompt) > MAX_PROMPT_CHARS:
        raise UserError(f"The prompt has {len(prompt):,} characters; the limit is "
                        f"{MAX_PROMPT_CHARS:,}.")
    return prompt
