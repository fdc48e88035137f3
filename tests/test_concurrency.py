"""Concurrency, load and faults.

- 8 gradio_client sessions at once, each with its own prompts: analyses, layer views, a bundle
  and a generation. Every request completes, every session gets only its own results and
  bundle, the model cache stays bounded while it evicts, and per-session results expire.
  Requests/s and peak memory are printed (run with -s to see them).
- Capture on a model that another thread is running at the same time records only its own pass.
- Faults: a model that fails to load leaves the loaded ones usable; an analysis or a bundle that
  fails midway leaves no partial result or file; a killed server loses nothing already
  downloaded and a new one starts on the same port.
"""

from __future__ import annotations

import io
import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import zipfile
from collections import OrderedDict
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest

from tests.conftest import ROOT, have, page_analyze

pytestmark = pytest.mark.skipif(not (have("tiny-gpt2") and have("tiny-bert")),
                                reason="embedded tiny-gpt2 / tiny-bert missing")

COUNTRIES = ["japan", "france", "peru", "egypt", "chile", "spain", "italy", "kenya"]


def rss_mb() -> float:
    with open("/proc/self/status") as fh:
        for line in fh:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return float("nan")


class MemorySampler:
    """Peak resident memory of this process (server and clients both live here), every 50 ms."""

    def __init__(self):
        self.base = self.peak = rss_mb()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self):
        while not self._stop.wait(0.05):
            self.peak = max(self.peak, rss_mb())

    def __enter__(self):
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join()


def highlight_text(value) -> str:
    """The tokens of a HighlightedText output joined back together."""
    if isinstance(value, dict):
        value = value.get("value", value)
    return "".join(item["token"] if isinstance(item, dict) else item[0] for item in value or [])


def log_prompts(table) -> str:
    """Every prompt cell of a session-log Dataframe output, as one string."""
    if isinstance(table, dict):
        table = table.get("value", table)
    headers, rows = table["headers"], table["data"]
    col = headers.index("prompt")
    return " | ".join(str(r[col]) for r in rows)


# the Diffusion tab's Run view inputs (ui.diffusion_runner.diffusion_settings order) after the
# model and prompt: length, steps, block length, strategy, threshold, temperature, then the seed;
# then top-k, top-p, cache, early stop, mode, schedule, sampling
GEN_AFTER_SEED = [0, 1, "none", False, "commit", "linear", "greedy"]


# ----------------------------------------------------------------------------- 8 sessions


