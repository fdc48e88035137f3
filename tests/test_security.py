"""Serving publicly: what a stranger with the link (or the API) can and cannot do.

- Under --share: custom model ids/paths only with --allow-custom-models; remote code never from
  the page; a loud warning without --auth.
- Downloads: only the requesting session's own bundle; unguessable names; no other path on the
  machine through the app (crafted requests with httpx against the launched server).
- Weights: safetensors only unless a command-line flag allows pickle, with a warning; even then
  a pickle that runs code is refused.
- Limits: prompt tokens, generation length and concurrent jobs from the command line.
"""

from __future__ import annotations

import gc
import json
import logging
import re
import shutil
import time
from pathlib import Path

import pytest

from tests.conftest import EMBEDDED, ROOT, have, page_analyze

pytestmark = pytest.mark.skipif(not have("tiny-gpt2"), reason="embedded tiny-gpt2 missing")

MARKER = Path("/tmp/dashboard-security-unpickled")


def api_parameters(demo) -> dict[str, list[str]]:
    """Every named API endpoint and its parameter labels/names, from the app's own API info."""
    info = demo.get_api_info()
    return {name: [(p.get("parameter_name") or "") + " " + (p.get("label") or "")
                   for p in ep["parameters"]]
            for name, ep in info["named_endpoints"].items()}


# ----------------------------------------------------------------------------- --share


def test_share_refuses_custom_models_and_never_enables_remote_code():
    from models.common import UserError
    from ui import overall_tab
    from ui.app import AppConfig, build_app, make_context

    shared = AppConfig(share=True)
    assert shared.allow_custom_models is False and shared.trust_remote_code is False
    demo = build_app(shared)
    assert not any(getattr(b, "elem_id", None) == "custom-model" for b in demo.blocks.values())
    params = api_parameters(demo)
    assert [p.split()[0] for p in params["/analyze"]] == ["models", "prompt", "chat_template",
                                                          "head_ablation", "top_k"]
    assert "/page_analyze" not in params  # the page's own events are not the public API
    everything = json.dumps(params).lower()
    for word in ("trust", "remote", "pickle"):
        assert word not in everything, word  # no page or API input can set these
    ctx = make_context(shared)
    for custom in ("gpt2", "../../etc", str(EMBEDDED / "tiny-gpt2"), "GSAI-ML/LLaDA-8B-Instruct"):
        with pytest.raises(UserError, match="Custom models are disabled"):
            overall_tab.chosen_models(ctx, [], custom)
    for name in ("gpt2", str(EMBEDDED / "tiny-gpt2"), "GSAI-ML/LLaDA-8B-Instruct"):
        with pytest.raises(UserError, match="not offered.*--allow-custom-models"):
            overall_tab.chosen_models(ctx, [name], None)  # typed into the list: says how
    # with --allow-custom-models a folder may be typed in, but remote code still needs the flag
    allowing = make_context(AppConfig(share=True, allow_custom_models=True))
    assert overall_tab.chosen_models(allowing, [], str(EMBEDDED / "tiny-gpt2")) == [
        str(EMBEDDED / "tiny-gpt2")]
    with pytest.raises(UserError, match="--trust-remote-code"):
        allowing.load("GSAI-ML/LLaDA-8B-Instruct")


def test_serve_flags_reach_the_config(monkeypatch):
    import dashboard
    import ui.app

    seen = []
    monkeypatch.setattr(ui.app, "serve", lambda config, block=True: seen.append(config))
    assert dashboard.main(["serve", "--share"]) == 0
    cfg = seen[-1]
    assert cfg.share and not cfg.allow_custom_models and not cfg.trust_remote_code
    assert not cfg.allow_pickle and cfg.auth is None
    assert (cfg.max_prompt_tokens, cfg.max_generation_length, cfg.max_concurrent_jobs) == (
        512, 256, 1)  # the defaults
    assert dashboard.main(["serve", "--max-prompt-tokens", "64", "--max-generation-length", "32",
                           "--max-concurrent-jobs", "3", "--allow-custom-models",
                           "--trust-remote-code", "--allow-pickle-weights"]) == 0
    cfg = seen[-1]
    assert (cfg.max_prompt_tokens, cfg.max_generation_length, cfg.max_concurrent_jobs) == (64, 32, 3)
    assert cfg.allow_custom_models and cfg.trust_remote_code and cfg.allow_pickle


@pytest.mark.slow
def test_share_without_auth_and_pickle_flag_warn_loudly(monkeypatch, capsys):
    import gradio.networking

    from tests.conftest import free_port
    from ui.app import AppConfig, serve

    def no_tunnel(*args, **kwargs):  # never open a public link from a test
        raise ConnectionError("offline (test)")

    monkeypatch.setattr(gradio.networking, "setup_tunnel", no_tunnel)
    demo = serve(AppConfig(host="127.0.0.1", port=free_port(), share=True, allow_pickle=True),
                 block=False)
    demo.close()
    err = capsys.readouterr().err
    assert "WARNING" in err and "--auth" in err and "anyone" in err
    assert "--allow-pickle-weights" in err and "run code" in err
    demo = serve(AppConfig(host="127.0.0.1", port=free_port(), share=True, auth="ann:secret"),
                 block=False)
    demo.close()
    assert "WARNING" not in capsys.readouterr().err


