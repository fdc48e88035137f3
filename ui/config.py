"""What every command takes: `AppConfig` (how the dashboard is served) and one config per
headless subcommand; dashboard.py makes one flag per field (choices from the engine's own
lists). No Gradio import here, so the command line stays quick to start."""

from __future__ import annotations

from dataclasses import dataclass, field

from models.common import flag, opt
from models.generation import SAMPLINGS, SCHEDULES, STRATEGIES
from models.kv_cache import CACHE_MODES
from models.loading import DTYPES
from ui import limits as limits_mod


@dataclass
class AppConfig:
    """How the dashboard is served; `python dashboard.py serve` makes one flag per field."""

    host: str = field(default="0.0.0.0", metadata=flag("the address to listen on"))
    port: int = field(default=7860, metadata=flag("the port to listen on"))
    share: bool = field(default=False, metadata=flag("also open a public Gradio link"))
    auth: str | None = field(default=None, metadata=flag("require a login", metavar="USER:PASS"))
    # None: the registry default (the available embedded models)
    models: list[str] | None = field(default=None, metadata=flag(
        "the registry entries to offer, comma-separated", metavar="NAME,...", split=","))
    allow_custom_models: bool = field(default=False, metadata=flag(
        "let the page load any HuggingFace id or local folder"))
    trust_remote_code: bool = field(default=False, metadata=flag(
        "allow models that run their own code (e.g. LLaDA); never settable from the page"))
    max_prompt_tokens: int = field(default=limits_mod.DEFAULT_MAX_PROMPT_TOKENS, metadata=flag(
        "longer prompts are fitted to this many tokens, with a notice"))
    allow_pickle: bool = field(default=False, metadata=flag(
        "allow *.bin pickle weights (they can run code when loaded)",
        flag="--allow-pickle-weights"))
    max_models_per_analysis: int = field(default=4, metadata={"cli": False})
    max_dataset_texts: int = field(default=20_000, metadata=flag(
        "the most texts one dataset run of the page may read"))
    max_generation_length: int = field(
        default=limits_mod.DEFAULT_MAX_GENERATION_LENGTH,
        metadata=flag("the most tokens one generation may ask for"))
    max_concurrent_jobs: int = field(
        default=limits_mod.DEFAULT_MAX_CONCURRENT_JOBS,
        metadata=flag("jobs of one kind run at once; the rest wait in the queue"))
    # results dropped this long after a session's last update
    session_ttl_s: float | None = field(default=limits_mod.DEFAULT_SESSION_TTL_S,
                                        metadata={"cli": False})
    device: str = field(default="auto", metadata=flag(
        "auto picks cuda, then mps, then cpu; or cpu, cuda, cuda:N, mps"))
    dtype: str = field(default="auto", metadata=flag(
        "the models' dtype (auto: bfloat16 on a CUDA device that has it, else float32)",
        choices=DTYPES))


# ----------------------------------------------------------------------------- subcommands


@dataclass
class ModelsArgs:
    json: str | None = opt(help="write the list as JSON", metavar="PATH")


@dataclass
class AnalyzeArgs:
    model: list[str] = opt(help="registry name, HuggingFace id or folder (repeatable)",
                           required=True)
    prompt: str | None = opt(help="the text to analyse")
    chat_template: bool = opt(False, "put the prompt in the model's chat template (for "
                                     "everything analysed)")
    head_ablation: bool = opt(False, "per-head support by exact ablation instead of the "
                                     "gradient estimate")
    top_k: int = opt(5, "predictions listed")
    seed: int = opt(0, "seed of the induction probe and the head clustering")
    out: str | None = opt(help="write the ZIP bundle", metavar="ZIP")
    json: str | None = opt(help="write the summary JSON", metavar="PATH")
    # dataset mode: layer geometry over many texts instead of one prompt
    dataset: str | None = opt(help="dataset mode: a .txt/.jsonl/.json/.csv/.tsv file, a "
                                   "HuggingFace datasets id or folder, or a bundled set "
                                   "(corpus, stdlib-docstrings)", metavar="PATH_OR_ID")
    split: str | None = opt(help="the split of a datasets id or folder")
    column: str | None = opt(help="the text field of a .jsonl/.json/.csv/.tsv (default text)")
    limit: int | None = opt(help="analyse the first N texts")
    batch_size: int = opt(16, "texts per forward pass (padded)")
    max_tokens: int | None = opt(help="cut each text to its first T tokens (default: the "
                                      "model's context)")
    sample_tokens: int = opt(5000, "token rows sampled for TwoNN and the activation entropy")
    skip_special: bool = opt(False, "leave BOS/CLS/SEP rows out of the hidden-state statistics")
    resume: str | None = opt(help="checkpoint into DIR and continue a run stopped there",
                             metavar="DIR")


