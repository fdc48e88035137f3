"""The attention explorer: every layer's and head's attention sent to the browser once.

Like bertviz's ``head_view(attention, tokens)`` this takes plain arrays and knows nothing
about the model that made them. `pack_attention` quantises and compresses the attention
(`attentions  # [layer, head, query, key]`) into an `AttentionPayload`; the browser decodes it
once into typed arrays (ui/static/attention_explorer.js) and switches head, layer and view
there, with no server request. The same payload feeds the Gradio component (`build`) and a
self-contained HTML page (`standalone_html`, also an export).

Encoding (format version 1)
    Per query row, ``s = max_k a[q, k]`` is kept exactly (float32). Each weight becomes the
    uint8 code ``c = round(255 * (a / s) ** (1 / gamma))`` (gamma 2: a square-root mapping, so a
    weight 1e-4 of its row's maximum still gets code 3 and stays visible) and is read back as
    ``a' = s * (c / 255) ** gamma``. Causal models send only the lower triangle (the diagonal
    included). Codes are zlib-compressed one layer at a time (``DecompressionStream("deflate")``
    in the browser, which draws the selected layer before it inflates the others), row maxima
    as one stream; both base64-encoded inside a JSON object (`AttentionPayload.to_json`).

Error bound
    ``|a - a'| <= s * gamma / (2 * 255)``: 0.39 % of the row's maximum for gamma 2, so at most
    0.0039 in absolute terms (`quantisation_bound`; 255 is ``levels``, the largest code). The
    browser shows values with 4 decimals (another 5e-5). A row's sum stays within
    ``sqrt(n * s) / 255 + n * s / (4 * 255**2)`` of the original (worst case; measured 0.004
    on real 512-token attention).

Sizes (bench/bench_explorer.py, zlib level 3). GPT-2-small shape, 12 layers x 12 heads, 512
tokens, causal: 19.2 MB of codes and row maxima before compression; a randomly initialised
GPT-2's attention compresses to 84 % of that (16.2 MB, 21.7 MB as JSON), softmax of random
logits to 74 %. Real pretrained attention, all-MiniLM-L6 at 512 tokens (6 x 12 heads, full
square, 19.0 MB): 71 %, 13.6 MB, 18.1 MB as JSON (about 5.7 bits per weight: attention's small
weights are noise-like, which deflate cannot squeeze). `DEFAULT_MAX_RAW_BYTES` bounds what is
sent; `AttentionPayload.sizes` states it.

The Gradio side (`build`): a ``gr.HTML`` whose ``head`` carries the script and style (loaded
once per page, no app-level ``head=``/``js=`` needed) and whose ``js_on_load`` mounts the
explorer. Its value is the payload JSON. In the app the streams are not inside it: the Layer tab
writes them once as a file in the session folder (`AttentionPayload.write_binary`, served by
Gradio's file route through `allowed_paths`) and sends `linked_json` (tokens and sizes, a few kB);
the page reads the file with HTTP range requests, the scales and the shown layer first, the
other layers behind them (no base64: a third less to move and nothing to parse). A click on a
head (or a keyboard / selector switch) fires the component's ``select`` event with
``SelectData.index == [layer, head]`` and tells the page's other views at once (a selection
bus in the page, shared with ui/static/views.js); a selection made in Python reaches the page
with `selection_update` (a prop change: the data is not sent again). Layers count from 1 (0
would be the embeddings, which have no attention), heads from 0.
"""

from __future__ import annotations

import base64
import functools
import json
import logging
import zlib
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from models.common import UserError

if TYPE_CHECKING:
    import gradio as gr

log = logging.getLogger(__name__)

FORMAT = "attention-explorer"
VERSION = 1
ELEM_ID = "attention-explorer"
STATIC = Path(__file__).resolve().parent / "static"
# codes before compression: GPT-2-small at 512 tokens needs 18.9 MB, so this allows it up to
# ~750 tokens, TinyLlama-1.1B (22 x 32 heads) up to ~340
DEFAULT_MAX_RAW_BYTES = 40 * 2**20


def quantisation_bound(gamma: float = 2.0, levels: int = 255) -> float:
    """Largest |a - a'| of one weight, as a fraction of its row's maximum."""
    return gamma / (2 * levels)


