"""Bad input, on the command line and through the app's API alike.

Every case gets one clear message (the CLI: exit 2 and one `error:` line; the app: a gr.Error
whose text says what to do, never "Internal error"), nothing already done is lost, and the next
request is answered normally. Cases that are odd but valid (special tokens typed in, several
[MASK]s, control characters, a prompt over the token limit) are answered, with a notice where
something was changed.
"""

from __future__ import annotations

import json
import math
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import EMBEDDED, ROOT, have, page_analyze

pytestmark = pytest.mark.skipif(not (have("tiny-gpt2") and have("tiny-bert")),
                                reason="embedded tiny-gpt2 / tiny-bert missing")

GOOD = "the capital of japan is"
PWNED = Path("/tmp/dashboard-bad-input-pwned")


# ----------------------------------------------------------------------------- folders


@pytest.fixture(scope="module")
def folders(tmp_path_factory) -> dict[str, str]:
    """An empty folder, one with corrupt safetensors, one with only (real) pickle weights."""
    import torch
    from safetensors.torch import load_file

    root = tmp_path_factory.mktemp("models")
    empty = root / "empty"
    empty.mkdir()
    corrupt = root / "corrupt"
    shutil.copytree(EMBEDDED / "tiny-gpt2", corrupt)
    (corrupt / "model.safetensors").write_bytes(b"\x08\x00\x00\x00\x00\x00\x00\x00{garbage" * 8)
    pickled = root / "pickled"
    shutil.copytree(EMBEDDED / "tiny-gpt2", pickled)
    torch.save(load_file(pickled / "model.safetensors"), pickled / "pytorch_model.bin")
    (pickled / "model.safetensors").unlink()
    return {"empty": str(empty), "corrupt": str(corrupt), "pickled": str(pickled)}


@pytest.fixture(scope="module")
def files(tmp_path_factory) -> dict[str, str]:
    """Prompts files that are empty, comments only, huge, binary, Latin-1, too many lines."""
    root = tmp_path_factory.mktemp("prompts")
    out = {}

    def put(name: str, data: bytes) -> None:
        (root / name).write_bytes(data)
        out[name] = str(root / name)

    put("empty.txt", b"")
    put("blank.txt", b"   \n\n\t\n# only a comment\n")
    put("huge.txt", (GOOD + "\n").encode() * 60_000)  # 1.4 MB
    put("binary.bin", bytes(range(256)) * 16)
    put("latin1.txt", "café is\n".encode("latin-1"))
    put("many.txt", b"a b\tc\n" * 1500)
    put("tab_only.txt", b"\tanswer\n")
    out["dir"] = str(root)
    out["missing"] = str(root / "missing.txt")
    return out


# ----------------------------------------------------------------------------- command line


def cli(capsys, *argv: str) -> tuple[int, str, str]:
    import dashboard

    code = dashboard.main(list(argv))
    cap = capsys.readouterr()
    return code, cap.out, cap.err


def one_error_line(err: str) -> str:
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: "), err
    assert "Traceback" not in err
    return lines[0]


P = ("predict", "--model", "tiny-gpt2", "--prompt")
A = ("analyze", "--model", "tiny-gpt2", "--prompt")
G = ("generate", "--model", "tiny-bert", "--prompt", GOOD, "--length", "4")
GA = ("generate", "--model", "tiny-gpt2", "--prompt", GOOD, "--length", "4")

