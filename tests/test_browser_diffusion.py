"""The Diffusion tab in a real Chromium (Playwright): generate, step through the trace, see the
positions after the end-of-sequence token greyed, take interactive steps (one auto-selected, one
hand-picked), rewind, compare side by side; the KV cache and early stopping in every view; a
double click during a job; recovering from step mode's Apply-with-nothing-selected error.

Reuses tests/test_browser.py's fixtures (a server on a free port, one page) and helpers; waits
on locators only. Screenshots go to $DIFFUSION_SCREENS (default screenshots/, git-ignored):
whole pages, and close-ups of the parts these tests check (gen_*.png).
"""

import os
import re
import zipfile
from pathlib import Path

import pytest

from tests.conftest import ROOT, have
from tests.test_browser import TIMEOUT_MS, expect_drawn, page, url  # noqa: F401

pytestmark = [pytest.mark.browser, pytest.mark.slow,
              pytest.mark.skipif(not have("tiny-bert"), reason="embedded tiny-bert missing")]

SHOTS = Path(os.environ.get("DIFFUSION_SCREENS", ROOT / "screenshots"))


def shot(pg, name: str) -> None:
    SHOTS.mkdir(parents=True, exist_ok=True)
    pg.screenshot(path=str(SHOTS / f"{name}.png"), full_page=True)


def close_up(pg, selector: str, name: str) -> None:
    """A screenshot of one part of the page (SHOTS/gen_<name>.png)."""
    SHOTS.mkdir(parents=True, exist_ok=True)
    loc = pg.locator(selector).first
    loc.scroll_into_view_if_needed()
    loc.screenshot(path=str(SHOTS / f"gen_{name}.png"))


def set_number(pg, elem_id: str, value) -> None:
    box = pg.locator(f"#{elem_id} input[type=number]").first
    box.fill(str(value))
    box.press("Enter")


def set_cache(pg, mode: str, early_stop: bool) -> None:
    pg.locator(f"#diff-cache label:has-text('{mode}')").click()
    box = pg.locator("#diff-early-stop input[type=checkbox]")
    if box.is_checked() != early_stop:
        box.click()


def close_list(pg) -> None:
    """Close an open dropdown list (it may open upwards, over the text above it)."""
    from playwright.sync_api import expect

    pg.keyboard.press("Escape")
    expect(pg.get_by_role("option")).to_have_count(0)


def open_diffusion(pg) -> None:
    from playwright.sync_api import expect

    pg.get_by_role("tab", name="Diffusion").click()
    expect(pg.locator("#diff-prompt :is(textarea, input)")).to_have_value("the capital of japan is")


