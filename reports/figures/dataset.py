"""Dataset-mode figures: layer curves with their intervals, per-text distributions, heads.

Each takes analysis.dataset.DatasetResult objects (plain data) and returns a Figure. The curves
draw the intervals the CSV holds (bootstrap for the token sample, t-intervals across texts),
so the page, the PDF and the numbers agree; seaborn draws the per-text distributions.
"""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import seaborn as sns
from matplotlib.figure import Figure

from reports.figures.style import METRIC_LABELS, _figure, _styled, _title, message_figure

# (metric, kind, label suffix): what the curves show, in panel order
CURVES = [
    ("effective_rank", "all_tokens", "all tokens"),
    ("participation_ratio", "all_tokens", "all tokens"),
    ("intrinsic_dim_pca95", "all_tokens", "all tokens"),
    ("intrinsic_dim_twonn", "token_sample", "token sample, 95% bootstrap"),
    ("activation_entropy", "per_text", "per text (prompt entropy), mean and 95% CI"),
    ("dataset_entropy", "dataset", "mean-pooled texts"),
    ("cosine_to_input", "all_tokens", "all tokens"),
    ("anisotropy", "all_tokens", "all tokens"),
    ("attention_entropy", "all_tokens", "all tokens"),
]


def curve_values(result, metric: str, kind: str) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(value, low, high), each [layer + 1] with NaN where undefined, of one curve."""
    layers = result.summary.layers
    value = np.full(len(layers), np.nan)
    low, high = value.copy(), value.copy()
    for i, s in enumerate(layers):
        if kind == "all_tokens":
            v = s.all_tokens.get(metric)
            value[i] = np.nan if v is None else v
        elif kind == "token_sample":
            iv = s.token_sample.get(metric)
            if iv is not None:
                value[i], low[i], high[i] = (np.nan if x is None else x
                                             for x in (iv.value, iv.ci_low, iv.ci_high))
        elif kind == "per_text":
            st = s.per_text.get(metric)
            if st is not None:
                value[i], low[i], high[i] = (np.nan if x is None else x
                                             for x in (st.mean, st.ci_low, st.ci_high))
        elif kind == "dataset":
            value[i] = np.nan if s.dataset_entropy is None else s.dataset_entropy
    return value, low, high


@_styled
def dataset_curves(results: list) -> Figure:
    """Every dataset metric against relative depth (layer / L), one line per model, its
    interval as a band."""
    if not results:
        return message_figure("no dataset analysed")
    ncols = 3
    nrows = math.ceil(len(CURVES) / ncols)
    fig = _figure(3.6 * ncols, 2.8 * nrows + 0.8)
    axes = fig.subplots(nrows, ncols, squeeze=False)
    palette = sns.color_palette("tab10", max(3, len(results)))
    for k, (metric, kind, what) in enumerate(CURVES):
        ax = axes[k // ncols][k % ncols]
        for i, r in enumerate(results):
            value, low, high = curve_values(r, metric, kind)
            depth = np.arange(len(value)) / max(1, len(value) - 1)
            ax.plot(depth, value, marker="o", markersize=3.5, linewidth=1.5, color=palette[i],
                    label=f"{r.model} ({r.texts:,} texts, {r.tokens:,} tokens)")
            if np.isfinite(low).any():
                ax.fill_between(depth, low, high, color=palette[i], alpha=0.2, linewidth=0)
        name = "dataset entropy" if metric == "dataset_entropy" else METRIC_LABELS.get(metric, metric)
        ax.set_title(f"{name}\n({what})", fontsize=10)
        ax.set_xlim(-0.04, 1.04)
        if k // ncols == nrows - 1:
            ax.set_xlabel("relative depth (layer / L)")
    handles, labels = axes[0][0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="outside upper center", ncols=min(3, len(labels)),
               frameon=False)
    return fig


@_styled
def per_text_distributions(result, metrics: tuple[str, ...] = ("effective_rank",
                                                               "activation_entropy",
                                                               "intrinsic_dim_twonn",
                                                               "anisotropy")) -> Figure:
    """Per layer, the distribution across texts of single-text metrics (box plots)."""
    from analysis.accumulate import METRICS

    s = result.summary
    values = np.asarray(s.text_values, dtype=np.float64)  # [text, layer + 1, metric]
    if values.size == 0:
        return message_figure("no per-text values", title=f"{result.model}: per-text metrics")
    rows = []
    for metric in metrics:
        j = METRICS.index(metric)
        for layer in range(values.shape[1]):
            col = values[:, layer, j]
            for v in col[np.isfinite(col)]:
                rows.append((metric, layer, float(v)))
    frame = pd.DataFrame(rows, columns=["metric", "layer", "value"])
    fig = _figure(3.8 * len(metrics), 3.6)
    axes = fig.subplots(1, len(metrics), squeeze=False)[0]
    for ax, metric in zip(axes, metrics, strict=True):
        part = frame[frame["metric"] == metric]
        if part.empty:
            ax.text(0.5, 0.5, "undefined (texts too short)", ha="center", va="center",
                    transform=ax.transAxes, color="#777777")
        else:
            sns.boxplot(data=part, x="layer", y="value", ax=ax, color="#9ecae1", fliersize=1.5,
                        linewidth=0.8)
        n = int(np.isfinite(values[:, -1, METRICS.index(metric)]).sum())
        ax.set_title(f"{METRIC_LABELS.get(metric, metric)} (n = {n:,} texts)", fontsize=10)
        ax.set_xlabel("layer (0 = embeddings)")
        ax.set_ylabel("")
    fig.suptitle(f"{result.model}: per-text metrics across {s.texts:,} texts", fontsize=11)
    return fig


@_styled
def head_means(result, stat: str = "attention_entropy") -> Figure:
    """Layers x heads of a head statistic's mean across texts, its std in each cell."""
    mean = np.asarray(result.summary.head_mean.get(stat, np.zeros((0, 0))), dtype=np.float64)
    std = np.asarray(result.summary.head_std.get(stat, np.zeros((0, 0))), dtype=np.float64)
    if mean.size == 0:
        return message_figure("no attention statistics", title=f"{result.model}: heads")
    n_layers, n_heads = mean.shape
    fig = _figure(0.6 * n_heads + 3.2, 0.42 * n_layers + 2.0)
    ax = fig.add_subplot()
    im = ax.imshow(mean, cmap="viridis", aspect="auto", vmin=0, vmax=max(1.0, np.nanmax(mean)))
    fig.colorbar(im, ax=ax, label=f"mean {stat.replace('_', ' ')}")
    if n_layers * n_heads <= 160:
        for i in range(n_layers):
            for j in range(n_heads):
                if np.isfinite(mean[i, j]):
                    ax.text(j, i, f"{mean[i, j]:.2f}\n±{std[i, j]:.2f}", ha="center",
                            va="center", fontsize=6, color="white" if mean[i, j] < 0.6 else "black")
    ax.set_xticks(range(n_heads))
    ax.set_yticks(range(n_layers))
    ax.set_yticklabels([str(v + 1) for v in range(n_layers)])
    ax.set_xlabel("head")
    ax.set_ylabel("layer")
    ax.grid(False)
    _title(fig, ax, f"{result.model}: head {stat.replace('_', ' ')} across texts (mean ± std)")
    return fig
