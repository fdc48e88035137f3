"""Stand-in model folders for the hub models the registry names, built offline.

Real checkpoints cannot be downloaded in the test environment, so each hub model's code path is
exercised on a folder built here from the model's *real* architecture and config.json values,
with random (seeded) weights and a tokenizer *of the same kind* trained on a few hundred generated
English sentences. The only deliberate deviations are recorded in each folder's ``standin.json``
and README.md:

- fewer layers (default 2; the real count is kept in ``standin.json``),
- a tokenizer vocabulary trained here: the real ids of the special tokens are kept, and the
  vocabulary is padded with unreachable filler tokens up to the real tokenizer's size, so
  ``len(tokenizer)`` and every special id are what the real tokenizer gives,
- LLaDA (small shape) and DiffusionGemma: small dimensions (see their builders).

Every folder loads with plain ``AutoTokenizer.from_pretrained(folder)`` and
``AutoModelFor... .from_pretrained(folder, attn_implementation="eager")`` (LLaDA: with
``trust_remote_code=True`` and, like the real checkpoint under transformers 5, only with the
shim :func:`load_llada`; see ``/work/notes/standins.md``).

API::

    build(kind, folder, **kw) -> Path        # kind in KINDS
    build_bert_base(folder, n_layers=2, seed=0)
    build_gpt2(folder, n_layers=2, seed=0)
    build_tinyllama(folder, n_layers=2, seed=0, width="real")   # or "narrow" for 2048-token tests
    build_roberta_base(folder, n_layers=2, seed=0)
    build_llada(folder, n_layers=2, seed=0, shape="small", transformers5_ready=False, tokenizer=True)
    build_diffusiongemma(folder, n_layers=2, seed=0, canvas_length=8)
    load(kind, folder) -> (tokenizer, model) # plain transformers, eager, eval
    real_config(kind) -> dict                # the checkpoint's real config.json values
    load_llada(folder, **from_pretrained_kw) # the transformers-5 shim the real LLaDA also needs
    corpus(n=400, seed=0) -> list[str]       # the generated English sentences
"""

from __future__ import annotations

import json
import random
import time
from pathlib import Path

# ----------------------------------------------------------------------------- real values

# config.json of each hub checkpoint (the values a stand-in keeps; only the layer count changes)
REAL_CONFIGS: dict[str, dict] = {
    "bert-base-uncased": {
        "architectures": ["BertForMaskedLM"], "model_type": "bert",
        "attention_probs_dropout_prob": 0.1, "hidden_act": "gelu", "hidden_dropout_prob": 0.1,
        "hidden_size": 768, "initializer_range": 0.02, "intermediate_size": 3072,
        "layer_norm_eps": 1e-12, "max_position_embeddings": 512, "num_attention_heads": 12,
        "num_hidden_layers": 12, "pad_token_id": 0, "position_embedding_type": "absolute",
        "type_vocab_size": 2, "use_cache": True, "vocab_size": 30522,
    },
    "gpt2": {
        "architectures": ["GPT2LMHeadModel"], "model_type": "gpt2",
        "activation_function": "gelu_new", "attn_pdrop": 0.1, "bos_token_id": 50256,
        "embd_pdrop": 0.1, "eos_token_id": 50256, "initializer_range": 0.02,
        "layer_norm_epsilon": 1e-05, "n_ctx": 1024, "n_embd": 768, "n_head": 12, "n_layer": 12,
        "n_positions": 1024, "resid_pdrop": 0.1, "summary_activation": None,
        "summary_first_dropout": 0.1, "summary_proj_to_labels": True,
        "summary_type": "cls_index", "summary_use_proj": True,
        "task_specific_params": {"text-generation": {"do_sample": True, "max_length": 50}},
        "vocab_size": 50257,
    },
    "TinyLlama/TinyLlama-1.1B-Chat-v1.0": {
        "architectures": ["LlamaForCausalLM"], "model_type": "llama",
        "attention_bias": False, "bos_token_id": 1, "eos_token_id": 2, "hidden_act": "silu",
        "hidden_size": 2048, "initializer_range": 0.02, "intermediate_size": 5632,
        "max_position_embeddings": 2048, "num_attention_heads": 32, "num_hidden_layers": 22,
        "num_key_value_heads": 4, "pretraining_tp": 1, "rms_norm_eps": 1e-05,
        "rope_scaling": None, "rope_theta": 10000.0, "tie_word_embeddings": False,
        "torch_dtype": "bfloat16", "use_cache": True, "vocab_size": 32000,
    },
    "roberta-base": {
        "architectures": ["RobertaForMaskedLM"], "model_type": "roberta",
        "attention_probs_dropout_prob": 0.1, "bos_token_id": 0, "eos_token_id": 2,
        "hidden_act": "gelu", "hidden_dropout_prob": 0.1, "hidden_size": 768,
        "initializer_range": 0.02, "intermediate_size": 3072, "layer_norm_eps": 1e-05,
        "max_position_embeddings": 514, "num_attention_heads": 12, "num_hidden_layers": 12,
        "pad_token_id": 1, "type_vocab_size": 1, "vocab_size": 50265,
    },
    "GSAI-ML/LLaDA-8B-Instruct": {
        "activation_type": "silu", "alibi": False, "alibi_bias_max": 8.0,
        "architectures": ["LLaDAModelLM"], "attention_dropout": 0.0, "attention_layer_norm": False,
        "attention_layer_norm_with_affine": True,
        "auto_map": {"AutoConfig": "configuration_llada.LLaDAConfig",
                     "AutoModelForCausalLM": "modeling_llada.LLaDAModelLM",
                     "AutoModel": "modeling_llada.LLaDAModelLM"},
        "bias_for_layer_norm": False, "block_group_size": 1, "block_type": "llama",
        "d_model": 4096, "embedding_dropout": 0.0, "embedding_size": 126464,
        "eos_token_id": 126081, "flash_attention": False, "include_bias": False,
        "include_qkv_bias": False, "init_cutoff_factor": None, "init_device": "meta",
        "init_fn": "mitchell", "init_std": 0.02, "input_emb_norm": False, "layer_norm_type": "rms",
        "layer_norm_with_affine": True, "mask_token_id": 126336, "max_sequence_length": 4096,
        "mlp_hidden_size": 12288, "mlp_ratio": 4, "model_type": "llada",
        "multi_query_attention": None, "n_heads": 32, "n_kv_heads": 32, "n_layers": 32,
        "pad_token_id": 126081, "precision": "amp_bf16", "residual_dropout": 0.0,
        "rms_norm_eps": 1e-05, "rope": True, "rope_full_precision": True, "rope_theta": 500000.0,
        "scale_logits": False, "torch_dtype": "bfloat16", "transformers_version": "4.46.3",
        "use_cache": False, "vocab_size": 126464, "weight_tying": False,
    },
}

