"""Target 6: `python dashboard.py` serving within 8 s.

    python bench/bench_startup.py

Measured: from starting `python dashboard.py --port P` to the first HTTP 200 of the page.
Baseline, timed in this run: `python -c "import gradio"` (the floor any Gradio app pays).
Each is run three times; the median is reported.
"""

from common import line  # noqa: I001

import os
import socket
import statistics
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def time_import() -> float:
    t0 = time.perf_counter()
    subprocess.run([sys.executable, "-c", "import gradio"], check=True, cwd=ROOT)
    return time.perf_counter() - t0


def time_serving(limit: float = 60.0) -> float:
    port = free_port()
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    t0 = time.perf_counter()
    proc = subprocess.Popen([sys.executable, "dashboard.py", "--host", "127.0.0.1",
                             "--port", str(port)], cwd=ROOT, env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        while time.perf_counter() - t0 < limit:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/", timeout=1) as r:
                    if r.status == 200:
                        return time.perf_counter() - t0
            except OSError:
                time.sleep(0.05)
        raise RuntimeError(f"not serving after {limit} s")
    finally:
        proc.terminate()
        proc.wait(10)


def main() -> None:
    base = statistics.median(time_import() for _ in range(3))
    served = statistics.median(time_serving() for _ in range(3))
    line("python dashboard.py: start to first page served", served, "s", base,
         "<= 8 s absolute; baseline: import gradio")


if __name__ == "__main__":
    main()
