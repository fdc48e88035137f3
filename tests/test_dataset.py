"""Dataset mode's driver: reading sources, batching with padding, resume, torchrun.

The accumulator's own exactness is tests/test_accumulate.py's; here the numbers come from real
forward passes of the embedded models. A float32 model's hidden states differ between a text
run alone and the same text in a padded batch by BLAS summation order (~1e-7), so checks at
1e-9 across batchings use a float64 copy of tiny-gpt2 with a float64 softmax
(tests/dist_dataset_worker.float64_copy / float64_softmax: agreement ~1e-15 there).
"""

from __future__ import annotations

import copy
import dataclasses
import json
import os
import signal
import subprocess
import sys
import threading
import time
import tracemalloc
from pathlib import Path

import numpy as np
import pytest

from analysis import dataset as D
from analysis import datasets_builtin as B
from analysis import metrics as M
from analysis.capture import capture
from models.errors import UserError
from tests.dist_dataset_worker import SMALL, float64_copy, float64_softmax, result_dict

ROOT = Path(__file__).resolve().parents[1]
WORKER = Path(__file__).with_name("dist_dataset_worker.py")
CORPUS = [t for _, t in D.read_texts("corpus", limit=60)]


def _close(a, b, rel: float = 1e-9, abs_: float = 1e-12, path: str = "") -> None:
    """JSON-like values equal: floats to `rel` (or `abs_` near 0), everything else exactly."""
    if isinstance(a, dict):
        assert a.keys() == b.keys(), path
        for k in a:
            _close(a[k], b[k], rel, abs_, f"{path}.{k}")
    elif isinstance(a, (list, tuple)):
        assert len(a) == len(b), path
        for i, (x, y) in enumerate(zip(a, b, strict=True)):
            _close(x, y, rel, abs_, f"{path}[{i}]")
    elif isinstance(a, float) and isinstance(b, float):
        assert b == pytest.approx(a, rel=rel, abs=abs_), path
    else:
        assert a == b, path


def _write(path: Path, text: str | bytes) -> Path:
    (path.write_bytes if isinstance(text, bytes) else path.write_text)(text)
    return path


def _texts(src, **kw) -> list[tuple[int, str]]:
    return list(D.read_texts(str(src), **kw))


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """As the command line runs the tiny models (models.loading.set_threads): one thread (two
    threads on this shared 2-core box make every small kernel wait; ~10x slower). Restored."""
    import torch
    from threadpoolctl import threadpool_limits

    old = torch.get_num_threads()
    torch.set_num_threads(1)
    with threadpool_limits(1):
        yield
    torch.set_num_threads(old)


@pytest.fixture(scope="module")
def gpt2_64(gpt2):
    with float64_softmax():
        yield float64_copy(gpt2)


# --- readers --------------------------------------------------------------------------------

def test_txt_ids_are_line_numbers_blank_lines_skipped_crlf_and_bom(tmp_path):
    f = _write(tmp_path / "a.txt", b"\xef\xbb\xbffirst\r\n\n   \nsecond line\nthird")
    assert _texts(f) == [(0, "first"), (3, "second line"), (4, "third")]
    assert _texts(f, limit=2) == [(0, "first"), (3, "second line")]
    src = D.open_source(str(f))
    assert src.total == 3 and src.fingerprint.startswith("txt:a.txt:size=")


def test_jsonl_field_default_column_null_and_strings(tmp_path):
    rows = [{"text": "a b", "n": 1}, None, {"text": None}, "", {"text": "c d"}]
    f = _write(tmp_path / "d.jsonl", "\n".join("" if r is None else json.dumps(r) for r in rows))
    assert _texts(f) == [(0, "a b"), (4, "c d")]
    g = _write(tmp_path / "e.jsonl", '{"body": "x y"}\n{"body": "z"}\n')
    assert _texts(g) == [(0, "x y"), (1, "z")]  # the only field
    h = _write(tmp_path / "s.jsonl", '"plain string"\n{"title": "t", "body": "b"}\n')
    assert _texts(h, column="body") == [(0, "plain string"), (1, "b")]


def test_json_list_of_objects_or_strings(tmp_path):
    f = _write(tmp_path / "a.json", json.dumps([{"text": "one"}, {"text": " "}, {"text": "three"}]))
    assert _texts(f) == [(0, "one"), (2, "three")]
    g = _write(tmp_path / "b.json", json.dumps(["x", "y"]))
    assert _texts(g) == [(0, "x"), (1, "y")]
    with pytest.raises(UserError, match="expected a list"):
        _texts(_write(tmp_path / "c.json", '{"text": "x"}'))


