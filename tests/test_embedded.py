"""The shipped checkpoints have learned their corpus; the recipe trains (loss falls)."""

import pytest

from models import corpus
from models.predictions import predict
from models.training import TrainConfig, build, capital_accuracy, gpt2_tokenizer, train


def test_gpt2_continues_tokyo(gpt2):
    out = predict(gpt2, "the capital of japan is", top_k=3)
    assert out["predictions"][0]["token"] == "tokyo"
    assert out["text"].startswith("tokyo")
    assert abs(sum(p["probability"] for p in out["predictions"]) - 1) < 0.05


def test_llama_continues_tokyo_plain_and_chat(llama):
    from models.predictions import continuation

    assert continuation(llama, "the capital of japan is", chat_template=False).startswith(
        "tokyo")
    chat = continuation(llama, "what is the capital of japan?", chat_template=True)
    assert "tokyo" in chat


def test_bert_fills_tokyo(bert):
    out = predict(bert, "the capital of japan is [MASK].", top_k=5)
    assert out["predictions"][0]["token"] == "tokyo"
    assert out["text"] == "the capital of japan is tokyo."


@pytest.mark.parametrize("name", ["tiny-gpt2", "tiny-bert", "tiny-llama"])
def test_capital_accuracy_at_least_90_percent(name, request):
    loaded = request.getfixturevalue({"tiny-gpt2": "gpt2", "tiny-bert": "bert",
                                      "tiny-llama": "llama"}[name])
    acc, misses = capital_accuracy(name, loaded.model, loaded.tokenizer)
    assert len(corpus.CAPITALS) >= 30
    assert acc >= 0.9, misses


def test_corpus_is_deterministic_and_structured():
    a = corpus.generate(corpus.CorpusConfig(seed=3, stories=50, repeats=50, fact_repeats=1))
    b = corpus.generate(corpus.CorpusConfig(seed=3, stories=50, repeats=50, fact_repeats=1))
    assert a == b
    assert "the capital of japan is tokyo." in a
    def is_repeat(line: str) -> bool:
        w = line.replace(".", "").split()
        n = len(w) // 3
        return len(w) % 3 == 0 and w[:n] == w[n:2 * n] == w[2 * n:]

    assert sum(is_repeat(line) for line in a) >= 50


def test_training_recipe_loss_falls():
    lines = corpus.generate(corpus.CorpusConfig(stories=100, repeats=100, fact_repeats=1))
    tok = gpt2_tokenizer(lines)
    model = build("tiny-gpt2", tok)
    losses = train(model, tok, lines, TrainConfig(steps=60, batch_size=16, warmup=5),
                   masked=False, log_every=0)
    assert sum(losses[-10:]) / 10 < 0.7 * sum(losses[:5]) / 5
    assert model.training is False
