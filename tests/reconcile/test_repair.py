"""Repair re-sends differing keys from the source through the pipeline: it converges to zero
drift, never writes the target, refuses reports it cannot map, and a concurrent insert of a
key it is deleting is not lost."""

from __future__ import annotations

import json
import threading
from pathlib import Path
from typing import Any

import psycopg
import pytest
from click.testing import CliRunner
from sqlalchemy import text

from cli.main import cli
from reconcile import RepairError, load_report, reconcile, repair, write_artifact
from tests.reconcile.helpers import pump, seed, unique_name
from tests.worker.conftest import Pipeline

pytestmark = pytest.mark.integration


def _drift(p: Pipeline) -> None:
    """Drift of every repairable category, on both targets and both sides of the merge."""
    person, address = f'"{p.dst}".person', f'"{p.dst}".address'
    with p.target.begin() as conn:
        conn.execute(text(f"DELETE FROM {person} WHERE id IN (3, 4)"))  # missing
        conn.execute(text(f"INSERT INTO {person} VALUES (9001, 'ghost', NULL, NULL)"))  # extra
        conn.execute(text(f"INSERT INTO {address} VALUES (9001, 'nowhere')"))  # extra
        conn.execute(text(f"UPDATE {person} SET email = 'WRONG', tier = NULL WHERE id = 11"))
        conn.execute(text(f"UPDATE {address} SET city = city || ' ' WHERE person_id = 12"))
    # a source delete the pipeline never saw: the target keeps rows the source no longer has
    p.source_sql("DELETE FROM {s}.person WHERE id = 20")
    p.source_sql(f'DELETE FROM "{p.config.capture.schema}".changelog')


def _changelog(p: Pipeline) -> list[tuple[Any, ...]]:
    with p.source.connect() as conn:
        return [
            tuple(r)
            for r in conn.execute(
                text(
                    f'SELECT seq, source_table, op, key::text, origin FROM "{p.config.capture.schema}".changelog ORDER BY seq'
                )
            )
        ]


def _target_state(p: Pipeline) -> tuple[Any, ...]:
    with p.target.connect() as conn:
        applied = conn.execute(
            text(
                "SELECT target_table, target_key, source_table, version, deleted FROM dualwrite.applied "
                "WHERE target_table LIKE :t ORDER BY 1, 2, 3"
            ),
            {"t": f"{p.dst}.%"},
        ).fetchall()
    return (p.target_rows("person"), p.target_rows("address"), [tuple(r) for r in applied])


def test_reconcile_repair_converges_to_zero_drift(merge_pipeline: Pipeline) -> None:
    p = merge_pipeline
    unique_name(p)
    seed(p)
    _drift(p)
    runner = CliRunner()
    out = runner.invoke(cli, ["reconcile", p.config.path, "--wait-s", "5", "--repair", "--json"])
    assert out.exit_code == 1, out.output  # the diff found drift (and repaired it)
    report = json.loads(out.stdout)
    assert report["counts"]["missing"] == 2 and report["counts"]["extra"] == 4
    sent = {
        (e["source"].split(".")[-1], json.dumps(e["key"]), e["sent"])
        for e in report["repair"]["entries"]
    }
    assert ("person", '{"id": 20}', "delete") in sent  # gone from the source
    assert ("person", '{"id": 9001}', "delete") in sent
    assert ("person", '{"id": 3}', "snapshot") in sent
    assert ("profile", '{"person_id": 3}', "snapshot") in sent  # owner of the merged row
    assert ("profile", '{"person_id": 4}', "delete") in sent  # person 4 has no profile
    assert report["repair"]["complete"] is True
    pump(p)
    again = runner.invoke(cli, ["reconcile", p.config.path, "--wait-s", "5"])
    assert again.exit_code == 0, again.output
    result = reconcile(p.source, p.target, p.config, p.transforms, wait_s=5)
    assert result.differences == ()