CLI_CASES = [
    # prompts
    ((*P, ""), "empty"),
    ((*P, "  \t\n  "), "empty"),
    ((*A, "   "), "non-empty --prompt"),
    ((*P, "caf\udce9 \udcff\udcfe"), "not valid utf-8"),  # invalid UTF-8 argv (surrogateescape)
    ((*A, "\udcff"), "not valid utf-8"),
    (("generate", "--model", "tiny-gpt2", "--prompt", "\udcff", "--length", "2"), "not valid utf-8"),
    (("predict", "--model", "tiny-bert", "--prompt", "\x00\x01\x02"), "[mask]"),  # all stripped
    (("predict", "--model", "tiny-bert", "--prompt", "no mask here"), "[mask]"),
    # model names
    (("predict", "--model", "nope-model", "--prompt", "x"), "unknown model"),
    (("predict", "--model", "", "--prompt", "x"), "no model given"),
    (("predict", "--model", "../../etc", "--prompt", "x"), "../../etc"),
    (("predict", "--model", "../../../../../../../../etc/passwd", "--prompt", "x"), "not a folder"),
    (("predict", "--model", "https://evil.example/gpt2", "--prompt", "x"), "unknown model"),
    (("predict", "--model", "tiny-gpt2; rm -rf /", "--prompt", "x"), "unknown model"),
    (("predict", "--model", f"$(touch {PWNED})", "--prompt", "x"), "unknown model"),
    (("predict", "--model", f"`touch {PWNED}`", "--prompt", "x"), "unknown model"),
    (("predict", "--model", "no-such-org/no-such-model", "--prompt", "x"), "unknown model"),
    (("predict", "--model", "GSAI-ML/LLaDA-8B-Instruct", "--prompt", "x"), "--trust-remote-code"),
    # generation settings: out of range, NaN, infinite
    (("generate", "--model", "tiny-gpt2", "--prompt", GOOD, "--length", "0"), "length"),
    (("generate", "--model", "tiny-gpt2", "--prompt", GOOD, "--length", "-3"), "length"),
    (("generate", "--model", "tiny-gpt2", "--prompt", GOOD, "--length", "1000000"), "does not fit"),
    (("generate", "--model", "tiny-gpt2", "--prompt", GOOD, "--length", "nan"), "invalid int"),
    ((*G, "--steps", "0"), "steps"),
    ((*G, "--steps", "100"), "steps"),
    ((*G, "--block-length", "0"), "block_length"),
    ((*G, "--block-length", "3"), "multiple of block_length"),
    ((*G, "--threshold", "nan"), "finite"),
    ((*G, "--threshold", "inf"), "finite"),
    ((*G, "--threshold", "0"), "threshold"),
    ((*G, "--threshold", "1.5"), "threshold"),
    ((*G, "--temperature", "-1"), "temperature"),
    ((*G, "--temperature", "nan"), "finite"),
    ((*G, "--temperature=-inf"), "finite"),
    ((*G, "--top-k", "0"), "top_k"),
    ((*G, "--top-p", "0"), "top_p"),
    ((*G, "--top-p", "1.5"), "top_p"),
    ((*G, "--top-p", "nan"), "finite"),
    ((*G, "--cfg-scale", "inf"), "finite"),
    ((*G, "--cfg-scale", "-1"), "cfg_scale"),
    ((*G, "--seed", "-1"), "seed"),
    ((*G, "--strategy", "bogus"), "invalid choice"),
    ((*GA, "--steps", "2"), "autoregressive"),
    # predict / analyze settings
    ((*P, "x", "--top-k", "0"), "top-k"),
    ((*P, "x", "--top-k", "1000000"), "top-k"),
    ((*P, "x", "--max-new-tokens", "-1"), "max-new-tokens"),
    ((*P, "x", "--max-new-tokens", "0"), "max-new-tokens"),
    ((*P, "x", "--max-new-tokens", "100000"), "do not fit"),
    ((*P, "x", "--top-p", "inf"), "finite"),
    ((*A, "x", "--top-k", "0"), "top-k"),
    # serve limits (refused before anything is served)
    (("serve", "--port", "99999"), "--port"),
    (("serve", "--auth", "nopassword"), "user:pass"),
    (("serve", "--max-prompt-tokens", "1"), "max-prompt-tokens"),
    (("serve", "--max-generation-length", "0"), "max-generation-length"),
    (("serve", "--max-concurrent-jobs", "0"), "max-concurrent-jobs"),
    (("serve", "--max-concurrent-jobs", "many"), "invalid int"),
]


@pytest.mark.parametrize("argv, message", CLI_CASES, ids=[" ".join(a)[:60] for a, _ in CLI_CASES])
def test_cli_bad_input_is_one_line_and_exit_2(capsys, argv, message):
    code, _out, err = cli(capsys, *argv)
    assert code == 2, err
    assert message.lower() in one_error_line(err).lower()
    assert not PWNED.exists()  # names are never handed to a shell


