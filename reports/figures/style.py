"""The house style and the small drawing helpers every figure shares.

Figures are built with `matplotlib.figure.Figure` (not pyplot), so a server never accumulates
open figures. Conventions: `layer` counts blocks from 1 (layer 0 = the embedding output);
`attentions  # [layer, head, query, key]`; `hidden  # [layer + 1, token, d_model]`.
"""

from __future__ import annotations

import functools
import math
import textwrap
import threading
from collections.abc import Callable, Sequence

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import seaborn as sns  # noqa: E402
from matplotlib.figure import Figure  # noqa: E402

from analysis.result import ModelResult  # noqa: E402
from models.common import UserError  # noqa: E402

# seaborn "whitegrid" + "notebook", applied per figure through rc_context (no global state).
# Only settings artists read when they are created: a figure is drawn (saved) outside the style,
# so nothing here may be read at draw time (no "savefig.*": save_png passes its dpi).
STYLE = {**sns.axes_style("whitegrid"), **sns.plotting_context("notebook"),
         "figure.dpi": 100, "axes.titlesize": 11, "axes.labelsize": 10,
         "xtick.labelsize": 9, "ytick.labelsize": 9, "legend.fontsize": 9,
         "figure.titlesize": 13, "axes.titleweight": "normal"}
MAX_TICK_LABELS = 60  # with more tokens every k-th label is shown

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


# rc_context swaps matplotlib's process-global rcParams, which artists read when they are
# created: two threads building figures at once would read each other's settings (or restore
# them out of order and leave them behind). Building a figure holds this lock. Drawing (saving)
# needs none: figures are separate objects, matplotlib keeps its font objects per thread, and
# STYLE holds nothing that is read at draw time.
STYLE_LOCK = threading.RLock()


def _styled(fn: Callable) -> Callable:
    """Run a figure function under the house matplotlib/seaborn style."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        with STYLE_LOCK, plt.rc_context(STYLE):
            return fn(*args, **kwargs)

    return wrapper


def _figure(width: float, height: float, layout: str | None = "constrained") -> Figure:
    return Figure(figsize=(min(max(width, 3.0), 18.0), min(max(height, 2.5), 18.0)),
                  layout=layout)


def _margins(fig: Figure, ax, colourbar: bool = True, left_inches: float = 0.0,
             bottom_inches: float = 0.0) -> None:
    """Fixed margins from the labels' lengths (about 0.6 em per character) instead of a layout
    engine, for the pattern and head-grid figures with many token texts: constrained layout
    measures every text twice and was half of their draw time. `ax` is one axes from `fig.add_subplot()`
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

    `as_text`: plain texts beside the axis instead of ticks (a tick is four artists: several
    times faster to draw with hundreds of tokens); returns the inches the labels take across."""
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