@pytest.mark.slow
def test_eight_sessions_at_once(monkeypatch):
    from gradio_client import Client

    from models import generation
    from models.loading import MODELS as CACHE
    from models.loading import load
    from tests.conftest import free_port
    from ui.app import AppConfig, serve

    evictions = []

    class CountingLRU(OrderedDict):
        def popitem(self, last=True):
            item = super().popitem(last)
            evictions.append(item[0][0])
            return item

    monkeypatch.setattr(CACHE, "_items", CountingLRU())  # starts empty
    monkeypatch.setattr(CACHE, "max_models", 2)  # three models in use: the cache must evict
    demo = serve(AppConfig(host="127.0.0.1", port=free_port(), max_concurrent_jobs=2), block=False)
    assert demo._queue.default_concurrency_limit == 2
    counts = {"requests": 0}
    lock = threading.Lock()
    max_cached = [0]
    latency: dict[str, list[float]] = {}

    def call(c, *args, api_name: str):
        t = time.perf_counter()
        out = c.predict(*args, api_name=api_name)
        with lock:
            counts["requests"] += 1
            latency.setdefault(api_name, []).append(time.perf_counter() - t)
            max_cached[0] = max(max_cached[0], len(CACHE.names()))
        return out

    try:
        gen_api = "/diffusion_generate"

        def session(i: int) -> dict:
            country = COUNTRIES[i]
            c = Client(demo.local_url, verbose=False, download_files=tempfile.mkdtemp())
            causal = "tiny-gpt2" if i % 2 == 0 else "tiny-llama"
            first = f"the capital of {country} is"
            second = f"the capital of {country} is [MASK]."
            out = {"hash": c.session_hash, "country": country}
            # analysis 1: a causal model; its attribution tokens are this session's prompt
            a = call(c, [causal], first, False, "gradient", api_name="/page_analyze")
            assert first in highlight_text(a[8]), (i, highlight_text(a[8]))
            # analysis 2: the fill-mask model (three models in use in all: the cache evicts)
            b = call(c, ["tiny-bert"], second, False, "gradient", api_name="/page_analyze")
            # every country of COUNTRIES is one whole word of tiny-bert's vocabulary
            assert country in highlight_text(b[8])
            out["log"] = log_prompts(b[4])
            # layer views, drawn from the stored analysis (no model run)
            info = call(c, "tiny-bert", 2, 1, api_name="/layer_select")[3]
            info2 = call(c, "tiny-bert", 2, 0, api_name="/layer_select")[3]
            assert "tiny-bert · layer 2" in info and "head 1" in info and "head 0" in info2
            # the bundle
            file, _log = call(c, api_name="/page_bundle")
            path = file["value"] if isinstance(file, dict) else file
            with zipfile.ZipFile(path) as z:
                out["manifest"] = json.loads(z.read("manifest.json"))
                out["tokens"] = json.loads(z.read("tokens.json"))
            out["bundle_name"] = Path(path).parent.name + "/" + Path(path).name
            # a generation: the Diffusion tab's endpoint when present
            if gen_api:
                g = call(c, "tiny-bert", first, 4, 4, 0, "low_confidence", 0, 0, i, *GEN_AFTER_SEED,
                         api_name=gen_api)
                paths = [f.get("path", f.get("value")) if isinstance(f, dict) else f for f in g[8]]
                zips = [p for p in paths if str(p).endswith(".zip")]
                with zipfile.ZipFile(zips[0]) as z:
                    out["generation_prompt"] = json.loads(z.read("trace.json"))["prompt"]
            return out

        def engine_generation(i: int) -> str:
            """The engine's generate alongside the sessions (the same process and cached models)."""
            r = generation.diffusion_generate(load("tiny-bert"), f"the capital of {COUNTRIES[i]} is",
                                              4, steps=4, seed=i)
            a = generation.autoregressive_generate(load("tiny-gpt2"), f"{COUNTRIES[i]} is", 4)
            with lock:
                counts["engine"] = counts.get("engine", 0) + 2
            return r.prompt + "|" + a.prompt

        t0 = time.perf_counter()
        with MemorySampler() as mem, ThreadPoolExecutor(12) as pool:
            sessions = [pool.submit(session, i) for i in range(8)]
            engine = [pool.submit(engine_generation, i) for i in range(4)]
            results = [f.result(timeout=300) for f in sessions]
            engine_out = [f.result(timeout=300) for f in engine]
        seconds = time.perf_counter() - t0
    finally:
        demo.close()

    n = counts["requests"]
    print(f"\n8 sessions ({'with' if gen_api else 'WITHOUT'} the Diffusion tab's /diffusion_generate"
          f"), {n} requests in {seconds:.1f} s = {n / seconds:.2f} requests/s; "
          f"resident memory {mem.base:.0f} MB before, peak {mem.peak:.0f} MB "
          f"(+{mem.peak - mem.base:.0f} MB); models cached at most {max_cached[0]}, "
          f"evictions {len(evictions)}; engine generations alongside: {counts.get('engine', 0)}")
    for api, ts in sorted(latency.items()):
        print(f"  {api:22s} {len(ts):3d} requests, latency mean {np.mean(ts):6.2f} s, "
              f"max {max(ts):6.2f} s")
    assert len(results) == 8 and len({r["hash"] for r in results}) == 8
    for r in results:
        mine = r["country"]
        others = [c for c in COUNTRIES if c != mine]
        assert r["manifest"]["prompts"] == [f"the capital of {mine} is [MASK]."]
        assert any(mine in toks for toks in r["tokens"].values())
        assert mine in r["log"] and not any(o in r["log"] for o in others), r["log"]
        if gen_api:
            assert r["generation_prompt"] == f"the capital of {mine} is"
    assert len({r["bundle_name"] for r in results}) == 8  # every session its own file
    assert sorted(engine_out) == sorted(f"the capital of {c} is|{c} is" for c in COUNTRIES[:4])
    assert max_cached[0] <= 2 and evictions  # bounded, and it did evict
    assert mem.peak - mem.base < 2048  # tiny models: well under 2 GB more at the peak


