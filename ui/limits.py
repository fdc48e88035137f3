"""Limits that keep one user of a served dashboard from exhausting the machine.

Each limit is a field of `ui.app.AppConfig` with a sensible default and a `serve` flag:

    max_prompt_tokens      --max-prompt-tokens      longer prompts are truncated, with a notice
    max_generation_length  --max-generation-length  tokens one generation may ask for
    max_concurrent_jobs    --max-concurrent-jobs    events of one kind running at once (the
                                                    queue's default_concurrency_limit)

The Diffusion tab calls `check_generation_length`; it raises `UserError` (shown as a gr.Error) with
a message that says the limit and how to raise it. The command line itself is not limited:
whoever runs it owns the machine.
"""

from __future__ import annotations

import math
from typing import Any

from models.common import UserError, whole_number

DEFAULT_MAX_PROMPT_TOKENS = 512
DEFAULT_MAX_GENERATION_LENGTH = 256
DEFAULT_MAX_CONCURRENT_JOBS = 1  # a laptop CPU: one model run at a time, the rest wait in the queue
DEFAULT_SESSION_TTL_S = 7200.0  # a session's results are dropped this long after its last update

# Every event that runs a model shares this concurrency_id, so two of them never run at once
# on the same (shared, cached) model; see ui.overall_tab and the Diffusion tab.
MODEL_CONCURRENCY_ID = "model"


def check_limits(config) -> None:
    """Validate the limits of an AppConfig (at start-up, before anything is served)."""
    whole_number("max_prompt_tokens (--max-prompt-tokens)", config.max_prompt_tokens, 2)
    whole_number("max_generation_length (--max-generation-length)",
                 config.max_generation_length, 1)
    whole_number("max_concurrent_jobs (--max-concurrent-jobs)", config.max_concurrent_jobs, 1)
    whole_number("max_dataset_texts (--max-dataset-texts)",
                 getattr(config, "max_dataset_texts", 1), 1)
    ttl = config.session_ttl_s
    if ttl is not None and (isinstance(ttl, bool) or not isinstance(ttl, int | float)
                            or math.isnan(ttl) or ttl <= 0):
        raise UserError(f"session_ttl_s must be a positive number of seconds or None, got {ttl!r}.")


def check_generation_length(config, n: Any) -> int:
    """`n` (tokens to generate) as an int in 1..config.max_generation_length, else UserError."""
    limit = int(config.max_generation_length)
    n = whole_number("The generation length", n, 1)
    if n > limit:
        raise UserError(f"The generation length {n} is over this server's limit of {limit} tokens; "
                        "choose a shorter length (the limit is set with --max-generation-length).")
    return n