def test_csv_and_tsv_columns_quoted_newlines_and_only_column(tmp_path):
    f = _write(tmp_path / "a.csv", 'id,text\n1,"hello, world"\n2,"two\nlines"\n3,\n4,last\n')
    assert _texts(f) == [(0, "hello, world"), (1, "two\nlines"), (3, "last")]
    assert _texts(f, column="id") == [(0, "1"), (1, "2"), (2, "3"), (3, "4")]
    g = _write(tmp_path / "b.tsv", "sentence\nfirst one\nsecond one\n")
    assert _texts(g) == [(0, "first one"), (1, "second one")]


def test_datasets_folder_splits_and_columns(tmp_path):
    datasets = pytest.importorskip("datasets")
    dd = datasets.DatasetDict({"train": datasets.Dataset.from_dict({"text": ["a", "", "c"], "n": [1, 2, 3]}),
                               "test": datasets.Dataset.from_dict({"text": ["t"], "n": [0]})})
    dd.save_to_disk(str(tmp_path / "dd"))
    assert _texts(tmp_path / "dd") == [(0, "a"), (2, "c")]
    assert _texts(tmp_path / "dd", split="test") == [(0, "t")]
    with pytest.raises(UserError, match="no split 'valid'.*train, test"):
        _texts(tmp_path / "dd", split="valid")
    with pytest.raises(UserError, match="no column 'body'.*text, n"):
        _texts(tmp_path / "dd", column="body")
    with pytest.raises(UserError, match="field 'n' is a int"):
        _texts(tmp_path / "dd", column="n")


def test_bundled_datasets_sizes_and_licence():
    corpus = _texts("corpus")
    assert len(corpus) == B.CORPUS_TEXTS == 5000
    assert [t for _, t in corpus] == B.corpus_texts()  # the file is the generator's output
    docs = _texts("stdlib-docstrings")
    assert 2000 <= len(docs) <= 4000 and [i for i, _ in docs] == list(range(len(docs)))
    words = [len(t.split()) for _, t in docs]
    assert min(words) >= B.MIN_WORDS and max(words) <= B.MAX_WORDS
    assert len({t.lower() for _, t in docs}) == len(docs)  # deduplicated
    for name in B.NAMES:
        assert B.FILES[name].stat().st_size < 2_000_000
    header = B.FILES["stdlib-docstrings"].read_text().splitlines()[:3]
    assert any("PSF-2.0" in h for h in header) and any("Python 3." in h for h in header)
    assert D.open_source("stdlib-docstrings").total == len(docs)


def test_bundled_dataset_is_built_on_first_use(tmp_path, monkeypatch):
    monkeypatch.setitem(B.FILES, "corpus", tmp_path / "sub" / "corpus_texts.txt")
    assert B.count("corpus") == B.CORPUS_TEXTS  # built, then read
    assert B.FILES["corpus"].read_text().startswith("# corpus:")


# --- bad input: one clear UserError each ----------------------------------------------------