@pytest.mark.parametrize("kind, message", [
    ("empty", "no config.json"),
    ("corrupt", "could not load"),
    ("pickled", "pickle"),
])
def test_cli_bad_model_folders(capsys, folders, kind, message):
    code, _out, err = cli(capsys, "predict", "--model", folders[kind], "--prompt", GOOD)
    assert code == 2
    assert message in one_error_line(err).lower()


@pytest.mark.parametrize("name, message", [
    ("empty.txt", "no prompts"),
    ("blank.txt", "no prompts"),
    ("huge.txt", "larger than 1 mb"),
    ("binary.bin", "binary"),
    ("latin1.txt", "not utf-8"),
    ("tab_only.txt", "empty"),
    ("dir", "not a file"),
    ("missing", "does not exist"),
])
def test_cli_bad_prompts_files(capsys, files, name, message):
    code, _out, err = cli(capsys, "compare", "--ar", "tiny-gpt2", "--diffusion", "tiny-diffusion",
                          "--prompts", files[name])
    assert code == 2
    assert message in one_error_line(err).lower()


def test_cli_prompts_file_with_too_many_prompts(capsys, files):
    code, _out, err = cli(capsys, "compare", "--ar", "tiny-gpt2", "--diffusion", "tiny-bert",
                          "--prompts", files["many.txt"])
    assert code == 2 and "more than 1000" in one_error_line(err)


def test_cli_unwritable_outputs_are_one_line(capsys, tmp_path):
    code, _out, err = cli(capsys, *A, GOOD, "--out", "/proc/no/bundle.zip")
    assert code == 2 and "cannot write --out" in one_error_line(err)
    code, _out, err = cli(capsys, *A, GOOD, "--json", str(tmp_path))  # a directory
    assert code == 2 and "cannot write --json" in one_error_line(err)
    assert list(tmp_path.iterdir()) == []
    assert not tmp_path.with_suffix(".tmp").exists()  # no half-written file left next to it


@pytest.mark.parametrize("argv, expect", [
    ((*P, "x" * 100_000), "start dropped"),  # fitted to the context (its end kept), with a notice
    (("predict", "--model", "tiny-bert", "--prompt", "[MASK] [MASK] [MASK] is [MASK]."), "text:"),
    (("predict", "--model", "tiny-bert", "--prompt", "[CLS] the capital of japan is [MASK]. [SEP]"),
     "text: the capital of japan is"),
    ((*P, "<|endoftext|>"), "text:"),
    ((*P, "\x00\x01\x02\x1b[31m\x7f"), "text:"),
    ((*A, "<|endoftext|>"), "1 tokens"),  # a single token: metrics that need two are '-'
    (("analyze", "--model", "tiny-bert", "--prompt", GOOD), "no [mask]"),
    (("generate", "--model", "tiny-bert", "--prompt", "[MASK] is [MASK]", "--length", "2"), "text:"),
])
def test_cli_odd_but_valid_input_is_answered(capsys, argv, expect):
    code, out, err = cli(capsys, *argv)
    assert code == 0, err
    assert expect in out.lower()


@pytest.mark.slow
def test_cli_invalid_utf8_bytes_on_the_real_command_line():
    proc = subprocess.run([sys.executable, "dashboard.py", "predict", "--model", "tiny-gpt2",
                           "--prompt", b"caf\xe9 \xff\xfe"], cwd=ROOT, capture_output=True,
                          timeout=300, env={"HF_HUB_OFFLINE": "1", "PATH": "/usr/bin:/bin"})
    err = proc.stderr.decode("utf-8", "replace")
    assert proc.returncode == 2, err
    assert "not valid UTF-8" in one_error_line(err)


# ----------------------------------------------------------------------------- the app's API


@pytest.fixture(scope="module")
def app(folders):
    """The dashboard with custom models allowed (so folder and id cases reach the loader)."""
    from tests.conftest import free_port
    from ui.app import AppConfig, serve

    demo = serve(AppConfig(host="127.0.0.1", port=free_port(), allow_custom_models=True,
                           max_prompt_tokens=32, max_generation_length=16), block=False)
    try:
        yield demo
    finally:
        demo.close()


@pytest.fixture(scope="module")
def session(app):
    """One client session with a good analysis it must never lose."""
    from tests.test_ui_client import client

    c = client(app.local_url)
    page_analyze(c, ["tiny-gpt2"], None, GOOD)
    return c


