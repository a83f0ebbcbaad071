"""CPython's cyclic garbage collector tuned for long runs of batches, scoped to the run."""

from __future__ import annotations

import contextlib
import gc
import threading
from collections.abc import Iterator

__all__ = ["steady_state_gc"]

_gc_lock = threading.Lock()
_gc_users = 0
_gc_saved: tuple[tuple[int, int, int], bool] | None = None


@contextlib.contextmanager
def steady_state_gc(gen0_threshold: int) -> Iterator[None]:
    """Tune CPython's cyclic GC for a long run of batches (the worker, the backfill);
    restored on exit.

    A batch (a chunk) allocates tens of thousands of short-lived containers (parsed JSON, rows, ops),
    so with the default threshold (700) the collector runs dozens of times per batch, and its
    older-generation passes traverse every object of the imported libraries. Here the objects
    that exist at start-up are frozen (``gc.freeze``: never traversed, still freed by
    reference counting) and the youngest generation is collected every ``gen0_threshold``
    allocations. Cyclic garbage is still collected, only later. Measured on the shop
    benchmark: 15-20 % less worker CPU per event (bench/RESULTS.md, issue 4 third run).

    Process-wide; counted, so several users in one process (workers in tests, a backfill
    beside them) restore it once, when the last one leaves. Leaves a freeze made by the application itself in place.
    """
    global _gc_users, _gc_saved
    if gen0_threshold <= 0:
        yield
        return
    with _gc_lock:
        if _gc_users == 0:
            _gc_saved = (gc.get_threshold(), gc.get_freeze_count() == 0)
            gc.freeze()
            _, gen1, gen2 = _gc_saved[0]
            gc.set_threshold(gen0_threshold, gen1, gen2)
        _gc_users += 1
    try:
        yield
    finally:
        with _gc_lock:
            _gc_users -= 1
            if _gc_users == 0 and _gc_saved is not None:
                thresholds, unfreeze = _gc_saved
                gc.set_threshold(*thresholds)
                if unfreeze:
                    gc.unfreeze()
                _gc_saved = None
