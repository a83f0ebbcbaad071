"""Reports and the exit-code contract through the CLI: the HTML page with its per-table
summary and run-history chart, the upgrade of an older run-history table, progress kept off
stdout, the one-line summary, and exit 0 / 1 / 2 / 3."""

from __future__ import annotations

import datetime as dt
import json
import re
import uuid
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest
from click.testing import CliRunner
from sqlalchemy import Engine, create_engine, text

from cli.main import cli
from reconcile import ReconcileResult, TableSummary, read_history, record_run
from tests.reconcile.helpers import seed, unique_name
from tests.worker.conftest import Pipeline

pytestmark = pytest.mark.integration

HOSTILE = "<script>alert(1)</script>"


def test_html_report_has_the_table_summary_and_one_chart_point_per_recorded_run(
    merge_pipeline: Pipeline, tmp_path: Path
) -> None:
    p = merge_pipeline
    name = unique_name(p)
    seed(p)
    runner = CliRunner()
    page = tmp_path / "report.html"
    for _ in range(2):  # two clean runs
        out = runner.invoke(cli, ["reconcile", p.config.path, "--wait-s", "5", "--html", str(page)])
        assert out.exit_code == 0, out.output
    with p.target.begin() as conn:
        conn.execute(text(f'UPDATE "{p.dst}".person SET name = :v WHERE id = 7'), {"v": HOSTILE})
    out = runner.invoke(cli, ["reconcile", p.config.path, "--wait-s", "5", "--html", str(page)])
    assert out.exit_code == 1, out.output

    html = page.read_text()
    history = read_history(p.target, name)
    assert [r.status for r in history] == ["clean", "clean", "drift"]
    assert html.count('class="point"') == 3  # one point per recorded run of this migration
    assert [r.drift for r in history] == [0, 0, 1]
    # per-table summary: both targets with their expected row counts
    rows = re.findall(r"<tr><td><code>([^<]+)</code></td><td class=\"num\">([\d,]+)</td>", html)
    assert dict(rows) == {f"{p.dst}.address": "200", f"{p.dst}.person": "200"}
    # the drifting value is shown, inert
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in html and "<script" not in html
    assert "http://" not in html.replace('xmlns="http://www.w3.org/2000/svg"', "")
    # the stored per-table counts
    assert {t.target: t.counts["mismatch"] for t in history[-1].tables} == {
        f"{p.dst}.address": 0,
        f"{p.dst}.person": 1,
    }
    assert history[-1].caught_up is True


def test_json_stays_clean_on_stdout_and_quiet_prints_only_the_summary(
    merge_pipeline: Pipeline,
) -> None:
    p = merge_pipeline
    unique_name(p)
    seed(p)
    out = CliRunner().invoke(cli, ["reconcile", p.config.path, "--wait-s", "5", "--json"])
    assert out.exit_code == 0, out.output
    report = json.loads(out.stdout)  # progress went to stderr, not here
    assert report["status"] == "clean" and isinstance(report["run_id"], int)
    assert report["summary"].startswith(f"reconcile {p.config.name}: CLEAN")
    out = CliRunner().invoke(cli, ["reconcile", p.config.path, "--wait-s", "5", "-q"])
    assert out.exit_code == 0
    assert out.stdout.splitlines() == [report["summary"]]


def test_exit_codes_clean_drift_incomplete_error(merge_pipeline: Pipeline, tmp_path: Path) -> None:
    p = merge_pipeline
    unique_name(p)
    seed(p)
    runner = CliRunner()
    assert runner.invoke(cli, ["reconcile", p.config.path, "--wait-s", "5"]).exit_code == 0
    with p.target.begin() as conn:
        conn.execute(text(f'DELETE FROM "{p.dst}".address WHERE person_id = 5'))
    drift = runner.invoke(cli, ["reconcile", p.config.path, "--wait-s", "5"])
    assert drift.exit_code == 1 and "DRIFT (missing 1" in drift.output
    with p.target.begin() as conn:  # the drift is repaired by hand
        conn.execute(text(f'INSERT INTO "{p.dst}".address VALUES (5, :c)'), {"c": "c5"})
    p.source_sql("UPDATE {s}.person SET name = 'late' WHERE id = 1")  # never relayed
    incomplete = runner.invoke(cli, ["reconcile", p.config.path, "--wait-s", "1"])
    assert incomplete.exit_code == 3 and "INCOMPLETE" in incomplete.output
    # an unreachable source database is an error (2), never "drift" (1)
    broken = tmp_path / "broken.toml"
    source_url = re.search(r'\[source\]\nurl = "([^"]+)"', Path(p.config.path).read_text())
    assert source_url is not None
    bad_url = re.sub(r"@[^/]+/", "@127.0.0.1:1/", source_url.group(1))
    broken.write_text(Path(p.config.path).read_text().replace(source_url.group(1), bad_url))
    error = runner.invoke(cli, ["reconcile", str(broken), "--wait-s", "1"])
    assert error.exit_code == 2, error.output
    assert "dualwrite:dualwrite@" not in error.output  # no password printed


@pytest.fixture
def scratch_database(target_engine: Engine) -> Iterator[Engine]:
    """A database of its own: the run-history upgrade needs a table nobody else uses."""
    name = f"dwhist_{uuid.uuid4().hex[:10]}"
    with create_engine(target_engine.url, isolation_level="AUTOCOMMIT").connect() as conn:
        conn.execute(text(f'CREATE DATABASE "{name}"'))
    engine = create_engine(target_engine.url.set(database=name))
    yield engine
    engine.dispose()
    with create_engine(target_engine.url, isolation_level="AUTOCOMMIT").connect() as conn:
        conn.execute(text(f'DROP DATABASE "{name}" WITH (FORCE)'))


def test_an_older_run_history_table_is_upgraded_in_place(scratch_database: Engine) -> None:
    url = scratch_database.url.set(drivername="postgresql").render_as_string(hide_password=False)
    with psycopg.connect(url) as conn:  # the table as the first release created it
        conn.execute(
            "CREATE SCHEMA dualwrite; CREATE TABLE dualwrite.reconcile_runs (id bigint GENERATED "
            "ALWAYS AS IDENTITY PRIMARY KEY, migration text NOT NULL, started_at timestamptz NOT NULL, "
            "finished_at timestamptz NOT NULL, status text NOT NULL, counts jsonb NOT NULL)"
        )
        conn.execute(
            "INSERT INTO dualwrite.reconcile_runs (migration, started_at, finished_at, status, counts) "
            "VALUES ('shop', now() - interval '1 day', now() - interval '1 day', 'drift', '{\"missing\": 4}')"
        )
    old = read_history(scratch_database, "shop")  # a reader does not alter the table
    assert [(r.status, r.drift, r.tables, r.caught_up) for r in old] == [("drift", 4, (), None)]

    now = dt.datetime.now(dt.UTC)
    result = ReconcileResult(
        "shop", now, now, (TableSummary("new.t", 5, 5, {"missing": 0}),), (), True
    )
    run_id = record_run(scratch_database, result)
    history = read_history(scratch_database, "shop")
    assert [r.status for r in history] == ["drift", "clean"] and history[-1].id == run_id
    assert history[-1].tables[0].target == "new.t" and history[-1].caught_up is True
    assert history[0].tables == ()  # the old row reads with the new columns' defaults
    assert read_history(scratch_database, "other") == ()