def raw_call(app, api: str, data: list, session_hash: str | None = None) -> tuple[str, dict]:
    """POST /gradio_api/call/<api> with a JSON body the client cannot make (lone surrogates,
    NaN); returns (event, data) of the last server-sent event."""
    import httpx

    body = {"data": data}
    if session_hash:
        body["session_hash"] = session_hash
    base = app.local_url.rstrip("/")
    r = httpx.post(f"{base}/gradio_api/call/{api}", content=json.dumps(body, allow_nan=True),
                   headers={"content-type": "application/json"}, timeout=60)
    r.raise_for_status()
    r = httpx.get(f"{base}/gradio_api/call/{api}/{r.json()['event_id']}", timeout=300)
    event, payload = "", None
    for line in r.text.splitlines():
        if line.startswith("event:"):
            event = line.split(":", 1)[1].strip()
        elif line.startswith("data:"):
            payload = json.loads(line.split(":", 1)[1])
    return event, payload


def still_intact(c) -> None:
    """The session's good analysis is still there (cheap: a cached redraw)."""
    out = c.predict("tiny-gpt2", 1, 0, api_name="/layer_select")
    assert out[:2] == (1, 0) and "tiny-gpt2 · layer 1 / 3 · head 0 / 3" in out[3], out[:4]
    assert out[4]["props"]["selection"] == [1, 0]  # the browser explorer follows


def app_cases(folders) -> list[tuple[list, str]]:
    """(models, custom model, prompt) -> a phrase of the message."""
    return [
        ([["tiny-gpt2"], None, ""], "prompt is empty"),
        ([["tiny-gpt2"], None, " \n\t "], "prompt is empty"),
        ([["tiny-gpt2"], None, "x" * 100_000], "the limit is 20,000"),
        ([[], None, GOOD], "at least one model"),
        # typed into the model list (custom models are allowed here): resolved like the box
        ([["nope-model"], None, GOOD], "Unknown model 'nope-model'"),
        ([["../../etc"], None, GOOD], "../../etc"),
        ([["tiny-gpt2"], "../../etc", GOOD], "../../etc"),
        ([["tiny-gpt2"], "/etc/passwd", GOOD], "not a folder"),
        ([["tiny-gpt2"], "https://evil.example/gpt2", GOOD], "unknown model"),
        ([["tiny-gpt2"], "tiny-gpt2 && curl evil.example", GOOD], "unknown model"),
        ([["tiny-gpt2"], f"$(touch {PWNED})", GOOD], "unknown model"),
        ([["tiny-gpt2"], "no-such-org/no-such-model", GOOD], "unknown model"),
        ([["tiny-gpt2"], "GSAI-ML/LLaDA-8B-Instruct", GOOD], "--trust-remote-code"),
        ([["tiny-gpt2"], folders["empty"], GOOD], "no config.json"),
        ([["tiny-gpt2"], folders["corrupt"], GOOD], "could not load"),
        ([["tiny-gpt2"], folders["pickled"], GOOD], "pickle"),
        ([["tiny-gpt2", "tiny-bert", "tiny-llama"], folders["corrupt"], GOOD], "could not load"),
    ]


@pytest.mark.slow
def test_app_bad_requests_get_one_clear_message_and_lose_nothing(app, session, folders):
    from gradio_client.exceptions import AppError

    cases = app_cases(folders)
    for data, phrase in cases:
        with pytest.raises(AppError) as info:
            page_analyze(session, *data)
        message = str(info.value)
        assert phrase.lower() in message.lower(), (data[1:], message)
        assert "Internal error" not in message and "Traceback" not in message
        still_intact(session)
    assert not PWNED.exists()
    # the session log kept every refusal; the good analysis and its bundle are what they were
    from tests.test_ui_client import bundle_of

    manifest = json.loads(bundle_of(session).read("manifest.json"))
    assert manifest["prompts"] == [GOOD]
    assert len(cases) >= 17


