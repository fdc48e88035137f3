"""The Diffusion tab: its event functions (ui.diffusion_events) called directly with a runner
(ui.diffusion_runner), then a full generation through the running app's API with
gradio_client (the tab's events are undocumented endpoints: callable, not in the API docs)."""

import html
import re
import zipfile
from pathlib import Path

import gradio as gr
import pandas as pd
import pytest

from models.generation import RESULT_METRICS
from tests.conftest import have
from ui import diffusion_events as ev
from ui import diffusion_html as views
from ui.state import friendly_errors

pytestmark = pytest.mark.skipif(not (have("tiny-bert") and have("tiny-gpt2")),
                                reason="embedded tiny-bert / tiny-gpt2 missing")

PROMPT = "the capital of japan is"
DIFF = "tiny-diffusion" if have("tiny-diffusion") else "tiny-bert"
# model, prompt, length, steps, block length, strategy, threshold, temperature, seed, top-k,
# top-p, KV cache, early stop, mode, schedule, sampling (ui.diffusion_runner.diffusion_settings)
SETTINGS = [DIFF, PROMPT, 8, 4, 4, "low_confidence", 0, 0, 0, 0, 1.0, "none", False, "commit",
            "linear", "greedy"]
AR = ["tiny-gpt2", 0, 0, 1.0]  # model, max length (0 = the diffusion length), temperature, top-p
PROCESSING = [1.0, 0.0, 6, 0, 1.0]  # temperature, Gumbel noise, shown top-k, top-k, top-p


@pytest.fixture(scope="module")
def ctx():
    from ui.app import AppConfig, make_context

    return make_context(AppConfig())


@pytest.fixture()
def states():
    from ui.diffusion_runner import DiffusionRunner
    from ui.state import Session

    return Session(), DiffusionRunner()


def _is_plot(value) -> bool:
    from gradio.components.plot import PlotData

    return isinstance(value, PlotData) and value.plot.startswith("data:image/png;base64,")


def test_offered_models_put_diffusion_first(ctx):
    from ui.diffusion_runner import causal_models, diffusion_models

    names = diffusion_models(ctx)
    assert "tiny-bert" in names and "tiny-gpt2" not in names
    if "tiny-diffusion" in ctx.models:
        assert names[0] == "tiny-diffusion"
    assert "tiny-gpt2" in causal_models(ctx) and "tiny-bert" not in causal_models(ctx)


def test_generate_shows_text_steps_heatmap_and_exports(ctx, states):
    session, ds = states
    text, summary, slider, tokens, caption, heat, gif, viewer, files = ev.generate_event(
        ctx, session, ds, *SETTINGS)
    assert "tokyo" in text and text == ds.run.text
    assert "4 steps" in summary and "4 forward passes" in summary
    n = ds.run.generated_tokens
    assert f"{n} content tokens of 8 positions" in summary
    assert f"{n / 4:.2f} content tokens per forward pass (2.00 positions)" in summary
    assert "content tokens/s" in summary and "peak memory 0.0 MB" not in summary
    assert ds.run.peak_memory_mb > 0 and "MB" in summary
    assert slider.maximum == 4 and slider.value == 4
    assert tokens.count("class='dtok old'") + tokens.count("class='dtok new'") == 8
    assert "Step 4 / 4" in caption
    assert _is_plot(heat)
    assert Path(gif).read_bytes()[:6] in (b"GIF87a", b"GIF89a") and session.owns(gif)
    assert "<iframe" in viewer and "srcdoc=" in viewer
    html_file, zip_file, _ = files
    assert "<script" in Path(html_file).read_text()
    # per-step PNG frames: the all-masked start and one per step
    assert set(zipfile.ZipFile(zip_file).namelist()) == {
        "trace.json", "steps.gif", "viewer.html", *(f"frames/step_{i:03d}.png" for i in range(5))}
    # the slider redraws from the stored trace: step 0 all masked, step 2 = 2 of 4 steps
    tokens0, caption0 = ev.run_step_event(ctx, ds, 0)
    assert tokens0.count("dtok masked") == 8 and "Step 0 / 4" in caption0
    tokens2, caption2 = ev.run_step_event(ctx, ds, 2)
    assert tokens2.count("dtok masked") == 4 and tokens2.count("dtok new") == 2
    assert "Step 2 / 4" in caption2
    assert session.log[-1]["action"] == "diffusion generate"
    # a second run replaces the first run's files
    ev.generate_event(ctx, session, ds, *SETTINGS)
    assert not Path(gif).exists()