@pytest.mark.slow
def test_session_results_expire_and_their_files_go():
    """A session's analysis and bundle directory are dropped `session_ttl_s` after its last
    update; other sessions are untouched; the expired one gets a clear message."""
    from gradio_client import Client
    from gradio_client.exceptions import AppError

    from tests.conftest import free_port
    from ui.app import AppConfig, serve
    from ui.state import Session

    # a TTL longer than one bundle build (~4 s here), so the session expires after it
    demo = serve(AppConfig(host="127.0.0.1", port=free_port(), session_ttl_s=10), block=False)
    try:
        a = Client(demo.local_url, verbose=False)
        page_analyze(a, ["tiny-gpt2"], "the capital of japan is")
        a.predict(api_name="/page_bundle")
        state = demo.state_holder.session_data[a.session_hash]
        session = next(v for v in state.state_data.values() if isinstance(v, Session))
        folder = session.directory
        assert folder is not None and folder.is_dir() and session.analysis is not None
        deadline = time.time() + 40
        while folder.exists() and time.time() < deadline:
            time.sleep(0.5)
        assert not folder.exists()  # cleanup ran when the state expired
        assert session.directory is None
        with pytest.raises(AppError, match="Run an analysis first"):
            a.predict(api_name="/page_bundle")
        page_analyze(a, ["tiny-gpt2"], "the capital of japan is")  # works again
    finally:
        demo.close()


# ----------------------------------------------------------------------------- shared models


def test_capture_records_only_its_own_forward_pass_while_another_thread_runs_the_model(gpt2):
    """The attention hooks sit on the shared cached model; a generation (or another session's
    analysis) running the same model on another thread must neither feed them nor fail."""
    import torch

    from analysis.capture import capture

    prompt = "the capital of japan is"
    ref = capture(gpt2, prompt)
    other_ids = torch.tensor([gpt2.tokenizer("red ball moon tree red")["input_ids"]])
    assert other_ids.shape[1] == len(ref.token_ids)  # same length: a mix-up would fit silently
    stop, errors, passes = threading.Event(), [], [0]

    def other():
        while not stop.is_set():
            try:
                with torch.no_grad():
                    gpt2.model(input_ids=other_ids)
                passes[0] += 1
            except Exception as exc:  # noqa: BLE001 - counted and reported below
                errors.append(repr(exc))

    t = threading.Thread(target=other)
    t.start()
    try:
        traces = [capture(gpt2, prompt) for _ in range(60)]
    finally:
        stop.set()
        t.join()
    assert errors == [] and passes[0] > 0
    for tr in traces:
        np.testing.assert_allclose(tr.attentions, ref.attentions, atol=1e-6)
        np.testing.assert_allclose(tr.hidden, ref.hidden, atol=1e-5)


# ----------------------------------------------------------------------------- faults


