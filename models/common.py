"""What every layer shares: the user-error type, text checks, context limits, prompt encoding
and token display. Imports nothing from the project, so analysis/, reports/, ui/ and the
command line can all use it without import cycles.
"""

from __future__ import annotations

import contextlib
import math
import os
import tempfile
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import field
from pathlib import Path
from typing import Any

from models.errors import UserError

__all__ = ["UserError", "check_text", "context_limit", "encode_prompt", "fit_to_context",
           "prepare_input", "token_texts", "whole_number", "finite_number", "atomic_write",
           "file_safe"]


def check_text(text: str, what: str = "The prompt") -> str:
    """`text` unchanged when it is valid Unicode; UserError when it holds undecodable bytes
    (lone surrogates, e.g. invalid UTF-8 on the command line or \\udcxx in JSON)."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as exc:
        raise UserError(f"{what} is not valid UTF-8 text (undecodable data at character "
                        f"{exc.start}); retype it or paste it as plain text.") from None
    return text


def context_limit(model: Any) -> int | None:
    """The longest input (tokens) the model's position embeddings take, or None when its config
    does not say. RoBERTa-style models count positions from padding_idx + 1, so their
    max_position_embeddings (514) is 2 more than the tokens they take (512)."""
    cfg = model.config
    for key in ("max_position_embeddings", "n_positions", "max_sequence_length", "n_ctx"):
        v = getattr(cfg, key, None)
        if isinstance(v, int) and not isinstance(v, bool) and v > 0:
            model_type = str(getattr(cfg, "model_type", ""))
            if key == "max_position_embeddings" and model_type in ("roberta", "camembert",
                                                                   "xlm-roberta", "longformer"):
                pad = getattr(cfg, "pad_token_id", 1)
                v -= (pad if isinstance(pad, int) else 1) + 1
            return v
    return None


def encode_prompt(tokenizer: Any, prompt: str, chat_template: bool = False,
                  model_name: str = "this model") -> list[int]:
    """Token ids of `prompt` as the model expects them: its special tokens, or, when
    `chat_template`, the tokenizer's chat template around one user turn (with the generation
    prompt, so the next token is the assistant's answer). The same ids feed the prediction,
    every metric, the attribution, the logit lens and the continuation."""
    if chat_template:
        if not getattr(tokenizer, "chat_template", None):
            raise UserError(f"'{model_name}' has no chat template; analyse the prompt as it is "
                            "(untick the chat template).")
        ids = tokenizer.apply_chat_template([{"role": "user", "content": prompt}],
                                            add_generation_prompt=True, tokenize=True)
        if isinstance(ids, Mapping):
            ids = ids["input_ids"]
        if ids and isinstance(ids[0], (list, tuple)):
            ids = ids[0]
        ids = [int(i) for i in ids]
        # templates written for a tokenizer that adds BOS itself (Llama/Zephyr) do not carry it
        bos = getattr(tokenizer, "bos_token_id", None)
        adds_bos = bos is not None and tokenizer("x", add_special_tokens=True)["input_ids"][:1] == [bos]
        if adds_bos and (not ids or ids[0] != bos):
            ids = [bos] + ids
        return ids
    return [int(i) for i in tokenizer(prompt, add_special_tokens=True)["input_ids"]]


def fit_to_context(ids: Sequence[int], limit: int, keep: Sequence[int] = (), from_end: bool = False,
                   special_prefix: int = 0, special_suffix: int = 0, whose: str = "the model",
                   tokens: Sequence[str] | None = None) -> tuple[list[int], str | None]:
    """`ids` cut to at most `limit` tokens so that what the user asked about survives, and a
    notice saying exactly which tokens were analysed (None when nothing was cut).

    `keep`: positions that must stay (every [MASK]): the window is placed around them, as
    centred as the prompt allows; UserError when they span more than fits. `from_end`: keep the
    end (a causal model's next token is predicted after the last token). The first
    `special_prefix` and last `special_suffix` ids ([CLS]/<s>, [SEP]/</s>) always stay.
    `tokens`: readable token strings for the notice."""
    ids = list(ids)
    n = len(ids)
    if n <= limit:
        return ids, None
    head, tail = ids[:special_prefix], ids[n - special_suffix:] if special_suffix else []
    body = ids[special_prefix:n - special_suffix]
    room = limit - len(head) - len(tail)
    if room < 1:
        raise UserError(f"{whose} takes {limit} tokens: too few for this prompt.")
    keep = [p - special_prefix for p in keep if special_prefix <= p < n - special_suffix]
    if keep:
        span = max(keep) - min(keep) + 1
        if span > room:
            raise UserError(f"The prompt has {n} tokens and its masks span {span} of them, but "
                            f"{whose} takes {limit}; put the masks closer together or shorten "
                            "the prompt.")
        start = min(max(0, min(keep) - (room - span) // 2), len(body) - room)
    elif from_end:
        start = len(body) - room
    else:
        start = 0
    kept = body[start:start + room]
    first, last = special_prefix + start, special_prefix + start + room - 1
    what = ""
    if tokens is not None:
        what = f" (from “{tokens[first].strip()}” to “{tokens[last].strip()}”)"
    specials = " plus the special tokens at the start and end" if head or tail else ""
    dropped = ("the start" if start > 0 and start + room == len(body) else
               "the end" if start == 0 else "the start and the end")
    notice = (f"The prompt has {n} tokens but {whose} takes {limit}: tokens {first}..{last}"
              f"{what}{specials} were analysed ({dropped} dropped).")
    return head + kept + tail, notice


def prepare_input(loaded: Any, prompt: str, max_tokens: int | None = None,
                  chat_template: bool = False,
                  max_reason: str = "this server's limit (--max-prompt-tokens)"
                  ) -> tuple[list[int], list[str]]:
    """Token ids for a prompt (the model's special tokens, or its chat template when asked),
    fitted to the context with a notice that says which tokens were analysed.

    What the user asked about survives a cut: every [MASK] of a masked model (the window is
    placed around them; masks spanning more than the context are refused), the end of a causal
    model's prompt (its next token is predicted after the last token), the start otherwise."""
    if prompt is None or not str(prompt).strip():
        raise UserError("The prompt is empty. Type some text to analyse.")
    prompt = check_text(str(prompt))
    tok = loaded.tokenizer
    mask = getattr(loaded, "mask_text", getattr(tok, "mask_token", None))
    if mask and mask != "[MASK]":  # let users type [MASK] for RoBERTa's <mask>, LLaDA's <|mdm_mask|>
        prompt = prompt.replace("[MASK]", mask)
    notices = []
    if chat_template and not getattr(tok, "chat_template", None):
        chat_template = False
        notices.append(f"{loaded.name} has no chat template: the prompt was analysed as typed.")
    ids = encode_prompt(tok, prompt, chat_template, loaded.name)
    limit = context_limit(loaded.model) or 2048
    whose = f"{loaded.name}"
    if max_tokens is not None and max_tokens < limit:
        limit, whose = max_tokens, max_reason
    if len(ids) <= limit:
        return ids, notices
    special = set(tok.all_special_ids)
    mask_id = getattr(loaded, "mask_id", getattr(tok, "mask_token_id", None))
    keep = ([i for i, t in enumerate(ids) if t == mask_id]
            if loaded.task in ("fill-mask", "diffusion") and mask_id is not None else [])
    ids, notice = fit_to_context(
        ids, limit, keep=keep, from_end=loaded.task == "causal",
        special_prefix=int(ids[0] in special), special_suffix=int(ids[-1] in special),
        whose=whose, tokens=token_texts(tok, ids))
    return ids, notices + ([notice] if notice else [])


def token_texts(tokenizer: Any, ids: Sequence[int]) -> list[str]:
    """Token strings a person can read: byte-level 'Ġ' and sentencepiece '▁' shown as a space,
    'Ċ' as \\n; an id the tokenizer does not know as <id>."""
    out = []
    for i in ids:
        t = tokenizer.convert_ids_to_tokens(int(i))
        if t is None:
            t = f"<{int(i)}>"
        out.append(t.replace("Ġ", " ").replace("▁", " ").replace("Ċ", "\\n"))
    return out


def whole_number(name: str, value: Any, lo: int | None = None, hi: int | None = None) -> int:
    """`value` as an int in [lo, hi], or a UserError naming the setting; a bool is not a number,
    a float must be whole (7.0 is 7)."""
    if isinstance(value, bool):
        raise UserError(f"{name} must be a whole number, got {value!r}.")
    if isinstance(value, float):
        if not math.isfinite(value) or value != int(value):
            raise UserError(f"{name} must be a whole number, got {value!r}.")
        value = int(value)
    if not isinstance(value, int):
        raise UserError(f"{name} must be a whole number, got {value!r}.")
    if (lo is not None and value < lo) or (hi is not None and value > hi):
        rng = (f"between {lo} and {hi}" if lo is not None and hi is not None
               else f"at least {lo}" if lo is not None else f"at most {hi}")
        raise UserError(f"{name} must be {rng}, got {value}.")
    return value


def finite_number(name: str, value: Any) -> float:
    """`value` as a finite float, or a UserError naming the setting (a bool is not a number)."""
    if isinstance(value, bool):
        raise UserError(f"{name} must be a number, got {value!r}.")
    try:
        v = float(value)
    except (TypeError, ValueError):
        raise UserError(f"{name} must be a number, got {value!r}.") from None
    if not math.isfinite(v):
        raise UserError(f"{name} must be a finite number, got {value!r}.")
    return v


@contextlib.contextmanager
def atomic_file(path: str | os.PathLike, mode: int | None = None) -> Iterator[Any]:
    """Open a temporary file beside `path` for binary writing; on success it is renamed onto
    `path` (with permissions `mode`, e.g. 0o644 for a shared file: the temporary is private),
    on any error removed. A reader never sees half a file and a failure leaves nothing behind
    (an existing file at `path` stays as it was)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".part", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as fh:
            yield fh
        if mode is not None:
            os.chmod(tmp, mode)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def atomic_write(path: str | os.PathLike, data: bytes | str) -> Path:
    """Write `data` to `path` atomically (`atomic_file`)."""
    with atomic_file(path) as fh:
        fh.write(data.encode("utf-8") if isinstance(data, str) else data)
    return Path(path)


def file_safe(name: str) -> str:
    """A model name or id as a file-name part: letters, digits, '-', '_' and '.'; others '-'."""
    return "".join(c if c.isalnum() or c in "-_." else "-" for c in name) or "model"


def flag(help: str, **kw) -> dict:
    """Config field metadata that dashboard.add_flags turns into a command-line flag: help, and
    optionally flag (its name), choices, metavar, required, action ("append"), split (a
    separator); {"cli": False} instead keeps a field off the command line."""
    return {"help": help, **kw}


def opt(default=None, help: str = "", **kw):
    """A config field with `flag` metadata."""
    return field(default=default, metadata=flag(help, **kw))