@dataclass(frozen=True)
class AttentionPayload:
    """Everything the browser needs, compressed; `to_json` is what is sent."""

    tokens: list[str]
    n_layers: int
    n_heads: int
    causal: bool
    codes: bytes  # one zlib stream per layer, concatenated: uint8 [head, cells] each; cells: the
    #               lower triangle row by row if causal
    layer_bytes: list[int]  # the length of each layer's stream in `codes` (decoded layer by layer)
    scales: bytes  # zlib of float32 little-endian [layer, head, query]: each row's maximum
    raw_bytes: int  # codes + scales before compression
    gamma: float = 2.0
    levels: int = 255
    first_layer: int = 1  # the number of layers[0]: blocks count from 1, 0 is the embeddings
    title: str = ""

    @property
    def n_tokens(self) -> int:
        return len(self.tokens)

    @property
    def compressed_bytes(self) -> int:
        return len(self.codes) + len(self.scales)

    def to_dict(self, inline: bool = True) -> dict:
        """The JSON object the browser reads. `inline`: the streams base64-encoded inside it;
        otherwise only what describes them (`linked_json` adds where to fetch them)."""
        meta = {"format": FORMAT, "version": VERSION, "title": self.title,
                "n_layers": self.n_layers, "n_heads": self.n_heads, "n_tokens": self.n_tokens,
                "first_layer": self.first_layer, "causal": self.causal, "tokens": list(self.tokens),
                "gamma": self.gamma, "levels": self.levels, "compression": "deflate",
                "layout": "lower" if self.causal else "full",
                "raw_bytes": self.raw_bytes, "compressed_bytes": self.compressed_bytes,
                "layer_bytes": list(self.layer_bytes), "scales_bytes": len(self.scales)}
        if inline:
            meta["scales"] = base64.b64encode(self.scales).decode("ascii")
            meta["codes"] = base64.b64encode(self.codes).decode("ascii")
        return meta

    def to_json(self) -> str:
        return _dumps(self.to_dict())

    def linked_json(self, url: str) -> str:
        """The JSON without the streams, which the browser fetches from `url` as one binary
        file (`write_binary`): scales then the layers' codes, exactly `compressed_bytes`."""
        return _dumps({**self.to_dict(inline=False), "url": url})

    def write_binary(self, path: str | Path) -> Path:
        """The compressed streams as one file (scales, then every layer's codes), written
        atomically: what `linked_json`'s URL serves."""
        from models.common import atomic_write

        return atomic_write(path, self.scales + self.codes)

    @classmethod
    def from_json(cls, data: str | dict) -> AttentionPayload:
        d = json.loads(data) if isinstance(data, str) else data
        if d.get("format") != FORMAT or d.get("version") != VERSION:
            raise ValueError(f"not an {FORMAT} payload of version {VERSION}")
        return cls(tokens=list(d["tokens"]), n_layers=int(d["n_layers"]), n_heads=int(d["n_heads"]),
                   causal=bool(d["causal"]), codes=base64.b64decode(d["codes"]),
                   layer_bytes=[int(n) for n in d["layer_bytes"]], scales=base64.b64decode(d["scales"]),
                   raw_bytes=int(d["raw_bytes"]), gamma=float(d["gamma"]), levels=int(d["levels"]),
                   first_layer=int(d["first_layer"]), title=str(d.get("title", "")))

    def sizes(self) -> dict:
        """Bytes: before compression, compressed, and the JSON actually sent."""
        return {"raw": self.raw_bytes, "compressed": self.compressed_bytes,
                "json": len(self.to_json().encode("utf-8"))}


def _dumps(obj: dict) -> str:
    # "<" escaped: the JSON can sit inside a <script> element and never trips gr.HTML's
    # script-tag warning, whatever the tokens say
    return json.dumps(obj, ensure_ascii=False, separators=(",", ":")).replace("<", "\\u003c")


def gradio_file_url(path: str | Path) -> str:
    """The URL (relative to the Gradio app's root) of a file in the app's `allowed_paths`."""
    from urllib.parse import quote

    return "/gradio_api/file=" + quote(str(Path(path).resolve()))


def _cells(n_tokens: int, causal: bool) -> int:
    return n_tokens * (n_tokens + 1) // 2 if causal else n_tokens * n_tokens


