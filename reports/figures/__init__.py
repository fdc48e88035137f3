"""Figures: one function per figure, plain data in, a matplotlib Figure out.

The UI's static panels, the PDF and the bundle call the same functions; each takes the result
object (an `Analysis` or one `ModelResult`) and draws from what it already holds (nothing
re-runs a model, and the science - head roles, the shared PCA - comes computed on the result).
The interactive attention views are drawn in the browser (ui/explorer.py); these are their PNG
twins for the PDF and the bundle.

    style        the house style, token labels, heatmap and title helpers, message_figure
    layers       layer-metric curves, the normalised table, correlations across layers
    heads        entropy, one head's pattern, all heads of a layer, clusters, induction
    predictions  token attribution, head support, the logit lens
    animation    the layer animation (frames and the GIF)
    diffusion    diffusion generation: decode heatmap, metric bars, compare bars
    standard     the report's set of figures: specs, captions, file names, PNGs
"""

from reports.figures.animation import GIF_MAX_BYTES, layer_transition_frame, layer_transition_gif
from reports.figures.diffusion import compare_bars, decode_heatmap, metric_bars
from reports.figures.heads import (
    ROLE_MARKERS,
    attention_entropy_heatmap,
    attention_pattern,
    head_clusters,
    head_grid,
    head_mosaic,
    induction_heatmap,
)
from reports.figures.layers import layer_metric_curves, metric_correlation_heatmap, normalised_metric_heatmap
from reports.figures.predictions import (
    LENS_POSITIONS,
    head_attribution_heatmap,
    logit_lens,
    token_attribution,
)
from reports.figures.standard import (
    CAPTIONS,
    FigureSpec,
    model_file_names,
    render_pngs,
    save_png,
    standard_figures,
)
from reports.figures.style import (
    MAX_TICK_LABELS,
    METRIC_LABELS,
    STYLE,
    head_matrix,
    message_figure,
    set_token_ticks,
    token_label,
)

__all__ = [
    "CAPTIONS", "GIF_MAX_BYTES", "LENS_POSITIONS",
    "MAX_TICK_LABELS", "METRIC_LABELS", "ROLE_MARKERS", "STYLE", "FigureSpec",
    "attention_entropy_heatmap", "attention_pattern", "compare_bars", "decode_heatmap",
    "head_attribution_heatmap", "head_clusters", "head_grid", "head_matrix", "head_mosaic",
    "induction_heatmap", "layer_metric_curves", "layer_transition_frame", "layer_transition_gif",
    "logit_lens", "message_figure", "metric_bars", "metric_correlation_heatmap",
    "model_file_names", "normalised_metric_heatmap", "render_pngs", "save_png",
    "set_token_ticks", "standard_figures", "token_attribution", "token_label",
]
