"""The attention explorer in a real Chromium (Playwright): a standalone page and a Gradio app.

Waits on locators and page state only (never on network idle). Screenshots of every view go
to /work/notes/explorer_screens/ (or $EXPLORER_SCREENS) for a person to look at.
"""

import os
from pathlib import Path

import numpy as np
import pytest

from tests.conftest import free_port

CHROMIUM = "/usr/bin/chromium"
ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
        "--disable-background-networking", "--disable-component-update", "--disable-sync"]
SHOTS = Path(os.environ.get("EXPLORER_SCREENS", "/work/notes/explorer_screens"))
TIMEOUT_MS = 60_000
HOST = "document.getElementById('attention-explorer').__attentionExplorer"

pytestmark = pytest.mark.browser

if not Path(CHROMIUM).exists():
    pytest.skip(f"{CHROMIUM} is missing: no browser to drive", allow_module_level=True)
sync_api = pytest.importorskip("playwright.sync_api", reason="playwright is not installed")

from ui.explorer import pack_attention, quantisation_bound, standalone_html  # noqa: E402

WORDS = ["The", " cat", " sat", " on", " the", " mat", ".", " It", " was", " warm", ",", " and",
         " the", " dog", " watched", " from", " a", " distance", "\\n", " Later"]


def attention(n_layers, n_heads, n_tokens, causal, seed=0):
    """`[layer, head, query, key]` with structure: a peaked softmax (rows sum to 1)."""
    rng = np.random.default_rng(seed)
    logits = rng.normal(0.0, 2.5, (n_layers, n_heads, n_tokens, n_tokens))
    if causal:
        logits[..., ~np.tri(n_tokens, dtype=bool)] = -np.inf
    e = np.exp(logits - logits.max(-1, keepdims=True))
    return (e / e.sum(-1, keepdims=True)).astype(np.float32)


def tolerance(row_max: float) -> float:
    """What a shown value may differ by: the quantisation bound plus 4-decimal rounding."""
    return row_max * quantisation_bound() + 5e-5 + 1e-6


def shot(page, name: str) -> None:
    SHOTS.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(SHOTS / f"{name}.png"), full_page=True)


@pytest.fixture(scope="module")
def browser():
    with sync_api.sync_playwright() as p:
        b = p.chromium.launch(executable_path=CHROMIUM, args=ARGS, headless=True)
        yield b
        b.close()


@pytest.fixture
def page(browser):
    context = browser.new_context(viewport={"width": 1280, "height": 1000})
    page = context.new_page()
    page.set_default_timeout(TIMEOUT_MS)
    errors = []
    page.on("pageerror", lambda e: errors.append(str(e)))
    yield page
    context.close()
    assert not errors, errors


def open_standalone(page, tmp_path, a, toks, causal, layer=1, head=0, name="page"):
    html = standalone_html(pack_attention(a, toks, causal, title="synthetic"), layer=layer, head=head)
    path = tmp_path / f"{name}.html"
    path.write_text(html, encoding="utf-8")
    page.goto(path.as_uri())
    page.locator("#attention-explorer .ae-root[data-ready='1']").wait_for()
    requests = []
    page.on("request", lambda r: requests.append(r.url))
    return requests


def title(page) -> str:
    return page.locator("#attention-explorer .ae-title").inner_text()


