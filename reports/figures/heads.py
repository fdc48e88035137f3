"""Per-head figures: entropy, one pattern, all heads of a layer, clusters, induction."""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
import seaborn as sns
from matplotlib.figure import Figure
from matplotlib.patches import Rectangle

from analysis.result import ModelResult
from reports.figures.style import (
    _annotate,
    _check_head,
    _check_layer,
    _figure,
    _heatmap,
    _layer_head_axes,
    _margins,
    _styled,
    _suptitle,
    _title,
    head_matrix,
    message_figure,
    set_token_ticks,
    token_label,
)

MAX_HEAD_LABELS = 200  # head_clusters writes 'L{layer}H{head}' for at most this many heads


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
def attention_pattern(result: ModelResult, layer: int, head: int) -> Figure:
    """One head's attention pattern [query, key] with token labels; layer is 1-based."""
    _check_layer(result, layer)
    _check_head(result, head)
    t = result.trace
    att = t.attentions[int(layer) - 1, int(head)]
    return _pattern_figure(att, t.tokens,
                           f"{result.name}: layer {layer}, head {head}", "attention weight")


def _pattern_figure(att: np.ndarray, tokens: Sequence[str], title: str, label: str) -> Figure:
    vmax = max(1e-9, float(np.nanmax(att)))
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
    return fig


@_styled
def head_grid(result: ModelResult, layer: int) -> Figure:
    """Every head of one layer as small multiples, one shared colour scale.

    Drawn as one image (the heads' patterns tiled with white gaps, `head_mosaic`) on one axes,
    which renders several times faster than one axes per head (TinyLlama-1.1B has 32 heads)."""
    _check_layer(result, layer)
    t = result.trace
    att = np.asarray(t.attentions[int(layer) - 1], dtype=np.float32)  # [head, query, key]
    n_heads, q, k = att.shape
    mosaic, origins = head_mosaic(att)
    vmax = max(1e-9, float(np.nanmax(att)))
    title = f"{result.name}: all heads of layer {layer} (rows = queries, columns = keys)"
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

