"""Layer-metric figures: curves over depth, the normalised table, correlations."""

from __future__ import annotations

import math

import numpy as np
import seaborn as sns
from matplotlib.figure import Figure

from analysis.result import LAYER_COLUMNS, Analysis, ModelResult
from reports.figures.style import (
    METRIC_LABELS,
    _annotate,
    _figure,
    _heatmap,
    _layer_table,
    _styled,
    _title,
    message_figure,
)


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
        ax.set_title(METRIC_LABELS.get(col, col) + ("\nband: 95% bootstrap interval"
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

