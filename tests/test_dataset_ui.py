"""Dataset mode on the page (the Overall tab's panel) and through the public API."""

import json
import zipfile

import pytest

from tests.conftest import have

pytestmark = pytest.mark.skipif(not have("tiny-gpt2"), reason="embedded tiny-gpt2 missing")


@pytest.fixture(scope="module")
def ctx():
    from ui.app import AppConfig, make_context

    return make_context(AppConfig())


def test_the_panel_runs_a_bundled_dataset_and_writes_its_bundle(ctx):
    from ui import dataset_panel
    from ui.state import Session

    session = Session()
    seen = []
    summary, curves, per_text, table, download, state = dataset_panel.dataset_event(
        ctx, session, ["tiny-gpt2"], "corpus", None, 24,
        progress=lambda frac, desc="": seen.append((frac, desc)))
    assert "24 texts" in summary and state is session
    assert curves.plot.startswith("data:image/png") and per_text.plot.startswith("data:image/png")
    assert list(table["layer"]) == [0, 1, 2, 3] and set(table["model"]) == {"tiny-gpt2"}
    assert seen and "texts" in seen[-1][1] and "tokens/s" in seen[-1][1]
    path = download["value"]
    with zipfile.ZipFile(path) as z:
        names = z.namelist()
        assert {"manifest.json", "dataset_layer_metrics.csv", "dataset_head_metrics.csv",
                "dataset_tiny-gpt2.npz", "report.pdf", "summary.json"} <= set(names)
        assert json.loads(z.read("summary.json"))["models"][0]["dataset"]["texts"] == 24
        import io

        from pypdf import PdfReader

        text = " ".join(pg.extract_text() for pg in PdfReader(io.BytesIO(z.read("report.pdf"))).pages)
        assert "all tokens, exact" in text and "<b>" not in text  # markup rendered, not printed
    assert session.log[-1]["action"] == "analyze dataset"


def test_a_cancelled_run_keeps_nothing(ctx):
    from models.common import UserError
    from ui import dataset_panel
    from ui.state import Session

    session = Session()

    def cancel_at_once(frac, desc=""):
        session.dataset_cancel = True  # as the Cancel button does, while the run goes on

    with pytest.raises(UserError, match="cancelled"):
        dataset_panel.dataset_event(ctx, session, ["tiny-gpt2"], "corpus", None, 200,
                                    progress=cancel_at_once)
    assert session.log[-1]["action"] == "analyze dataset (cancelled)"
    assert not list(session.folder().glob("dataset-*.zip"))


def test_bad_dataset_input_is_one_clear_message(ctx, tmp_path):
    from models.common import UserError
    from ui import dataset_panel
    from ui.state import Session

    empty = tmp_path / "empty.txt"
    empty.write_text("\n\n")
    with pytest.raises(UserError, match="empty"):
        dataset_panel.dataset_event(ctx, Session(), ["tiny-gpt2"], None, str(empty), 10)
    with pytest.raises(UserError, match="Choose a bundled dataset"):
        dataset_panel.dataset_event(ctx, Session(), ["tiny-gpt2"], None, None, 10)
    with pytest.raises(UserError, match="between 1 and 20000"):
        dataset_panel.dataset_event(ctx, Session(), ["tiny-gpt2"], "corpus", None, 10**9)


@pytest.mark.slow
def test_the_public_api_runs_a_bundled_dataset(url):
    from gradio_client import Client
    from gradio_client.exceptions import AppError

    c = Client(url, verbose=False)
    out = c.predict(["tiny-gpt2"], "corpus", 16, api_name="/analyze_dataset")
    d = out["models"][0]["dataset"]
    assert d["texts"] == 16 and len(d["layers"]) == 4 and d["processes"] == 1
    assert set(d["layers"][1]) >= {"all_tokens", "token_sample", "per_text", "dataset_entropy"}
    with pytest.raises(AppError, match="bundled"):
        c.predict(["tiny-gpt2"], "/etc/passwd", 5, api_name="/analyze_dataset")
