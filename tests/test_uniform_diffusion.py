"""Uniform-noise block diffusion (models/uniform_diffusion.py) on a tiny random DiffusionGemma.

The stand-in (tests/standins.py ``build_diffusiongemma``: transformers' own
DiffusionGemmaForBlockDiffusion, 2 layers, hidden 64, vocabulary 1024, canvas of 8 positions,
a Gemma-style tokenizer, a generation_config.json with the library's sampler settings) is
loaded through the project's registry and loader, as a local folder. Random weights: the
model is never confident, so its drafts change from step to step and blocks run every step.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
import torch

from models.common import UserError
from tests import standins
from tests.conftest import ROOT, Calls, have

PROMPT = "Why is the sky blue?"
CANVAS = 8
EOS, PAD = 1, 0  # the stand-in tokenizer's and generation config's ids


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    return standins.build_diffusiongemma(tmp_path_factory.mktemp("dgemma") / "diffusiongemma",
                                         n_layers=2, seed=0, canvas_length=CANVAS)


@pytest.fixture(scope="module")
def loaded(folder):
    from models.loading import MODELS, LoadOptions, load, set_threads
    from models.registry import resolve

    entry = resolve(str(folder), allow_custom=True)
    assert entry.family == "local" and entry.task == "diffusion"
    assert entry.extra["paradigm"] == "uniform"
    out = load(str(folder), LoadOptions(device="cpu", dtype="float32", allow_custom=True))
    set_threads(out.params)  # tiny: one thread
    yield out
    MODELS.clear()


def force(model, tokens: dict[int, int], boost: float = 50.0):
    """A forward hook adding ``boost`` to the logit of ``tokens[i]`` at canvas position i of
    every decoder pass: the model becomes sure of those tokens there."""
    def hook(_module, _args, out):
        bias = torch.zeros_like(out.logits)
        for i, t in tokens.items():
            bias[0, i, t] = boost
        out.logits = out.logits + bias
        return out

    return model.register_forward_hook(hook)


def generate(loaded, length=16, steps=5, seed=0, **kw):
    """The entry every caller uses (CLI, Diffusion tab, compare): it hands the model over."""
    from models.diffusion import diffusion_generate

    kw.setdefault("measure_memory", False)
    return diffusion_generate(loaded, PROMPT, length, steps=steps, seed=seed, **kw)


def reference(loaded, length, steps, seed, **kw):
    """The model's own generate(), seeded the same way: its generated ids."""
    ids = loaded.tokenizer(PROMPT, return_tensors="pt")["input_ids"]
    torch.manual_seed(seed)
    with torch.inference_mode():
        out = loaded.model.generate(ids, max_new_tokens=length, max_denoising_steps=steps, **kw)
    return out.sequences[0, ids.shape[1]:].tolist()


@pytest.fixture(scope="module")
def run(loaded):
    """2 blocks of 8, at most 5 steps each; forward passes of the decoder and the encoder
    counted by hooks (no profiled replay, which would run everything twice)."""
    with Calls(loaded.model) as decoder, Calls(loaded.model.model.encoder) as encoder:
        r = generate(loaded, 16, 5, seed=0)
    return r, decoder.n, encoder.n


def test_the_loader_knows_the_paradigm(loaded):
    assert loaded.paradigm == "uniform"
    assert type(loaded.model).__name__ == "DiffusionGemmaForBlockDiffusion"
    assert loaded.model.config.canvas_length == CANVAS


def test_one_trace_record_per_forward_pass(run):
    r, decoder_calls, encoder_calls = run
    assert r.paradigm == "diffusion" and r.noise == "uniform" and r.strategy == "entropy_bound"
    assert r.positions == 16 and r.block_length == CANVAS and r.length == 16
    # random weights never reach the confidence threshold: every block runs all 5 steps
    assert decoder_calls == r.nfe == r.steps == len(r.trace) == 10
    assert encoder_calls == r.encoder_passes == 2  # the prompt, then block 0's tokens
    assert [rec.step for rec in r.trace] == list(range(1, 11))
    assert [rec.block for rec in r.trace] == [0] * 5 + [1] * 5
    assert r.tokens_per_forward_pass == r.generated_tokens / 10


