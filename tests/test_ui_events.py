"""The UI's event functions called directly (no server): fast checks of what each tab returns."""

import re
import tempfile
import time
from pathlib import Path

import gradio as gr
import pandas as pd
import pytest

from tests.conftest import have

pytestmark = pytest.mark.skipif(not have("tiny-gpt2"), reason="embedded tiny-gpt2 missing")

PROMPT = "the capital of japan is"


@pytest.fixture(scope="module")
def ctx():
    from ui.app import AppConfig, make_context

    return make_context(AppConfig())


@pytest.fixture(scope="module")
def analysed(ctx):
    """One session that has analysed tiny-gpt2 (and tiny-bert when present)."""
    from ui import overall_tab
    from ui.state import Session

    session = Session()
    models = ["tiny-gpt2"] + (["tiny-bert"] if have("tiny-bert") and "tiny-bert" in ctx.models else [])
    outputs = overall_tab.analyze_event(ctx, session, models, None, PROMPT)
    return session, models, dict(zip(overall_tab.output_names(ctx.config.max_models_per_analysis),
                                     outputs, strict=True))


def _is_plot(value) -> bool:
    from gradio.components.plot import PlotData

    return isinstance(value, PlotData) and value.plot.startswith("data:image/png;base64,")


def test_analyze_returns_figures_table_and_predictions(analysed):
    session, models, out = analysed
    assert out["state"] is session and session.analysis is not None
    assert _is_plot(out["metric-curves"])
    table = out["metrics-table"]
    assert isinstance(table, pd.DataFrame)
    for name in models:
        n_layers = session.analysis.result(name).trace.n_layers
        rows = table[table["model"] == name]
        assert list(rows["layer"]) == list(range(n_layers + 1))  # L + 1 rows: 0 = embeddings
        assert rows["attention entropy"].isna().iloc[0]  # no attention on the embeddings
    assert table.shape[1] == 2 + 8 + 2  # model, layer, 8 metrics and TwoNN's 95% interval
    assert {"TwoNN 95% low", "TwoNN 95% high"} <= set(table.columns)
    # slot 0 is tiny-gpt2: next-token top-k with probabilities, continuation, attribution
    assert out["model-header-0"].startswith("### tiny-gpt2")
    preds = out["predictions-0"]
    assert list(preds)[0] == "tokyo" and 0 < preds["tokyo"] <= 1
    assert sum(preds.values()) <= 1 + 1e-9
    assert "Greedy continuation" in out["continuation-0"]
    highlights = out["attribution-0"]
    assert "".join(t for t, _ in highlights) == PROMPT
    assert max(abs(v) for _, v in highlights) == pytest.approx(1.0)  # normalised
    assert _is_plot(out["norm-heatmap-0"]) and _is_plot(out["correlation-0"])
    # unused slots are hidden and empty
    last = f"slot-{len(models)}"
    assert out[last].visible is False
    assert out[f"norm-heatmap-{len(models)}"] is None


@pytest.mark.skipif(not have("tiny-bert"), reason="embedded tiny-bert missing")
def test_fill_mask_without_mask_is_analysed_with_a_notice(ctx):
    from ui import overall_tab
    from ui.state import Session

    out = dict(zip(overall_tab.output_names(ctx.config.max_models_per_analysis),
                   overall_tab.analyze_event(ctx, Session(), ["tiny-bert"], None, PROMPT),
                   strict=True))
    assert "[MASK]" in out["notices"]
    assert out["predictions-0"] is None
    assert _is_plot(out["metric-curves"])
    out = dict(zip(overall_tab.output_names(ctx.config.max_models_per_analysis),
                   overall_tab.analyze_event(ctx, Session(), ["tiny-bert"], None,
                                             "the capital of japan is [MASK]."), strict=True))
    assert list(out["predictions-0"])[0] == "tokyo"
    assert "Filled sentence" in out["continuation-0"]


def _count_forward_calls(monkeypatch) -> tuple[list, list]:
    """Every forward pass of any loaded model, and every capture(), is appended to `calls`."""
    import analysis.capture
    import analysis.run
    from models.loading import MODELS as CACHE

    calls, handles = [], []
    for key, loaded in list(CACHE._items.items()):
        handles.append(loaded.model.register_forward_pre_hook(
            lambda *args, name=key[0]: calls.append(name)))

    def no_capture(*args, **kwargs):
        calls.append("capture")
        raise AssertionError("the layer tab must not run the model")

    monkeypatch.setattr(analysis.capture, "capture", no_capture)
    monkeypatch.setattr(analysis.run, "capture", no_capture)
    return calls, handles


