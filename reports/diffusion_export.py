"""Step-by-step exports of one generation: an animated GIF, a self-contained HTML viewer, a ZIP.

They take a ``models.generation.GenerationResult`` and nothing else (presentation takes plain
data). Colours are the same everywhere: grey = still masked (or, autoregressive, not generated
yet), green = committed in this step, blue = committed earlier; the end-of-sequence token and
every position after it (canvas the model filled, not content) are drawn faded but shown. An
autoregressive run shows the positions it wrote (it stops at its end-of-sequence token).
"""

from __future__ import annotations

import io
import json
import os
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from models.common import atomic_write
from models.trace import region_at, shown_positions

GREY = (205, 205, 205)
GREEN = (120, 200, 120)
BLUE = (150, 185, 240)
INK = (30, 30, 30)
FADED_INK = (140, 140, 140)
BACKGROUND = (255, 255, 255)
MAX_FRAMES = 150  # longer traces are subsampled evenly (first and last frame always kept)
MAX_TOKEN_CHARS = 14


@dataclass
class Frame:
    """One picture of a run: the region after ``step`` steps (0 = all masked)."""

    step: int
    tokens: list[str]
    new: set[int]  # positions committed since the previous frame
    end: int | None  # the first end-of-sequence position, or None
    note: str = ""  # what happened in the step (KV cache refreshed, early stop)
    # a uniform-noise run (DiffusionGemma): the positions whose token is accepted or final;
    # the others hold the model's current draft, drawn like a masked position (None: masked run)
    settled: set[int] | None = None


def _step_note(r: Any) -> str:
    parts = []
    if getattr(r, "kv_cache", None) == "refreshed":
        parts.append("KV cache refreshed (full pass)")
    elif getattr(r, "kv_cache", None) == "reused":
        parts.append("KV cache reused")
    if getattr(r, "note", ""):
        parts.append(r.note)
    return "; ".join(parts)


def all_frames(result: Any) -> list[Frame]:
    """Every step's frame, after the all-masked start."""
    n = shown_positions(result)
    frames = [Frame(0, [result.mask_token] * n, set(), None)]
    uniform = getattr(result, "noise", None) == "uniform"
    for r in result.trace:
        frames.append(Frame(r.step, list(r.tokens)[:n], {c["position"] for c in r.committed},
                            getattr(r, "end", None), _step_note(r),
                            settled_positions(result, r.step) if uniform else None))
    return frames


def settled_positions(result: Any, step: int) -> set[int]:
    """A uniform-noise run after ``step`` steps: the positions accepted in it or final (a
    finished block), as the run view shows them (models.trace.region_at)."""
    return {p for p, cell in enumerate(region_at(result, step)) if cell["state"] != "masked"}


def _subsampled(frames: list[Frame]) -> list[Frame]:
    """At most MAX_FRAMES frames, evenly (first and last kept; the new positions of dropped
    frames carried to the next kept one)."""
    if len(frames) <= MAX_FRAMES:
        return frames
    keep = sorted({round(i * (len(frames) - 1) / (MAX_FRAMES - 1)) for i in range(MAX_FRAMES)})
    out, pending = [], set()
    for i, f in enumerate(frames):
        pending |= f.new
        if i in keep:
            out.append(Frame(f.step, f.tokens, pending, f.end, f.note, f.settled))
            pending = set()
    return out


def _faded(colour: tuple[int, int, int]) -> tuple[int, int, int]:
    """A colour washed out towards light grey (positions after the end of sequence)."""
    grey = sum(colour) / 3
    return tuple(int(0.35 * (0.5 * c + 0.5 * grey) + 0.65 * 238) for c in colour)


def _font(size: int):
    from PIL import ImageFont

    try:
        return ImageFont.load_default(size=size)
    except TypeError:  # Pillow < 10.1: fixed-size bitmap font
        return ImageFont.load_default()


def _short(text: str) -> str:
    text = text.replace("\n", "\\n")
    return text if len(text) <= MAX_TOKEN_CHARS else text[:MAX_TOKEN_CHARS - 1] + "…"


PAD, BOX_H, GAP, HEAD = 16, 28, 6, 62  # pixels: margin, token box height, gap, panel header


