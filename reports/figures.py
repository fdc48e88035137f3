"""Figures: one function per figure, plain data in, a matplotlib Figure out.

The UI and the PDF call the same functions. Every function takes the result object (an
`Analysis` or one `ModelResult`) and draws from what it already holds; nothing re-runs a model.
Figures are built with `matplotlib.figure.Figure` (not pyplot), so a server never accumulates
open figures; `save_png` writes one and releases it.

Conventions: `layer` counts blocks from 1 (layer 0 = the embedding output); attention arrays are
`attentions  # [layer, head, query, key]`; hidden states `hidden  # [layer + 1, token, d_model]`.
"""

from __future__ import annotations

import functools
import io
import logging
import math
import os
import re
import textwrap
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import seaborn as sns  # noqa: E402
from matplotlib.colors import PowerNorm, TwoSlopeNorm  # noqa: E402
from matplotlib.figure import Figure  # noqa: E402
from matplotlib.patches import Rectangle  # noqa: E402

from analysis import attribution  # noqa: E402
from analysis.capture import release_pages  # noqa: E402
from analysis.result import LAYER_COLUMNS, Analysis, ModelResult  # noqa: E402
from models.errors import UserError  # noqa: E402

log = logging.getLogger(__name__)

# seaborn "whitegrid" + "notebook", applied per figure through rc_context (no global state).
STYLE = {**sns.axes_style("whitegrid"), **sns.plotting_context("notebook"),
         "figure.dpi": 100, "savefig.dpi": 110, "axes.titlesize": 11, "axes.labelsize": 10,
         "xtick.labelsize": 9, "ytick.labelsize": 9, "legend.fontsize": 9,
         "figure.titlesize": 13, "axes.titleweight": "normal"}
MAX_TICK_LABELS = 60  # with more tokens every k-th label is shown
LENS_POSITIONS = attribution.LENS_POSITIONS  # logit lens: the last positions shown
GIF_MAX_BYTES = 2 * 1024 * 1024
MAX_HEAD_LABELS = 200  # head_clusters writes 'L{layer}H{head}' for at most this many heads

METRIC_LABELS = {
    "effective_rank": "effective rank",
    "participation_ratio": "participation ratio",
    "intrinsic_dim_pca95": "intrinsic dim (PCA 95%)",
    "intrinsic_dim_twonn": "intrinsic dim (TwoNN)",
    "activation_entropy": "activation entropy",
    "cosine_to_input": "cosine to input",
    "anisotropy": "anisotropy",
    "attention_entropy": "attention entropy",
    "intrinsic_dim_twonn_ci_low": "TwoNN 95% low",
    "intrinsic_dim_twonn_ci_high": "TwoNN 95% high",
}


# rc_context swaps matplotlib's global rcParams: one figure is built at a time, so concurrent
# requests in a server neither see each other's settings nor leave them behind. Drawing a
# figure (savefig) holds it too: the font objects that lay out text are shared between threads
# (a NaN-extent warning appeared once in the browser test while the background pre-drawing ran;
# serialising the draws rules that race out).
FIGURE_LOCK = threading.RLock()


def _styled(fn: Callable) -> Callable:
    """Run a figure function under the house matplotlib/seaborn style."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        with FIGURE_LOCK, plt.rc_context(STYLE):
            return fn(*args, **kwargs)

    return wrapper


def _figure(width: float, height: float, layout: str | None = "constrained") -> Figure:
    return Figure(figsize=(min(max(width, 3.0), 18.0), min(max(height, 2.5), 18.0)),
                  layout=layout)


def _margins(fig: Figure, ax, colourbar: bool = True, left_inches: float = 0.0,
             bottom_inches: float = 0.0) -> None:
    """Fixed margins from the labels' lengths (about 0.6 em per character) instead of a layout
    engine, for the figures a layer or head switch draws: constrained layout measures every
    text twice and was half of their draw time. `ax` is one axes from `fig.add_subplot()`
    (with its colour bar made by `fig.colorbar(ax=ax)`, which the margins move along).
    `left_inches`, `bottom_inches`: room for labels drawn as texts beside the axes."""
    def across(labels, rotated: bool) -> float:  # inches a row of tick labels takes
        labels = [t for t in labels if t.get_text()]
        if not labels:
            return 0.0
        fs = labels[0].get_fontsize()
        return (max(len(t.get_text()) for t in labels) * 0.6 * fs if rotated else 1.4 * fs) / 72

    xl, yl = ax.get_xticklabels(), ax.get_yticklabels()
    x_rotated = bool(xl) and round(xl[0].get_rotation()) % 180 == 90
    left = 0.2 + across(yl, True) + (0.3 if ax.get_ylabel() else 0.0) + left_inches
    bottom = 0.15 + across(xl, x_rotated) + (0.3 if ax.get_xlabel() else 0.0) + bottom_inches
    title = fig.get_suptitle() or ax.get_title()
    top = 0.2 + (title.count("\n") + 1) * 0.27 if title else 0.2
    right = 0.85 if colourbar else 0.2
    w, h = fig.get_size_inches()
    fig.subplots_adjust(left=min(left / w, 0.45), right=max(1 - right / w, 0.55),
                        bottom=min(bottom / h, 0.45), top=max(1 - top / h, 0.55))


# ---------------------------------------------------------------------------------------------
# small helpers


def token_label(tok: str, max_chars: int = 14) -> str:
    """A token as a tick label: whitespace made visible, mathtext '$' escaped, long ones cut."""
    s = str(tok)
    if s == "":
        s = "∅"
    elif s.strip() == "":
        s = "␣" * len(s) if len(s) <= 3 else f"␣×{len(s)}"
    s = s.replace("\n", "\\n").replace("\t", "\\t")
    if len(s) > max_chars:
        s = s[:max_chars - 1] + "…"
    return s.replace("$", r"\$")


def _tick_step(n: int) -> int:
    return max(1, math.ceil(n / MAX_TICK_LABELS)) if n > MAX_TICK_LABELS else 1


def _tick_fontsize(n: int) -> float:
    if n <= 12:
        return 9.0
    if n <= 24:
        return 8.0
    if n <= 40:
        return 7.0
    return 6.0


def set_token_ticks(ax, tokens: Sequence[str], axis: str = "x", start: int = 0,
                    show_index: bool = False, as_text: bool = False,
                    indices: Sequence[int] | None = None) -> float:
    """Token labels on an image axis; every k-th label (k = ceil(T / 60)) when T > 60.

    `show_index`: each label starts with its position, `start + i`, or `indices[i]` when the
    columns are not consecutive positions.

    `as_text`: plain texts beside the axis instead of ticks (a tick is four artists; for the
    figures a layer or head switch redraws); returns the inches the labels take across."""
    n = len(tokens)
    step = _tick_step(n)
    pos = list(range(0, n, step))
    where_is = (lambda i: indices[i]) if indices is not None else (lambda i: start + i)
    labels = [(f"{where_is(i)}:" if show_index else "") + token_label(tokens[i]) for i in pos]
    fs = _tick_fontsize(len(pos))
    longest = max((len(s) for s in labels), default=1)
    rotation = 0
    if axis == "x":
        # horizontal labels when they fit side by side (about 0.6 em per character), else 90°
        fig = ax.get_figure()
        width_pt = ax.get_position().width * fig.get_figwidth() * 72 if fig else 300.0
        fits = (longest + 1) * 0.6 * fs * len(pos) < 0.9 * width_pt
        rotation = 0 if fits else 90
    if not as_text:
        if axis == "x":
            ax.set_xticks(pos)
            ax.set_xticklabels(labels, rotation=rotation, fontsize=fs)
        else:
            ax.set_yticks(pos)
            ax.set_yticklabels(labels, fontsize=fs)
        return 0.0
    from matplotlib.transforms import offset_copy

    fig = ax.get_figure()
    if axis == "x":
        ax.set_xticks([])
        where = offset_copy(ax.get_xaxis_transform(), fig=fig, y=-3, units="points")
        for p, label in zip(pos, labels, strict=True):
            ax.text(p, 0, label, transform=where, ha="center", va="top", fontsize=fs,
                    rotation=rotation)
        return (longest * 0.6 * fs if rotation else 1.3 * fs) / 72
    ax.set_yticks([])
    where = offset_copy(ax.get_yaxis_transform(), fig=fig, x=-3, units="points")
    for p, label in zip(pos, labels, strict=True):
        ax.text(0, p, label, transform=where, ha="right", va="center", fontsize=fs)
    return longest * 0.6 * fs / 72


def _nan(v) -> float:
    return float("nan") if v is None else float(v)


def _layer_table(result: ModelResult) -> tuple[np.ndarray, np.ndarray]:
    """(layers [L + 1], values [L + 1, len(LAYER_COLUMNS)]) with NaN where undefined."""
    return np.arange(result.layers.n_layers + 1), result.layers.table()


def head_matrix(result: ModelResult, key: str) -> np.ndarray:
    """A head metric as `[layer, head]` float64 (NaN where undefined)."""
    return np.asarray(result.heads.score(key), dtype=np.float64)


def _annotate(ax, im, data: np.ndarray, fmt: str = "", fontsize: float = 7.0,
              texts: Sequence[Sequence[str]] | None = None) -> None:
    """Write each cell's value (or text) on an imshow heatmap, black or white by cell colour."""
    for i in range(data.shape[0]):
        for j in range(data.shape[1]):
            v = data[i, j]
            if not np.isfinite(v) and texts is None:
                continue
            s = texts[i][j] if texts is not None else format(v, fmt)
            r, g, b, _ = im.cmap(im.norm(v)) if np.isfinite(v) else (0.87, 0.87, 0.87, 1)
            dark = 0.299 * r + 0.587 * g + 0.114 * b < 0.5
            ax.text(j, i, s, ha="center", va="center", fontsize=fontsize,
                    color="white" if dark else "black")