def test_layer_and_head_changes_redraw_without_forward_passes(ctx, analysed, monkeypatch):
    from ui import layer_tab

    session, models, _ = analysed
    calls, handles = _count_forward_calls(monkeypatch)
    assert handles  # the analysed model is in the cache, so its forward passes are counted
    try:
        out = layer_tab.model_event(ctx, session, "tiny-gpt2", 1, 0)
        n_layers = session.analysis.result("tiny-gpt2").trace.n_layers
        n_heads = session.analysis.result("tiny-gpt2").trace.n_heads
        assert out[1].maximum == n_layers and out[2].maximum == n_heads - 1
        assert all(_is_plot(v) for v in out[4:9]) and _is_plot(out[10]) and _is_plot(out[11])
        roles = out[9]
        assert len(roles) == n_layers * n_heads
        assert {"previous-token", "first-token", "self", "induction"} <= set(roles.columns)
        first = out[4].plot
        info, pattern, grid = layer_tab.layer_event(ctx, session, "tiny-gpt2", n_layers, 0)
        assert _is_plot(pattern) and _is_plot(grid) and pattern.plot != first
        assert f"layer {n_layers}" in info
        info, pattern2 = layer_tab.head_event(ctx, session, "tiny-gpt2", n_layers, n_heads - 1)
        assert pattern2.plot != pattern.plot and f"head {n_heads - 1}" in info
        # switches redraw the session's kept figures: the same PNG as a figure built anew
        from reports import figures as F
        from ui.state import encode_figure

        result = session.analysis.result("tiny-gpt2")
        assert session.kept
        assert pattern2.plot == encode_figure(F.attention_pattern(result, n_layers, n_heads - 1)).plot
        assert grid.plot == encode_figure(F.head_grid(result, n_layers)).plot
        # out-of-range values are clamped, not errors
        info, pattern3, _ = layer_tab.layer_event(ctx, session, "tiny-gpt2", 99, 99)
        assert pattern3.plot == pattern2.plot
        gif = layer_tab.gif_event(ctx, session, "tiny-gpt2")
        assert Path(gif).read_bytes()[:6] in (b"GIF89a", b"GIF87a") and session.owns(gif)
        layer_tab.prewarm_event(ctx, session, "tiny-gpt2")
        # a cached redraw is instant; every (layer, head) is cached after the pre-draw
        for layer in range(1, n_layers + 1):
            assert session.cached(("grid", "tiny-gpt2", layer))
            for head in range(n_heads):
                assert session.cached(("pattern", "tiny-gpt2", layer, head))
        t0 = time.perf_counter()
        layer_tab.layer_event(ctx, session, "tiny-gpt2", 2, 1)
        layer_tab.head_event(ctx, session, "tiny-gpt2", 2, 2)
        assert time.perf_counter() - t0 < 0.15
    finally:
        for h in handles:
            h.remove()
    assert calls == []


def test_empty_prompt_gives_a_readable_error_and_the_next_call_works(ctx):
    from ui import overall_tab
    from ui.state import Session, friendly_errors

    session = Session()
    analyze = friendly_errors(overall_tab.analyze_event)
    with pytest.raises(gr.Error, match="prompt is empty"):
        analyze(ctx, session, ["tiny-gpt2"], None, "   ")
    with pytest.raises(gr.Error, match="Choose at least one model"):
        analyze(ctx, session, [], None, PROMPT)
    with pytest.raises(gr.Error, match="not offered"):
        analyze(ctx, session, ["some/other-model"], None, PROMPT)
    with pytest.raises(gr.Error, match="Custom models are disabled"):
        analyze(ctx, session, [], "gpt2", PROMPT)
    with pytest.raises(gr.Error, match="Run an analysis first"):
        friendly_errors(overall_tab.bundle_event)(ctx, session)
    assert session.analysis is None
    out = analyze(ctx, session, ["tiny-gpt2"], None, PROMPT)
    assert out[0].analysis is not None
    assert [e["action"] for e in session.log][-1] == "analyze"
    assert sum(e.get("error") is not None for e in session.log) == 4


def test_bundle_lives_in_the_sessions_own_temp_dir(ctx, analysed):
    import zipfile

    from ui import overall_tab
    from ui.state import Session, cleanup

    session, models, _ = analysed
    file, state, log_table = overall_tab.bundle_event(ctx, session)
    assert file["visible"] is True
    path = Path(file["value"])
    assert path.is_file() and zipfile.is_zipfile(path)
    tmp = Path(tempfile.gettempdir()).resolve()
    assert path.resolve().is_relative_to(tmp)
    assert session.owns(path) and path.parent == session.directory
    assert re.search(r"[0-9a-f]{32}", path.parent.name)  # unguessable directory name
    assert "download bundle" in list(log_table["action"])
    with zipfile.ZipFile(path) as z:
        assert "manifest.json" in z.namelist()
    # asking again returns the same file without rebuilding
    assert overall_tab.bundle_event(ctx, session)[0]["value"] == str(path)
    # another session has no bundle and its own directory
    other = Session()
    with pytest.raises(Exception, match="Run an analysis first"):
        overall_tab.bundle_event(ctx, other)
    assert not other.owns(path)
    # a new analysis drops the old bundle; ending the session removes its directory
    overall_tab.analyze_event(ctx, session, ["tiny-gpt2"], None, "red ball moon tree red ball")
    assert not path.exists()
    folder = session.directory
    cleanup(session)
    assert not folder.exists()


