"""Every poison kind is dead-lettered with its reason; its key is quarantined and later events
of that key are parked; after the fix, the re-drive converges through the version guard."""

from __future__ import annotations

import json
import threading

import pytest
from click.testing import CliRunner
from sqlalchemy import text

from cli.main import cli
from dualwrite import worker
from dualwrite.dlq import dead_letters, quarantined, redrive
from dualwrite.kafka_io import Producer
from dualwrite.relay import run_relay
from dualwrite.worker import WorkerSettings, run_worker
from tests.worker import merge_transform
from tests.worker.conftest import Pipeline

pytestmark = pytest.mark.integration


def _pump(p: Pipeline) -> None:
    run_relay(p.source, p.config, until_idle=True, stop=threading.Event())
    run_worker(p.target, p.config, p.transforms, until_idle=True, stop=threading.Event())


def test_poison_is_dead_lettered_quarantined_parked_and_redriven(merge_pipeline: Pipeline) -> None:
    p = merge_pipeline
    person = f"{p.src}.person"
    junk, unknown_key = f"junk.{p.src}:[1]", f"public.unknown_{p.src}:[1]"  # unique to this test
    p.source_sql("INSERT INTO {s}.person VALUES (1, 'ok', NULL, 'Oslo')")
    p.source_sql("INSERT INTO {s}.person VALUES (3, 'boom', NULL, NULL)")  # transform raises
    p.source_sql("INSERT INTO {s}.person VALUES (4, 'bad city', NULL, 'forbidden')")  # CHECK fails
    _pump(p)  # (a later change of a key in the same batch would supersede the bad one)
    producer = Producer(p.config.kafka.bootstrap_servers)
    producer.send(p.config.changes_topic, junk.encode(), b"\xff not json").get(10)
    unknown = {
        "schema_version": 1,
        "source": "public.unknown",
        "op": "insert",
        "key": {"id": 1},
        "row": {"id": 1},
        "types": {"id": "integer"},
        "version": 1,
        "txid": "1",
        "ts": "2026-01-01T00:00:00+00:00",
        "origin": "trigger",
    }
    producer.send(p.config.changes_topic, unknown_key.encode(), json.dumps(unknown).encode()).get(
        10
    )
    producer.close()
    # later events of the poisoned keys, and of a healthy key
    p.source_sql("UPDATE {s}.person SET name = 'fixed' WHERE id = 3")
    p.source_sql("UPDATE {s}.person SET city = 'Rome' WHERE id = 4")
    p.source_sql("UPDATE {s}.person SET name = 'ok2' WHERE id = 1")
    _pump(p)

    assert p.target_rows("person") == [(1, "ok2", None, None)], "the healthy key keeps flowing"
    reasons = {d.key: d.reason for d in dead_letters(p.config)}
    assert reasons == {
        junk: "undecodable",
        unknown_key: "unknown_table",
        f"{person}:[3]": "transform_error",
        f"{person}:[4]": "target_error",
    }
    letters = {d.key: d for d in dead_letters(p.config)}
    assert letters[junk].value == b"\xff not json"  # the original bytes
    assert "cannot handle 'boom'" in letters[f"{person}:[3]"].error
    assert "check" in letters[f"{person}:[4]"].error.lower()
    held = {q.msg_key: q.parked for q in quarantined(p.target) if p.src in q.msg_key}
    assert held == {junk: 0, unknown_key: 0, f"{person}:[3]": 1, f"{person}:[4]": 1}

    result = CliRunner().invoke(cli, ["dlq", "list", p.config.path, "--json"])
    assert result.exit_code == 1
    listed = {q["msg_key"] for q in json.loads(result.output)["quarantined"]}
    assert set(held) <= listed

    # the fixes: the transform bug, and the target constraint
    merge_transform.FIXED["boom"] = True
    try:
        with p.target.begin() as conn:
            conn.execute(text(f'ALTER TABLE "{p.dst}".address DROP CONSTRAINT address_city_check'))
        result_keys = redrive(p.target, p.config, p.transforms, [f"{person}:[3]", f"{person}:[4]"])
    finally:
        merge_transform.FIXED["boom"] = False
    assert result_keys.still_quarantined == ()
    assert p.target_rows("person") == [
        (1, "ok2", None, None),
        (3, "fixed", None, None),
        (4, "bad city", None, None),
    ]
    assert p.target_rows("address") == [(1, "Oslo"), (4, "Rome")]
    assert {q.msg_key for q in quarantined(p.target) if p.src in q.msg_key} == {junk, unknown_key}

    # re-driving what cannot be fixed fails again and stays quarantined; nothing else changes
    again = redrive(p.target, p.config, p.transforms, [junk, unknown_key])
    assert set(again.still_quarantined) == {junk, unknown_key}
    assert p.target_rows("person") == [
        (1, "ok2", None, None),
        (3, "fixed", None, None),
        (4, "bad city", None, None),
    ]