@pytest.mark.skipif(not have("tiny-diffusion"), reason="embedded tiny-diffusion missing")
def test_positions_after_the_end_are_greyed_not_hidden(ctx, states):
    session, ds = states
    # length 16 at threshold 0.9: tiny-diffusion fills the tail of its canvas with [SEP]
    settings = ["tiny-diffusion", PROMPT, 16, 0, 0, "low_confidence", 0.9, 0, 0]
    _text, summary, _slider, tokens, caption, *_ = ev.generate_event(ctx, session, ds, *settings)
    res = ds.run
    end = res.trace[-1].end
    assert end is not None and res.generated_tokens == end < 16
    assert f"{end} content tokens of 16 positions" in summary
    assert tokens.count("class='dtok") == 16  # every position is still drawn ...
    assert tokens.count(" after-end") == 16 - end  # ... the end token and after it greyed
    assert tokens.count("after-end eos") == 1
    cells = re.findall(r"<span class='dtok ([^']*)' data-pos='(\d+)' data-token='([^']*)'",
                       tokens)
    assert [int(p) for _c, p, _t in cells] == list(range(16))
    for cls, p, token in cells:  # greyed from the end on, and still showing its token
        assert ("after-end" in cls.split()) == (int(p) >= end)
        assert html.unescape(token) == res.tokens[int(p)]
    assert f"#{end} ends the content" in caption
    assert ".dtok.after-end" in views.CSS and "greyed" in views.legend_html()


def test_settings_are_checked(ctx, states):
    session, ds = states
    bad = {2: 7, 3: 4, 4: 4}  # length 7 with block length 4
    with pytest.raises(gr.Error, match="multiple of block_length"):
        friendly_errors(ev.generate_event)(ctx, session, ds,
                                              *[bad.get(i, v) for i, v in enumerate(SETTINGS)])
    with pytest.raises(gr.Error, match="diffusion or fill-mask"):
        friendly_errors(ev.generate_event)(ctx, session, ds, "tiny-gpt2", *SETTINGS[1:])
    with pytest.raises(gr.Error, match="prompt is empty"):
        friendly_errors(ev.generate_event)(ctx, session, ds, DIFF, " ", *SETTINGS[2:])
    with pytest.raises(gr.Error, match="whole number"):
        friendly_errors(ev.generate_event)(ctx, session, ds, DIFF, PROMPT, 2.5, *SETTINGS[3:])
    with pytest.raises(gr.Error, match="Generate first"):
        friendly_errors(ev.run_step_event)(ctx, ds, 1)


def test_length_limit_comes_from_the_config(ctx):
    from dataclasses import replace
    from types import SimpleNamespace

    from models.common import UserError
    from ui.diffusion_runner import diffusion_settings

    small = replace(ctx, config=SimpleNamespace(max_generation_length=4))
    with pytest.raises(UserError, match="limit of 4 tokens"):
        diffusion_settings(small, *SETTINGS)
    s = diffusion_settings(small, DIFF, PROMPT, 4, 0, 0, "random", 0.5, 1.0, 3)
    # 0 means "= length" / "off": the sampler gets None and decides
    assert (s.length, s.steps, s.block_length, s.threshold, s.seed) == (4, None, None, 0.5, 3)