def test_repair_from_a_saved_artifact_never_writes_the_target(
    merge_pipeline: Pipeline, tmp_path: Path
) -> None:
    p = merge_pipeline
    unique_name(p)
    seed(p)
    _drift(p)
    artifact = tmp_path / "drift.jsonl"
    result = reconcile(p.source, p.target, p.config, p.transforms, wait_s=5)
    assert result.status == "drift"
    write_artifact(result, artifact)
    before_target, before_log = _target_state(p), _changelog(p)
    assert before_log == []
    with p.source.connect() as conn:
        last_seq = conn.execute(
            text(
                f"SELECT pg_sequence_last_value(pg_get_serial_sequence('\"{p.config.capture.schema}\".changelog', 'seq'))"
            )
        ).scalar_one()

    dry = CliRunner().invoke(cli, ["repair", p.config.path, str(artifact), "--dry-run"])
    assert dry.exit_code == 0, dry.output
    assert "would re-send" in dry.output and "delete" in dry.output
    assert _changelog(p) == []  # a dry run writes nothing

    # the worker is not running: whatever the repair does must wait in the changelog
    out = CliRunner().invoke(cli, ["repair", p.config.path, str(artifact), "--batch-keys", "3"])
    assert out.exit_code == 0, out.output
    assert _target_state(p) == before_target  # the target is untouched
    log = _changelog(p)
    assert {r[4] for r in log} == {"s"} and all(r[0] > last_seq for r in log)
    ops = {(r[1].split(".")[-1], json.loads(r[3])[next(iter(json.loads(r[3])))], r[2]) for r in log}
    assert ops == {
        ("person", 3, "R"),
        ("person", 4, "R"),
        ("person", 11, "R"),
        ("person", 12, "R"),
        ("person", 20, "D"),
        ("person", 9001, "D"),
        ("profile", 3, "R"),
        ("profile", 4, "D"),
        ("profile", 11, "R"),
        ("profile", 20, "D"),
        ("profile", 9001, "D"),
    }
    assert (
        "in 4 batch(es)" in out.output
    )  # 5 person keys + 6 profile keys, 3 per batch... per table
    pump(p)
    assert reconcile(p.source, p.target, p.config, p.transforms, wait_s=5).status == "clean"


def test_reports_that_do_not_fit_this_migration_are_refused(
    merge_pipeline: Pipeline, tmp_path: Path
) -> None:
    p = merge_pipeline
    unique_name(p)
    seed(p)
    line = {
        "migration": p.config.name,
        "target": f"{p.dst}.person",
        "key": "[1]",
        "category": "missing",
    }
    cases = {
        "another migration": (
            {**line, "migration": "someone-else"},
            "from migration 'someone-else'",
        ),
        "unknown target": ({**line, "target": "nope.people"}, "no such target table"),
        "malformed key": ({**line, "key": '[1, "x"]'}, "not a key of"),
        "no migration": ({k: v for k, v in line.items() if k != "migration"}, "names no migration"),
    }
    for label, (entry, message) in cases.items():
        path = tmp_path / f"{label}.jsonl"
        path.write_text(json.dumps(entry) + "\n")
        out = CliRunner().invoke(cli, ["repair", p.config.path, str(path)])
        assert out.exit_code == 2, (label, out.output)
        assert message in out.output, (label, out.output)
        assert _changelog(p) == [], label  # refused before anything was sent
    mixed = tmp_path / "mixed.jsonl"
    mixed.write_text(json.dumps(line) + "\n" + json.dumps({**line, "migration": "x"}) + "\n")
    out = CliRunner().invoke(cli, ["repair", p.config.path, str(mixed)])
    assert out.exit_code == 2 and "mixes migrations" in out.output
    # a JSON report holds only samples: refused when it does not list every key
    p.source_sql(f'ALTER TABLE {{s}}.person DISABLE TRIGGER "{p.config.capture.schema}_capture"')
    p.source_sql("UPDATE {s}.person SET name = 'changed' WHERE id <= 20")
    report = tmp_path / "report.json"
    out = CliRunner().invoke(cli, ["reconcile", p.config.path, "--wait-s", "2", "--json"])
    assert out.exit_code == 1, out.output
    report.write_text(out.stdout)
    refused = CliRunner().invoke(cli, ["repair", p.config.path, str(report)])
    assert refused.exit_code == 2 and "only a sample" in refused.output
    with pytest.raises(RepairError, match="only a sample"):
        load_report(report)
    assert _changelog(p) == []