class Panel:
    """One run drawn as a strip of token boxes: fixed boxes, wide enough for every text they
    show in any frame, so nothing jumps around."""

    def __init__(self, result: Any, frames: list[Frame], width: int):
        from PIL import Image, ImageDraw

        self.result, self.width = result, width
        self.font, self.small = _font(15), _font(13)
        probe = ImageDraw.Draw(Image.new("RGB", (1, 1)))
        n = len(frames[0].tokens)
        widths = [max(28, int(max(probe.textlength(_short(f.tokens[p]), font=self.font)
                                  for f in frames)) + 12) for p in range(n)]
        self.boxes, x, y = [], PAD, HEAD
        for w in widths:
            w = min(w, width - 2 * PAD)
            if x + w > width - PAD and x > PAD:
                x, y = PAD, y + BOX_H + GAP
            self.boxes.append((x, y, x + w, y + BOX_H))
            x += w + GAP
        self.height = y + BOX_H + 14 + 16  # and a line for the step's note

    def draw(self, draw: Any, y0: int, frame: Frame, header: str) -> None:
        r = self.result
        total = len(r.trace)
        draw.text((PAD, y0 + 8), header[:120], fill=INK, font=self.small)
        draw.text((PAD, y0 + 30), f"step {frame.step}/{total}", fill=INK, font=self.font)
        bar_x0, bar_x1 = PAD + 130, self.width - PAD
        draw.rectangle([bar_x0, y0 + 34, bar_x1, y0 + 46], outline=(160, 160, 160))
        if total:
            draw.rectangle([bar_x0, y0 + 34, bar_x0 + (bar_x1 - bar_x0) * frame.step // total,
                            y0 + 46], fill=(100, 170, 230))
        for p, (tok, box) in enumerate(zip(frame.tokens, self.boxes, strict=True)):
            if frame.settled is not None:  # uniform noise: a draft is not committed
                colour = GREEN if p in frame.new else BLUE if p in frame.settled else GREY
            else:
                colour = GREY if tok == r.mask_token else GREEN if p in frame.new else BLUE
            past = frame.end is not None and p >= frame.end
            box = (box[0], box[1] + y0, box[2], box[3] + y0)
            draw.rounded_rectangle(box, radius=5, fill=_faded(colour) if past else colour)
            draw.text((box[0] + 6, box[1] + 6), _short(tok), fill=FADED_INK if past else INK,
                      font=self.font)
        if frame.note:
            draw.text((PAD, y0 + self.height - 18), frame.note[:140], fill=FADED_INK,
                      font=self.small)


def _legend(draw: Any, y: int, uniform: bool = False) -> None:
    small, x = _font(13), PAD
    first = "draft / not started" if uniform else "masked"
    for colour, label in ((GREY, first), (GREEN, "new this step"), (BLUE, "committed"),
                          (_faded(BLUE), "end of sequence and after (not content)")):
        draw.rectangle([x, y, x + 14, y + 14], fill=colour)
        draw.text((x + 20, y), label, fill=INK, font=small)
        x += 140


def _header(result: Any) -> str:
    return f"{result.model} · {result.paradigm} · {result.prompt}"


def frame_images(result: Any, width: int = 900) -> list[Any]:
    """One RGB image per frame of the run (subsampled to MAX_FRAMES)."""
    from PIL import Image, ImageDraw

    frames = _subsampled(all_frames(result))
    panel = Panel(result, frames, width)
    images = []
    for f in frames:
        img = Image.new("RGB", (width, panel.height + 30), BACKGROUND)
        draw = ImageDraw.Draw(img)
        panel.draw(draw, 0, f, _header(result))
        _legend(draw, panel.height + 6, getattr(result, "noise", None) == "uniform")
        images.append(img)
    return images


def _gif(images: list[Any], frame_ms: int) -> bytes:
    from PIL import Image

    paletted = [im.convert("P", palette=Image.Palette.ADAPTIVE, colors=64) for im in images]
    durations = [frame_ms] * len(paletted)
    durations[-1] = max(frame_ms, 2000)
    buf = io.BytesIO()
    paletted[0].save(buf, format="GIF", save_all=True, append_images=paletted[1:],
                     duration=durations, loop=0, optimize=False)
    return buf.getvalue()


def gif_bytes(result: Any, width: int = 900, frame_ms: int = 600) -> bytes:
    """The animated GIF as bytes (see ``trace_gif``)."""
    return _gif(frame_images(result, width), frame_ms)


def trace_gif(result: Any, path: str | os.PathLike) -> Path:
    """Animated GIF: one frame per step (plus the all-masked start), tokens as coloured boxes
    and a "step i/N" counter. Traces over 150 steps are subsampled evenly."""
    return atomic_write(path, gif_bytes(result))