def test_a_failed_load_leaves_the_loaded_models_usable(tmp_path):
    import shutil

    from gradio import Error

    from models.loading import MODELS as CACHE
    from tests.conftest import EMBEDDED
    from ui import overall_tab
    from ui.app import AppConfig, make_context
    from ui.state import Session, friendly_errors

    ctx = make_context(AppConfig(allow_custom_models=True))
    session = Session()
    analyze = friendly_errors(overall_tab.analyze_event)
    analyze(ctx, session, ["tiny-gpt2"], None, "the capital of japan is")
    first = session.analysis
    loaded_before = CACHE.names()
    broken = tmp_path / "broken"
    shutil.copytree(EMBEDDED / "tiny-gpt2", broken)
    (broken / "model.safetensors").write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00not a header....")
    with pytest.raises(Error, match="Could not load model"):
        analyze(ctx, session, ["tiny-gpt2"], str(broken), "the capital of japan is")
    assert session.analysis is first  # the previous result is kept
    assert CACHE.names() == loaded_before  # the failure changed nothing in the cache
    out = analyze(ctx, session, ["tiny-gpt2"], None, "red ball moon tree red ball moon tree")
    assert out[0].analysis is not first and "tiny-gpt2" in CACHE.names()


def _files(folder: Path | None) -> list[str]:
    if folder is None or not folder.exists():
        return []
    return sorted(p.relative_to(folder).as_posix() for p in folder.rglob("*"))


def test_an_analysis_failing_midway_leaves_no_partial_result(monkeypatch):
    """A failure inside the analysis (after the forward pass, with the attention kept on disk)
    leaves the session's previous analysis, bundle and files exactly as they were, and no
    temporary attention file behind."""
    from gradio import Error

    import analysis.capture as cap
    import analysis.run as run_mod
    from ui import overall_tab
    from ui.app import AppConfig, make_context
    from ui.state import Session, friendly_errors

    ctx = make_context(AppConfig())
    session = Session()
    analyze = friendly_errors(overall_tab.analyze_event)
    analyze(ctx, session, ["tiny-gpt2"], None, "the capital of japan is")
    before = (session.analysis, session.analysis_id, list(session.log))
    files_before = _files(session.folder())
    tmp = Path(tempfile.gettempdir())
    attention_dirs = set(tmp.glob("attention-*"))

    monkeypatch.setattr(cap, "ATTENTION_MEMORY_LIMIT", 16)  # force the on-disk attention path

    def boom(*args, **kwargs):
        raise RuntimeError("injected failure inside the analysis")

    monkeypatch.setattr(run_mod, "induction_scores", boom)
    with pytest.raises(Error, match="injected failure"):
        analyze(ctx, session, ["tiny-gpt2"], None, "red ball moon tree")
    assert (session.analysis, session.analysis_id, session.log) == before
    assert _files(session.folder()) == files_before
    assert set(tmp.glob("attention-*")) == attention_dirs  # no partial attention array left

    # a capture that fails inside the forward pass leaves nothing on disk either
    monkeypatch.undo()
    monkeypatch.setattr(cap, "ATTENTION_MEMORY_LIMIT", 16)
    from models.loading import load

    gpt2 = load("tiny-gpt2")
    def fail(*args):
        raise ValueError("injected failure in the forward pass")

    handle = gpt2.model.lm_head.register_forward_hook(fail)
    try:
        with pytest.raises(ValueError, match="injected"):
            cap.capture(gpt2, "the capital of japan is")
    finally:
        handle.remove()
    assert set(tmp.glob("attention-*")) == attention_dirs
    ok = cap.capture(gpt2, "the capital of japan is")  # and the on-disk path still works
    assert ok.attentions.dtype == np.float16 and set(tmp.glob("attention-*")) == attention_dirs


