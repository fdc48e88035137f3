"""How the dashboard is served: `AppConfig`, one `serve` flag per field (dashboard.py makes
them). No Gradio import here, so the command line stays quick to start."""

from __future__ import annotations

from dataclasses import dataclass, field

from models.loading import DTYPES
from ui import limits as limits_mod


def _flag(help: str, **kw) -> dict:
    """Field metadata the command line reads to make a `serve` flag (dashboard.add_flags)."""
    return {"help": help, **kw}


@dataclass
class AppConfig:
    """How the dashboard is served; `python dashboard.py serve` makes one flag per field."""

    host: str = field(default="0.0.0.0", metadata=_flag("the address to listen on"))
    port: int = field(default=7860, metadata=_flag("the port to listen on"))
    share: bool = field(default=False, metadata=_flag("also open a public Gradio link"))
    auth: str | None = field(default=None, metadata=_flag("require a login", metavar="USER:PASS"))
    # None: the registry default (the available embedded models)
    models: list[str] | None = field(default=None, metadata=_flag(
        "the registry entries to offer, comma-separated", metavar="NAME,...", split=","))
    allow_custom_models: bool = field(default=False, metadata=_flag(
        "let the page load any HuggingFace id or local folder"))
    trust_remote_code: bool = field(default=False, metadata=_flag(
        "allow models that run their own code (e.g. LLaDA); never settable from the page"))
    max_prompt_tokens: int = field(default=limits_mod.DEFAULT_MAX_PROMPT_TOKENS, metadata=_flag(
        "longer prompts are fitted to this many tokens, with a notice"))
    allow_pickle: bool = field(default=False, metadata=_flag(
        "allow *.bin pickle weights (they can run code when loaded)",
        flag="--allow-pickle-weights"))
    max_models_per_analysis: int = field(default=4, metadata={"cli": False})
    max_dataset_texts: int = field(default=20_000, metadata=_flag(
        "the most texts one dataset run of the page may read"))
    max_generation_length: int = field(
        default=limits_mod.DEFAULT_MAX_GENERATION_LENGTH,
        metadata=_flag("the most tokens one generation may ask for"))
    max_concurrent_jobs: int = field(
        default=limits_mod.DEFAULT_MAX_CONCURRENT_JOBS,
        metadata=_flag("jobs of one kind run at once; the rest wait in the queue"))
    # results dropped this long after a session's last update
    session_ttl_s: float | None = field(default=limits_mod.DEFAULT_SESSION_TTL_S,
                                        metadata={"cli": False})
    device: str = field(default="auto", metadata=_flag(
        "auto picks cuda, then mps, then cpu; or cpu, cuda, cuda:N, mps"))
    dtype: str = field(default="auto", metadata=_flag(
        "the models' dtype (auto: bfloat16 on a CUDA device that has it, else float32)",
        choices=DTYPES))