def test_side_by_side_and_metrics(ctx, states):
    session, ds = states
    out = ev.pair_event(ctx, session, ds, *SETTINGS, *AR)
    (d_text, d_info, d_slider, d_tokens, a_text, a_info, a_slider, a_tokens, table, bars, gif,
     files) = out
    assert "tokyo" in d_text and "tokyo" in a_text
    assert "(diffusion)" in d_info and "(autoregressive)" in a_info
    assert d_slider.maximum == 4 and a_slider.maximum == 8  # AR: one step per token
    assert isinstance(table, pd.DataFrame)
    assert list(table["metric"]) == [m[0] for m in RESULT_METRICS]
    row = table.set_index("metric")
    d_col, a_col = f"diffusion ({DIFF})", "autoregressive (tiny-gpt2)"
    assert row.loc["forward passes (NFE)", d_col] == 4
    assert row.loc["forward passes (NFE)", a_col] == 8
    assert row.loc["canvas positions", d_col] == row.loc["canvas positions", a_col] == 8
    d, a = ds.pair
    for col, r in ((d_col, d), (a_col, a)):
        assert row.loc["content tokens", col] == r.generated_tokens > 0
        assert row.loc["content tokens / s", col] == pytest.approx(  # shown to 0.1
            r.generated_tokens / r.seconds, rel=0.01, abs=0.051)
        assert row.loc["content tokens per forward pass", col] == pytest.approx(
            r.generated_tokens / r.nfe, abs=0.01)
        assert row.loc["peak memory (MB)", col] > 0  # allocation-based, never an empty bar
    assert f"{a.generated_tokens} content tokens of 8 positions" in a_info
    assert _is_plot(bars)
    tokens, info = ev.pair_step_event(ctx, ds, 1, 3)  # AR after 3 tokens: 5 pending
    assert tokens.count("dtok masked") == 5 and "Step 3 / 8" in info
    assert "content tokens of 8 positions" in info
    with pytest.raises(gr.Error, match="autoregressive"):
        friendly_errors(ev.pair_event)(ctx, session, ds, *SETTINGS, "tiny-bert", *AR[1:])


def test_compare_on_the_capitals_set_and_an_upload(ctx, states, tmp_path):
    from models.compare import CAPITALS_FILE
    from models.corpus import CAPITALS

    lines = CAPITALS_FILE.read_text().splitlines()
    assert lines == [f"the capital of {c} is\t{k}" for c, k in CAPITALS.items()]
    session, ds = states
    few = tmp_path / "few.tsv"
    few.write_text("the capital of japan is\ttokyo\nthe capital of france is\tparis\n"
                   "the capital of peru is\tberlin\n")
    summary, runs, bars, note = ev.compare_set_event(ctx, session, ds, *SETTINGS, *AR, str(few),
                                                     None, False)
    assert list(summary["paradigm"]) == ["diffusion", "autoregressive"]
    assert list(summary["scored"]) == [3, 3]
    assert len(runs) == 3 and "uploaded file" in note
    # the last expected answer is wrong on purpose: at most 2 of 3 can be right
    assert all(0 <= a <= 0.6667 for a in summary["accuracy"])  # rounded to 4 places
    assert _is_plot(bars)
    assert (summary["peak memory (MB)"] > 0).all()  # both paradigms: real, non-zero peaks
    for paradigm, row in zip(summary["paradigm"], summary.to_dict("records"), strict=True):
        s = ds.comparison[paradigm]
        assert row["content tokens / s"] == round(s["generated_tokens"] / (3 * s["mean_seconds"]),
                                                  1)
        assert s["positions"] == 3 * 8  # three runs on a canvas of 8 positions
        assert 0 < row["mean content tokens"] <= 8
    assert "Content tokens" in note and "stops at its end-of-sequence" in note
    assert "a canvas of 8 positions" in note


@pytest.mark.slow
def test_compare_on_the_bundled_capitals(ctx, states):
    session, ds = states
    summary, runs, _bars, note = ev.compare_set_event(ctx, session, ds, *SETTINGS, *AR, None,
                                                      None, False)
    assert len(runs) == 52 and "bundled capitals set" in note
    assert (summary["accuracy"] > 0.5).all()  # both embedded models learned the capitals