# what the real tokenizers give (ids of the special tokens, size, class, context)
REAL_TOKENIZERS: dict[str, dict] = {
    "bert-base-uncased": {"class": "BertTokenizer", "kind": "WordPiece", "size": 30522,
                          "special": {"[PAD]": 0, "[UNK]": 100, "[CLS]": 101, "[SEP]": 102,
                                      "[MASK]": 103}, "model_max_length": 512},
    "gpt2": {"class": "GPT2Tokenizer", "kind": "byte-level BPE", "size": 50257,
             "special": {"<|endoftext|>": 50256}, "model_max_length": 1024},
    "TinyLlama/TinyLlama-1.1B-Chat-v1.0": {
        "class": "LlamaTokenizer", "kind": "sentencepiece-style BPE with byte fallback",
        "size": 32000, "special": {"<unk>": 0, "<s>": 1, "</s>": 2}, "model_max_length": 2048},
    "roberta-base": {"class": "RobertaTokenizer", "kind": "byte-level BPE", "size": 50265,
                     "special": {"<s>": 0, "<pad>": 1, "</s>": 2, "<unk>": 3, "<mask>": 50264},
                     "model_max_length": 512},
    "GSAI-ML/LLaDA-8B-Instruct": {
        "class": "PreTrainedTokenizerFast", "kind": "BPE from tokenizer.json", "size": 126349,
        "special": {"<|startoftext|>": 126080, "<|endoftext|>": 126081, "[CLS]": 126082,
                    "[gMASK]": 126083, "<|mdm_mask|>": 126336, "<role>": 126340,
                    "</role>": 126341, "<|start_header_id|>": 126346,
                    "<|end_header_id|>": 126347, "<|eot_id|>": 126348}},
}

# TinyLlama-1.1B-Chat-v1.0's chat template (the Zephyr one), verbatim from its tokenizer_config.json
TINYLLAMA_CHAT_TEMPLATE = (
    "{% for message in messages %}\n"
    "{% if message['role'] == 'user' %}\n"
    "{{ '<|user|>\n' + message['content'] + eos_token }}\n"
    "{% elif message['role'] == 'system' %}\n"
    "{{ '<|system|>\n' + message['content'] + eos_token }}\n"
    "{% elif message['role'] == 'assistant' %}\n"
    "{{ '<|assistant|>\n'  + message['content'] + eos_token }}\n"
    "{% endif %}\n"
    "{% if loop.last and add_generation_prompt %}\n"
    "{{ '<|assistant|>' }}\n"
    "{% endif %}\n"
    "{% endfor %}"
)

# LLaDA-8B-Instruct's chat template, verbatim from its tokenizer_config.json
LLADA_CHAT_TEMPLATE = (
    "{% set loop_messages = messages %}{% for message in loop_messages %}"
    "{% set content = '<|start_header_id|>' + message['role'] + '<|end_header_id|>\n\n'"
    "+ message['content'] | trim + '<|eot_id|>' %}"
    "{% if loop.index0 == 0 %}{% set content = bos_token + content %}{% endif %}"
    "{{ content }}{% endfor %}{{ '<|start_header_id|>assistant<|end_header_id|>\n\n' }}"
)

# Gemma-style turn template for the DiffusionGemma stand-in (the real checkpoint's template was
# not readable offline; this is the Gemma 3 form, see the notes)
GEMMA_CHAT_TEMPLATE = (
    "{{ bos_token }}{% for message in messages %}"
    "{% set role = 'model' if message['role'] == 'assistant' else message['role'] %}"
    "{{ '<start_of_turn>' + role + '\n' + message['content'] | trim + '<end_of_turn>\n' }}"
    "{% endfor %}{% if add_generation_prompt %}{{ '<start_of_turn>model\n' }}{% endif %}"
)

HUB_ID = {
    "bert": "bert-base-uncased",
    "gpt2": "gpt2",
    "tinyllama": "TinyLlama/TinyLlama-1.1B-Chat-v1.0",
    "roberta": "roberta-base",
    "llada": "GSAI-ML/LLaDA-8B-Instruct",
    "diffusiongemma": "google/diffusiongemma-26B-A4B-it",
}


def real_config(kind: str) -> dict:
    """The real config.json values of the checkpoint a stand-in kind imitates (a copy)."""
    hub = HUB_ID.get(kind, kind)
    if hub not in REAL_CONFIGS:
        raise KeyError(f"no real config recorded for {kind!r} (DiffusionGemma's was not readable offline)")
    return json.loads(json.dumps(REAL_CONFIGS[hub]))


# ----------------------------------------------------------------------------- corpus

_NAMES = ["Alice", "Bob", "Carol", "David", "Emma", "Frank", "Grace", "Henry", "Iris", "Jack"]
_NOUNS = ["cat", "dog", "river", "garden", "teacher", "student", "city", "mountain", "book",
          "window", "train", "market", "doctor", "child", "forest", "song", "letter", "table",
          "bridge", "village", "computer", "kitchen", "ocean", "museum", "farmer", "painter"]
_ADJS = ["small", "large", "quiet", "bright", "old", "young", "happy", "cold", "warm", "green",
         "busy", "strange", "famous", "gentle", "heavy", "simple"]
_VERBS = ["sees", "likes", "finds", "builds", "reads", "watches", "visits", "paints", "follows",
          "remembers", "carries", "opens", "cleans", "describes", "answers", "helps"]
_PLACES = ["in the morning", "near the station", "after dinner", "during the storm",
           "at the end of the road", "before the meeting", "under the old tree", "by the sea"]
_CAPITALS = [("japan", "tokyo"), ("france", "paris"), ("italy", "rome"), ("spain", "madrid"),
             ("germany", "berlin"), ("egypt", "cairo"), ("canada", "ottawa"), ("peru", "lima"),
             ("kenya", "nairobi"), ("norway", "oslo"), ("greece", "athens"), ("chile", "santiago")]


def corpus(n: int = 400, seed: int = 0) -> list[str]:
    """n generated English sentences (seeded): names, numbers, punctuation, a few accents."""
    rng = random.Random(seed)
    out = []
    for i in range(n):
        form = i % 8
        if form == 0:
            country, city = rng.choice(_CAPITALS)
            out.append(f"The capital of {country} is {city}.")
        elif form == 1:
            out.append(f"{rng.choice(_NAMES)} {rng.choice(_VERBS)} the {rng.choice(_ADJS)} "
                       f"{rng.choice(_NOUNS)} {rng.choice(_PLACES)}.")
        elif form == 2:
            out.append(f"Why does the {rng.choice(_NOUNS)} look so {rng.choice(_ADJS)} today?")
        elif form == 3:
            out.append(f"There are {rng.randint(2, 999)} {rng.choice(_NOUNS)}s and "
                       f"{rng.randint(2, 99)} {rng.choice(_NOUNS)}s in the {rng.choice(_NOUNS)}.")
        elif form == 4:
            out.append(f"\"{rng.choice(_ADJS).capitalize()} work,\" said {rng.choice(_NAMES)}, "
                       f"\"is better than none!\"")
        elif form == 5:
            out.append(f"In {rng.randint(1900, 2030)}, the {rng.choice(_ADJS)} {rng.choice(_NOUNS)} "
                       f"moved to the {rng.choice(_NOUNS)}; nobody knew why.")
        elif form == 6:
            out.append(f"{rng.choice(_NAMES)} ordered a café au lait at the naïve "
                       f"{rng.choice(_NOUNS)}'s stall for {rng.randint(1, 9)}.{rng.randint(10, 99)} euros.")
        else:
            a, b = rng.randint(1, 50), rng.randint(1, 50)
            out.append(f"Question: what is {a} plus {b}? Answer: {a + b}.")
    return out


# ----------------------------------------------------------------------------- helpers

def _fill(vocab: dict[str, int], size: int, name, reserved: set[int] = frozenset()) -> dict[str, int]:
    """Pad a vocabulary with unreachable filler tokens (``name(k)``) up to ``size`` ids."""
    used = set(vocab.values()) | set(reserved)
    k = 0
    for i in range(size):
        if i in used:
            continue
        while name(k) in vocab:
            k += 1
        vocab[name(k)] = i
        k += 1
    return vocab