def test_a_bundle_failing_midway_leaves_no_partial_zip(monkeypatch):
    from gradio import Error

    import reports.pdf as pdf_mod
    from ui import overall_tab
    from ui.app import AppConfig, make_context
    from ui.state import Session, friendly_errors

    ctx = make_context(AppConfig())
    session = Session()
    overall_tab.analyze_event(ctx, session, ["tiny-gpt2"], None, "the capital of japan is")
    analysis = session.analysis

    def boom(*args, **kwargs):
        raise OSError(28, "No space left on device (injected)")

    monkeypatch.setattr(pdf_mod, "write_pdf", boom)
    bundle = friendly_errors(overall_tab.bundle_event)
    with pytest.raises(Error, match="No space left"):
        bundle(ctx, session)
    assert session.analysis is analysis and session.bundle_path is None
    assert _files(session.folder()) == []  # no .zip, no .part
    assert session.log[-1]["action"] == "download bundle" and session.log[-1]["error"]
    monkeypatch.undo()
    file, _state, _log = bundle(ctx, session)  # the next try writes a whole bundle
    assert zipfile.is_zipfile(file["value"]) and _files(session.folder()) == [
        Path(file["value"]).name]


# ----------------------------------------------------------------------------- kill -9


def _wait_until_serving(port: int, proc: subprocess.Popen, timeout: float = 120) -> None:
    import urllib.request

    deadline = time.time() + timeout
    while time.time() < deadline:
        if proc.poll() is not None:
            raise AssertionError(f"server exited with {proc.returncode}: "
                                 f"{proc.stderr.read().decode(errors='replace')[-2000:]}")
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/config", timeout=5) as r:
                if r.status == 200:
                    return
        except OSError:
            time.sleep(0.5)
    raise AssertionError("the server did not come up")


def _serve(port: int) -> subprocess.Popen:
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "GRADIO_ANALYTICS_ENABLED": "False"}
    return subprocess.Popen([sys.executable, "dashboard.py", "serve", "--host", "127.0.0.1",
                             "--port", str(port)], cwd=ROOT, env=env, stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE, start_new_session=True)


@pytest.mark.slow
def test_a_killed_server_loses_nothing_downloaded_and_restarts_on_the_same_port(tmp_path):
    from gradio_client import Client

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    proc = _serve(port)
    try:
        _wait_until_serving(port, proc)
        c = Client(f"http://127.0.0.1:{port}/", verbose=False, download_files=str(tmp_path))
        page_analyze(c, ["tiny-gpt2"], "the capital of japan is")
        file, _log = c.predict(api_name="/page_bundle")
        path = Path(file["value"] if isinstance(file, dict) else file)
        data = path.read_bytes()
        # a second request is in flight when the server dies
        job = page_analyze(c, ["tiny-gpt2"], "red ball moon tree red ball moon tree", submit=True)
        time.sleep(0.5)
    finally:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout=30)
    assert path.read_bytes() == data
    with zipfile.ZipFile(io.BytesIO(data)) as z:
        assert z.testzip() is None and z.namelist()[0] == "manifest.json"
        assert json.loads(z.read("manifest.json"))["prompts"] == ["the capital of japan is"]
    with pytest.raises(Exception):  # noqa: B017 - whatever the client raises for a dead server
        job.result(timeout=30)
    proc = _serve(port)  # the same port, straight away
    try:
        _wait_until_serving(port, proc)
        c = Client(f"http://127.0.0.1:{port}/", verbose=False, download_files=str(tmp_path))
        out = page_analyze(c, ["tiny-gpt2"], "the capital of japan is")
        assert len(out) > 5
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(timeout=30)


def test_set_threads_leaves_numpy_blas_on_one_thread_and_tunes_the_allocator():
    import sys

    from threadpoolctl import threadpool_info, threadpool_limits

    from models.loading import keep_freed_memory, set_threads

    with threadpool_limits(None):  # restored afterwards, whatever set_threads sets
        import torch

        before = torch.get_num_threads()
        try:
            assert set_threads(10**6) == 1  # a tiny model: one torch thread
            blas = [lib for lib in threadpool_info() if lib["user_api"] == "blas"]
            assert blas and all(lib["num_threads"] == 1 for lib in blas)
        finally:
            torch.set_num_threads(before)
    assert keep_freed_memory() is sys.platform.startswith("linux")
