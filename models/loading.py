"""Loading models: offline-aware, eager-equivalent attention, eval mode, a device and a dtype,
safetensors only, kept in a bounded least-recently-used store.

A loaded model is shared by every request of the process. Its owner is the `Loaded` object:
everything that runs the model (capture, attribution, continuation, samplers, the stepper)
holds `loaded.lock` for the whole pass, and nothing changes the model per request: per-pass
instructions go through models.attention's per-call argument.
"""

from __future__ import annotations

import logging
import os
import threading
from collections import OrderedDict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from models.common import UserError, flag
from models.registry import Availability, ModelEntry, availability, resolve

log = logging.getLogger(__name__)

DEVICES = ("auto", "cpu", "cuda", "mps")  # plus cuda:N
DTYPES = ("auto", "float32", "bfloat16", "float16")


@dataclass
class Loaded:
    entry: ModelEntry
    model: Any  # a transformers PreTrainedModel in eval mode, weights frozen
    tokenizer: Any
    device: str = "cpu"
    dtype: str = "float32"
    attention: str = "eager"  # "dashboard" (models.attention) or the model's own "eager"
    placement: str = "one device"  # or "device_map=auto (accelerate)"
    # values computed once per loaded model and reused (analysis.run: the induction probe's
    # token pool and the induction scores per seed)
    memo: dict = field(default_factory=dict, repr=False, compare=False)
    # held by every use of the model for the whole pass: one owner at a time
    lock: Any = field(default_factory=threading.RLock, repr=False, compare=False)
    block_hook: Any = field(default=None, repr=False, compare=False)
    # "transformers": the model runs through transformers' registry (models.attention);
    # "llada": its own remote code, run through models.remote.run_llada
    adapter: str = "transformers"
    # the AttentionCall of the pass in progress, for code that cannot take it as an argument
    # (models.remote's recorders); set and cleared by `run` under `lock`
    active_call: Any = field(default=None, repr=False, compare=False)

    def run(self, call=None, **inputs):
        """One forward pass of the model with this pass's AttentionCall (models.attention):
        transformers models get it as their per-call `dashboard=` argument, remote-code models
        through their installed recorders. The caller holds `lock`."""
        if self.adapter == "llada":
            from models.remote import run_llada

            return run_llada(self, call, **inputs)
        if call is not None and self.attention == "dashboard":
            inputs["dashboard"] = call
        return self.model(**inputs)

    @property
    def mask_text(self) -> str | None:
        """The mask token as typed in a prompt: the tokenizer's, else the mask id's token."""
        text = getattr(self.tokenizer, "mask_token", None)
        if text is None and self.mask_id is not None:
            text = self.tokenizer.convert_ids_to_tokens(self.mask_id)
        return text

    @property
    def mask_id(self) -> int | None:
        """The mask token: the tokenizer's, else the config's (LLaDA), else None."""
        tok_id = getattr(self.tokenizer, "mask_token_id", None)
        if tok_id is None:
            tok_id = getattr(self.model.config, "mask_token_id", None)
        return None if tok_id is None else int(tok_id)

    @property
    def name(self) -> str:
        return self.entry.name

    @property
    def task(self) -> str:
        return self.entry.task

    @property
    def text_config(self):
        """The config that describes the language model (multimodal configs nest it)."""
        cfg = self.model.config
        getter = getattr(cfg, "get_text_config", None)
        return getter() if callable(getter) else cfg

    @property
    def n_layers(self) -> int:
        return int(self.text_config.num_hidden_layers)

    @property
    def n_heads(self) -> int:
        return int(self.text_config.num_attention_heads)

    @property
    def paradigm(self) -> str:
        """How a diffusion model writes: "masked" (a committed token never changes) or
        "uniform" (DiffusionGemma: uniform-noise block diffusion, tokens re-noised)."""
        return self.entry.extra.get("paradigm", "masked")

    @property
    def causal(self) -> bool:
        return self.entry.task == "causal"

    @property
    def params(self) -> int:
        return sum(p.numel() for p in self.model.parameters())

    @property
    def torch_device(self):
        import torch

        return next(self.model.parameters()).device if self.model is not None else torch.device(
            self.device)