def test_standalone_views_hover_click_keyboard(page, tmp_path):
    n_layers, n_heads, n = 3, 4, 40
    a = attention(n_layers, n_heads, n, causal=True)
    toks = [WORDS[i % len(WORDS)] for i in range(n)]
    requests = open_standalone(page, tmp_path, a, toks, True, layer=2, head=1)
    assert title(page) == "layer 2 / 3 · head 1 / 3"
    li, h = 1, 1  # array indices of layer 2, head 1

    # head view: hover query 25 -> where it attends, strongest first, values as in the array
    page.locator(".ae-tab[data-view=head]").click()
    pt = page.evaluate(f"{HOST}.tokenPoint('q', 25)")
    page.mouse.move(pt["x"], pt["y"])
    info = page.locator(".ae-info")
    assert "query 25" in info.locator("h4").inner_text()
    first = info.locator("li").first
    j = int(first.get_attribute("data-index"))
    shown = float(first.locator(".ae-w").inner_text())
    row = a[li, h, 25]
    assert j == int(np.argmax(row))
    assert abs(shown - row[j]) <= tolerance(row.max())
    shot(page, "standalone-head-view-query")

    # hover key 5 on the right -> what attends to it
    pt = page.evaluate(f"{HOST}.tokenPoint('k', 5)")
    page.mouse.move(pt["x"], pt["y"])
    assert "key 5" in info.locator("h4").inner_text()
    first = info.locator("li").first
    q = int(first.get_attribute("data-index"))
    col = a[li, h, :, 5]
    assert q == int(np.argmax(col))
    assert abs(float(first.locator(".ae-w").inner_text()) - col[q]) <= tolerance(a[li, h, q].max())
    shot(page, "standalone-head-view-key")

    # heatmap: hover a cell -> tooltip with query, key and weight
    page.locator(".ae-tab[data-view=heatmap]").click()
    main = page.locator(".ae-hm-main")
    box = main.bounding_box()
    z = page.evaluate(f"{HOST}.zoom.z")
    page.mouse.move(box["x"] + (12 + 0.5) * z, box["y"] + (30 + 0.5) * z)
    tip = page.locator(".ae-tooltip")
    text = tip.inner_text()
    assert "query 30" in text and "key   12" in text
    weight = float(text.rsplit("weight", 1)[1])
    assert abs(weight - a[li, h, 30, 12]) <= tolerance(a[li, h, 30].max())
    shot(page, "standalone-heatmap-hover")
    page.mouse.move(box["x"] + (30 + 0.5) * z, box["y"] + (12 + 0.5) * z)  # above the diagonal
    assert "masked (causal)" in tip.inner_text()
    page.locator(".ae-hm-tools button", has_text="+").click()
    assert page.evaluate(f"{HOST}.zoom.z") == pytest.approx(z * 1.5)

    # model view: every head a thumbnail; a click opens that head
    page.locator(".ae-tab[data-view=model]").click()
    thumbs = page.locator(".ae-thumb")
    assert thumbs.count() == n_layers * n_heads
    page.locator(".ae-root[data-thumbs='done']").wait_for()
    shot(page, "standalone-model-view")
    page.locator(".ae-thumb[data-layer='3'][data-head='2']").click()
    assert title(page) == "layer 3 / 3 · head 2 / 3"
    assert page.locator(".ae-root").get_attribute("data-view") == "heatmap"

    # keyboard: up/down = layer, left/right = head, 3 = model view
    page.locator(".ae-root").focus()
    page.keyboard.press("ArrowUp")
    assert title(page) == "layer 2 / 3 · head 2 / 3"
    page.keyboard.press("ArrowLeft")
    page.keyboard.press("ArrowLeft")
    assert title(page) == "layer 2 / 3 · head 0 / 3"
    page.keyboard.press("ArrowDown")
    assert title(page) == "layer 3 / 3 · head 0 / 3"
    page.keyboard.press("3")
    sel = page.locator(".ae-thumb.ae-sel")
    assert (sel.get_attribute("data-layer"), sel.get_attribute("data-head")) == ("3", "0")
    # the selectors switch too
    page.locator("select.ae-layer").select_option("1")
    assert title(page) == "layer 1 / 3 · head 0 / 3"

    assert requests == []  # every switch above happened in the page