@pytest.mark.parametrize("name, content, match", [
    ("empty.txt", b"", "is empty"),
    ("blank.txt", b"\n  \n\t\n", "Every text in .* is empty"),
    ("blank.jsonl", b'{"text": ""}\n{"text": null}\n', "Every text in .* is empty"),
    ("binary.txt", b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR", "binary file"),
    ("latin1.txt", b"fine\ncaf\xe9 au lait\n", "line 2 .* not valid UTF-8"),
    ("cols.csv", b"title,body\nx,y\n", "no column 'text' .*title, body"),
    ("cols.jsonl", b'{"title": "x", "body": "y"}\n', "no column 'text' .*title, body"),
    ("nofield.jsonl", b'{"text": "ok"}\n{"body": "y"}\n', "line 2 has no field 'text' .*body"),
    ("number.jsonl", b'{"text": 3}\n', "is a int, not text"),
    ("broken.jsonl", b'{"text": "ok"\n', "line 1 is not JSON"),
    ("data.parquet", b"PAR1", "unknown dataset format"),
])
def test_bad_files(tmp_path, name, content, match):
    f = _write(tmp_path / name, content)
    with pytest.raises(UserError, match=match):
        _texts(f)


def test_missing_file_and_named_column_absent(tmp_path):
    with pytest.raises(UserError, match="No such file"):
        _texts(tmp_path / "nope.txt")
    f = _write(tmp_path / "a.csv", "text,label\nx,1\n")
    with pytest.raises(UserError, match="no column 'body'; its columns are: text, label"):
        _texts(f, column="body")


def test_offline_uncached_hub_id_says_so(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    try:
        import datasets  # noqa: F401
    except ImportError:
        with pytest.raises(UserError, match="needs the HuggingFace `datasets` package"):
            _texts("someone/not-a-cached-dataset")
        return
    with pytest.raises(UserError, match="not in the local HuggingFace cache and HF_HUB_OFFLINE is set") as e:
        _texts("someone/not-a-cached-dataset")
    assert "\n" not in str(e.value)


def test_million_line_file_with_limit_is_fast_and_streamed(tmp_path):
    f = tmp_path / "big.txt"
    with f.open("w") as fh:
        for i in range(0, 1_000_000, 1000):
            fh.write("".join(f"text number {j} of the big file\n" for j in range(i, i + 1000)))
    t0 = time.perf_counter()
    tracemalloc.start()
    got = _texts(f, limit=100)
    src = D.open_source(str(f), limit=100)  # what analyze_dataset does: counts up to the limit
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    assert got[-1] == (99, "text number 99 of the big file") and len(got) == 100 and src.total == 100
    assert time.perf_counter() - t0 < 5.0 and peak < 4 * 2**20  # a 35 MB file, never held


# --- the driver on real models --------------------------------------------------------------

def _run(loaded, source="corpus", **kw):
    return D.analyze_dataset(loaded, source, **{**SMALL, "limit": 40, "batch_size": 7, **kw})


def test_padding_never_counts_batch_sizes_1_7_16_agree(gpt2_64):
    """The same 32 texts alone (no padding), 7 and 16 per batch (padded to the longest):
    every number agrees to 1e-9 and the token sample is the same rows."""
    with float64_softmax():
        runs = {b: result_dict(_run(gpt2_64, limit=32, batch_size=b)) for b in (1, 7, 16)}
    for b in (7, 16):
        assert runs[b]["sample_keys"] == runs[1]["sample_keys"]
        _close(runs[1], runs[b])


def test_token_sample_is_the_same_rows_for_any_batch_size_float32(gpt2):
    keys = [_run(gpt2, batch_size=b).accumulator.sample.ordered()[0].tolist() for b in (1, 16)]
    assert keys[0] == keys[1] and len(keys[0]) == SMALL["sample_tokens"]


@pytest.mark.parametrize("batch_size, rel", [(1, 1e-12), (16, 1e-8)])
def test_all_token_effective_rank_equals_single_prompt_formula_on_captured_rows(gpt2, batch_size, rel):
    """50 texts of tiny-gpt2: the streamed all-token effective rank equals metrics.effective_rank
    of the rows analysis.capture gives per text, stacked (layer L = block L's output). One text
    per batch runs the very same forward passes (1e-12); 16 per batch in float32 differ by
    summation order in the model (measured 5e-10 here; exact in float64, see above)."""
    r = _run(gpt2, limit=50, batch_size=batch_size)
    traces = [capture(gpt2, t, logits=False) for t in CORPUS[:50]]
    assert r.tokens == sum(t.n_tokens for t in traces)
    for layer, s in enumerate(r.summary.layers):
        rows = np.concatenate([t.hidden[layer] for t in traces])
        assert s.all_tokens["effective_rank"] == pytest.approx(M.effective_rank(rows), rel=rel)
        assert s.all_tokens["participation_ratio"] == pytest.approx(M.participation_ratio(rows), rel=rel)


def test_max_tokens_cuts_and_counts(bert):
    r = _run(bert, max_tokens=8)
    lengths = [len(bert.tokenizer(t)["input_ids"]) for t in CORPUS[:40]]
    assert r.truncated_texts == sum(n > 8 for n in lengths) > 0
    assert r.tokens == sum(min(n, 8) for n in lengths)
    assert any("had more than 8 tokens (--max-tokens)" in n for n in r.notices)
    assert r.settings["max_tokens"] == 8
    assert _run(bert, max_tokens=10_000).settings["max_tokens"] == 128  # the model's context


def test_skip_special_drops_exactly_cls_and_sep(bert, gpt2):
    full, skipped = _run(bert), _run(bert, skip_special=True)
    assert skipped.tokens == full.tokens - 2 * 40
    assert skipped.summary.layers[1].all_tokens != full.summary.layers[1].all_tokens
    g = _run(gpt2, skip_special=True)
    assert g.tokens == _run(gpt2).tokens  # GPT-2 adds no BOS
    assert any("adds no special tokens" in n for n in g.notices)


def test_result_json_has_the_design_keys_and_progress_reports(gpt2):
    calls = []
    r = _run(gpt2, limit=30, batch_size=8, progress=lambda *a: calls.append(a))
    j = r.to_json()
    assert list(j)[:8] == ["texts", "tokens", "skipped_texts", "seconds", "tokens_per_second",
                           "sample_tokens", "processes", "layers"]
    assert j["texts"] == 30 and j["processes"] == 1 and len(j["layers"]) == gpt2.n_layers + 1
    json.dumps(j, allow_nan=False)
    assert [c[0] for c in calls] == [8, 16, 24, 30] and {c[1] for c in calls} == {30}
    assert calls[-1][3] == 0 and all(c[2] > 0 for c in calls)


def test_model_on_its_own_eager_attention_gives_the_same_numbers(gpt2):
    """The fallback (output_attentions, all layers at once): same attention statistics and
    hidden-state numbers, except layer L, which it can only read after the final norm."""
    model = copy.deepcopy(gpt2.model)
    model.set_attn_implementation("eager")
    eager = dataclasses.replace(gpt2, model=model, attention="eager", lock=threading.RLock(), memo={})
    a, b = _run(gpt2), _run(eager)
    assert any("own eager attention" in n for n in b.notices)
    assert any("final (normed)" in n for n in b.notices)
    for layer in range(gpt2.n_layers):
        _close(a.summary.layers[layer].all_tokens, b.summary.layers[layer].all_tokens, rel=1e-5, abs_=1e-7)
    assert (b.summary.layers[-1].all_tokens["attention_entropy"]
            == pytest.approx(a.summary.layers[-1].all_tokens["attention_entropy"], rel=1e-5))


# --- resume and cancel ----------------------------------------------------------------------

class _Stop(Exception):
    pass


def _stop_after(n: int):
    seen = []

    def progress(*_):
        seen.append(1)
        if len(seen) == n:
            raise _Stop
    return progress


def test_resume_after_a_crash_equals_the_uninterrupted_run_exactly(gpt2, tmp_path):
    want = result_dict(_run(gpt2, batch_size=5))
    with pytest.raises(_Stop):  # crashes after batch 5; the checkpoint holds batches 1-4
        _run(gpt2, batch_size=5, resume=tmp_path, checkpoint_every=2, progress=_stop_after(5))
    saved = json.loads((tmp_path / "progress.json").read_text())
    assert saved["position"]["fed"] == 20 and len(saved["position"]["done"]) == 20
    r = _run(gpt2, batch_size=5, resume=tmp_path, checkpoint_every=2)
    assert r.resumed_texts == 20 and any("Resumed: 20 texts" in n for n in r.notices)
    _close(want, result_dict(r), rel=0.0, abs_=0.0)
    again = _run(gpt2, batch_size=5, resume=tmp_path)  # finished: only finalises
    assert again.resumed_texts == 40 and again.tokens_per_second == 0
    _close(want, result_dict(again), rel=0.0, abs_=0.0)


def test_resume_with_another_batch_size_skips_exactly_the_finished_texts(gpt2, tmp_path):
    """Batches inside a window of texts go by length, so a checkpoint names the finished texts
    of its window; a resumed run with other windows (another batch size) skips just those."""
    with pytest.raises(_Stop):
        _run(gpt2, batch_size=5, resume=tmp_path, checkpoint_every=1, progress=_stop_after(5))
    r = _run(gpt2, batch_size=3, resume=tmp_path)
    assert r.resumed_texts == 25 and r.summary.text_ids.tolist() == list(range(40))
    # float32 forward passes of other batches: equal to rounding
    _close(result_dict(_run(gpt2, batch_size=5))["json"], result_dict(r)["json"], rel=1e-4, abs_=1e-6)


def test_resume_folder_of_another_model_dataset_or_setting_is_refused(gpt2, bert, tmp_path):
    _run(gpt2, limit=10, resume=tmp_path)
    for loaded, kw, match in ((bert, {}, "model 'tiny-gpt2' \\(this run: 'tiny-bert'\\)"),
                              (gpt2, {"source": "stdlib-docstrings"}, "dataset 'corpus'"),
                              (gpt2, {"max_tokens": 16}, "max_tokens=128 \\(this run: 16\\)"),
                              (gpt2, {"sample_tokens": 100}, "sample_tokens=300")):
        with pytest.raises(UserError, match=match + ".*another --resume folder"):
            _run(loaded, limit=10, resume=tmp_path, **kw)
    other = tmp_path / "two"
    other.mkdir()
    (other / "accumulator.rank0of2.npz").write_bytes(b"")
    with pytest.raises(UserError, match="another number of processes"):
        _run(gpt2, limit=10, resume=other)
    with pytest.raises(UserError, match="is a file; give a folder"):
        _run(gpt2, limit=10, resume=_write(tmp_path / "file", "x"))
    (other / "accumulator.rank0of2.npz").unlink()
    (other / "accumulator.npz").write_bytes(b"not an npz")
    with pytest.raises(UserError, match="is not a dataset checkpoint"):
        _run(gpt2, limit=10, resume=other)


def test_cancel_stops_between_batches_and_writes_nothing_else(gpt2, tmp_path):
    asked = []

    def cancel():
        asked.append(1)
        return len(asked) > 2
    with pytest.raises(D.DatasetCancelled) as e:
        _run(gpt2, batch_size=5, cancel=cancel)
    assert e.value.texts == 10 and e.value.checkpoint is None
    asked.clear()
    with pytest.raises(D.DatasetCancelled):
        _run(gpt2, batch_size=5, cancel=cancel, resume=tmp_path / "r", checkpoint_every=100)
    assert sorted(p.name for p in (tmp_path / "r").iterdir()) == ["accumulator.npz", "progress.json"]
    r = _run(gpt2, batch_size=5, resume=tmp_path / "r")  # a cancelled run resumes
    _close(result_dict(_run(gpt2, batch_size=5)), result_dict(r), rel=0.0, abs_=0.0)


_KILL_SCRIPT = """
import sys, time
sys.path.insert(0, {root!r})
import torch
torch.set_num_threads(1)
from models.loading import load
from analysis.dataset import analyze_dataset
from tests.dist_dataset_worker import SMALL
analyze_dataset(load("tiny-gpt2"), "corpus", limit=40, batch_size=4, resume={folder!r}, checkpoint_every=1,
                progress=lambda *a: time.sleep(0.3), **SMALL)
"""


@pytest.mark.slow
def test_resume_after_sigkill_equals_the_uninterrupted_run(gpt2, tmp_path):
    folder = tmp_path / "ck"
    script = _KILL_SCRIPT.format(root=str(ROOT), folder=str(folder))
    proc = subprocess.Popen([sys.executable, "-c", script], env={**os.environ, "OMP_NUM_THREADS": "1"})
    try:
        deadline = time.time() + 120
        while time.time() < deadline and proc.poll() is None:
            p = folder / "progress.json"
            if p.is_file() and json.loads(p.read_text())["position"]["fed"] >= 12:
                break
            time.sleep(0.05)
        proc.send_signal(signal.SIGKILL)
    finally:
        proc.wait(timeout=30)
    fed = json.loads((folder / "progress.json").read_text())["position"]["fed"]
    assert 12 <= fed < 40 and proc.returncode == -signal.SIGKILL
    r = _run(gpt2, batch_size=4, resume=folder, checkpoint_every=1)
    assert r.resumed_texts >= 12
    _close(result_dict(_run(gpt2, batch_size=4)), result_dict(r), rel=0.0, abs_=0.0)


# --- torchrun -------------------------------------------------------------------------------

def _torchrun(tmp_path, *args, timeout=180):
    from tests.conftest import free_port

    out = tmp_path / "dist.json"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", "2", "--master-addr",
           "127.0.0.1", "--master-port", str(free_port()), str(WORKER), "--out", str(out), *args]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=env, cwd=ROOT)
    return proc, out, time.perf_counter() - t0