# ----------------------------------------------------------------------------- downloads


@pytest.fixture(scope="module")
def served():
    from tests.conftest import free_port
    from ui.app import AppConfig, serve

    demo = serve(AppConfig(host="127.0.0.1", port=free_port()), block=False)
    try:
        yield demo
    finally:
        demo.close()


def session_of(demo, client):
    from ui.state import Session

    state = demo.state_holder.session_data[client.session_hash]
    return next(v for v in state.state_data.values() if isinstance(v, Session))


@pytest.mark.slow
def test_no_path_on_the_machine_is_reachable_except_ones_own_bundle(served, tmp_path):
    import httpx
    from gradio_client import Client
    from gradio_client.exceptions import AppError

    base = served.local_url.rstrip("/")
    a = Client(served.local_url, verbose=False, download_files=False)
    b = Client(served.local_url, verbose=False, download_files=False)
    page_analyze(a, ["tiny-gpt2"], "the capital of japan is")
    file, _log = a.predict(api_name="/page_bundle")
    value = file["value"] if isinstance(file, dict) and "value" in file else file
    served_path = value["path"] if isinstance(value, dict) else value
    own = session_of(served, a)
    raw_path = str(own.bundle_path)  # where the bundle really lives: the session's private dir

    # names: the session dir carries 32 random hex digits, the served copy a 64-hex content hash
    assert re.search(r"dashboard-session-[0-9a-f]{32}-", raw_path)
    assert re.search(r"/[0-9a-f]{64}/dashboard-tiny-gpt2-", served_path), served_path
    assert raw_path != served_path

    r = httpx.get(f"{base}/gradio_api/file={served_path}", timeout=60)
    assert r.status_code == 200 and r.content[:2] == b"PK"  # its owner gets it

    # B: no analysis, so no bundle; it cannot ask for A's
    with pytest.raises(AppError, match="Run an analysis first"):
        b.predict(api_name="/page_bundle")
    repo_file = ROOT / "dashboard.py"
    crafted = [
        "/gradio_api/file=/etc/passwd",
        "/gradio_api/file=%2fetc%2fpasswd",
        "/gradio_api/file=//etc/passwd",
        "/gradio_api/file=..%2f..%2f..%2f..%2f..%2fetc%2fpasswd",
        "/gradio_api/file=../../../../../etc/passwd",
        "/gradio_api/file=/tmp/gradio/..%2f..%2fetc%2fpasswd",
        "/gradio_api/file=file:///etc/passwd",
        "/gradio_api/file=/proc/self/environ",
        "/gradio_api/file/etc/passwd",
        "/file=/etc/passwd",
        "/file=..%2f..%2fetc/passwd",
        "/static/..%2f..%2f..%2f..%2f..%2fetc%2fpasswd",
        "/assets/..%2f..%2f..%2f..%2fetc%2fpasswd",
        "/svelte/..%2f..%2f..%2f..%2fetc%2fpasswd",
        f"/gradio_api/file={raw_path}",  # A's bundle where it really lives
        f"/gradio_api/file={Path(raw_path).parent}",
        f"/gradio_api/file={repo_file}",
        f"/gradio_api/file={EMBEDDED / 'tiny-gpt2' / 'model.safetensors'}",
        f"/gradio_api/file={served_path}/../../../../etc/passwd",
        f"/gradio_api/file={served.local_url}config",  # the server fetching from itself
        f"/gradio_api/proxy={served.local_url}config",
        "/gradio_api/file=http://169.254.169.254/latest/meta-data/",
    ]
    secret = repo_file.read_text()[:200]
    for url in crafted:
        r = httpx.get(base + url, timeout=60)
        assert r.status_code in (400, 403, 404), (url, r.status_code)
        assert "root:x:0:0" not in r.text and secret not in r.text and r.content[:2] != b"PK", url

    # the page-load event that makes a fresh Session is callable through the API; it only ever
    # replaces the caller's own state, and the replaced session's files do not linger
    folder = own.bundle_path.parent
    del own
    assert a.predict(api_name="/new_session") == ()
    with pytest.raises(AppError, match="Run an analysis first"):
        a.predict(api_name="/page_bundle")
    deadline = time.time() + 20
    while folder.exists() and time.time() < deadline:
        gc.collect()
        time.sleep(0.2)
    assert not folder.exists()


@pytest.mark.slow
def test_each_client_downloads_only_its_own_bundle(served, tmp_path):
    from gradio_client import Client

    from tests.test_ui_client import bundle_of

    clients = [Client(served.local_url, verbose=False, download_files=str(tmp_path / str(i)))
               for i in range(3)]
    prompts = ["the capital of japan is", "the capital of peru is", "red ball moon tree red ball"]
    for c, p in zip(clients, prompts, strict=True):
        page_analyze(c, ["tiny-gpt2"], p)
    for c, p in zip(clients, prompts, strict=True):
        manifest = json.loads(bundle_of(c).read("manifest.json"))
        assert manifest["prompts"] == [p]
    dirs = {str(session_of(served, c).bundle_path.parent) for c in clients}
    assert len(dirs) == 3


