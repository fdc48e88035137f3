"""What the Diffusion tab shows, as HTML and tables: token boxes coloured by state and
confidence, step captions, result summaries that name their settings, the metrics and
comparison tables, and step mode's sequence, candidates and information. Plain data in
(GenerationResult, Stepper, compare results), strings and DataFrames out; no Gradio.
"""

from __future__ import annotations

import html

import pandas as pd

from models.common import UserError, whole_number
from models.trace import RESULT_METRICS, end_of, region_at

STRATEGY_CHOICES = [
    ("low_confidence (most confident first)", "low_confidence"),
    ("high_confidence (least confident first)", "high_confidence"),
    ("low_entropy (most certain first)", "low_entropy"),
    ("high_entropy (most uncertain first)", "high_entropy"),
    ("random", "random"),
]
CSS = """
.dtok{display:inline-block;margin:2px 2px;padding:3px 7px;border-radius:5px;white-space:pre;
font-family:ui-monospace,Menlo,Consolas,monospace;font-size:14px;line-height:1.35;color:#1e1e1e}
.dtok sub{font-size:9px;color:#666;margin-left:3px}
.dtok.masked{background:#dedede;color:#666;border:1px dashed #aaa}
.dtok.prompt{background:transparent;color:#555;padding:3px 2px}
.dtok.chosen{background:#fff6d6;border:2px solid #e0a800}
.dtok.after-end{opacity:.38;filter:grayscale(1)}
.dtok.eos{box-shadow:inset 0 0 0 1px #555}
.dlegend{font-size:12px;color:#555;margin:4px 0}
.dlegend span.sw{display:inline-block;width:12px;height:12px;border-radius:3px;margin:0 4px 0 10px;
vertical-align:middle}
.dcands{border-collapse:collapse;font-size:13px;width:100%}
.dcands td,.dcands th{border-bottom:1px solid #eee;padding:3px 6px;text-align:left;vertical-align:top}
.dcands td:nth-child(-n+4),.dcands th:nth-child(-n+4){width:1% !important;white-space:nowrap}
.dcands tr.later{opacity:.45}
.dchip{display:inline-block;margin:1px 2px;padding:1px 6px;border-radius:4px;white-space:pre;
font-family:ui-monospace,Menlo,Consolas,monospace;font-size:12px;border:1px solid #ccc}
.dchip.off{color:#999;text-decoration:line-through;border-style:dashed}
.dchip.cand{border:2px solid #333}
.dchip.sel{background:#ffe08a}
"""


def _esc(text: str) -> str:
    return html.escape(str(text), quote=True)


def _colour(state: str, confidence: float | None) -> str:
    """Green for new this step, blue for committed earlier; stronger = more confident."""
    c = 0.5 if confidence is None else min(max(float(confidence), 0.0), 1.0)
    light = 88 - 40 * c  # HSL lightness 88% (unsure) .. 48% (sure)
    hue = 120 if state == "new" else 215
    return f"hsl({hue},{55 + 15 * c:.0f}%,{light:.0f}%)"


def legend_html(extra: str = "") -> str:
    return ("<div class='dlegend'><span class='sw' style='background:#dedede;border:1px dashed "
            "#aaa'></span>masked / pending<span class='sw' style='background:hsl(120,70%,48%)'>"
            "</span>new this step<span class='sw' style='background:hsl(215,70%,48%)'></span>"
            "committed earlier &middot; darker = more confident (hover a token for its "
            "confidence)<span class='sw' style='background:hsl(215,15%,70%);opacity:.5'></span>"
            "greyed: the end-of-sequence token and what lies after it (canvas, not content)"
            f"{extra}</div>")


_END_CLASS = {None: "", "eos": " after-end eos", "after": " after-end"}
_END_TIP = {None: "", "eos": " (end of sequence: not content)",
            "after": " (after the end of sequence: not content)"}