@dataclass(frozen=True)
class LoadOptions:
    """How models are loaded; the command line makes one flag per field (dashboard.py)."""

    trust_remote_code: bool = field(default=False, metadata=flag(
        "allow models that run their own code (e.g. LLaDA); never settable from the page"))
    allow_pickle: bool = field(default=False, metadata=flag(
        "allow *.bin pickle weights (they can run code when loaded)",
        flag="--allow-pickle-weights"))
    allow_custom: bool = field(default=True, metadata={"cli": False})
    device: str = field(default="auto", metadata=flag(
        "auto picks cuda, then mps, then cpu; or cpu, cuda, cuda:N, mps"))
    dtype: str = field(default="auto", metadata=flag(
        "weights' dtype (auto: bfloat16 on a CUDA device that has it, else float32); metrics "
        "are always computed in float64", choices=DTYPES))
    revision: str | None = field(default=None, metadata=flag(
        "a hub model's branch, tag or commit", metavar="REV"))


_AUTO_BY_TASK = {
    "fill-mask": "AutoModelForMaskedLM",
    "diffusion": "AutoModelForMaskedLM",
    "causal": "AutoModelForCausalLM",
    "encoder": "AutoModel",
}


def resolve_device(device: str = "auto") -> str:
    """'auto' -> cuda, then mps, then cpu; a named device is checked to exist here."""
    import torch

    device = (device or "auto").strip().lower()
    if device == "auto":
        if torch.cuda.is_available():
            return "cuda"
        mps = getattr(torch.backends, "mps", None)
        return "mps" if mps is not None and mps.is_available() else "cpu"
    if device == "cpu":
        return "cpu"
    if device == "cuda" or device.startswith("cuda:"):
        if not torch.cuda.is_available():
            raise UserError(f"--device {device}: this machine has no CUDA device "
                            "(torch.cuda.is_available() is False); use --device cpu or auto.")
        if ":" in device:
            index = device.split(":", 1)[1]
            if not index.isdigit() or int(index) >= torch.cuda.device_count():
                raise UserError(f"--device {device}: there are {torch.cuda.device_count()} CUDA "
                                "devices (cuda:0 ..).")
        return device
    if device == "mps":
        mps = getattr(torch.backends, "mps", None)
        if mps is None or not mps.is_available():
            raise UserError("--device mps: Apple's MPS backend is not available on this machine.")
        return "mps"
    raise UserError(f"Unknown device '{device}'; choose auto, cpu, cuda, cuda:N or mps.")


def resolve_dtype(dtype: str, device: str) -> str:
    """'auto' -> bfloat16 on a CUDA device that supports it, float32 elsewhere; float16 is
    refused where the device cannot run it (the CPU)."""
    import torch

    dtype = (dtype or "auto").strip().lower()
    if dtype not in DTYPES:
        raise UserError(f"Unknown dtype '{dtype}'; choose one of {', '.join(DTYPES)}.")
    if dtype == "auto":
        if device.startswith("cuda") and torch.cuda.is_bf16_supported():
            return "bfloat16"
        return "float32"
    if dtype == "float16" and device == "cpu":
        raise UserError("--dtype float16 does not run on the CPU (many of its kernels are "
                        "missing there); use bfloat16 or float32.")
    if dtype == "bfloat16" and device.startswith("cuda") and not torch.cuda.is_bf16_supported():
        raise UserError(f"--dtype bfloat16: {device} does not support it; use float16 or float32.")
    return dtype


def check_options(options: LoadOptions) -> tuple[str, str]:
    """(device, dtype) the options resolve to here, or UserError with the reason."""
    device = resolve_device(options.device)
    return device, resolve_dtype(options.dtype, device)


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


def _available(entry: ModelEntry, options: LoadOptions) -> None:
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


def _from_pretrained(entry: ModelEntry, options: LoadOptions, device: str, dtype: str):
    import torch
    import transformers
    from transformers import AutoTokenizer

    from models import remote

    auto = getattr(transformers, "AutoModelForImageTextToText"
                   if entry.extra.get("paradigm") == "uniform" else _AUTO_BY_TASK[entry.task])
    common = dict(trust_remote_code=options.trust_remote_code)
    if options.revision and entry.family != "hub":
        raise UserError(f"--revision applies to hub models; '{entry.name}' is a local "
                        f"{'embedded model' if entry.family == 'embedded' else 'folder'} "
                        "with one version.")
    if options.revision:
        common["revision"] = options.revision
    kwargs = dict(attn_implementation="eager", use_safetensors=None if options.allow_pickle else True,
                  dtype=getattr(torch, dtype), **common)
    tokenizer = AutoTokenizer.from_pretrained(entry.source, **common)
    if entry.extra.get("adapter") == "llada":
        model = remote.load_llada(_local_folder(entry), getattr(torch, dtype), options.revision)
        model.to(device)
        return model, tokenizer, "one device"
    try:
        model = auto.from_pretrained(entry.source, **kwargs)
    except ValueError as exc:  # remote code that does not take attn_implementation
        if "attn_implementation" not in str(exc) and "attention" not in str(exc):
            raise
        kwargs.pop("attn_implementation")
        model = auto.from_pretrained(entry.source, **kwargs)
    placement = "one device"
    try:
        model.to(device)
    except (RuntimeError, torch.cuda.OutOfMemoryError) as exc:
        if not device.startswith("cuda") or "out of memory" not in str(exc).lower():
            raise
        del model
        torch.cuda.empty_cache()
        model = auto.from_pretrained(entry.source, device_map="auto", **kwargs)
        placement = "device_map=auto (accelerate): the model did not fit one device"
    return model, tokenizer, placement


