"""The transform-aware diff: what the target should hold (the transform of the source)
against what it holds, classified, with in-flight differences re-checked.

Per target table, one of two comparisons (``docs/reconcile.md`` has the argument):

- **segments** (:mod:`reconcile._segments`), when the canonical comparison can be made in
  SQL on both sides (:mod:`reconcile._sqlcanon`; the plan is checked against Python on a
  sample first): checksums per key range inside both databases, descent into the ranges that
  differ; only the keys that may differ come to Python;
- **stream** (:mod:`reconcile._stream`) otherwise: both sides read once in chunks, compared
  by hashed partitions of the target key with bounded memory.

Either way every candidate is decided in Python by the same canonical comparison
(:mod:`reconcile._rows`) and re-checked once the pipeline has caught up. Tables run in
parallel, and so do the segments of one table (``workers`` threads, each with its own
connections).
"""

from __future__ import annotations

import datetime as dt
import json
import logging
import threading
import time
from collections import defaultdict
from collections.abc import Callable, Mapping
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass

from sqlalchemy import Engine

from dualwrite.capture._ddl import TableShape
from dualwrite.config import MigrationConfig
from dualwrite.snapshot import source_shape
from dualwrite.transform import Transforms
from reconcile._catchup import CatchUp, source_position
from reconcile._rows import Key, evaluate, group_by_target, target_types
from reconcile._segments import SegmentDiff, SegmentStats, Tuning
from reconcile._session import Sessions
from reconcile._sqlcanon import SqlPlan, check_plan, plan_for
from reconcile._stream import stream_diff
from reconcile._types import CATEGORIES, DRIFT, Difference, ReconcileResult, TableSummary

__all__ = [
    "CATEGORIES",
    "DEFAULT_WORKERS",
    "DRIFT",
    "Difference",
    "ReconcileResult",
    "TableSummary",
    "reconcile",
]

log = logging.getLogger(__name__)
log.addHandler(logging.NullHandler())

DEFAULT_WORKERS = 4
"""Threads (each with one connection per database) comparing tables and segments at once.
They mostly wait on the two database servers, so even two cores keep four busy."""


