"""The typed result that flows from analysis to figures, UI and bundle.

Arrays say their axes once: layer metrics are `[layer + 1]` (index 0 = the embeddings, index l =
block l), head metrics `[layer, head]` (index 0 = block 1). Rows of dicts exist only where a CSV
or JSON file is written (`rows()`, `to_json()`).
"""

from __future__ import annotations

from dataclasses import dataclass, field, fields

import numpy as np

from analysis.capture import Trace
from models.predictions import MaskFill, Predictions, TokenProb  # noqa: F401 - re-exported

LAYER_COLUMNS = ["effective_rank", "participation_ratio", "intrinsic_dim_pca95",
                 "intrinsic_dim_twonn", "activation_entropy", "cosine_to_input", "anisotropy",
                 "attention_entropy"]
# the TwoNN bootstrap interval, written after the design's columns in layer_metrics.csv
TWONN_INTERVAL_COLUMNS = ["intrinsic_dim_twonn_ci_low", "intrinsic_dim_twonn_ci_high"]
HEAD_COLUMNS = ["attention_entropy", "cluster", "previous_token_score", "first_token_score",
                "attribution"]
# written after the design's columns in head_metrics.csv (the page and the JSON have them too)
HEAD_EXTRA_COLUMNS = ["induction_score", "self_score", "role"]
INTEGER_METRICS = ("intrinsic_dim_pca95",)


def _number(v) -> float | int | None:
    """A Python number for JSON/CSV, None for NaN or infinity."""
    if v is None:
        return None
    if isinstance(v, (int, np.integer)) and not isinstance(v, bool):
        return int(v)
    v = float(v)
    return v if np.isfinite(v) else None


@dataclass
class LayerMetrics:
    """Every layer metric of one model (docs/reference.md), each a float64 array `[layer + 1]`;
    NaN where the metric is undefined (attention entropy on layer 0, TwoNN below 10 distinct
    rows, ...)."""

    effective_rank: np.ndarray
    participation_ratio: np.ndarray
    intrinsic_dim_pca95: np.ndarray
    intrinsic_dim_twonn: np.ndarray
    activation_entropy: np.ndarray
    cosine_to_input: np.ndarray
    anisotropy: np.ndarray
    attention_entropy: np.ndarray
    intrinsic_dim_twonn_ci_low: np.ndarray
    intrinsic_dim_twonn_ci_high: np.ndarray

    @property
    def n_layers(self) -> int:
        """L, the number of blocks (the arrays have L + 1 entries)."""
        return int(self.effective_rank.shape[0]) - 1

    def column(self, name: str) -> np.ndarray:
        """The array `[layer + 1]` of a metric; KeyError for an unknown name (never None)."""
        if name not in self.names():
            raise KeyError(f"no layer metric {name!r}; known: {', '.join(self.names())}")
        return getattr(self, name)

    def value(self, name: str, layer: int) -> float | int | None:
        """One metric at one layer as a Python number (int for PCA-95), None when undefined."""
        v = _number(self.column(name)[layer])
        return int(v) if v is not None and name in INTEGER_METRICS else v

    @classmethod
    def names(cls) -> list[str]:
        return [f.name for f in fields(cls)]

    def table(self) -> np.ndarray:
        """`[layer + 1, metric]` in LAYER_COLUMNS order."""
        return np.stack([self.column(c) for c in LAYER_COLUMNS], axis=1)

    def rows(self) -> list[dict]:
        """{"layer", <every metric>} per layer, for the CSV and JSON writers."""
        return [{"layer": layer, **{n: self.value(n, layer) for n in self.names()}}
                for layer in range(self.n_layers + 1)]


