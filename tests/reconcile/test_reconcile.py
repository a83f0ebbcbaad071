"""Seeded drift of every category is found exactly, in-flight writes are not drift, and the
CLI keeps its exit-code contract."""

from __future__ import annotations

import json
import threading
from pathlib import Path

import pytest
from click.testing import CliRunner
from sqlalchemy import text

from cli.main import cli
from dualwrite.relay import run_relay
from dualwrite.worker import run_worker
from reconcile import reconcile
from tests.worker.conftest import Pipeline

pytestmark = pytest.mark.integration


def _pump(p: Pipeline) -> None:
    run_relay(p.source, p.config, until_idle=True, stop=threading.Event())
    run_worker(p.target, p.config, p.transforms, until_idle=True, stop=threading.Event())


def _seed(p: Pipeline) -> None:
    p.source_sql(
        "INSERT INTO {s}.person SELECT g, 'n' || g, 'E' || g || '@X', 'c' || g FROM generate_series(1, 200) g"
    )
    p.source_sql("INSERT INTO {s}.profile SELECT g, 't' || g FROM generate_series(1, 200, 2) g")
    _pump(p)


def test_clean_pipeline_reconciles_clean(merge_pipeline: Pipeline) -> None:
    p = merge_pipeline
    _seed(p)
    result = reconcile(p.source, p.target, p.config, p.transforms, wait_s=10)
    assert result.status == "clean", result.differences[:5]
    assert {t.target: t.expected_rows for t in result.tables} == {
        f"{p.dst}.person": 200,
        f"{p.dst}.address": 200,
    }


def test_seeded_drift_of_every_category_is_found_exactly(
    merge_pipeline: Pipeline, tmp_path: Path
) -> None:
    p = merge_pipeline
    _seed(p)
    person, address = f'"{p.dst}".person', f'"{p.dst}".address'
    with p.target.begin() as conn:
        conn.execute(text(f"DELETE FROM {person} WHERE id IN (3, 4)"))  # missing x2
        conn.execute(text(f"INSERT INTO {person} VALUES (9001, 'ghost', NULL, NULL)"))  # extra
        conn.execute(text(f"UPDATE {person} SET email = 'WRONG' WHERE id = 10"))  # mismatch
        conn.execute(
            text(f"UPDATE {person} SET tier = NULL WHERE id = 11")
        )  # mismatch (NULL vs value)
        conn.execute(
            text(f"UPDATE {address} SET city = city || ' ' WHERE person_id = 12")
        )  # trailing space
    # a source row the transform cannot handle, applied nowhere (the worker would dead-letter it)
    p.source_sql("INSERT INTO {s}.person VALUES (500, 'boom', NULL, NULL)")
    p.source_sql(f'DELETE FROM "{p.config.capture.schema}".changelog')
    result = reconcile(p.source, p.target, p.config, p.transforms, wait_s=10)
    got = sorted((d.target.split(".")[-1], d.key, d.category) for d in result.differences)
    assert got == sorted(
        [
            ("person", "[3]", "missing"),
            ("person", "[4]", "missing"),
            ("person", "[9001]", "extra"),
            ("person", "[10]", "mismatch"),
            ("person", "[11]", "mismatch"),
            ("address", "[12]", "mismatch"),
            ("person", '{"id":500}', "transform_error"),
        ]
    ), got
    by_key = {(d.target.split(".")[-1], d.key): d for d in result.differences}
    assert by_key[("person", "[10]")].columns == {"email": ("e10@x", "WRONG")}
    assert by_key[("person", "[11]")].columns == {"tier": ("t11", None)}
    assert result.status == "drift"

    artifact = tmp_path / "drift.jsonl"
    out = CliRunner().invoke(
        cli, ["reconcile", p.config.path, "--artifact", str(artifact), "--wait-s", "5", "--json"]
    )
    assert out.exit_code == 1, out.output
    report = json.loads(out.stdout)
    assert report["schema_version"] == 1 and report["status"] == "drift"
    assert report["counts"]["missing"] == 2 and report["counts"]["mismatch"] == 3
    assert len(artifact.read_text().splitlines()) == 7


def test_writes_while_the_pipeline_lags_are_in_flight_not_drift(merge_pipeline: Pipeline) -> None:
    p = merge_pipeline
    _seed(p)
    # changes committed on the source but not yet relayed or applied: the pipeline lags
    p.source_sql("UPDATE {s}.person SET name = name || '!' WHERE id <= 20")
    p.source_sql("DELETE FROM {s}.profile WHERE person_id <= 9")
    stop = threading.Event()

    def catch_up_later() -> None:
        stop.wait(2)
        _pump(p)

    thread = threading.Thread(target=catch_up_later)
    thread.start()
    result = reconcile(p.source, p.target, p.config, p.transforms, wait_s=60)
    thread.join()
    assert result.status == "clean", [d for d in result.differences if d.category != "in_flight"][
        :5
    ]
    assert result.counts["in_flight"] > 0


def test_incomplete_when_the_pipeline_does_not_catch_up(merge_pipeline: Pipeline) -> None:
    p = merge_pipeline
    _seed(p)
    p.source_sql("UPDATE {s}.person SET name = 'late' WHERE id = 1")
    out = CliRunner().invoke(cli, ["reconcile", p.config.path, "--wait-s", "1"])
    assert out.exit_code == 3, out.output
    assert "INCOMPLETE" in out.output and "unverified 1" in out.output