def test_final_tokens_are_the_last_steps_tokens(loaded, run):
    from models.common import token_texts
    from models.sampling import content_length, decode_content, end_ids
    from models.trace import PENDING

    r, _, _ = run
    assert len(r.token_ids) == 16
    assert r.tokens == r.trace[-1].tokens == token_texts(loaded.tokenizer, r.token_ids)
    ends = end_ids(loaded)
    assert r.generated_tokens == content_length(r.token_ids, ends)
    assert r.text == decode_content(loaded.tokenizer, r.token_ids, ends)
    # a block not started yet is pending; a finished block keeps its last step's tokens
    for rec in r.trace[:5]:
        assert rec.tokens[8:] == [PENDING] * 8 and PENDING not in rec.tokens[:8]
    for rec in r.trace[5:]:
        assert rec.tokens[:8] == r.trace[4].tokens[:8]


def test_accepted_positions_changed_positions_and_revisions(run):
    r, _, _ = run
    accepted_at: dict[int, int] = {}
    revisions = 0
    for i, rec in enumerate(r.trace):
        block = range(rec.block * CANVAS, (rec.block + 1) * CANVAS)
        # the entropy bound accepts at least the lowest-entropy position, only in the block
        assert rec.committed and all(c["position"] in block for c in rec.committed)
        assert all(0 < c["confidence"] <= 1 for c in rec.committed)
        assert sorted(c["position"] for c in rec.candidates) == list(block)
        before = r.trace[i - 1].tokens if i else [r.mask_token] * 16
        assert rec.changed == [p for p in range(16) if rec.tokens[p] != before[p]]
        if i and rec.block != r.trace[i - 1].block:
            accepted_at = {}  # acceptances count within a block
        for rv in rec.revised:
            p = rv["position"]
            # a token the sampler had accepted at an earlier step changed in this one
            assert p in rec.changed and rv["accepted_step"] == accepted_at[p] < rec.step
            assert (rv["previous"], rv["token"]) == (before[p], rec.tokens[p])
            assert rv["token_id"] != rv["previous_id"]
            revisions += 1
        assert {rv["position"] for rv in rec.revised} == {
            p for p in rec.changed if p in accepted_at and i and rec.block == r.trace[i - 1].block}
        for c in rec.committed:
            accepted_at[c["position"]] = rec.step
    assert revisions >= 3  # seed 0: accepted tokens do change later
    first = next(rec for rec in r.trace if rec.revised)
    rv = first.revised[0]
    assert f"#{rv['position']} {rv['previous']!r} → {rv['token']!r}" in first.note


def test_acceptance_follows_the_entropy_bound(loaded):
    """With every token's probability recorded (candidates = the whole vocabulary), each step's
    accepted positions are the lowest-entropy ones whose entropies, less the largest of them,
    sum to at most the bound (0.1 nats), and each confidence is its token's probability."""
    import math

    r = generate(loaded, 8, 4, seed=2, n_candidates=1024)
    assert r.sampler["entropy_bound"] == 0.1
    for rec in r.trace:
        dist = {c["position"]: {t["token"]: t["probability"] for t in c["top"]}
                for c in rec.candidates}
        assert all(len(d) == 1024 for d in dist.values())  # token texts are distinct here
        ent = {p: -sum(q * math.log(q) for q in d.values() if q > 0) for p, d in dist.items()}
        order = sorted(ent, key=ent.get)
        total, bound = 0.0, []
        for p in order:
            total += ent[p]
            if total - ent[p] <= 0.1:
                bound.append(p)
        assert sorted(c["position"] for c in rec.committed) == sorted(bound)
        for c in rec.committed:
            assert c["confidence"] == pytest.approx(dist[c["position"]][c["token"]], rel=1e-6)


def test_same_tokens_as_the_models_own_generate(loaded, run):
    r, _, _ = run
    assert r.token_ids == reference(loaded, 16, 5, 0)
    other = generate(loaded, 16, 3, seed=3)
    assert other.token_ids == reference(loaded, 16, 3, 3) != r.token_ids
    # a length that is not a whole number of blocks is rounded up, as generate() does
    short = generate(loaded, 5, 2, seed=1)
    assert short.positions == 8 and short.length == 5
    assert short.token_ids == reference(loaded, 5, 2, 1)