def test_build_app_loads_no_model_and_has_every_elem_id():
    from models.loading import MODELS as CACHE
    from ui.app import AppConfig, build_app

    CACHE.clear()
    t0 = time.perf_counter()
    demo = build_app(AppConfig())
    assert time.perf_counter() - t0 < 15
    assert CACHE.names() == []
    ids = {getattr(b, "elem_id", None) for b in demo.blocks.values()}
    for needed in ("prompt", "models", "analyze-btn", "bundle-btn", "download", "metric-curves",
                   "metrics-table", "predictions-0", "attribution-0", "norm-heatmap-0",
                   "correlation-0", "layer-model", "layer-slider", "head-slider",
                   "attention-pattern", "head-grid", "entropy-heatmap", "head-clusters",
                   "role-table", "head-attribution", "logit-lens", "layer-gif", "details",
                   "tab-overall", "tab-layer", "tab-diffusion", "tab-details"):
        assert needed in ids, needed
    assert not any(b.elem_id == "custom-model" for b in demo.blocks.values()
                   if hasattr(b, "elem_id"))


def test_custom_model_box_only_when_allowed(ctx):
    from ui import overall_tab
    from ui.app import AppConfig, Context, build_app

    demo = build_app(AppConfig(allow_custom_models=True))
    assert any(getattr(b, "elem_id", None) == "custom-model" for b in demo.blocks.values())
    allowing = Context(config=AppConfig(allow_custom_models=True), models=ctx.models,
                       load=ctx.load)
    assert overall_tab.chosen_models(allowing, [], "tiny-gpt2") == ["tiny-gpt2"]
    assert AppConfig(share=True).allow_custom_models is False
    assert AppConfig().trust_remote_code is False


def test_details_text_has_formulas_and_embedded_facts():
    import json

    from models.registry import EMBEDDED_DIR
    from ui.details_tab import details_markdown

    text = details_markdown()
    for phrase in ("Effective rank", r"\operatorname{erank}", "Participation ratio", "TwoNN",
                   "rank at most", "Causal masks", "final layer norm", "Gradient × input",
                   "rollout", "ablation", "Logit lens", "induction"):
        assert phrase in text, phrase
    facts = json.loads((EMBEDDED_DIR / "tiny-gpt2" / "training.json").read_text())
    row = next(line for line in text.splitlines() if line.startswith("| `tiny-gpt2`"))
    assert f"| {facts['n_layers']} × {facts['n_heads']}, d = {facts['hidden_size']} |" in row
    assert f"{facts['params']:,}" in row
    assert "{{" not in text


def test_parse_auth():
    from models.common import UserError
    from ui.app import parse_auth

    assert parse_auth("ann:secret:x") == ("ann", "secret:x")
    assert parse_auth(None) is None
    with pytest.raises(UserError):
        parse_auth("nocolon")


def test_continuation_follows_the_shown_analysis(ctx, gpt2):
    """The Overall tab shows the analysis without waiting for the 12-token continuation (a
    generation asked for after it); continuation_event then writes the continuation of the same
    ids into the panel and a session-log entry of its own, and the analysis is never written to.
    A bundle built before that asks for it first."""
    from analysis.run import continuation_of
    from ui import overall_tab
    from ui.state import Session

    names = overall_tab.output_names(ctx.config.max_models_per_analysis)
    session = Session()
    out = dict(zip(names, overall_tab.analyze_event(ctx, session, ["tiny-gpt2"], None, PROMPT),
                   strict=True))
    result = session.analysis.result("tiny-gpt2")
    expected = continuation_of(gpt2, result)
    assert "writing" in out["continuation-0"] and session.continuations == {}
    log_before = [dict(e) for e in session.log]
    texts = overall_tab.continuation_event(ctx, session)
    assert expected and expected in texts[0] and "writing" not in texts[0]
    assert session.continuations == {"tiny-gpt2": expected}
    assert [dict(e) for e in session.log[:len(log_before)]] == log_before  # nothing rewritten
    entry = session.log[-1]
    assert entry["action"] == "continuation" and entry["summary"]["tiny-gpt2"]["text"] == expected
    assert overall_tab.continuation_event(ctx, session)[0] == texts[0]  # nothing left to do
    assert len(session.log) == len(log_before) + 1

    other = Session()
    overall_tab.analyze_event(ctx, other, ["tiny-gpt2"], None, PROMPT)
    overall_tab.bundle_event(ctx, other)  # before the continuation event
    assert other.continuations == {"tiny-gpt2": expected}


def test_a_new_analysis_drops_the_kept_figures(analysed):
    from ui.state import Session

    session = Session()
    session.kept[("pattern", "x")] = object()
    session.figures[(0, "pattern")] = object()
    session.set_analysis(analysed[0].analysis)
    assert session.kept == {} and session.figures == {}