def _step(ctx, ds, fn, *args):
    seq, cands, choices, info, rewind = getattr(ev, fn)(ctx, ds, *args)
    return {"seq": seq, "cands": cands, "choices": choices, "info": info, "rewind": rewind}


def test_interactive_events(ctx, states):
    session, ds = states
    with pytest.raises(gr.Error, match="Initialise first"):
        friendly_errors(ev.step_forward_event)(ctx, ds, *PROCESSING)
    out = _step(ctx, ds, "step_init_event", DIFF, PROMPT, 8, 4, 0, "none", *PROCESSING,
                False)
    assert "Step 0" in out["info"] and "0 forward passes" in out["info"]
    assert "0 content tokens of 8 positions" in out["info"]
    assert "Forward pass" in out["cands"] and out["choices"].choices == []
    out = _step(ctx, ds, "step_forward_event", *PROCESSING)
    assert "1 forward passes" in out["info"]
    values = [v for _label, v in out["choices"].choices]
    assert {int(v.split(":")[0]) for v in values} == {0, 1, 2, 3}  # block 0 only
    assert out["cands"].count("<tr") == 1 + 8
    # reprocess: another temperature and top-k, no forward pass
    out = _step(ctx, ds, "step_reprocess_event", 0.5, 0.0, 6, 2, 1.0)
    assert "1 forward passes" in out["info"] and "selectable top-k 2" in out["cands"]
    assert len(out["choices"].choices) == 4 * 2
    # auto-select one, hand-pick another, apply
    out = _step(ctx, ds, "step_auto_event", [], 1, "low_confidence")
    (auto,) = out["choices"].value
    hand = next(v for _label, v in out["choices"].choices if v.split(":")[0] != auto.split(":")[0])
    out = _step(ctx, ds, "step_select_event", [auto, hand])
    assert "2 chosen" in out["info"] and out["seq"].count("dtok chosen") == 2
    out = _step(ctx, ds, "step_apply_event", out["choices"].value, True)
    assert "Step 1" in out["info"] and "6 of 8 masked" in out["info"]
    assert "2 forward passes" in out["info"]  # the automatic forward pass after applying
    content = ds.stepper.generated_tokens
    assert f"{content} content tokens of 8 positions" in out["info"]
    assert f"{content / 2:.2f} content tokens per forward pass" in out["info"]
    stepper = ds.stepper
    for v in (auto, hand):
        p, t = map(int, v.split(":"))
        assert stepper.region[p] == t
    ids_at_1 = list(stepper.ids)
    out = _step(ctx, ds, "step_auto_event", [], 2, "random")
    out = _step(ctx, ds, "step_apply_event", out["choices"].value, True)
    assert "Step 2" in out["info"] and out["rewind"].maximum == 2
    out = _step(ctx, ds, "step_rewind_event", 1)
    assert stepper.ids == ids_at_1 and stepper.step == 1 and "Rewound to step 1" in out["info"]
    # a user error in step mode leaves the controls usable: no error over the outputs, the
    # message in the step information (and a toast), the state redrawn
    with pytest.warns(UserWarning, match="Two tokens"):
        out = _step(ctx, ds, "step_select_event", ["4:10", "4:11"])
    assert "Two tokens are chosen for position 4" in out["info"] and stepper.step == 1
    assert out["choices"].interactive and out["rewind"].interactive
    out = _step(ctx, ds, "step_finish_event", 2, "low_confidence")
    assert stepper.done and "0 of 8 masked" in out["info"] and "every position" in out["cands"].lower()


