"""The Diffusion tab in a real Chromium (Playwright): generate, step through the trace, see the
positions after the end-of-sequence token greyed, take interactive steps (one auto-selected, one
hand-picked), rewind, compare side by side.

Reuses tests/test_browser.py's fixtures (a server on a free port, one page) and helpers; waits
on locators only. Screenshots go to screenshots/ (git-ignored): whole pages, and close-ups of
the parts this test checks (gen_*.png).
"""

import re

import pytest

from tests.conftest import have
from tests.test_browser import SHOTS, TIMEOUT_MS, expect_drawn, page, shot, url  # noqa: F401

pytestmark = [pytest.mark.browser, pytest.mark.slow,
              pytest.mark.skipif(not have("tiny-bert"), reason="embedded tiny-bert missing")]


def set_number(pg, elem_id: str, value) -> None:
    box = pg.locator(f"#{elem_id} input[type=number]").first
    box.fill(str(value))
    box.press("Enter")


def close_up(pg, selector: str, name: str) -> None:
    """A screenshot of one part of the page (SHOTS/gen_<name>.png)."""
    SHOTS.mkdir(exist_ok=True)
    loc = pg.locator(selector).first
    loc.scroll_into_view_if_needed()
    loc.screenshot(path=str(SHOTS / f"gen_{name}.png"))


def test_diffusion_tab_end_to_end(page):  # noqa: F811 - the fixture imported above
    from playwright.sync_api import expect

    page.get_by_role("tab", name="Diffusion").click()
    expect(page.locator("#diff-prompt :is(textarea, input)")).to_have_value("the capital of japan is")
    set_number(page, "diff-length", 8)
    set_number(page, "diff-steps", 4)

    # ---- Run: the final text, the step slider, the heatmap, the GIF and the HTML viewer
    page.locator("#diff-generate-btn").click()
    expect(page.locator("#diff-text textarea")).to_have_value(re.compile("tokyo"),
                                                              timeout=TIMEOUT_MS)
    expect(page.locator("#diff-step-info")).to_contain_text("Step 4 / 4")
    expect(page.locator("#diff-tokens .dtok")).to_have_count(8)
    summary = page.locator("#diff-summary")
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
    expect(page.locator("#pair-diffusion-info")).to_contain_text(
        re.compile(r"peak memory \d+\.\d+ MB"))
    expect(page.locator("#pair-ar-info")).to_contain_text(re.compile(r"peak memory \d+\.\d+ MB"))
    expect_drawn(page, "pair-bars")
    close_up(page, "#diff-pair-row", "pair_columns")
    close_up(page, "#pair-metrics", "pair_metrics")
    close_up(page, "#pair-bars", "pair_bars")
    set_number(page, "pair-ar-step", 2)
    expect(page.locator("#pair-ar-info")).to_contain_text("Step 2 / 8")
    expect(page.locator("#pair-ar-tokens .dtok.masked")).to_have_count(6)
    page.locator("#compare-btn").click()
    expect(page.locator("#compare-note")).to_contain_text("52 prompts", timeout=TIMEOUT_MS)
    expect(page.locator("#compare-table")).to_contain_text("autoregressive")
    expect(page.locator("#compare-table")).to_contain_text("content tokens / s")
    expect(page.locator("#compare-note")).to_contain_text("Content tokens")
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
    page.locator("#step-help").click()  # close the list
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

    # Analyze this step -> the Layer Analysis tab shows the partly masked sequence
    page.locator("#step-analyze-btn").click()
    expect(page.locator("#step-analyze-info")).to_contain_text("Analysed step 1",
                                                               timeout=TIMEOUT_MS)
    shot(page, "diffusion_step_rewound")
    page.get_by_role("tab", name="Layer Analysis").click()
    expect(page.locator("#head-info")).to_contain_text("layer 1 / ", timeout=TIMEOUT_MS)
    expect(page.locator("#layer-model input")).to_have_value(re.compile("tiny-(bert|diffusion)"))
    expect_drawn(page, "attention-pattern")
    shot(page, "diffusion_layer_analysis")
