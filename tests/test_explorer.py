"""ui/explorer.py: the attention payload (quantised, compressed) and its round trip."""

import json
import zlib

import numpy as np
import pytest

from models.errors import UserError
from ui import explorer
from ui.explorer import (
    AttentionPayload,
    pack_attention,
    quantisation_bound,
    standalone_html,
    unpack_attention,
)


def softmax_attention(n_layers, n_heads, n_tokens, causal, sharpness=3.0, seed=0):
    """`[layer, head, query, key]` rows that sum to 1: softmax of random logits (masked if causal)."""
    rng = np.random.default_rng(seed)
    logits = rng.normal(0.0, sharpness, (n_layers, n_heads, n_tokens, n_tokens))
    if causal:
        logits[..., ~np.tri(n_tokens, dtype=bool)] = -np.inf
    e = np.exp(logits - logits.max(-1, keepdims=True))
    return (e / e.sum(-1, keepdims=True)).astype(np.float32)


def tokens(n):
    words = [" the", " cat", " sat", " on", "<script>", " ", "é", "\\n", "mat", "."]
    return [words[i % len(words)] for i in range(n)]


@pytest.mark.parametrize("causal", [False, True])
def test_round_trip_within_documented_bound(causal):
    a = softmax_attention(2, 3, 40, causal)
    p = pack_attention(a, tokens(40), causal)
    b = unpack_attention(p)
    assert b.shape == a.shape and b.dtype == np.float32
    row_max = a.max(-1, keepdims=True)
    err = np.abs(a - b)
    # |a - a'| <= row max * gamma / (2 * 255) (gamma 2: 0.39 % of the row's largest weight)
    assert (err <= row_max * quantisation_bound() + 1e-6).all()
    assert quantisation_bound() == pytest.approx(1 / 255)
    # each row's maximum is kept exactly (code 255 decodes to the stored float32 maximum)
    assert np.array_equal(b.max(-1), a.max(-1))


def test_gamma_one_is_linear_and_within_its_bound():
    a = softmax_attention(1, 2, 30, False, seed=3)
    b = unpack_attention(pack_attention(a, tokens(30), False, gamma=1.0))
    assert (np.abs(a - b) <= a.max(-1, keepdims=True) * quantisation_bound(1.0) + 1e-6).all()


def test_fewer_levels_smaller_payload_within_their_bound():
    a = softmax_attention(2, 2, 64, False, sharpness=2.0, seed=4)
    p8 = pack_attention(a, tokens(64), False)
    p6 = pack_attention(a, tokens(64), False, levels=63)
    b = unpack_attention(p6)
    assert (np.abs(a - b) <= a.max(-1, keepdims=True) * quantisation_bound(2.0, 63) + 1e-6).all()
    assert p6.compressed_bytes < 0.8 * p8.compressed_bytes


def test_causal_upper_triangle_is_zero_after_unpack():
    a = softmax_attention(2, 2, 25, True)
    b = unpack_attention(pack_attention(a, tokens(25), True))
    upper = ~np.tri(25, dtype=bool)
    assert (b[..., upper] == 0).all()
    # row 0 of a causal model attends to token 0 only, with weight exactly 1
    assert (b[..., 0, 0] == 1).all()


def test_causal_sends_the_lower_triangle_only():
    n = 32
    p_causal = pack_attention(softmax_attention(1, 1, n, True), tokens(n), True)
    p_full = pack_attention(softmax_attention(1, 1, n, False), tokens(n), False)
    assert len(zlib.decompress(p_causal.codes)) == n * (n + 1) // 2
    assert len(zlib.decompress(p_full.codes)) == n * n


@pytest.mark.parametrize("causal", [False, True])
def test_rows_still_sum_to_one(causal):
    n = 64
    a = softmax_attention(2, 2, n, causal, sharpness=2.0)
    b = unpack_attention(pack_attention(a, tokens(n), causal))
    s = a.max(-1)
    # worst case: sqrt(n * s) / 255 + n * s / (4 * 255^2) (module docstring)
    bound = np.sqrt(n * s) / 255 + n * s / (4 * 255**2)
    dev = np.abs(b.sum(-1) - 1)
    assert (dev <= bound + 1e-5).all()
    assert dev.max() < 0.02  # rounding errors mostly cancel


def test_tokens_title_and_shape_survive_json():
    a = softmax_attention(3, 2, 10, True)
    toks = tokens(10)
    p = pack_attention(a, toks, True, title="tiny <model>")
    text = p.to_json()
    assert "<" not in text  # safe inside <script>, never trips gr.HTML's script warning
    d = json.loads(text)
    assert d["tokens"] == toks and d["title"] == "tiny <model>"
    assert (d["format"], d["version"], d["n_layers"], d["n_heads"], d["n_tokens"]) == \
        ("attention-explorer", 1, 3, 2, 10)
    assert d["causal"] is True and d["first_layer"] == 1 and d["compression"] == "deflate"
    q = AttentionPayload.from_json(text)
    assert q == p
    assert np.array_equal(unpack_attention(text), unpack_attention(p))