def test_adaptive_stop_when_the_draft_is_stable_and_confident(loaded):
    sure = {i: 300 + i for i in range(CANVAS)}
    handle = force(loaded.model, sure)
    try:
        with Calls(loaded.model) as calls:
            r = generate(loaded, 16, 10)
    finally:
        handle.remove()
    # step 1 has no earlier draft to be stable against; step 2 repeats it, entropy ~ 0: stop
    assert calls.n == r.nfe == len(r.trace) == 4
    assert [rec.block for rec in r.trace] == [0, 0, 1, 1]
    for rec in (r.trace[1], r.trace[3]):
        assert f"block {rec.block} stopped adaptively after 2 steps" in rec.note
    assert r.token_ids == [300 + i for i in range(CANVAS)] * 2
    assert not any(rec.revised for rec in r.trace)


def test_an_end_of_sequence_token_ends_the_run_after_its_block(loaded):
    from models.trace import PENDING

    handle = force(loaded.model, {3: EOS})
    try:
        r = generate(loaded, 24, 4)
        with Calls(loaded.model.model.encoder) as encoder:
            generate(loaded, 24, 4)
    finally:
        handle.remove()
    assert encoder.n == r.encoder_passes == 1 and r.nfe == 4 and r.positions == 24
    assert r.token_ids[3] == EOS and r.token_ids[4:] == [PAD] * 4 and len(r.token_ids) == 8
    assert r.generated_tokens == 3 and r.trace[-1].end == 3
    assert r.trace[-1].tokens[:8] == r.tokens[:8] and r.tokens[8:] == [PENDING] * 16
    assert r.stop_note == ("the end-of-sequence token at position 3 ended the run after block 0: "
                           "2 later blocks never run")
    assert r.stop_note in r.trace[-1].note


def test_decode_heatmap_and_viewer_build_from_the_trace(run, tmp_path):
    import matplotlib.pyplot as plt

    from models.trace import region_at
    from reports.diffusion_export import export_zip, trace_html
    from reports.figures.diffusion import decode_heatmap

    r, _, _ = run
    fig = decode_heatmap(r)
    assert fig.axes
    plt.close(fig)
    html = trace_html(r)
    data = json.loads(html.split('id="data">', 1)[1].split("</script>", 1)[0])
    first = next(i for i, rec in enumerate(r.trace) if rec.revised)
    assert data["noise"] == "uniform" and data["trace"][first]["revised"]
    rv = r.trace[first].revised[0]
    assert f"#{rv['position']} {rv['previous']!r} → {rv['token']!r}" in \
        data["trace"][first]["note"]
    assert "accepted earlier, changed now: #" in html
    zipped = export_zip(r, tmp_path / "run.zip")
    assert zipped.stat().st_size > 0
    # the token boxes: accepted in the step = new, finished block = old, the rest drafts
    cells = region_at(r, 7)
    accepted = {c["position"] for c in r.trace[6].committed}
    assert [c["state"] for c in cells[:8]] == ["old"] * 8
    assert {p for p, c in enumerate(cells) if c["state"] == "new"} == accepted
    assert all(c["state"] == "masked" for p, c in enumerate(cells[8:], 8) if p not in accepted)
    # the viewer and the GIF frames colour as the run view: drafts are not committed tokens
    from reports.diffusion_export import all_frames, settled_positions

    assert data["settled"][6] == sorted(p for p, c in enumerate(region_at(r, 7))
                                        if c["state"] != "masked")
    frame = all_frames(r)[7]
    assert frame.settled == settled_positions(r, 7) and frame.settled != set(range(len(cells)))
    assert [c["revised"] for c in cells] == [p in {x["position"] for x in r.trace[6].revised}
                                             for p in range(16)]


def test_masked_only_settings_and_modes_are_refused(loaded):
    from models.diffusion import remask_generate
    from models.interactive import Stepper

    for kw, words in ((dict(cache="dual"), "Use cache none"),
                      (dict(block_length=4), "set it to 8"),
                      (dict(strategy="random"), "lowest-entropy"),
                      (dict(threshold=0.9), "Leave the threshold empty"),
                      (dict(temperature=0.7), "temperature schedule"),
                      (dict(top_k=5), "top-k"),
                      (dict(cfg_scale=1.0), "cfg_scale 0")):
        with pytest.raises(UserError, match=words):
            generate(loaded, 8, 2, **kw)
    for call in (lambda: Stepper(loaded, PROMPT, 8),
                 lambda: remask_generate(loaded, PROMPT, 8, 2)):
        with pytest.raises(UserError, match="uniform-noise block diffusion"):
            call()


