"""Prediction figures: token attribution, head support, the logit lens."""

from __future__ import annotations

import math

import numpy as np
from matplotlib.colors import TwoSlopeNorm
from matplotlib.figure import Figure

from analysis.attribution import LENS_POSITIONS
from analysis.result import ModelResult
from reports.figures.style import (
    _annotate,
    _figure,
    _heatmap,
    _layer_head_axes,
    _styled,
    _suptitle,
    _title,
    message_figure,
    set_token_ticks,
    token_label,
)


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