def test_redrive_keeps_to_its_migration_and_finishes_what_an_interrupted_redrive_left_parked(
    merge_pipeline: Pipeline,
) -> None:
    p = merge_pipeline
    mine = f"{p.src}.person:[4]"
    foreign = f"other_{p.src}.t:[1]"  # another migration writing to the same target database
    p.source_sql("INSERT INTO {s}.person VALUES (4, 'bad city', NULL, 'forbidden')")  # CHECK fails
    _pump(p)
    p.source_sql("UPDATE {s}.person SET city = 'Rome' WHERE id = 4")
    _pump(p)  # parked behind the quarantined key
    with p.target.begin() as conn:
        conn.execute(
            text(
                "INSERT INTO dualwrite.quarantine (msg_key, reason, error) "
                "VALUES (:k, 'target_error', 'not ours')"
            ),
            {"k": foreign},
        )
        # a re-drive that died after lifting the quarantine: the parked event is all that is left
        conn.execute(text("DELETE FROM dualwrite.quarantine WHERE msg_key = :k"), {"k": mine})
    try:
        listed = CliRunner().invoke(cli, ["dlq", "list", p.config.path, "--json"])
        assert listed.exit_code == 1, listed.output
        held = {q["msg_key"]: q for q in json.loads(listed.output)["quarantined"]}
        assert foreign not in held
        assert held[mine]["reason"] == "redrive_interrupted" and held[mine]["parked"] == 1

        with p.target.begin() as conn:
            conn.execute(text(f'ALTER TABLE "{p.dst}".address DROP CONSTRAINT address_city_check'))
        result = redrive(p.target, p.config, p.transforms)
        assert mine in result.keys and foreign not in result.keys
        assert result.still_quarantined == ()
        assert p.target_rows("address") == [(4, "Rome")]
        with p.target.connect() as conn:
            left = conn.execute(
                text("SELECT msg_key FROM dualwrite.parked WHERE msg_key = :k"), {"k": mine}
            ).all()
            foreign_held = conn.execute(
                text("SELECT count(*) FROM dualwrite.quarantine WHERE msg_key = :k"), {"k": foreign}
            ).scalar_one()
        assert left == [] and foreign_held == 1
    finally:
        with p.target.begin() as conn:
            conn.execute(
                text("DELETE FROM dualwrite.quarantine WHERE msg_key = :k"), {"k": foreign}
            )


@pytest.mark.parametrize("read_whole", [1000, 0], ids=["table-read-whole", "keys-looked-up"])
def test_a_key_quarantined_by_one_batch_parks_its_events_in_the_next(
    merge_pipeline: Pipeline, monkeypatch: pytest.MonkeyPatch, read_whole: int
) -> None:
    """Batch N+1 is decoded while batch N is applied; a key N quarantines at apply time (a
    target error) must still park N+1's event of that key, not apply it out of order. Both
    ways of reading the quarantine (whole while small, else the batch's keys) are used."""
    monkeypatch.setattr(worker, "_QUARANTINE_READ_WHOLE", read_whole)
    p = merge_pipeline
    p.source_sql("INSERT INTO {s}.person VALUES (4, 'bad city', NULL, 'forbidden')")  # CHECK fails
    p.source_sql("UPDATE {s}.person SET city = 'Rome', name = 'later' WHERE id = 4")
    p.source_sql("INSERT INTO {s}.person VALUES (5, 'ok', NULL, 'Oslo')")
    run_relay(p.source, p.config, until_idle=True, stop=threading.Event())

    result = run_worker(
        p.target,
        p.config,
        p.transforms,
        settings=WorkerSettings(batch_size=1, linger_ms=0),  # one event per batch
        until_idle=True,
        stop=threading.Event(),
    )

    assert result.batches == 3 and result.dead_lettered == 1 and result.parked == 1
    assert p.target_rows("person") == [(5, "ok", None, None)]
    assert p.target_rows("address") == [(5, "Oslo")]
    assert [
        (q.msg_key, q.reason, q.parked) for q in quarantined(p.target) if p.src in q.msg_key
    ] == [(f"{p.src}.person:[4]", "target_error", 1)]