def pack_attention(attentions: np.ndarray, tokens: Sequence[str], causal: bool, *, title: str = "",
                   gamma: float = 2.0, levels: int = 255, level: int = 3,
                   max_raw_bytes: int = DEFAULT_MAX_RAW_BYTES) -> AttentionPayload:
    """Quantise and compress `attentions  # [layer, head, query, key]` for the browser.

    Reads one layer at a time, so a float16 ``np.memmap`` of a long capture is never loaded
    whole. ``causal``: only keys 0..q of row q are sent (the rest must be zero). ``levels``:
    the largest code (255; 63 sends about a third less for real attention, with 4x the error
    bound). ``level``: the zlib level (6: 3 % smaller, ~1.5x slower). Raises `UserError` when the codes
    would exceed ``max_raw_bytes``.
    """
    shape = tuple(attentions.shape)
    if len(shape) != 4 or shape[2] != shape[3]:
        raise ValueError(f"attentions must be [layer, head, query, key] with query == key; got {shape}")
    n_layers, n_heads, n_tokens, _ = shape
    if len(tokens) != n_tokens:
        raise ValueError(f"{len(tokens)} tokens for attention over {n_tokens} positions")
    if not gamma >= 1:
        raise ValueError(f"gamma must be >= 1, got {gamma}")
    if not 1 <= int(levels) <= 255:
        raise ValueError(f"levels must be 1..255 (uint8 codes), got {levels}")
    levels = int(levels)
    cells = _cells(n_tokens, causal)
    raw = n_layers * n_heads * (cells + 4 * n_tokens)
    if raw > max_raw_bytes:
        fit = n_tokens
        while fit > 2 and n_layers * n_heads * (_cells(fit, causal) + 4 * fit) > max_raw_bytes:
            fit = int(fit * 0.9)
        raise UserError(f"The attention of {n_layers} layers x {n_heads} heads over {n_tokens} tokens "
                        f"is too large for the browser explorer ({raw / 2**20:.0f} MiB, limit "
                        f"{max_raw_bytes / 2**20:.0f} MiB). Analyse at most about {fit} tokens to "
                        "explore it interactively; the static figures still show every head.")
    lower = np.tri(n_tokens, dtype=bool) if causal else None
    scales_z = zlib.compressobj(level)
    codes_out, scales_out = [], []
    leak = 0.0
    for layer in range(n_layers):
        a = np.nan_to_num(np.asarray(attentions[layer], dtype=np.float32), nan=0.0, posinf=0.0,
                          neginf=0.0)  # [head, query, key]
        np.maximum(a, 0.0, out=a)
        if causal:
            leak = max(leak, float(a[:, ~lower].max(initial=0.0)))
        s = a.max(axis=-1)  # [head, query]
        x = a / np.where(s > 0, s, 1.0)[..., None]
        if gamma == 2:
            np.sqrt(x, out=x)
        elif gamma != 1:
            np.power(x, 1.0 / gamma, out=x)
        x *= levels
        np.rint(x, out=x)
        c = x.astype(np.uint8)
        if causal:
            c = c[:, lower]  # [head, cells], row-major: row q holds keys 0..q
        # a stream per layer: the page shows the selected layer before the others are inflated
        codes_out.append(zlib.compress(np.ascontiguousarray(c).tobytes(), level))
        scales_out.append(scales_z.compress(s.astype("<f4").tobytes()))
    scales_out.append(scales_z.flush())
    if leak > 1e-3:
        log.warning("causal attention has weight %.3g above the diagonal; it is not sent", leak)
    return AttentionPayload(tokens=[str(t) for t in tokens], n_layers=n_layers, n_heads=n_heads,
                            causal=bool(causal), codes=b"".join(codes_out),
                            layer_bytes=[len(z) for z in codes_out], scales=b"".join(scales_out),
                            raw_bytes=raw, gamma=float(gamma), levels=levels, title=title)


def unpack_attention(payload: AttentionPayload | str | dict) -> np.ndarray:
    """The attention back as float32 `[layer, head, query, key]` (what the browser shows).

    Each weight is within ``quantisation_bound(gamma) * row_max`` of the packed one; above the
    diagonal of a causal model it is exactly 0."""
    p = payload if isinstance(payload, AttentionPayload) else AttentionPayload.from_json(payload)
    n, lh = p.n_tokens, p.n_layers * p.n_heads
    ends = np.cumsum([0, *p.layer_bytes])
    layers = [zlib.decompress(p.codes[ends[i]:ends[i + 1]]) for i in range(p.n_layers)]
    codes = np.frombuffer(b"".join(layers), dtype=np.uint8).reshape(lh, _cells(n, p.causal))
    scales = np.frombuffer(zlib.decompress(p.scales), dtype="<f4").reshape(lh, n)
    lut = ((np.arange(p.levels + 1, dtype=np.float64) / p.levels) ** p.gamma).astype(np.float32)
    out = np.zeros((lh, n, n), dtype=np.float32)
    if p.causal:
        out[:, np.tri(n, dtype=bool)] = lut[codes]
    else:
        out[:] = lut[codes].reshape(lh, n, n)
    out *= scales[:, :, None]
    return out.reshape(p.n_layers, p.n_heads, n, n)


# ---------------------------------------------------------------------------- page and Gradio