def _at(frames: list[Frame], times: list[float], t: float) -> Frame:
    """The frame of a run at time ``t``: after the last step that ended by then."""
    k = 0
    while k < len(times) and times[k] <= t + 1e-12:
        k += 1
    return frames[k]


def _step_times(result: Any) -> list[float]:
    """When each step ended (seconds from the run's start): recorded, else spread evenly."""
    n = len(result.trace)
    times = [getattr(r, "elapsed", None) for r in result.trace]
    if any(t is None for t in times):
        times = [result.seconds * (i + 1) / n for i in range(n)]
    return times


def pair_images(diffusion: Any, autoregressive: Any, width: int = 900) -> list[Any]:
    """Both runs writing on one clock: a frame at every moment either finished a step (at
    most MAX_FRAMES), each panel showing its run's state at that moment."""
    from PIL import Image, ImageDraw

    runs = [(r, all_frames(r), _step_times(r)) for r in (diffusion, autoregressive)]
    moments = sorted({0.0} | {t for _r, _f, times in runs for t in times})
    if len(moments) > MAX_FRAMES:
        moments = [moments[round(i * (len(moments) - 1) / (MAX_FRAMES - 1))]
                   for i in range(MAX_FRAMES)]
    panels = [Panel(r, frames, width) for r, frames, _t in runs]
    height = sum(p.height for p in panels) + 60
    images = []
    for t in moments:
        img = Image.new("RGB", (width, height), BACKGROUND)
        draw = ImageDraw.Draw(img)
        draw.text((PAD, 6), f"t = {t * 1000:.1f} ms (each run's own clock: its steps end when "
                            "they ended in the timed run)", fill=INK, font=_font(13))
        y = 24
        for panel, (r, frames, times) in zip(panels, runs, strict=True):
            head = (f"{_header(r)} · {r.generated_tokens} content tokens in {r.seconds * 1000:.1f}"
                    f" ms, {r.nfe} forward passes")
            panel.draw(draw, y, _at(frames, times, t), head)
            y += panel.height
        _legend(draw, y + 8, any(getattr(r, "noise", None) == "uniform" for r, _f, _t in runs))
        images.append(img)
    return images


def pair_gif(diffusion: Any, autoregressive: Any, path: str | os.PathLike) -> Path:
    """The side-by-side GIF: the diffusion run above the autoregressive one, both on one clock
    (so the faster one finishes first, as it did)."""
    return atomic_write(path, _gif(pair_images(diffusion, autoregressive), 250))


def _pngs(images: list[Any]) -> list[bytes]:
    out = []
    for img in images:
        buf = io.BytesIO()
        img.save(buf, format="PNG")
        out.append(buf.getvalue())
    return out


def png_frames(result: Any) -> list[bytes]:
    """Every frame of the run as a PNG (subsampled to MAX_FRAMES like the GIF)."""
    return _pngs(frame_images(result))


