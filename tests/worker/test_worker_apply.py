"""The worker against real Kafka and PostgreSQL: merge, split, filter, replay, deletes."""

from __future__ import annotations

import threading

import pytest

from dualwrite.apply import Applier
from dualwrite.relay import run_relay
from dualwrite.worker import _connect, process_messages, run_worker
from tests.capture.helpers import messages
from tests.worker.conftest import Pipeline

pytestmark = pytest.mark.integration


def _pump(p: Pipeline) -> None:
    run_relay(p.source, p.config, until_idle=True, stop=threading.Event())
    run_worker(p.target, p.config, p.transforms, until_idle=True, stop=threading.Event())


def test_merge_split_filter_and_delete_semantics(merge_pipeline: Pipeline) -> None:
    p = merge_pipeline
    p.source_sql(
        "INSERT INTO {s}.profile VALUES (1, 'gold')"
    )  # the profile arrives before its person
    p.source_sql(
        "INSERT INTO {s}.person VALUES (1, 'Ann', 'ANN@X.ORG', 'Oslo'), (2, 'Bob', NULL, NULL)"
    )
    p.source_sql("INSERT INTO {s}.profile VALUES (2, 'silver')")
    p.source_sql("UPDATE {s}.profile SET tier = 'platinum' WHERE person_id = 1")
    p.source_sql("UPDATE {s}.person SET email = 'Ann@New.Org' WHERE id = 1")
    _pump(p)
    assert p.target_rows("person") == [
        (1, "Ann", "ann@new.org", "platinum"),
        (2, "Bob", None, "silver"),
    ]
    assert p.target_rows("address") == [(1, "Oslo")]

    # a secondary owner's delete clears only its columns; filtering removes the split row
    p.source_sql("DELETE FROM {s}.profile WHERE person_id = 1")
    p.source_sql("UPDATE {s}.person SET city = NULL WHERE id = 1")
    _pump(p)
    assert p.target_rows("person") == [(1, "Ann", "ann@new.org", None), (2, "Bob", None, "silver")]
    assert p.target_rows("address") == []

    # a merged row lives while any owner has a row: person 2 goes, its profile keeps the row
    p.source_sql("DELETE FROM {s}.person WHERE id = 2")
    p.source_sql("UPDATE {s}.profile SET tier = 'bronze' WHERE person_id = 2")
    _pump(p)
    assert p.target_rows("person") == [(1, "Ann", "ann@new.org", None), (2, None, None, "bronze")]
    # ... and goes when the last owner's row goes
    p.source_sql("DELETE FROM {s}.profile WHERE person_id = 2")
    _pump(p)
    assert p.target_rows("person") == [(1, "Ann", "ann@new.org", None)]


def test_replaying_the_whole_topic_changes_nothing(merge_pipeline: Pipeline) -> None:
    p = merge_pipeline
    for i in range(1, 51):
        p.source_sql(
            "INSERT INTO {s}.person VALUES (:i, 'n' || :i, 'E' || :i || '@X', 'c' || :i)", i=i
        )
        p.source_sql("INSERT INTO {s}.profile VALUES (:i, 't' || :i)", i=i)
    p.source_sql("UPDATE {s}.person SET name = name || '!' WHERE id % 3 = 0")
    p.source_sql("DELETE FROM {s}.person WHERE id % 7 = 0")
    _pump(p)
    before = (p.target_rows("person"), p.target_rows("address"))
    assert len(before[0]) == 50 and len(before[1]) == 50 - 7  # profiles keep merged rows alive

    conn = _connect(p.target)
    try:
        outcome = process_messages(
            Applier(conn, p.transforms), conn, p.config, p.transforms, messages(p.config)
        )
    finally:
        conn.close()
    assert outcome.applied == 0 and not outcome.poison
    assert (p.target_rows("person"), p.target_rows("address")) == before


def test_status_reports_partition_lag_and_applied_positions(merge_pipeline: Pipeline) -> None:
    import json

    from click.testing import CliRunner

    from cli.main import cli

    p = merge_pipeline
    p.source_sql("INSERT INTO {s}.person VALUES (1, 'a', NULL, NULL)")
    p.source_sql("INSERT INTO {s}.profile VALUES (1, 'gold')")
    run_relay(p.source, p.config, until_idle=True, stop=threading.Event())
    result = CliRunner().invoke(cli, ["status", p.config.path, "--json"])
    assert result.exit_code == 0, result.output
    before = json.loads(result.stdout)
    assert sum(part["end_offset"] for part in before["partitions"]) == 2
    run_worker(p.target, p.config, p.transforms, until_idle=True, stop=threading.Event())
    after = json.loads(CliRunner().invoke(cli, ["status", p.config.path, "--json"]).stdout)
    assert all(
        part["committed"] == part["end_offset"]
        for part in after["partitions"]
        if part["end_offset"]
    )
    sources = {s["source"]: s for s in after["sources"]}
    assert {f"{p.src}.person", f"{p.src}.profile"} <= set(sources)
    assert all(sources[f"{p.src}.{t}"]["lag_s"] is not None for t in ("person", "profile"))
