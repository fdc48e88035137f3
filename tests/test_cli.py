"""The command line: JSON contracts, exit status 2 with one clear line on bad input."""

import json
import subprocess
import sys

import pytest

from tests.conftest import ROOT


def run(*args: str, check: bool = True) -> subprocess.CompletedProcess:
    proc = subprocess.run([sys.executable, "dashboard.py", *args], cwd=ROOT, capture_output=True,
                          text=True, timeout=300, env={"HF_HUB_OFFLINE": "1", "PATH": "/usr/bin:/bin"})
    if check:
        assert proc.returncode == 0, proc.stderr
    return proc


def test_help_lists_the_subcommands():
    out = run("--help").stdout
    for cmd in ("serve", "models", "analyze", "predict", "generate", "compare", "train-diffusion"):
        assert cmd in out


def test_predict_json_contract(tmp_path):
    out = tmp_path / "p.json"
    run("predict", "--model", "tiny-bert", "--prompt", "the capital of japan is [MASK].",
        "--top-k", "3", "--json", str(out))
    data = json.loads(out.read_text())
    assert {"model", "task", "prompt", "predictions", "text"} <= set(data)
    assert data["task"] == "fill-mask" and len(data["predictions"]) == 3
    assert data["predictions"][0]["token"] == "tokyo"
    assert data["text"] == "the capital of japan is tokyo."


def test_analyze_json_has_every_metric_for_every_layer(tmp_path):
    out = tmp_path / "a.json"
    run("analyze", "--model", "tiny-gpt2", "--model", "tiny-llama", "--prompt",
        "the capital of japan is", "--json", str(out))
    data = json.loads(out.read_text())
    cols = ["effective_rank", "participation_ratio", "intrinsic_dim_pca95", "intrinsic_dim_twonn",
            "activation_entropy", "cosine_to_input", "anisotropy", "attention_entropy"]
    for m in data["models"]:
        assert len(m["layer_metrics"]) == m["n_layers"] + 1
        for row in m["layer_metrics"]:
            assert set(cols) <= set(row)
            assert row["effective_rank"] is not None


@pytest.mark.parametrize("args, message", [
    (["predict", "--model", "nope-model", "--prompt", "x"], "Unknown model"),
    (["predict", "--model", "tiny-bert", "--prompt", "no mask here"], "[MASK]"),
    (["predict", "--model", "tiny-gpt2", "--prompt", "   "], "empty"),
    (["predict", "--model", "tiny-gpt2", "--prompt", "x", "--top-k", "0"], "top-k"),
    (["predict", "--model", "tiny-gpt2", "--prompt", "x", "--temperature", "nan"], "finite"),
    (["analyze", "--model", "tiny-gpt2"], "prompt"),
    (["analyze", "--model", "../../etc", "--prompt", "x"], "../../etc"),
    (["generate", "--model", "tiny-gpt2", "--prompt", "x", "--length", "0"], "length"),
    (["generate", "--model", "tiny-bert", "--prompt", "x", "--length", "4", "--threshold", "1.5"],
     "threshold"),
    (["generate", "--model", "tiny-bert", "--prompt", "x", "--length", "5", "--block-length", "2"],
     "block"),
    (["predict", "--model", "tiny-gpt2", "--prompt", "x", "--device", "cuda"], "cuda"),
    (["predict", "--model", "tiny-gpt2", "--prompt", "x", "--dtype", "float16"], "float16"),
    (["predict", "--model", "tiny-gpt2", "--prompt", "x", "--revision", "v9"], "--revision"),
    (["frobnicate"], "invalid choice"),
    (["predict", "--model", "tiny-gpt2"], "--prompt"),
])
def test_bad_input_exits_2_with_one_line(args, message):
    proc = run(*args, check=False)
    assert proc.returncode == 2, proc.stdout + proc.stderr
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and "Traceback" not in proc.stderr, proc.stderr
    assert message.lower() in lines[0].lower()
