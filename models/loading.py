"""Loading models offline-aware, always eager attention, always in eval mode, with an LRU cache."""

from __future__ import annotations

import logging
import threading
from collections import OrderedDict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from models.errors import UserError
from models.registry import Availability, ModelEntry, availability, resolve

log = logging.getLogger(__name__)


@dataclass
class Loaded:
    entry: ModelEntry
    model: Any  # a transformers PreTrainedModel in eval mode
    tokenizer: Any
    # what is computed once per loaded model and reused (analysis.run: the induction probe's
    # token pool, a scan of the whole vocabulary, and the induction scores per seed)
    derived: dict = field(default_factory=dict, repr=False, compare=False)

    @property
    def name(self) -> str:
        return self.entry.name

    @property
    def task(self) -> str:
        return self.entry.task

    @property
    def n_layers(self) -> int:
        return int(self.model.config.num_hidden_layers)

    @property
    def n_heads(self) -> int:
        return int(self.model.config.num_attention_heads)

    @property
    def causal(self) -> bool:
        return self.entry.task == "causal"

    @property
    def params(self) -> int:
        return sum(p.numel() for p in self.model.parameters())


@dataclass(frozen=True)
class LoadOptions:
    trust_remote_code: bool = False  # only ever from the --trust-remote-code flag
    allow_pickle: bool = False  # only ever from the --allow-pickle-weights flag
    allow_custom: bool = True


_AUTO_BY_TASK = {
    "fill-mask": "AutoModelForMaskedLM",
    "diffusion": "AutoModelForMaskedLM",
    "causal": "AutoModelForCausalLM",
    "encoder": "AutoModel",
}


def _check_weights(folder: Path, allow_pickle: bool) -> bool:
    """True when the folder has only pickle weights (allowed by the flag); UserError if refused."""
    safes = list(folder.glob("*.safetensors"))
    pickles = [p for p in folder.glob("*.bin")] + list(folder.glob("*.pt")) + list(folder.glob("*.pth"))
    if not safes and pickles and not allow_pickle:
        raise UserError(f"'{folder}' has only pickle weights ({pickles[0].name}); they can run code "
                        "when loaded. Convert them to safetensors, or pass --allow-pickle-weights "
                        "on the command line if you trust the files.")
    if not safes and not pickles:
        raise UserError(f"'{folder}' has no weights file (*.safetensors).")
    if not safes:
        log.warning("loading pickle weights %s (--allow-pickle-weights): unpickling can run code",
                    pickles[0])
    return not safes


def load_uncached(entry: ModelEntry, options: LoadOptions = LoadOptions()) -> Loaded:
    import transformers
    from transformers import AutoTokenizer

    transformers.utils.logging.disable_progress_bar()
    transformers.utils.logging.set_verbosity_error()

    if entry.needs_remote_code and not options.trust_remote_code:
        raise UserError(f"'{entry.name}' runs its own model code; start the dashboard with "
                        "--trust-remote-code to allow it.")
    pickled = False  # the weights are checked first: their message says what to do
    if entry.family in ("embedded", "local"):
        pickled = _check_weights(Path(entry.source), options.allow_pickle)
    av = availability(entry)
    if not av.available and pickled and (Path(entry.source) / "config.json").is_file():
        av = Availability(True, "pickle weights, allowed by --allow-pickle-weights")
    if not av.available and entry.family == "hub" and entry.extra.get("guessed"):
        raise UserError(f"Unknown model '{entry.name}': not a registry name, not a local folder, "
                        f"and not a HuggingFace id that can be reached ({av.reason}). "
                        "Run `python dashboard.py models` to see what is available.")
    if not av.available:
        raise UserError(f"Model '{entry.name}' is not available: {av.reason}. "
                        "The embedded models (tiny-bert, tiny-gpt2, tiny-llama, tiny-diffusion) "
                        "always are.")
    auto = getattr(transformers, _AUTO_BY_TASK[entry.task])
    kwargs = dict(attn_implementation="eager", use_safetensors=None if options.allow_pickle else True,
                  trust_remote_code=options.trust_remote_code)
    try:
        tokenizer = AutoTokenizer.from_pretrained(entry.source,
                                                  trust_remote_code=options.trust_remote_code)
        model = auto.from_pretrained(entry.source, **kwargs)
    except UserError:
        raise
    except Exception as exc:  # transformers raises many types; the user needs one message
        msg = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise UserError(f"Could not load model '{entry.name}': {msg[:300]}") from None
    model.eval()
    return Loaded(entry, model, tokenizer)


class ModelCache:
    """A bounded least-recently-used cache of loaded models; thread-safe."""

    def __init__(self, max_models: int = 3):
        self.max_models = max_models
        self._items: OrderedDict[tuple, Loaded] = OrderedDict()
        self._lock = threading.RLock()

    def get(self, name: str, options: LoadOptions = LoadOptions()) -> Loaded:
        entry = resolve(name, allow_custom=options.allow_custom)
        key = (entry.name, entry.source, options.trust_remote_code, options.allow_pickle)
        with self._lock:
            if key in self._items:
                self._items.move_to_end(key)
                return self._items[key]
            loaded = load_uncached(entry, options)  # a failure leaves the cache untouched
            # shared, inference only: attribution needs gradients with respect to inputs and
            # head gates, never the weights' (for TinyLlama-1.1B those would be 4.4 GB more,
            # and one more matrix product per layer in every backward pass)
            loaded.model.requires_grad_(False)
            self._items[key] = loaded
            while len(self._items) > self.max_models:
                old_key = self._items.popitem(last=False)[0]  # no reference to the model kept:
                log.info("evicted %s from the model cache", old_key[0])  # it is freed below
            settle_garbage()
            return loaded

    def names(self) -> list[str]:
        with self._lock:
            return [k[0] for k in self._items]

    def clear(self) -> None:
        with self._lock:
            self._items.clear()
            settle_garbage()


def settle_garbage() -> None:
    """Collect, then freeze what is left (gc.freeze): the long-lived objects of loaded models
    and the app (hundreds of thousands) are no longer scanned by later full collections, which
    otherwise stop the server for ~0.5 s at random moments, e.g. in the middle of a layer
    switch. Unfrozen first, so an evicted model's reference cycles are collected too."""
    import gc

    gc.unfreeze()
    gc.collect()
    gc.freeze()


CACHE = ModelCache()


def load(name: str, options: LoadOptions = LoadOptions()) -> Loaded:
    return CACHE.get(name, options)


def require_task(loaded: Loaded, tasks: tuple[str, ...], what: str) -> None:
    if loaded.task not in tasks:
        raise UserError(f"'{loaded.name}' is a {loaded.task} model; {what} needs a "
                        f"{' or '.join(tasks)} model.")