@dataclass
class HeadMetrics:
    """Per-head numbers, each `[layer, head]` (index 0 = block 1), docs/reference.md "Heads"."""

    attention_entropy: np.ndarray
    previous_token_score: np.ndarray
    first_token_score: np.ndarray
    self_score: np.ndarray
    mean_distance: np.ndarray
    induction_score: np.ndarray
    cluster: np.ndarray  # int64
    role: np.ndarray  # str: previous | first | self | induction | mixed
    projection: np.ndarray  # [layer * head, 2]: PCA of the standardised features, layer-major
    # support for the prediction, log p(all heads) - log p(head removed); None: no prediction
    attribution: np.ndarray | None = None
    attribution_method: str = "gradient"  # "gradient" (first-order estimate) | "ablation"

    @property
    def shape(self) -> tuple[int, int]:
        return tuple(self.attention_entropy.shape)  # type: ignore[return-value]

    def score(self, name: str) -> np.ndarray:
        """The `[layer, head]` array of a score; KeyError for an unknown name."""
        names = ("attention_entropy", "previous_token_score", "first_token_score", "self_score",
                 "mean_distance", "induction_score", "cluster", "attribution")
        if name not in names:
            raise KeyError(f"no head metric {name!r}; known: {', '.join(names)}")
        value = getattr(self, name)
        return np.full(self.shape, np.nan) if value is None else value

    def top(self, name: str) -> tuple[int, int, float | None]:
        """(layer counted from 1, head, value) of the head with the largest `name`; the first
        head when every value is undefined."""
        a = np.asarray(self.score(name), dtype=np.float64)
        if not np.isfinite(a).any():
            return 1, 0, None
        layer, head = np.unravel_index(int(np.nanargmax(np.where(np.isfinite(a), a, -np.inf))),
                                       a.shape)
        return int(layer) + 1, int(head), float(a[layer, head])

    def rows(self) -> list[dict]:
        """{"layer" (from 1), "head", <scores>, "role"} per head, layer-major, for writers."""
        out = []
        n_layers, n_heads = self.shape
        for layer in range(n_layers):
            for head in range(n_heads):
                row = {"layer": layer + 1, "head": head}
                for name in ("attention_entropy", "cluster", "previous_token_score",
                             "first_token_score", "attribution", "induction_score",
                             "self_score", "mean_distance"):
                    row[name] = _number(self.score(name)[layer, head])
                row["role"] = str(self.role[layer, head])
                out.append(row)
        return out


@dataclass
class TokenAttribution:
    """Why the target is predicted at `position`: per token `[token]` arrays."""

    target: str
    target_id: int
    position: int
    rollout: np.ndarray  # [token] attention rollout row of `position`
    grad_x_input: np.ndarray | None = None  # [token]; None when gradients were not asked
    log_prob: float | None = None

    def to_json(self) -> dict:
        return {"target": self.target, "target_id": self.target_id, "position": self.position,
                "rollout": [float(v) for v in self.rollout],
                "grad_x_input": (None if self.grad_x_input is None
                                 else [float(v) for v in self.grad_x_input]),
                "log_prob": self.log_prob}


@dataclass
class LogitLens:
    """Top token and probability of every layer's hidden state through the output head."""

    positions: list[int]  # token positions covered, P of them
    predicted: list[int]  # the positions whose prediction is shown (always covered)
    top_ids: np.ndarray  # [layer + 1, P]
    top_tokens: list[list[str]]  # [layer + 1][P]
    top_probs: np.ndarray  # [layer + 1, P]

    def to_json(self) -> dict:
        return {"positions": list(self.positions), "predicted": list(self.predicted),
                "top_tokens": self.top_tokens,
                "top_probs": np.round(np.asarray(self.top_probs, dtype=np.float64), 6).tolist()}


@dataclass
class ModelInfo:
    """Where the model came from and how it ran (the manifest's model entry)."""

    name: str
    source: str
    family: str
    cls: str
    n_layers: int
    n_heads: int
    hidden_size: int
    params: int
    revision: str | None = None
    device: str = "cpu"
    dtype: str = "float32"
    attention: str = "dashboard"
    placement: str = "one device"
    induction_probe: str = ""

    def to_json(self) -> dict:
        out = dict(vars(self))
        out["class"] = out.pop("cls")
        return out


@dataclass
class ModelResult:
    trace: Trace
    layers: LayerMetrics
    heads: HeadMetrics
    info: ModelInfo
    predictions: Predictions | None = None  # None: an encoder, or no [MASK] to fill
    attribution: TokenAttribution | None = None
    lens: LogitLens | None = None
    # hidden states projected on one shared 2-D basis, [layer + 1, token, 2] (layer transitions)
    hidden_projection: np.ndarray | None = None
    seconds: float = 0.0

    @property
    def name(self) -> str:
        return self.trace.model


@dataclass
class Analysis:
    prompts: list[str]
    results: list[ModelResult]
    settings: dict = field(default_factory=dict)  # as given: chat_template, ablation, seed, ...
    created: str = ""
    seed: int = 0

    def result(self, model: str) -> ModelResult:
        for r in self.results:
            if r.name == model:
                return r
        raise KeyError(model)