def test_diffusion_tab_end_to_end(page):  # noqa: F811 - the fixture imported above
    from playwright.sync_api import expect

    open_diffusion(page)
    set_number(page, "diff-length", 8)
    set_number(page, "diff-steps", 4)

    # ---- Run: the final text, the step slider, the heatmap, the GIF and the HTML viewer
    page.locator("#diff-generate-btn").click()
    expect(page.locator("#diff-text textarea")).to_have_value(re.compile("tokyo"),
                                                              timeout=TIMEOUT_MS)
    expect(page.locator("#diff-step-info")).to_contain_text("Step 4 / 4")
    expect(page.locator("#diff-tokens .dtok")).to_have_count(8)
    summary = page.locator("#diff-summary")
    expect(summary).to_contain_text("Settings:")  # the panel names what it shows
    expect(summary).to_contain_text("“the capital of japan is”: 8 positions, 4 steps")
    expect(summary).to_contain_text(re.compile(r"\d+ content tokens of 8 positions"))
    expect(summary).to_contain_text("content tokens per forward pass")
    expect(summary).not_to_contain_text("peak memory 0.0 MB")
    expect(summary).to_contain_text(re.compile(r"peak memory \d+\.\d+ MB"))
    expect_drawn(page, "diff-heatmap")
    gif = page.locator("#diff-gif img").first
    gif.scroll_into_view_if_needed()
    expect(gif).to_have_attribute("src", re.compile(r"\.gif"))
    expect(page.locator("#diff-files")).to_contain_text(re.compile(r"viewer\s*\.html"))
    frame = page.frame_locator("#diff-viewer iframe")
    expect(frame.locator("#label")).to_contain_text("step 4/4")
    frame.locator("#first").click()
    expect(frame.locator("#label")).to_contain_text("step 0/4")

    set_number(page, "diff-step", 1)
    expect(page.locator("#diff-step-info")).to_contain_text("Step 1 / 4")
    expect(page.locator("#diff-tokens .dtok.masked")).to_have_count(6)
    expect(page.locator("#diff-tokens .dtok.new")).to_have_count(2)
    page.locator("#diff-viewer iframe").scroll_into_view_if_needed()  # paint it for the shot
    shot(page, "diffusion_run")

    # ---- a canvas longer than the answer: the [SEP] tail is greyed, not hidden
    set_number(page, "diff-length", 32)
    set_number(page, "diff-threshold", 0.9)
    page.locator("#diff-generate-btn").click()
    expect(summary).to_contain_text("of 32 positions", timeout=TIMEOUT_MS)
    expect(page.locator("#diff-tokens .dtok")).to_have_count(32)
    greyed = page.locator("#diff-tokens .dtok.after-end")
    n_greyed = greyed.count()
    assert 0 < n_greyed < 32
    content = int(re.search(r"(\d+) content tokens of 32", summary.inner_text()).group(1))
    assert n_greyed == 32 - content  # the end token and everything after it
    expect(greyed.first).to_be_visible()
    expect(page.locator("#diff-tokens .dtok.eos")).to_have_count(1)
    expect(page.locator("#diff-tokens .dtok.eos")).to_have_attribute("data-token", "[SEP]")
    assert float(greyed.first.evaluate("e => getComputedStyle(e).opacity")) < 0.5
    first_content = page.locator("#diff-tokens .dtok[data-pos='0']")
    assert float(first_content.evaluate("e => getComputedStyle(e).opacity")) == 1.0
    frame = page.frame_locator("#diff-viewer iframe")
    expect(frame.locator("#tokens .tok.after-end")).to_have_count(n_greyed)
    expect(frame.locator("#meta")).to_contain_text(f"{content} content tokens of 32 positions")
    close_up(page, "#diff-run-row", "run_summary")
    close_up(page, "#diff-tokens", "run_tokens_greyed")
    close_up(page, "#diff-heatmap", "run_heatmap")
    close_up(page, "#diff-viewer", "run_viewer")
    set_number(page, "diff-threshold", 0)
    set_number(page, "diff-length", 8)

    # ---- Side by side with the autoregressive model
    page.get_by_role("tab", name="Side by side").click()
    page.locator("#diff-pair-btn").click()
    expect(page.locator("#pair-ar-text textarea")).to_have_value(re.compile("tokyo"),
                                                                 timeout=TIMEOUT_MS)
    expect(page.locator("#pair-diffusion-text textarea")).to_have_value(re.compile("tokyo"))
    expect(page.locator("#pair-metrics")).to_contain_text("forward passes")
    expect(page.locator("#pair-metrics")).to_contain_text("content tokens per forward pass")
    expect(page.locator("#pair-metrics")).to_contain_text("peak memory (MB)")
    expect(page.locator("#pair-ar-info")).to_contain_text(
        re.compile(r"\d+ content tokens of 8 positions"))
    expect(page.locator("#pair-ar-info")).to_contain_text("Settings: tiny-gpt2: at most 8 tokens")
    expect(page.locator("#pair-diffusion-info")).to_contain_text(
        re.compile(r"peak memory \d+\.\d+ MB"))
    expect(page.locator("#pair-ar-info")).to_contain_text(re.compile(r"peak memory \d+\.\d+ MB"))
    expect_drawn(page, "pair-bars")
    pair_gif = page.locator("#pair-gif img").first
    pair_gif.scroll_into_view_if_needed()
    expect(pair_gif).to_have_attribute("src", re.compile(r"side-by-side\.gif"))
    close_up(page, "#diff-pair-row", "pair_columns")
    close_up(page, "#pair-metrics", "pair_metrics")
    close_up(page, "#pair-bars", "pair_bars")
    close_up(page, "#pair-export-row", "pair_gif")
    set_number(page, "pair-ar-step", 2)
    expect(page.locator("#pair-ar-info")).to_contain_text("Step 2 / 8")
    expect(page.locator("#pair-ar-tokens .dtok.masked")).to_have_count(6)
    page.locator("#compare-btn").click()
    # 52 prompts, each also run uncached one token per step (the agreement): give it time
    expect(page.locator("#compare-note")).to_contain_text("52 prompts", timeout=3 * TIMEOUT_MS)
    expect(page.locator("#compare-table")).to_contain_text("autoregressive")
    expect(page.locator("#compare-table")).to_contain_text("content tokens / s")
    expect(page.locator("#compare-table")).to_contain_text("same answer as uncached")
    expect(page.locator("#compare-note")).to_contain_text("Content tokens")
    expect(page.locator("#compare-note")).to_contain_text("Settings:")
    expect_drawn(page, "compare-bars")
    close_up(page, "#compare-table", "compare_table")
    close_up(page, "#compare-bars", "compare_bars")
    shot(page, "diffusion_side_by_side")

    # ---- Step by step: initialise (with its forward pass)
    page.get_by_role("tab", name="Step by step").click()
    page.locator("#step-init-btn").click()
    info = page.locator("#step-info")
    expect(info).to_contain_text("1 forward passes", timeout=TIMEOUT_MS)
    expect(info).to_contain_text("8 of 8 masked")
    expect(info).to_contain_text("0 content tokens of 8 positions")
    expect(page.locator("#step-candidates tr")).to_have_count(9)

    # step 1: auto-select one position by the strategy, apply
    page.locator("#step-auto-btn").click()
    expect(info).to_contain_text("1 chosen")
    expect(page.locator("#step-sequence .dtok.chosen")).to_have_count(1)
    page.locator("#step-apply-btn").click()
    expect(info).to_contain_text("Step 1")
    expect(info).to_contain_text("7 of 8 masked")
    new = page.locator("#step-sequence .dtok.new")
    expect(new).to_have_count(1)
    auto_token, auto_pos = new.get_attribute("data-token"), int(new.get_attribute("data-pos"))

    # step 2: pick a token by hand in the list, apply
    page.locator("#step-choices input").click()
    option = page.get_by_role("option").first
    label = option.inner_text().strip()  # "position: token (p%)"
    pos_text, rest = label.split(":", 1)
    picked_pos, picked_token = int(pos_text), rest.strip().rsplit(" (", 1)[0]
    option.click()
    close_list(page)
    expect(info).to_contain_text("1 chosen")
    shot(page, "diffusion_step_choice")
    page.locator("#step-apply-btn").click()
    expect(info).to_contain_text("Step 2")
    expect(info).to_contain_text("6 of 8 masked")
    expect(info).to_contain_text("content tokens of 8 positions")
    close_up(page, "#step-info", "step_info")
    picked = page.locator(f"#step-sequence .dtok[data-pos='{picked_pos}']")
    expect(picked).to_have_attribute("data-token", picked_token)
    expect(picked).to_have_class(re.compile(r"\bnew\b"))
    auto = page.locator(f"#step-sequence .dtok[data-pos='{auto_pos}']")
    expect(auto).to_have_attribute("data-token", auto_token)
    expect(auto).to_have_class(re.compile(r"\bold\b"))
    shot(page, "diffusion_step_2")

    # rewind one step: the hand-picked token is masked again, the auto-selected one stays
    set_number(page, "step-rewind-to", 1)
    page.locator("#step-rewind-btn").click()
    expect(info).to_contain_text("Rewound to step 1")
    expect(info).to_contain_text("7 of 8 masked")
    expect(page.locator("#step-sequence .dtok.masked")).to_have_count(7)
    expect(auto).to_have_attribute("data-token", auto_token)
    expect(picked).to_have_class(re.compile(r"\bmasked\b"))
    expect(page.locator("#step-candidates tr")).to_have_count(8)  # kept logits: candidates back

    # Analyze this step -> the Layer Analysis tab shows the partly masked sequence, labelled
    page.locator("#step-analyze-btn").click()
    expect(page.locator("#step-analyze-info")).to_contain_text("Analysed diffusion step 1",
                                                               timeout=TIMEOUT_MS)
    shot(page, "diffusion_step_rewound")
    page.get_by_role("tab", name="Layer Analysis").click()
    source = page.locator("#layer-source")
    expect(source).to_contain_text("Diffusion step 1", timeout=TIMEOUT_MS)
    expect(source).to_contain_text("not an analysis of the Overall prompt")
    expect(page.locator("#layer-model input")).to_have_value(re.compile("tiny-(bert|diffusion)"))
    shot(page, "diffusion_layer_analysis")
    page.get_by_role("tab", name="Overall").click()
    expect(page.locator("#notices")).to_contain_text("not an analysis of the Overall tab's prompt")
    close_up(page, "#notices", "overall_notice_of_a_step")