_HTML = """<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8">
<title>Generation steps: __TITLE__</title>
<style>
body{font-family:system-ui,-apple-system,Segoe UI,Roboto,sans-serif;margin:24px;color:#1e1e1e}
h1{font-size:18px;margin:0 0 4px}
.meta{color:#555;font-size:13px;margin-bottom:12px}
.controls{display:flex;gap:8px;align-items:center;margin:12px 0}
.controls input[type=range]{flex:1}
button{padding:4px 12px;font-size:14px;cursor:pointer}
#label{min-width:110px;font-variant-numeric:tabular-nums}
#tokens{display:flex;flex-wrap:wrap;gap:6px;margin:12px 0}
.tok{padding:4px 8px;border-radius:5px;font-family:ui-monospace,Menlo,monospace;font-size:14px;
cursor:pointer;white-space:pre}
.masked{background:#cdcdcd;color:#555}.new{background:#78c878}.old{background:#96b9f0}
.after-end{opacity:.38;filter:grayscale(1)}
.sel{outline:2px solid #222}
.legend span{display:inline-block;width:12px;height:12px;margin:0 4px 0 12px;border-radius:3px}
#details{font-size:13px;margin-top:8px}
table{border-collapse:collapse}td,th{padding:2px 8px;border-bottom:1px solid #eee;text-align:left}
#text{white-space:pre-wrap;background:#f6f6f6;padding:8px;border-radius:5px}
</style></head><body>
<h1 id="title"></h1>
<div class="meta" id="meta"></div>
<div class="meta"><b>Prompt:</b> <span id="prompt"></span></div>
<div class="controls">
<button id="first" title="Home">&laquo; first</button>
<button id="prev" title="Left arrow">&#x25C0; prev</button>
<button id="play">play</button>
<button id="next" title="Right arrow">next &#x25B6;</button>
<button id="last" title="End">last &raquo;</button>
<input type="range" id="slider" min="0" value="0" aria-label="step">
<span id="label"></span>
</div>
<div class="legend meta"><span class="masked"></span>masked<span class="new"></span>committed
this step<span class="old"></span>committed earlier<span class="old after-end"></span>the
end-of-sequence token and after (not content) &middot; click a token for its candidates;
left/right arrows step</div>
<div id="tokens"></div>
<div id="details"></div>
<h2 style="font-size:15px">Final text</h2>
<div id="text"></div>
<script type="application/json" id="data">__DATA__</script>
<script>
(function () {
  var D = JSON.parse(document.getElementById("data").textContent);
  var trace = D.trace, N = trace.length, n = N ? trace[0].tokens.length : D.length;
  if (D.paradigm === "autoregressive" && N) n = Math.min(n, N);  // the tokens it wrote
  var cur = N, selected = null, timer = null;
  var slider = document.getElementById("slider");
  slider.max = N;
  document.getElementById("title").textContent = D.model + " \\u00b7 " + D.paradigm;
  document.getElementById("meta").textContent = "strategy " + D.strategy +
    " \\u00b7 " + D.generated_tokens + " content tokens of " + D.positions + " positions" +
    " \\u00b7 steps " + D.steps + " \\u00b7 forward passes (NFE) " + D.nfe +
    " \\u00b7 " + (D.nfe ? (D.generated_tokens / D.nfe).toFixed(2) : "0") +
    " content tokens per forward pass \\u00b7 " + D.seconds.toFixed(3) + " s \\u00b7 " +
    D.tokens_per_second.toFixed(1) + " content tokens/s" +
    (D.threshold === null ? "" : " \\u00b7 threshold " + D.threshold) +
    (D.cache && D.cache !== "none" ? " \\u00b7 KV cache " + D.cache + " (" + D.kv_refreshes +
     " refreshes)" : "") + (D.stop_note ? " \\u00b7 " + D.stop_note : "");
  document.getElementById("prompt").textContent = D.prompt;
  document.getElementById("text").textContent = D.text;
  function tokensAt(i) {
    if (i === 0) { var t = []; for (var k = 0; k < n; k++) t.push(D.mask_token); return t; }
    return trace[i - 1].tokens.slice(0, n);
  }
  function el(tag, text) { var e = document.createElement(tag); e.textContent = text; return e; }
  function render() {
    var toks = tokensAt(cur), fresh = {}, conf = {};
    var end = cur > 0 && trace[cur - 1].end !== null && trace[cur - 1].end !== undefined ?
      trace[cur - 1].end : -1;
    if (cur > 0) trace[cur - 1].committed.forEach(function (c) {
      fresh[c.position] = true; conf[c.position] = c.confidence; });
    var box = document.getElementById("tokens");
    box.textContent = "";
    toks.forEach(function (t, p) {
      var s = el("span", t);
      var state = D.settled ? (fresh[p] ? "new" : (cur > 0 &&
        D.settled[cur - 1].indexOf(p) >= 0 ? "old" : "masked")) :
        (t === D.mask_token ? "masked" : (fresh[p] ? "new" : "old"));
      s.className = "tok " + state +
        (p === selected ? " sel" : "") + (end >= 0 && p >= end ? " after-end" : "");
      s.title = "position " + p + (p in conf ? " \\u00b7 confidence " + conf[p].toFixed(4) : "") +
        (end >= 0 && p >= end ? " \\u00b7 " + (p === end ? "end of sequence" :
         "after the end of sequence") + " (not content)" : "");
      s.addEventListener("click", function () { selected = p; render(); });
      box.appendChild(s);
    });
    slider.value = cur;
    var block = cur > 0 ? " (block " + trace[cur - 1].block + ")" : "";
    document.getElementById("label").textContent = "step " + cur + "/" + N + block;
    details();
  }
  function details() {
    var d = document.getElementById("details");
    d.textContent = "";
    if (cur === 0) { d.appendChild(el("div", "Start: every position masked.")); return; }
    var r = trace[cur - 1];
    d.appendChild(el("div", "Committed in this step: " + r.committed.map(function (c) {
      return "#" + c.position + " " + JSON.stringify(c.token) + " (" +
        c.confidence.toFixed(3) + ")"; }).join(", ")));
    if (r.kv_cache) d.appendChild(el("div", r.kv_cache === "refreshed" ?
      "KV cache refreshed: a full forward pass at the block boundary" :
      "KV cache reused: the positions outside the pass's window were read from the cache"));
    if (r.note) d.appendChild(el("div", r.note));
    if (selected === null) return;
    var c = (r.candidates || []).filter(function (x) { return x.position === selected; })[0];
    if (!c) { d.appendChild(el("div", "Position " + selected +
      ": no candidates recorded in this step (it was already committed).")); return; }
    d.appendChild(el("div", "Candidates for position " + selected + " in this step:"));
    var tb = document.createElement("table"), h = document.createElement("tr");
    h.appendChild(el("th", "token")); h.appendChild(el("th", "probability"));
    tb.appendChild(h);
    c.top.forEach(function (x) {
      var tr = document.createElement("tr");
      tr.appendChild(el("td", x.token)); tr.appendChild(el("td", x.probability.toFixed(4)));
      tb.appendChild(tr);
    });
    d.appendChild(tb);
  }
  function go(i) { cur = Math.max(0, Math.min(N, i)); render(); }
  function stop() { if (timer) { clearInterval(timer); timer = null; }
    document.getElementById("play").textContent = "play"; }
  document.getElementById("prev").onclick = function () { stop(); go(cur - 1); };
  document.getElementById("next").onclick = function () { stop(); go(cur + 1); };
  document.getElementById("first").onclick = function () { stop(); go(0); };
  document.getElementById("last").onclick = function () { stop(); go(N); };
  document.getElementById("play").onclick = function () {
    if (timer) { stop(); return; }
    if (cur >= N) go(0);
    this.textContent = "pause";
    timer = setInterval(function () { if (cur >= N) stop(); else go(cur + 1); }, 500);
  };
  slider.addEventListener("input", function () { stop(); go(parseInt(slider.value, 10)); });
  document.addEventListener("keydown", function (e) {
    if (e.key === "ArrowLeft") { stop(); go(cur - 1); e.preventDefault(); }
    else if (e.key === "ArrowRight") { stop(); go(cur + 1); e.preventDefault(); }
    else if (e.key === "Home") { stop(); go(0); }
    else if (e.key === "End") { stop(); go(N); }
  });
  render();
})();
</script>
</body></html>
"""


