"""Details tab: the manual. Text lives in ui/details.md; facts about the embedded models are
read at run time from models/embedded/*/training.json, so the page never goes stale when they are
retrained."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import gradio as gr

log = logging.getLogger(__name__)

DETAILS_MD = Path(__file__).resolve().parent / "details.md"
PLACEHOLDER = "{{EMBEDDED_MODELS}}"
LATEX = [{"left": "$$", "right": "$$", "display": True},
         {"left": "$", "right": "$", "display": False}]


def embedded_facts(folder: Path | None = None) -> list[dict]:
    """The training.json of every embedded model (sorted by name); unreadable ones skipped."""
    if folder is None:
        from models.registry import EMBEDDED_DIR as folder
    facts = []
    for path in sorted(Path(folder).glob("*/training.json")):
        try:
            data = json.loads(path.read_text())
        except (OSError, ValueError) as exc:
            log.warning("cannot read %s: %s", path, exc)
            continue
        data.setdefault("name", path.parent.name)
        facts.append(data)
    return facts


def _num(v, fmt: str = "{:,}") -> str:
    if v is None:
        return "–"
    try:
        return fmt.format(v)
    except (ValueError, TypeError):
        return str(v)


def facts_markdown(facts: list[dict]) -> str:
    """A table of what each embedded model is and what it learned."""
    if not facts:
        return ("*No embedded model is present in `models/embedded/`; train them with "
                "`python -m models.training`.*")
    lines = ["| model | class | layers × heads, hidden size | parameters | vocabulary | training "
             "| final loss | capitals right |",
             "|---|---|---|---|---|---|---|---|"]
    notes = []
    for f in facts:
        cfg = f.get("train_config") or {}
        acc = f.get("capital_accuracy")
        how = "mask fill" if "Masked" in str(f.get("class", "")) else "greedy"
        lines.append(
            f"| `{f.get('name')}` | {f.get('class', '–')} | {_num(f.get('n_layers'))} × "
            f"{_num(f.get('n_heads'))}, d = {_num(f.get('hidden_size'))} | {_num(f.get('params'))} | "
            f"{_num(f.get('vocab_size'))} | {_num(cfg.get('steps'))} steps, "
            f"{_num(f.get('train_seconds'), '{:.0f} s')} | {_num(f.get('final_loss'), '{:.3f}')} | "
            f"{_num(acc, '{:.0%}')} ({how}) |")
        misses = f.get("capital_misses") or []
        if misses:
            notes.append(f"`{f.get('name')}` misses: " + ", ".join(str(m) for m in misses[:8])
                         + (" …" if len(misses) > 8 else ""))
        if f.get("base"):
            notes.append(f"`{f.get('name')}` was fine-tuned from `{f['base']}`.")
    text = ("Read at page load from `models/embedded/*/training.json` (written by the training "
            "recipe). *Capitals right* is the share of the corpus countries whose capital the "
            "model produces for `the capital of X is` (causal) or `the capital of X is [MASK].` "
            "(fill-mask)." + _threads_note(facts) + "\n\n" + "\n".join(lines))
    if notes:
        text += "\n\n" + "\n".join(f"- {n}" for n in notes)
    return text


def _threads_note(facts: list[dict]) -> str:
    threads = {(f.get("train_config") or {}).get("threads") for f in facts} - {None}
    if len(threads) == 1:
        n = threads.pop()
        return f" Training used {n} CPU thread{'s' if n != 1 else ''}."
    return ""


GENERATION_MD = Path(__file__).resolve().parent / "details_generation.md"


def details_markdown() -> str:
    text = DETAILS_MD.read_text(encoding="utf-8")
    generation = GENERATION_MD.read_text(encoding="utf-8") if GENERATION_MD.is_file() else ""
    return (text.replace(PLACEHOLDER, facts_markdown(embedded_facts()))
            .replace("{{GENERATION}}", generation))


def build(ctx) -> gr.Markdown:
    # a callable value is re-evaluated on every page load: the embedded models may have been
    # retrained since the app started
    return gr.Markdown(details_markdown, latex_delimiters=LATEX, elem_id="details")