def _wrap(fig: Figure, text: str, fontsize: float, share: float = 0.95) -> str:
    """Wrap a title to the figure width (about 0.6 em per character), keeping its line breaks."""
    chars = max(20, int(fig.get_figwidth() * share * 72 / (0.6 * fontsize)))
    return "\n".join(textwrap.fill(line, chars) for line in text.split("\n"))


def _title_text(fig: Figure, text: str, suptitle: bool = False,
                fontsize: float | None = None) -> tuple[str, float]:
    """(the title wrapped to the figure, its font size): an axes title or a figure suptitle."""
    fs = fontsize or plt.rcParams["figure.titlesize" if suptitle else "axes.titlesize"]
    fs = fs if isinstance(fs, (int, float)) else (13 if suptitle else 11)
    return _wrap(fig, text, fs, share=0.95 if suptitle else 0.72), fs


def _title(fig: Figure, ax, text: str, fontsize: float | None = None) -> None:
    wrapped, fs = _title_text(fig, text, fontsize=fontsize)
    ax.set_title(wrapped, fontsize=fs)


def _suptitle(fig: Figure, text: str) -> None:
    wrapped, fs = _title_text(fig, text, suptitle=True)
    fig.suptitle(wrapped, fontsize=fs)


def _heatmap(fig: Figure, ax, data: np.ndarray, cmap: str, label: str, vmin=None, vmax=None,
             norm=None, nan_colour: str = "#dddddd", fraction: float = 0.15):
    """imshow heatmap with a colour bar; NaN cells grey; no grid lines across the cells."""
    cm = matplotlib.colormaps[cmap].with_extremes(bad=nan_colour)
    im = ax.imshow(np.ma.masked_invalid(data), cmap=cm, vmin=None if norm else vmin,
                   vmax=None if norm else vmax, norm=norm, aspect="auto", interpolation="nearest")
    ax.grid(False)
    cb = fig.colorbar(im, ax=ax, shrink=0.9, pad=0.02, fraction=fraction)
    cb.set_label(label)
    return im


def _layer_head_axes(ax, n_layers: int, n_heads: int) -> None:
    ax.set_xlabel("head")
    ax.set_ylabel("layer")
    hstep = max(1, math.ceil(n_heads / 32))
    lstep = max(1, math.ceil(n_layers / 40))
    ax.set_xticks(range(0, n_heads, hstep))
    ax.set_xticklabels([str(h) for h in range(0, n_heads, hstep)])
    ax.set_yticks(range(0, n_layers, lstep))
    ax.set_yticklabels([str(layer + 1) for layer in range(0, n_layers, lstep)])


def _check_layer(result: ModelResult, layer: int) -> None:
    n = result.trace.n_layers
    if not 1 <= int(layer) <= n:
        raise UserError(f"Layer {layer} does not exist: '{result.name}' has layers 1..{n} "
                        "(layer 0 is the embedding output and has no attention).")


def _check_head(result: ModelResult, head: int) -> None:
    n = result.trace.n_heads
    if not 0 <= int(head) < n:
        raise UserError(f"Head {head} does not exist: '{result.name}' has heads 0..{n - 1}.")


# ---------------------------------------------------------------------------------------------
# figures


@_styled
def message_figure(text: str, title: str | None = None, width: float = 6.0,
                   height: float = 2.5) -> Figure:
    """An empty-state figure: a short message in the middle, no axes."""
    fig = _figure(width, height)
    ax = fig.add_subplot()
    ax.set_axis_off()
    ax.text(0.5, 0.5, text, ha="center", va="center", fontsize=12, color="#555555", wrap=True,
            transform=ax.transAxes)
    if title:
        ax.set_title(title)
    return fig


