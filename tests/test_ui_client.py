"""The running app driven through its API with gradio_client: analyse, download, isolation."""

import csv
import io
import json
import zipfile

import pytest

from tests.conftest import free_port, have, page_analyze

pytestmark = [pytest.mark.slow,
              pytest.mark.skipif(not have("tiny-gpt2"), reason="embedded tiny-gpt2 missing")]


def client(url):
    from gradio_client import Client

    return Client(url, verbose=False, download_files=True)


def shown(out) -> dict:
    """The /analyze outputs by elem_id (ui.overall_tab.output_names without the session state
    and the slot columns, which the API does not return)."""
    from ui.overall_tab import output_names

    names = [n for n in output_names(4) if n != "state" and not n.startswith("slot-")]
    assert len(out) == len(names)
    return dict(zip(names, out, strict=True))


def top_label(value) -> str:
    return value["label"] if isinstance(value, dict) else value


def bundle_of(c) -> zipfile.ZipFile:
    file, _log = c.predict(api_name="/page_bundle")
    # the File output comes as an update (it is made visible); the client has downloaded it
    path = file["value"] if isinstance(file, dict) else file
    with open(path, "rb") as f:
        return zipfile.ZipFile(io.BytesIO(f.read()))


def test_analyse_and_download_the_bundle(url):
    c = client(url)
    out = shown(page_analyze(c, ["tiny-gpt2"], "the capital of japan is"))
    assert top_label(out["predictions-0"]) == "tokyo"
    assert "tiny-gpt2" in out["model-header-0"] and "5 tokens" in out["model-header-0"]
    assert len(out["metrics-table"]["data"]) == 4  # layers 0..3 of tiny-gpt2
    z = bundle_of(c)
    names = z.namelist()
    assert names[0] == "manifest.json"
    manifest = json.loads(z.read("manifest.json"))
    assert manifest["prompts"] == ["the capital of japan is"]
    (model,) = manifest["models"]
    assert model["name"] == "tiny-gpt2"
    rows = list(csv.DictReader(io.StringIO(z.read("layer_metrics.csv").decode())))
    assert [int(r["layer"]) for r in rows] == list(range(model["n_layers"] + 1))
    assert all(r["model"] == "tiny-gpt2" for r in rows)
    assert "report.pdf" in names and "session_log.html" in names
    for name, meta in manifest["files"].items():
        assert name in names and meta["sha256"]
    # the Layer tab answers from the stored analysis through the API too (undocumented
    # endpoints of the page): the model's panels, then a selection, and a refused one
    out = c.predict("tiny-gpt2", api_name="/layer_model")
    assert "the capital of japan is" in out[1] and "tiny-gpt2" in out[1]  # the banner
    layer, head, error, info, *_ = c.predict("tiny-gpt2", 3, 1, api_name="/layer_select")
    assert (layer, head, error) == (3, 1, "") and "layer 3 / 3" in info and "head 1" in info
    layer, head, error, *_ = c.predict("tiny-gpt2", 0, 1, api_name="/layer_select")
    assert "Layer must be between 1 and 3, got 0" in error and (layer, head) == (3, 1)
    with pytest.raises(Exception, match="not in the current analysis"):
        c.predict("tiny-bert", 1, 0, api_name="/layer_select")


def test_two_clients_do_not_see_each_others_results(url):
    from gradio_client.exceptions import AppError

    a, b = client(url), client(url)
    page_analyze(a, ["tiny-gpt2"], "the capital of japan is")
    with pytest.raises(AppError, match="Run an analysis first"):
        b.predict(api_name="/page_bundle")
    page_analyze(b, ["tiny-gpt2"], "red ball moon tree red ball moon tree")
    assert json.loads(bundle_of(a).read("manifest.json"))["prompts"] == ["the capital of japan is"]
    assert json.loads(bundle_of(b).read("manifest.json"))["prompts"] == [
        "red ball moon tree red ball moon tree"]


def test_a_bad_request_is_a_readable_error_and_the_app_keeps_working(url):
    from gradio_client.exceptions import AppError

    c = client(url)
    with pytest.raises(AppError, match="prompt is empty"):
        page_analyze(c, ["tiny-gpt2"], "")
    with pytest.raises(AppError):  # not offered by this app: refused before anything is loaded
        page_analyze(c, ["gpt2"], "hello")
    out = shown(page_analyze(c, ["tiny-gpt2"], "the capital of japan is"))
    assert top_label(out["predictions-0"]) == "tokyo"  # answered after the refusals


def test_share_without_auth_warns_and_serves_locally_when_the_tunnel_fails(monkeypatch, capsys):
    """--share offline: a loud warning, no crash, the page still served locally.

    The tunnel is made to fail on purpose so the test never opens a public link, online or not.
    """
    import urllib.request

    import gradio.networking

    from ui.app import AppConfig, serve

    def no_tunnel(*args, **kwargs):
        raise ConnectionError("offline (test)")

    monkeypatch.setattr(gradio.networking, "setup_tunnel", no_tunnel)
    demo = serve(AppConfig(host="127.0.0.1", port=free_port(), share=True), block=False)
    try:
        err = capsys.readouterr().err
        assert "WARNING" in err and "--auth" in err
        with urllib.request.urlopen(demo.local_url, timeout=30) as r:
            assert r.status == 200
    finally:
        demo.close()


def test_auth_protects_the_page():
    import urllib.error
    import urllib.request

    from gradio_client import Client

    from ui.app import AppConfig, serve

    demo = serve(AppConfig(host="127.0.0.1", port=free_port(), auth="ann:secret"), block=False)
    try:
        with pytest.raises(urllib.error.HTTPError) as info:  # no credentials: no config
            urllib.request.urlopen(demo.local_url.rstrip("/") + "/config", timeout=30)
        assert info.value.code in (401, 403)
        c = Client(demo.local_url, auth=("ann", "secret"), verbose=False)
        assert "/analyze" in str(c.view_api(print_info=False, return_format="dict"))
    finally:
        demo.close()