@pytest.mark.slow
def test_app_bad_json_values_and_types(app, session):
    """Lone surrogates and NaN cannot come from the page, but an API client can send them."""
    sh = session.session_hash
    page = [False, "gradient"]  # chat template off, gradient support
    event, data = raw_call(app, "page_analyze", [["tiny-gpt2"], None, "caf\udce9 \udcff", *page], sh)
    assert event == "error" and "not valid UTF-8" in data["error"], data
    event, data = raw_call(app, "page_analyze", [["tiny-gpt2"], "bad\udcff/model", GOOD, *page], sh)
    assert event == "error" and "Unknown model" in data["error"], data
    event, data = raw_call(app, "layer_select", ["tiny-gpt2", math.nan, 0], sh)
    assert event == "error" and "Could not preprocess" in data["error"], data  # a whole-number box
    event, data = raw_call(app, "layer_select", ["tiny-gpt2", math.inf, 0], sh)
    assert event == "error" and "Could not preprocess" in data["error"], data
    for layer, head in ((99, 0), (-3, 0), (1, 99)):
        event, data = raw_call(app, "layer_select", ["tiny-gpt2", layer, head], sh)
        # refused inline (no overlay over the boxes); the boxes go back to the shown head
        assert event == "complete" and "must be between" in data[2], (layer, head, data[:3])
        assert data[:2] == [1, 0], data[:3]
    event, data = raw_call(app, "layer_select", ["tiny-gpt2", "abc", 0], sh)
    assert event == "error" and "Could not preprocess" in data["error"], data
    event, data = raw_call(app, "layer_select", ["tiny-bert", 1, 0], sh)
    assert event == "error" and "not in the current analysis" in data["error"]
    event, data = raw_call(app, "page_analyze", [["tiny-gpt2"]], sh)  # too few values
    assert event == "error" and "enough input values" in data["error"]
    import httpx

    base = app.local_url.rstrip("/")
    for body in (b'\xff\xfe{"data": 1}', b'{"data": [["tiny-gpt2"], null, "caf\xe9"]}',
                 b'{"data": "not a list"}', b"[" * 10_000):
        r = httpx.post(f"{base}/gradio_api/call/page_analyze", content=body,
                       headers={"content-type": "application/json"}, timeout=60)
        assert r.status_code in (400, 422), (body[:20], r.status_code)
    # a fresh session has nothing to download
    event, data = raw_call(app, "page_bundle", [], "fresh-session-0123456789")
    assert event == "error" and "Run an analysis first" in data["error"]
    still_intact(session)


@pytest.mark.slow
def test_app_refusal_of_undecodable_text_does_not_poison_the_session_log(app):
    """The refused prompt is kept in the session log (made safe), and later bundles still build."""
    from tests.test_ui_client import bundle_of, client

    c = client(app.local_url)
    event, data = raw_call(app, "page_analyze",
                           [["tiny-gpt2"], None, "caf\udce9 \udcff", False, "gradient"], c.session_hash)
    assert event == "error" and "not valid UTF-8" in data["error"], data
    page_analyze(c, ["tiny-gpt2"], None, GOOD)
    z = bundle_of(c)
    assert json.loads(z.read("manifest.json"))["prompts"] == [GOOD]
    log_html = z.read("session_log.html").decode("utf-8")
    assert "analyze (refused)" in log_html and "caf\ufffd" in log_html


@pytest.mark.slow
def test_app_odd_but_valid_prompts_are_answered(app):
    """Special tokens, several [MASK]s, no [MASK], control characters, over the token limit."""
    from tests.test_ui_client import client

    c = client(app.local_url)

    def notices(models, prompt) -> str:
        return page_analyze(c, models, None, prompt)[0]

    assert "takes 32: tokens 28..59" in notices(["tiny-gpt2"], " ".join([GOOD] * 12))
    assert "--max-prompt-tokens" in notices(["tiny-gpt2"], " ".join([GOOD] * 12))
    assert "No [MASK]" in notices(["tiny-bert"], GOOD)
    assert "reads '[MASK]' as plain text" in notices(["tiny-gpt2"], "the capital of [MASK] is")
    notices(["tiny-bert"], "[CLS] [MASK] [MASK] of japan is [MASK]. [SEP] [PAD] [UNK]")
    out = c.predict("tiny-bert", 1, 0, api_name="/layer_model")  # the analysis is stored
    assert out[0]["value"] == "tiny-bert"
    notices(["tiny-gpt2"], "<|endoftext|>")  # one token
    notices(["tiny-gpt2", "tiny-bert"], "\x00\x01\x02\x1b[31m bell\x07 tab\t")


