"""The backfill's insert-if-absent path (version-0 operations) against the stream's writes.

Each race is made deterministic: one transaction holds its claim open, the other is started
in a thread and seen waiting on a lock in ``pg_stat_activity`` before the first one commits.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import psycopg
import pytest

from dualwrite.apply import LOCK_SLOTS, Applier, ApplyResult, ensure_bookkeeping
from dualwrite.backfill import BackfillSettings, run_backfill
from dualwrite.config import parse_qualified_name
from dualwrite.snapshot import connect
from dualwrite.transform import TargetOp
from tests.worker.conftest import Pipeline

pytestmark = pytest.mark.integration


@pytest.fixture
def conns(merge_pipeline: Pipeline) -> Iterator[Callable[[str], psycopg.Connection[Any]]]:
    ensure_bookkeeping(merge_pipeline.target)
    opened: list[psycopg.Connection[Any]] = []

    def open_conn(name: str) -> psycopg.Connection[Any]:
        conn = connect(merge_pipeline.target, name)
        opened.append(conn)
        return conn

    yield open_conn
    for conn in opened:
        conn.close()


def _person(p: Pipeline, key: int, version: int, source: str = "person", **values: Any) -> TargetOp:
    return TargetOp(
        parse_qualified_name(f"{p.dst}.person"),
        (key,),
        {"id": key, **values},
        f"{p.src}.{source}",
        version,
    )


def _address(p: Pipeline, key: int, version: int, city: str | None) -> TargetOp:
    row = None if city is None else {"person_id": key, "city": city}
    return TargetOp(
        parse_qualified_name(f"{p.dst}.address"), (key,), row, f"{p.src}.person", version
    )


def _bookkeeping(
    p: Pipeline, conn: psycopg.Connection[Any]
) -> dict[tuple[str, str], tuple[int, bool]]:
    rows = conn.execute(
        "SELECT target_table, target_key, source_table, version, deleted FROM dualwrite.applied "
        "WHERE target_table LIKE %s",
        (f"{p.dst}.%",),
    ).fetchall()
    conn.commit()
    return {(r[0].split(".")[-1] + ":" + r[2].split(".")[-1], r[1]): (r[3], r[4]) for r in rows}


def _apply(applier: Applier, ops: list[TargetOp]) -> ApplyResult:
    with applier.conn.transaction():
        return applier.apply(ops)


def test_version_zero_writes_only_keys_nothing_was_applied_for(
    merge_pipeline: Pipeline, conns: Callable[[str], psycopg.Connection[Any]]
) -> None:
    p = merge_pipeline
    applier = Applier(conns("dw-test-absent"), p.transforms)
    stream = [
        _person(p, 1, 5, name="stream", email=None),
        _address(p, 2, 6, None),  # a streamed delete: a tombstone
        _person(p, 3, 2, source="profile", tier="gold"),  # the other owner of merged row 3
    ]
    assert _apply(applier, stream).applied == 3
    snapshot = [
        _person(p, 1, 0, name="old", email="o@x"),
        _address(p, 2, 0, "old city"),
        _person(p, 3, 0, name="n3", email="e3"),
        _address(p, 4, 0, "c4"),
        _address(p, 5, 0, None),  # a row the transform filters out: a version-0 tombstone
    ]
    result = _apply(applier, snapshot)

    # person 3 (merged: its owner claims the key) and address 4 are written; address 5 has no
    # row to delete; person 1 and address 2 were streamed.
    assert result == ApplyResult(applied=2, skipped=3)
    assert p.target_rows("person") == [(1, "stream", None, None), (3, "n3", "e3", "gold")]
    assert p.target_rows("address") == [(4, "c4")]  # 2 stays deleted
    assert _bookkeeping(p, applier.conn) == {
        ("person:person", "[1]"): (5, False),
        ("address:person", "[2]"): (6, True),
        ("person:profile", "[3]"): (2, False),
        ("person:person", "[3]"): (0, False),  # a merge owner's claim
        # address (one owner): the backfill records nothing
    }
    # Again (a resumed or repeated backfill): the streamed keys stay skipped, the merged key's
    # claim (0 is not newer than 0) too; address 4 is written again with the same values.
    assert _apply(applier, snapshot) == ApplyResult(applied=1, skipped=4)
    assert p.target_rows("person") == [(1, "stream", None, None), (3, "n3", "e3", "gold")]
    assert p.target_rows("address") == [(4, "c4")]
    # The stream still wins afterwards.
    assert _apply(applier, [_address(p, 4, 1, "streamed")]).applied == 1
    assert p.target_rows("address") == [(4, "streamed")]


def test_version_zero_deletes_of_a_merged_row_keep_the_other_owners_columns(
    merge_pipeline: Pipeline, conns: Callable[[str], psycopg.Connection[Any]]
) -> None:
    p = merge_pipeline
    applier = Applier(conns("dw-test-absent-merge"), p.transforms)
    _apply(applier, [_person(p, 7, 3, source="profile", tier="silver")])
    deleted = TargetOp(parse_qualified_name(f"{p.dst}.person"), (7,), None, f"{p.src}.person", 0)
    assert _apply(applier, [deleted]).applied == 1  # its tombstone is recorded ...
    assert p.target_rows("person") == [(7, None, None, "silver")]  # ... the profile's row stays


def _wait_until_blocked(conn: psycopg.Connection[Any], application_name: str) -> None:
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        waiting = conn.execute(
            "SELECT count(*) FROM pg_stat_activity WHERE application_name = %s "
            "AND wait_event_type = 'Lock'",
            (application_name,),
        ).fetchone()
        conn.commit()
        if waiting and waiting[0]:
            return
        time.sleep(0.02)
    raise AssertionError(f"{application_name} never waited on a lock")


def _in_thread(fn: Callable[[], ApplyResult]) -> tuple[threading.Thread, list[ApplyResult]]:
    out: list[ApplyResult] = []
    thread = threading.Thread(target=lambda: out.append(fn()))
    thread.start()
    return thread, out


def test_backfill_waits_for_an_uncommitted_stream_write_then_loses(
    merge_pipeline: Pipeline, conns: Callable[[str], psycopg.Connection[Any]]
) -> None:
    p = merge_pipeline
    stream = Applier(conns("dw-test-stream"), p.transforms)
    backfill = Applier(conns("dw-test-backfill"), p.transforms)
    observer = conns("dw-test-observer")

    with stream.conn.transaction():  # the stream's claim and write of key 10, not committed yet
        stream.apply([_person(p, 10, 7, name="stream", email=None), _address(p, 10, 7, "new")])
        thread, out = _in_thread(
            lambda: _apply(
                backfill,
                [_person(p, 10, 0, name="old", email=None), _address(p, 10, 0, "old")],
            )
        )
        _wait_until_blocked(observer, "dw-test-backfill")
    thread.join(20)

    assert out == [ApplyResult(applied=0, skipped=2)]
    assert p.target_rows("person") == [(10, "stream", None, None)]
    assert p.target_rows("address") == [(10, "new")]
    assert _bookkeeping(p, observer)[("person:person", "[10]")] == (7, False)


def test_a_stream_write_waits_for_an_uncommitted_backfill_then_wins(
    merge_pipeline: Pipeline, conns: Callable[[str], psycopg.Connection[Any]]
) -> None:
    p = merge_pipeline
    stream = Applier(conns("dw-test-stream2"), p.transforms)
    backfill = Applier(conns("dw-test-backfill2"), p.transforms)
    observer = conns("dw-test-observer2")

    with backfill.conn.transaction():  # the backfill claimed and wrote key 11, not committed
        assert backfill.apply([_person(p, 11, 0, name="old", email=None)]).applied == 1
        thread, out = _in_thread(
            lambda: _apply(stream, [_person(p, 11, 3, name="stream", email="s@x")])
        )
        _wait_until_blocked(observer, "dw-test-stream2")
    thread.join(20)

    assert out == [ApplyResult(applied=1, skipped=0)]
    assert p.target_rows("person") == [(11, "stream", "s@x", None)]
    assert _bookkeeping(p, observer)[("person:person", "[11]")] == (3, False)


def test_a_chunk_that_deadlocked_is_retried(
    merge_pipeline: Pipeline, monkeypatch: pytest.MonkeyPatch
) -> None:
    p = merge_pipeline
    p.source_sql(
        "INSERT INTO {s}.person SELECT g, 'n' || g, NULL, 'c' FROM generate_series(1, 50) g"
    )
    p.source_sql(f'DELETE FROM "{p.config.capture.schema}".changelog')
    real_apply = Applier.apply_reads
    calls = {"n": 0}

    def deadlock_once(self: Applier, batch: Any) -> ApplyResult:
        calls["n"] += 1
        result = real_apply(self, batch)  # its writes are rolled back with the chunk
        if calls["n"] == 2:
            raise psycopg.errors.DeadlockDetected("deadlock detected (injected)")
        return result

    monkeypatch.setattr(Applier, "apply_reads", deadlock_once)
    results = run_backfill(
        p.source, p.target, p.config, p.transforms, BackfillSettings(chunk_rows=20)
    )

    person = next(r for r in results if r.source == f"{p.src}.person")
    assert person.done and person.rows == 50 and person.chunks == 3
    assert calls["n"] >= 4  # person: 3 chunks + the retried one
    assert len(p.target_rows("person")) == 50 and len(p.target_rows("address")) == 50


def test_stopping_keeps_the_progress_of_applied_chunks_only(merge_pipeline: Pipeline) -> None:
    p = merge_pipeline
    p.source_sql(
        "INSERT INTO {s}.person SELECT g, 'n' || g, NULL, 'c' FROM generate_series(1, 1000) g"
    )
    p.source_sql(f'DELETE FROM "{p.config.capture.schema}".changelog')
    stop = threading.Event()
    settings = BackfillSettings(chunk_rows=100, tables=(f"{p.src}.person",))

    # The reader is a chunk ahead when the stop comes: that chunk must not count as done.
    first = run_backfill(
        p.source,
        p.target,
        p.config,
        p.transforms,
        settings,
        stop=stop,
        progress=lambda _progress: stop.set(),
    )

    (person,) = first
    assert not person.done and person.rows == 100
    assert len(p.target_rows("person")) == 100
    (again,) = run_backfill(p.source, p.target, p.config, p.transforms, settings)
    assert again.resumed and again.done and again.rows == 900 and again.rows_total == 1000
    assert len(p.target_rows("person")) == 1000


def test_backfill_waits_for_an_uncommitted_stream_delete_and_does_not_resurrect_it(
    merge_pipeline: Pipeline, conns: Callable[[str], psycopg.Connection[Any]]
) -> None:
    """The stream's delete of a row the target never had leaves only a tombstone, which an
    uncommitted transaction hides; the chunk must wait for it (the tables' advisory lock),
    not write the old row beside it."""
    p = merge_pipeline
    stream = Applier(conns("dw-test-stream3"), p.transforms)
    backfill = Applier(conns("dw-test-backfill3"), p.transforms)
    observer = conns("dw-test-observer3")

    with stream.conn.transaction():  # the stream's tombstone of address 20, not committed yet
        assert stream.apply([_address(p, 20, 4, None)]).applied == 1
        thread, out = _in_thread(lambda: _apply(backfill, [_address(p, 20, 0, "old")]))
        _wait_until_blocked(observer, "dw-test-backfill3")
    thread.join(20)

    assert out == [ApplyResult(applied=0, skipped=1)]
    assert p.target_rows("address") == []
    assert _bookkeeping(p, observer)[("address:person", "[20]")] == (4, True)


def test_a_stream_delete_waits_for_an_uncommitted_chunk_then_deletes_its_row(
    merge_pipeline: Pipeline, conns: Callable[[str], psycopg.Connection[Any]]
) -> None:
    """A chunk's single-owner row carries no bookkeeping row to wait on; the stream's delete
    must still see it (the tables' advisory lock), or the row would outlive its delete."""
    p = merge_pipeline
    stream = Applier(conns("dw-test-stream4"), p.transforms)
    backfill = Applier(conns("dw-test-backfill4"), p.transforms)
    observer = conns("dw-test-observer4")

    with backfill.conn.transaction():  # the chunk wrote address 21, not committed yet
        assert backfill.apply([_address(p, 21, 0, "old")]).applied == 1
        thread, out = _in_thread(lambda: _apply(stream, [_address(p, 21, 4, None)]))
        _wait_until_blocked(observer, "dw-test-stream4")
    thread.join(20)

    assert out == [ApplyResult(applied=1, skipped=0)]
    assert p.target_rows("address") == []
    assert _bookkeeping(p, observer)[("address:person", "[21]")] == (4, True)


def test_chunks_of_shards_on_other_slots_write_a_table_at_once_the_stream_waits(
    merge_pipeline: Pipeline, conns: Callable[[str], psycopg.Connection[Any]]
) -> None:
    """A chunk of shard 0 holds its tables open: a chunk of shard 1 (another lock slot)
    writes the same table meanwhile; a chunk of shard LOCK_SLOTS (the same slot) and a stream
    batch wait for it."""
    p = merge_pipeline
    shard0 = Applier(conns("dw-test-shard0"), p.transforms, backfill_slot=0)
    shard1 = Applier(conns("dw-test-shard1"), p.transforms, backfill_slot=1)
    same_slot = Applier(conns("dw-test-shard4"), p.transforms, backfill_slot=LOCK_SLOTS)
    stream = Applier(conns("dw-test-stream6"), p.transforms)
    observer = conns("dw-test-observer6")

    with shard0.conn.transaction():  # the chunk wrote address 30, not committed yet
        assert shard0.apply([_address(p, 30, 0, "zero")]).applied == 1
        assert _apply(shard1, [_address(p, 31, 0, "one")]).applied == 1  # no wait
        waiting, out = _in_thread(lambda: _apply(same_slot, [_address(p, 32, 0, "four")]))
        _wait_until_blocked(observer, "dw-test-shard4")
        streaming, streamed = _in_thread(lambda: _apply(stream, [_address(p, 30, 5, None)]))
        _wait_until_blocked(observer, "dw-test-stream6")
    waiting.join(20)
    streaming.join(20)

    assert out == [ApplyResult(applied=1, skipped=0)]
    assert streamed == [ApplyResult(applied=1, skipped=0)]
    assert sorted(r[0] for r in p.target_rows("address")) == [31, 32]


def test_a_chunk_of_new_keys_is_copied_and_one_with_a_known_key_is_written_row_by_row(
    merge_pipeline: Pipeline,
    conns: Callable[[str], psycopg.Connection[Any]],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    p = merge_pipeline
    applier = Applier(conns("dw-test-copy"), p.transforms)
    copies: list[int] = []
    real_copy = Applier._copy_new

    def counting_copy(self: Applier, *args: Any) -> int | None:
        result = real_copy(self, *args)
        copies.append(-1 if result is None else result)
        return result

    monkeypatch.setattr(Applier, "_copy_new", counting_copy)
    assert _apply(applier, [_address(p, k, 0, f"c{k}") for k in (30, 31, 32)]).applied == 3
    assert copies == [3]  # no key known: one COPY into the table
    _apply(applier, [_address(p, 33, 2, "streamed")])  # the stream writes key 33
    snapshot = [_address(p, 33, 0, "old"), _address(p, 34, 0, "c34"), _address(p, 35, 0, None)]
    assert _apply(applier, snapshot) == ApplyResult(applied=1, skipped=2)
    assert copies == [3]  # key 33 is known: the statement path, which skips it
    assert p.target_rows("address") == [
        (30, "c30"),
        (31, "c31"),
        (32, "c32"),
        (33, "streamed"),
        (34, "c34"),
    ]


def test_a_copy_that_meets_a_key_written_meanwhile_falls_back_to_row_by_row(
    merge_pipeline: Pipeline,
    conns: Callable[[str], psycopg.Connection[Any]],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A writer outside dualwrite (not bound by the advisory lock) adds a key between the
    lookup and the COPY: the COPY's unique violation is undone and the chunk is written by
    the statement path, which keeps that writer's row."""
    p = merge_pipeline
    applier = Applier(conns("dw-test-copy-race"), p.transforms)
    other = conns("dw-test-someone-else")
    other.execute(f"INSERT INTO \"{p.dst}\".address VALUES (41, 'someone else')")
    other.commit()
    monkeypatch.setattr(Applier, "_all_new", lambda self, *args: True)  # the lookup came first

    result = _apply(applier, [_address(p, 40, 0, "c40"), _address(p, 41, 0, "c41")])

    assert result == ApplyResult(applied=2, skipped=0)  # 41: no bookkeeping, so overwritten
    assert p.target_rows("address") == [(40, "c40"), (41, "c41")]