def _local_folder(entry: ModelEntry) -> str:
    """The folder of a model's files: a local folder as it is, a hub id's cached snapshot."""
    if entry.family in ("embedded", "local"):
        return entry.source
    from models.registry import cached_config

    cfg = cached_config(entry.source)
    if cfg is None:
        from huggingface_hub import snapshot_download

        return snapshot_download(entry.source)
    return str(cfg.parent)


def load_uncached(entry: ModelEntry, options: LoadOptions = LoadOptions(),
                  shared: bool = True) -> Loaded:
    import transformers

    transformers.utils.logging.disable_progress_bar()
    transformers.utils.logging.set_verbosity_error()
    device, dtype = check_options(options)
    _available(entry, options)
    try:
        model, tokenizer, placement = _from_pretrained(entry, options, device, dtype)
    except UserError:
        raise
    except Exception as exc:  # transformers raises many types; the user needs one message
        msg = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        if options.revision and ("revision" in msg.lower() or "not a valid git" in msg.lower()):
            raise UserError(f"Model '{entry.name}' has no revision '{options.revision}': "
                            f"{msg[:200]}") from None
        raise UserError(f"Could not load model '{entry.name}': {msg[:300]}") from None
    if not shared:  # a private copy to train: eager attention, trainable, nothing installed
        return Loaded(entry, model, tokenizer, device=device, dtype=dtype, placement=placement)
    return prepare(entry, model, tokenizer, device=device, dtype=dtype, placement=placement)


def prepare(entry: ModelEntry, model: Any, tokenizer: Any, device: str = "cpu",
            dtype: str = "float32", placement: str = "one device") -> Loaded:
    """A model made ready to be shared, once, by its owner: eval mode, weights frozen (the
    attribution needs gradients with respect to inputs and head gates, never the weights': for
    TinyLlama-1.1B those would be 4.4 GB more), the dashboard attention installed when it gives
    eager's exact numbers, and the hook that records block L's output."""
    from models import attention as attention_mod

    model.eval()
    model.requires_grad_(False)
    loaded = Loaded(entry, model, tokenizer, device=device, dtype=dtype, placement=placement)
    if entry.extra.get("adapter") == "llada":
        from models.remote import install_llada

        loaded.adapter, loaded.attention = "llada", "llada"
        install_llada(loaded)
        return loaded
    if attention_mod.install(model):
        loaded.attention = attention_mod.NAME
    blocks = block_modules(model)
    if blocks:
        loaded.block_hook = attention_mod.install_block_hook(blocks[-1])
    return loaded


def block_modules(model) -> list:
    """The transformer blocks in layer order, from the model's own output-recording declaration
    (transformers 5: the class whose outputs are the hidden states), else the one ModuleList
    with num_hidden_layers entries; [] when neither is found."""
    import torch

    spec = (getattr(model, "_can_record_outputs", None) or {}).get("hidden_states")
    cls = getattr(spec, "target_class", spec)
    n_layers = getattr(model.config, "num_hidden_layers", None)
    if isinstance(cls, type):
        mods = [m for m in model.modules() if isinstance(m, cls)]
        if mods and (not n_layers or len(mods) == n_layers):
            return mods
    lists = [m for m in model.modules() if isinstance(m, torch.nn.ModuleList) and len(m) == n_layers]
    return list(lists[0]) if len(lists) == 1 else []