def test_kv_cache_and_early_stop_in_every_view(page):  # noqa: F811
    """Run, side by side and step mode with the dual cache and early stopping; the summary
    states both, the caption marks the refresh, step mode says when the cache was refreshed."""
    from playwright.sync_api import expect

    page.reload()
    open_diffusion(page)
    set_number(page, "diff-length", 32)
    set_number(page, "diff-block-length", 16)
    set_number(page, "diff-threshold", 0.7)
    set_cache(page, "dual", True)
    page.get_by_role("tab", name="Run").click()
    page.locator("#diff-generate-btn").click()
    summary = page.locator("#diff-summary")
    expect(summary).to_contain_text("KV cache dual: 1 full pass rebuilt it", timeout=TIMEOUT_MS)
    expect(summary).to_contain_text("early stop: the content ends at position")
    expect(page.locator("#diff-text textarea")).to_have_value(re.compile("tokyo"))
    set_number(page, "diff-step", 1)
    expect(page.locator("#diff-step-info")).to_contain_text("KV cache refreshed")
    close_up(page, "#diff-settings", "settings_panel")
    close_up(page, "#diff-run-row", "run_summary_cached")
    close_up(page, "#diff-tokens", "run_tokens_cached")
    shot(page, "diffusion_run_cached")

    page.get_by_role("tab", name="Side by side").click()
    page.locator("#diff-pair-btn").click()
    expect(page.locator("#pair-diffusion-info")).to_contain_text("KV cache dual",
                                                                 timeout=TIMEOUT_MS)
    page.get_by_role("tab", name="Step by step").click()
    page.locator("#step-init-btn").click()
    info = page.locator("#step-info")
    expect(info).to_contain_text("KV cache dual: this step's forward pass refreshed",
                                 timeout=TIMEOUT_MS)
    set_number(page, "step-n", 3)
    page.locator("#step-auto-btn").click()
    expect(info).to_contain_text("3 chosen")  # the selection is in before Apply is pressed
    page.locator("#step-apply-btn").click()
    expect(info).to_contain_text("Step 1")
    expect(info).to_contain_text("this step's forward pass reused the KV cache")
    close_up(page, "#step-info", "step_info_cached")
    # a setting the cache cannot serve gets a message that says what works
    set_number(page, "diff-block-length", 0)
    page.get_by_role("tab", name="Run").click()
    page.locator("#diff-generate-btn").click()
    expect(page.get_by_text("needs blocks").first).to_be_visible(timeout=TIMEOUT_MS)
    shot(page, "diffusion_cache_error")
    set_cache(page, "none", False)


