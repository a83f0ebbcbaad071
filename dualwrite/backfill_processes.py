"""One backfill in several processes: every table cut into key ranges, one range each.

``run_backfill`` with ``BackfillSettings.processes = N`` forks N processes; process K runs
shard K of N of every table (``--shard K/N``: the key range recorded for it on the target,
``_plan_shards``), with its own connections, reader thread and progress row. The parent
only coordinates: it sums the shards' progress per table, passes ``stop`` on to every child
(each stops after its chunk in hand, resumable), and reports a child that failed or died.

Why processes and not threads: the transform and the COPY encoding are Python, and one
interpreter runs one thread of Python at a time; a backfill process keeps about one core
busy (bench/RESULTS.md, issue 5). Forked, not spawned: the children inherit the transform
registry as loaded (its functions need not be importable by name) and start at once.

Correctness does not depend on the processes: each shard is an ordinary backfill of its key
range, so the argument of ``docs/backfill.md`` holds per shard, and the ranges cover every
key exactly once.
"""

from __future__ import annotations

import contextlib
import multiprocessing
import os
import queue
import signal
import threading
import time
from collections.abc import Callable
from dataclasses import replace
from typing import Any

from sqlalchemy import Engine

from dualwrite.backfill import (
    BackfillError,
    BackfillProgress,
    BackfillSettings,
    TableBackfill,
    run_backfill,
)
from dualwrite.config import MigrationConfig
from dualwrite.transform import Transforms

__all__ = ["run_backfill_processes"]

_Message = tuple[str, int, Any]  # (kind, shard, payload): progress, done or failed


def run_backfill_processes(
    source: Engine,
    target: Engine,
    config: MigrationConfig,
    transforms: Transforms,
    settings: BackfillSettings,
    *,
    stop: threading.Event,
    progress: Callable[[BackfillProgress], None] | None = None,
) -> tuple[TableBackfill, ...]:
    """``settings.processes`` shard processes at once; a summary per table over all shards.

    Raises :class:`BackfillError` naming the shard when one failed (the others are stopped
    after their chunk in hand) or ended without a word (killed): its committed chunks stay,
    and the same command resumes every shard where it stopped."""
    shards = settings.processes
    context = multiprocessing.get_context("fork")
    messages: multiprocessing.Queue[_Message] = context.Queue()
    halt = context.RawValue("b", 0)  # 1: stop; no lock a killed child could leave held
    children = [
        context.Process(
            target=_shard_process,
            args=(
                source,
                target,
                config,
                transforms,
                replace(settings, shard=k, shards=shards, processes=1),
                messages,
                halt,
            ),
            name=f"dualwrite-backfill-{k}/{shards}",
            daemon=True,
        )
        for k in range(shards)
    ]
    for child in children:
        child.start()
    finished: dict[int, tuple[TableBackfill, ...]] = {}
    failures: dict[int, str] = {}
    latest: dict[str, dict[int, BackfillProgress]] = {}

    def handle(kind: str, shard: int, payload: Any) -> None:
        if kind == "progress":
            latest.setdefault(payload.source, {})[shard] = payload
            if progress is not None:
                progress(_summed(latest[payload.source], shards))
        elif kind == "done":
            finished[shard] = payload
        else:
            failures[shard] = payload
            halt.value = 1

    try:
        while len(finished) + len(failures) < shards:
            if stop.is_set():
                halt.value = 1
            with contextlib.suppress(queue.Empty):
                handle(*messages.get(timeout=0.2))
            for shard, child in enumerate(children):  # after every message: others may chatter
                if child.exitcode is not None and shard not in finished and shard not in failures:
                    # its last words may still be in the pipe
                    with contextlib.suppress(queue.Empty):
                        while True:
                            handle(*messages.get(timeout=0.5))
                    if shard not in finished and shard not in failures:
                        failures[shard] = (
                            f"its process ended (exit code {child.exitcode}) before finishing"
                        )
                        halt.value = 1
    finally:
        halt.value = 1
        for child in children:
            child.join()
    if failures:
        raise BackfillError(
            "; ".join(f"shard {k}/{shards}: {why}" for k, why in sorted(failures.items()))
            + ". Chunks committed before stay; run the same backfill again to resume."
        )
    return _merged([finished[k] for k in range(shards)])


def _shard_process(
    source: Engine,
    target: Engine,
    config: MigrationConfig,
    transforms: Transforms,
    settings: BackfillSettings,
    messages: multiprocessing.Queue[_Message],
    halt: Any,  # multiprocessing.RawValue('b')
) -> None:
    """One shard, in a forked child: its own connections (the parent's pooled ones are
    dropped unused), SIGINT left to the parent (which passes ``stop`` on through ``halt``);
    stops after the chunk in hand when the parent dies without a word (SIGKILL)."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    source.dispose(close=False)
    target.dispose(close=False)
    stop = threading.Event()
    parent = os.getppid()

    def pass_on_halt() -> None:  # the parent's word, or its death (SIGKILL): stop
        while not halt.value and os.getppid() == parent:
            time.sleep(0.1)
        stop.set()

    threading.Thread(target=pass_on_halt, name="backfill-halt", daemon=True).start()
    shard = settings.shard
    try:
        results = run_backfill(
            source,
            target,
            config,
            transforms,
            settings,
            stop=stop,
            progress=lambda p: messages.put(("progress", shard, p)),
        )
        messages.put(("done", shard, results))
    except Exception as exc:  # reported by the parent, which stops the other shards
        messages.put(("failed", shard, f"{type(exc).__name__}: {exc}"))
    finally:
        messages.close()
        if os.getppid() == parent:
            messages.join_thread()
        else:  # nobody reads the queue any more: do not wait to flush it
            messages.cancel_join_thread()


def _summed(by_shard: dict[int, BackfillProgress], shards: int) -> BackfillProgress:
    """One table's progress over the shards that reported on it."""
    parts = list(by_shard.values())
    return BackfillProgress(
        parts[0].source,
        sum(p.rows_done for p in parts),
        sum(p.rows_estimate for p in parts),
        sum(p.rows_per_s for p in parts),
        len(parts) == shards and all(p.done for p in parts),
    )


def _merged(per_shard: list[tuple[TableBackfill, ...]]) -> tuple[TableBackfill, ...]:
    """The shards' summaries of each table as one (tables in the order the shards ran them)."""
    tables: dict[str, list[TableBackfill]] = {}
    for results in per_shard:
        for r in results:
            tables.setdefault(r.source, []).append(r)
    return tuple(
        TableBackfill(
            source,
            sum(p.rows for p in parts),
            sum(p.rows_total for p in parts),
            sum(p.chunks for p in parts),
            max(p.elapsed_s for p in parts),
            any(p.resumed for p in parts),
            len(parts) == len(per_shard) and all(p.done for p in parts),
        )
        for source, parts in tables.items()
    )
