"""The stand-in folders of tests/standins.py load and run with plain transformers, and keep the
facts of the real checkpoints: config values, special token ids, tokenizer kind, attention
direction, context limits, LLaDA's remote-code behaviour, DiffusionGemma's generate()."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap

import pytest
import torch

from tests import standins as S

# the real-width stand-ins take seconds each to build and to run on 2 CPU cores
slow = pytest.mark.slow


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    """build(kind, **kw) -> folder, each stand-in built once for the module."""
    cache = {}

    def get(kind, **kw):
        key = (kind, tuple(sorted(kw.items())))
        if key not in cache:
            cache[key] = S.build(kind, tmp_path_factory.mktemp(kind), **kw)
        return cache[key]

    return get


@pytest.fixture(scope="module")
def loaded(built):
    """load(kind, **kw) -> (tokenizer, model): eager attention, eval mode, built once."""
    cache = {}

    def get(kind, **kw):
        key = (kind, tuple(sorted(kw.items())))
        if key not in cache:
            cache[key] = S.load(kind, built(kind, **kw))
        return cache[key]

    return get


@pytest.fixture(scope="module")
def tokenizers(tmp_path_factory):
    """kind -> the stand-in tokenizer saved and reloaded with AutoTokenizer (no weights)."""
    from transformers import AutoTokenizer

    makers = {"bert": S.bert_tokenizer, "gpt2": S.gpt2_tokenizer, "roberta": S.roberta_tokenizer,
              "tinyllama": S.llama_tokenizer, "llada": S.llada_tokenizer,
              "diffusiongemma": S.gemma_tokenizer}
    cache = {}

    def get(kind):
        if kind not in cache:
            folder = tmp_path_factory.mktemp(f"tok-{kind}")
            makers[kind]().save_pretrained(folder)
            cache[kind] = AutoTokenizer.from_pretrained(folder, trust_remote_code=kind == "llada")
        return cache[kind]

    return get


def forward(model, ids, **kw):
    with torch.no_grad():
        return model(torch.tensor([ids]), output_attentions=True, output_hidden_states=True, **kw)


SENTENCE = "The capital of Japan is Tokyo, said Alice in 2024."

# ----------------------------------------------------------------------------- tokenizers

REAL_CLASS = {"bert": "BertTokenizer", "gpt2": "GPT2Tokenizer", "roberta": "RobertaTokenizer",
              "tinyllama": "LlamaTokenizer", "llada": "TokenizersBackend"}


@pytest.mark.parametrize("kind", ["bert", "gpt2", "roberta", "tinyllama", "llada"])
def test_tokenizer_is_of_the_real_kind_with_the_real_ids(tokenizers, kind):
    tok = tokenizers(kind)
    real = S.REAL_TOKENIZERS[S.HUB_ID[kind]]
    # PreTrainedTokenizerFast is an alias of TokenizersBackend in transformers 5
    assert type(tok).__name__ == REAL_CLASS[kind]
    assert len(tok) == real["size"]
    for token, i in real["special"].items():
        assert tok.convert_tokens_to_ids(token) == i, token
    if "model_max_length" in real:
        assert tok.model_max_length == real["model_max_length"]


@pytest.mark.parametrize("kind", ["bert", "gpt2", "roberta", "tinyllama", "llada", "diffusiongemma"])
def test_tokenizer_round_trips_a_sentence(tokenizers, kind):
    tok = tokenizers(kind)
    ids = tok(SENTENCE)["input_ids"]
    text = tok.decode(ids, skip_special_tokens=True)
    assert text == (SENTENCE.lower() if kind == "bert" else SENTENCE)
    assert max(ids) < len(tok)


def test_special_tokens_are_added_as_by_the_real_tokenizers(tokenizers):
    def ends(kind):
        ids = tokenizers(kind)("hello world")["input_ids"]
        return ids[0], ids[-1]

    assert ends("bert") == (101, 102)  # [CLS] ... [SEP]
    assert ends("roberta") == (0, 2)  # <s> ... </s>
    assert ends("tinyllama")[0] == 1  # <s> first, no </s>
    assert ends("tinyllama")[1] != 2
    assert 50256 not in tokenizers("gpt2")("hello world")["input_ids"]  # GPT-2 adds nothing
    assert ends("diffusiongemma")[0] == 2  # <bos>
    llada = tokenizers("llada")("hello world")["input_ids"]  # LLaDA adds nothing either
    assert 126080 not in llada and 126081 not in llada
    pair = tokenizers("roberta")("a", "b")["input_ids"]
    assert pair[0] == 0 and pair.count(2) == 3  # <s> A </s></s> B </s>


def test_mask_tokens(tokenizers):
    bert, roberta, llada = tokenizers("bert"), tokenizers("roberta"), tokenizers("llada")
    assert bert.mask_token == "[MASK]" and bert.mask_token_id == 103
    assert bert("paris is [MASK].")["input_ids"].count(103) == 1
    assert roberta.mask_token == "<mask>" and roberta.mask_token_id == 50264
    # <mask> is lstrip: the space before it belongs to the mask, as in roberta-base
    ids = roberta("Paris is <mask>.")["input_ids"]
    assert 50264 in ids and roberta.convert_ids_to_tokens(ids[ids.index(50264) - 1]) != "Ġ"
    assert llada.mask_token == "<|mdm_mask|>" and llada.mask_token_id == 126336
    assert llada("a <|mdm_mask|><|mdm_mask|>")["input_ids"][-2:] == [126336, 126336]


def test_tinyllama_chat_template_renders_as_the_real_one(tokenizers):
    tok = tokenizers("tinyllama")
    messages = [{"role": "system", "content": "You are kind."}, {"role": "user", "content": "Hi"}]
    text = tok.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
    assert text == "<|system|>\nYou are kind.</s>\n<|user|>\nHi</s>\n<|assistant|>\n"
    ids = tok(text)["input_ids"]
    assert ids[0] == 1 and ids.count(2) == 2  # <s> added by the tokenizer; </s> per turn
    # <|user|> is plain text for TinyLlama (not a special token): several pieces
    assert len(tok("<|user|>", add_special_tokens=False)["input_ids"]) > 1
    # transformers 5: tokenize=True returns a BatchEncoding (a dict), not a list of ids, and
    # (as before) without the tokenizer's own specials: no <s> for TinyLlama's template
    enc = tok.apply_chat_template(messages, add_generation_prompt=True)
    assert enc["input_ids"] == ids[1:]


def test_llada_chat_template_renders_as_the_real_one(tokenizers):
    tok = tokenizers("llada")
    text = tok.apply_chat_template([{"role": "user", "content": " What is 2+2? "}],
                                   add_generation_prompt=True, tokenize=False)
    assert text == ("<|startoftext|><|start_header_id|>user<|end_header_id|>\n\nWhat is 2+2?"
                    "<|eot_id|><|start_header_id|>assistant<|end_header_id|>\n\n")
    ids = tok(text)["input_ids"]  # the template has the bos; the tokenizer adds nothing
    assert ids[0] == 126080 and ids.count(126346) == ids.count(126347) == 2 and 126348 in ids


# ----------------------------------------------------------------------------- configs

LAYER_KEY = {"bert": "num_hidden_layers", "roberta": "num_hidden_layers", "gpt2": "n_layer",
             "tinyllama": "num_hidden_layers", "llada": "n_layers"}


@slow
@pytest.mark.parametrize("kind", ["bert", "gpt2", "roberta", "tinyllama", "llada"])
def test_config_keeps_the_real_values(built, kind):
    folder = built(kind)
    config = json.loads((folder / "config.json").read_text())
    real = S.real_config(kind)
    facts = json.loads((folder / "standin.json").read_text())
    assert config[LAYER_KEY[kind]] == facts["num_layers"] == 2
    assert facts["real_num_layers"] == real[LAYER_KEY[kind]]
    small = S.LLADA_SMALL if kind == "llada" else {}
    for key, value in real.items():
        if key in (LAYER_KEY[kind], "transformers_version", "torch_dtype") or key in small:
            continue
        assert config.get(key, value) == value, key
    if kind in ("tinyllama", "llada"):  # bfloat16 weights, as the real checkpoints
        assert config.get("dtype", config.get("torch_dtype")) == "bfloat16"


def test_llada_real_shape_config_is_the_8b_one():
    values = S._llada_config_values(3, "real")
    real = S.real_config("llada")
    assert values == {**real, "n_layers": 3}
    assert (values["d_model"], values["n_heads"], values["mlp_hidden_size"]) == (4096, 32, 12288)


# ----------------------------------------------------------------------------- forward passes

EXPECT = {  # kind: (causal, layers, heads)
    "bert": (False, 2, 12),
    "roberta": (False, 2, 12),
    "gpt2": (True, 2, 12),
    "tinyllama": (True, 2, 32),
}


@slow
@pytest.mark.parametrize("kind", list(EXPECT))
def test_forward_with_attentions_and_hidden_states(loaded, kind):
    tok, model = loaded(kind)
    assert not model.training and model.config._attn_implementation == "eager"
    causal, layers, heads = EXPECT[kind]
    ids = tok(SENTENCE)["input_ids"]
    out = forward(model, ids)
    T = len(ids)
    assert out.logits.shape == (1, T, model.config.vocab_size)
    assert len(out.hidden_states) == layers + 1
    assert len(out.attentions) == layers
    tol = 2e-2 if model.dtype == torch.bfloat16 else 1e-4
    for att in out.attentions:
        assert att.shape == (1, heads, T, T)
        att = att.float()
        assert torch.allclose(att.sum(-1), torch.ones(1, heads, T), atol=tol)
        above = torch.triu(att, diagonal=1)
        if causal:
            assert above.abs().max() == 0
        else:  # bidirectional: a large share of the weight looks ahead
            assert above.sum() / att.sum() > 0.2


@slow
def test_tinyllama_loads_as_bfloat16_unless_told(loaded):
    _, model = loaded("tinyllama", width="narrow")
    assert model.dtype == torch.bfloat16  # transformers 5: dtype="auto" by default
    assert model.config.num_key_value_heads * 8 == model.config.num_attention_heads


def _exact_length_ids(tok, kind, n):
    text = " ".join(S.corpus(600))
    body = tok(text, add_special_tokens=False)["input_ids"]
    if kind in ("bert", "roberta"):
        return [tok.cls_token_id] + body[: n - 2] + [tok.sep_token_id]
    if kind == "tinyllama":
        return [tok.bos_token_id] + body[: n - 1]
    return body[:n]


@slow
@pytest.mark.parametrize("kind,limit", [("bert", 512), ("roberta", 512), ("gpt2", 1024)])
def test_the_real_context_limit_runs_and_one_more_fails(loaded, kind, limit):
    tok, model = loaded(kind)
    kw = {"logits_to_keep": 1} if kind == "gpt2" else {}
    ids = _exact_length_ids(tok, kind, limit)
    assert len(ids) == limit
    with torch.no_grad():
        assert model(torch.tensor([ids]), **kw).logits.shape[-1] == model.config.vocab_size
        # one token more: the learned position table ends (RoBERTa's 514 rows = 512 + padding_idx 1 + 1)
        with pytest.raises((IndexError, RuntimeError)):
            model(torch.tensor([_exact_length_ids(tok, kind, limit + 1)]), **kw)
    # the tokenizer truncates to the limit when asked
    assert len(tok(" ".join(S.corpus(600)), truncation=True)["input_ids"]) == limit


@slow
def test_tinyllama_2048_runs_and_2049_is_not_refused(built, loaded):
    """RoPE has no position table: nothing in the model stops at 2048 (the tokenizer truncates)."""
    from transformers import AutoModelForCausalLM

    tok, _ = loaded("tinyllama", width="narrow")
    model = AutoModelForCausalLM.from_pretrained(  # float32: bfloat16 matmuls are ~6x slower on CPU
        built("tinyllama", width="narrow"), attn_implementation="eager", dtype=torch.float32).eval()
    with torch.no_grad():
        for n in (2048, 2049):
            ids = _exact_length_ids(tok, "tinyllama", n)
            assert len(ids) == n
            assert model(torch.tensor([ids]), logits_to_keep=1).logits.shape == (1, 1, 32000)
    assert len(tok(" ".join(S.corpus(1200)), truncation=True)["input_ids"]) == 2048


# ----------------------------------------------------------------------------- LLaDA

FRESH_PROCESS = textwrap.dedent("""
    import json, sys
    from transformers import AutoModel, AutoModelForCausalLM, AutoModelForMaskedLM, AutoTokenizer
    folder, res = sys.argv[1], {}
    def attempt(name, fn):
        try:
            fn()
            res[name] = "ok"
        except Exception as e:
            res[name] = type(e).__name__ + ": " + " ".join(str(e).split())[:600]
    attempt("no_trust", lambda: AutoModel.from_pretrained(folder))
    attempt("tokenizer_no_trust", lambda: AutoTokenizer.from_pretrained(folder))
    attempt("trust", lambda: AutoModel.from_pretrained(folder, trust_remote_code=True,
                                                       attn_implementation="eager"))
    attempt("causal_lm", lambda: AutoModelForCausalLM.from_pretrained(folder, trust_remote_code=True))
    attempt("masked_lm", lambda: AutoModelForMaskedLM.from_pretrained(folder, trust_remote_code=True))
    attempt("no_trust_after", lambda: AutoModel.from_pretrained(folder))
    print("RESULT" + json.dumps(res))
