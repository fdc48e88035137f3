"""One context limit for every path: RoBERTa-shaped models take 512 tokens (positions start at
padding_idx + 1), and a prompt longer than that is fitted, not crashed."""

import pytest

from models.common import context_limit
from models.loading import load
from tests import standins


@pytest.fixture(scope="module")
def roberta(tmp_path_factory):
    folder = standins.build_roberta_base(tmp_path_factory.mktemp("roberta") / "roberta-base")
    return load(str(folder))


def test_roberta_context_is_512_not_514(roberta):
    assert roberta.model.config.max_position_embeddings == 514
    assert context_limit(roberta.model) == 512


def test_a_600_token_roberta_prompt_is_analysed_around_its_mask(roberta):
    from analysis.run import analyze_model

    prompt = "the capital of japan is [MASK]. " + "we walked to the park and back. " * 80
    n = len(roberta.tokenizer(prompt.replace("[MASK]", "<mask>"))["input_ids"])
    assert n > 600
    r = analyze_model(roberta, [prompt], gradients=False)
    assert r.trace.n_tokens == 512
    assert r.trace.tokens[0] == "<s>" and r.trace.tokens[-1] == "</s>"
    assert "<mask>" in r.trace.tokens and r.predictions.top
    assert any(f"has {n} tokens" in notice and "takes 512" in notice for notice in r.trace.notices)