def test_standalone_512_tokens_scrolls_and_zooms(page, tmp_path):
    """At 512 tokens labels keep their size: the head view scrolls, the heatmap zooms."""
    n = 512
    a = attention(1, 2, n, causal=False, seed=1)
    toks = [WORDS[i % len(WORDS)] for i in range(n)]
    requests = open_standalone(page, tmp_path, a, toks, False, name="long")
    shot(page, "standalone-512-heatmap-fit")

    page.locator(".ae-tab[data-view=head]").click()
    scroller = page.locator(".ae-hv-scroll")
    assert scroller.evaluate("e => e.scrollHeight") >= n * 18  # 18 px per token: scroll, not shrink
    pt = page.evaluate(f"{HOST}.tokenPoint('q', 400)")
    page.mouse.click(pt["x"], pt["y"])  # pin query 400
    info = page.locator(".ae-info")
    assert "query 400" in info.locator("h4").inner_text() and "pinned" in info.locator("h4").inner_text()
    first = info.locator("li").first
    j = int(first.get_attribute("data-index"))
    assert j == int(np.argmax(a[0, 0, 400]))
    assert abs(float(first.locator(".ae-w").inner_text()) - a[0, 0, 400, j]) <= tolerance(a[0, 0, 400].max())
    shot(page, "standalone-512-head-view")

    page.locator(".ae-tab[data-view=heatmap]").click()
    main = page.locator(".ae-hm-main")
    box = main.bounding_box()
    page.mouse.move(box["x"] + box["width"] / 2, box["y"] + box["height"] / 2)
    page.mouse.wheel(0, 300)  # at the whole-matrix zoom a plain wheel leaves the page alone
    assert page.evaluate(f"{HOST}.zoom.oy") == 0
    page.keyboard.down("Control")
    for _ in range(6):  # ctrl + wheel zooms at the pointer
        page.mouse.wheel(0, -300)
    page.keyboard.up("Control")
    zm = page.evaluate(f"{HOST}.zoom")
    assert zm["z"] >= 13  # every label shown at this zoom
    page.mouse.wheel(0, 200)  # zoomed in, a plain wheel scrolls the matrix
    assert page.evaluate(f"{HOST}.zoom.oy") > zm["oy"]
    zm = page.evaluate(f"{HOST}.zoom")
    q, k = int(zm["oy"]) + 5, int(zm["ox"]) + 7
    page.mouse.move(box["x"] + (k - zm["ox"] + 0.5) * zm["z"], box["y"] + (q - zm["oy"] + 0.5) * zm["z"])
    text = page.locator(".ae-tooltip").inner_text()
    assert f"query {q}" in text and f"key   {k}" in text
    assert abs(float(text.rsplit("weight", 1)[1]) - a[0, 0, q, k]) <= tolerance(a[0, 0, q].max())
    shot(page, "standalone-512-heatmap-zoomed")
    assert requests == []


def test_gradio_click_reaches_python_and_python_selects(page):
    import gradio as gr

    from ui import explorer

    a = attention(3, 4, 30, causal=True, seed=2)
    payload = explorer.pack_attention(a, [WORDS[i % len(WORDS)] for i in range(30)], True, title="synthetic")
    received = []
    with gr.Blocks() as demo:
        load = gr.Button("Load", elem_id="load")
        layer = gr.Number(value=1, label="layer", elem_id="layer-box", precision=0)
        head = gr.Number(value=0, label="head", elem_id="head-box", precision=0)
        with gr.Tabs():  # as in the app: the explorer sits in a tab that is not open at first
            with gr.Tab("Other"):
                gr.Markdown("another tab")
            with gr.Tab("Layer Analysis"):
                ex = explorer.build()
        load.click(lambda: explorer.payload_update(payload, 2, 1), None, ex.html)

        def on_pick(evt: gr.SelectData):
            received.append(explorer.selected(evt))
            return received[-1]

        ex.select(on_pick, None, [layer, head])
        layer.submit(lambda lv, hv: explorer.selection_update(lv, hv), [layer, head], ex.html)

    demo.launch(prevent_thread_lock=True, server_name="127.0.0.1", server_port=free_port(),
                ssr_mode=False, quiet=True)
    try:
        page.goto(demo.local_url)
        page.get_by_role("tab", name="Layer Analysis").click()
        root = page.locator("#attention-explorer .ae-root")
        root.wait_for()
        assert "run an analysis" in page.locator("#attention-explorer .ae-status").inner_text()
        page.get_by_role("tab", name="Other").click()
        page.locator("#load").click()  # the data arrives while its tab is closed
        page.wait_for_timeout(500)
        page.get_by_role("tab", name="Layer Analysis").click()
        page.locator("#attention-explorer .ae-root[data-ready='1']").wait_for()
        assert page.locator("#attention-explorer .ae-hm-main").bounding_box()["width"] >= 200
        assert title(page) == "layer 2 / 3 · head 1 / 3"

        # a switch happens in the page, synchronously: no server round trip in between
        after = page.evaluate("""() => {
            const root = document.querySelector('#attention-explorer .ae-root');
            root.dispatchEvent(new KeyboardEvent('keydown', {key: 'ArrowRight', bubbles: true}));
            return root.querySelector('.ae-title').textContent; }""")
        assert after == "layer 2 / 3 · head 2 / 3"

        page.locator("#attention-explorer .ae-tab[data-view=model]").click()
        page.locator("#attention-explorer .ae-thumb[data-layer='3'][data-head='2']").click()
        assert title(page) == "layer 3 / 3 · head 2 / 3"
        page.wait_for_function("document.querySelector('#head-box input').value === '2' && "
                               "document.querySelector('#layer-box input').value === '3'")
        assert received[-1] == (3, 2)
        shot(page, "gradio-after-click")

        # Python selects (layer 1, head 2): the page follows without receiving the data again
        box = page.locator("#layer-box input")
        box.fill("1")
        box.press("Enter")
        page.wait_for_function("document.querySelector('#attention-explorer .ae-root').dataset.layer === '1'")
        assert title(page) == "layer 1 / 3 · head 2 / 3"
        assert root.get_attribute("data-loads") == "1"
        page.locator("#attention-explorer .ae-tab[data-view=head]").click()
        shot(page, "gradio-head-view")
    finally:
        demo.close()


