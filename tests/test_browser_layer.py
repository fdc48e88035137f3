"""The Layer Analysis tab in a real Chromium (Playwright): hover, click to select a head
everywhere, refused selections, a chosen target, a double click during a job, a saved bundle.

The server runs in this process, so a test can count what it did (model loads, explanations).
Waits on locators and page state only (never on network idle). Screenshots go to
/work/notes/layer_screens/ (or $LAYER_SCREENS) for a person to look at.
"""

import os
import re
import time
from pathlib import Path

import numpy as np
import pytest

from tests.conftest import free_port, have

CHROMIUM = "/usr/bin/chromium"
ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking",
        "--disable-component-update", "--disable-sync", "--no-first-run"]
SHOTS = Path(os.environ.get("LAYER_SCREENS", "/work/notes/layer_screens"))
TIMEOUT_MS = 120_000
PROMPT = "the capital of japan is"
EX = "#attention-explorer"

pytestmark = [pytest.mark.browser, pytest.mark.slow]

if not Path(CHROMIUM).exists():
    pytest.skip(f"{CHROMIUM} is missing: no browser to drive", allow_module_level=True)
if not have("tiny-gpt2"):
    pytest.skip("embedded tiny-gpt2 missing", allow_module_level=True)
sync_api = pytest.importorskip("playwright.sync_api", reason="playwright is not installed")


def shot(page, name: str) -> None:
    SHOTS.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(SHOTS / f"{name}.png"), full_page=True)


@pytest.fixture(scope="module")
def server():
    from ui.app import AppConfig, serve

    demo = serve(AppConfig(host="127.0.0.1", port=free_port()), block=False)
    try:
        yield demo
    finally:
        demo.close()


@pytest.fixture(scope="module")
def page(server):
    with sync_api.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=ARGS, headless=True)
        context = browser.new_context(viewport={"width": 1400, "height": 1000},
                                      accept_downloads=True)
        page = context.new_page()
        page.set_default_timeout(TIMEOUT_MS)
        errors = []
        page.on("pageerror", lambda e: errors.append(str(e)))
        page.goto(server.local_url)
        page.errors = errors
        yield page
        context.close()
        browser.close()
        assert not errors, errors


@pytest.fixture(scope="module")
def expected():
    """The numbers the page should show: the same analysis, run here (deterministic)."""
    from analysis.run import analyze_model
    from models.loading import load

    return analyze_model(load("tiny-gpt2"), PROMPT)


def cell_point(page, elem: str, panel: str, i: int, j: int) -> dict:
    """Client coordinates of cell (row i, column j) of a heatmap panel of a views component."""
    return page.evaluate("""([elem, panel, i, j]) => {
        const v = document.querySelector(elem + ' .dv-mount').__dashboardViews;
        const p = v.panels.find(x => x.p.id === panel), g = p.g;
        p.box.scrollIntoView({block: "center"});
        const r = p.canvas.getBoundingClientRect();
        return {x: r.left + g.left + (j + 0.5) * g.cw, y: r.top + g.top + (i + 0.5) * g.ch}; }""",
                         [elem, panel, i, j])


def selected_in_page(page) -> dict:
    return page.evaluate("""() => {
        const ex = document.querySelector('#attention-explorer .ae-root');
        const maps = document.querySelector('#head-maps .dv-mount').__dashboardViews;
        return {explorer: [+ex.dataset.layer, +ex.dataset.head], maps: maps.sel,
                layer: document.querySelector('#layer-box input').value,
                head: document.querySelector('#head-box input').value}; }""")


def wait_boxes(page, layer: int, head: int) -> None:
    page.wait_for_function(f"document.querySelector('#layer-box input').value === '{layer}' && "
                           f"document.querySelector('#head-box input').value === '{head}'")


def test_analyse_then_the_layer_tab_shows_every_view(page, expected):
    from playwright.sync_api import expect

    page.locator("#prompt textarea").fill(PROMPT)
    page.locator("#analyze-btn").click()
    expect(page.locator("#model-header-0")).to_contain_text("tiny-gpt2", timeout=TIMEOUT_MS)
    page.get_by_role("tab", name="Layer Analysis").click()
    page.locator(f"{EX} .ae-root[data-ready='1']").wait_for()
    page.locator("#head-maps .dv-root[data-ready='1']").wait_for()
    page.locator("#prediction-views .dv-root[data-ready='1']").wait_for()
    expect(page.locator("#layer-source")).to_contain_text(PROMPT)
    expect(page.locator("#layer-source")).to_contain_text("tiny-gpt2")
    for panel in ("entropy", "induction", "previous", "clusters"):
        box = page.locator(f"#head-maps [data-panel='{panel}']")
        expect(box.locator(".dv-source")).to_contain_text(PROMPT)  # each names what it shows
    expect(page.locator("#role-table [role=grid]")).to_have_attribute("aria-rowcount", "13")
    gif = page.locator("#layer-gif img").first
    gif.wait_for(state="attached")
    gif.scroll_into_view_if_needed()
    gif.wait_for(state="visible")
    page.locator("#layer-source").scroll_into_view_if_needed()
    shot(page, "01-layer-tab")


