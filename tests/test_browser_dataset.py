"""The Overall tab's dataset mode in Chromium: upload a file, run, read the results, download
the bundle; a bad file gets a message and the panel keeps working.

Reuses tests/test_browser.py's fixtures (a server on a free port, one page) and helpers."""

import json
import zipfile

import pytest

from tests.conftest import have
from tests.test_browser import TIMEOUT_MS, expect_drawn, page, url  # noqa: F401

pytestmark = [pytest.mark.browser, pytest.mark.slow,
              pytest.mark.skipif(not have("tiny-gpt2"), reason="embedded tiny-gpt2 missing")]

TEXTS = [f"the capital of {c} is {k}." for c, k in (
    ("japan", "tokyo"), ("france", "paris"), ("italy", "rome"), ("kenya", "nairobi"),
    ("peru", "lima"), ("egypt", "cairo"), ("spain", "madrid"), ("chile", "santiago"),
    ("india", "new delhi"), ("china", "beijing"), ("cuba", "havana"), ("iran", "tehran"))]


def _open_panel(page) -> None:  # noqa: F811
    page.get_by_role("tab", name="Overall").click()
    accordion = page.locator("#dataset-accordion")
    if not page.locator("#dataset-run").is_visible():
        accordion.get_by_text("Dataset mode").first.click()
    page.locator("#dataset-run").wait_for(state="visible")


def test_upload_run_and_download(page, tmp_path):  # noqa: F811
    from playwright.sync_api import expect

    expect(page.locator("#models .token")).to_have_text(["tiny-gpt2"])  # the page's default
    _open_panel(page)
    # a bad file first: a clear message, and the panel stays usable
    empty = tmp_path / "empty.txt"
    empty.write_text("")
    page.locator("#dataset-upload input[type=file]").set_input_files(str(empty))
    page.locator("#dataset-run").click()
    expect(page.get_by_text("is empty").first).to_be_visible(timeout=TIMEOUT_MS)
    # then a real file: 12 texts, the first 10 analysed
    data = tmp_path / "capitals.txt"
    data.write_text("\n".join(TEXTS) + "\n")
    page.locator("#dataset-upload").get_by_label("Clear").first.click()  # the bad file goes
    page.locator("#dataset-upload input[type=file]").set_input_files(str(data))
    page.locator("#dataset-limit input").fill("10")
    page.locator("#dataset-run").click()
    summary = page.locator("#dataset-summary")
    expect(summary).to_contain_text("tiny-gpt2", timeout=TIMEOUT_MS)
    expect(summary).to_contain_text("10 texts")
    expect_drawn(page, "dataset-curves")
    expect_drawn(page, "dataset-per-text")
    table = page.locator("#dataset-table")
    expect(table).to_contain_text("tiny-gpt2")
    link = page.locator("#dataset-download a").first
    link.wait_for(state="attached", timeout=TIMEOUT_MS)
    with page.expect_download() as info:
        link.click()
    path = tmp_path / "dataset.zip"
    info.value.save_as(path)
    with zipfile.ZipFile(path) as z:
        manifest = json.loads(z.read("manifest.json"))
        assert manifest["kind"] == "dataset" and manifest["models"][0]["texts"] == 10
        assert any(n.endswith(".pdf") for n in z.namelist())