def test_a_double_click_during_a_job_runs_it_once(page):  # noqa: F811
    """The button says the job is running and cannot start a second one; when the job ends it
    is back. One job ran: the exports carry the job's number."""
    from playwright.sync_api import expect

    page.reload()
    open_diffusion(page)
    set_number(page, "diff-length", 64)
    set_number(page, "diff-steps", 64)  # slow enough to click into
    btn = page.locator("#diff-generate-btn")
    btn.dblclick()
    expect(btn).to_have_text(re.compile("Generating"))
    expect(btn).to_be_disabled()
    shot(page, "diffusion_generating")
    close_up(page, "#diff-run-row", "run_button_busy")
    btn.click(force=True)  # and a third click while it runs does nothing either
    expect(btn).to_have_text("Generate", timeout=TIMEOUT_MS)
    expect(btn).to_be_enabled()
    expect(page.locator("#diff-summary")).to_contain_text("64 positions, 64 steps")
    files = page.locator("#diff-files").inner_text()
    assert "run1" in files and "run2" not in files, files  # one job, not two
    set_number(page, "diff-steps", 8)
    set_number(page, "diff-length", 8)


def test_recovering_from_apply_with_nothing_selected(page):  # noqa: F811
    """Step mode's Apply with nothing chosen: the message appears in the step information and a
    toast, and the token picker and the rewind slider stay usable (nothing covers them)."""
    from playwright.sync_api import expect

    page.reload()
    open_diffusion(page)
    page.get_by_role("tab", name="Step by step").click()
    page.locator("#step-init-btn").click()
    info = page.locator("#step-info")
    expect(info).to_contain_text("1 forward passes", timeout=TIMEOUT_MS)
    page.locator("#step-auto-btn").click()
    expect(info).to_contain_text(re.compile(r"\b[1-9]\d* chosen"))  # selected before Apply
    page.locator("#step-apply-btn").click()
    expect(info).to_contain_text("Step 1")
    page.locator("#step-apply-btn").click()  # nothing selected now
    expect(info).to_contain_text("Nothing is selected")
    expect(page.get_by_text("Nothing is selected").first).to_be_visible()
    shot(page, "diffusion_apply_error")
    close_up(page, "#step-row-3", "apply_error_controls")
    # no error overlay on the picker or the slider: both still work
    for elem in ("step-choices", "step-rewind-to", "step-sequence"):
        assert page.locator(f"#{elem} .error").count() == 0, elem
    page.locator("#step-choices input").click()
    option = page.get_by_role("option").first
    expect(option).to_be_visible()
    option.click()
    close_list(page)
    expect(info).to_contain_text("1 chosen")
    page.locator("#step-apply-btn").click()
    expect(info).to_contain_text("Step 2")
    set_number(page, "step-rewind-to", 1)
    page.locator("#step-rewind-btn").click()
    expect(info).to_contain_text("Rewound to step 1")


def test_exports_have_frames_and_the_side_by_side_gif(page, tmp_path):  # noqa: F811
    """The Run view's ZIP has a PNG per step; the side-by-side ZIP also the two-model GIF."""
    from playwright.sync_api import expect

    page.reload()
    open_diffusion(page)
    set_number(page, "diff-length", 8)
    set_number(page, "diff-steps", 4)
    page.get_by_role("tab", name="Side by side").click()
    page.locator("#diff-pair-btn").click()
    expect(page.locator("#pair-files")).to_contain_text(".zip", timeout=TIMEOUT_MS)
    link = page.locator("#pair-files a[href*='.zip']").first
    with page.expect_download() as info:
        link.click()
    with zipfile.ZipFile(info.value.path()) as z:
        names = z.namelist()
    assert {"trace.json", "steps.gif", "viewer.html", "autoregressive.json",
            "side_by_side.gif"} <= set(names)
    assert [n for n in names if n.startswith("frames/")] == [
        f"frames/step_{i:03d}.png" for i in range(5)]
