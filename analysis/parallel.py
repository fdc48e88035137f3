"""Per-layer work spread over the cores.

The layer metrics are numpy linear algebra that releases the GIL, one independent job per
layer. With numpy's BLAS on one thread (models.loading.set_threads sets that once for the
process), running layers side by side on one thread each is faster than one layer at a time
on a multi-threaded BLAS. Dataset mode's per-layer accumulation is torch on small tensors:
there too, layers side by side on one torch thread each beat one layer at a time on all of
them (`map_torch_layers`).
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


def torch_layer_workers(n_items: int, device=None) -> int:
    """How many layers of torch CPU work to run side by side: as many as the torch threads the
    caller was given (one each, so the cores in use stay the same), at most one per core; one
    on an accelerator, where the device runs the work."""
    import torch

    if n_items < 2 or (device is not None and torch.device(device).type != "cpu"):
        return 1
    return max(1, min(torch.get_num_threads(), os.cpu_count() or 1, n_items))


def _one_torch_thread() -> None:
    import torch

    torch.get_num_threads()  # torch's per-thread set-up first, so that it cannot undo the next line
    torch.set_num_threads(1)


def _pool() -> ThreadPoolExecutor:
    """The shared pool, one thread per core; its threads run torch on one thread each."""
    global _POOL
    with _POOL_LOCK:
        if _POOL is None:
            import torch

            own = torch.get_num_threads()
            cores = os.cpu_count() or 1
            pool = ThreadPoolExecutor(max_workers=cores, thread_name_prefix="layers",
                                      initializer=_one_torch_thread)
            ready = threading.Barrier(cores)
            list(pool.map(lambda _: ready.wait(), range(cores)))  # start (and set up) every thread
            # torch.set_num_threads also sets the count that threads started later begin with;
            # give that back to the caller's count (its own threads keep theirs)
            torch.set_num_threads(own)
            _POOL = pool
    return _POOL


def _in_pool() -> bool:
    """True on one of the pool's own threads: a map from there runs in place (waiting on the
    pool from inside it could wait forever)."""
    return threading.current_thread().name.startswith("layers")


def _spread(fn: Callable, items: Sequence, workers: int) -> list:
    """[fn(item) for item in items] on `workers` of the pool's threads, each taking the next
    item until none is left; in place with one worker or on a pool thread."""
    items = list(items)
    if workers <= 1 or _in_pool():
        return [fn(item) for item in items]
    out: list = [None] * len(items)
    todo, lock = iter(range(len(items))), threading.Lock()

    def work(_) -> None:
        while True:
            with lock:
                i = next(todo, None)
            if i is None:
                return
            out[i] = fn(items[i])
    list(_pool().map(work, range(workers)))
    return out


def map_layers(fn: Callable, items: Sequence) -> list:
    """[fn(item) for item in items], spread over `layer_workers` threads (numpy releases the
    GIL in its linear algebra and array loops, where the layer metrics spend their time)."""
    items = list(items)
    return _spread(fn, items, layer_workers(len(items)))


def map_torch_layers(fn: Callable, items: Sequence, device=None) -> list:
    """[fn(item) for item in items] for torch work: on `torch_layer_workers` threads of one
    torch thread each (torch releases the GIL in its kernels). GPT-2's 13 layers of dataset
    accumulation for a batch of 16 x 128 tokens on 2 cores: 0.56-0.61 s side by side against
    0.82-0.92 s one layer at a time on 2 torch threads."""
    items = list(items)
    return _spread(fn, items, torch_layer_workers(len(items), device))