def reconcile(
    source: Engine,
    target: Engine,
    config: MigrationConfig,
    transforms: Transforms,
    *,
    chunk_rows: int = 5000,
    wait_s: float = 60.0,
    progress: Callable[[str, int], None] | None = None,
    stop: threading.Event | None = None,
    workers: int = DEFAULT_WORKERS,
    segments: bool = True,
    bucket_rows: int = 100_000,
    tuning: Tuning | None = None,
) -> ReconcileResult:
    """Compare the transform of every source table with the target; classify every difference.

    A difference is re-checked once the pipeline has caught up with the source position seen
    when the read began (waiting at most ``wait_s``): if it is gone it was in flight; if the
    pipeline did not catch up in time it is reported as unverified (status incomplete).
    Whether the pipeline has caught up is polled by a daemon thread from the start of the
    comparison (:class:`reconcile._catchup.CatchUp`; Kafka is asked only from there).
    ``segments=False`` forces the streaming comparison for every table; ``bucket_rows`` bounds
    the rows per side held in memory by the streaming comparison. Raises
    :class:`psycopg.Error` when a database fails, and the snapshot/transform errors of a bad
    configuration.
    """
    started = dt.datetime.now(dt.UTC)
    workers = max(1, workers)
    stop = stop or threading.Event()
    sources, targets = Sessions(source, 2 * workers + 1), Sessions(target, 2 * workers + 1)
    pool = ThreadPoolExecutor(workers, thread_name_prefix="reconcile-segment")
    tables = ThreadPoolExecutor(workers, thread_name_prefix="reconcile-table")
    catch_up: CatchUp | None = None
    try:
        with sources.get() as src:
            position = source_position(src, config)
            shapes = {str(t.source): source_shape(src, t) for t in config.tables}
        # whether the pipeline passed the position is asked while the comparison runs
        catch_up = CatchUp(source, config, position, stop)
        catch_up.start()
        names = sorted(
            {
                t
                for label in shapes
                if label in transforms.sources
                for t in transforms.sources[label].targets
            }
        )
        with targets.get() as dst:
            types = {name: target_types(dst, transforms.targets[name].table) for name in names}
        t0 = time.perf_counter()
        plans = _plans(config, transforms, shapes, types) if segments else {}
        # Each plan is checked against the Python transform while its segments are compared
        # (the checks are queued first, so no comparison waits on a check queued behind it);
        # a table whose check fails is compared by the streaming route afterwards.
        checks = {
            name: tables.submit(_check_plan, sources, targets, plan, transforms)
            for name, plan in plans.items()
        }
        futures: list[Future[_Compared]] = []
        for name, plan in plans.items():
            futures.append(
                tables.submit(
                    _segment_table,
                    plan,
                    checks[name],
                    sources,
                    targets,
                    pool,
                    transforms,
                    types[name],
                    tuning or Tuning(),
                    progress,
                    catch_up,
                )
            )
        streamed = {n: types[n] for n in names if n not in plans}
        if streamed:
            futures.append(
                tables.submit(
                    _stream_tables,
                    sources,
                    targets,
                    transforms,
                    shapes,
                    streamed,
                    chunk_rows,
                    bucket_rows,
                    progress,
                )
            )
        candidates: list[Difference] = []
        counts: dict[str, tuple[int, int]] = {}
        settled: set[str] = set()
        methods = {n: ("segments" if n in plans else "stream") for n in names}
        rejected: dict[str, Mapping[str, str]] = {}
        for f in futures:
            compared = f.result()
            candidates.extend(compared.differences)
            counts.update(compared.counts)
            settled.update(compared.settled)
            rejected.update({n: types[n] for n in compared.rejected})
        if rejected:
            methods.update(dict.fromkeys(rejected, "stream"))
            compared = _stream_tables(
                sources, targets, transforms, shapes, rejected, chunk_rows, bucket_rows, progress
            )
            candidates.extend(compared.differences)
            counts.update(compared.counts)
        log.debug("compared in %.2f s: %d candidates", time.perf_counter() - t0, len(candidates))
        if config.reverse_of is not None:
            from reconcile._unmigrated import drop_unmigrated  # here: it imports this module

            with targets.get() as dst:
                candidates = drop_unmigrated(dst, config, transforms, candidates)
        # differences read after the pipeline had passed the position are final already
        final: list[Difference] = []
        recheck: list[Difference] = []
        for d in candidates:
            is_final = d.category == "transform_error" or d.target in settled
            (final if is_final else recheck).append(d)
        caught_up = True
        if recheck:
            t1 = time.perf_counter()
            caught_up = catch_up.wait(wait_s)
            log.debug(
                "pipeline caught up: %s (waited %.2f s, %d polls)",
                caught_up,
                time.perf_counter() - t1,
                catch_up.polls,
            )
            final.extend(
                _recheck((sources, targets, pool), transforms, shapes, types, recheck, caught_up)
            )
            log.debug("re-checked in %.2f s", time.perf_counter() - t0)
    finally:
        if catch_up is not None:
            catch_up.close()
        tables.shutdown(wait=True, cancel_futures=True)
        pool.shutdown(wait=True, cancel_futures=True)
        sources.close()
        targets.close()
    by_target: dict[str, dict[str, int]] = defaultdict(lambda: dict.fromkeys(CATEGORIES, 0))
    for d in final:
        by_target[d.target][d.category] += 1
    summaries = tuple(
        TableSummary(
            name,
            counts.get(name, (0, 0))[0],
            counts.get(name, (0, 0))[1],
            by_target.get(name, dict.fromkeys(CATEGORIES, 0)),
            methods[name],
        )
        for name in names
    )
    return ReconcileResult(
        config.name, started, dt.datetime.now(dt.UTC), summaries, tuple(final), caught_up
    )


def _plans(
    config: MigrationConfig,
    transforms: Transforms,
    shapes: Mapping[str, TableShape],
    types: Mapping[str, Mapping[str, str]],
) -> dict[str, SqlPlan]:
    """The targets that may be compared by segment checksums, with their (unchecked) plans."""
    plans: dict[str, SqlPlan] = {}
    for table in config.tables:
        label = str(table.source)
        st = transforms.sources.get(label)
        if st is None:
            continue
        for name in st.targets:
            plan, reason = plan_for(transforms, table, shapes[label], name, types[name])
            if plan is not None:
                plans[name] = plan
            else:
                log.info("%s: compared in Python, not by segment checksums: %s", name, reason)
    return plans


def _check_plan(sources: Sessions, targets: Sessions, plan: SqlPlan, transforms: Transforms) -> str:
    t0 = time.perf_counter()
    with sources.get() as src, targets.get() as dst:
        reason = check_plan(src, dst, plan, transforms)
    log.debug("%s: plan checked in %.2f s", plan.target, time.perf_counter() - t0)
    return reason


@dataclass(frozen=True)
class _Compared:
    """What one comparison job found: differences, (expected, target) rows per target, and
    the targets whose differences were read after the pipeline had passed the position (final:
    no re-check needed), and the targets whose plan failed its check (nothing found: to be
    compared by the streaming route)."""

    differences: list[Difference]
    counts: dict[str, tuple[int, int]]
    settled: frozenset[str] = frozenset()
    rejected: frozenset[str] = frozenset()  # its SQL plan disagreed with Python: stream it