def region_html(cells: list[dict], prompt_tokens: list[str] | None = None,
                elem_class: str = "dregion") -> str:
    """Token boxes for `models.interactive.region_at` cells (state + confidence as colour;
    the end-of-sequence token and every position after it greyed, still shown)."""
    parts = [legend_html(), f"<div class='{elem_class}'>"]
    for t in prompt_tokens or []:
        parts.append(f"<span class='dtok prompt'>{_esc(t)}</span>")
    for p, c in enumerate(cells):
        tip = f"position {p}"
        attrs = f"data-pos='{p}' data-token='{_esc(c['token'])}'"
        end_cls, end_tip = _END_CLASS[c.get("end")], _END_TIP[c.get("end")]
        if c.get("chosen") is not None:
            parts.append(f"<span class='dtok chosen' {attrs} data-chosen='{_esc(c['chosen'])}' "
                         f"title='{tip}: chosen, not applied yet'>{_esc(c['chosen'])}<sub>{p}</sub>"
                         "</span>")
            continue
        if c["state"] == "masked":
            parts.append(f"<span class='dtok masked{end_cls}' {attrs} title='{tip}: masked"
                         f"{end_tip}'>{_esc(c['token'])}<sub>{p}</sub></span>")
            continue
        conf = c.get("confidence")
        tip += (f", step {c.get('step')}" + ("" if conf is None else f", confidence {conf:.3f}")
                + end_tip)
        colour = _colour(c["state"], conf)
        ink = "#fff" if conf is not None and conf > 0.6 else "#1e1e1e"
        parts.append(f"<span class='dtok {c['state']}{end_cls}' {attrs} title='{_esc(tip)}' "
                     f"style='background:{colour};color:{ink}'>{_esc(c['token'])}<sub "
                     f"style='color:{ink}'>{p}</sub></span>")
    parts.append("</div>")
    return "".join(parts)


def step_caption(result, step: int) -> str:
    """One line about `step` of a recorded generation."""
    n = len(result.trace)
    if step <= 0:
        still = "pending" if result.paradigm == "autoregressive" else "masked"
        return f"Step 0 / {n}: every position {still}."
    rec = result.trace[min(step, n) - 1]
    made = ", ".join(f"#{c['position']} `{c['token'].strip() or repr(c['token'])}` "
                     f"({c['confidence']:.3f})" for c in rec.committed)
    text = f"Step {rec.step} / {n} (block {rec.block}): committed {made}."
    if rec.kv_cache == "refreshed":
        text += " KV cache refreshed (a full forward pass at the block boundary)."
    elif rec.kv_cache == "reused":
        text += " KV cache reused (only the window was computed)."
    if rec.end is not None:
        text += (f" The end-of-sequence token at #{rec.end} ends the content; greyed positions "
                 "are not counted.")
    if rec.note:
        text += f" **{rec.note[:1].upper() + rec.note[1:]}.**"
    return text


def memory_text(mb: float | None, note: str = "") -> str:
    if mb is None:
        return f"n/a ({note})" if note else "n/a"
    return f"{mb:.3f} MB" if mb < 10 else f"{mb:.1f} MB"


def result_summary(result, label: str = "") -> str:
    """What a result panel says: the settings it shows (``label``), then content tokens and
    canvas positions apart, forward passes, speed, the KV cache and an early stop."""
    extra = ("" if result.paradigm == "autoregressive" else
             f" · strategy {result.strategy} · block length {result.block_length}"
             + ("" if result.threshold is None else f" · threshold {result.threshold}"))
    if result.cache in ("prefix", "dual"):
        full, read = result.kv_refreshes, result.nfe - result.kv_refreshes
        extra += (f" · KV cache {result.cache}: {full} full pass{'es' * (full != 1)} rebuilt it, "
                  f"{read} pass{'es' * (read != 1)} read it (approximate: see Details)")
    if result.stop_note:
        extra += f" · {result.stop_note}"
    if result.agreement:
        a = result.agreement
        extra += (f" · {'same text as' if a['same_text'] else 'differs from'} the uncached "
                  f"one-token-per-step answer ({a['token_agreement']:.0%} of its tokens)")
    head = f"**Settings:** {_esc(label)}\n\n" if label else ""
    if result.paradigm == "autoregressive":
        stopped = (f" (stopped at end-of-sequence after writing {len(result.token_ids)})"
                   if len(result.token_ids) < result.positions else "")
        what = (f"{result.generated_tokens} content tokens of {result.positions} "
                f"positions{stopped}")
    else:
        what = f"{result.generated_tokens} content tokens of {result.positions} positions"
    return head + (f"**{result.model}** ({result.paradigm}) · {what}; {result.steps} steps, "
            f"{result.nfe} forward passes; {result.tokens_per_forward_pass:.2f} content tokens "
            f"per forward pass ({result.positions_per_forward_pass:.2f} positions) · "
            f"{result.seconds:.3f} s · {result.tokens_per_second:.1f} content tokens/s · "
            f"peak memory {memory_text(result.peak_memory_mb, result.peak_memory_note)}{extra}")


def view_of(result, step) -> tuple[str, str]:
    """(tokens HTML, caption) of one step of a recorded generation (the slider's value,
    clamped to the trace)."""
    step = len(result.trace) if step is None or step == "" else whole_number("step", step, 0)
    step = min(step, len(result.trace))
    return region_html(region_at(result, step)), step_caption(result, step)


def iframe(doc: str, height: int = 400) -> str:
    return (f"<iframe title='step viewer' sandbox='allow-scripts' srcdoc=\"{_esc(doc)}\" "
            f"style='width:100%;height:{height}px;border:1px solid #ddd;border-radius:6px'></iframe>")


