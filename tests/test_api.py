"""The stable programmatic API: named endpoints returning the command line's JSON."""

import pytest

from tests.conftest import have

pytestmark = [pytest.mark.slow,
              pytest.mark.skipif(not have("tiny-gpt2"), reason="embedded tiny-gpt2 missing")]


@pytest.fixture(scope="module")
def client(url):
    from gradio_client import Client

    return Client(url, verbose=False)


def test_the_public_api_is_the_three_named_endpoints(client):
    api = client.view_api(print_info=False, return_format="dict")["named_endpoints"]
    assert {"/analyze", "/predict", "/generate"} <= set(api)
    assert not any(name.startswith(("/page_", "/layer", "/step", "/diffusion")) for name in api)


def test_analyze_returns_the_cli_json(client):
    out = client.predict(["tiny-gpt2", "tiny-bert"], "the capital of japan is [MASK].",
                         api_name="/analyze")
    assert out["prompts"] == ["the capital of japan is [MASK]."]
    gpt2, bert = out["models"]
    assert gpt2["name"] == "tiny-gpt2" and bert["name"] == "tiny-bert"
    assert len(gpt2["layer_metrics"]) == gpt2["n_layers"] + 1
    assert len(gpt2["head_metrics"]) == gpt2["n_layers"] * gpt2["n_heads"]
    assert bert["predictions"]["predictions"][0]["token"] == "tokyo"
    assert gpt2["continuation"] is not None and bert["continuation"] is None  # causal only
    assert gpt2["predictions"]["text"] == gpt2["continuation"]
    assert set(gpt2["top_induction_head"]) == {"layer", "head", "induction_score"}


def test_predict_and_generate_return_the_cli_json(client):
    p = client.predict("tiny-bert", "the capital of japan is [MASK].", api_name="/predict")
    assert p["predictions"][0]["token"] == "tokyo" and "tokyo" in p["text"]
    assert sum(x["probability"] for x in p["predictions"]) <= 1 + 1e-9
    g = client.predict("tiny-diffusion", "the capital of japan is", 8, api_name="/generate")
    assert g["paradigm"] == "diffusion" and g["positions"] == 8 and "tokyo" in g["text"]
    assert 0 < g["generated_tokens"] <= 8 and g["nfe"] == len(g["trace"])
    assert g["tokens_per_second"] == pytest.approx(g["generated_tokens"] / g["seconds"])


def test_bad_requests_get_one_clear_message(client):
    from gradio_client.exceptions import AppError

    with pytest.raises(AppError, match="not offered"):
        client.predict("gpt2", "hello", api_name="/predict")
    with pytest.raises(AppError, match="empty"):
        client.predict(["tiny-gpt2"], "  ", api_name="/analyze")
    with pytest.raises(AppError, match="limit"):
        client.predict("tiny-diffusion", "hi", 100_000, api_name="/generate")
    assert client.predict("tiny-gpt2", "the capital of japan is", api_name="/predict")["text"]
