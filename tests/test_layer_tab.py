"""ui/layer_tab.py events: what each panel says it shows, targets, bundles, the tab opening."""

import json
from pathlib import Path

import gradio as gr
import pytest

from tests.conftest import have

pytestmark = pytest.mark.skipif(not have("tiny-gpt2"), reason="embedded tiny-gpt2 missing")

PROMPT = "the capital of japan is"
OUTPUTS = ["model", "banner", "layer", "head", "error", "info", "maps", "roles", "target",
           "contrast", "target_info", "prediction"]


@pytest.fixture(scope="module")
def ctx():
    from ui.app import AppConfig, make_context

    return make_context(AppConfig())


@pytest.fixture(scope="module")
def session(ctx):
    from ui import overall_tab
    from ui.state import Session

    s = Session()
    overall_tab.analyze_event(ctx, s, ["tiny-gpt2"], None, PROMPT)
    yield s
    from ui.state import cleanup

    cleanup(s)


def shown(out) -> dict:
    return dict(zip(OUTPUTS, out, strict=True))


def panels_of(update) -> list[dict]:
    return json.loads(update.constructor_args["value"]).get("panels", [])


@pytest.mark.skipif(not have("tiny-diffusion"), reason="embedded tiny-diffusion missing")
def test_a_diffusion_step_is_labelled_as_one_everywhere(ctx):
    """'Analyze this step' (the Diffusion tab's step mode) stores an analysis of the partly
    masked sequence with settings {"source": "diffusion step", ...}: the banner and every panel
    say so (step k of n, the masked positions) and never pass it off as the Overall prompt."""
    from datetime import datetime, timezone

    from analysis.result import Analysis
    from analysis.run import analyze_model
    from ui import layer_tab
    from ui.state import Session

    loaded = ctx.load("tiny-diffusion")
    tok = loaded.tokenizer
    ids = tok("the capital of japan is", add_special_tokens=True)["input_ids"]
    ids = ids[:-1] + [tok.mask_token_id] * 3 + ids[-1:]
    masked = [i for i, t in enumerate(ids) if t == tok.mask_token_id]
    text = tok.decode(ids[1:-1])
    result = analyze_model(loaded, [text], input_ids=ids)
    analysis = Analysis(prompts=[text], results=[result],
                        settings={"source": "diffusion step", "step": 2, "steps": 6,
                                  "length": 3, "block_length": 3},
                        created=datetime.now(timezone.utc).isoformat(timespec="seconds"))
    session = Session()
    session.set_analysis(analysis)
    out = shown(layer_tab.model_event(ctx, session, None))
    banner = out["banner"]
    assert "Diffusion step 2 of 6" in banner and "not an analysis of the Overall prompt" in banner
    assert ", ".join(str(p) for p in masked) in banner
    label = f"diffusion step 2 of 6, {len(masked)} masked of {len(ids)} positions"
    for update in (out["maps"], out["prediction"]):
        for panel in panels_of(update):
            assert label in panel["source"] and "tiny-diffusion" in panel["source"], panel["id"]
    explorer = layer_tab.explorer_event(ctx, session, None).constructor_args["value"]
    assert label in json.loads(explorer)["title"]
    # a target for the step: explained at the first masked position
    info, views = layer_tab.target_event(ctx, session, None, out["target"].constructor_args["value"])
    assert f"at position {masked[0]}" in info and label in info


def test_targets_explain_inline_and_refuse_inline(ctx, session):
    from ui import layer_tab

    info, update = layer_tab.target_event(ctx, session, "tiny-gpt2", "japan", "tokyo", "gradient")
    assert "Target “ japan”" in info and "against “ tokyo”" in info and "logit difference" in info
    ids = [p["id"] for p in panels_of(update)]
    assert ids == ["target-attribution", "target-support", "target-rank", "target-lens"]
    for panel in panels_of(update):
        assert "target “ japan” over “ tokyo”" in panel["source"] and PROMPT in panel["source"]
    assert session.log[-1]["action"] == "explain target"
    # what the user can fix is said beside the boxes; nothing else changes
    info, update = layer_tab.target_event(ctx, session, "tiny-gpt2", "capital japan", "")
    assert info.startswith("⚠️") and "not one token" in info
    assert isinstance(update, type(gr.skip()))
    info, _ = layer_tab.target_event(ctx, session, "tiny-gpt2", "id:10", "", "magic")
    assert "Unknown method" in info


def test_an_analysis_replaced_while_explaining_is_not_mixed_in(ctx, session, monkeypatch):
    from analysis import targets
    from ui import layer_tab

    real = targets.token_lens

    def slow_lens(*args, **kwargs):
        session.analysis_id += 1  # as if a new analysis arrived meanwhile
        return real(*args, **kwargs)

    monkeypatch.setattr(targets, "token_lens", slow_lens)
    info, update = layer_tab.target_event(ctx, session, "tiny-gpt2", "tokyo")
    assert "new analysis arrived" in info and isinstance(update, type(gr.skip()))


def test_the_tab_redraws_on_opening_only_for_a_newer_analysis(ctx, session):
    from ui import layer_tab

    layer_tab.model_event(ctx, session, "tiny-gpt2")
    assert all(isinstance(x, type(gr.skip())) for x in layer_tab.tab_open_event(ctx, session, None))
    session.set_analysis(session.analysis)  # e.g. a diffusion step stored by the Diffusion tab
    out = shown(layer_tab.tab_open_event(ctx, session, None))
    assert PROMPT in out["banner"] and session.layer_shown == session.analysis_id


def test_a_saved_bundle_opens_and_is_browsed_without_a_model(ctx, session, tmp_path, monkeypatch):
    from models.loading import MODELS
    from reports import figures as figs
    from reports.bundle import write_bundle
    from ui import layer_tab
    from ui.state import Session

    monkeypatch.setattr(figs, "render_pngs", lambda a, folder, dpi=110: Path(folder).mkdir(
        parents=True, exist_ok=True) or {})
    path = write_bundle(session.analysis, tmp_path / "saved.zip")
    fresh = Session()
    loads = []
    monkeypatch.setattr(MODELS, "get", lambda *a, **k: loads.append(a) or pytest.fail("loaded"))
    status, *rest = layer_tab.open_bundle_event(ctx, fresh, str(path))
    out = shown(rest)
    assert "saved.zip" in status and "tiny-gpt2" in status
    assert "Opened from the bundle `saved.zip`" in out["banner"] and PROMPT in out["banner"]
    assert all("opened from saved.zip" in p["source"] for p in panels_of(out["maps"]))
    value = json.loads(layer_tab.explorer_event(ctx, fresh, None).constructor_args["value"])
    assert value["n_tokens"] == 5 and value["url"]
    assert layer_tab.gif_event(ctx, fresh, None).endswith(".gif")
    layer, head, error, info, *_ = layer_tab.pick_event(ctx, fresh, None, 3, 2)
    assert "layer 3 / 3 · head 2" in info
    info, _ = layer_tab.target_event(ctx, fresh, None, "tokyo")
    assert "opened from a bundle" in info
    assert fresh.log[-1]["action"] == "open bundle" and loads == []
    # the Overall tab shows it too (the app chains its show_event), continuation included
    from ui import overall_tab

    assert fresh.continuations_for == fresh.analysis_id
    names = overall_tab.output_names(ctx.config.max_models_per_analysis)
    shown_overall = dict(zip(names, overall_tab.show_event(ctx, fresh), strict=True))
    assert "writing" not in shown_overall["continuation-0"]
    assert shown_overall["model-header-0"].startswith("### tiny-gpt2") and loads == []
    from ui.state import cleanup

    cleanup(fresh)