def test_a_concurrent_insert_of_a_key_being_deleted_is_not_lost(merge_pipeline: Pipeline) -> None:
    """The race the wait in step 2 closes: a writer allocated its changelog seq before the
    repair's delete image but commits after the repair looked for the row."""
    p = merge_pipeline
    unique_name(p)
    seed(p)
    with p.target.begin() as conn:  # the target has a row the source does not (yet)
        conn.execute(text(f"INSERT INTO \"{p.dst}\".person VALUES (700, 'ghost', NULL, NULL)"))
    result = reconcile(p.source, p.target, p.config, p.transforms, wait_s=5)
    assert [(d.key, d.category) for d in result.differences] == [("[700]", "extra")]

    url = p.source.url.set(drivername="postgresql").render_as_string(hide_password=False)
    writer = psycopg.connect(url)
    writer.execute(f"INSERT INTO \"{p.src}\".person VALUES (700, 'real', 'r@x', 'Rome')")
    # uncommitted: its trigger already took a seq lower than anything the repair will take
    outcome: dict[str, Any] = {}

    def run() -> None:
        outcome["result"] = repair(
            p.source, p.config, p.transforms, result.differences, migration=p.config.name
        )

    thread = threading.Thread(target=run)
    thread.start()
    thread.join(1.0)
    assert thread.is_alive(), "the repair must wait for the writer's transaction"
    writer.commit()
    writer.close()
    thread.join(30)
    sent = {(e.source.split(".")[-1], e.sent) for e in outcome["result"].entries}
    assert sent == {("person", "delete+snapshot"), ("profile", "delete")}
    pump(p)
    assert p.target_rows("person")[-1] == (700, "real", "r@x", None)
    assert reconcile(p.source, p.target, p.config, p.transforms, wait_s=5).status == "clean"


def test_a_long_transaction_makes_the_repair_incomplete_and_sends_nothing(
    merge_pipeline: Pipeline, tmp_path: Path
) -> None:
    p = merge_pipeline
    unique_name(p)
    seed(p)
    p.source_sql("DELETE FROM {s}.profile WHERE person_id = 1")
    p.source_sql(f'DELETE FROM "{p.config.capture.schema}".changelog')
    result = reconcile(p.source, p.target, p.config, p.transforms, wait_s=5)
    artifact = tmp_path / "drift.jsonl"
    write_artifact(result, artifact)
    url = p.source.url.set(drivername="postgresql").render_as_string(hide_password=False)
    with psycopg.connect(url) as other:  # some unrelated transaction that holds an xid
        other.execute("CREATE TEMP TABLE busy (x int); INSERT INTO busy VALUES (1)")
        out = CliRunner().invoke(
            cli, ["repair", p.config.path, str(artifact), "--lock-wait-s", "0.5"]
        )
        pid = other.info.backend_pid
    assert out.exit_code == 3, out.output
    assert "INCOMPLETE" in out.output and f"backend pid {pid}" in out.output
    # person 1's batch (a snapshot image: nothing to wait for) was sent; profile 1's batch
    # (a delete image, which must wait) rolled back
    assert [(r[1].split(".")[-1], r[2]) for r in _changelog(p)] == [("person", "R")]


def test_repair_of_a_declared_transform_learns_its_key_mapping(
    source_engine: Any,
    target_engine: Any,
    source_schema: str,
    target_schema: str,
    make_config: Any,
    tmp_path: Path,
) -> None:
    """A migration-file table without a declared key: the fresh registry of `dualwrite
    repair` has not seen a change yet, so it must learn the key mapping from the source."""
    with source_engine.begin() as conn:
        conn.execute(text(f'CREATE TABLE "{source_schema}".item (id int PRIMARY KEY, v text)'))
        conn.execute(
            text(
                f"INSERT INTO \"{source_schema}\".item SELECT g, 'v' || g FROM generate_series(1, 50) g"
            )
        )
    with target_engine.begin() as conn:
        conn.execute(text(f'CREATE TABLE "{target_schema}".item (id int PRIMARY KEY, v text)'))
        conn.execute(
            text(
                f"INSERT INTO \"{target_schema}\".item SELECT g, 'v' || g FROM generate_series(1, 50) g"
            )
        )
        conn.execute(text(f'DELETE FROM "{target_schema}".item WHERE id = 7'))
        conn.execute(text(f"UPDATE \"{target_schema}\".item SET v = 'bad' WHERE id = 8"))
    from dualwrite import capture
    from dualwrite.transform import load_transforms

    config = make_config(
        [{"source": f"{source_schema}.item", "target": f"{target_schema}.item"}],
        idle_poll_ms=10,
        topic_partitions=2,
    )
    capture.install(source_engine, config)
    p = Pipeline(
        config, load_transforms(config), source_schema, target_schema, source_engine, target_engine
    )
    unique_name(p)
    artifact = tmp_path / "drift.jsonl"
    out = CliRunner().invoke(
        cli, ["reconcile", p.config.path, "--wait-s", "5", "--artifact", str(artifact)]
    )
    assert out.exit_code == 1, out.output
    out = CliRunner().invoke(cli, ["repair", p.config.path, str(artifact)])
    assert out.exit_code == 0, out.output
    assert "2 snapshot(s)" in out.output
    p.transforms = load_transforms(p.config)
    pump(p)
    assert p.target_rows("item")[6:8] == [(7, "v7"), (8, "v8")]