@_styled
def layer_metric_curves(analysis: Analysis) -> Figure:
    """Every layer metric against relative depth layer / L, one line per model."""
    if not analysis.results:
        return message_figure("no models analysed")
    n = len(LAYER_COLUMNS)
    ncols = 4 if n > 6 else 3
    nrows = math.ceil(n / ncols)
    fig = _figure(3.3 * ncols, 2.7 * nrows + 0.6)
    axes = fig.subplots(nrows, ncols, squeeze=False)
    palette = sns.color_palette("tab10", max(3, len(analysis.results)))
    markers = ["o", "s", "^", "D", "v", "P", "X", "*"]
    for k, col in enumerate(LAYER_COLUMNS):
        ax = axes[k // ncols][k % ncols]
        any_value = False
        for i, r in enumerate(analysis.results):
            layers, vals = _layer_table(r)
            depth = layers / max(1, r.trace.n_layers)
            y = vals[:, k]
            if np.isfinite(y).any():
                any_value = True
            ax.plot(depth, y, marker=markers[i % len(markers)], markersize=4, linewidth=1.5,
                    color=palette[i], label=f"{r.name} (L={r.trace.n_layers})")
            if col == "intrinsic_dim_twonn":  # its 95% bootstrap interval as a band
                lo, hi = r.layers.intrinsic_dim_twonn_ci_low, r.layers.intrinsic_dim_twonn_ci_high
                ax.fill_between(depth, lo, hi, color=palette[i], alpha=0.18, linewidth=0)
        ax.set_title(METRIC_LABELS.get(col, col) + (" (band: 95% interval)"
                                                     if col == "intrinsic_dim_twonn" else ""))
        ax.set_xlim(-0.04, 1.04)
        ax.set_xticks([0, 0.25, 0.5, 0.75, 1.0])
        if k // ncols == nrows - 1:
            ax.set_xlabel("relative depth (layer / L)")
        if not any_value:
            ax.text(0.5, 0.5, "undefined here", ha="center", va="center", color="#777777",
                    transform=ax.transAxes)
    for k in range(n, nrows * ncols):
        axes[k // ncols][k % ncols].set_axis_off()
    handles, labels = axes[0][0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="outside upper center", ncols=min(4, len(labels)),
               frameon=False)
    return fig


@_styled
def metric_correlation_heatmap(result: ModelResult) -> Figure:
    """Pearson correlation between layer metrics across layers (constant or empty ones skipped)."""
    _, vals = _layer_table(result)
    keep = []
    for k, col in enumerate(LAYER_COLUMNS):
        y = vals[:, k]
        ok = np.isfinite(y)
        if ok.sum() >= 3 and np.nanstd(y) > 1e-12 * max(1.0, float(np.nanmax(np.abs(y)))):
            keep.append((col, k))
    if len(keep) < 2:
        return message_figure(f"{result.name}: too few layers or varying metrics for a "
                              "correlation", title="metric correlation across layers")
    names = [METRIC_LABELS[c] for c, _ in keep]
    m = len(keep)
    corr = np.full((m, m), np.nan)
    for a, (_, ka) in enumerate(keep):
        for b, (_, kb) in enumerate(keep):
            x, y = vals[:, ka], vals[:, kb]
            ok = np.isfinite(x) & np.isfinite(y)
            if ok.sum() >= 3 and x[ok].std() > 0 and y[ok].std() > 0:
                corr[a, b] = float(np.corrcoef(x[ok], y[ok])[0, 1])
    fig = _figure(1.0 * m + 3.2, 0.85 * m + 2.0)
    ax = fig.add_subplot()
    im = _heatmap(fig, ax, corr, "RdBu_r", "Pearson r", vmin=-1, vmax=1)
    _annotate(ax, im, corr, ".2f", 8)
    ax.set_xticks(range(m))
    ax.set_xticklabels(names, rotation=45, ha="right", rotation_mode="anchor", fontsize=8)
    ax.set_yticks(range(m))
    ax.set_yticklabels(names, fontsize=8)
    _title(fig, ax, f"{result.name}: correlation of metrics across layers "
                    f"0..{result.trace.n_layers}")
    return fig


@_styled
def normalised_metric_heatmap(result: ModelResult, annotate: bool | None = None) -> Figure:
    """Metrics x layers, each metric min-max scaled to [0, 1] across layers; raw values written."""
    layers, vals = _layer_table(result)
    n_layers = len(layers)
    if annotate is None:
        annotate = n_layers <= 16
    norm = np.full(vals.T.shape, np.nan)
    names = []
    for k, col in enumerate(LAYER_COLUMNS):
        y = vals[:, k]
        lo, hi = (np.nanmin(y), np.nanmax(y)) if np.isfinite(y).any() else (np.nan, np.nan)
        if np.isfinite(lo) and hi > lo:
            norm[k] = (y - lo) / (hi - lo)
        elif np.isfinite(lo):
            norm[k] = np.where(np.isfinite(y), 0.5, np.nan)
        label = METRIC_LABELS[col]
        if np.isfinite(lo) and not hi > lo:
            label += " (constant)"
        elif not np.isfinite(lo):
            label += " (undefined)"
        names.append(label)
    fig = _figure(max(7.0, 0.62 * n_layers + 5.0), 4.8)
    ax = fig.add_subplot()
    im = _heatmap(fig, ax, norm, "viridis", "min-max scaled per metric", vmin=0, vmax=1)
    if annotate:
        for i in range(norm.shape[0]):
            for j in range(norm.shape[1]):
                v = vals[j, i]
                if np.isfinite(v):
                    r, g, b, _ = im.cmap(im.norm(norm[i, j]))
                    dark = 0.299 * r + 0.587 * g + 0.114 * b < 0.5
                    ax.text(j, i, format(v, ".3g"), ha="center", va="center",
                            fontsize=6.5 if n_layers > 10 else 7.5,
                            color="white" if dark else "black")
    ax.set_yticks(range(len(names)))
    ax.set_yticklabels(names)
    step = max(1, math.ceil(n_layers / 40))
    ax.set_xticks(range(0, n_layers, step))
    ax.set_xticklabels([str(int(v)) for v in layers[::step]])
    ax.set_xlabel("layer (0 = embeddings)")
    _title(fig, ax, f"{result.name}: layer metrics, each row scaled to [0, 1] across layers"
           + ("; cells show raw values" if annotate else ""))
    return fig


@_styled
def attention_entropy_heatmap(result: ModelResult) -> Figure:
    """Layers x heads of normalised head attention entropy (0 = one key, 1 = uniform)."""
    data = head_matrix(result, "attention_entropy")
    n_layers, n_heads = data.shape
    fig = _figure(0.55 * n_heads + 3.0, 0.4 * n_layers + 2.0)
    ax = fig.add_subplot()
    im = _heatmap(fig, ax, data, "viridis", "normalised entropy", vmin=0, vmax=1)
    if n_layers * n_heads <= 200:
        _annotate(ax, im, data, ".2f", 7 if n_heads > 8 else 8)
    _layer_head_axes(ax, n_layers, n_heads)
    _title(fig, ax, f"{result.name}: head attention entropy")
    return fig


def _pattern_size(n: int) -> float:
    return min(max(4.5, 0.24 * n + 2.5), 13.0)


@_styled
def attention_pattern(result: ModelResult, layer: int, head: int, keep: dict | None = None
                      ) -> Figure:
    """One head's attention pattern [query, key] with token labels; layer is 1-based.

    `keep` (see `_kept`): a dict in which the figure is kept and redrawn with new data."""
    _check_layer(result, layer)
    _check_head(result, head)
    t = result.trace
    att = t.attentions[int(layer) - 1, int(head)]
    return _pattern_figure(att, t.tokens,
                           f"{result.name}: layer {layer}, head {head}", "attention weight", keep)


def _kept(keep: dict | None, key: tuple, data: np.ndarray, vmax: float, title: str,
          suptitle: bool) -> Figure | None:
    """The figure kept under `key` in `keep`, redrawn with new image `data`, colour range
    [0, vmax] and `title`; None when there is none (or the new title wraps onto another
    number of lines, which moves the margins): build one then.

    A layer or head switch in the app draws the same figure with another layer's or head's
    data: everything else (axes, colour bar, token texts, margins) is the same, and building it
    is about a quarter of the switch. The caller holds FIGURE_LOCK until the figure is drawn
    (another thread may redraw it next). The result is pixel for pixel the figure a fresh build
    gives (tested)."""
    fig = keep.get(key) if keep is not None else None
    if fig is None:
        return None
    ax = fig.axes[0]
    artist = fig._suptitle if suptitle else ax.title
    new = _title_text(fig, title, suptitle)[0]
    if new.count("\n") != artist.get_text().count("\n"):
        return None
    artist.set_text(new)
    im = ax.images[0]
    im.set_data(np.ma.masked_invalid(data))
    im.set_clim(0, vmax)
    return fig


def kept_png(fig: Figure) -> bytes:
    """PNG bytes of a figure kept for redrawing (`_kept`), the same pixels as `fig.savefig`.

    The first call draws the whole figure without the parts a redraw changes (the image, the
    artists drawn over it, the title and the colour bar) and keeps that background; every call
    restores it and draws only those parts, in the order a full draw uses. The token texts,
    most of a switch's draw time, are drawn once. Call it under FIGURE_LOCK."""
    import matplotlib.image as mpimg
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    canvas = fig.canvas if isinstance(fig.canvas, FigureCanvasAgg) else FigureCanvasAgg(fig)
    ax, cax = fig.axes[0], fig.axes[1]
    im = ax.images[0]
    title = fig._suptitle if fig._suptitle is not None else ax.title
    parts = getattr(fig, "_kept_parts", None)
    if parts is None or parts[0] != (canvas.get_width_height(), fig.dpi):
        renderer = canvas.get_renderer()
        box = im.get_window_extent(renderer).padded(3)  # edges that touch it too
        # what a full draw puts over the image: later in z-order and overlapping it
        # (as Axes.draw: no axes patch, no spines when the frame is off)
        skip = {id(im), id(ax.title), id(ax.patch), id(ax.xaxis), id(ax.yaxis)}
        if not (ax.axison and ax.get_frame_on()):
            skip |= {id(sp) for sp in ax.spines.values()}
        over = sorted((a for a in ax.get_children()
                       if id(a) not in skip and a.get_visible()
                       and a.get_zorder() > im.get_zorder()
                       and a.get_window_extent(renderer).overlaps(box)),
                      key=lambda a: a.get_zorder())
        for a in (im, title, cax, *over):  # left out of the background
            a.set_animated(True)
        try:
            canvas.draw()
        finally:
            for a in (im, title, cax, *over):
                a.set_animated(False)
        parts = ((canvas.get_width_height(), fig.dpi), canvas.copy_from_bbox(fig.bbox), over)
        fig._kept_parts = parts
    _, background, over = parts
    canvas.restore_region(background)
    for a in (im, *over):
        ax.draw_artist(a)
    fig.draw_artist(title)
    fig.draw_artist(cax)
    buf = io.BytesIO()
    mpimg.imsave(buf, canvas.buffer_rgba(), format="png", origin="upper", dpi=fig.dpi)
    return buf.getvalue()


def _pattern_figure(att: np.ndarray, tokens: Sequence[str], title: str, label: str,
                    keep: dict | None = None) -> Figure:
    key = ("pattern", label, tuple(tokens), att.shape)
    vmax = max(1e-9, float(np.nanmax(att)))
    fig = _kept(keep, key, att, vmax, title, suptitle=False)
    if fig is not None:
        return fig
    n = len(tokens)
    size = _pattern_size(n)
    fig = _figure(size + 1.2, size, layout=None)
    ax = fig.add_subplot()
    _heatmap(fig, ax, att, "Blues", label, vmin=0, vmax=vmax, fraction=0.05)
    below = set_token_ticks(ax, tokens, "x", as_text=True)
    left = set_token_ticks(ax, tokens, "y", as_text=True)
    ax.set_xlabel("key (attended to)")
    ax.set_ylabel("query (attending)")
    _title(fig, ax, title)
    _margins(fig, ax, left_inches=left, bottom_inches=below)
    # the axis labels outside the token texts (there are no tick labels to place them by)
    box = ax.get_position()
    w, h = box.width * fig.get_figwidth(), box.height * fig.get_figheight()
    ax.xaxis.set_label_coords(0.5, -(below + 0.1) / h)
    ax.yaxis.set_label_coords(-(left + 0.1) / w, 0.5)
    if keep is not None:
        keep[key] = fig
    return fig


@_styled
def head_grid(result: ModelResult, layer: int, keep: dict | None = None) -> Figure:
    """Every head of one layer as small multiples, one shared colour scale.

    Drawn as one image (the heads' patterns tiled with white gaps, `head_mosaic`) on one axes:
    a layer switch in the app redraws it, and one axes renders several times faster than one
    per head (TinyLlama-1.1B has 32 heads). `keep`: as for `attention_pattern`."""
    _check_layer(result, layer)
    t = result.trace
    att = np.asarray(t.attentions[int(layer) - 1], dtype=np.float32)  # [head, query, key]
    n_heads, q, k = att.shape
    mosaic, origins = head_mosaic(att)
    vmax = max(1e-9, float(np.nanmax(att)))
    title = f"{result.name}: all heads of layer {layer} (rows = queries, columns = keys)"
    key = ("grid", tuple(t.tokens), att.shape)
    fig = _kept(keep, key, mosaic, vmax, title, suptitle=True)
    if fig is not None:
        return fig
    ncols = len({c0 for _, c0 in origins})
    nrows = len({r0 for r0, _ in origins})
    panel = 2.6 if n_heads <= 16 else 1.9
    fig = _figure(panel * ncols + 1.0, panel * nrows + 0.6, layout=None)
    ax = fig.add_subplot()
    _heatmap(fig, ax, mosaic, "Blues", "attention weight", vmin=0, vmax=vmax,
             nan_colour="white", fraction=0.05)
    ax.set_frame_on(False)
    label_tokens = q <= 16 and n_heads <= 16
    for h, (r0, c0) in enumerate(origins):
        ax.add_patch(Rectangle((c0 - 0.5, r0 - 0.5), k, q, fill=False,
                               edgecolor="#888888", linewidth=0.6, clip_on=False))
        ax.text(c0 + (k - 1) / 2, r0 - 0.6, f"head {h}", ha="center", va="bottom", fontsize=9)
    ax.set_xticks([])
    ax.set_yticks([])
    if label_tokens:  # plain texts, not ticks: a tick is four artists, and most of the draw time
        labels = [token_label(s) for s in t.tokens]
        bottom = mosaic.shape[0] - 0.5
        for r0 in sorted({r0 for r0, _ in origins}):
            for i, label in enumerate(labels):
                ax.text(-0.8, r0 + i, label, ha="right", va="center", fontsize=6)
        for c0 in sorted({c0 for _, c0 in origins}):
            for j, label in enumerate(labels):
                ax.text(c0 + j, bottom + 0.3, label, ha="center", va="top", fontsize=6,
                        rotation=90)
    _suptitle(fig, title)
    longest = max((len(token_label(s)) for s in t.tokens), default=0) if label_tokens else 0
    _margins(fig, ax, left_inches=longest * 0.6 * 6 / 72, bottom_inches=longest * 0.6 * 6 / 72)
    if keep is not None:
        keep[key] = fig
    return fig


def _gap(q: int) -> int:
    """White space between heads in `head_mosaic`, in cells: room for a 'head h' label."""
    return max(1, math.ceil(0.12 * q))


def head_mosaic(att: np.ndarray) -> tuple[np.ndarray, list[tuple[int, int]]]:
    """`att  # [head, query, key]` tiled row-major into about-square rows and columns with NaN
    gaps: (mosaic, [(top row, left column) of each head's panel])."""
    n_heads, q, k = att.shape
    ncols = min(n_heads, max(1, math.ceil(math.sqrt(n_heads))))
    nrows = math.ceil(n_heads / ncols)
    gap = _gap(q)
    mosaic = np.full((nrows * q + (nrows - 1) * gap + gap, ncols * k + (ncols - 1) * gap),
                     np.nan, dtype=np.float32)
    origins = []
    for h in range(n_heads):
        r, c = divmod(h, ncols)
        r0, c0 = gap + r * (q + gap), c * (k + gap)  # a gap on top for the first row's labels
        mosaic[r0:r0 + q, c0:c0 + k] = att[h]
        origins.append((r0, c0))
    return mosaic, origins


ROLE_MARKERS = {"previous": "<", "first": "s", "self": "o", "induction": "*", "mixed": "X"}


@_styled
def head_clusters(result: ModelResult) -> Figure:
    """Heads in the 2-D projection of their behaviour features, coloured by cluster."""
    proj = np.asarray(result.heads.projection, dtype=np.float64)
    labels = result.heads.cluster.reshape(-1)
    n = labels.size
    if proj.size == 0 or n == 0:
        return message_figure("no heads to cluster", title=f"{result.name}: head clusters")
    n_heads = result.heads.shape[1]
    fig = _figure(8.0 if n <= 64 else 10.0, 6.0 if n <= 64 else 7.5)
    ax = fig.add_subplot()
    clusters = sorted({int(c) for c in labels})
    palette = sns.color_palette("tab10", max(3, len(clusters)))
    roles = [str(r) for r in result.heads.role.reshape(-1)]
    for ci, c in enumerate(clusters):
        for role, marker in ROLE_MARKERS.items():
            idx = [i for i in range(n) if int(labels[i]) == c and roles[i] == role]
            if idx:
                ax.scatter(proj[idx, 0], proj[idx, 1], s=110 if role == "induction" else 55,
                           marker=marker, color=palette[ci % len(palette)], edgecolor="black",
                           linewidth=0.5, zorder=3)
    fs = 7 if n <= 48 else (6 if n <= 150 else 5)
    # with many heads label only those with a clear role (the rest would be an unreadable blur)
    labelled = [i for i in range(n) if n <= MAX_HEAD_LABELS or roles[i] != "mixed"]
    if len(labelled) > MAX_HEAD_LABELS:
        labelled = []
    for i in labelled:
        ax.annotate(f"L{i // n_heads + 1}H{i % n_heads}", (proj[i, 0], proj[i, 1]), fontsize=fs,
                    xytext=(3, 3), textcoords="offset points", color="#333333")
    from matplotlib.lines import Line2D

    cluster_handles = [Line2D([], [], marker="o", linestyle="", color=palette[ci % len(palette)],
                              markeredgecolor="black", label=f"cluster {c}")
                       for ci, c in enumerate(clusters)]
    role_handles = [Line2D([], [], marker=m, linestyle="", color="#999999",
                           markeredgecolor="black", label=f"{r}")
                    for r, m in ROLE_MARKERS.items() if r in roles]
    leg1 = ax.legend(handles=cluster_handles, title="cluster", loc="upper left",
                     bbox_to_anchor=(1.01, 1.0), borderaxespad=0, frameon=False)
    ax.add_artist(leg1)
    ax.legend(handles=role_handles, title="dominant role", loc="lower left",
              bbox_to_anchor=(1.01, 0.0), borderaxespad=0, frameon=False)
    ax.set_xlabel("PC 1 of standardised head features")
    ax.set_ylabel("PC 2")
    note = "" if len(labelled) == n else (f"; {len(labelled)} heads with a clear role labelled"
                                          if labelled else "; too many heads to label")
    _title(fig, ax, f"{result.name}: head clusters ({n} heads, {len(clusters)} clusters{note})")
    return fig


@_styled
def token_attribution(result: ModelResult) -> Figure:
    """Gradient x input and attention rollout per token for the predicted token."""
    attr = result.attribution
    if attr is None:
        return message_figure("no prediction to attribute",
                              title=f"{result.name}: token attribution")
    gxi = [] if attr.grad_x_input is None else list(attr.grad_x_input)
    roll = list(attr.rollout)
    tokens = result.trace.tokens
    pos = attr.position
    n = len(tokens)
    panels = [(name, np.asarray(v, dtype=np.float64)) for name, v in
              (("gradient × input", gxi), ("attention rollout", roll)) if v]
    fig = _figure(min(16.0, max(6.0, 0.3 * n + 2.0)), 2.7 * len(panels) + 1.2)
    axes = fig.subplots(len(panels), 1, squeeze=False, sharex=True)[:, 0]
    x = np.arange(n)
    for ax, (name, v) in zip(axes, panels, strict=True):
        if name.startswith("gradient"):
            colours = ["#c0392b" if val > 0 else "#2c7fb8" for val in v]
        else:
            colours = ["#6a51a3"] * len(v)
        if pos is not None and 0 <= pos < len(v):
            colours[pos] = "#f39c12"
        ax.bar(x[:len(v)], v, color=colours, width=0.8)
        ax.axhline(0, color="black", linewidth=0.6)
        ax.set_ylabel(name)
        ax.grid(axis="x", visible=False)
        ax.set_xlim(-0.6, n - 0.4)
    set_token_ticks(axes[-1], tokens, "x")
    if not gxi:
        axes[0].set_title("(gradient × input not computed)", fontsize=9)
    target = attr.target
    where = (f" at position {pos} (“{token_label(tokens[pos])}”)"
             if pos is not None and 0 <= pos < n else "")
    _suptitle(fig, f"{result.name}: why “{token_label(target, 24)}”? "
                   f"Attribution to each input token, read{where}")
    return fig


@_styled
def head_attribution_heatmap(result: ModelResult) -> Figure:
    """Layers x heads of each head's support for the prediction: log p(target | all heads) -
    log p(target | head removed), exact (ablation) or its first-order estimate (gradient)."""
    attr = result.attribution
    if attr is None or result.heads.attribution is None:
        return message_figure("no prediction to attribute",
                              title=f"{result.name}: head attribution")
    data = np.asarray(result.heads.attribution, dtype=np.float64)
    n_layers, n_heads = data.shape
    fig = _figure(0.55 * n_heads + 3.2, 0.4 * n_layers + 2.0)
    ax = fig.add_subplot()
    lim = float(np.nanmax(np.abs(data))) if np.isfinite(data).any() else 0.0
    lim = lim if lim > 0 else 1.0
    im = _heatmap(fig, ax, data, "RdBu_r", "support = log p(all) − log p(head removed)",
             norm=TwoSlopeNorm(vcenter=0.0, vmin=-lim, vmax=lim))
    if n_layers * n_heads <= 120:
        _annotate(ax, im, data, ".2g", 6.5)
    _layer_head_axes(ax, n_layers, n_heads)
    method = result.heads.attribution_method
    how = ("exact, by ablation" if method == "ablation"
           else "first-order (gradient) estimate")
    _title(fig, ax, f"{result.name}: head support for “{token_label(attr.target)}”"
           f" ({how}); red supports", fontsize=10)
    return fig


@_styled
def logit_lens(result: ModelResult) -> Figure:
    """Top-token probability at every layer 0..L and position, the top token written in the cell."""
    lens = result.lens
    if lens is None or not lens.top_tokens:
        return message_figure("this model has no LM head: no logit lens",
                              title=f"{result.name}: logit lens")
    tokens = result.trace.tokens
    n = len(tokens)
    probs = np.asarray(lens.top_probs, dtype=np.float64)
    tops = lens.top_tokens
    positions = list(lens.positions)
    # at most the last LENS_POSITIONS columns, plus the position(s) whose prediction is shown
    window = set(sorted(positions)[-LENS_POSITIONS:]) | set(lens.predicted)
    cols = [i for i, p in enumerate(positions) if p in window]
    positions = [positions[i] for i in cols]
    probs = probs[:, cols]
    texts = [[token_label(row[i], 9) for i in cols] for row in tops]
    n_layers1, shown = probs.shape
    fig = _figure(0.78 * shown + 3.0, 0.36 * n_layers1 + 2.2)
    ax = fig.add_subplot()
    im = _heatmap(fig, ax, probs, "magma", "top-token probability", vmin=0, vmax=1)
    fs = 7 if shown <= 12 else 6
    if n_layers1 > 30:
        fs = 5
    _annotate(ax, im, probs, "", fs, texts=texts)
    partial = positions != list(range(n))
    set_token_ticks(ax, [tokens[p] for p in positions], "x", show_index=partial, indices=positions)
    ax.set_xlabel("input position (token)")
    step = max(1, math.ceil(n_layers1 / 40))
    ax.set_yticks(range(0, n_layers1, step))
    ax.set_yticklabels([str(v) for v in range(0, n_layers1, step)])
    ax.set_ylabel("layer (0 = embeddings)")
    note = f" ({shown} of {n} positions, the predicted one included)" if partial else ""
    _title(fig, ax, f"{result.name}: logit lens, top token per layer and position{note}")
    return fig


@_styled
def induction_heatmap(result: ModelResult) -> Figure:
    """Induction score (repeated random sequence) and previous-token score, layers x heads."""
    ind = head_matrix(result, "induction_score")
    prev = head_matrix(result, "previous_token_score")
    n_layers, n_heads = prev.shape
    fig = _figure(2 * (0.5 * n_heads + 2.6), 0.4 * n_layers + 2.2)
    axes = fig.subplots(1, 2, squeeze=False)[0]
    for ax, data, name in ((axes[0], ind, "induction score"),
                           (axes[1], prev, "previous-token score")):
        im = _heatmap(fig, ax, data, "rocket_r" if "induction" in name else "mako_r", name,
                      vmin=0, vmax=1)
        if n_layers * n_heads <= 120:
            _annotate(ax, im, data, ".2f", 6.5)
        _layer_head_axes(ax, n_layers, n_heads)
        ax.set_title(name)
    _suptitle(fig, f"{result.name}: induction heads and previous-token heads")
    return fig


# ---------------------------------------------------------------------------------------------
# animation


def _projection(result: ModelResult) -> np.ndarray:
    """The hidden states on one shared 2-D basis, `[layer + 1, token, 2]`, computed once by the
    analysis (analysis.attention.shared_projection)."""
    if result.hidden_projection is not None:
        return result.hidden_projection
    from analysis.attention import shared_projection

    return shared_projection(result.trace.hidden)


def _transition_kind(kind: str) -> tuple[bool, bool]:
    if kind not in ("attention", "hidden", "both"):
        raise ValueError(f"kind must be 'attention', 'hidden' or 'both', got {kind!r}")
    return kind in ("attention", "both"), kind in ("hidden", "both")


@_styled
def _transition_figure(result: ModelResult, kind: str, projection: np.ndarray | None
                       ) -> tuple[Figure, Callable[[int], None], list]:
    """The animation's figure, `update(layer)` that changes it to layer 0..L in place, and the
    artists that change between frames (everything else is drawn once and blitted).

    One figure for all frames: the layout is computed once, so nothing jumps between frames.
    """
    dynamic: list = []
    t = result.trace
    n_layers, n = t.n_layers, t.n_tokens
    show_att, show_pca = _transition_kind(kind)
    n_panels = int(show_att) + int(show_pca)
    fig = _figure(5.4 * n_panels + 0.6, 5.0)
    axes = list(fig.subplots(1, n_panels, squeeze=False)[0])
    updates: list[Callable[[int], None]] = []
    if show_att:
        ax = axes.pop(0)
        im = _heatmap(fig, ax, np.zeros((n, n)), "Blues", "mean attention (square-root scale)",
                      norm=PowerNorm(gamma=0.5, vmin=0.0, vmax=1.0))
        set_token_ticks(ax, t.tokens, "x")
        set_token_ticks(ax, t.tokens, "y")
        ax.tick_params(labelsize=min(7, _tick_fontsize(n)))
        ax.set_xlabel("key")
        ax.set_ylabel("query")
        ax.set_title("attention, mean over heads")
        msg = ax.text(0.5, 0.5, "layer 0 = embeddings\n(no attention)", ha="center",
                      va="center", transform=ax.transAxes, color="#555555", visible=False)
        dynamic += [im, msg]

        def update_att(layer: int) -> None:
            if layer >= 1:
                im.set_data(t.attentions[layer - 1].mean(axis=0, dtype=np.float64))
                release_pages(t.attentions)
            im.set_visible(layer >= 1)
            msg.set_visible(layer < 1)

        updates.append(update_att)
    if show_pca:
        ax = axes.pop(0)
        proj = _projection(result) if projection is None else projection
        lo, hi = proj.reshape(-1, 2).min(0), proj.reshape(-1, 2).max(0)
        pad = 0.08 * np.maximum(hi - lo, 1e-9)
        # more room on the right and top: the token labels sit up and right of their points
        ax.set_xlim(lo[0] - pad[0], hi[0] + 2.5 * pad[0])
        ax.set_ylim(lo[1] - pad[1], hi[1] + 1.5 * pad[1])
        colours = matplotlib.colormaps["viridis"](np.linspace(0, 1, max(1, n)))
        sc = ax.scatter(proj[0][:, 0], proj[0][:, 1], c=colours, s=30, edgecolor="black",
                        linewidth=0.4, zorder=3)
        line = (ax.plot(proj[0][:, 0], proj[0][:, 1], color="#bbbbbb", linewidth=0.6,
                        zorder=2)[0] if 1 < n <= 20 else None)
        step = _tick_step(n)
        fs = _tick_fontsize(n // step)
        labels = [(j, ax.annotate(token_label(t.tokens[j], 10), proj[0][j], fontsize=fs,
                                  xytext=(3, 2), textcoords="offset points"))
                  for j in range(0, n, step)]
        dynamic += [sc] + ([line] if line is not None else []) + [a for _, a in labels]
        ax.set_xlabel("shared PC 1")
        ax.set_ylabel("shared PC 2")
        ax.set_title("hidden states (shared PCA; colour = position)")

        def update_pca(layer: int) -> None:
            xy = proj[layer]
            sc.set_offsets(xy)
            if line is not None:
                line.set_data(xy[:, 0], xy[:, 1])
            for j, ann in labels:
                ann.xy = (float(xy[j, 0]), float(xy[j, 1]))

        updates.append(update_pca)
    title = fig.suptitle(f"{result.name}: layer {n_layers} / {n_layers}")
    dynamic.append(title)

    def update(layer: int) -> None:
        if not 0 <= layer <= n_layers:
            raise UserError(f"Layer {layer} does not exist: '{result.name}' has layers "
                            f"0..{n_layers}.")
        for u in updates:
            u(layer)
        title.set_text(f"{result.name}: layer {layer} / {n_layers}")

    return fig, update, dynamic


def layer_transition_frame(result: ModelResult, layer: int, kind: str = "attention",
                           projection: np.ndarray | None = None) -> Figure:
    """One frame of the layer animation: mean-over-heads attention and/or hidden-state PCA.

    `layer` 0..L (the attention panel is empty on layer 0, the embeddings). `projection`
    `[layer + 1, token, 2]` defaults to the result's shared projection.
    """
    fig, update, _ = _transition_figure(result, kind, projection)
    update(int(layer))
    return fig


def layer_transition_gif(result: ModelResult, path: str | os.PathLike, kind: str = "attention",
                         dpi: float = 100, frame_ms: int = 900) -> Path:
    """An animated GIF stepping through the layers; returns `path`.

    kind="attention": frame l shows layer l's attention averaged over heads (layers 1..L);
    "hidden": a 2-D PCA of layer l's hidden states with token labels (layers 0..L, one basis
    and fixed axes for all frames); "both": side by side. Kept under 2 MB by lowering the
    resolution when needed. Written to a temporary name first, then moved into place.
    """
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from PIL import Image

    path = Path(path)
    _transition_kind(kind)
    t = result.trace
    layers = list(range(1 if kind == "attention" else 0, t.n_layers + 1))
    projection = _projection(result) if kind != "attention" else None
    tmp = path.with_name(f".{path.name}.part")
    try:
        for attempt in range(4):
            fig, update, dynamic = _transition_figure(result, kind, projection)
            fig.set_dpi(dpi)
            canvas = FigureCanvasAgg(fig)
            for artist in dynamic:
                artist.set_animated(True)
            update(layers[0])
            canvas.draw()  # layout and every static artist, once
            fig.set_layout_engine("none")
            background = canvas.copy_from_bbox(fig.bbox)
            frames = []
            for layer in layers:
                update(layer)
                canvas.restore_region(background)
                for artist in dynamic:
                    fig.draw_artist(artist)
                rgba = np.asarray(canvas.buffer_rgba())
                frames.append(Image.fromarray(rgba[..., :3].copy()).quantize(
                    colors=128, method=Image.Quantize.FASTOCTREE, dither=Image.Dither.NONE))
            plt.close(fig)
            durations = [frame_ms] * len(frames)
            durations[-1] = frame_ms * 2
            frames[0].save(tmp, format="GIF", save_all=True, append_images=frames[1:],
                           duration=durations, loop=0, optimize=True, disposal=1)
            size = tmp.stat().st_size
            if size <= GIF_MAX_BYTES or attempt == 3:
                break
            log.info("layer_transition_gif: %d bytes at %d dpi, retrying smaller", size, dpi)
            dpi *= 0.7
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    return path


# ---------------------------------------------------------------------------------------------
# the standard set (used by the PDF and the bundle)


@dataclass(frozen=True)
class FigureSpec:
    name: str  # file stem, e.g. "tiny-gpt2_logit_lens" (model part made file-safe by caller)
    model: str | None  # None for figures of the whole analysis
    title: str
    caption: str  # what it shows and how to read it
    make: Callable[[], Figure]


CAPTIONS = {
    "layer_metric_curves": (
        "Layer metrics against relative depth",
        "Each panel is one metric from the Definitions; the x axis is layer / L (0 = embedding "
        "output, 1 = last block) so models with different depths overlay. Rising effective rank "
        "or participation ratio means the tokens spread over more directions; rising anisotropy "
        "means the token vectors point the same way; falling cosine to input means the layer has "
        "moved far from the embeddings."),
    "metric_correlation_heatmap": (
        "Correlation of metrics across layers",
        "Pearson r between two metrics computed over the layers of this model (red = move "
        "together, blue = move oppositely). Metrics that are constant or undefined are left out. "
        "With few layers the correlations rest on few points: read them as descriptive."),
    "normalised_metric_heatmap": (
        "Layer metrics, normalised",
        "Rows are metrics, columns layers (0 = embeddings). Each row is min-max scaled over the "
        "layers so the colours show where a metric is high or low relative to itself; the "
        "numbers in the cells are the raw values. Grey: undefined at that layer."),
    "attention_entropy_heatmap": (
        "Head attention entropy",
        "Normalised entropy of each head's attention rows, averaged over rows: 0 = every query "
        "looks at a single key, 1 = attention spread uniformly over all allowed keys."),
    "attention_pattern": (
        "Attention pattern of one head",
        "Rows are queries (the attending token), columns keys (the attended token); each row "
        "sums to 1. A bright diagonal just below the main diagonal is a previous-token head, "
        "a bright first column an attention sink on the first token. Causal models attend only "
        "to the left (upper triangle empty). Shown for the head with the highest induction "
        "score."),
    "head_grid": (
        "All heads of the last layer",
        "Each panel is one head's [query, key] pattern as in the single-head figure, on one "
        "shared colour scale, to compare what the heads of a layer do."),
    "head_clusters": (
        "Head clusters",
        "Each point is a head (L = layer, H = head), placed by the first two principal "
        "components of its standardised behaviour features (previous-token, first-token and "
        "self scores, entropy, mean attention distance) and coloured by its k-means cluster. "
        "The marker gives its dominant role (score >= 0.4), 'mixed' otherwise."),
    "token_attribution": (
        "Token attribution",
        "How much each input token contributes to the predicted token. Top: gradient x input "
        "(red raises the log-probability, blue lowers it). Bottom: attention rollout, the share "
        "of attention flowing from the prediction position back to each token. The orange bar "
        "is the position where the prediction is read."),
    "head_attribution_heatmap": (
        "Head attribution",
        "Each head's support for the predicted token, log p(target | all heads) - log p(target | "
        "head removed): red heads support the prediction, blue heads work against it. Ablation "
        "computes it exactly (the head's output zeroed); the gradient method is its first-order "
        "estimate, d log p / d g at gate g = 1."),
    "logit_lens": (
        "Logit lens",
        "The hidden state of every layer at the last (up to 24) positions decoded with the model's "
        "own output head: "
        "the cell text is the top token and the colour its probability. Read a column top to "
        "bottom to see when the final prediction emerges."),
    "induction_heatmap": (
        "Induction and previous-token heads",
        "Left: induction score on a repeated random sequence (attention from a token to the "
        "token after its previous occurrence; 1 = perfect induction head). Right: "
        "previous-token score on the prompt (mean attention to the immediately preceding "
        "token)."),
}


def file_safe(name: str) -> str:
    """A model name usable in a file name: anything but letters, digits, '.', '-' becomes '_'."""
    s = re.sub(r"[^A-Za-z0-9.-]+", "_", str(name)).strip("._")
    return s or "model"


def model_file_names(analysis: Analysis) -> dict[str, str]:
    """{model name: file-safe name}, made unique ('_2', '_3', ... on a collision)."""
    out: dict[str, str] = {}
    used: set[str] = set()
    for r in analysis.results:
        base = file_safe(r.name)
        name, k = base, 2
        while name.lower() in used:
            name, k = f"{base}_{k}", k + 1
        used.add(name.lower())
        out[r.name] = name
    return out


def standard_figures(analysis: Analysis) -> list[FigureSpec]:
    """The report's figures, in order: one for the analysis, then each model's figures.

    Spec names are file stems: `<file-safe model>_<figure>` (`model_file_names`). Figures are
    built lazily by `spec.make()`; the single-head pattern is drawn for the head with the
    highest induction score and the head grid for the last layer.
    """
    names = model_file_names(analysis)
    specs = []
    title, caption = CAPTIONS["layer_metric_curves"]
    specs.append(FigureSpec("layer_metric_curves", None, title, caption,
                            functools.partial(layer_metric_curves, analysis)))
    for r in analysis.results:
        stem = names[r.name]
        layer, head, _ = r.heads.top("induction_score")
        for fn_name, fn, args, extra in (
                ("normalised_metric_heatmap", normalised_metric_heatmap, (), ""),
                ("metric_correlation_heatmap", metric_correlation_heatmap, (), ""),
                ("attention_entropy_heatmap", attention_entropy_heatmap, (), ""),
                ("induction_heatmap", induction_heatmap, (), ""),
                ("attention_pattern", attention_pattern, (layer, head),
                 f" (layer {layer}, head {head})"),
                ("head_grid", head_grid, (r.trace.n_layers,), f" (layer {r.trace.n_layers})"),
                ("head_clusters", head_clusters, (), ""),
                ("token_attribution", token_attribution, (), ""),
                ("head_attribution_heatmap", head_attribution_heatmap, (), ""),
                ("logit_lens", logit_lens, (), "")):
            title, caption = CAPTIONS[fn_name]
            specs.append(FigureSpec(f"{stem}_{fn_name}", r.name, f"{title}: {r.name}{extra}",
                                    caption, functools.partial(fn, r, *args)))
    return specs


def save_png(fig: Figure, path: str | os.PathLike, dpi: float = 110) -> Path:
    """Write a figure as PNG and release it (no open figures pile up in a server)."""
    path = Path(path)
    try:
        with FIGURE_LOCK:
            fig.savefig(path, format="png", dpi=dpi)
    finally:
        plt.close(fig)
    return path


def render_pngs(analysis: Analysis, folder: str | os.PathLike, dpi: float = 110
                ) -> dict[str, Path]:
    """Save every standard figure into `folder` as `<spec.name>.png`; {name: path} in order."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    out = {}
    for spec in standard_figures(analysis):
        out[spec.name] = save_png(spec.make(), folder / f"{spec.name}.png", dpi)
    return out


# ---------------------------------------------------------------------------------------------
# diffusion generation (a GenerationResult or a compare result in, a Figure out)

DIFFUSION_METRICS = [  # (label, GenerationResult attribute, scale, format)
    ("seconds", "seconds", 1.0, "{:.4f}"),
    ("tokens / s", "tokens_per_second", 1.0, "{:.1f}"),
    ("forward passes (NFE)", "nfe", 1.0, "{:.0f}"),
    ("steps", "steps", 1.0, "{:.0f}"),
    ("ms per token", "time_per_token", 1000.0, "{:.3f}"),
    ("peak memory (MB)", "peak_memory_mb", 1.0, "{:.2f}"),
]


@_styled
def decode_heatmap(result) -> Figure:
    """Positions x steps: the top-1 probability of each still-masked position in every step's
    forward pass (colour), the step that committed it (black box, its token written in), grey
    once committed."""
    from matplotlib.patches import Rectangle

    from models.interactive import decode_table

    table = decode_table(result)
    n, s = len(table.tokens), len(result.trace)
    if n == 0 or s == 0:
        return message_figure("Nothing generated.")
    data = np.array(table.best, dtype=np.float64)  # [position, step]
    after = np.zeros_like(data, dtype=bool)
    for p, cs in enumerate(table.commit_step):
        if cs is not None:
            after[p, cs:] = True
    fig = _figure(min(max(7.0, 3.2 + 0.42 * s), 16), min(max(2.6, 1.6 + 0.32 * n), 14))
    ax = fig.add_subplot()
    grey = np.where(after, 1.0, np.nan)
    ax.imshow(np.ma.masked_invalid(grey), cmap=matplotlib.colors.ListedColormap(["#e4e4e4"]),
              aspect="auto", interpolation="nearest", vmin=0, vmax=1)
    cm = matplotlib.colormaps["viridis"].with_extremes(bad=(1, 1, 1, 0))
    im = ax.imshow(np.ma.masked_invalid(data), cmap=cm, vmin=0, vmax=1, aspect="auto",
                   interpolation="nearest")
    ax.grid(False)
    cb = fig.colorbar(im, ax=ax, shrink=0.9, pad=0.02)
    cb.set_label("top-1 probability")
    write = n * s <= 600
    for p, cs in enumerate(table.commit_step):
        if cs is None:
            continue
        ax.add_patch(Rectangle((cs - 1 - 0.5, p - 0.5), 1, 1, fill=False, lw=1.6, ec="black"))
        if write:
            conf = table.commit_confidence[p] or 0.0
            ax.text(cs - 1, p, token_label(table.tokens[p], 8), ha="center", va="center",
                    fontsize=7, color="white" if conf < 0.55 else "black")
    ax.set_xlabel("step")
    ax.set_ylabel("position: final token")
    xstep = max(1, math.ceil(s / 30))
    ax.set_xticks(range(0, s, xstep))
    ax.set_xticklabels([str(i + 1) for i in range(0, s, xstep)])
    ystep = max(1, math.ceil(n / 40))
    ax.set_yticks(range(0, n, ystep))
    ax.set_yticklabels([f"{p}: {token_label(table.tokens[p], 10)}" for p in range(0, n, ystep)],
                       fontsize=8)
    title = f"{result.model} ({result.paradigm}): when each position was decoded (box)"
    end = result.trace[-1].end if result.trace else None
    if end is not None:  # the end-of-sequence token and what follows: canvas, not content
        for p, label in zip(range(0, n, ystep), ax.get_yticklabels(), strict=True):
            if p >= end:
                label.set_color("#9a9a9a")
        ax.axhspan(end - 0.5, n - 0.5, color="white", alpha=0.55, lw=0, zorder=2.5)
        ax.axhline(end - 0.5, color="#d62728", lw=1.4, ls="--", zorder=2.6)
        title += f"\nred line: end of sequence (#{end}); greyed: canvas, not content"
    _title(fig, ax, title)
    return fig


def _annotated_bars(ax, names, values, colours, fmt) -> None:
    bars = ax.bar(names, [0 if math.isnan(v) else v for v in values], color=colours)
    for b, v in zip(bars, values, strict=True):
        ax.annotate("n/a" if math.isnan(v) else fmt.format(v),
                    (b.get_x() + b.get_width() / 2, b.get_height()), ha="center", va="bottom",
                    fontsize=8, xytext=(0, 2), textcoords="offset points")
    ax.margins(y=0.18)


@_styled
def metric_bars(results: list) -> Figure:
    """One small bar chart per metric of models.generation.BAR_METRICS (content tokens, not
    canvas positions), one bar per generation."""
    import textwrap

    from models.generation import BAR_METRICS, RESULT_METRICS

    colours = {"diffusion": "#4c72b0", "autoregressive": "#dd8452"}
    metrics = [m for m in RESULT_METRICS if m[1] in BAR_METRICS]
    fig = _figure(13, 3.4)
    axes = fig.subplots(1, len(metrics))
    for ax, (label, attr, scale, fmt) in zip(axes, metrics, strict=True):
        names = [r.paradigm.replace("autoregressive", "autoregr.") for r in results]
        values = [math.nan if getattr(r, attr) is None else float(getattr(r, attr)) * scale
                  for r in results]
        _annotated_bars(ax, names, values, [colours.get(r.paradigm, "#888") for r in results], fmt)
        ax.set_title("\n".join(textwrap.wrap(label, 18)), fontsize=10)
        ax.tick_params(axis="x", labelsize=8)
    _suptitle(fig, " vs ".join(f"{r.model} ({r.paradigm})" for r in results))
    return fig


@_styled
def compare_bars(result: dict) -> Figure:
    """Accuracy, content tokens/s, content tokens per forward pass, mean forward passes, mean
    seconds and peak memory per paradigm (content: tokens before the first end-of-sequence)."""
    import textwrap

    panels = [("accuracy", "accuracy", "{:.0%}"),
              ("content tokens / s", "tokens_per_second", "{:.0f}"),
              ("content tokens per forward pass", "tokens_per_forward_pass", "{:.2f}"),
              ("mean forward passes", "mean_nfe", "{:.1f}"),
              ("mean seconds per prompt", "mean_seconds", "{:.4f}"),
              ("peak memory (MB)", "peak_memory_mb", "{:.3f}")]
    fig = _figure(14, 3.4)
    axes = fig.subplots(1, len(panels))
    for ax, (label, key, fmt) in zip(axes, panels, strict=True):
        values = [math.nan if result[p].get(key) is None else float(result[p][key])
                  for p in ("diffusion", "autoregressive")]
        _annotated_bars(ax, ["diffusion", "autoregr."], values, ["#4c72b0", "#dd8452"], fmt)
        ax.set_title("\n".join(textwrap.wrap(label, 18)), fontsize=10)
        if key == "accuracy":
            ax.set_ylim(0, 1.15)
    n = result["diffusion"]["runs"]
    _suptitle(fig, f"{result['diffusion']['model']} (diffusion) vs "
                   f"{result['autoregressive']['model']} (autoregressive), {n} runs each")
    return fig
