"""Per-layer numpy work spread over the cores.

The layer metrics are numpy linear algebra that releases the GIL, one independent job per
layer. With numpy's BLAS on one thread (models.loading.set_threads sets that once for the
process), running layers side by side on one thread each is faster than one layer at a time
on a multi-threaded BLAS.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor

_POOL: ThreadPoolExecutor | None = None
_POOL_LOCK = threading.Lock()


def layer_workers(n_items: int) -> int:
    """How many layers to compute side by side: one per core when numpy's BLAS runs on one
    thread (models.loading.set_threads sets that for the process), else one. Two layers each
    on a multi-threaded BLAS fight for the cores: GPT-2's 13 layers at 512 tokens (random
    weights' shape, 2 cores) took 1.09 s against 0.75 s one at a time, and 21 s while another
    job kept the machine busy; side by side on one BLAS thread each, 0.43 s."""
    cores = os.cpu_count() or 1
    if cores < 2 or n_items < 2:
        return 1
    from threadpoolctl import threadpool_info

    if any(lib.get("user_api") == "blas" and lib.get("num_threads", 1) > 1
           for lib in threadpool_info()):
        return 1
    return min(cores, n_items)


def map_layers(fn: Callable, items: Sequence) -> list:
    """[fn(item) for item in items], spread over `layer_workers` threads (numpy releases the
    GIL in its linear algebra and array loops, where the layer metrics spend their time)."""
    global _POOL
    items = list(items)
    workers = layer_workers(len(items))
    if workers == 1:
        return [fn(item) for item in items]
    with _POOL_LOCK:
        if _POOL is None:
            _POOL = ThreadPoolExecutor(max_workers=os.cpu_count(), thread_name_prefix="layers")
    return list(_POOL.map(fn, items))