def test_analyze_this_step_becomes_the_session_analysis(ctx, states):
    from ui import layer_tab

    session, ds = states
    _step(ctx, ds, "step_init_event", DIFF, PROMPT, 4, 0, 0, "none", *PROCESSING, True)
    _step(ctx, ds, "step_auto_event", [], 2, "low_confidence")
    _step(ctx, ds, "step_apply_event", [f"{p}:{t}" for p, t in ds.stepper.selection.items()], True)
    before = session.analysis_id
    info = ev.step_analyze_event(ctx, session, ds)
    assert "Analysed diffusion step 1 of at most 3" in info and "2 masked" in info
    assert session.analysis_id == before + 1
    result = session.analysis.results[0]
    assert result.name == DIFF and result.trace.token_ids == ds.stepper.ids
    assert result.trace.tokens.count("[MASK]") == 2
    # the Layer Analysis tab draws from it like from any analysis
    out = layer_tab.model_event(ctx, session, None, 1, 0)
    assert out[0].value == DIFF and out[2].value == 1
    # ... and says it is a diffusion step, not the Overall prompt (its banner and the notice)
    assert "diffusion step 1 of at most 3" in out[1].lower() and "not an analysis" in out[1]
    assert "not an analysis of the Overall tab's prompt" in result.trace.notices[0]
    # and the Overall tab (whose ZIP button bundles session.analysis) shows the same analysis
    from ui import overall_tab

    shown = dict(zip(overall_tab.output_names(ctx.config.max_models_per_analysis),
                     overall_tab.show_event(ctx, session), strict=True))
    table = shown["metrics-table"]
    assert set(table["model"]) == {DIFF}
    assert len(table) == result.trace.n_layers + 1
    assert shown["model-header-0"].startswith(f"### {DIFF}")


# ---------------------------------------------------------------------------- through the API


@pytest.mark.slow
def test_full_generation_through_gradio_client(url):
    from gradio_client import Client

    c = Client(url, verbose=False, download_files=True)
    out = c.predict(*SETTINGS, api_name="/diffusion_generate")
    text, summary, slider, tokens, caption, heat, gif, viewer, files = out
    assert "tokyo" in text and "4 steps" in summary
    assert "Step 4 / 4" in caption and "dtok" in tokens
    assert Path(gif).read_bytes()[:3] == b"GIF"
    names = sorted(Path(f).suffix for f in files)
    assert names == [".gif", ".html", ".zip"]
    tokens1, caption1 = c.predict(1, api_name="/diffusion_step")
    assert "Step 1 / 4" in caption1 and tokens1.count("dtok masked") == 6
    # interactive: initialise (with a forward pass), auto-select 2, apply, rewind
    init = c.predict(DIFF, PROMPT, 8, 0, 0, "none", *PROCESSING, True, api_name="/step_init")
    assert "1 forward passes" in init[3]
    auto = c.predict([], 2, "low_confidence", api_name="/step_auto")
    chosen = auto[2]["value"] if isinstance(auto[2], dict) else auto[2]
    assert len(chosen) == 2
    applied = c.predict(chosen, True, api_name="/step_apply")
    assert "Step 1" in applied[3] and "6 of 8 masked" in applied[3]
    back = c.predict(0, api_name="/step_rewind")
    assert "Step 0" in back[3] and "8 of 8 masked" in back[3]
    # a second client has its own stepper
    other = Client(url, verbose=False)
    from gradio_client.exceptions import AppError

    with pytest.raises(AppError, match="Initialise first"):
        other.predict([], 1, "low_confidence", api_name="/step_auto")



def test_every_component_of_the_tab_has_an_elem_id():
    from models.loading import MODELS
    from ui.app import AppConfig, build_app

    MODELS.clear()
    demo = build_app(AppConfig())
    assert MODELS.names() == []  # building the tab loads no model
    tab = next(b for b in demo.blocks.values() if getattr(b, "elem_id", None) == "tab-diffusion")
    missing, seen = [], 0

    def walk(block):
        nonlocal seen
        for child in getattr(block, "children", []):
            if isinstance(child, gr.State):
                continue
            if type(child).__name__ == "Form":  # made by Gradio around form fields
                walk(child)
                continue
            seen += 1
            if not getattr(child, "elem_id", None):
                missing.append(type(child).__name__)
            walk(child)

    walk(tab)
    assert seen > 60 and missing == []
