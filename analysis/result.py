"""The result object that flows from analysis to figures, UI and bundle."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from analysis.capture import Trace

LAYER_COLUMNS = ["effective_rank", "participation_ratio", "intrinsic_dim_pca95",
                 "intrinsic_dim_twonn", "activation_entropy", "cosine_to_input", "anisotropy",
                 "attention_entropy"]
HEAD_COLUMNS = ["attention_entropy", "cluster", "previous_token_score", "first_token_score",
                "attribution"]


@dataclass
class ModelResult:
    trace: Trace
    # one dict per layer 0..L: {"layer": l, <LAYER_COLUMNS>: float or None}
    layer_metrics: list[dict]
    # one dict per (layer 1..L, head 0..H-1): {"layer", "head", <HEAD_COLUMNS>, "self_score",
    # "induction_score"}
    head_metrics: list[dict]
    head_projection: np.ndarray  # [layer * head, 2], rows in head_metrics order
    predictions: dict  # as `predict --json`: {"model", "task", "prompt", "predictions", "text"}
    # token attribution for the predicted token: {"target": str, "position": int,
    # "grad_x_input": [T floats], "rollout": [T floats]}
    token_attribution: dict
    head_attribution: np.ndarray  # [layer, head] effect on the predicted token's log-prob
    # logit lens over the last positions P (analysis.attribution.LENS_POSITIONS):
    # {"positions": [int] * P, "top_tokens": [[str] * P] * (L + 1), "top_probs": [L + 1, P]}
    logit_lens: dict
    induction: np.ndarray | None = None  # [layer, head] scores on a repeated random sequence
    seconds: float = 0.0
    source: dict = field(default_factory=dict)  # name, source, class, hidden_size, params, ...
    # corpus mode (several prompts): every prompt's token rows stacked, attention block-diagonal;
    # the layer metrics are computed on it. `trace` is then the first prompt alone.
    pooled: Trace | None = None

    @property
    def metrics_trace(self) -> Trace:
        return self.pooled if self.pooled is not None else self.trace

    @property
    def name(self) -> str:
        return self.trace.model


@dataclass
class Analysis:
    prompts: list[str]
    results: list[ModelResult]
    settings: dict = field(default_factory=dict)
    created: str = ""
    seed: int = 0

    def result(self, model: str) -> ModelResult:
        for r in self.results:
            if r.name == model:
                return r
        raise KeyError(model)