def test_repair_racing_writers_through_a_running_pipeline_converges(
    merge_pipeline: Pipeline,
) -> None:
    """The relay and a worker run throughout; writers change, delete and re-insert the very
    keys being repaired while the repair runs. Once the pipeline caught up: no drift."""
    from dualwrite.relay import run_relay
    from dualwrite.worker import run_worker

    p = merge_pipeline
    unique_name(p)
    seed(p)
    person, address = f'"{p.dst}".person', f'"{p.dst}".address'
    drifted = list(range(1, 61))
    with p.target.begin() as conn:  # every third key missing, extra or mismatched
        conn.execute(text(f"DELETE FROM {person} WHERE id % 3 = 0 AND id <= 60"))
        conn.execute(text(f"UPDATE {person} SET name = 'WRONG' WHERE id % 3 = 1 AND id <= 60"))
        conn.execute(
            text(f"UPDATE {address} SET city = 'WRONG' WHERE person_id % 3 = 2 AND person_id <= 60")
        )
        conn.execute(
            text(
                f"INSERT INTO {person} SELECT g, 'ghost', NULL, NULL FROM generate_series(301, 330) g"
            )
        )
    result = reconcile(p.source, p.target, p.config, p.transforms, wait_s=5)
    assert result.counts["missing"] == 20 and result.counts["extra"] == 30

    stop = threading.Event()
    relay = threading.Thread(target=run_relay, args=(p.source, p.config), kwargs={"stop": stop})
    worker = threading.Thread(
        target=run_worker, args=(p.target, p.config, p.transforms), kwargs={"stop": stop}
    )
    relay.start()
    worker.start()
    writing = threading.Event()

    def writer() -> None:
        import random

        rng = random.Random(7)
        n = 0
        while not writing.is_set() or n < 200:
            n += 1
            i = rng.choice([*drifted, *range(301, 331)])
            r = rng.random()
            if r < 0.4:
                p.source_sql(
                    "INSERT INTO {s}.person VALUES (:i, :n, NULL, 'w') ON CONFLICT (id) DO UPDATE SET name = :n",
                    i=i,
                    n=f"w{n}",
                )
            elif r < 0.6:
                p.source_sql(
                    "INSERT INTO {s}.profile VALUES (:i, :t) ON CONFLICT (person_id) DO UPDATE SET tier = :t",
                    i=i,
                    t=f"u{n}",
                )
            elif r < 0.8:
                p.source_sql("DELETE FROM {s}.person WHERE id = :i", i=i)
            else:
                p.source_sql("DELETE FROM {s}.profile WHERE person_id = :i", i=i)

    writer_thread = threading.Thread(target=writer)
    writer_thread.start()
    try:
        for _ in range(3):  # repairs overlap the writes
            done = repair(p.source, p.config, p.transforms, result.differences, batch_keys=7)
            assert done.complete, done.detail
        writing.set()
        writer_thread.join()
        final = reconcile(p.source, p.target, p.config, p.transforms, wait_s=60)
    finally:
        writing.set()
        writer_thread.join()
        stop.set()
        relay.join()
        worker.join()
    assert final.status == "clean", [d for d in final.differences if d.category != "in_flight"][:5]