def _safe_json(obj: Any) -> str:
    """JSON that cannot close the <script> element it sits in."""
    return (json.dumps(obj, ensure_ascii=False).replace("&", "\\u0026").replace("<", "\\u003c")
            .replace(">", "\\u003e").replace("\u2028", "\\u2028").replace("\u2029", "\\u2029"))


def _escape(text: str) -> str:
    return (text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")
            .replace('"', "&quot;"))


def trace_html(result: Any) -> str:
    """A self-contained step viewer (inline CSS and JavaScript, no external files): prev/next
    and play buttons, a slider, left/right arrow keys, click a token for its candidates."""
    data = dict(result.to_json(), mask_token=result.mask_token)
    if getattr(result, "noise", None) == "uniform":  # drafts are not committed tokens
        data["settled"] = [sorted(settled_positions(result, k))
                           for k in range(1, len(result.trace) + 1)]
    return (_HTML.replace("__TITLE__", _escape(f"{result.model}: {result.prompt}"[:200]))
            .replace("__DATA__", _safe_json(data)))


def export_zip(result: Any, path: str | os.PathLike, autoregressive: Any = None) -> Path:
    """ZIP with trace.json (the ``generate --json`` object), steps.gif, viewer.html and every
    step as a PNG (frames/step_000.png = all masked, ...; subsampled like the GIF over 150
    steps); with an ``autoregressive`` run of the same prompt also its trace
    (autoregressive.json) and the side-by-side GIF (side_by_side.gif). Written to a temporary
    file next to ``path`` and moved into place."""
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", compression=zipfile.ZIP_DEFLATED) as zf:
        zf.writestr("trace.json", json.dumps(result.to_json(), ensure_ascii=False, indent=1))
        images = frame_images(result)
        zf.writestr("steps.gif", _gif(images, 600))
        zf.writestr("viewer.html", trace_html(result))
        frames = _subsampled(all_frames(result))
        for frame, png in zip(frames, _pngs(images), strict=True):
            zf.writestr(f"frames/step_{frame.step:03d}.png", png)
        if autoregressive is not None:
            zf.writestr("autoregressive.json", json.dumps(autoregressive.to_json(),
                                                          ensure_ascii=False, indent=1))
            zf.writestr("side_by_side.gif", _gif(pair_images(result, autoregressive), 250))
    return atomic_write(path, buf.getvalue())