# the Diffusion tab's Run view (ui.diffusion_runner.diffusion_settings order): model, prompt,
# length, steps, block length, strategy, threshold, temperature, seed, top-k, top-p, cache,
# early stop, mode, schedule, sampling
DIFF_OK = ["tiny-bert", GOOD, 4, 4, 0, "low_confidence", 0, 0, 0, 0, 1, "none", False, "commit",
           "linear", "greedy"]
DIFF_CASES = [  # (setting index, value, phrase of the message)
    (2, 0, "less than minimum value 1"),
    (2, -3, "less than minimum value 1"),
    (2, 17, "greater than maximum value 16"),  # the server's --max-generation-length
    (2, 10**9, "greater than maximum value 16"),
    (2, math.inf, "greater than maximum value"),
    (2, math.nan, "Could not preprocess"),
    (2, "many", "Could not preprocess"),
    (3, -1, "less than minimum value 0"),
    (3, 100, "steps must be between 1 and 4"),
    (3, math.nan, "Could not preprocess"),
    (4, 3, "multiple of block_length 3"),
    (4, -1, "less than minimum value 0"),
    (5, "bogus", "not in the list of choices"),
    (6, 1.5, "greater than maximum value 1"),
    (6, -0.5, "less than minimum value 0"),
    (6, math.nan, "threshold must be a finite number"),
    (7, -1, "less than minimum value 0"),
    (7, math.nan, "temperature must be a finite number"),
    (7, math.inf, "temperature must be a finite number"),
    (8, -1, "less than minimum value 0"),
    (1, "", "prompt is empty"),
    (1, "x " * 50_000, "the limit is 20,000"),
    (0, "tiny-gpt2", "not in the list of choices"),  # a causal model is not offered here
    (0, "../../etc", "not in the list of choices"),
]
DIFF_DEFECTS = [  # found by this matrix and fixed (they were internal errors)
    (8, 2**70, "greater than maximum value"),  # refused by the seed box (maximum 2**32 - 1)
    (1, "caf\udce9", "not valid UTF-8"),
]


@pytest.mark.slow
def test_app_generation_settings_out_of_range_nan_or_infinite(app):
    for index, value, phrase in DIFF_CASES:
        data = list(DIFF_OK)
        data[index] = value
        event, out = raw_call(app, "diffusion_generate", data)
        assert event == "error", (index, value, out)
        assert phrase in out["error"] and "Internal error" not in out["error"], (index, value, out)
    event, out = raw_call(app, "diffusion_generate", DIFF_OK)  # and the next request is answered
    assert event == "complete" and out[0], out
    assert len(DIFF_CASES) >= 20


@pytest.mark.slow
@pytest.mark.parametrize("index, value, phrase", DIFF_DEFECTS)
def test_app_generation_defects_reported(app, index, value, phrase):
    data = list(DIFF_OK)
    data[index] = value
    event, out = raw_call(app, "diffusion_generate", data)
    assert event == "error" and phrase in out["error"] and "Internal error" not in out["error"]


def test_limits_helpers():
    from models.common import UserError
    from ui import limits
    from ui.app import AppConfig

    cfg = AppConfig(max_generation_length=64)
    assert limits.check_generation_length(cfg, 64) == 64
    assert limits.check_generation_length(cfg, 8.0) == 8
    for bad, phrase in ((65, "limit of 64"), (0, "at least 1"), (-1, "at least 1"),
                        (math.nan, "whole number"), (math.inf, "whole number"), (2.5, "whole"),
                        ("8", "whole number"), (None, "whole number"), (True, "whole number")):
        with pytest.raises(UserError, match=phrase):
            limits.check_generation_length(cfg, bad)
    for field, value in (("max_prompt_tokens", 1), ("max_generation_length", 0),
                         ("max_concurrent_jobs", 0), ("max_concurrent_jobs", math.nan),
                         ("session_ttl_s", 0), ("session_ttl_s", math.nan)):
        with pytest.raises(UserError):
            limits.check_limits(AppConfig(**{field: value}))
