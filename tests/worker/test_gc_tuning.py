"""The GC tuning of the worker and the backfill (``gc_gen0_threshold``) is scoped to the run."""

from __future__ import annotations

import gc
import threading

from dualwrite.gc_tuning import steady_state_gc


def test_gc_is_tuned_while_running_and_restored_after():
    before, frozen_before = gc.get_threshold(), gc.get_freeze_count()
    assert frozen_before == 0
    with steady_state_gc(20_000):
        assert gc.get_threshold() == (20_000, *before[1:])
        assert gc.get_freeze_count() > 0  # start-up objects out of the collector's passes
        garbage: list[object] = []
        garbage.append(garbage)  # a cycle: still collected while tuned
        ref = id(garbage)
        del garbage
        assert gc.collect() >= 1
        assert ref not in {id(o) for o in gc.get_objects()}
    assert gc.get_threshold() == before
    assert gc.get_freeze_count() == 0


def test_two_workers_in_one_process_restore_once_the_last_leaves():
    before = gc.get_threshold()
    first_in, second_in, first_out = threading.Event(), threading.Event(), threading.Event()
    seen: list[tuple[int, int, int]] = []

    def first() -> None:
        with steady_state_gc(20_000):
            first_in.set()
            second_in.wait(10)
        first_out.set()

    thread = threading.Thread(target=first)
    thread.start()
    first_in.wait(10)
    with steady_state_gc(20_000):
        second_in.set()
        first_out.wait(10)
        seen.append(gc.get_threshold())  # the first worker left: still tuned for this one
    thread.join(10)
    assert seen == [(20_000, *before[1:])]
    assert gc.get_threshold() == before
    assert gc.get_freeze_count() == 0


def test_zero_leaves_the_gc_alone():
    before = gc.get_threshold()
    with steady_state_gc(0):
        assert gc.get_threshold() == before
        assert gc.get_freeze_count() == 0