def test_cli_generate_writes_the_trace(folder, tmp_path):
    out = tmp_path / "gen.json"
    env = dict(os.environ, OMP_NUM_THREADS="1", MKL_NUM_THREADS="1", HF_HUB_OFFLINE="1")
    p = subprocess.run([sys.executable, "dashboard.py", "generate", "--model", str(folder),
                        "--prompt", PROMPT, "--length", "16", "--steps", "3", "--device", "cpu",
                        "--json", str(out)], cwd=ROOT, env=env, capture_output=True, text=True,
                       timeout=120)
    assert p.returncode == 0, p.stderr
    assert "encoder passes wrote the KV cache" in p.stdout
    js = json.loads(out.read_text())
    assert js["paradigm"] == "diffusion" and js["noise"] == "uniform"
    assert js["nfe"] == js["steps"] == len(js["trace"]) == 6 and js["encoder_passes"] == 2
    assert js["positions"] == 16 and js["block_length"] == CANVAS and js["cache"] == "none"
    assert js["peak_memory_mb"] > 0  # the profiled replay repeated the run exactly
    assert js["sampler"]["max_denoising_steps"] == 3 and js["sampler"]["entropy_bound"] == 0.1
    for rec in js["trace"]:
        assert {"committed", "tokens", "changed", "revised"} <= set(rec)
        assert len(rec["tokens"]) == 16


@pytest.mark.parametrize("flags, words", [
    (["--cache", "dual"], "Use cache none"),
    (["--block-length", "4"], "canvas_length"),
    (["--schedule", "linear"], "--schedule"),
])
def test_cli_impossible_settings_exit_2_with_one_line(folder, capsys, flags, words):
    import dashboard

    rc = dashboard.main(["generate", "--model", str(folder), "--prompt", PROMPT, "--length", "8",
                         "--device", "cpu", *flags])
    err = capsys.readouterr().err.strip()
    assert rc == 2 and len(err.splitlines()) == 1 and err.startswith("error: ")
    assert words in err


@pytest.mark.skipif(not have("tiny-gpt2"), reason="embedded tiny-gpt2 missing")
def test_runner_and_compare_route_to_the_uniform_sampler(loaded, folder):
    from models.compare import compare
    from models.loading import load
    from ui.app import AppConfig, make_context
    from ui.diffusion_runner import DiffusionRunner, diffusion_settings
    from ui.state import Session

    ctx = make_context(AppConfig(device="cpu", dtype="float32"), models=[str(folder)])
    s = diffusion_settings(ctx, str(folder), PROMPT, 8, 2, 0, "low_confidence", 0, 0, 0)
    session = Session()  # its folder (the exports) lives as long as the session
    result, exports = DiffusionRunner().generate(ctx, session, s)
    assert result.noise == "uniform" and result.nfe == 2 and exports.page.is_file()
    assert session.log[-1]["action"] == "diffusion generate"
    bad = diffusion_settings(ctx, str(folder), PROMPT, 8, 2, 0, "low_confidence", 0, 0, 0,
                             mode="remask")
    with pytest.raises(UserError, match="uniform-noise"):
        bad.run(loaded)
    out = compare(load("tiny-gpt2"), loaded, [(PROMPT, None)], length=8, steps=2,
                  measure_memory=False)
    d = out["diffusion"]
    assert d["runs"] == 1 and d["mean_nfe"] == 2 and d["agreement"] is None
    with pytest.raises(UserError, match="Use cache none"):
        compare(load("tiny-gpt2"), loaded, [(PROMPT, None)], length=8, cache="prefix",
                block_length=8, warmup=False)


def test_the_trace_json_of_masked_runs_is_unchanged():
    """The fields added for uniform noise stay out of a masked run's JSON."""
    from models.trace import GenerationResult, StepRecord

    rec = StepRecord(1, 0, [], ["a"])
    assert "changed" not in rec.to_json() and "revised" not in rec.to_json()
    res = GenerationResult("m", "diffusion", "p", 1, 1, 1, "low_confidence", None, 1, 1.0, 1.0,
                           None, "a", [rec], [5], 1, 1)
    assert not {"noise", "encoder_passes", "sampler"} & set(res.to_json())
