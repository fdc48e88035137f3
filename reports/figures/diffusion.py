"""Diffusion generation figures: when each position was decoded, metric bars."""

from __future__ import annotations

import math
import textwrap

import matplotlib
import numpy as np
from matplotlib.figure import Figure
from matplotlib.patches import Rectangle

from models.generation import BAR_METRICS, RESULT_METRICS
from models.trace import decode_table
from reports.figures.style import _figure, _styled, _suptitle, _title, message_figure, token_label


@_styled
def decode_heatmap(result) -> Figure:
    """Positions x steps: the top-1 probability of each still-masked position in every step's
    forward pass (colour), the step that committed it (black box, its token written in), grey
    once committed."""
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