def test_gradio_linked_payload_is_fetched_by_ranges(page, tmp_path):
    """The app's way: a small JSON value and the streams in a file Gradio serves (a copy in
    its cache, as for any file output), read with range requests, the shown layer (here layer
    3 of 4) first."""
    import gradio as gr

    from ui import explorer

    a = attention(4, 3, 40, causal=True, seed=5)
    payload = explorer.pack_attention(a, [WORDS[i % len(WORDS)] for i in range(40)], True,
                                      title="linked")
    path = payload.write_binary(tmp_path / "attention.bin")
    values = []
    with gr.Blocks() as demo:
        load = gr.Button("Load", elem_id="load")
        ex = explorer.build()
        load.click(lambda: explorer.payload_update(values[0], 3, 1), None, ex.html)
    values.append(payload.linked_json(explorer.gradio_file_url(
        ex.html.move_resource_to_block_cache(path))))
    demo.launch(prevent_thread_lock=True, server_name="127.0.0.1", server_port=free_port(),
                ssr_mode=False, quiet=True)
    try:
        ranges = []
        page.on("request", lambda r: ranges.append(r.headers.get("range"))
                if "attention.bin" in r.url else None)
        page.goto(demo.local_url)
        page.locator("#attention-explorer .ae-root").wait_for()
        page.locator("#load").click()
        page.locator("#attention-explorer .ae-root[data-ready='1']").wait_for()
        assert title(page) == "layer 3 / 4 · head 1 / 2"
        page.locator("#attention-explorer .ae-root[data-decoded='all']").wait_for()
        starts = sorted(int(r.split("=")[1].split("-")[0]) for r in ranges if r)
        assert starts[0] == 0 and len(ranges) == 4  # scales, layer 3, then layers 1-2 and 4
        # every layer decoded from the file shows the array's weights
        main = page.locator("#attention-explorer .ae-hm-main")
        box = main.bounding_box()
        z = page.evaluate("document.querySelector('#attention-explorer .ae-mount')"
                          ".__attentionExplorer.zoom.z")
        for layer in (3, 1, 4):
            page.locator("select.ae-layer").select_option(str(layer))
            page.mouse.move(box["x"] + (7 + 0.5) * z, box["y"] + (20 + 0.5) * z)
            text = page.locator(".ae-tooltip").inner_text()
            weight = float(text.rsplit("weight", 1)[1])
            assert abs(weight - a[layer - 1, 1, 20, 7]) <= tolerance(a[layer - 1, 1, 20].max())
    finally:
        demo.close()