def test_hover_shows_values_on_the_heatmaps_and_the_explorer(page, expected):
    tip = page.locator("#head-maps .dv-tip")
    pt = cell_point(page, "#head-maps", "entropy", 1, 2)  # layer 2, head 2
    page.mouse.move(pt["x"], pt["y"])
    text = tip.inner_text()
    assert "layer 2 · head 2" in text
    shown = float(re.search(r"entropy (\S+)", text).group(1))
    assert shown == pytest.approx(expected.heads.attention_entropy[1, 2], abs=1e-4)
    assert f"role {expected.heads.role[1, 2]}" in text
    page.locator("#head-maps").screenshot(path=str(SHOTS / "02-hover-entropy.png"))
    # the explorer's heatmap: query, key and the weight (quantised: within 0.4 % of the row max)
    main = page.locator(f"{EX} .ae-hm-main")
    main.scroll_into_view_if_needed()
    box = main.bounding_box()
    z = page.evaluate("document.querySelector('#attention-explorer .ae-mount')"
                      ".__attentionExplorer.zoom.z")
    page.mouse.move(box["x"] + 1.5 * z, box["y"] + 3.5 * z)  # query 3, key 1
    text = page.locator(f"{EX} .ae-tooltip").inner_text()
    assert "query 3" in text and "key   1" in text
    a = np.asarray(expected.trace.attentions)[0, 0, 3]
    assert abs(float(text.rsplit("weight", 1)[1]) - a[1]) <= a.max() / 255 + 1e-4
    page.locator(EX).screenshot(path=str(SHOTS / "03-hover-explorer.png"))


def test_a_click_selects_the_head_everywhere(page, expected):
    from playwright.sync_api import expect

    # a cell of the entropy map: every view follows at once, the boxes and the info after
    pt = cell_point(page, "#head-maps", "entropy", 1, 3)
    page.mouse.click(pt["x"], pt["y"])
    assert selected_in_page(page)["explorer"] == [2, 3]  # in the page, no server round trip
    wait_boxes(page, 2, 3)
    expect(page.locator("#head-info")).to_contain_text("layer 2 / 3 · head 3 / 3")
    expect(page.locator("#head-info")).to_contain_text(f"role: {expected.heads.role[1, 3]}")
    shot(page, "04-clicked-entropy-cell")
    # the induction map selects too
    pt = cell_point(page, "#head-maps", "induction", 2, 0)
    page.mouse.click(pt["x"], pt["y"])
    wait_boxes(page, 3, 0)
    assert selected_in_page(page)["maps"] == [3, 0]
    # a point of the cluster scatter
    xy = page.evaluate("""() => {
        const v = document.querySelector('#head-maps .dv-mount').__dashboardViews;
        const p = v.panels.find(x => x.p.id === 'clusters'), q = p.p.points.find(
            q => q.layer === 1 && q.head === 1);
        p.box.scrollIntoView({block: "center"});
        const r = p.canvas.getBoundingClientRect();
        return {x: r.left + p.g.X(q.x), y: r.top + p.g.Y(q.y)}; }""")
    page.mouse.click(xy["x"], xy["y"])
    wait_boxes(page, 1, 1)
    assert selected_in_page(page)["explorer"] == [1, 1]
    # a row of the role table: row 7 is layer 2, head 2
    page.locator("#role-table").scroll_into_view_if_needed()
    page.locator("#role-table [role=grid] [role=row]").nth(7).locator("[role=gridcell]").nth(3).click()
    wait_boxes(page, 2, 2)
    page.wait_for_function("document.querySelector('#attention-explorer .ae-root')"
                           ".dataset.head === '2'")
    assert selected_in_page(page)["maps"] == [2, 2]
    # a thumbnail of the explorer's model view
    page.locator(EX).scroll_into_view_if_needed()
    page.locator(f"{EX} .ae-tab[data-view=model]").click()
    page.locator(f"{EX} .ae-thumb[data-layer='3'][data-head='1']").click()
    wait_boxes(page, 3, 1)
    assert selected_in_page(page)["maps"] == [3, 1]
    shot(page, "05-clicked-thumbnail")
    # the head view: hover a token to see where it attends
    page.locator(f"{EX} .ae-tab[data-view=head]").click()
    pt = page.evaluate("document.querySelector('#attention-explorer .ae-mount')"
                       ".__attentionExplorer.tokenPoint('q', 4)")
    page.mouse.move(pt["x"], pt["y"])
    expect(page.locator(f"{EX} .ae-info h4")).to_contain_text("query 4")
    page.locator(EX).screenshot(path=str(SHOTS / "06-head-view-hover.png"))
    page.locator(f"{EX} .ae-tab[data-view=heatmap]").click()


