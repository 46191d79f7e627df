"""Python's garbage collector against the step loop: freeze what start-up made.

A full (generation-2) collection walks every object the collector tracks. After start-up
that is ~185k objects for the default model on CPU (torch, triton, the model's modules),
more for an 8B engine with CUDA graphs: each full collection paused the step loop for
~90 ms on the dev machine and ~100-140 ms on the GPU host, every 30-100 steps of the
throughput workload (benchmarks/gpu_idle.py), and in a server every such pause is a late
token for every running request.

Objects:
- `freeze_after_startup()`: one full collection, then `gc.freeze()`, which moves every
  live object into the permanent generation, so later collections walk only what serving
  creates. Called once start-up is done in each process that runs one engine for its
  lifetime (engine process, workers, API server, `tessera bench`); `LLM(freeze_gc=True)`
  asks for it in a user's process (not by default: it freezes the user's objects too, and
  a frozen reference cycle is never freed, so an LLM held only by one would outlive it).
  While frozen, a full collection also waits for FULL_EVERY collections of the middle
  generation instead of Python's 10: after the freeze each one still walked every live
  request's token lists, 16-28 ms, 21 times in the throughput run.
- `frozen()`: a context manager doing both around a block (benchmarks, `tessera bench`).
- `unfreeze()`: the matching release; the last one gives the frozen objects back to the
  collector (so an engine dropped in a process that goes on, e.g. a test, is collected)
  and restores the thresholds.
- `PauseMeter`: records each collection's pause by generation (gc.callbacks), for
  benchmarks.
"""
from __future__ import annotations

import contextlib
import gc
import logging
import time
from collections import defaultdict

logger = logging.getLogger(__name__)
FULL_EVERY = 100  # while frozen: middle-generation collections per full one (Python: 10)
_holders = 0  # freezes not yet released
_thresholds: tuple = ()  # Python's, kept while frozen


def freeze_after_startup() -> int:
    """Collect once, then freeze every live object; returns how many are frozen."""
    global _holders, _thresholds
    _holders += 1
    started = time.perf_counter()
    gc.collect()
    gc.freeze()
    if not _thresholds:
        _thresholds = gc.get_threshold()
        gc.set_threshold(_thresholds[0], _thresholds[1], max(_thresholds[2], FULL_EVERY))
    frozen = gc.get_freeze_count()
    logger.debug("gc: froze %d start-up objects in %.0f ms", frozen,
                 (time.perf_counter() - started) * 1e3)
    return frozen


def unfreeze() -> None:
    """Releases one freeze; the last release gives every frozen object back."""
    global _holders, _thresholds
    _holders = max(0, _holders - 1)
    if not _holders:
        gc.unfreeze()
        if _thresholds:
            gc.set_threshold(*_thresholds)
            _thresholds = ()


@contextlib.contextmanager
def frozen():
    """freeze_after_startup() for the block, released however it ends."""
    freeze_after_startup()
    try:
        yield
    finally:
        unfreeze()


class PauseMeter:
    """`start()` / `stop()`: while on, each collection's pause is added to `pauses`
    (generation -> list of seconds)."""

    def __init__(self):
        self.pauses: dict[int, list[float]] = defaultdict(list)
        self._began = 0.0

    def _callback(self, phase: str, info: dict) -> None:
        if phase == "start":
            self._began = time.perf_counter()
        else:
            self.pauses[info["generation"]].append(time.perf_counter() - self._began)

    def start(self) -> "PauseMeter":
        gc.callbacks.append(self._callback)
        return self

    def stop(self) -> dict:
        """Stops; returns per generation: count, total and longest pause in ms."""
        if self._callback in gc.callbacks:
            gc.callbacks.remove(self._callback)
        return {gen: dict(count=len(p), total_ms=sum(p) * 1e3, max_ms=max(p) * 1e3)
                for gen, p in sorted(self.pauses.items())}
