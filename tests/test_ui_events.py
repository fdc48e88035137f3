"""The UI's event functions called directly (no server): fast checks of what each tab returns."""

import re
import time
from pathlib import Path

import gradio as gr
import numpy as np
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


def test_layer_tab_switches_and_refusals_run_no_model(ctx, analysed, monkeypatch):
    """The Layer tab draws from the stored analysis: choosing the model, a head (by a click or
    the boxes), the explorer's data and the GIF never run a model. Boxes refuse 0, 99 and -3
    with the bounds and go back to what the views show."""
    import json

    from ui import explorer, layer_tab

    session, models, _ = analysed
    calls, handles = _count_forward_calls(monkeypatch)
    assert handles  # the analysed model is in the cache, so its forward passes are counted
    result = session.analysis.result("tiny-gpt2")
    n_layers, n_heads = result.trace.n_layers, result.trace.n_heads
    try:
        out = dict(zip(["model", "banner", "layer", "head", "error", "info", "maps", "roles",
                        "target", "contrast", "target_info", "prediction"],
                       layer_tab.model_event(ctx, session, "tiny-gpt2"), strict=True))
        assert out["layer"].value == 1 and out["head"].value == 0
        assert f"1..{n_layers}" in out["layer"].label and f"0..{n_heads - 1}" in out["head"].label
        assert PROMPT in out["banner"] and "tiny-gpt2" in out["banner"]
        maps = json.loads(out["maps"].constructor_args["value"])
        assert [p["id"] for p in maps["panels"]] == ["entropy", "induction", "previous", "clusters"]
        entropy = maps["panels"][0]
        assert entropy["layers"] == list(range(1, n_layers + 1)) and entropy["select"]
        assert entropy["values"][1][2] == pytest.approx(result.heads.attention_entropy[1, 2],
                                                        rel=1e-5)
        assert all(PROMPT in p["source"] for p in maps["panels"])  # each names what it shows
        roles = out["roles"].constructor_args["value"]
        assert PROMPT in out["roles"].constructor_args["label"]
        assert len(roles) == n_layers * n_heads
        assert {"previous-token", "first-token", "self", "induction"} <= set(roles.columns)
        assert out["target"].constructor_args["value"] == "tokyo"
        pred = json.loads(out["prediction"].constructor_args["value"])
        assert [p["id"] for p in pred["panels"]] == ["attribution", "support", "lens"]

        # a click (or the boxes) selects a head everywhere
        layer, head, error, info, ex, m, p = layer_tab.pick_event(ctx, session, "tiny-gpt2",
                                                                  n_layers, n_heads - 1)
        assert (layer, head, error) == (n_layers, n_heads - 1, "")
        assert f"layer {n_layers} / {n_layers}" in info and f"head {n_heads - 1}" in info
        assert ex.constructor_args == {"selection": [n_layers, n_heads - 1]}  # no data re-sent
        assert m.constructor_args == p.constructor_args == {"selection": [n_layers, n_heads - 1]}
        for bad_layer, bad_head, says in ((0, 1, "Layer must be between 1 and 3, got 0"),
                                          (99, 1, "Layer must be between 1 and 3, got 99"),
                                          (2, -3, "Head must be between 0 and 3, got -3")):
            layer, head, error, *rest = layer_tab.boxes_event(ctx, session, "tiny-gpt2",
                                                              bad_layer, bad_head)
            assert says in error and f"heads 0..{n_heads - 1}" in error
            # the boxes go back to the selection every view still shows; nothing else changes
            assert (layer, head) == (n_layers, n_heads - 1)
            assert all(isinstance(x, type(gr.skip())) for x in rest)
        with pytest.raises(Exception, match="not in the current analysis"):
            layer_tab.pick_event(ctx, session, "tiny-llama-x", 1, 0)

        # the explorer's data: a small JSON that points at the compressed file in the session
        value = layer_tab.explorer_event(ctx, session, "tiny-gpt2").constructor_args["value"]
        meta = json.loads(value)
        assert "codes" not in meta and meta["url"].startswith("/gradio_api/file=")
        path = session.files[(session.analysis_id, "explorer", "tiny-gpt2")]
        assert session.owns(path) and path.stat().st_size == meta["compressed_bytes"]
        blob = path.read_bytes()
        p = explorer.AttentionPayload.from_json({**meta, "codes": "", "scales": ""})
        p = type(p)(**{**p.__dict__, "scales": blob[:meta["scales_bytes"]],
                       "codes": blob[meta["scales_bytes"]:]})
        att = np.asarray(result.trace.attentions)
        back = explorer.unpack_attention(p)
        assert (np.abs(back - att) <= att.max(-1, keepdims=True) * explorer.quantisation_bound()
                + 1e-6).all()
        gif = layer_tab.gif_event(ctx, session, "tiny-gpt2")
        assert Path(gif).read_bytes()[:6] in (b"GIF89a", b"GIF87a") and session.owns(gif)
        # a second model change reuses both files
        assert layer_tab.explorer_event(ctx, session, "tiny-gpt2").constructor_args["value"] == value
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


def test_bundle_lives_in_the_sessions_own_folder(ctx, analysed):
    import zipfile

    from ui import overall_tab
    from ui.state import Session, cleanup, sessions_root

    session, models, _ = analysed
    file, state, log_table = overall_tab.bundle_event(ctx, session)
    assert file["visible"] is True
    path = Path(file["value"])
    assert path.is_file() and zipfile.is_zipfile(path)
    assert path.resolve().is_relative_to(sessions_root().resolve())  # assets/sessions
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
                   "correlation-0", "layer-model", "layer-box", "head-box", "layer-source",
                   "layer-error", "head-info", "attention-explorer", "head-maps", "role-table",
                   "target-token", "contrast-token", "target-btn", "prediction-views",
                   "layer-gif", "bundle-file", "details",
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


def test_a_new_analysis_drops_the_session_files_and_selection(analysed, tmp_path):
    from ui.state import Session

    session = Session()
    kept = session.folder() / "attention-x-1.bin"
    kept.write_bytes(b"x")
    session.files[(0, "explorer", "x")] = kept
    session.figures[(0, "pattern")] = object()
    session.selection["x"] = (2, 1)
    session.set_analysis(analysed[0].analysis)
    assert session.files == {} and session.figures == {} and session.selection == {}
    assert not kept.exists()
