"""LLaDA through its own remote code, offline, with a stand-in that declares itself the way
GSAI-ML/LLaDA-8B-Instruct does (tests/standins.py: OLMo-style config keys, auto_map to its own
configuration_llada.py / modeling_llada.py, fused bidirectional attention that never returns
weights, mask id 126336, and the transformers-5 load problems of the real code)."""

from __future__ import annotations

import shutil

import numpy as np
import pytest
import torch

from models.common import UserError
from tests import standins

PROMPT = "the capital of japan is [MASK]."


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    return standins.build_llada(tmp_path_factory.mktemp("llada") / "LLaDA-8B-Instruct-standin")


@pytest.fixture(scope="module")
def llada(folder):
    from models.loading import LoadOptions, load

    return load(str(folder), LoadOptions(trust_remote_code=True))


def test_remote_code_needs_the_flag_even_after_a_load(folder, llada):
    """LLaDA's code registers itself process-wide when imported, after which transformers
    stops asking for trust_remote_code; the dashboard's own check still refuses."""
    from models.loading import LoadOptions, load_uncached
    from models.registry import resolve

    entry = resolve(str(folder))
    assert entry.needs_remote_code and entry.task == "diffusion"
    with pytest.raises(UserError, match="--trust-remote-code"):
        load_uncached(entry, LoadOptions())
    assert llada.adapter == "llada" and llada.mask_id == 126336
    assert llada.mask_text == "<|mdm_mask|>"


def test_llada_attention_is_captured_bidirectional_and_exact(llada):
    """The recorder computes the attention LLaDA's fused kernel does: the logits with weights
    recorded equal the fused pass's, rows sum to 1, and keys after the query get weight."""
    from analysis.capture import capture

    tr = capture(llada, PROMPT)
    assert tr.attentions.shape == (llada.n_layers, llada.n_heads, tr.n_tokens, tr.n_tokens)
    assert np.allclose(tr.attentions.sum(-1), 1.0, atol=1e-5)
    assert np.triu(tr.attentions, k=1).max() > 0.01  # bidirectional
    ids = torch.tensor([tr.token_ids])
    with torch.no_grad():
        fused = llada.model(input_ids=ids, use_cache=False).logits[0]
    mask = tr.token_ids.index(llada.mask_id)
    assert np.allclose(tr.logits_at(mask), fused[mask].float().numpy(), atol=1e-4)


def test_llada_last_layer_is_the_last_blocks_output(llada):
    from analysis.capture import capture
    from models.remote import llada_blocks

    tr = capture(llada, PROMPT)
    seen = []
    handle = llada_blocks(llada.model)[-1].register_forward_hook(
        lambda m, a, out: seen.append((out[0] if isinstance(out, tuple) else out)[0]))
    try:
        with torch.no_grad():
            llada.model(input_ids=torch.tensor([tr.token_ids]), use_cache=False)
    finally:
        handle.remove()
    np.testing.assert_allclose(tr.hidden[-1], seen[0].float().numpy(), rtol=1e-5, atol=1e-5)


def test_llada_is_analysed_end_to_end(llada):
    from analysis.run import analyze_model

    r = analyze_model(llada, [PROMPT])
    mask = r.trace.token_ids.index(llada.mask_id)
    assert r.predictions.masks[0].position == mask
    with torch.no_grad():
        logits = llada.model(input_ids=torch.tensor([r.trace.token_ids]), use_cache=False).logits
    assert r.predictions.top[0].token_id == int(logits[0, mask].argmax())
    col = r.lens.positions.index(mask)  # the lens's last layer is the model's own prediction
    assert int(r.lens.top_ids[-1, col]) == r.predictions.top[0].token_id
    assert r.heads.attribution is not None and np.isfinite(r.heads.attribution).all()
    assert np.isfinite(r.layers.effective_rank).all()


def test_llada_in_bfloat16(folder):
    from analysis.run import analyze_model
    from models.loading import LoadOptions, load

    m = load(str(folder), LoadOptions(trust_remote_code=True, dtype="bfloat16"))
    assert next(m.model.parameters()).dtype == torch.bfloat16
    r = analyze_model(m, [PROMPT], gradients=False)
    assert r.layers.effective_rank.dtype == np.float64 and np.isfinite(r.layers.effective_rank).all()
    assert np.allclose(r.trace.attentions.sum(-1), 1.0, atol=1e-2)


def test_a_llada_folder_with_missing_files_is_one_clear_error(folder, tmp_path):
    from models.loading import LoadOptions, load_uncached
    from models.registry import resolve

    broken = tmp_path / "llada-broken"
    shutil.copytree(folder, broken)
    (broken / "modeling_llada.py").unlink()
    with pytest.raises(UserError, match="Could not load"):
        load_uncached(resolve(str(broken)), LoadOptions(trust_remote_code=True))
    (broken / "model.safetensors").unlink()
    with pytest.raises(UserError, match="no weights"):
        load_uncached(resolve(str(broken)), LoadOptions(trust_remote_code=True))