def _train_bpe(lines, *, byte_level: bool, vocab_size: int, specials=(), byte_fallback=False):
    """A BPE (vocab, merges) trained on ``lines``: byte-level (GPT-2/RoBERTa) or metaspace."""
    from tokenizers import Tokenizer, models, pre_tokenizers, trainers

    tok = Tokenizer(models.BPE(byte_fallback=byte_fallback))
    if byte_level:
        tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
        alphabet = pre_tokenizers.ByteLevel.alphabet()
    else:
        tok.pre_tokenizer = pre_tokenizers.Metaspace(replacement="▁", prepend_scheme="first")
        alphabet = []
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, min_frequency=2, show_progress=False,
                                  special_tokens=list(specials), initial_alphabet=alphabet)
    tok.train_from_iterator(lines, trainer)
    model = json.loads(tok.to_str())["model"]
    merges = [tuple(m.split(" ")) if isinstance(m, str) else tuple(m) for m in model["merges"]]
    return model["vocab"], merges


def _trained_order(vocab: dict[str, int], drop=()) -> list[str]:
    return [t for t, _ in sorted(vocab.items(), key=lambda kv: kv[1]) if t not in drop]


def _seeded_model(model_cls, config, seed: int, dtype=None):
    import torch

    torch.manual_seed(seed)
    model = model_cls(config)
    if dtype is not None:
        model = model.to(dtype)
    return model.eval()


def _record(folder: Path, kind: str, n_layers: int, real_layers: int | None, deviations: list[str],
            seed: int, extra: dict | None = None) -> None:
    facts = {"kind": kind, "hub_id": HUB_ID[kind], "num_layers": n_layers,
             "real_num_layers": real_layers, "seed": seed, "deviations": deviations}
    facts.update(extra or {})
    (folder / "standin.json").write_text(json.dumps(facts, indent=2) + "\n")
    lines = [f"# Stand-in for {HUB_ID[kind]}", "",
             "Built offline by tests/standins.py: the real architecture and config.json values,",
             "random seeded weights, a tokenizer of the same kind trained on generated sentences.",
             "", f"- layers: {n_layers} (the real checkpoint has {real_layers or 'an unknown number of'})"]
    lines += [f"- {d}" for d in deviations]
    (folder / "README.md").write_text("\n".join(lines) + "\n")


def _prepare(folder) -> Path:
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    return folder


# ----------------------------------------------------------------------------- BERT

def bert_tokenizer(lines: list[str] | None = None):
    """WordPiece, lower-cased, bert-base-uncased's special ids ([PAD] 0, [UNK] 100, [CLS] 101,
    [SEP] 102, [MASK] 103, [unusedN] around them) padded to 30522 tokens."""
    from tokenizers import Tokenizer, models, normalizers, pre_tokenizers, trainers
    from transformers import BertTokenizer

    lines = lines or corpus()
    tok = Tokenizer(models.WordPiece(unk_token="[UNK]"))
    tok.normalizer = normalizers.BertNormalizer(lowercase=True)
    tok.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    tok.train_from_iterator(lines, trainers.WordPieceTrainer(
        vocab_size=3000, min_frequency=1, show_progress=False, special_tokens=["[UNK]"]))
    trained = _trained_order(json.loads(tok.to_str())["model"]["vocab"], drop={"[UNK]"})
    vocab = {"[PAD]": 0}
    vocab.update({f"[unused{i}]": 1 + i for i in range(99)})
    vocab.update({"[UNK]": 100, "[CLS]": 101, "[SEP]": 102, "[MASK]": 103})
    vocab.update({f"[unused{99 + i}]": 104 + i for i in range(999 - 104)})
    for t in trained:
        vocab.setdefault(t, len(vocab))
    unused = iter(range(994, 10**6))
    _fill(vocab, 30522, lambda _k: f"[unused{next(unused)}]")
    return BertTokenizer(vocab=vocab, do_lower_case=True, model_max_length=512)


def build_bert_base(folder, n_layers: int = 2, seed: int = 0) -> Path:
    from transformers import BertConfig, BertForMaskedLM

    folder = _prepare(folder)
    values = real_config("bert")
    values.pop("architectures")
    values.pop("model_type")
    values["num_hidden_layers"] = n_layers
    config = BertConfig(**values)
    config.architectures = ["BertForMaskedLM"]
    _seeded_model(BertForMaskedLM, config, seed).save_pretrained(folder)
    bert_tokenizer().save_pretrained(folder)
    _record(folder, "bert", n_layers, 12, ["WordPiece vocabulary trained here; real special ids, "
                                           "padded with [unusedN] to 30522"], seed)
    return folder


# ----------------------------------------------------------------------------- GPT-2

def gpt2_tokenizer(lines: list[str] | None = None):
    """Byte-level BPE; <|endoftext|> at 50256 (bos = eos = unk), padded to 50257 tokens."""
    from transformers import GPT2Tokenizer

    vocab_t, merges = _train_bpe(lines or corpus(), byte_level=True, vocab_size=3000)
    vocab = {t: i for i, t in enumerate(_trained_order(vocab_t))}
    vocab["<|endoftext|>"] = 50256
    _fill(vocab, 50257, lambda k: f"<|standin_unused_{k}|>")
    return GPT2Tokenizer(vocab=vocab, merges=merges, model_max_length=1024)


def build_gpt2(folder, n_layers: int = 2, seed: int = 0) -> Path:
    from transformers import GPT2Config, GPT2LMHeadModel

    folder = _prepare(folder)
    values = real_config("gpt2")
    values.pop("architectures")
    values.pop("model_type")
    values["n_layer"] = n_layers
    config = GPT2Config(**values)
    config.architectures = ["GPT2LMHeadModel"]
    _seeded_model(GPT2LMHeadModel, config, seed).save_pretrained(folder)
    gpt2_tokenizer().save_pretrained(folder)
    _record(folder, "gpt2", n_layers, 12, ["byte-level BPE trained here; <|endoftext|> at 50256, "
                                           "padded with unreachable fillers to 50257"], seed)
    return folder


# ----------------------------------------------------------------------------- RoBERTa

def roberta_tokenizer(lines: list[str] | None = None):
    """Byte-level BPE with RoBERTa's ids (<s> 0, <pad> 1, </s> 2, <unk> 3, <mask> 50264,
    lstrip) and post-processing (<s> A </s></s> B </s>), padded to 50265 tokens."""
    from tokenizers import AddedToken
    from transformers import RobertaTokenizer

    vocab_t, merges = _train_bpe(lines or corpus(), byte_level=True, vocab_size=3000)
    vocab = {"<s>": 0, "<pad>": 1, "</s>": 2, "<unk>": 3}
    for t in _trained_order(vocab_t):
        vocab.setdefault(t, len(vocab))
    vocab["<mask>"] = 50264
    _fill(vocab, 50265, lambda k: f"<|standin_unused_{k}|>")
    mask = AddedToken("<mask>", lstrip=True, rstrip=False, normalized=False, special=True)
    return RobertaTokenizer(vocab=vocab, merges=merges, mask_token=mask, model_max_length=512)


def build_roberta_base(folder, n_layers: int = 2, seed: int = 0) -> Path:
    from transformers import RobertaConfig, RobertaForMaskedLM

    folder = _prepare(folder)
    values = real_config("roberta")
    values.pop("architectures")
    values.pop("model_type")
    values["num_hidden_layers"] = n_layers
    config = RobertaConfig(**values)
    config.architectures = ["RobertaForMaskedLM"]
    _seeded_model(RobertaForMaskedLM, config, seed).save_pretrained(folder)
    roberta_tokenizer().save_pretrained(folder)
    _record(folder, "roberta", n_layers, 12, ["byte-level BPE trained here; real special ids, "
                                              "padded with unreachable fillers to 50265"], seed)
    return folder