class ModelStore:
    """A bounded least-recently-used store of loaded models; thread-safe."""

    def __init__(self, max_models: int = 3):
        self.max_models = max_models
        self._items: OrderedDict[tuple, Loaded] = OrderedDict()
        self._lock = threading.RLock()

    def get(self, name: str, options: LoadOptions = LoadOptions()) -> Loaded:
        entry = resolve(name, allow_custom=options.allow_custom)
        device, dtype = check_options(options)
        key = (entry.name, entry.source, options.trust_remote_code, options.allow_pickle, device,
               dtype, options.revision)
        with self._lock:
            if key in self._items:
                self._items.move_to_end(key)
                return self._items[key]
            loaded = load_uncached(entry, options)  # a failure leaves the store untouched
            self._items[key] = loaded
            while len(self._items) > self.max_models:
                old_key = self._items.popitem(last=False)[0]  # no reference to the model kept:
                log.info("evicted %s from the model store", old_key[0])  # it is freed below
            settle_garbage()
            return loaded

    def names(self) -> list[str]:
        with self._lock:
            return [k[0] for k in self._items]

    def loaded(self) -> list[Loaded]:
        with self._lock:
            return list(self._items.values())

    def clear(self) -> None:
        with self._lock:
            self._items.clear()
            settle_garbage()


def settle_garbage() -> None:
    """Collect, then freeze what is left (gc.freeze): the long-lived objects of loaded models
    and the app (hundreds of thousands) are no longer scanned by later full collections, which
    otherwise stop the server for ~0.5 s at random moments. Unfrozen first, so an evicted
    model's reference cycles are collected too."""
    import gc

    gc.unfreeze()
    gc.collect()
    gc.freeze()


MODELS = ModelStore()


def load(name: str, options: LoadOptions = LoadOptions()) -> Loaded:
    return MODELS.get(name, options)


def require_task(loaded: Loaded, tasks: tuple[str, ...], what: str) -> None:
    if loaded.task not in tasks:
        raise UserError(f"'{loaded.name}' is a {loaded.task} model; {what} needs a "
                        f"{' or '.join(tasks)} model.")


# Below this many parameters a model runs fastest on one thread: its matrices are tiny, and on
# a busy machine every multi-threaded (OpenMP/BLAS) region waits for a second core to be
# scheduled (measured on the 2-core box under load: tiny-gpt2 analysis 5.1 s with two threads,
# 0.09 s with one; all-MiniLM-L6, 23 M parameters, 2.9 s -> 0.13 s).
SINGLE_THREAD_MAX_PARAMS = 50_000_000


def set_threads(largest_params: int | None) -> int:
    """Set torch's and BLAS's thread counts ONCE for the process (at start-up, from the largest
    model it will run) and tune the allocator (`keep_freed_memory`). torch: one thread when
    every model is small, else one per core. numpy's BLAS: always one thread: the analysis
    spreads its per-layer numpy work over the cores itself (analysis.parallel.map_layers),
    which is faster than one layer at a time on a multi-threaded BLAS (GPT-2 shape, 13 layers
    at 512 tokens: 0.43 s against 0.75 s on 2 cores). Returns torch's count. Nothing changes
    thread counts per request."""
    n = 1 if largest_params is not None and largest_params <= SINGLE_THREAD_MAX_PARAMS else (
        os.cpu_count() or 1)
    use_threads(n)
    return n


def use_threads(n: int) -> None:
    """`n` torch (and OpenMP) threads, numpy's BLAS on one, the allocator tuned: what
    `set_threads` applies, for a caller that picks `n` itself (the benches)."""
    import torch

    torch.set_num_threads(n)
    try:
        from threadpoolctl import threadpool_limits

        threadpool_limits(1, user_api="blas")  # numpy/scipy BLAS, process-wide and kept
        threadpool_limits(n, user_api="openmp")
    except ImportError:  # pragma: no cover - declared in requirements
        pass
    keep_freed_memory()


# glibc's mallopt parameters
_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD = -1, -3


def keep_freed_memory() -> bool:
    """glibc only: serve allocations of up to 32 MB (a layer's attention weights, a hidden
    state) from the heap and keep up to 1 GB of freed heap for reuse, instead of mapping fresh
    pages from the OS for each and returning them on free (fresh pages fault in on first touch).
    Measured on GPT-2's shape at 512 tokens, 2 cores, two processes each way: capture + layer
    metrics 1.21-1.25 s with it, 1.33-1.34 s without; the bare forward pass showed no clear
    difference. The cost: the process keeps freed memory (up to 1 GB) mapped. Once per
    process; False where it does not apply (not glibc)."""
    import ctypes
    import sys

    if not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL("libc.so.6")
        return bool(libc.mallopt(_M_MMAP_THRESHOLD, 32 * 2**20)
                    and libc.mallopt(_M_TRIM_THRESHOLD, 2**30))
    except (OSError, AttributeError):
        return False