def metrics_table(results: list) -> pd.DataFrame:
    """One row per metric, one column per generation (rounded for reading)."""
    rows = []
    for label, attr, scale, fmt in RESULT_METRICS:
        row = {"metric": label}
        for r in results:
            v = getattr(r, attr)
            row[f"{r.paradigm} ({r.model})"] = None if v is None else float(fmt.format(v * scale))
        rows.append(row)
    return pd.DataFrame(rows)


SUMMARY_COLUMNS = ["paradigm", "model", "accuracy", "scored", "mean content tokens",
                   "mean forward passes", "content tokens per forward pass", "mean seconds",
                   "content tokens / s", "peak memory (MB)", "same answer as uncached",
                   "fluency (perplexity)", "relevance"]


def _round(v, digits: int):
    return None if v is None else round(v, digits)


def compare_tables(result: dict) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(summary per paradigm, one row per prompt and seed) of a `compare` result."""
    rows = []
    for paradigm in ("diffusion", "autoregressive"):
        s = result[paradigm]
        rows.append({"paradigm": paradigm, "model": s["model"],
                     "accuracy": None if s["accuracy"] is None else round(s["accuracy"], 4),
                     "scored": s["n_scored"],
                     "mean content tokens": round(s["mean_generated_tokens"], 2),
                     "mean forward passes": round(s["mean_nfe"], 2),
                     "content tokens per forward pass": round(s["tokens_per_forward_pass"], 3),
                     "mean seconds": round(s["mean_seconds"], 5),
                     "content tokens / s": round(s["tokens_per_second"], 1),
                     "peak memory (MB)": _round(s["peak_memory_mb"], 3),
                     "same answer as uncached": _round(s.get("agreement"), 4),
                     "fluency (perplexity)": _round(s.get("fluency_perplexity"), 2),
                     "relevance": _round(s.get("relevance"), 3)})
    runs = []
    for r in result["runs"]:
        d, a = r["diffusion"], r["autoregressive"]
        agreed = d.get("agreement")
        runs.append({"prompt": r["prompt"], "expected": r["expected"], "seed": r["seed"],
                     "diffusion": d["text"], "diffusion correct": d["correct"],
                     "uncached 1-per-step answer": agreed["reference_text"] if agreed else None,
                     "same as uncached": agreed["same_text"] if agreed else None,
                     "autoregressive": a["text"], "autoregressive correct": a["correct"]})
    return pd.DataFrame(rows, columns=SUMMARY_COLUMNS), pd.DataFrame(runs)


def compare_note(result: dict, label: str) -> str:
    """What a comparison shows and how it counts (the table's caption)."""
    s = result["settings"]
    quality = [q for q, m in (("fluency under " + str(s.get("fluency_model")),
                               s.get("fluency_model")),
                              ("relevance (all-MiniLM-L6-v2)", s.get("relevance_model"))) if m]
    return (f"**Settings:** {_esc(label)}\n\n{result.get('source', '')}, a canvas of "
            f"{s['length']} positions, seed {s['seeds'][0]}; a run is correct when its "
            "generated text contains the expected answer (case-insensitive). Content tokens "
            "are the generated tokens before the first end-of-sequence/padding token; tokens/s "
            "counts only those. The autoregressive model stops at its end-of-sequence token. "
            "*Same answer as uncached*: the share of diffusion runs whose text equals the "
            "uncached one-token-per-step run's (same model and settings, no cache, no "
            "threshold): what the speed-up costs. "
            + (f"Quality: {', '.join(quality)} (see Details). " if quality else "")
            + f"Both paradigms alternate which runs first; took {result.get('seconds', 0):.1f} "
            "s in all.")


def choice_value(position: int, token_id: int) -> str:
    return f"{position}:{token_id}"


def parse_choices(values) -> dict[int, int]:
    """Dropdown values 'position:token_id' -> {position: token_id}; one token per position."""
    out: dict[int, int] = {}
    for v in values or []:
        try:
            p, t = (int(x) for x in str(v).split(":", 1))
        except ValueError:
            raise UserError(f"Cannot read the choice {v!r}; pick from the list.") from None
        if p in out and out[p] != t:
            raise UserError(f"Two tokens are chosen for position {p}; keep one.")
        out[p] = t
    return out


def step_choices(stepper) -> list[tuple[str, str]]:
    """(label, value) for every selectable shown candidate of every eligible position, plus the
    selected tokens (which the shown top-k may not include)."""
    out: list[tuple[str, str]] = []
    seen = set()
    for v in stepper.view or []:
        if not v.eligible:
            continue
        for t in v.top:
            if t["selectable"]:
                out.append((f"{v.position}: {t['token']} ({t['probability']:.1%})",
                            choice_value(v.position, t["token_id"])))
                seen.add((v.position, t["token_id"]))
    for p, tid in sorted(stepper.selection.items()):
        if (p, tid) not in seen:
            out.append((f"{p}: {stepper.token_text(tid)} ({stepper.probability(p, tid):.1%})",
                        choice_value(p, tid)))
    return out


def _prob(p: float) -> str:
    return f"{p:.3f}" if p >= 0.001 else f"{p:.0e}"


def candidates_html(stepper) -> str:
    if stepper.done:
        return "<p>Every position is committed. Rewind to explore another path.</p>"
    if stepper.view is None:
        return ("<p>No forward pass for this step yet: press <b>Forward pass</b> to see each "
                "masked position's candidates.</p>")
    s = stepper.settings
    head = ("<table class='dcands'><tr><th>pos</th><th>candidate</th><th>confidence</th>"
            "<th>entropy</th><th>top tokens (probability at this temperature; struck through: "
            "outside the selectable top-k / top-p; boxed: the candidate; yellow: chosen)</th></tr>")
    rows = [head]
    for v in stepper.view:
        chosen = stepper.selection.get(v.position)
        chips = []
        for t in v.top:
            cls = "dchip" + ("" if t["selectable"] else " off")
            cls += " cand" if t["token_id"] == v.candidate_id else ""
            cls += " sel" if t["token_id"] == chosen else ""
            chips.append(f"<span class='{cls}'>{_esc(t['token'])} {_prob(t['probability'])}</span>")
        later = "" if v.eligible else " class='later' title='a later block'"
        rows.append(f"<tr{later}><td>{v.position}</td><td><b>{_esc(v.candidate)}</b></td>"
                    f"<td>{v.confidence:.3f}</td><td>{v.entropy:.3f}</td><td>{''.join(chips)}</td></tr>")
    rows.append("</table>")
    note = (f"<div class='dlegend'>temperature {s.temperature:g} · Gumbel noise {s.gumbel:g} · "
            f"selectable top-k {s.top_k or 'all'} · top-p {s.top_p or 1:g} · shown top-k {s.show_k}"
            "</div>")
    return note + "".join(rows)


def sequence_html(stepper) -> str:
    """Prompt (grey text) and the region: committed (colour = confidence), chosen, masked."""
    last = {c["position"] for c in stepper.records[-1].committed} if stepper.records else set()
    conf, when = {}, {}
    for rec in stepper.records:
        for c in rec.committed:
            conf[c["position"]], when[c["position"]] = c["confidence"], rec.step
    end = stepper.end
    cells = []
    for p, tok in enumerate(stepper.tokens()):
        if p in stepper.selection:
            cells.append({"token": tok, "state": "masked",
                          "chosen": stepper.token_text(stepper.selection[p])})
        elif p in conf:
            cells.append({"token": tok, "state": "new" if p in last else "old",
                          "confidence": conf[p], "step": when[p], "end": end_of(end, p)})
        else:
            cells.append({"token": tok, "state": "masked", "confidence": None,
                          "end": end_of(end, p)})
    return region_html(cells, stepper.prompt_tokens())


def step_info(stepper, note: str = "", label: str = "") -> str:
    """Where step mode stands: the settings, the step, block, masks, content and passes."""
    def ms(v):
        return "–" if v is None else f"{v * 1000:.1f} ms"

    block = stepper.block
    where = ("done" if block is None else "one block" if stepper.n_blocks == 1
             else f"block {block} (blocks 0..{stepper.n_blocks - 1}, filled left to right)")
    content = stepper.generated_tokens
    per_pass = f"{content / stepper.n_forward:.2f}" if stepper.n_forward else "–"
    text = (f"**Step {stepper.step}** · {where} · {len(stepper.masked)} of {stepper.length} "
            f"masked · {len(stepper.selection)} chosen · {content} content tokens of "
            f"{stepper.length} positions · {stepper.n_forward} forward passes · {per_pass} "
            f"content tokens per forward pass · last forward pass {ms(stepper.forward_seconds)}, "
            f"last reprocess {ms(stepper.process_seconds)} (server side)")
    if stepper.cache != "none":
        event = {"refreshed": "this step's forward pass **refreshed** the KV cache (a full "
                              "pass at the block boundary)",
                 "reused": "this step's forward pass **reused** the KV cache (only the window "
                           "was computed)"}.get(stepper.kv_event, "no forward pass yet")
        text += f" · KV cache {stepper.cache}: {event}"
    if label:
        text = f"**Settings:** {_esc(label)}\n\n" + text
    if stepper.text():
        text += f"\n\n**Text so far:** {_esc(stepper.text())}"
    return text + (f"\n\n{note}" if note else "")