# ----------------------------------------------------------------------------- TinyLlama

def llama_tokenizer(lines: list[str] | None = None):
    """Llama/sentencepiece-style BPE with byte fallback: <unk> 0, <s> 1, </s> 2, <0x00>..<0xFF>
    at 3..258, merges after; padded to 32000 tokens; TinyLlama's chat template."""
    from transformers import LlamaTokenizer

    vocab_t, merges = _train_bpe(lines or corpus(), byte_level=False, vocab_size=3000,
                                 specials=["<unk>", "<s>", "</s>"], byte_fallback=True)
    vocab = {"<unk>": 0, "<s>": 1, "</s>": 2}
    vocab.update({f"<0x{b:02X}>": 3 + b for b in range(256)})
    for t in _trained_order(vocab_t):
        vocab.setdefault(t, len(vocab))
    _fill(vocab, 32000, lambda k: f"<standin_unused_{k}>")
    tok = LlamaTokenizer(vocab=vocab, merges=merges, model_max_length=2048, pad_token="</s>",
                         add_bos_token=True, add_eos_token=False, legacy=False)
    tok.chat_template = TINYLLAMA_CHAT_TEMPLATE
    return tok


# TinyLlama narrowed for long-prompt tests on CPU: the real head_dim (64), GQA group (8 query
# heads per kv head), MLP ratio (2.75), vocabulary, RoPE and context; 1/4 of the width
TINYLLAMA_NARROW = {"hidden_size": 512, "intermediate_size": 1408, "num_attention_heads": 8,
                    "num_key_value_heads": 1}


