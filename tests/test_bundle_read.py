"""reports/bundle_read.py: a saved bundle opened back into an Analysis, without any model."""

import json
import zipfile
from pathlib import Path

import numpy as np
import pytest

from models.common import UserError
from reports import bundle as bundle_mod
from reports import figures as figs
from reports import pdf as pdf_mod
from reports.bundle_read import open_bundle
from tests.test_reports import _fake_analysis


@pytest.fixture
def quick_bundle(monkeypatch):
    """write_bundle without drawing (figures, GIF and PDF are stubs): what re-opening reads is
    the CSVs, the JSON files and the arrays."""
    def no_pngs(analysis, folder, dpi=110):
        Path(folder).mkdir(parents=True, exist_ok=True)
        return {}

    def tiny_gif(result, path, kind="attention", **kw):
        Path(path).write_bytes(b"GIF89a")
        return Path(path)

    def no_pdf(analysis, path, **kw):
        Path(path).write_bytes(b"%PDF-1.4\n")
        return Path(path)

    monkeypatch.setattr(figs, "render_pngs", no_pngs)
    monkeypatch.setattr(figs, "layer_transition_gif", tiny_gif)
    monkeypatch.setattr(pdf_mod, "write_pdf", no_pdf)

    def write(analysis, path):
        return bundle_mod.write_bundle(analysis, path)

    return write


def test_reopened_bundle_has_the_same_numbers(quick_bundle, tmp_path):
    a = _fake_analysis()
    a.settings = {"chat_template": False, "ablation": False}
    path = quick_bundle(a, tmp_path / "saved.zip")
    b = open_bundle(path, tmp_path / "open")
    r, s = a.results[0], b.results[0]
    assert b.prompts == a.prompts and b.created == a.created
    assert b.settings["source"] == "bundle" and b.settings["bundle"] == "saved.zip"
    assert s.name == r.name and s.trace.tokens == r.trace.tokens and s.trace.causal
    np.testing.assert_array_equal(s.trace.attentions, r.trace.attentions)
    np.testing.assert_array_equal(s.trace.hidden, r.trace.hidden)
    for name in s.layers.names():  # the CSV holds full precision (repr of each float)
        np.testing.assert_array_equal(getattr(s.layers, name), getattr(r.layers, name))
    for name in ("attention_entropy", "previous_token_score", "first_token_score", "self_score",
                 "induction_score", "attribution"):
        np.testing.assert_array_equal(getattr(s.heads, name), getattr(r.heads, name))
    np.testing.assert_array_equal(s.heads.cluster, r.heads.cluster)
    assert (s.heads.role == r.heads.role).all()
    # recomputed from the saved attention by the analysis's own functions
    np.testing.assert_allclose(s.heads.mean_distance, r.heads.mean_distance)
    from analysis.attention import shared_projection

    np.testing.assert_allclose(s.hidden_projection, shared_projection(r.trace.hidden))
    assert s.heads.projection.shape == (r.trace.n_layers * r.trace.n_heads, 2)
    # the prediction and its rollout; no token ids, gradients or lens in a plain bundle
    assert s.predictions.top[0].token == "tokyo" and s.predictions.top[0].token_id == 7
    assert s.attribution.position == r.trace.n_tokens - 1
    from analysis.attribution import rollout_row

    np.testing.assert_allclose(s.attribution.rollout, rollout_row(r.trace.attentions,
                                                                  r.trace.n_tokens - 1))
    assert s.attribution.grad_x_input is None and s.lens is None and s.trace.token_ids == []


def test_a_summary_json_in_the_bundle_brings_attribution_and_lens(quick_bundle, tmp_path):
    from analysis.run import summary_json

    a = _fake_analysis()
    path = quick_bundle(a, tmp_path / "saved.zip")
    with zipfile.ZipFile(path, "a") as z:  # a bundle that also carries `analyze --json`
        z.writestr("summary.json", json.dumps(summary_json(a), default=float))
    s = open_bundle(path, tmp_path / "open").results[0]
    r = a.results[0]
    np.testing.assert_allclose(s.attribution.grad_x_input, r.attribution.grad_x_input)
    assert s.lens.top_tokens == r.lens.top_tokens
    np.testing.assert_allclose(s.lens.top_probs, r.lens.top_probs, atol=1e-6)


def test_damaged_or_foreign_files_are_refused(quick_bundle, tmp_path):
    path = quick_bundle(_fake_analysis(), tmp_path / "saved.zip")
    not_zip = tmp_path / "notes.zip"
    not_zip.write_text("hello")
    with pytest.raises(UserError, match="not a ZIP"):
        open_bundle(not_zip, tmp_path / "o1")
    other = tmp_path / "other.zip"
    with zipfile.ZipFile(other, "w") as z:
        z.writestr("readme.txt", "x")
    with pytest.raises(UserError, match="no manifest"):
        open_bundle(other, tmp_path / "o2")
    changed = tmp_path / "changed.zip"  # one CSV value edited: its sha256 no longer matches
    with zipfile.ZipFile(path) as src, zipfile.ZipFile(changed, "w") as dst:
        for item in src.infolist():
            data = src.read(item)
            if item.filename == "layer_metrics.csv":
                data = data.replace(b",0.", b",1.", 1)
            dst.writestr(item, data)
    with pytest.raises(UserError, match="sha256"):
        open_bundle(changed, tmp_path / "o3")
