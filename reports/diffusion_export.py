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
import tempfile
import zipfile
from pathlib import Path
from typing import Any

GREY = (205, 205, 205)
GREEN = (120, 200, 120)
BLUE = (150, 185, 240)
INK = (30, 30, 30)
FADED_INK = (140, 140, 140)
BACKGROUND = (255, 255, 255)
MAX_FRAMES = 150  # longer traces are subsampled evenly (first and last frame always kept)
MAX_TOKEN_CHARS = 14


def _shown(result: Any) -> int:
    """Positions drawn: the canvas; for an autoregressive run the tokens it wrote."""
    n = len(result.trace[0].tokens) if result.trace else result.length
    if result.paradigm == "autoregressive" and result.trace:
        n = min(n, len(result.trace))
    return n


def _frames(result: Any) -> list[tuple[int, list[str], set[int], int | None]]:
    """(step, tokens, positions committed since the previous frame, first end-of-sequence
    position or None); step 0 = all masked."""
    n = _shown(result)
    frames = [(0, [result.mask_token] * n, set(), None)]
    for r in result.trace:
        frames.append((r.step, list(r.tokens)[:n], {c["position"] for c in r.committed},
                       getattr(r, "end", None)))
    if len(frames) <= MAX_FRAMES:
        return frames
    keep = sorted({round(i * (len(frames) - 1) / (MAX_FRAMES - 1)) for i in range(MAX_FRAMES)})
    out, pending = [], set()
    for i, (step, tokens, new, end) in enumerate(frames):
        pending |= new
        if i in keep:
            out.append((step, tokens, pending, end))
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


def gif_bytes(result: Any, width: int = 900, frame_ms: int = 600) -> bytes:
    """The animated GIF as bytes (see ``trace_gif``)."""
    from PIL import Image, ImageDraw

    frames = _frames(result)
    font, small = _font(15), _font(13)
    probe = ImageDraw.Draw(Image.new("RGB", (1, 1)))
    n = len(frames[0][1])
    # one fixed box per position, wide enough for every text it shows, so nothing jumps around
    widths = [max(28, int(max(probe.textlength(_short(f[1][p]), font=font) for f in frames)) + 12)
              for p in range(n)]
    pad, box_h, gap, top = 16, 28, 6, 78
    boxes, x, y = [], pad, top
    for w in widths:
        w = min(w, width - 2 * pad)
        if x + w > width - pad and x > pad:
            x, y = pad, y + box_h + gap
        boxes.append((x, y, x + w, y + box_h))
        x += w + gap
    height = y + box_h + pad + 30
    total = len(result.trace)
    title = f"{result.model} · {result.paradigm} · {result.prompt}"
    images = []
    for step, tokens, new, end in frames:
        img = Image.new("RGB", (width, height), BACKGROUND)
        draw = ImageDraw.Draw(img)
        draw.text((pad, 10), title[:110], fill=INK, font=small)
        draw.text((pad, 32), f"step {step}/{total}", fill=INK, font=font)
        bar_x0, bar_x1 = pad + 130, width - pad
        draw.rectangle([bar_x0, 36, bar_x1, 48], outline=(160, 160, 160))
        if total:
            draw.rectangle([bar_x0, 36, bar_x0 + (bar_x1 - bar_x0) * step // total, 48],
                           fill=(100, 170, 230))
        for p, (tok, box) in enumerate(zip(tokens, boxes, strict=True)):
            masked = tok == result.mask_token
            colour = GREY if masked else GREEN if p in new else BLUE
            past = end is not None and p >= end
            draw.rounded_rectangle(box, radius=5, fill=_faded(colour) if past else colour)
            draw.text((box[0] + 6, box[1] + 6), _short(tok), fill=FADED_INK if past else INK,
                      font=font)
        ly = height - 26
        lx = pad
        for colour, label in ((GREY, "masked"), (GREEN, "new this step"), (BLUE, "committed"),
                              (_faded(BLUE), "end of sequence and after (not content)")):
            draw.rectangle([lx, ly, lx + 14, ly + 14], fill=colour)
            draw.text((lx + 20, ly), label, fill=INK, font=small)
            lx += 140
        images.append(img.convert("P", palette=Image.Palette.ADAPTIVE, colors=64))
    durations = [frame_ms] * len(images)
    durations[-1] = max(frame_ms, 2000)
    buf = io.BytesIO()
    images[0].save(buf, format="GIF", save_all=True, append_images=images[1:],
                   duration=durations, loop=0, optimize=False)
    return buf.getvalue()


def _atomic_write(path: str | os.PathLike, data: bytes) -> None:
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=".tmp-", dir=target.parent)
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
        os.replace(tmp, target)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def trace_gif(result: Any, path: str | os.PathLike) -> Path:
    """Animated GIF: one frame per step (plus the all-masked start), tokens as coloured boxes
    and a "step i/N" counter. Traces over 150 steps are subsampled evenly."""
    _atomic_write(path, gif_bytes(result))
    return Path(path)


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
    (D.threshold === null ? "" : " \\u00b7 threshold " + D.threshold);
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
      s.className = "tok " + (t === D.mask_token ? "masked" : (fresh[p] ? "new" : "old")) +
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
    return (_HTML.replace("__TITLE__", _escape(f"{result.model}: {result.prompt}"[:200]))
            .replace("__DATA__", _safe_json(data)))


def export_zip(result: Any, path: str | os.PathLike) -> Path:
    """ZIP with trace.json (the ``generate --json`` object), steps.gif and viewer.html, written
    to a temporary file next to ``path`` and moved into place."""
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", compression=zipfile.ZIP_DEFLATED) as zf:
        zf.writestr("trace.json", json.dumps(result.to_json(), ensure_ascii=False, indent=1))
        zf.writestr("steps.gif", gif_bytes(result))
        zf.writestr("viewer.html", trace_html(result))
    _atomic_write(path, buf.getvalue())
    return Path(path)