""")


@slow
def test_llada_in_a_fresh_process_behaves_as_the_real_remote_code(built):
    """As GSAI-ML/LLaDA-8B-Instruct under transformers 5.24: refused without trust_remote_code;
    with it, from_pretrained fails (the remote wrapper never calls post_init()); no masked-LM
    auto class; and once the remote code ran, the flag is no longer asked for."""
    proc = subprocess.run([sys.executable, "-c", FRESH_PROCESS, str(built("llada"))],
                          capture_output=True, text=True, stdin=subprocess.DEVNULL, timeout=300)
    res = json.loads(proc.stdout.split("RESULT")[-1])
    assert res["no_trust"].startswith("ValueError") and "trust_remote_code=True" in res["no_trust"]
    assert res["tokenizer_no_trust"] == "ok"  # falls back to PreTrainedTokenizerFast (asks on stdin)
    assert res["trust"].startswith(
        "AttributeError: 'LLaDAModelLM' object has no attribute 'all_tied_weights_keys'")
    assert res["causal_lm"] == res["trust"]  # auto_map also maps AutoModelForCausalLM
    assert res["masked_lm"].startswith("ValueError: Unrecognized configuration class")
    assert "trust_remote_code" not in res["no_trust_after"]  # the registered class is used


@pytest.fixture(scope="module")
def llada(built):
    from transformers import AutoTokenizer

    folder = built("llada")
    return AutoTokenizer.from_pretrained(folder, trust_remote_code=True), S.load_llada(folder)


def test_llada_forward_logits_and_hidden_states(llada):
    tok, model = llada
    assert type(model).__name__ == "LLaDAModelLM" and model.dtype == torch.bfloat16
    assert (model.config.num_hidden_layers, model.config.num_attention_heads) == (2, 4)
    assert model.config.mask_token_id == tok.mask_token_id == 126336
    assert model.config.eos_token_id == tok.eos_token_id == tok.pad_token_id == 126081
    assert not hasattr(model.config, "use_cache")  # dropped by transformers 5
    ids = tok(SENTENCE)["input_ids"] + [126336] * 4
    x = torch.tensor([ids])
    with torch.no_grad():
        with pytest.raises(AttributeError, match="use_cache"):
            model(x)
        with pytest.raises(ValueError, match="output_attentions"):
            model(x, use_cache=False, output_attentions=True)
        out = model(x, use_cache=False, output_hidden_states=True)
    assert out.logits.shape == (1, len(ids), 126464)  # position i predicts token i (no shift)
    assert len(out.hidden_states) == 3 and out.hidden_states[0].shape == (1, len(ids), 64)
    assert out.attentions is None and out.past_key_values is None


def test_llada_attention_is_bidirectional(llada):
    _, model = llada
    a = torch.tensor([[300, 301, 302, 303, 126336, 126336]])
    b = a.clone()
    b[0, -1] = 304
    with torch.no_grad():
        la, lb = (model(x, use_cache=False).logits.float() for x in (a, b))
    assert not torch.allclose(la[0, 0], lb[0, 0])  # the first position sees the last token


def capture_llada_attention(model) -> list:
    """The capture path for LLaDA (its attention runs in F.scaled_dot_product_attention and is
    never returned): replace each block's _scaled_dot_product_attention, which receives q and k
    after RoPE and the additive padding bias, by an explicit softmax(q k^T / sqrt(d) + bias)."""
    import math

    weights = []

    def explicit(q, k, v, attn_mask=None, dropout_p=0.0, is_causal=False):
        rep = q.size(1) // k.size(1)
        k, v = k.repeat_interleave(rep, dim=1), v.repeat_interleave(rep, dim=1)
        scores = q.float() @ k.float().transpose(-1, -2) / math.sqrt(q.size(-1))
        if attn_mask is not None:
            scores = scores + attn_mask.float()
        w = scores.softmax(-1)
        weights.append(w)
        return (w @ v.float()).to(q.dtype)

    for block in model.model.transformer.blocks:
        block._scaled_dot_product_attention = explicit
    return weights


def test_llada_attention_capture_by_wrapping_its_sdpa(llada):
    _, model = llada
    x = torch.tensor([[300, 301, 302, 303, 304, 126336, 126336, 126336]])
    mask = torch.tensor([[0, 1, 1, 1, 1, 1, 1, 1]])  # a left-padded row
    with torch.no_grad():
        reference = model(x, attention_mask=mask, use_cache=False).logits.float()
        weights = capture_llada_attention(model)
        try:
            captured = model(x, attention_mask=mask, use_cache=False).logits.float()
        finally:
            for block in model.model.transformer.blocks:
                del block._scaled_dot_product_attention
    assert len(weights) == 2 and weights[0].shape == (1, 4, 8, 8)
    assert (captured - reference).abs().max() < 0.05 * reference.abs().max()
    for w in weights:
        assert torch.allclose(w.sum(-1), torch.ones(1, 4, 8), atol=1e-4)
        assert w[..., 0].max() < 1e-6  # the padded key gets no weight
        assert torch.triu(w, diagonal=1).sum() > 0.3 * w.sum()  # not causal


def test_llada_transformers5_ready_variant_loads_without_shims(tmp_path):
    folder = S.build_llada(tmp_path / "llada5", transformers5_ready=True, tokenizer=False)
    model = S.load_llada(folder)  # the shims are no-ops on this variant
    with torch.no_grad():
        assert model(torch.tensor([[1, 2, 3]])).logits.shape == (1, 3, 126464)


# ----------------------------------------------------------------------------- DiffusionGemma

@pytest.fixture(scope="module")
def gemma(loaded):
    return loaded("diffusiongemma")


def test_diffusiongemma_forward_returns_decoder_attentions_and_hidden_states(gemma):
    tok, model = gemma
    assert type(model).__name__ == "DiffusionGemmaForBlockDiffusion"
    assert model.config._attn_implementation == "eager"
    text = model.config.text_config
    prompt = tok("Why is the sky blue?", return_tensors="pt")["input_ids"]
    canvas = torch.randint(0, text.vocab_size, (1, model.config.canvas_length))
    P, C = prompt.shape[1], canvas.shape[1]
    with torch.no_grad():
        out = model(input_ids=prompt, decoder_input_ids=canvas, output_attentions=True,
                    output_hidden_states=True)
    assert out.logits.shape == (1, C, text.vocab_size) and out.logits.dtype == torch.float32
    assert out.logits.abs().max() <= text.final_logit_softcapping
    assert len(out.hidden_states) == text.num_hidden_layers + 1
    assert out.hidden_states[-1].shape == (1, C, text.hidden_size)
    # decoder attention only: the canvas attends to the cached prompt and to itself, both ways
    assert len(out.attentions) == text.num_hidden_layers
    for att in out.attentions:
        assert att.shape == (1, text.num_attention_heads, C, P + C)
        assert torch.allclose(att.sum(-1), torch.ones(1, text.num_attention_heads, C), atol=1e-5)
        assert att[..., P:].triu(diagonal=1).sum() > 0  # canvas looks ahead
    assert out.encoder_last_hidden_state.shape == (1, P, text.hidden_size)


def test_diffusiongemma_is_not_a_masked_or_causal_lm(built):
    from transformers import AutoModelForCausalLM, AutoModelForMaskedLM

    for auto in (AutoModelForCausalLM, AutoModelForMaskedLM):
        with pytest.raises(ValueError, match="Unrecognized configuration class"):
            auto.from_pretrained(built("diffusiongemma"))


class DraftRecorder:
    """A streamer for DiffusionGemma.generate: put() gets the prompt, then each finished canvas;
    put_draft() gets every denoising step (argmax canvas ids, or the processed logits when
    ``_takes_logits``)."""

    def __init__(self, takes_logits=False):
        self._takes_logits = takes_logits
        self.puts, self.drafts, self.ended = [], [], False

    def put(self, value):
        self.puts.append(value.clone())

    def put_draft(self, value=None, logits=None):
        self.drafts.append((value if value is not None else logits).clone())

    def end(self):
        self.ended = True


def record_sampler(model):
    """Wrap the entropy-bound sampler generate() builds, to see each step's accepted positions
    and the canvas fed to the next step (accepted tokens kept, the rest uniform noise)."""
    steps = []
    make = model._prepare_sampler

    def prepare(generation_config):
        sampler = make(generation_config)
        accept, renoise = sampler.accept_canvas, sampler.renoise_canvas

        def accept_canvas(current, denoiser, logits, cur_step):
            out = accept(current, denoiser, logits, cur_step)
            steps.append({"step": int(cur_step), "sampled": denoiser.clone(),
                          "accepted": sampler.accepted_token_mask.clone()})
            return out

        def renoise_canvas(accepted, cur_step):
            out = renoise(accepted, cur_step)
            steps[-1]["next_canvas"] = out.clone()
            return out

        sampler.accept_canvas, sampler.renoise_canvas = accept_canvas, renoise_canvas
        return sampler

    model._prepare_sampler = prepare
    return steps


@slow
def test_diffusiongemma_generate_streams_every_denoising_step(gemma):
    tok, model = gemma
    C = model.config.canvas_length
    prompt = tok.apply_chat_template([{"role": "user", "content": "Name a city."}],
                                     add_generation_prompt=True, return_tensors="pt")["input_ids"]
    P = prompt.shape[1]
    streamer, steps = DraftRecorder(), record_sampler(model)
    # eager attention modules return their weights to forward hooks even though generate()
    # never asks for output_attentions: the capture path during generation
    seen = []
    hooks = [layer.self_attn.register_forward_hook(lambda _m, _a, out: seen.append(out[1].shape))
             for layer in model.model.decoder.layers]
    try:
        torch.manual_seed(0)
        out = model.generate(prompt, streamer=streamer, max_new_tokens=2 * C, max_denoising_steps=5,
                             confidence_threshold=1e-9)  # random weights: never stop early
        for hook in hooks:
            hook.remove()
        torch.manual_seed(0)
        logits_streamer = DraftRecorder(takes_logits=True)
        again = model.generate(prompt, streamer=logits_streamer, max_new_tokens=2 * C,
                               max_denoising_steps=5, confidence_threshold=1e-9)
    finally:
        del model._prepare_sampler
        for hook in hooks:
            hook.remove()
    heads, layers = model.config.text_config.num_attention_heads, len(hooks)
    assert seen[:layers] == [(1, heads, C, P + C)] * layers  # block 1: prompt + canvas
    assert seen[-1] == (1, heads, C, P + 2 * C)  # block 2: the first canvas is in the cache
    assert len(seen) == 10 * layers
    seq = out.sequences
    assert torch.equal(seq, again.sequences)  # seeded: same run
    assert seq.shape == (1, P + 2 * C) and torch.equal(seq[:, :P], prompt)
    # put: the prompt, then each finished canvas; put_draft: every denoising step, argmax ids
    assert [p.shape for p in streamer.puts] == [(1, P), (1, C), (1, C)] and streamer.ended
    assert len(streamer.drafts) == 10 == len(steps) // 2
    assert all(d.shape == (1, C) and d.dtype == torch.long for d in streamer.drafts)
    assert float(out.tokens_per_forward) == pytest.approx(2 * C / 10)
    # the logits streamer gets the temperature-processed logits; their argmax is the draft
    assert logits_streamer.drafts[0].shape == (1, C, model.config.text_config.vocab_size)
    for ids, logits in zip(streamer.drafts, logits_streamer.drafts, strict=True):
        assert torch.equal(logits.argmax(-1), ids)
    # a block's output is its last draft (tokens after an EOS become pad)
    for block in range(2):
        draft = streamer.drafts[5 * block + 4][0]
        got = seq[0, P + C * block: P + C * (block + 1)]
        eos = (draft == 1).nonzero()
        keep = C if len(eos) == 0 else int(eos[0]) + 1
        assert torch.equal(got[:keep], draft[:keep])
    # tokens are never committed: the next step's canvas keeps only this step's accepted
    # positions, everything else (earlier acceptances included) is replaced by random tokens
    first = steps[:5]
    for s in first[:-1]:
        keep = s["accepted"][0]
        assert torch.equal(s["next_canvas"][0][keep], s["sampled"][0][keep])
    drafts = torch.cat(streamer.drafts[:5])
    assert (drafts[1:] != drafts[:-1]).any()  # the draft changes from step to step