def _segment_table(
    plan: SqlPlan,
    check: Future[str],
    sources: Sessions,
    targets: Sessions,
    pool: ThreadPoolExecutor,
    transforms: Transforms,
    types: Mapping[str, str],
    tuning: Tuning,
    progress: Callable[[str, int], None] | None,
    catch_up: CatchUp,
) -> _Compared:
    stats: SegmentStats = SegmentDiff(plan, sources, targets, pool, tuning).run()
    reason = check.result()
    if reason:
        log.info("%s: compared in Python, not by segment checksums: %s", plan.target, reason)
        return _Compared([], {}, rejected=frozenset({plan.target}))
    log.info(
        "%s: %d segments, %d differing, %d leaf rows fetched, %d queries, %d candidate keys",
        plan.target,
        stats.segments,
        stats.differing,
        stats.leaf_rows_fetched,
        stats.queries,
        len(stats.candidates),
    )
    keys: list[Key] = list(dict.fromkeys(stats.candidates))
    t0 = time.perf_counter()
    # If the pipeline has passed the position already, this evaluation reads what the re-check
    # would read: its differences are final and the candidates are fetched only once.
    settled = bool(keys) and catch_up.passed()
    diffs = _evaluate(
        sources,
        targets,
        pool,
        transforms,
        {plan.label: plan.source},
        plan.target,
        plan.key,
        keys,
        types,
    )
    log.debug(
        "%s: %d candidates evaluated in %.2f s%s",
        plan.target,
        len(keys),
        time.perf_counter() - t0,
        " (pipeline caught up before: final)" if settled else "",
    )
    if progress is not None:
        progress(plan.target, stats.source_rows)
    return _Compared(
        diffs,
        {plan.target: (stats.source_rows, stats.target_rows)},
        frozenset({plan.target}) if settled else frozenset(),
    )


def _evaluate(
    sources: Sessions,
    targets: Sessions,
    pool: ThreadPoolExecutor,
    transforms: Transforms,
    shapes: Mapping[str, TableShape],
    target: str,
    key_columns: tuple[str, ...],
    keys: list[Key],
    types: Mapping[str, str],
    batch: int = 2000,
) -> list[Difference]:
    """:func:`evaluate` over batches of keys in the pool, each batch on its own connections
    (called from a thread outside the pool)."""

    def one(chunk: list[Key]) -> list[Difference]:
        with sources.get() as src, targets.get() as dst:
            return evaluate(src, dst, transforms, shapes, target, key_columns, chunk, types)

    futures = [pool.submit(one, keys[i : i + batch]) for i in range(0, len(keys), batch)]
    return [d for f in futures for d in f.result()]


def _stream_tables(
    sources: Sessions,
    targets: Sessions,
    transforms: Transforms,
    shapes: Mapping[str, TableShape],
    streamed: Mapping[str, Mapping[str, str]],
    chunk_rows: int,
    bucket_rows: int,
    progress: Callable[[str, int], None] | None,
) -> _Compared:
    with sources.get() as src, targets.get() as dst:
        diffs, counts = stream_diff(
            src, dst, transforms, shapes, streamed, chunk_rows, bucket_rows, progress
        )
    return _Compared(diffs, counts)


def _recheck(
    sessions: tuple[Sessions, Sessions, ThreadPoolExecutor],
    transforms: Transforms,
    shapes: Mapping[str, TableShape],
    types: Mapping[str, Mapping[str, str]],
    candidates: list[Difference],
    caught_up: bool,
) -> list[Difference]:
    """Recompute both sides for each candidate key; persistent differences are drift."""
    if not caught_up:
        return [
            Difference(d.target, d.key, "unverified", d.columns, f"was {d.category}")
            for d in candidates
        ]
    out: list[Difference] = []
    for name, diffs in group_by_target(candidates).items():
        key_columns = transforms.targets[name].key
        keys = [tuple(json.loads(d.key)) for d in diffs]
        found = _evaluate(*sessions, transforms, shapes, name, key_columns, keys, types[name])
        now = {d.key: d for d in found if d.category != "transform_error"}
        for d in diffs:
            persisting = now.get(d.key)
            if persisting is None:
                out.append(
                    Difference(
                        d.target,
                        d.key,
                        "in_flight",
                        d.columns,
                        f"was {d.category}; gone after catching up",
                    )
                )
            else:
                out.append(persisting)
    return out