# ----------------------------------------------------------------------------- weights


class _RunsCode:
    """Unpickling this writes MARKER: what a malicious *.bin could do."""

    def __reduce__(self):
        return (Path.write_text, (MARKER, "unpickled"))


@pytest.fixture
def evil_folders(tmp_path):
    import torch

    MARKER.unlink(missing_ok=True)
    pickled = tmp_path / "pickle-only"
    shutil.copytree(EMBEDDED / "tiny-gpt2", pickled)
    (pickled / "model.safetensors").unlink()
    torch.save({"weights": _RunsCode()}, pickled / "pytorch_model.bin")
    both = tmp_path / "both"
    shutil.copytree(EMBEDDED / "tiny-gpt2", both)
    torch.save({"weights": _RunsCode()}, both / "pytorch_model.bin")
    yield {"pickled": str(pickled), "both": str(both)}
    MARKER.unlink(missing_ok=True)


def test_weights_are_safetensors_only_unless_the_flag_allows_pickle(evil_folders, tmp_path, caplog):
    from safetensors.torch import load_file

    from models.common import UserError
    from models.loading import LoadOptions, load_uncached
    from models.registry import resolve

    # pickle only, no flag: refused before anything is read
    with pytest.raises(UserError, match="--allow-pickle-weights"):
        load_uncached(resolve(evil_folders["pickled"]))
    # safetensors next to a pickle: the safetensors file is used, the pickle never opened
    assert load_uncached(resolve(evil_folders["both"])).n_layers > 0
    assert not MARKER.exists()
    # with the flag a code-running pickle is still refused (weights-only unpickling)
    with pytest.raises(UserError, match="Could not load"):
        load_uncached(resolve(evil_folders["pickled"]), LoadOptions(allow_pickle=True))
    assert not MARKER.exists()
    # with the flag an honest pickle loads, with a warning in the log
    import torch

    honest = tmp_path / "honest"
    shutil.copytree(EMBEDDED / "tiny-gpt2", honest)
    torch.save(load_file(honest / "model.safetensors"), honest / "pytorch_model.bin")
    (honest / "model.safetensors").unlink()
    with caplog.at_level(logging.WARNING, logger="models.loading"):
        loaded = load_uncached(resolve(str(honest)), LoadOptions(allow_pickle=True))
    assert loaded.n_layers > 0
    assert any("pickle" in r.getMessage() for r in caplog.records)


def test_the_command_line_flag_is_the_only_way_to_pickle(evil_folders, capsys):
    import dashboard

    assert dashboard.main(["predict", "--model", evil_folders["pickled"], "--prompt", "x"]) == 2
    assert "--allow-pickle-weights" in capsys.readouterr().err
    assert dashboard.main(["predict", "--model", evil_folders["pickled"], "--prompt", "x",
                           "--allow-pickle-weights"]) == 2
    assert "Could not load" in capsys.readouterr().err and not MARKER.exists()


# ----------------------------------------------------------------------------- limits


def test_a_prompt_over_max_prompt_tokens_is_fitted_with_a_visible_notice():
    from ui import overall_tab
    from ui.app import AppConfig, make_context
    from ui.state import Session

    ctx = make_context(AppConfig(max_prompt_tokens=8))
    session = Session()
    prompt = " ".join(["the capital of japan is"] * 6)  # 30 tokens
    out = dict(zip(overall_tab.output_names(ctx.config.max_models_per_analysis),
                   overall_tab.analyze_event(ctx, session, ["tiny-gpt2"], None, prompt),
                   strict=True))
    # a causal model keeps the end of the prompt: its next token follows the last one typed
    assert "tokens 22..29" in out["notices"] and "were analysed" in out["notices"]
    assert "--max-prompt-tokens" in out["notices"]
    assert session.analysis.results[0].trace.n_tokens == 8


def test_limits_have_sensible_defaults_and_are_checked_at_start():
    from models.common import UserError
    from ui import limits
    from ui.app import AppConfig, check_config

    cfg = AppConfig()
    assert cfg.max_prompt_tokens == limits.DEFAULT_MAX_PROMPT_TOKENS == 512
    assert cfg.max_generation_length == limits.DEFAULT_MAX_GENERATION_LENGTH == 256
    assert cfg.max_concurrent_jobs == limits.DEFAULT_MAX_CONCURRENT_JOBS == 1
    assert 0 < cfg.session_ttl_s < float("inf")
    check_config(cfg)
    for bad in (dict(max_prompt_tokens=0), dict(max_generation_length=-1),
                dict(max_concurrent_jobs=0), dict(session_ttl_s=-5)):
        with pytest.raises(UserError):
            check_config(AppConfig(**bad))
