"""The layer animation: mean attention and the shared-PCA hidden states, layer by layer."""

from __future__ import annotations

import logging
import os
from collections.abc import Callable
from pathlib import Path

import matplotlib
import matplotlib.pyplot as plt
import numpy as np
from matplotlib.colors import PowerNorm
from matplotlib.figure import Figure

from analysis.capture import release_pages
from analysis.result import ModelResult
from models.common import UserError
from reports.figures.style import (
    _figure,
    _heatmap,
    _styled,
    _tick_fontsize,
    _tick_step,
    set_token_ticks,
    token_label,
)

log = logging.getLogger(__name__)
GIF_MAX_BYTES = 2 * 1024 * 1024


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


def _attention_panel(fig: Figure, ax, result: ModelResult) -> tuple[Callable[[int], None], list]:
    """The mean-over-heads attention panel: (update(layer), the artists it changes)."""
    t = result.trace
    n = t.n_tokens
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

    def update(layer: int) -> None:
        if layer >= 1:
            im.set_data(t.attentions[layer - 1].mean(axis=0, dtype=np.float64))
            release_pages(t.attentions)
        im.set_visible(layer >= 1)
        msg.set_visible(layer < 1)

    return update, [im, msg]


def _hidden_panel(ax, result: ModelResult, proj: np.ndarray
                  ) -> tuple[Callable[[int], None], list]:
    """The shared-PCA hidden-state panel: (update(layer), the artists it changes)."""
    t = result.trace
    n = t.n_tokens
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
    ax.set_xlabel("shared PC 1")
    ax.set_ylabel("shared PC 2")
    ax.set_title("hidden states (shared PCA; colour = position)")

    def update(layer: int) -> None:
        xy = proj[layer]
        sc.set_offsets(xy)
        if line is not None:
            line.set_data(xy[:, 0], xy[:, 1])
        for j, ann in labels:
            ann.xy = (float(xy[j, 0]), float(xy[j, 1]))

    return update, [sc] + ([line] if line is not None else []) + [a for _, a in labels]


@_styled
def _transition_figure(result: ModelResult, kind: str, projection: np.ndarray | None
                       ) -> tuple[Figure, Callable[[int], None], list]:
    """The animation's figure, `update(layer)` that changes it to layer 0..L in place, and the
    artists that change between frames (everything else is drawn once and blitted).

    One figure for all frames: the layout is computed once, so nothing jumps between frames.
    """
    n_layers = result.trace.n_layers
    show_att, show_pca = _transition_kind(kind)
    fig = _figure(5.4 * (int(show_att) + int(show_pca)) + 0.6, 5.0)
    axes = list(fig.subplots(1, int(show_att) + int(show_pca), squeeze=False)[0])
    updates: list[Callable[[int], None]] = []
    dynamic: list = []
    if show_att:
        update_att, artists = _attention_panel(fig, axes.pop(0), result)
        updates.append(update_att)
        dynamic += artists
    if show_pca:
        proj = _projection(result) if projection is None else projection
        update_pca, artists = _hidden_panel(axes.pop(0), result, proj)
        updates.append(update_pca)
        dynamic += artists
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