@functools.lru_cache(maxsize=1)
def _static() -> tuple[str, str]:
    js = "".join((STATIC / name).read_text(encoding="utf-8")  # the bus first: the explorer
                 for name in ("selection_bus.js", "attention_explorer.js"))  # reads it at load
    css = (STATIC / "attention_explorer.css").read_text(encoding="utf-8")
    if "</script" in js.lower() or "</style" in css.lower():
        raise RuntimeError("the explorer's JS/CSS must not contain a closing script/style tag")
    return js, css


def head_html() -> str:
    """The explorer's style and script, as ``<head>`` HTML (inline: no request, no network)."""
    js, css = _static()
    return f'<style id="attention-explorer-css">\n{css}</style>\n<script>\n{js}</script>\n'


def standalone_html(payload: AttentionPayload | None, *, layer: int = 1, head: int = 0,
                    page_title: str | None = None) -> str:
    """A self-contained HTML page with the explorer and its data (works offline, as a file)."""
    import html as html_mod

    data = "null" if payload is None else payload.to_json()
    suffix = f" – {payload.title}" if payload is not None and payload.title else ""
    title = page_title or f"Attention explorer{suffix}"
    boot = (f"AttentionExplorer.standalone({json.dumps(ELEM_ID)}, 'attention-payload', "
            f"{{selection: [{int(layer)}, {int(head)}], autofocus: true}});")
    return ("<!doctype html>\n<html lang=\"en\">\n<head>\n<meta charset=\"utf-8\">\n"
            f"<title>{html_mod.escape(title)}</title>\n"
            "<meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">\n"
            "<style>body { margin: 16px; font-family: system-ui, sans-serif; background: #fff; }</style>\n"
            f"{head_html()}</head>\n<body>\n<div id=\"{ELEM_ID}\"></div>\n"
            f"<script id=\"attention-payload\" type=\"application/json\">{data}</script>\n"
            f"<script>\n{boot}\n</script>\n</body>\n</html>\n")


# the component's own boot code: gr.HTML runs it with element/props/trigger/watch once mounted
_JS_ON_LOAD = "window.AttentionExplorer.gradio(element, props, trigger, watch);"


@dataclass
class Explorer:
    """The component(s) of the explorer in a Blocks layout."""

    html: gr.HTML  # value = the payload JSON; prop `selection` = [layer, head]

    def select(self, fn, inputs=None, outputs=None, **kwargs):
        """Wire ``fn(..., evt: gr.SelectData)``; `selected(evt)` gives (layer, head).

        ``trigger_mode`` defaults to "multiple", so that every selection arrives, in order (keep
        the listener's default concurrency_limit of 1): in Gradio 6.31 a selection made while
        the previous one is being handled is dropped by "once" (the default) and re-run with
        the previous one's data by "always_last"."""
        kwargs.setdefault("trigger_mode", "multiple")
        return self.html.select(fn, inputs, outputs, **kwargs)


def build(elem_id: str = ELEM_ID, **kwargs) -> Explorer:
    """The explorer as a ``gr.HTML`` (create it inside a Blocks context)."""
    import gradio as gr

    html = gr.HTML(value=None, html_template='<div class="ae-mount"></div>', js_on_load=_JS_ON_LOAD,
                   head=head_html(), apply_default_css=False, elem_id=elem_id,
                   elem_classes=["attention-explorer"], selection=[1, 0], **kwargs)
    return Explorer(html)


def payload_update(payload: AttentionPayload | str | None, layer: int = 1, head: int = 0):
    """What an event returns to the explorer when a new analysis (or model) is shown: the
    payload, or its JSON as given (e.g. `linked_json`, whose streams the page fetches)."""
    import gradio as gr

    value = payload.to_json() if isinstance(payload, AttentionPayload) else payload
    return gr.HTML(value=value, selection=[int(layer), int(head)])


def message_json(text: str) -> str:
    """A value that shows `text` in the explorer instead of attention (e.g. why there is none)."""
    return _dumps({"format": FORMAT, "version": VERSION, "message": str(text)})


def selection_update(layer: int, head: int):
    """Select (layer, head) in the page without sending the data again."""
    import gradio as gr

    return gr.HTML(selection=[int(layer), int(head)])


def selected(evt) -> tuple[int, int]:
    """(layer, head) from the explorer's ``select`` event (`gr.SelectData`)."""
    index = getattr(evt, "index", None)
    try:
        layer, head = (int(v) for v in index)
    except (TypeError, ValueError):
        raise UserError(f"The explorer sent no (layer, head) selection (got {index!r}).") from None
    if layer < 1 or head < 0:
        raise UserError(f"The explorer sent an invalid selection: layer {layer}, head {head}.")
    return layer, head