def test_payload_size_of_a_known_case():
    """Identity attention (every token attends to itself): sizes a reader can compute."""
    n_layers, n_heads, n = 2, 3, 100
    a = np.broadcast_to(np.eye(n, dtype=np.float32), (n_layers, n_heads, n, n))
    p = pack_attention(a, [f"t{i}" for i in range(n)], causal=True)
    cells = n * (n + 1) // 2  # lower triangle with the diagonal
    assert p.raw_bytes == n_layers * n_heads * (cells + 4 * n)  # uint8 codes + float32 row maxima
    assert p.raw_bytes == 32700
    assert p.compressed_bytes < p.raw_bytes / 20  # all 0 but a 255 per row: deflate leaves little
    sizes = p.sizes()
    assert sizes["raw"] == p.raw_bytes and sizes["compressed"] == p.compressed_bytes
    assert sizes["json"] < p.compressed_bytes * 4 / 3 + 1500  # base64 plus the tokens
    assert np.array_equal(unpack_attention(p), a)


def test_float16_memmap_is_read_layer_by_layer(tmp_path):
    a = softmax_attention(3, 2, 20, True)
    path = tmp_path / "att.npy"
    np.save(path, a.astype(np.float16))
    mm = np.load(path, mmap_mode="r")
    b = unpack_attention(pack_attention(mm, tokens(20), True))
    ref = mm.astype(np.float32)
    assert (np.abs(b - ref) <= ref.max(-1, keepdims=True) * quantisation_bound() + 1e-6).all()


def test_zero_and_nan_rows_do_not_break():
    a = softmax_attention(1, 1, 6, False)
    a[0, 0, 2] = 0.0
    a[0, 0, 3, 1] = np.nan
    b = unpack_attention(pack_attention(a, tokens(6), False))
    assert (b[0, 0, 2] == 0).all() and np.isfinite(b).all()


def test_bad_shapes_and_too_large():
    with pytest.raises(ValueError, match="layer, head, query, key"):
        pack_attention(np.zeros((2, 3, 4)), tokens(4), False)
    with pytest.raises(ValueError, match="tokens"):
        pack_attention(np.zeros((1, 1, 4, 4)), tokens(5), False)
    with pytest.raises(UserError, match="at most about"):
        pack_attention(np.zeros((2, 2, 64, 64), np.float32), tokens(64), False, max_raw_bytes=10_000)


def test_standalone_page_inlines_everything():
    p = pack_attention(softmax_attention(1, 2, 8, True), tokens(8), True, title="m")
    page = standalone_html(p, layer=1, head=1)
    assert page.count("<script") == 3 and page.count("</script>") == 3
    assert "http://" not in page.split("<body>")[1] and "src=" not in page  # no network
    assert "AttentionExplorer" in page and ".ae-root" in page
    payload_text = page.split('type="application/json">')[1].split("</script>")[0]
    assert AttentionPayload.from_json(payload_text) == p


def test_gradio_component_and_updates():
    import gradio as gr

    with gr.Blocks():
        ex = explorer.build()
    html = ex.html
    assert html.elem_id == "attention-explorer"
    assert "AttentionExplorer" in html.head and "gradio(element, props, trigger, watch)" in html.js_on_load
    assert html.props["selection"] == [1, 0]
    p = pack_attention(softmax_attention(1, 1, 4, True), tokens(4), True)
    up = explorer.payload_update(p, 1, 0)
    assert up.constructor_args["value"] == p.to_json() and up.constructor_args["selection"] == [1, 0]
    sel = explorer.selection_update(3, 2)
    assert sel.constructor_args == {"selection": [3, 2]}  # the data is not sent again


def test_selected_reads_the_select_event():
    from gradio import SelectData

    assert explorer.selected(SelectData(None, {"index": [3, 2], "value": "layer 3, head 2"})) == (3, 2)
    with pytest.raises(UserError):
        explorer.selected(SelectData(None, {"index": None, "value": None}))
    with pytest.raises(UserError):
        explorer.selected(SelectData(None, {"index": [0, 1], "value": ""}))


def test_linked_payload_is_a_small_json_and_one_binary_file(tmp_path):
    """In the app the JSON value carries no streams: the page fetches them from one file,
    scales first, then each layer's codes (`layer_bytes` long each), `compressed_bytes` in all."""
    a = softmax_attention(3, 2, 30, True)
    p = pack_attention(a, tokens(30), True, title="m")
    path = p.write_binary(tmp_path / "att.bin")
    blob = path.read_bytes()
    assert len(blob) == p.compressed_bytes == len(p.scales) + sum(p.layer_bytes)
    assert blob[:len(p.scales)] == p.scales and blob[len(p.scales):] == p.codes
    url = explorer.gradio_file_url(path)
    assert url.startswith("/gradio_api/file=/") and url.endswith("att.bin")
    linked = json.loads(p.linked_json(url))
    assert linked["url"] == url and "codes" not in linked and "scales" not in linked
    assert linked["scales_bytes"] == len(p.scales) and linked["layer_bytes"] == p.layer_bytes
    assert len(p.linked_json(url)) < len(p.to_json()) / 3
    # the streams read back from the file decode to what the inline payload gives
    back = AttentionPayload.from_json({**linked, "scales": "", "codes": ""})
    back = AttentionPayload(**{**back.__dict__, "scales": blob[:linked["scales_bytes"]],
                               "codes": blob[linked["scales_bytes"]:]})
    assert np.array_equal(unpack_attention(back), unpack_attention(p))


def test_a_message_instead_of_attention():
    d = json.loads(explorer.message_json("too large <to show>"))
    assert d == {"format": "attention-explorer", "version": 1, "message": "too large <to show>"}
    assert "<" not in explorer.message_json("<x>")