def test_boxes_refuse_what_does_not_exist_beside_the_boxes(page):
    from playwright.sync_api import expect

    error = page.locator("#layer-error")
    for box, value, says in (("#layer-box", "0", "Layer must be between 1 and 3, got 0"),
                             ("#layer-box", "99", "Layer must be between 1 and 3, got 99"),
                             ("#head-box", "-3", "Head must be between 0 and 3, got -3")):
        field = page.locator(f"{box} input")
        field.fill(value)
        field.press("Enter")
        expect(error).to_contain_text(says)
        expect(error).to_contain_text("heads 0..3")
        wait_boxes(page, 3, 1)  # back to what every view shows
        assert selected_in_page(page)["explorer"] == [3, 1]
        # the message does not cover the box that fixes it: the box is what is at its centre
        b = page.locator(f"{box} input").bounding_box()
        assert page.evaluate(f"document.elementFromPoint({b['x'] + b['width'] / 2}, "
                             f"{b['y'] + b['height'] / 2}) === document.querySelector"
                             f"('{box} input')")
    shot(page, "07-refused-head")
    field = page.locator("#layer-box input")
    field.fill("2")
    field.press("Enter")
    wait_boxes(page, 2, 1)
    expect(error).to_be_hidden()
    page.wait_for_function("document.querySelector('#attention-explorer .ae-root')"
                           ".dataset.layer === '2'")
    assert selected_in_page(page)["maps"] == [2, 1]


def test_pick_a_target_and_a_double_click_during_the_job(page, monkeypatch):
    """A target with a contrast token; the Explain button shows the job and a second click
    while it runs is not a second job."""
    from playwright.sync_api import expect

    from analysis import targets

    calls = []
    real = targets.attribute

    def slow(*args, **kwargs):
        calls.append(args[2])
        time.sleep(1.5)  # a job long enough to click again during it
        return real(*args, **kwargs)

    monkeypatch.setattr(targets, "attribute", slow)
    target = page.locator("#target-token input")
    target.scroll_into_view_if_needed()
    target.click()  # one of the top predictions, from the list
    page.locator("#target-token").get_by_role("option", name="japan", exact=True).click()
    expect(target).to_have_value("japan")
    contrast = page.locator("#contrast-token input")
    contrast.click()  # typed (any single token may be typed)
    contrast.fill("tokyo")
    contrast.press("Enter")
    expect(contrast).to_have_value("tokyo")
    button = page.locator("#target-btn")
    button.dblclick()
    expect(button).to_have_text("Explaining…")
    expect(button).to_be_disabled()
    button.click(force=True)  # and once more while it runs
    expect(page.locator("#target-info")).to_contain_text("Target “ japan”")
    expect(button).to_have_text("Explain")
    expect(button).to_be_enabled()
    assert len(calls) == 1
    info = page.locator("#target-info")
    expect(info).to_contain_text("against “ tokyo”")
    views = page.locator("#prediction-views")
    expect(views.locator("[data-panel='target-rank'] .dv-source")).to_contain_text(PROMPT)
    expect(views.locator("[data-panel='target-lens'] .dv-title")).to_contain_text("japan")
    # hover the rank chart: the rank of the target at each layer
    canvas = views.locator("[data-panel='target-rank'] canvas")
    canvas.scroll_into_view_if_needed()
    b = canvas.bounding_box()
    page.mouse.move(b["x"] + b["width"] - 60, b["y"] + b["height"] / 2)
    expect(page.locator("#prediction-views .dv-tip")).to_contain_text("rank")
    shot(page, "08-target-explained")
    # a token that is not one token: said beside the inputs, the views stay
    target.click()
    target.fill("capital japan")
    target.press("Enter")
    button.click()
    expect(info).to_contain_text("not one token")
    expect(views.locator("[data-panel='target-rank']")).to_be_visible()


def test_a_saved_bundle_opens_without_any_model(page, server, tmp_path, monkeypatch):
    from playwright.sync_api import expect

    from models.loading import MODELS

    page.get_by_role("tab", name="Overall").click()
    page.locator("#bundle-btn").click()
    link = page.locator("#download a").first
    link.wait_for(state="visible")
    with page.expect_download() as info:
        link.click()
    saved = tmp_path / "saved-bundle.zip"
    info.value.save_as(saved)
    loads = []
    real = MODELS.get
    monkeypatch.setattr(MODELS, "get", lambda *a, **k: loads.append(a[0]) or real(*a, **k))
    page.get_by_role("tab", name="Layer Analysis").click()
    loads_before = int(page.locator(f"{EX} .ae-root").get_attribute("data-loads"))
    page.locator("#bundle-open").click()
    page.locator("#bundle-file input[type=file]").set_input_files(str(saved))
    expect(page.locator("#bundle-status")).to_contain_text("saved-bundle.zip", timeout=TIMEOUT_MS)
    expect(page.locator("#layer-source")).to_contain_text("Opened from the bundle")
    expect(page.locator("#head-maps [data-panel='entropy'] .dv-source")).to_contain_text(
        "opened from saved-bundle.zip")
    page.wait_for_function(f"+document.querySelector('{EX} .ae-root').dataset.loads > "
                           f"{loads_before}")
    assert page.locator(f"{EX} .ae-status").inner_text() == ""
    page.locator(f"{EX} .ae-next-head").click()  # browse it
    assert selected_in_page(page)["explorer"][1] >= 1
    assert loads == []  # no model was loaded (or run) to open and browse it
    page.locator("#layer-source").scroll_into_view_if_needed()
    shot(page, "09-bundle-opened")
