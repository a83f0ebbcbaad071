"""Each readiness gate fails with its evidence when its condition breaks, and passes again once
it is fixed; the report renders every gate; the CLI's exit code says ready or not."""

from __future__ import annotations

import json
import threading
import time
from dataclasses import replace
from pathlib import Path

import pytest
from click.testing import CliRunner
from sqlalchemy import text

from cli.main import cli
from dualwrite import Thresholds, capture
from dualwrite.backfill import run_backfill
from dualwrite.dlq import redrive
from dualwrite.relay import run_relay
from dualwrite.reverse import record_round_trip, round_trip_check, uninstall_reverse
from reconcile import evaluate_readiness, readiness_html, readiness_json, reconcile, record_run
from reconcile.readiness import Gate
from tests.conftest import REPO
from tests.readiness.conftest import Pair, Pipeline, pump, renamed

pytestmark = pytest.mark.integration


def _gate(p: Pipeline | Pair, name: str) -> Gate:
    report = evaluate_readiness(p.config, p.source, p.target, (name,))
    (gate,) = report.gates
    return gate


def _thresholds(p: Pipeline, **limits: float) -> Pipeline:
    return replace(p, config=replace(p.config, thresholds=replace(Thresholds(), **limits)))


def test_a_synced_migration_with_its_rollback_path_is_ready_and_the_cli_says_so(
    ready_shop: Pair, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    p = ready_shop
    report = evaluate_readiness(p.config, p.source, p.target)
    assert [g.name for g in report.gates] == [
        "capture",
        "backfill",
        "relay_lag",
        "worker_lag",
        "dead_letters",
        "reconcile",
        "reverse_path",
    ]
    assert report.ready, [(g.name, g.summary) for g in report.failed]
    html_path, json_path = tmp_path / "r.html", tmp_path / "r.json"
    monkeypatch.chdir(REPO)  # the transform module is imported relative to the working directory
    result = CliRunner().invoke(
        cli,
        ["readiness", p.config.path, "--html", str(html_path), "--json-file", str(json_path)],
    )
    assert result.exit_code == 0, result.output
    assert "READY for cutover" in result.output
    doc = json.loads(json_path.read_text())
    assert doc["schema_version"] == 1 and doc["ready"] is True
    assert {g["name"] for g in doc["gates"]} == {g.name for g in report.gates}
    page = html_path.read_text()
    assert 'id="gate-reconcile"' in page and "READY for cutover" in page


def test_capture_gate_fails_when_uninstalled_or_the_schema_drifted(
    ready_pipeline: Pipeline,
) -> None:
    p = ready_pipeline
    p.source_sql("ALTER TABLE {s}.person ADD COLUMN nickname text")
    gate = _gate(p, "capture")
    assert not gate.passed
    assert gate.evidence["tables"][f"{p.src}.person"]["schema_drift"] == ["nickname"]
    capture.uninstall(p.source, p.config, force=True)
    gate = _gate(p, "capture")
    assert not gate.passed and "not installed" in gate.summary
    assert "capture install" in gate.remedy
    capture.install(p.source, p.config)
    assert _gate(p, "capture").passed


def test_backfill_gate_names_the_unfinished_tables(merge_pipeline: Pipeline) -> None:
    p = renamed(merge_pipeline)
    p.source_sql("INSERT INTO {s}.person SELECT g, 'n', NULL, 'c' FROM generate_series(1, 30) g")
    gate = _gate(p, "backfill")
    assert not gate.passed
    assert f"{p.src}.person" in gate.summary and f"{p.src}.profile" in gate.summary
    run_backfill(p.source, p.target, p.config, p.transforms)
    gate = _gate(p, "backfill")
    assert gate.passed, gate.summary
    assert gate.evidence["tables"][f"{p.src}.person"]["rows_done"] == 30
    assert gate.evidence["tables"][f"{p.src}.person"]["shards"] == ["0/1"]


def test_relay_and_worker_lag_gates_fail_while_changes_wait(ready_pipeline: Pipeline) -> None:
    p = _thresholds(ready_pipeline, max_lag_s=0.3)
    p.source_sql("UPDATE {s}.person SET name = 'later' WHERE id <= 7")
    time.sleep(0.5)
    relay = _gate(p, "relay_lag")
    assert not relay.passed
    assert relay.evidence["backlog"] == 7 and relay.evidence["oldest_unrelayed_age_s"] > 0.3
    assert _gate(p, "worker_lag").passed, "nothing has reached Kafka yet: no worker lag"

    run_relay(p.source, p.config, until_idle=True, stop=threading.Event())
    assert _gate(p, "relay_lag").passed
    worker = _gate(p, "worker_lag")
    assert not worker.passed
    assert worker.evidence["pending_events"] == 7 and worker.evidence["end_to_end_lag_s"] > 0.3

    pump(p)
    worker = _gate(p, "worker_lag")
    assert worker.passed and worker.evidence["pending_events"] == 0


def test_worker_lag_is_the_age_of_the_oldest_unapplied_event_not_of_a_quiet_table(
    ready_pipeline: Pipeline,
) -> None:
    """A table whose last change was applied an hour ago, beside fresh pending changes of
    another table: the pending events are seconds old, so the gate passes at a 60 s limit
    (the bound from the applied positions alone said an hour and failed it)."""
    p = _thresholds(ready_pipeline, max_lag_s=60)
    with p.target.begin() as conn:
        conn.execute(
            text(
                "UPDATE dualwrite.source_positions SET source_ts = now() - interval '1 hour' "
                "WHERE source_table = :t"
            ),
            {"t": f"{p.src}.profile"},
        )
    p.source_sql("UPDATE {s}.person SET name = 'now' WHERE id <= 5")
    run_relay(p.source, p.config, until_idle=True, stop=threading.Event())
    gate = _gate(p, "worker_lag")
    assert gate.evidence["pending_events"] == 5
    assert gate.evidence["lag_measured_by"].startswith("age of the oldest unapplied event")
    assert gate.evidence["end_to_end_lag_s"] < 30, gate.evidence
    assert gate.passed, gate.summary
    time.sleep(1.2)
    strict = _gate(_thresholds(ready_pipeline, max_lag_s=1), "worker_lag")
    assert not strict.passed and strict.evidence["end_to_end_lag_s"] > 1


def test_worker_lag_gate_fails_before_the_group_ever_committed(merge_pipeline: Pipeline) -> None:
    p = renamed(merge_pipeline)
    p.source_sql("INSERT INTO {s}.person VALUES (1, 'a', NULL, 'x')")
    run_relay(p.source, p.config, until_idle=True, stop=threading.Event())
    gate = _gate(p, "worker_lag")
    assert not gate.passed and "has not committed" in gate.summary


def test_dead_letters_gate_fails_until_the_key_is_redriven(ready_pipeline: Pipeline) -> None:
    p = ready_pipeline
    p.source_sql("INSERT INTO {s}.person VALUES (900, 'bad city', NULL, 'forbidden')")
    pump(p)
    gate = _gate(p, "dead_letters")
    assert not gate.passed
    assert gate.evidence["quarantined_total"] == 1
    assert gate.evidence["unresolved_dead_letters"] == 1
    assert gate.evidence["quarantined_keys"][0]["key"] == f"{p.src}.person:[900]"
    assert "dlq redrive" in gate.remedy

    p.source_sql("UPDATE {s}.person SET city = 'Rome' WHERE id = 900")
    pump(p)  # parked behind the quarantined key
    assert not _gate(p, "dead_letters").passed
    result = redrive(p.target, p.config, p.transforms)
    assert not result.still_quarantined
    gate = _gate(p, "dead_letters")
    assert gate.passed, gate.summary
    assert gate.evidence["dead_letters_on_topic"] == 1  # kept as history, resolved


def test_reconcile_gate_needs_a_clean_and_fresh_run(merge_pipeline: Pipeline) -> None:
    p = renamed(merge_pipeline)
    p.source_sql("INSERT INTO {s}.person VALUES (1, 'a', NULL, 'x')")
    pump(p)
    gate = _gate(p, "reconcile")
    assert not gate.passed and "no reconcile run" in gate.summary

    record_run(p.target, reconcile(p.source, p.target, p.config, p.transforms, wait_s=10))
    gate = _gate(p, "reconcile")
    assert gate.passed and gate.evidence["status"] == "clean"

    time.sleep(0.2)
    stale = _gate(_thresholds(p, max_reconcile_age_s=0.1), "reconcile")
    assert not stale.passed and "old" in stale.summary

    with p.target.begin() as conn:
        conn.execute(text(f"INSERT INTO \"{p.dst}\".person VALUES (77, 'ghost', NULL, NULL)"))
    record_run(p.target, reconcile(p.source, p.target, p.config, p.transforms, wait_s=5))
    gate = _gate(p, "reconcile")
    assert not gate.passed and "drift" in gate.summary
    assert gate.evidence["counts"]["extra"] == 1


def test_reverse_path_gate_needs_reverse_capture_and_a_passing_round_trip(shop: Pair) -> None:
    p = shop
    gate = _gate(p, "reverse_path")
    assert not gate.passed and "no round-trip check" in gate.summary
    nothing = round_trip_check(p.config, 0, source=p.source, target=p.target)
    record_round_trip(p.config, nothing, target=p.target)
    gate = _gate(p, "reverse_path")
    assert not gate.passed and "sampled no row" in gate.summary
    checked = round_trip_check(p.config, 100, source=p.source, target=p.target)
    record_round_trip(p.config, checked, target=p.target)
    gate = _gate(p, "reverse_path")
    assert gate.passed, gate.summary
    assert gate.evidence["round_trip"]["rows_checked"] == checked.rows_checked > 0

    uninstall_reverse(p.config, p.target, force=True)
    gate = _gate(p, "reverse_path")
    assert not gate.passed and "reverse capture not installed" in gate.summary
    assert "reverse install" in gate.remedy


def test_not_ready_report_exits_1_and_renders_each_failure(
    merge_pipeline: Pipeline, tmp_path: Path
) -> None:
    p = renamed(merge_pipeline)
    result = CliRunner().invoke(cli, ["readiness", p.config.path, "--format", "json"])
    assert result.exit_code == 1, result.output
    doc = json.loads(result.output)
    failed = {g["name"] for g in doc["gates"] if not g["passed"]}
    assert {"backfill", "reconcile"} <= failed
    assert all(g["remedy"] for g in doc["gates"] if not g["passed"])
    report = evaluate_readiness(p.config, p.source, p.target)
    page = readiness_html(report)
    assert "NOT READY" in page and page.count(">FAIL</span>") == len(report.failed)
    assert readiness_json(report)["ready"] is False

    # the other formats, on stdout and to files, carry the same verdict, evidence and remedies
    md_path = tmp_path / "r.md"
    markdown = CliRunner().invoke(
        cli, ["readiness", p.config.path, "--format", "markdown", "--markdown", str(md_path)]
    )
    assert markdown.exit_code == 1
    assert f"**{p.config.name}: NOT READY:" in markdown.stdout
    backfill = next(g for g in doc["gates"] if g["name"] == "backfill")
    row = f"| Backfill complete | **FAIL** | {backfill['summary']} | {backfill['remedy']} |"
    assert row in markdown.stdout and row in md_path.read_text()
    assert "### Backfill complete" in markdown.stdout and '"tables"' in markdown.stdout
    html = CliRunner().invoke(cli, ["readiness", p.config.path, "--format", "html"])
    assert html.exit_code == 1 and html.stdout.startswith("<!DOCTYPE html>")
    assert 'id="gate-backfill"' in html.stdout and "<script" not in html.stdout
    text = CliRunner().invoke(cli, ["readiness", p.config.path])
    assert text.exit_code == 1
    assert f"FAIL  Backfill complete: {backfill['summary']}" in text.stdout
    assert f"what to do: {backfill['remedy']}" in text.stdout


def test_readiness_with_a_bad_migration_file_exits_2(tmp_path: Path) -> None:
    bad = tmp_path / "m.toml"
    bad.write_text('name = "x"\n[source]\nurl = 3\n')
    result = CliRunner().invoke(cli, ["readiness", str(bad)])
    assert result.exit_code == 2
    assert "source" in result.output


def test_status_shows_state_lag_backfill_and_last_reconcile(
    ready_pipeline: Pipeline,
) -> None:
    p = ready_pipeline
    result = CliRunner().invoke(cli, ["status", p.config.path])
    assert result.exit_code == 0, result.output
    assert f"migration {p.config.name}: state new" in result.output
    assert "total consumer lag 0 event(s)" in result.output
    # a source with nothing pending is caught up, however long ago its last change was
    assert f"{p.src}.person: applied up to version" in result.output
    assert "caught up (its last change was made" in result.output
    assert "end-to-end lag" not in result.output
    assert f"backfill {p.src}.person: 50 rows, finished" in result.output
    assert "last reconcile: clean" in result.output

    p.source_sql("UPDATE {s}.person SET name = 'later' WHERE id = 3")
    run_relay(p.source, p.config, until_idle=True, stop=threading.Event())
    pending = CliRunner().invoke(cli, ["status", p.config.path])
    assert "total consumer lag 1 event(s)" in pending.output
    assert "end-to-end lag at most" in pending.output


@pytest.mark.parametrize("option", ["--html", "--markdown", "--json-file"])
def test_a_report_path_that_cannot_be_written_is_refused_before_any_gate_runs(
    option: str, tmp_path: Path, migration_text: str
) -> None:
    path = tmp_path / "m.toml"
    path.write_text(migration_text)
    blocker = tmp_path / "file"
    blocker.write_text("")
    result = CliRunner().invoke(cli, ["readiness", str(path), option, str(blocker / "r.out")])
    assert result.exit_code == 2, result.output
    assert f"Invalid value for {option}: cannot create {blocker}" in result.output
    assert "Traceback" not in result.output
    taken = CliRunner().invoke(cli, ["readiness", str(path), option, str(tmp_path)])
    assert taken.exit_code == 2 and "is a directory" in taken.output