@pytest.mark.slow
def test_two_torchrun_processes_equal_one_process(gpt2_64, tmp_path):
    proc, out, _ = _torchrun(tmp_path, "--limit", "40", "--batch-size", "6")
    assert proc.returncode == 0, proc.stderr[-3000:]
    got = json.loads(out.read_text())
    assert got.pop("processes") == 2
    with float64_softmax():
        want = result_dict(_run(gpt2_64, limit=40, batch_size=6))
    assert got["sample_keys"] == want["sample_keys"] and got["text_ids"] == list(range(40))
    _close(json.loads(json.dumps(want)), got)


@pytest.mark.slow
def test_one_failing_process_stops_all_with_a_clear_error(tmp_path):
    proc, out, seconds = _torchrun(tmp_path, "--fail-rank", "1")
    assert proc.returncode != 0 and not out.exists()
    assert "Process 1 of 2 failed, so this one stopped too: RuntimeError: injected failure" in proc.stderr
    assert seconds < 120


@pytest.mark.slow
def test_a_stuck_process_times_out_instead_of_hanging(tmp_path):
    proc, out, seconds = _torchrun(tmp_path, "--hang-rank", "1", "--timeout", "8")
    assert proc.returncode != 0 and not out.exists()
    assert "Not every process reported back within the timeout (one is stuck or died" in proc.stderr
    assert seconds < 150, seconds
