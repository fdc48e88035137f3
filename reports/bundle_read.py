"""Open a saved bundle (reports/bundle.py, design.md "Bundle format") back into an `Analysis`.

Browsing needs no model: the tokens, the attention and hidden-state arrays, both metric
tables and the predictions are in the bundle. Read back as they were written: the layer and
head metrics (CSV, full precision), the predictions; recomputed from the saved arrays by the
same analysis functions: the attention rollout of the prediction position, the heads' mean
attention distance and their 2-D projection (analysis.attention), the shared PCA of the hidden
states. Not in the bundle, so left empty (the page says so): the token ids (so no new target
can be explained), gradient x input and the logit lens, unless the bundle carries the
`analyze --json` summary as `summary.json`, whose token attribution and logit lens are then used.

Every file read is checked against the manifest's sha256; arrays are loaded without pickle
and memory-mapped from `folder` (the caller's, e.g. the session's folder).
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
import zipfile
from pathlib import Path

import numpy as np

from analysis import attention as att_mod
from analysis import attribution as attr_mod
from analysis.capture import Trace
from analysis.result import (
    Analysis,
    HeadMetrics,
    LayerMetrics,
    LogitLens,
    MaskFill,
    ModelInfo,
    ModelResult,
    Predictions,
    TokenAttribution,
    TokenProb,
)
from models.common import UserError, file_safe

BUNDLE_FORMAT = 1
MAX_MEMBER_BYTES = 8 * 2**30  # one array as large as this at most (a zip bomb is refused)
MASK_TOKENS = ("[MASK]", "<mask>", "<|mdm_mask|>", "<|mask|>")


def _fail(path: str | Path, why: str) -> UserError:
    return UserError(f"{Path(path).name} is not a dashboard bundle that can be opened: {why}")


class _Bundle:
    """The ZIP and its manifest; members read by name only, each checked by its sha256."""

    def __init__(self, path: str | Path):
        self.path = Path(path)
        try:
            self.zip = zipfile.ZipFile(self.path)
        except (zipfile.BadZipFile, OSError) as exc:
            raise _fail(path, f"not a ZIP file ({exc}).") from None
        try:
            self.manifest = json.loads(self.zip.read("manifest.json"))
        except KeyError:
            raise _fail(path, "it has no manifest.json.") from None
        except (ValueError, UnicodeDecodeError) as exc:
            raise _fail(path, f"its manifest.json is not JSON ({exc}).") from None
        if not isinstance(self.manifest, dict) or self.manifest.get("format") != BUNDLE_FORMAT:
            raise _fail(path, f"bundle format {self.manifest.get('format')!r}, this version "
                              f"reads {BUNDLE_FORMAT}.")

    def _info(self, name: str) -> zipfile.ZipInfo:
        try:
            info = self.zip.getinfo(name)
        except KeyError:
            raise _fail(self.path, f"{name} is missing.") from None
        if info.file_size > MAX_MEMBER_BYTES:
            raise _fail(self.path, f"{name} is {info.file_size / 2**30:.1f} GiB uncompressed.")
        return info

    def _check(self, name: str, digest: str) -> None:
        want = (self.manifest.get("files") or {}).get(name, {}).get("sha256")
        if want and want != digest:
            raise _fail(self.path, f"{name} does not match its sha256 in the manifest (the "
                                   "file was changed or damaged).")

    def read(self, name: str) -> bytes:
        data = self.zip.read(self._info(name))
        self._check(name, hashlib.sha256(data).hexdigest())
        return data

    def has(self, name: str) -> bool:
        return name in self.zip.namelist()

    def extract(self, name: str, dest: Path) -> Path:
        """Copy a member to `dest` (streamed, hashed on the way)."""
        info, h = self._info(name), hashlib.sha256()
        with self.zip.open(info) as src, open(dest, "wb") as out:
            for block in iter(lambda: src.read(1 << 20), b""):
                h.update(block)
                out.write(block)
        self._check(name, h.hexdigest())
        return dest

    def csv_rows(self, name: str) -> list[dict]:
        return list(csv.DictReader(io.StringIO(self.read(name).decode("utf-8"))))


def _float(v: str | None) -> float:
    return float(v) if v not in (None, "") else float("nan")


def _layer_metrics(rows: list[dict]) -> LayerMetrics:
    rows = sorted(rows, key=lambda r: int(r["layer"]))
    return LayerMetrics(**{name: np.array([_float(r.get(name)) for r in rows])
                           for name in LayerMetrics.names()})


def _head_metrics(rows: list[dict], n_layers: int, n_heads: int, attentions, seed: int
                  ) -> HeadMetrics:
    def grid(name: str, cast=_float, fill=np.nan, dtype=np.float64) -> np.ndarray:
        a = np.full((n_layers, n_heads), fill, dtype=dtype)
        for r in rows:
            a[int(r["layer"]) - 1, int(r["head"])] = cast(r.get(name))
        return a

    attribution = grid("attribution")
    stats = {"previous_token_score": grid("previous_token_score"),
             "first_token_score": grid("first_token_score"), "self_score": grid("self_score"),
             "attention_entropy": grid("attention_entropy"),
             "mean_distance": att_mod.mean_attention_distance(attentions)}
    cluster = grid("cluster", cast=lambda v: int(float(v)) if v not in (None, "") else 0,
                   fill=0, dtype=np.int64)
    role = grid("role", cast=lambda v: v or "mixed", fill="mixed", dtype=object)
    k = len(np.unique(cluster))
    _, projection = att_mod.cluster_features(att_mod.features_from_stats(stats),
                                             n_clusters=max(1, k), seed=seed)
    return HeadMetrics(
        attention_entropy=stats["attention_entropy"],
        previous_token_score=stats["previous_token_score"],
        first_token_score=stats["first_token_score"], self_score=stats["self_score"],
        mean_distance=stats["mean_distance"], induction_score=grid("induction_score"),
        cluster=cluster, role=role, projection=projection,
        attribution=None if np.isnan(attribution).all() else attribution)


def _predictions(d: dict | None) -> Predictions | None:
    if not d:
        return None
    top = [TokenProb(str(p["token"]), int(p.get("token_id", -1)), float(p["probability"]))
           for p in d.get("predictions", [])]
    masks = [MaskFill(int(m["position"]), [TokenProb(str(p["token"]), int(p.get("token_id", -1)),
                                                     float(p["probability"]))
                                           for p in m.get("predictions", [])])
             for m in d.get("masks", [])]
    return Predictions(str(d.get("model", "")), str(d.get("task", "")), str(d.get("prompt", "")),
                       top, masks, d.get("text", "") if d.get("task") != "causal" else "",
                       bool(d.get("chat_template", False)))


def _prediction_rows(task: str, tokens: list[str], preds: Predictions | None) -> list[int]:
    if task == "causal":
        return [len(tokens) - 1]
    if task in ("fill-mask", "diffusion"):
        if preds is not None and preds.masks:
            return [m.position for m in preds.masks]
        return [i for i, t in enumerate(tokens) if t.strip() in MASK_TOKENS]
    return []


def _summary_model(summary: dict | None, name: str) -> dict:
    for m in (summary or {}).get("models", []):
        if m.get("name") == name:
            return m
    return {}


def _arrays(b: _Bundle, entry: dict, folder: Path) -> tuple[np.ndarray, np.ndarray]:
    """(attention memory-mapped `[layer, head, query, key]`, hidden `[layer + 1, token, d]`)."""
    name = str(entry["name"])
    stem = entry.get("file_name") or file_safe(name)
    local = folder / f"bundle-{file_safe(stem)}"
    try:
        attentions = np.load(b.extract(entry.get("attention_file", f"attention_{stem}.npy"),
                                       local.with_suffix(".attention.npy")),
                             mmap_mode="r", allow_pickle=False)
        hidden = np.load(b.extract(entry.get("hidden_states_file", f"hidden_states_{stem}.npy"),
                                   local.with_suffix(".hidden.npy")),
                         allow_pickle=False).astype(np.float32, copy=False)
    except ValueError as exc:
        raise _fail(b.path, f"the arrays of {name} cannot be read ({exc}).") from None
    return attentions, hidden


def _model_info(entry: dict, n_layers: int, n_heads: int, hidden_size: int) -> ModelInfo:
    info = {k: v for k, v in entry.items() if k in ModelInfo.__dataclass_fields__}
    info["cls"] = entry.get("class", "")
    defaults = {"name": entry["name"], "source": "", "family": "", "n_layers": n_layers,
                "n_heads": n_heads, "hidden_size": hidden_size, "params": 0}
    return ModelInfo(**{**defaults, **info})


def _model_result(b: _Bundle, entry: dict, folder: Path, tokens: list[str],
                  preds: Predictions | None, layer_rows: list[dict], head_rows: list[dict],
                  extra: dict, settings: dict, seed: int) -> ModelResult:
    """One model of the bundle as a ModelResult (see the module docstring for what is read,
    what is recomputed and what stays empty)."""
    name = str(entry["name"])
    attentions, hidden = _arrays(b, entry, folder)
    n_layers, n_heads, n_tok = attentions.shape[:3]
    if len(tokens) != n_tok or hidden.shape[:2] != (n_layers + 1, n_tok):
        raise _fail(b.path, f"the arrays of {name} do not match its {len(tokens)} tokens.")
    task = str(entry.get("task", ""))
    rows = _prediction_rows(task, tokens, preds)
    trace = Trace(model=name, task=task, prompt=(b.manifest.get("prompts") or [""])[0],
                  token_ids=[], tokens=tokens, hidden=hidden, attentions=attentions,
                  logits=np.zeros((0, 0), np.float32), causal=bool(entry.get("causal")),
                  notices=list(entry.get("notices", [])), logit_rows=rows,
                  last_layer_normed="before the final norm" not in str(entry.get("last_layer", "")),
                  chat_template=bool(entry.get("chat_template", False)))
    heads = _head_metrics([r for r in head_rows if r.get("model") == name], n_layers, n_heads,
                          attentions, seed)
    if settings.get("ablation"):
        heads.attribution_method = "ablation"
    attribution = None
    if preds is not None and preds.top and rows:
        ta = extra.get("token_attribution") or {}
        gxi = ta.get("grad_x_input")
        attribution = TokenAttribution(
            preds.top[0].token, preds.top[0].token_id, rows[0],
            attr_mod.rollout_row(attentions, rows[0]),
            None if gxi is None else np.asarray(gxi, dtype=np.float64), ta.get("log_prob"))
    lens = None
    lj = extra.get("logit_lens")
    if lj and lj.get("top_tokens"):
        # the summary has no top ids; the lens views read the tokens and probabilities
        lens = LogitLens(list(lj["positions"]), list(lj.get("predicted", rows)),
                         np.full(np.shape(lj["top_probs"]), -1, dtype=np.int64),
                         lj["top_tokens"], np.asarray(lj["top_probs"], dtype=np.float64))
    return ModelResult(
        trace=trace, layers=_layer_metrics([r for r in layer_rows if r.get("model") == name]),
        heads=heads, info=_model_info(entry, n_layers, n_heads, int(hidden.shape[-1])),
        predictions=preds, attribution=attribution, lens=lens,
        hidden_projection=att_mod.shared_projection(hidden),
        seconds=float(entry.get("seconds", 0.0) or 0.0))


def open_bundle(path: str | Path, folder: str | Path) -> Analysis:
    """The Analysis saved in the bundle at `path`; its arrays are extracted into `folder` and
    memory-mapped. `settings` say where it came from: {"source": "bundle", "bundle": name}."""
    b = _Bundle(path)
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    m = b.manifest
    try:
        tokens_by_model = json.loads(b.read("tokens.json"))
        preds_by_model = json.loads(b.read("predictions.json"))
        summary = json.loads(b.read("summary.json")) if b.has("summary.json") else None
    except (ValueError, UnicodeDecodeError) as exc:
        raise _fail(path, f"a JSON file cannot be read ({exc}).") from None
    layer_rows, head_rows = b.csv_rows("layer_metrics.csv"), b.csv_rows("head_metrics.csv")
    settings = dict(m.get("settings") or {})
    seed = int(m.get("seed", 0) or 0)
    results = []
    for entry in m.get("models", []):
        name = str(entry["name"])
        results.append(_model_result(
            b, entry, folder, [str(t) for t in tokens_by_model.get(name, [])],
            _predictions(preds_by_model.get(name)), layer_rows, head_rows,
            _summary_model(summary, name), settings, seed))
    if not results:
        raise _fail(path, "its manifest lists no models.")
    settings.update({"source": "bundle", "bundle": b.path.name})
    return Analysis(prompts=list(m.get("prompts") or []), results=results, settings=settings,
                    created=str(m.get("created", "")), seed=seed)


def read_continuations(path: str | Path) -> dict[str, str | None]:
    """{model: its greedy continuation} as saved in predictions.json ("text" of a causal
    model; None for the others)."""
    b = _Bundle(path)
    try:
        preds = json.loads(b.read("predictions.json"))
    except (ValueError, UnicodeDecodeError) as exc:
        raise _fail(path, f"predictions.json cannot be read ({exc}).") from None
    return {name: (d.get("text") or None) if d and d.get("task") == "causal" else None
            for name, d in preds.items()}