@dataclass
class PredictArgs:
    model: str = opt(help="registry name, HuggingFace id or folder", required=True)
    prompt: str = opt(help="the text ([MASK] for fill-mask models)", required=True)
    top_k: int = opt(5, "predictions listed")
    max_new_tokens: int = opt(12, "tokens of a causal model's continuation")
    temperature: float = opt(0.0, "0: greedy continuation")
    top_p: float = opt(1.0, "nucleus sampling of the continuation")
    seed: int = opt(0, "seed of a sampled continuation")
    chat_template: bool = opt(False, "put the prompt in the model's chat template")
    json: str | None = opt(help="write the result JSON", metavar="PATH")


@dataclass
class GenerateArgs:
    model: str = opt(help="a diffusion (masked or uniform-noise) or causal model",
                     required=True)
    prompt: str = opt(help="the text to continue", required=True)
    length: int = opt(help="canvas positions to generate (uniform-noise: rounded up to whole "
                           "blocks of the model's canvas)", required=True)
    steps: int | None = opt(help="diffusion steps (default: length; uniform-noise: the most "
                                 "per block, default the model's max_denoising_steps)")
    block_length: int | None = opt(help="semi-autoregressive blocks of this many positions")
    strategy: str = opt("low_confidence", "which masked positions are committed first",
                        choices=STRATEGIES)
    threshold: float | None = opt(help="commit every position at least this confident "
                                       "(adaptive steps)")
    temperature: float = opt(0.0, "0: greedy")
    top_k: int | None = opt(help="sample among the k most probable tokens")
    top_p: float | None = opt(help="nucleus sampling")
    cfg_scale: float = opt(0.0, "classifier-free guidance")
    schedule: str | None = opt(help="schedule re-masking mode (RoBERTa-as-diffusion) instead "
                                    "of commit mode", choices=SCHEDULES)
    sampling: str = opt("greedy", "sampling of the re-masking mode", choices=SAMPLINGS)
    ignore_eos: bool = opt(False, "autoregressive only: generate all `length` tokens past the "
                                  "end-of-sequence token")
    cache: str = opt("none", "diffusion only: Fast-dLLM's block KV cache (prefix or dual; needs "
                             "--block-length; approximate)",
                     choices=CACHE_MODES)
    early_stop: bool = opt(False, "diffusion only: end once the content is decided (an "
                                  "end-of-sequence token committed with nothing masked before)")
    seed: int = opt(0, "random seed")
    json: str | None = opt(help="write the result JSON", metavar="PATH")
    out: str | None = opt(help="trace JSON, step GIF, HTML viewer and PNG frames", metavar="ZIP")


@dataclass
class CompareArgs:
    ar: str = opt(help="the autoregressive model", required=True)
    diffusion: str = opt(help="the diffusion model", required=True)
    prompts: str = opt(help="one prompt a line, optionally TAB and the expected answer",
                       required=True, metavar="FILE")
    length: int = opt(4, "canvas positions per prompt")
    steps: int | None = opt(help="diffusion steps (default: length)")
    block_length: int | None = opt(help="semi-autoregressive blocks of this many positions")
    threshold: float | None = opt(help="commit every position at least this confident")
    temperature: float = opt(0.0, "0: greedy")
    cache: str = opt("none", "the diffusion side's block KV cache (prefix or dual; needs "
                             "--block-length)", choices=CACHE_MODES)
    early_stop: bool = opt(False, "the diffusion side ends once its content is decided")
    ar_length: int | None = opt(help="the autoregressive side's most tokens (default: length)")
    ar_temperature: float | None = opt(help="the autoregressive side's temperature (default: "
                                            "--temperature)")
    ar_top_p: float | None = opt(help="the autoregressive side's nucleus (default: all)")
    no_reference: bool = opt(False, "skip the uncached one-token-per-step reference runs (no "
                                    "agreement figures)")
    fluency_model: str | None = opt(help="quality: perplexity of every text under this causal "
                                         "model (e.g. tiny-gpt2)", metavar="NAME")
    relevance: bool = opt(False, "quality: cosine similarity of all-MiniLM-L6-v2 embeddings of "
                                 "prompt and text")
    seeds: int = opt(1, "seeds per prompt (consistency)")
    json: str | None = opt(help="write the comparison JSON", metavar="PATH")


@dataclass
class TrainDiffusionArgs:
    base: str = opt(help="the masked LM to start from", required=True)
    out: str = opt(help="the folder to write the model to", required=True)
    steps: int = opt(2000, "training steps")
    schedule: str = opt("continuous", "how the mask ratio t is drawn",
                        choices=("continuous", "linear", "cosine", "exponential"))
    grow_layers: int = opt(0, "depth up-scaling: insert copies of existing layers first")
    seed: int = opt(0, "random seed")
