import os
import socket
import sys
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # never let a test reach the hub
os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")
if os.environ.get("PYTEST_XDIST_WORKER"):
    # two test processes share the machine's cores: one compute thread each (and for the
    # processes they start), or the OpenMP threads of both wait on each other
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    os.environ.setdefault("MKL_NUM_THREADS", "1")
ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

EMBEDDED = ROOT / "models" / "embedded"


def have(name: str) -> bool:
    return (EMBEDDED / name / "model.safetensors").is_file()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def url():
    """The dashboard (default settings) served on a free local port for this test module."""
    from ui.app import AppConfig, serve

    demo = serve(AppConfig(host="127.0.0.1", port=free_port()), block=False)
    try:
        yield demo.local_url
    finally:
        demo.close()


@pytest.fixture(scope="session")
def gpt2():
    from models.loading import load

    return load("tiny-gpt2")


@pytest.fixture(scope="session")
def bert():
    from models.loading import load

    return load("tiny-bert")


@pytest.fixture(scope="session")
def llama():
    from models.loading import load

    return load("tiny-llama")


def page_analyze(client, *inputs, submit: bool = False):
    """The Overall tab's Analyze event through gradio_client (an undocumented page event, so
    every input is given: models, [custom,] prompt, chat template off, gradient support)."""
    call = client.submit if submit else client.predict
    return call(*inputs, False, "gradient", api_name="/page_analyze")


class Calls:
    """Counts calls of a module (a forward hook), e.g. a model's forward passes."""

    def __init__(self, module):
        self.n = 0
        self.handle = module.register_forward_hook(self.hook)

    def hook(self, *_):
        self.n += 1

    def __enter__(self):
        return self

    def __exit__(self, *_):
        self.handle.remove()
