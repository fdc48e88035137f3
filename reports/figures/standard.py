"""The standard set of figures (PDF and bundle): specs, captions, file names, PNGs."""

from __future__ import annotations

import functools
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import matplotlib.pyplot as plt
from matplotlib.figure import Figure

from analysis.result import Analysis
from models.common import file_safe
from reports.figures.heads import (
    attention_entropy_heatmap,
    attention_pattern,
    head_clusters,
    head_grid,
    induction_heatmap,
)
from reports.figures.layers import layer_metric_curves, metric_correlation_heatmap, normalised_metric_heatmap
from reports.figures.predictions import head_attribution_heatmap, logit_lens, token_attribution

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

