"""reports/: figures, the PDF report and the ZIP bundle.

The bundle tests analyse the real embedded tiny models, open the ZIP, parse every file, check
every sha256, and recompute layer metrics from the NPY arrays with analysis.metrics. The figure
tests use a small synthetic result (no model needed).
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
import math
import os
import time
import zipfile
from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np
import pytest
from matplotlib.figure import Figure
from PIL import Image

from analysis import attention as att_mod
from analysis import metrics as met
from analysis.capture import Trace
from analysis.result import (
    HEAD_COLUMNS,
    HEAD_EXTRA_COLUMNS,
    LAYER_COLUMNS,
    Analysis,
    HeadMetrics,
    LayerMetrics,
    LogitLens,
    ModelInfo,
    ModelResult,
    Predictions,
    TokenAttribution,
    TokenProb,
)
from models.common import UserError
from reports import bundle as bundle_mod
from reports import figures as figs

EMBEDDED = Path(__file__).resolve().parents[1] / "models" / "embedded"
WANTED = ["tiny-gpt2", "tiny-bert"]
AVAILABLE = [m for m in WANTED if (EMBEDDED / m / "config.json").exists()]
PROMPT = "the capital of japan is"
MODEL_FIGURES = ["attention_entropy_heatmap", "attention_pattern", "head_attribution_heatmap",
                 "head_clusters", "head_grid", "induction_heatmap", "logit_lens",
                 "metric_correlation_heatmap", "normalised_metric_heatmap", "token_attribution"]
LAYER_HEADER = ["model", "layer", "effective_rank", "participation_ratio", "intrinsic_dim_pca95",
                "intrinsic_dim_twonn", "activation_entropy", "cosine_to_input", "anisotropy",
                "attention_entropy", "intrinsic_dim_twonn_ci_low", "intrinsic_dim_twonn_ci_high"]
HEAD_HEADER = ["model", "layer", "head", "attention_entropy", "cluster", "previous_token_score",
               "first_token_score", "attribution", "induction_score", "self_score", "role"]
REL = 1e-9

needs_models = pytest.mark.skipif(
    "tiny-gpt2" not in AVAILABLE,
    reason="the embedded tiny models are not trained yet (models/embedded/tiny-gpt2 missing); "
           "run the embedded-model recipe first")


# ---------------------------------------------------------------------------------------------
# fixtures


@pytest.fixture(scope="module")
def analysis() -> Analysis:
    from analysis.run import analyze

    return analyze(AVAILABLE, [PROMPT])


@pytest.fixture(scope="module")
def built(analysis, tmp_path_factory) -> tuple[Path, float]:
    out = tmp_path_factory.mktemp("bundle") / "bundle.zip"
    t0 = time.perf_counter()
    bundle_mod.write_bundle(analysis, out)
    return out, time.perf_counter() - t0


@pytest.fixture(scope="module")
def corpus() -> Analysis:
    """A longer single-prompt analysis of one model (the old corpus fixture's role)."""
    from analysis.run import analyze

    return analyze(["tiny-gpt2"], [PROMPT + " tokyo. the capital of france is paris. a big city"])


def _read_zip(path: Path) -> dict[str, bytes]:
    with zipfile.ZipFile(path) as z:
        assert z.testzip() is None
        return {n: z.read(n) for n in z.namelist()}


def _expected_files(a: Analysis) -> set[str]:
    names = figs.model_file_names(a)
    out = {"manifest.json", "layer_metrics.csv", "head_metrics.csv", "predictions.json",
           "tokens.json", "report.pdf", "session_log.html", "figures/layer_metric_curves.png"}
    for r in a.results:
        s = names[r.name]
        out |= {f"attention_{s}.npy", f"hidden_states_{s}.npy",
                f"figures/layer_transition_{s}.gif"}
        out |= {f"figures/{s}_{f}.png" for f in MODEL_FIGURES}
    return out


def _csv_rows(data: bytes) -> tuple[list[str], list[dict]]:
    reader = csv.DictReader(io.StringIO(data.decode("utf-8")))
    rows = list(reader)
    return list(reader.fieldnames or []), rows


def _num(s: str) -> float | None:
    return None if s == "" else float(s)


def _close(a: float | None, b: float | None) -> bool:
    if a is None or b is None:
        return a is None and b is None
    return math.isclose(a, b, rel_tol=REL, abs_tol=1e-12)


# ---------------------------------------------------------------------------------------------
# the bundle, real models


@needs_models
@pytest.mark.slow
def test_bundle_has_exactly_the_design_files(analysis, built):
    path, seconds = built
    files = _read_zip(path)
    assert set(files) == _expected_files(analysis)
    assert seconds < 120
    assert not any(n.endswith(".part") for n in os.listdir(path.parent))


@needs_models
@pytest.mark.slow
def test_manifest_hashes_and_fields(analysis, built):
    files = _read_zip(built[0])
    man = json.loads(files["manifest.json"])
    assert man["prompts"] == [PROMPT]
    assert man["seed"] == analysis.seed
    assert man["created"] == analysis.created
    for pkg in ("python", "torch", "transformers", "numpy", "matplotlib", "reportlab"):
        assert man["packages"][pkg], pkg
    assert set(man["files"]) == set(files) - {"manifest.json"}
    for name, info in man["files"].items():
        assert hashlib.sha256(files[name]).hexdigest() == info["sha256"], name
        assert len(files[name]) == info["bytes"], name
    assert [m["name"] for m in man["models"]] == AVAILABLE
    for m, r in zip(man["models"], analysis.results, strict=True):
        for key in ("name", "source", "revision", "class", "n_layers", "n_heads", "hidden_size",
                    "params"):
            assert key in m, key
        assert m["n_layers"] == r.trace.n_layers and m["n_heads"] == r.trace.n_heads
        assert m["hidden_size"] == r.trace.hidden.shape[-1]
        assert m["params"] > 0 and m["class"].endswith(("LMHeadModel", "MaskedLM", "CausalLM"))
        assert m["last_layer"] == "block L's output before the final norm"
        att = man["arrays"][m["attention_file"]]
        assert att["dtype"] == "float32" and att["float16_over_limit"] is False
        assert att["shape"] == list(r.trace.attentions.shape)


@needs_models
@pytest.mark.slow
def test_csv_json_and_arrays_parse(analysis, built):
    files = _read_zip(built[0])
    names = figs.model_file_names(analysis)
    header, rows = _csv_rows(files["layer_metrics.csv"])
    assert header == LAYER_HEADER
    assert len(rows) == sum(r.trace.n_layers + 1 for r in analysis.results)
    for row in rows:
        if row["layer"] == "0":
            assert row["attention_entropy"] == ""  # None -> empty cell
        for c in LAYER_COLUMNS:
            _num(row[c])  # every cell is a number or empty
    # full precision: the CSV reproduces the result's floats exactly
    for r in analysis.results:
        mine = [x for x in rows if x["model"] == r.name]
        for m, row in zip(r.layers.rows(), mine, strict=True):
            for c in LAYER_COLUMNS:
                assert _num(row[c]) == (None if m[c] is None else float(m[c])), (r.name, c)
    header, hrows = _csv_rows(files["head_metrics.csv"])
    assert header == HEAD_HEADER == ["model", "layer", "head"] + HEAD_COLUMNS + HEAD_EXTRA_COLUMNS
    for row in hrows:
        assert row["role"] in ("previous", "first", "self", "induction", "mixed")
        assert 0 <= _num(row["induction_score"]) <= 1 and 0 <= _num(row["self_score"]) <= 1
    assert len(hrows) == sum(r.trace.n_layers * r.trace.n_heads for r in analysis.results)

    preds = json.loads(files["predictions.json"])
    tokens = json.loads(files["tokens.json"])
    assert list(preds) == AVAILABLE and list(tokens) == AVAILABLE
    gpt2 = preds["tiny-gpt2"]
    assert set(gpt2) >= {"model", "task", "prompt", "predictions", "text"}
    assert gpt2["predictions"][0]["token"].strip() == "tokyo"
    for r in analysis.results:
        s = names[r.name]
        att = np.load(io.BytesIO(files[f"attention_{s}.npy"]), allow_pickle=False)
        hid = np.load(io.BytesIO(files[f"hidden_states_{s}.npy"]), allow_pickle=False)
        t = len(tokens[r.name])
        assert att.dtype == np.float32 and hid.dtype == np.float32
        assert att.shape == (r.trace.n_layers, r.trace.n_heads, t, t)
        assert hid.shape == (r.trace.n_layers + 1, t, r.trace.hidden.shape[-1])
        np.testing.assert_allclose(att.sum(-1), 1.0, atol=1e-4)  # rows are distributions
        if r.trace.causal:
            assert np.all(np.triu(att, 1) == 0)  # row i has zeros after i


@needs_models
@pytest.mark.slow
def test_layer_metrics_recomputed_from_npy(analysis, built):
    files = _read_zip(built[0])
    man = json.loads(files["manifest.json"])
    _, rows = _csv_rows(files["layer_metrics.csv"])
    _, hrows = _csv_rows(files["head_metrics.csv"])
    for m in man["models"]:
        att = np.load(io.BytesIO(files[m["attention_file"]]))
        hid = np.load(io.BytesIO(files[m["hidden_states_file"]]))
        mine = {int(x["layer"]): x for x in rows if x["model"] == m["name"]}
        assert sorted(mine) == list(range(m["n_layers"] + 1))
        for layer in range(m["n_layers"] + 1):
            row = mine[layer]
            assert _close(met.effective_rank(hid[layer]), _num(row["effective_rank"]))
            assert _close(met.participation_ratio(hid[layer]), _num(row["participation_ratio"]))
            expect = (None if layer == 0 else
                      met.layer_attention_entropy(att[layer - 1], m["causal"]))
            assert _close(expect, _num(row["attention_entropy"])), (m["name"], layer)
        for h in (x for x in hrows if x["model"] == m["name"]):
            layer, head = int(h["layer"]), int(h["head"])
            expect = met.head_attention_entropy(att[layer - 1, head], m["causal"])
            assert _close(expect, _num(h["attention_entropy"]))


@needs_models
@pytest.mark.slow
def test_pdf_png_gif_and_html(analysis, built):
    from pypdf import PdfReader

    files = _read_zip(built[0])
    reader = PdfReader(io.BytesIO(files["report.pdf"]))
    assert len(reader.pages) > 3
    text = "\n".join(p.extract_text() or "" for p in reader.pages)
    assert "Definitions" in text
    assert PROMPT in " ".join(text.split())
    assert "effective_rank" in text and "Figure 1." in text
    for r in analysis.results:
        assert r.name in text
    for name, data in files.items():
        if name.endswith(".png"):
            with Image.open(io.BytesIO(data)) as im:
                im.verify()
            with Image.open(io.BytesIO(data)) as im:
                px = np.asarray(im.convert("L"), dtype=np.float64)
            assert px.std() > 0, f"{name} is blank"
        if name.endswith(".gif"):
            assert len(data) <= figs.GIF_MAX_BYTES
            with Image.open(io.BytesIO(data)) as im:
                model = name.removeprefix("figures/layer_transition_").removesuffix(".gif")
                r = next(x for x in analysis.results
                         if figs.model_file_names(analysis)[x.name] == model)
                assert im.n_frames == r.trace.n_layers + 1  # kind="both": layers 0..L
    page = files["session_log.html"].decode("utf-8")
    assert page.startswith("<!DOCTYPE html>") and "<style>" in page
    for forbidden in ("<script", "href=", "src=", "http://", "https://", "@import"):
        assert forbidden not in page.lower()
    assert PROMPT in page and "tiny-gpt2" in page


@needs_models
@pytest.mark.slow
def test_no_prediction_figure_is_a_message(analysis):
    if "tiny-bert" not in AVAILABLE:
        pytest.skip("tiny-bert is not trained yet")
    bert = analysis.result("tiny-bert")  # no [MASK] in the prompt: nothing to attribute
    assert bert.attribution is None
    fig = figs.token_attribution(bert)
    texts = [t.get_text() for ax in fig.axes for t in ax.texts]
    assert "no prediction to attribute" in texts
    plt.close(fig)


# ---------------------------------------------------------------------------------------------
# corpus mode, atomic writes, float16


@needs_models
@pytest.mark.slow
def test_longer_bundle_is_recomputable_with_its_continuation(corpus, tmp_path):
    """Every layer metric recomputed from the NPY files; the continuation asked for after the
    analysis goes into predictions.json, the PDF and the session log."""
    out = bundle_mod.write_bundle(corpus, tmp_path / "corpus.zip",
                                  continuations={"tiny-gpt2": "paris. paris is a big city."})
    files = _read_zip(out)
    assert set(files) == _expected_files(corpus)
    assert json.loads(files["predictions.json"])["tiny-gpt2"]["text"] == "paris. paris is a big city."
    assert "paris is a big city" in files["session_log.html"].decode()
    man = json.loads(files["manifest.json"])
    m = man["models"][0]
    att = np.load(io.BytesIO(files[m["attention_file"]]))
    hid = np.load(io.BytesIO(files[m["hidden_states_file"]]))
    tokens = json.loads(files["tokens.json"])["tiny-gpt2"]
    assert att.shape[-1] == hid.shape[1] == len(tokens) == m["n_tokens"]
    _, rows = _csv_rows(files["layer_metrics.csv"])
    for layer, row in enumerate(rows):
        assert _close(met.effective_rank(hid[layer]), _num(row["effective_rank"]))
        assert _close(met.participation_ratio(hid[layer]), _num(row["participation_ratio"]))
        if layer == 0:
            assert row["attention_entropy"] == ""
            continue
        per_head = [met.attention_entropy_rows(att[layer - 1, head], m["causal"]).mean()
                    for head in range(att.shape[1])]
        assert _close(float(np.mean(per_head)), _num(row["attention_entropy"]))


def _skip_figures(monkeypatch) -> None:
    """Atomicity does not depend on the figures: skip drawing them to keep the tests quick."""
    def no_pngs(analysis, folder, dpi=110):
        Path(folder).mkdir(parents=True, exist_ok=True)
        return {}

    def tiny_gif(result, path, kind="attention", **kw):
        Path(path).write_bytes(b"GIF89a")
        return Path(path)

    monkeypatch.setattr(figs, "render_pngs", no_pngs)
    monkeypatch.setattr(figs, "layer_transition_gif", tiny_gif)


@needs_models
@pytest.mark.slow
def test_failed_write_leaves_nothing(corpus, tmp_path, monkeypatch):
    from reports import pdf as pdf_mod

    _skip_figures(monkeypatch)

    def broken_pdf(analysis, path, *args, **kwargs):
        Path(path).write_bytes(b"%PDF-1.4 half a report")
        raise RuntimeError("disk full (simulated)")

    monkeypatch.setattr(pdf_mod, "write_pdf", broken_pdf)
    out = tmp_path / "bundle.zip"
    with pytest.raises(RuntimeError, match="simulated"):
        bundle_mod.write_bundle(corpus, out)
    assert not out.exists()
    assert os.listdir(tmp_path) == []


@needs_models
@pytest.mark.slow
def test_failure_while_zipping_keeps_the_old_bundle(corpus, tmp_path, monkeypatch):
    _skip_figures(monkeypatch)
    out = tmp_path / "bundle.zip"
    out.write_bytes(b"the previous bundle")
    calls = {"n": 0}
    real_write = zipfile.ZipFile.write

    def flaky_write(self, *args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 3:
            raise OSError("no space left on device (simulated)")
        return real_write(self, *args, **kwargs)

    monkeypatch.setattr(zipfile.ZipFile, "write", flaky_write)
    with pytest.raises(OSError, match="simulated"):
        bundle_mod.write_bundle(corpus, out)
    assert out.read_bytes() == b"the previous bundle"
    assert os.listdir(tmp_path) == ["bundle.zip"]


@needs_models
@pytest.mark.slow
def test_float16_over_the_limit(corpus, tmp_path, monkeypatch):
    monkeypatch.setattr(bundle_mod, "FLOAT16_LIMIT_BYTES", 1000)
    out = bundle_mod.write_bundle(corpus, tmp_path / "b.zip")
    files = _read_zip(out)
    man = json.loads(files["manifest.json"])
    m = man["models"][0]
    att = np.load(io.BytesIO(files[m["attention_file"]]))
    hid = np.load(io.BytesIO(files[m["hidden_states_file"]]))
    assert att.dtype == np.float16 and hid.dtype == np.float32
    info = man["arrays"][m["attention_file"]]
    assert info["dtype"] == "float16" and info["float16_over_limit"] is True
    assert man["arrays"][m["hidden_states_file"]]["dtype"] == "float32"
    np.testing.assert_allclose(att.astype(np.float32), corpus.results[0].trace.attentions,
                               atol=1e-3)


# ---------------------------------------------------------------------------------------------
# figures and the log on a synthetic result (no model)


def fake_result(n_tokens: int = 8, n_layers: int = 3, n_heads: int = 4, d: int = 16,
                name: str = "org/fake model", attributed: bool = True) -> ModelResult:
    rng = np.random.default_rng(0)
    hidden = rng.normal(size=(n_layers + 1, n_tokens, d)).astype(np.float32)
    att = rng.random((n_layers, n_heads, n_tokens, n_tokens)) * np.tril(np.ones((n_tokens,) * 2))
    att = (att / att.sum(-1, keepdims=True)).astype(np.float32)
    tokens = [f" tok{i}" if i % 3 else "$x" for i in range(n_tokens)]
    trace = Trace(model=name, task="causal", prompt="".join(tokens),
                  token_ids=list(range(n_tokens)), tokens=tokens, hidden=hidden, attentions=att,
                  logits=np.zeros((n_tokens, 4), np.float32), causal=True)
    ent = att_mod.head_entropies(att, True)
    roles = att_mod.role_scores(att)
    labels, proj = att_mod.cluster_heads(att, True)
    induction = rng.random((n_layers, n_heads))
    heads = HeadMetrics(
        attention_entropy=ent, previous_token_score=roles["previous_token_score"],
        first_token_score=roles["first_token_score"], self_score=roles["self_score"],
        mean_distance=att_mod.mean_attention_distance(att), induction_score=induction,
        cluster=labels.reshape(n_layers, n_heads),
        role=att_mod.head_roles(roles["previous_token_score"], roles["first_token_score"],
                                roles["self_score"], induction),
        projection=proj, attribution=rng.normal(size=(n_layers, n_heads)) if attributed else None)
    attribution = (TokenAttribution("tokyo", 7, n_tokens - 1, rng.random(n_tokens),
                                    rng.normal(size=n_tokens), -0.1) if attributed else None)
    lens = LogitLens(list(range(n_tokens)), [n_tokens - 1],
                     np.zeros((n_layers + 1, n_tokens), np.int64),
                     [[f"w{i}" for i in range(n_tokens)]] * (n_layers + 1),
                     rng.random((n_layers + 1, n_tokens)))
    info = ModelInfo(name=name, source="fake", family="local", cls="FakeModel",
                     n_layers=n_layers, n_heads=n_heads, hidden_size=d, params=1234)
    return ModelResult(trace=trace, layers=LayerMetrics(**met.layer_metrics(hidden, att, True)),
                       heads=heads, info=info,
                       predictions=Predictions(name, "causal", trace.prompt,
                                               [TokenProb("tokyo", 7, 0.9)]),
                       attribution=attribution, lens=lens)


def _fake_analysis(**kw) -> Analysis:
    r = fake_result(**kw)
    return Analysis(prompts=[r.trace.prompt], results=[r], created="2025-01-01T00:00:00+00:00")


def test_every_standard_figure_draws_and_is_released(tmp_path, monkeypatch):
    """Every standard figure draws; writing them (render_pngs) leaves none alive: the figures
    are plain Figure objects that no registry keeps, so in a server they never pile up."""
    import gc

    a = _fake_analysis()
    gc.collect()
    before = {id(o) for o in gc.get_objects() if isinstance(o, Figure)}
    pngs = figs.render_pngs(a, tmp_path)
    gc.collect()
    alive = [o for o in gc.get_objects() if isinstance(o, Figure) and id(o) not in before]
    assert len(pngs) == 11 and alive == []
    assert plt.get_fignums() == []  # and nothing went through pyplot's figure manager
    specs = figs.standard_figures(a)
    assert [s.name for s in specs] == (["layer_metric_curves"]
                                       + [f"org-fake-model_{f}" for f in [
                                           "normalised_metric_heatmap",
                                           "metric_correlation_heatmap",
                                           "attention_entropy_heatmap", "induction_heatmap",
                                           "attention_pattern", "head_grid", "head_clusters",
                                           "token_attribution", "head_attribution_heatmap",
                                           "logit_lens"]])
    for spec in specs:
        fig = spec.make()
        assert isinstance(fig, Figure) and fig.axes, spec.name
        assert spec.caption and spec.title
        buf = io.BytesIO()
        fig.savefig(buf, format="png")
        assert buf.getvalue().startswith(b"\x89PNG")


def test_layer_curves_use_relative_depth():
    a = Analysis(prompts=["p"], results=[fake_result(n_layers=3), fake_result(n_layers=5,
                                                                                name="other")])
    fig = figs.layer_metric_curves(a)
    panels = [ax for ax in fig.axes if ax.lines]
    assert len(panels) == len(LAYER_COLUMNS)
    xs = [line.get_xdata() for line in panels[0].lines]
    assert [len(x) for x in xs] == [4, 6]
    assert all(x[0] == 0 and x[-1] == 1 for x in xs)


def test_long_sequences_thin_their_labels():
    r = fake_result(n_tokens=130)
    fig = figs.attention_pattern(r, 1, 0)
    ax = fig.axes[0]  # the pattern's token labels are texts beside the axes, not ticks
    labels = [t.get_text() for t in ax.texts]
    assert 30 <= len(labels) / 2 <= figs.MAX_TICK_LABELS  # the same thinned set on both axes
    assert labels[0] == figs.token_label(r.trace.tokens[0])
    fig.canvas.draw()
    lens = figs.logit_lens(r)
    assert "24 of 130 positions" in lens.axes[0].get_title()
    assert len(lens.axes[0].get_xticks()) == figs.LENS_POSITIONS


def test_token_labels_escape_mathtext_and_show_spaces():
    assert figs.token_label("$x") == r"\$x"
    assert figs.token_label(" ") == "␣"
    assert figs.token_label("a" * 40).endswith("…")


def test_layer_and_head_are_checked():
    r = fake_result()
    with pytest.raises(UserError, match="layers 1..3"):
        figs.attention_pattern(r, 0, 0)
    with pytest.raises(UserError, match="heads 0..3"):
        figs.attention_pattern(r, 1, 4)
    with pytest.raises(UserError):
        figs.head_grid(r, 4)


def test_empty_attribution_is_a_message_figure():
    fig = figs.token_attribution(fake_result(attributed=False))
    assert "no prediction to attribute" in [t.get_text() for t in fig.axes[0].texts]


def test_layer_transition_gif(tmp_path):
    r = fake_result(n_tokens=12, n_layers=3)
    for kind, frames in (("attention", 3), ("hidden", 4), ("both", 4)):
        path = figs.layer_transition_gif(r, tmp_path / f"{kind}.gif", kind=kind)
        assert path.stat().st_size <= figs.GIF_MAX_BYTES
        with Image.open(path) as im:
            assert im.n_frames == frames and im.is_animated
    assert sorted(os.listdir(tmp_path)) == ["attention.gif", "both.gif", "hidden.gif"]
    with Image.open(tmp_path / "both.gif") as im:  # frames differ: the layers change
        im.seek(1)
        a = np.asarray(im.convert("RGB"), dtype=np.int16)
        im.seek(2)
        b = np.asarray(im.convert("RGB"), dtype=np.int16)
    assert np.abs(a - b).sum() > 0
    fig = figs.layer_transition_frame(r, 0, kind="both")
    assert "layer 0 / 3" in fig.texts[0].get_text()


def test_file_safe_names_are_unique():
    a = Analysis(prompts=["p"], results=[fake_result(name="a/b"), fake_result(name="a_b")])
    assert figs.model_file_names(a) == {"a/b": "a-b", "a_b": "a_b"}
    b = Analysis(prompts=["p"], results=[fake_result(name="a/b"), fake_result(name="a:b")])
    assert figs.model_file_names(b) == {"a/b": "a-b", "a:b": "a-b_2"}  # one name, made unique


def test_session_log_html_escapes_and_lists_every_entry():
    entries = [bundle_mod.analysis_log_entry(_fake_analysis()),
               {"time": "2025-01-01T00:01:00", "action": "generate",
                "settings": {"prompt": "<b>x</b> & y", "steps": 8}, "summary": "done"}]
    page = bundle_mod.session_log_html(entries)
    assert page.count("<section>") == 2
    assert "&lt;b&gt;x&lt;/b&gt; &amp; y" in page and "<b>x</b>" not in page
    assert "<script" not in page and "href=" not in page


def test_pdf_alone_draws_its_own_figures(tmp_path):
    from pypdf import PdfReader

    from reports.pdf import write_pdf

    a = _fake_analysis(n_tokens=30)
    a.prompts = ["a <b>prompt</b> & more"]  # markup in user text must not break the PDF
    out = write_pdf(a, tmp_path / "r.pdf", session_log=[{"time": "t", "action": "analyze"}])
    reader = PdfReader(out)
    text = "\n".join(p.extract_text() or "" for p in reader.pages)
    assert "a <b>prompt</b> & more" in text and "Definitions" in text
    assert f"Figure {len(figs.standard_figures(a))}." in text
    widths = {round(float(p.mediabox.width)) for p in reader.pages}
    assert widths <= {595, 842}  # A4 portrait, and landscape pages for wide figures
    assert os.listdir(tmp_path) == ["r.pdf"]


def test_head_grid_is_every_heads_pattern_tiled_in_one_image():
    """The layer grid is one image: each head's [query, key] pattern at its panel, NaN gaps."""
    r = fake_result(n_tokens=9, n_layers=2, n_heads=5)
    att = r.trace.attentions[1]
    mosaic, origins = figs.head_mosaic(att)
    assert len(origins) == 5 and len({c for _, c in origins}) == 3  # 3 columns, 2 rows
    for h, (r0, c0) in enumerate(origins):
        assert np.array_equal(mosaic[r0:r0 + 9, c0:c0 + 9], att[h])
    assert np.isnan(mosaic).sum() == mosaic.size - 5 * 81
    fig = figs.head_grid(r, 2)
    shown = fig.axes[0].get_images()[0].get_array()
    assert np.ma.allequal(shown, np.ma.masked_invalid(mosaic))
    texts = [t.get_text() for t in fig.axes[0].texts]
    assert [x for x in texts if x.startswith("head ")] == [f"head {h}" for h in range(5)]
    labels = [figs.token_label(s) for s in r.trace.tokens]
    assert texts[5:] == labels * 2 + labels * 3  # token labels: 2 panel rows, 3 panel columns
    plt.close(fig)