def build_tinyllama(folder, n_layers: int = 2, seed: int = 0, width: str = "real") -> Path:
    """TinyLlama-1.1B-Chat-v1.0 stand-in (bfloat16 weights as the real checkpoint).

    width="real" keeps hidden 2048 / 32 heads / 4 kv heads / MLP 5632 (2 layers: 220 M
    parameters, 420 MB). width="narrow" (TINYLLAMA_NARROW) is the deviation for 2048-token tests:
    on 2 CPU cores one real-width forward over 2048 tokens takes about a minute in float32 and
    several in bfloat16 (see the notes)."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    folder = _prepare(folder)
    values = real_config("tinyllama")
    values.pop("architectures")
    values.pop("model_type")
    values.pop("torch_dtype")
    values["num_hidden_layers"] = n_layers
    if width == "narrow":
        values.update(TINYLLAMA_NARROW)
    elif width != "real":
        raise ValueError("width is 'real' or 'narrow'")
    config = LlamaConfig(**values)
    config.architectures = ["LlamaForCausalLM"]
    model = _seeded_model(LlamaForCausalLM, config, seed, dtype=torch.bfloat16)
    model.config.dtype = torch.bfloat16  # the real checkpoint's torch_dtype
    model.save_pretrained(folder)
    llama_tokenizer().save_pretrained(folder)
    _record(folder, "tinyllama", n_layers, 22,
            ["BPE with byte fallback trained here; real special ids, padded to 32000",
             "weights in bfloat16, as the real checkpoint (transformers 5 loads them as bfloat16 "
             "unless dtype= is given)"]
            + ([f"narrow: {TINYLLAMA_NARROW} (real: hidden 2048, 32 heads, 4 kv heads, mlp 5632)"]
               if width == "narrow" else []), seed, {"width": width})
    return folder


# ----------------------------------------------------------------------------- LLaDA

# The stand-in's remote code. Written for these tests from what LLaDA's public modelling code
# does (see the notes); same config keys, class names, module tree and parameter names, the same
# attention computation (bidirectional, F.scaled_dot_product_attention, no weights returned) and
# the same transformers-5 incompatibilities unless ``transformers5_ready``.
_LLADA_CONFIGURATION = '''\
"""LLaDA configuration (test stand-in for GSAI-ML/LLaDA-8B-Instruct's configuration_llada.py).

Same keys and defaults as the real one (an OLMo-style dataclass of model settings, merged into a
PretrainedConfig). Like the real one it passes ``use_cache`` to PretrainedConfig, which
transformers 5 drops: ``config.use_cache`` does not exist after loading.
"""
from transformers import AutoConfig, PretrainedConfig

MODEL_DEFAULTS = {
    "d_model": 768, "n_heads": 12, "n_kv_heads": None, "n_layers": 12, "mlp_ratio": 4,
    "mlp_hidden_size": None, "activation_type": "swiglu", "block_type": "sequential",
    "block_group_size": 1, "alibi": False, "alibi_bias_max": 8.0, "rope": False,
    "rope_full_precision": True, "flash_attention": False, "attention_dropout": 0.1,
    "multi_query_attention": None, "attention_layer_norm": False, "residual_dropout": 0.1,
    "embedding_dropout": 0.1, "input_emb_norm": False, "layer_norm_type": "default",
    "layer_norm_with_affine": True, "rms_norm_eps": 1e-05, "attention_layer_norm_with_affine": True,
    "max_sequence_length": 1024, "rope_theta": 10000.0, "include_qkv_bias": False,
    "include_bias": False, "bias_for_layer_norm": None, "scale_logits": False, "vocab_size": 50257,
    "embedding_size": 50304, "weight_tying": True, "eos_token_id": 50256, "pad_token_id": 50256,
    "mask_token_id": 50256, "init_device": None, "init_fn": "normal", "init_std": 0.02,
    "init_cutoff_factor": None, "precision": None,
}


class LLaDAConfig(PretrainedConfig):
    model_type = "llada"
    keys_to_ignore_at_inference = ["past_key_values"]

    def __init__(self, use_cache: bool = False, **kwargs):
        values = dict(MODEL_DEFAULTS)
        values.update(kwargs)
        values["use_cache"] = use_cache
        values["architectures"] = values.get("architectures", ["LLaDAModelLM"])
        super().__init__(**values)

    @property
    def num_attention_heads(self):
        return self.n_heads

    @property
    def num_hidden_layers(self):
        return self.n_layers

    @property
    def hidden_size(self):
        return self.d_model


AutoConfig.register("llada", LLaDAConfig)
'''

_LLADA_MODELING = '''\
"""LLaDA model (test stand-in for GSAI-ML/LLaDA-8B-Instruct's modeling_llada.py).

Module tree and parameter names as the real checkpoint:
  model.transformer.wte / emb_drop / blocks[i] / ln_f / ff_out
  blocks[i]: attn_norm, ff_norm (RMS), q_proj, k_proj, v_proj, attn_out, ff_proj (gate),
             up_proj, ff_out, act (SiLU), rotary_emb, dropout
Attention is bidirectional and computed by F.scaled_dot_product_attention inside
``LLaDALlamaBlock._scaled_dot_product_attention(q, k, v, attn_mask, dropout_p, is_causal)``
(q, k after RoPE, shape [B, heads, T, head_dim]); attention weights are never returned and
``output_attentions=True`` raises ValueError, as in the real model.
"""
import math
from typing import NamedTuple, Optional

import torch
import torch.nn as nn
import torch.nn.functional as F
from transformers import PreTrainedModel
from transformers.modeling_outputs import CausalLMOutputWithPast
from transformers.models.auto import AutoModel

from .configuration_llada import MODEL_DEFAULTS, LLaDAConfig

TRANSFORMERS5_READY = __TRANSFORMERS5_READY__


class ModelConfig:
    """The plain model settings the modules read (the real code uses a dataclass)."""

    def __init__(self, config):
        for key in MODEL_DEFAULTS:
            setattr(self, key, getattr(config, key, MODEL_DEFAULTS[key]))

    @property
    def effective_n_kv_heads(self) -> int:
        if self.n_kv_heads is None:
            return 1 if self.multi_query_attention is True else self.n_heads
        return self.n_kv_heads


def _layer_norm_bias(config) -> bool:
    return config.include_bias if config.bias_for_layer_norm is None else config.bias_for_layer_norm


class RMSLayerNorm(nn.Module):
    def __init__(self, config, size=None):
        super().__init__()
        self.eps = config.rms_norm_eps
        size = size or config.d_model
        self.weight = nn.Parameter(torch.ones(size)) if config.layer_norm_with_affine else None
        has_bias = config.layer_norm_with_affine and _layer_norm_bias(config)
        self.bias = nn.Parameter(torch.zeros(size)) if has_bias else None

    def forward(self, x):
        dtype = x.dtype
        with torch.autocast(device_type=x.device.type, enabled=False):
            h = x.float()
            h = h * torch.rsqrt(h.pow(2).mean(-1, keepdim=True) + self.eps)
            h = h.to(dtype)
        if self.weight is None:
            return h
        return self.weight * h + (self.bias if self.bias is not None else 0)


class LayerNorm(nn.Module):
    def __init__(self, config, size=None):
        super().__init__()
        size = size or config.d_model
        self.shape = (size,)
        self.weight = nn.Parameter(torch.ones(size)) if config.layer_norm_with_affine else None
        has_bias = config.layer_norm_with_affine and _layer_norm_bias(config)
        self.bias = nn.Parameter(torch.zeros(size)) if has_bias else None

    def forward(self, x):
        return F.layer_norm(x, self.shape, self.weight, self.bias, eps=1e-05)


def build_norm(config):
    if config.layer_norm_type == "rms":
        return RMSLayerNorm(config)
    if config.layer_norm_type == "default":
        return LayerNorm(config)
    raise NotImplementedError(f"layer_norm_type {config.layer_norm_type!r} (stand-in)")


class RotaryEmbedding(nn.Module):
    """RoPE on [B, heads, T, head_dim]: rotate-half form, angles pos * theta^(-2i/head_dim),
    cos/sin duplicated over the two halves; computed in float32 when rope_full_precision."""

    def __init__(self, config):
        super().__init__()
        self.config = config
        self._cache = {}

    def get_rotary_embedding(self, seq_len, device):
        key = (device, seq_len)
        if key not in self._cache:
            dim = self.config.d_model // self.config.n_heads
            inv_freq = 1.0 / (self.config.rope_theta
                              ** (torch.arange(0, dim, 2, device=device, dtype=torch.float) / dim))
            pos = torch.arange(seq_len, device=device, dtype=torch.float)
            angles = torch.outer(pos, inv_freq)
            angles = torch.cat((angles, angles), dim=-1)
            self._cache = {key: (angles.sin()[None, None], angles.cos()[None, None])}
        return self._cache[key]

    @staticmethod
    def rotate_half(x):
        first, second = x.chunk(2, dim=-1)
        return torch.cat((-second, first), dim=-1)

    def apply_rotary_pos_emb(self, sin, cos, t):
        return ((t * cos) + (self.rotate_half(t) * sin)).to(t.dtype)

    def forward(self, q, k):
        q_, k_ = (q.float(), k.float()) if self.config.rope_full_precision else (q, k)
        with torch.autocast(device_type=q.device.type, enabled=False):
            q_len, k_len = q_.shape[-2], k_.shape[-2]
            sin, cos = self.get_rotary_embedding(k_len, q_.device)
            sin, cos = sin.type_as(q_), cos.type_as(q_)
            q_ = self.apply_rotary_pos_emb(sin[:, :, k_len - q_len:k_len], cos[:, :, k_len - q_len:k_len], q_)
            k_ = self.apply_rotary_pos_emb(sin, cos, k_)
        return q_.type_as(q), k_.type_as(k)


class Dropout(nn.Dropout):
    def forward(self, x):
        return x if self.p == 0.0 else F.dropout(x, self.p, self.training, self.inplace)


def build_activation(config):
    kind = config.activation_type
    if kind == "silu":
        return nn.SiLU()
    if kind == "gelu":
        return nn.GELU(approximate="none")
    if kind == "relu":
        return nn.ReLU()
    raise NotImplementedError(f"activation_type {kind!r} (stand-in)")


class LLaDALlamaBlock(nn.Module):
    def __init__(self, layer_id, config):
        super().__init__()
        self.layer_id = layer_id
        self.config = config
        d, heads = config.d_model, config.n_heads
        head_dim = d // heads
        kv_dim = config.effective_n_kv_heads * head_dim
        hidden = config.mlp_hidden_size if config.mlp_hidden_size is not None else config.mlp_ratio * d
        self.hidden_size = hidden
        qkv_bias = config.include_bias or config.include_qkv_bias
        self.dropout = Dropout(config.residual_dropout)
        self.act = build_activation(config)
        self.attn_out = nn.Linear(d, d, bias=config.include_bias)
        self.ff_out = nn.Linear(hidden, d, bias=config.include_bias)
        self.rotary_emb = RotaryEmbedding(config) if config.rope else None
        self.attn_norm = build_norm(config)
        self.ff_norm = build_norm(config)
        self.q_proj = nn.Linear(d, d, bias=qkv_bias)
        self.k_proj = nn.Linear(d, kv_dim, bias=qkv_bias)
        self.v_proj = nn.Linear(d, kv_dim, bias=qkv_bias)
        self.ff_proj = nn.Linear(d, hidden, bias=config.include_bias)
        self.up_proj = nn.Linear(d, hidden, bias=config.include_bias)

    def _scaled_dot_product_attention(self, q, k, v, attn_mask=None, dropout_p=0.0, is_causal=False):
        n_q, n_kv = q.size(1), k.size(1)
        if n_q != n_kv:
            k = k.repeat_interleave(n_q // n_kv, dim=1)
            v = v.repeat_interleave(n_q // n_kv, dim=1)
        # a masked diffusion model: never causal
        return F.scaled_dot_product_attention(q, k, v, attn_mask=attn_mask, dropout_p=dropout_p,
                                              is_causal=False)

    def attention(self, q, k, v, attention_bias=None, layer_past=None, use_cache=False):
        B, T, C = q.size()
        heads, kv_heads = self.config.n_heads, self.config.effective_n_kv_heads
        head_dim = C // heads
        q = q.view(B, T, heads, head_dim).transpose(1, 2)
        k = k.view(B, T, kv_heads, head_dim).transpose(1, 2)
        v = v.view(B, T, kv_heads, head_dim).transpose(1, 2)
        if layer_past is not None:
            k = torch.cat((layer_past[0], k), dim=-2)
            v = torch.cat((layer_past[1], v), dim=-2)
        present = (k, v) if use_cache else None
        q_len, k_len = q.shape[-2], k.shape[-2]
        if self.rotary_emb is not None:
            q, k = self.rotary_emb(q, k)
        if attention_bias is not None:
            attention_bias = attention_bias[:, :, k_len - q_len:k_len, :k_len].to(q.dtype)
        att = self._scaled_dot_product_attention(
            q, k, v, attn_mask=attention_bias,
            dropout_p=self.config.attention_dropout if self.training else 0.0, is_causal=False)
        att = att.transpose(1, 2).contiguous().view(B, T, C)
        return self.attn_out(att), present

    def forward(self, x, attention_bias=None, layer_past=None, use_cache=False):
        h = self.attn_norm(x)
        att, cache = self.attention(self.q_proj(h), self.k_proj(h), self.v_proj(h), attention_bias,
                                    layer_past=layer_past, use_cache=use_cache)
        x = x + self.dropout(att)
        h = self.ff_norm(x)
        h = self.act(self.ff_proj(h)) * self.up_proj(h)
        x = x + self.dropout(self.ff_out(h))
        return x, cache


class LLaDAOutput(NamedTuple):
    logits: torch.Tensor
    attn_key_values: Optional[list]
    hidden_states: Optional[tuple]


class LLaDAModel(nn.Module):
    def __init__(self, config, init_params: bool = True):
        super().__init__()
        self.config = config
        if config.block_type != "llama" or config.block_group_size != 1:
            raise NotImplementedError("the stand-in builds LLaDA's llama blocks, ungrouped")
        if config.alibi or not config.rope:
            raise NotImplementedError("LLaDA uses RoPE")
        # as the real model: changes the process-wide CUDA SDPA backends
        torch.backends.cuda.enable_flash_sdp(True)
        torch.backends.cuda.enable_mem_efficient_sdp(False)
        vocab = config.embedding_size or config.vocab_size
        self.transformer = nn.ModuleDict(dict(
            wte=nn.Embedding(vocab, config.d_model),
            emb_drop=Dropout(config.embedding_dropout),
            ln_f=build_norm(config),
            blocks=nn.ModuleList([LLaDALlamaBlock(i, config) for i in range(config.n_layers)]),
        ))
        if not config.weight_tying:
            self.transformer.update({"ff_out": nn.Linear(config.d_model, vocab, bias=config.include_bias)})

    def forward(self, input_ids, input_embeddings=None, attention_mask=None, attention_bias=None,
                past_key_values=None, use_cache=False, last_logits_only=False,
                output_hidden_states=None):
        if past_key_values is not None or use_cache:
            raise AssertionError("The kvcache is not supported for MDM (LLaDA).")
        x = self.transformer.wte(input_ids) if input_embeddings is None else input_embeddings
        if self.config.input_emb_norm:
            x = x * (self.config.d_model ** 0.5)
        x = self.transformer.emb_drop(x)
        B, T = x.shape[:2]
        if attention_mask is not None and 0.0 in attention_mask:
            mask = attention_mask.to(torch.float).view(B, -1)[:, None, None, :]
            mask = (1.0 - mask) * torch.finfo(mask.dtype).min
        else:
            mask = None
        if attention_bias is not None or mask is not None:
            if attention_bias is None:  # bidirectional: zeros
                attention_bias = torch.zeros(1, 1, T, T, device=x.device, dtype=torch.float)
            elif attention_bias.dtype in (torch.int8, torch.bool):
                attention_bias = attention_bias.to(torch.float)
                attention_bias.masked_fill_(attention_bias == 0.0, torch.finfo(torch.float).min)
            attention_bias = attention_bias[:, :, :T, :T].to(torch.float)
            if mask is not None:
                attention_bias = attention_bias + mask
                attention_bias = attention_bias.clamp(min=torch.finfo(torch.float).min)
        hidden = []
        for block in self.transformer.blocks:
            if output_hidden_states:
                hidden.append(x)
            x, _ = block(x, attention_bias=attention_bias)
        if last_logits_only:
            x = x[:, -1:, :]
        x = self.transformer.ln_f(x)
        if output_hidden_states:
            hidden.append(x)  # after the final norm, as HuggingFace models do
        if self.config.weight_tying:
            logits = F.linear(x, self.transformer.wte.weight)
        else:
            logits = self.transformer.ff_out(x)
        if self.config.scale_logits:
            logits = logits / math.sqrt(self.config.d_model)
        return LLaDAOutput(logits, None, tuple(hidden) if output_hidden_states else None)


class LLaDAModelLM(PreTrainedModel):
    """A bare wrapper, as the real one."""

    config_class = LLaDAConfig
    base_model_prefix = "model"
    _no_split_modules = ["LLaDABlock", "LLaDASequentialBlock", "LLaDALlamaBlock"]

    def __init__(self, config, model=None, init_params: bool = False):
        super().__init__(config)
        self.model = model or LLaDAModel(ModelConfig(config), init_params=init_params)
        if TRANSFORMERS5_READY:
            self.post_init()

    def forward(self, input_ids=None, inputs_embeds=None, attention_mask=None, attention_bias=None,
                past_key_values=None, labels=None, use_cache=None, output_attentions=None,
                output_hidden_states=None, return_dict=None, cache_position=None, **kwargs):
        if use_cache is None:  # the real line; transformers 5 has dropped config.use_cache
            use_cache = getattr(self.config, "use_cache", False) if TRANSFORMERS5_READY \
                else self.config.use_cache
        if output_attentions:
            raise ValueError("output_attentions is not yet supported in LLaDA")
        if return_dict is None:
            return_dict = getattr(self.config, "return_dict", True)
        out = self.model(input_ids=input_ids, input_embeddings=inputs_embeds,
                         attention_mask=attention_mask, attention_bias=attention_bias,
                         past_key_values=past_key_values, use_cache=use_cache,
                         output_hidden_states=output_hidden_states)
        if labels is not None:
            import warnings

            warnings.warn("Note that for LLaDA, you cannot calculate the loss here.", UserWarning)
        if not return_dict:
            return (out.logits,) + tuple(out[1:])
        return CausalLMOutputWithPast(logits=out.logits, past_key_values=out.attn_key_values,
                                      hidden_states=out.hidden_states)

    def can_generate(self) -> bool:
        return True

    def get_input_embeddings(self):
        return self.model.transformer.wte

    def set_input_embeddings(self, value):
        self.model.transformer.wte = value

    def get_output_embeddings(self):
        return self.model.transformer.wte if self.config.weight_tying else self.model.transformer.ff_out

    def set_output_embeddings(self, value):
        if self.config.weight_tying:
            self.model.transformer.wte = value
        else:
            self.model.transformer.ff_out = value

    if TRANSFORMERS5_READY:
        def tie_weights(self, *args, **kwargs):
            if self.config.weight_tying:
                self.model.transformer.ff_out = self.model.transformer.wte
    else:
        def tie_weights(self):  # the real signature: transformers 5 passes recompute_mapping=
            if self.config.weight_tying:
                self.model.transformer.ff_out = self.model.transformer.wte


AutoModel.register(LLaDAConfig, LLaDAModelLM)
'''

LLADA_SMALL = {"d_model": 64, "n_heads": 4, "n_kv_heads": 4, "mlp_hidden_size": 192}


def llada_tokenizer(lines: list[str] | None = None, size: int = 126349):
    """Byte-level BPE wrapped as PreTrainedTokenizerFast (LLaDA's class), with LLaDA-8B-Instruct's
    special tokens at their real ids (<|startoftext|> 126080 bos, <|endoftext|> 126081 eos/pad,
    <|mdm_mask|> 126336, <|start_header_id|> 126346, <|end_header_id|> 126347, <|eot_id|> 126348,
    <|reserved_token_N|> between) and its chat template."""
    from tokenizers import AddedToken, Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab_t, merges = _train_bpe(lines or corpus(), byte_level=True, vocab_size=3000)
    vocab = {t: i for i, t in enumerate(_trained_order(vocab_t))}
    first_special = 126080
    _fill(vocab, first_special, lambda k: f"<|standin_unused_{k}|>")
    special = {126080: "<|startoftext|>", 126081: "<|endoftext|>", 126082: "[CLS]",
               126083: "[gMASK]", 126336: "<|mdm_mask|>", 126340: "<role>", 126341: "</role>",
               126342: "<|arithmetic_start|>", 126343: "<|arithmetic_end|>",
               126344: "<|number_start|>", 126345: "<|number_end|>",
               126346: "<|start_header_id|>", 126347: "<|end_header_id|>", 126348: "<|eot_id|>"}
    for i in range(126084, 126340):
        special.setdefault(i, f"<|reserved_token_{i - 126084}|>")
    special = {i: t for i, t in special.items() if i < size}
    for i, t in special.items():
        vocab[t] = i
    tok = Tokenizer(models.BPE(vocab=vocab, merges=merges))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    tok.add_special_tokens([AddedToken(t, special=True, normalized=False)
                            for _, t in sorted(special.items())])
    out = PreTrainedTokenizerFast(
        tokenizer_object=tok, bos_token="<|startoftext|>", eos_token="<|endoftext|>",
        pad_token="<|endoftext|>", cls_token="[CLS]", mask_token="<|mdm_mask|>",
        additional_special_tokens=["<role>", "</role>", "<|arithmetic_start|>", "<|arithmetic_end|>",
                                   "<|number_start|>", "<|number_end|>"],
        clean_up_tokenization_spaces=False)
    out.chat_template = LLADA_CHAT_TEMPLATE
    return out


def _write_llada_code(folder: Path, transformers5_ready: bool) -> None:
    (folder / "configuration_llada.py").write_text(_LLADA_CONFIGURATION)
    (folder / "modeling_llada.py").write_text(
        _LLADA_MODELING.replace("__TRANSFORMERS5_READY__", repr(bool(transformers5_ready))))


def _llada_config_values(n_layers: int, shape: str) -> dict:
    values = real_config("llada")
    values["n_layers"] = n_layers
    if shape == "small":
        values.update(LLADA_SMALL)
    elif shape != "real":
        raise ValueError("shape is 'small' (d_model 64, 4 heads) or 'real' (the 8B dimensions)")
    return values


def build_llada(folder, n_layers: int = 2, seed: int = 0, shape: str = "small",
                transformers5_ready: bool = False, tokenizer: bool = True) -> Path:
    """LLaDA-8B-Instruct stand-in: remote code (configuration_llada.py, modeling_llada.py) written
    here, config.json with the real keys and values, bfloat16 weights (as the real checkpoint).

    shape="small": d_model 64, 4 heads (kv 4), mlp 192, but the *real* vocab_size/embedding_size
    126464 and the real token ids (mask 126336, eos = pad 126081): 16 M parameters, ~32 MB.
    shape="real": the 8B dimensions (d_model 4096, 32 heads, mlp 12288) with n_layers blocks, for
    a GPU benchmark (2 layers: 1.47 B parameters, 2.9 GB; weights written tensor by tensor).

    transformers5_ready=False keeps the real code's behaviour under transformers 5 (no
    post_init(), tie_weights() without kwargs, config.use_cache missing): plain from_pretrained
    fails exactly as on the real checkpoint; :func:`load_llada` is the shim that loads both.
    """
    import torch
    from safetensors.torch import save_file

    folder = _prepare(folder)
    values = _llada_config_values(n_layers, shape)
    values["transformers_version"] = "4.46.3"
    (folder / "config.json").write_text(json.dumps(values, indent=2, sort_keys=True) + "\n")
    (folder / "generation_config.json").write_text(json.dumps(
        {"_from_model_config": True, "eos_token_id": 126081, "pad_token_id": 126081,
         "transformers_version": "4.46.3"}, indent=2) + "\n")
    _write_llada_code(folder, transformers5_ready)

    d, vocab = values["d_model"], values["embedding_size"]
    heads, kv = values["n_heads"], values["n_kv_heads"]
    kv_dim = kv * (d // heads)
    hidden = values["mlp_hidden_size"]
    shapes = {"model.transformer.wte.weight": (vocab, d),
              "model.transformer.ln_f.weight": (d,),
              "model.transformer.ff_out.weight": (vocab, d)}
    for i in range(n_layers):
        p = f"model.transformer.blocks.{i}."
        shapes.update({p + "attn_norm.weight": (d,), p + "ff_norm.weight": (d,),
                       p + "q_proj.weight": (d, d), p + "k_proj.weight": (kv_dim, d),
                       p + "v_proj.weight": (kv_dim, d), p + "attn_out.weight": (d, d),
                       p + "ff_proj.weight": (hidden, d), p + "up_proj.weight": (hidden, d),
                       p + "ff_out.weight": (d, hidden)})
    gen = torch.Generator().manual_seed(seed)
    tensors = {}
    for name, shape in shapes.items():
        if len(shape) == 1:
            tensors[name] = torch.ones(shape, dtype=torch.bfloat16)
        else:  # fan-in scaled normal ("mitchell"-like), generated in bfloat16 chunks
            t = torch.empty(shape, dtype=torch.bfloat16)
            std = shape[1] ** -0.5
            for start in range(0, shape[0], 8192):
                rows = t[start:start + 8192]
                rows.copy_(torch.randn(rows.shape, generator=gen) * std)
            tensors[name] = t
    save_file(tensors, str(folder / "model.safetensors"), metadata={"format": "pt"})
    del tensors
    if tokenizer:
        llada_tokenizer().save_pretrained(folder)
    deviations = [f"shape {shape!r}: " + ("d_model 64, 4 heads, mlp 192; real vocab 126464 and real ids"
                                          if shape == "small" else "the real 8B dimensions"),
                  "remote code written for the tests (same keys, names, attention computation)",
                  "byte-level BPE tokenizer trained here with LLaDA's special tokens at their ids",
                  "transformers-5 ready" if transformers5_ready else
                  "not transformers-5 ready, like the real code: load with standins.load_llada"]
    _record(folder, "llada", n_layers, 32, deviations, seed,
            {"shape": shape, "transformers5_ready": transformers5_ready})
    return folder


def load_llada(folder, **kwargs):
    """Load LLaDA (the real checkpoint or a stand-in) under transformers 5, from the folder's own
    remote code, and return it in eval mode.

    Three things are needed that the real code does not do for transformers 5: call post_init()
    after __init__ (else from_pretrained fails: no ``all_tied_weights_keys``), accept keyword
    arguments in tie_weights(), and pass ``use_cache=False`` to every forward (config.use_cache is
    dropped by transformers 5). The classes are taken from the folder itself rather than through
    AutoConfig/AutoModel: the remote modules register "llada" globally when imported, after which
    AutoModel uses the first-loaded LLaDA code for every later LLaDA folder.
    """
    from transformers.dynamic_module_utils import get_class_from_dynamic_module

    folder = str(folder)
    auto_map = json.loads((Path(folder) / "config.json").read_text())["auto_map"]
    config_cls = get_class_from_dynamic_module(auto_map["AutoConfig"], folder)
    model_cls = get_class_from_dynamic_module(auto_map["AutoModel"], folder)
    from models.remote import fix_for_transformers5

    fix_for_transformers5(model_cls)  # what the project's loader does (post_init, tie_weights)
    kwargs.setdefault("attn_implementation", "eager")
    config = config_cls.from_pretrained(folder)
    return model_cls.from_pretrained(folder, config=config, **kwargs).eval()


# ----------------------------------------------------------------------------- DiffusionGemma

DIFFUSIONGEMMA_TINY_TEXT = {
    "vocab_size": 1024, "hidden_size": 64, "intermediate_size": 128, "num_attention_heads": 4,
    "num_key_value_heads": 2, "head_dim": 16, "max_position_embeddings": 4096,
    "sliding_window": 32, "num_experts": 4, "top_k_experts": 2, "moe_intermediate_size": 32,
    "use_bidirectional_attention": "vision", "rms_norm_eps": 1e-6,
    "pad_token_id": 0, "eos_token_id": 1, "bos_token_id": 2,
}
DIFFUSIONGEMMA_TINY_VISION = {
    "model_type": "gemma4_vision", "hidden_size": 32, "intermediate_size": 64,
    "num_hidden_layers": 1, "num_attention_heads": 2, "num_key_value_heads": 2, "head_dim": 16,
    "patch_size": 4, "position_embedding_size": 64,
}


def gemma_tokenizer(lines: list[str] | None = None, size: int = 1024):
    """Gemma-style BPE with byte fallback (GemmaTokenizer): <pad> 0, <eos> 1, <bos> 2, <unk> 3,
    <mask> 4, <start_of_turn> 5, <end_of_turn> 6, image tokens 7-9, <0x00>..<0xFF> 10..265."""
    from transformers import GemmaTokenizer

    vocab_t, merges = _train_bpe(lines or corpus(), byte_level=False, vocab_size=size - 266 + 32,
                                 specials=["<unk>"], byte_fallback=True)
    vocab = {"<pad>": 0, "<eos>": 1, "<bos>": 2, "<unk>": 3, "<mask>": 4, "<start_of_turn>": 5,
             "<end_of_turn>": 6, "<start_of_image>": 7, "<end_of_image>": 8, "<image_soft_token>": 9}
    vocab.update({f"<0x{b:02X}>": 10 + b for b in range(256)})
    for t in _trained_order(vocab_t):
        if len(vocab) >= size:
            break
        vocab.setdefault(t, len(vocab))
    merges = [m for m in merges if all(p in vocab for p in m) and "".join(m) in vocab]
    _fill(vocab, size, lambda k: f"<standin_unused_{k}>")
    tok = GemmaTokenizer(vocab=vocab, merges=merges, add_bos_token=True, add_eos_token=False,
                         additional_special_tokens=["<start_of_turn>", "<end_of_turn>"])
    tok.chat_template = GEMMA_CHAT_TEMPLATE
    return tok


def diffusiongemma_config(n_layers: int = 2, canvas_length: int = 8):
    """A tiny DiffusionGemmaConfig: text layers alternate sliding/full attention (the last is
    full, as the real one requires), MoE on every layer, and a 1-layer Gemma 4 vision tower
    (always built by the encoder). The per-layer fields come from ``global_head_dim`` and
    ``num_global_key_value_heads`` (full-attention layers: head_dim 32, 1 kv head, k = v)."""
    from transformers import DiffusionGemmaConfig

    text = dict(DIFFUSIONGEMMA_TINY_TEXT, num_hidden_layers=n_layers,
                layer_types=["sliding_attention" if (i + 1) % 2 else "full_attention"
                             for i in range(n_layers - 1)] + ["full_attention"],
                global_head_dim=32, num_global_key_value_heads=1)
    return DiffusionGemmaConfig(text_config=text, vision_config=dict(DIFFUSIONGEMMA_TINY_VISION),
                                canvas_length=canvas_length, boi_token_id=7, eoi_token_id=8,
                                image_token_id=9)


def build_diffusiongemma(folder, n_layers: int = 2, seed: int = 0, canvas_length: int = 8) -> Path:
    """A tiny random DiffusionGemmaForBlockDiffusion (transformers' own code) with a Gemma-style
    tokenizer and a generation_config.json carrying the library's default sampler settings."""
    from transformers import DiffusionGemmaForBlockDiffusion
    from transformers.models.diffusion_gemma.generation_diffusion_gemma import (
        DiffusionGemmaGenerationConfig,
        EntropyBoundSamplerConfig,
    )

    folder = _prepare(folder)
    model = _seeded_model(DiffusionGemmaForBlockDiffusion, diffusiongemma_config(n_layers, canvas_length),
                          seed)
    model.generation_config = DiffusionGemmaGenerationConfig(
        max_new_tokens=2 * canvas_length, max_denoising_steps=48,
        sampler_config=EntropyBoundSamplerConfig(entropy_bound=0.1), t_min=0.4, t_max=0.8,
        stability_threshold=1, confidence_threshold=0.005, bos_token_id=2, eos_token_id=1,
        pad_token_id=0)
    model.save_pretrained(folder)
    gemma_tokenizer().save_pretrained(folder)
    _record(folder, "diffusiongemma", n_layers, None,
            ["tiny random config (hidden 64, 4 heads, 4 experts top-2, vocab 1024, canvas "
             f"{canvas_length}); the real 26B-A4B config was not readable offline",
             "Gemma-style BPE tokenizer trained here; Gemma 3 turn template (unverified)"], seed,
            {"real_num_layers_note": "the real checkpoint's config was not readable offline"})
    return folder


# ----------------------------------------------------------------------------- dispatcher

BUILDERS = {
    "bert": build_bert_base,
    "gpt2": build_gpt2,
    "tinyllama": build_tinyllama,
    "roberta": build_roberta_base,
    "llada": build_llada,
    "diffusiongemma": build_diffusiongemma,
}
KINDS = tuple(BUILDERS)
ALIASES = {"bert-base-uncased": "bert", "bert_base": "bert", "roberta-base": "roberta",
           "roberta_base": "roberta", "TinyLlama/TinyLlama-1.1B-Chat-v1.0": "tinyllama",
           "GSAI-ML/LLaDA-8B-Instruct": "llada", "diffusion_gemma": "diffusiongemma",
           "google/diffusiongemma-26B-A4B-it": "diffusiongemma"}


def build(kind: str, folder, **kw) -> Path:
    """Build the stand-in ``kind`` (see KINDS; hub ids work too) in ``folder``."""
    kind = ALIASES.get(kind, kind)
    if kind not in BUILDERS:
        raise KeyError(f"unknown stand-in {kind!r}; one of {', '.join(KINDS)}")
    return BUILDERS[kind](folder, **kw)


def measure(kinds=KINDS, root="/tmp/standins-measure", n_layers: int = 2) -> list[dict]:
    """Build and load each stand-in once: folder size (MB), build and load seconds."""
    import shutil

    rows = []
    for kind in kinds:
        folder = Path(root) / kind
        shutil.rmtree(folder, ignore_errors=True)
        t0 = time.perf_counter()
        build(kind, folder, n_layers=n_layers)
        built = time.perf_counter() - t0
        size = sum(f.stat().st_size for f in folder.rglob("*") if f.is_file()) / 2**20
        t0 = time.perf_counter()
        load(kind, folder)
        rows.append({"kind": kind, "mb": round(size, 1), "build_s": round(built, 2),
                     "load_s": round(time.perf_counter() - t0, 2)})
    return rows


AUTO_CLASS = {"bert": "AutoModelForMaskedLM", "roberta": "AutoModelForMaskedLM",
              "gpt2": "AutoModelForCausalLM", "tinyllama": "AutoModelForCausalLM",
              "diffusiongemma": "AutoModelForImageTextToText"}


def load(kind: str, folder):
    """(tokenizer, model) the plain-transformers way for a stand-in folder (eager, eval)."""
    import transformers
    from transformers import AutoTokenizer

    kind = ALIASES.get(kind, kind)
    tokenizer = AutoTokenizer.from_pretrained(folder, trust_remote_code=kind == "llada")
    if kind == "llada":
        return tokenizer, load_llada(folder)
    auto = getattr(transformers, AUTO_CLASS[kind])
    return tokenizer, auto.from_pretrained(folder, attn_implementation="eager").eval()


if __name__ == "__main__":  # python tests/standins.py: the measurements in the notes
    for row in measure():
        print(f"{row['kind']:15s} {row['mb']:8.1f} MB  build {row['build_s']:6.2f} s  "
              f"load {row['load_s']:5.2f} s")
