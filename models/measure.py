"""Timing and peak memory of one generation, as ``models.generation``'s docstring defines them.

``measured(device, run, measure_memory, same)`` times ``run`` (a whole generation, deterministic
for its seed) and measures the memory it allocated: on CUDA the allocator's high-water mark of
the timed run; on the CPU an untimed replay under the torch profiler, whose token ids are
checked against the timed run's (``same``).
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections.abc import Callable
from typing import Any

import torch

log = logging.getLogger(__name__)

NOT_MEASURED = "not measured (measure_memory=False)"
CUDA_NOTE = ("CUDA: torch.cuda.max_memory_allocated during the timed run minus what was "
             "allocated at its start")
CPU_NOTE = ("CPU: highest running total of the tensor allocations (PyTorch CPU allocator) of an "
            "untimed replay of the same generation under the torch profiler (same tokens)")
REPLAY_DIFFERS = ("not measured: the profiled replay's token ids differ from the timed run's "
                  "(a nondeterministic model), so its memory would not be this generation's")
_PROFILER_LOCK = threading.Lock()  # one profiled replay at a time in this process


def _allocation_peak(events: Any) -> int:
    """Bytes: the highest running total of a profile's CPU allocations (the profiler's
    "[memory]" events: + bytes allocated, - bytes freed, in time order) above its start. Blocks
    allocated before the replay and freed in it count 0 (they were never counted)."""
    cpu = torch.autograd.DeviceType.CPU
    mem = [(e.start_ns(), e.nbytes()) for e in events
           if e.name() == "[memory]" and e.device_type() == cpu]
    mem.sort(key=lambda e: e[0])  # stable: events sharing a timestamp keep their order
    total = peak = 0
    for _t, nbytes in mem:
        total += nbytes
        peak = max(peak, total)
    return peak


class _NoPrivateProfiler(Exception):
    """torch's private profiler entry points are not what this module expects."""


def _memory_only_profile(run: Callable[[], Any]) -> tuple[Any, Any]:
    """(run's output, the profiler's events) with memory profiling on and operator events
    recorded only for the user scope (record_function), so the replay runs about 1.1-1.3x its
    unprofiled time instead of about 2x; torch's private profiler entry points, so the caller
    falls back to ``torch.profiler.profile`` when they change."""
    try:
        from torch._C._profiler import (
            ProfilerActivity,
            ProfilerConfig,
            ProfilerState,
            RecordScope,
            _ExperimentalConfig,
        )

        config = ProfilerConfig(ProfilerState.KINETO, False, True, False, False, False,
                                _ExperimentalConfig())
        activities = {ProfilerActivity.CPU}
        prepare, enable = torch.autograd._prepare_profiler, torch.autograd._enable_profiler
    except (ImportError, AttributeError, TypeError) as exc:
        raise _NoPrivateProfiler(str(exc)) from exc
    prepare(config, activities)
    enable(config, activities, {RecordScope.USER_SCOPE})
    try:  # from here on, errors are the run's own or the profiler's: no fallback
        out = run()
    finally:
        result = torch.autograd._disable_profiler()
    return out, result.events()


def _full_profile(run: Callable[[], Any]) -> tuple[Any, Any]:
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        out = run()
    return out, prof.profiler.kineto_results.events()


def _profiled_peak(run: Callable[[], Any]) -> tuple[Any, float | None, str]:
    """Run ``run`` once more under the torch profiler: (its output, peak MB, note)."""
    os.environ.setdefault("KINETO_LOG_LEVEL", "6")  # no profiler_start/stop lines on stderr
    with _PROFILER_LOCK:
        if torch.autograd._profiler_enabled():  # the caller is profiling: leave its session be
            return None, None, "not measured: the torch profiler is already running"
        try:
            try:
                out, events = _memory_only_profile(run)
            except _NoPrivateProfiler as exc:
                log.debug("memory-only profiling unavailable (%s); profiling every op", exc)
                out, events = _full_profile(run)
            peak = _allocation_peak(events)
        except (RuntimeError, AttributeError, AssertionError, ImportError) as exc:
            log.warning("peak memory: the profiled replay failed: %s", exc)
            return None, None, f"not measured: the torch profiler failed ({exc})"
    return out, peak / 2**20, CPU_NOTE


def measured(device: torch.device, run: Callable[[], Any], measure_memory: bool,
              same: Callable[[Any, Any], bool]) -> tuple[Any, float, float | None, str]:
    """Time ``run`` (a whole generation, deterministic for its seed) and measure its peak
    memory as the module docstring defines: (output, seconds, peak MB or None, note)."""
    cuda = device.type == "cuda"
    if cuda:
        torch.cuda.synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)
        base = torch.cuda.memory_allocated(device)
    t0 = time.perf_counter()
    out = run()
    if cuda:
        torch.cuda.synchronize(device)
    seconds = max(time.perf_counter() - t0, 1e-9)
    if not measure_memory:
        return out, seconds, None, NOT_MEASURED
    if cuda:
        peak = (torch.cuda.max_memory_allocated(device) - base) / 2**20
        return out, seconds, max(0.0, float(peak)), CUDA_NOTE
    if device.type != "cpu":
        return out, seconds, None, f"not measured: no allocator statistics on {device.type}"
    again, peak, note = _profiled_peak(run)
    if peak is None:
        return out, seconds, None, note
    if not same(out, again):
        return out, seconds, None, REPLAY_DIFFERS
    return out, seconds, float(peak), note
