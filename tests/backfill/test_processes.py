"""``--processes N``: one backfill as N forked shard processes, against real PostgreSQL."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Mapping
from dataclasses import replace
from typing import Any

import pytest
from click.testing import CliRunner
from sqlalchemy import Engine, text

from cli.main import cli
from dualwrite.backfill import BackfillError, BackfillProgress, BackfillSettings, run_backfill
from dualwrite.transform import Transforms, load_transforms
from tests.backfill.test_backfill import _assert_copied, _odd_key_tables
from tests.conftest import REPO
from tests.worker.conftest import Pipeline

pytestmark = pytest.mark.integration


@pytest.fixture
def odd_keys(
    source_engine: Engine,
    target_engine: Engine,
    source_schema: str,
    target_schema: str,
    make_config: Any,
) -> Any:
    return _odd_key_tables(source_engine, target_engine, source_schema, target_schema, make_config)


def _progress_rows(target: Engine, schema: str) -> list[tuple[str, str, int, bool]]:
    with target.connect() as conn:
        return [
            (r[0], r[1], int(r[2]), bool(r[3]))
            for r in conn.execute(
                text(
                    "SELECT source_table, shard, rows_done, finished_at IS NOT NULL "
                    "FROM dualwrite.backfill_progress WHERE source_table LIKE :s "
                    "ORDER BY source_table, shard"
                ),
                {"s": f"{schema}.%"},
            )
        ]


def test_three_processes_copy_every_table_exactly_once(
    source_engine: Engine,
    target_engine: Engine,
    source_schema: str,
    target_schema: str,
    odd_keys: Any,
) -> None:
    seen: list[BackfillProgress] = []
    results = run_backfill(
        source_engine,
        target_engine,
        odd_keys,
        load_transforms(odd_keys),
        BackfillSettings(chunk_rows=97, processes=3),
        progress=seen.append,
    )
    assert [(r.source.split(".")[1], r.rows, r.done) for r in results] == [
        ("comp", 2000, True),
        ("txt", 1500, True),
        ("uid", 700, True),
        ("empty", 0, True),
    ]
    _assert_copied(source_engine, target_engine, source_schema, target_schema)
    rows = _progress_rows(target_engine, source_schema)
    assert {shard for _, shard, _, _ in rows} == {"0/3", "1/3", "2/3"}
    assert all(finished for *_, finished in rows)
    by_table: dict[str, int] = {}
    for table, _shard, done, _ in rows:
        by_table[table] = by_table.get(table, 0) + done
    assert list(by_table.values()) == [2000, 0, 1500, 700]  # comp, empty, txt, uid
    # the parent sums the shards' progress per table; the last word on each is "done"
    last = {p.source: p for p in seen}
    assert {s: (p.rows_done, p.done) for s, p in last.items()} == {
        r.source: (r.rows, True) for r in results
    }


def _failing_on(transforms: Transforms, source: str, key: str, action: Any) -> Transforms:
    """``transforms`` with ``source``'s function calling ``action`` on the row of key
    ``code = key``."""
    st = transforms.sources[source]

    def function(row: Mapping[str, Any]) -> Any:
        if row.get("code") == key:
            action()
        return st.function(row)

    transforms.sources[source] = replace(st, function=function)
    return transforms


def _key_in_last_range(engine: Engine, schema: str) -> str:
    with engine.connect() as conn:
        return str(conn.execute(text(f'SELECT max(code) FROM "{schema}".txt')).scalar_one())


def test_a_failing_shard_stops_the_others_and_names_itself(
    source_engine: Engine, target_engine: Engine, source_schema: str, odd_keys: Any
) -> None:
    key = _key_in_last_range(source_engine, source_schema)

    def fail() -> None:
        raise ValueError("bad row")

    transforms = _failing_on(load_transforms(odd_keys), f"{source_schema}.txt", key, fail)
    with pytest.raises(BackfillError) as caught:
        run_backfill(
            source_engine,
            target_engine,
            odd_keys,
            transforms,
            BackfillSettings(chunk_rows=97, processes=3),
        )
    message = str(caught.value)
    assert message.startswith("shard 2/3: TransformError: transform of ")
    assert "bad row" in message and "run the same backfill again to resume" in message
    rows = _progress_rows(target_engine, source_schema)
    txt = [r for r in rows if r[0] == f"{source_schema}.txt"]
    assert [(shard, finished) for _, shard, _, finished in txt if shard == "2/3"] == [
        ("2/3", False)
    ]
    # the resume (without the failure) finishes every shard where it stopped
    again = run_backfill(
        source_engine,
        target_engine,
        odd_keys,
        load_transforms(odd_keys),
        BackfillSettings(chunk_rows=97, processes=3),
    )
    assert all(r.done for r in again)
    assert sum(r.rows_total for r in again) == 2000 + 1500 + 700


def test_a_shard_process_that_dies_is_reported_and_resumed(
    source_engine: Engine,
    target_engine: Engine,
    source_schema: str,
    target_schema: str,
    odd_keys: Any,
) -> None:
    key = _key_in_last_range(source_engine, source_schema)
    transforms = _failing_on(
        load_transforms(odd_keys), f"{source_schema}.txt", key, lambda: os._exit(7)
    )
    with pytest.raises(BackfillError, match=r"shard 2/3: its process ended \(exit code 7\)"):
        run_backfill(
            source_engine,
            target_engine,
            odd_keys,
            transforms,
            BackfillSettings(chunk_rows=97, processes=3),
        )
    result = CliRunner().invoke(
        cli, ["backfill", odd_keys.path, "--processes", "3", "--chunk-rows", "97", "--json"]
    )
    assert result.exit_code == 0, result.output
    summary = json.loads(result.stdout.strip().splitlines()[-1])
    assert all(t["done"] for t in summary["tables"])
    assert any(t["resumed"] for t in summary["tables"])
    _assert_copied(source_engine, target_engine, source_schema, target_schema)


def test_processes_and_shard_cannot_be_combined(odd_keys: Any) -> None:
    result = CliRunner().invoke(
        cli, ["backfill", odd_keys.path, "--processes", "2", "--shard", "0/2"]
    )
    assert result.exit_code != 0
    assert "processes and shard cannot be combined" in result.output


def _alive(pid: int) -> bool:
    """Running (not gone, not a zombie waiting for its new parent to reap it)."""
    try:
        with open(f"/proc/{pid}/status") as status:
            return not any(line.startswith("State:\tZ") for line in status)
    except FileNotFoundError:
        return False


def test_shard_processes_stop_when_their_parent_is_killed(merge_pipeline: Pipeline) -> None:
    """SIGKILL of the parent leaves nobody to pass a stop on: each shard process notices it
    was orphaned, stops after its chunk in hand, and exits; the next run resumes exactly."""
    p = merge_pipeline
    p.source_sql(
        "INSERT INTO {s}.person SELECT g, 'n' || g, NULL, 'c' FROM generate_series(1, 20000) g"
    )
    p.source_sql(f'DELETE FROM "{p.config.capture.schema}".changelog')
    argv = [sys.executable, "-m", "cli.main", "backfill", p.config.path, "--processes", "2"]
    slow = ["--chunk-rows", "200", "--max-rows-per-s", "300", "--json"]  # 30 s per shard
    proc = subprocess.Popen(
        [*argv, *slow],
        env={**os.environ, "PYTHONPATH": str(REPO)},
        cwd=str(REPO),
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
    )
    assert proc.stdout is not None
    for line in proc.stdout:  # both shards are writing
        doc = json.loads(line)
        if doc.get("event") == "progress" and doc["rows_done"] >= 600:
            break
    found = subprocess.run(["pgrep", "-P", str(proc.pid)], capture_output=True, text=True)
    children = [int(pid) for pid in found.stdout.split()]
    assert len(children) == 2, found
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    deadline = time.monotonic() + 15
    while any(map(_alive, children)) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not any(map(_alive, children)), "a shard process outlived its parent"

    result = CliRunner().invoke(cli, [*argv[3:], "--chunk-rows", "2000", "--json"])
    assert result.exit_code == 0, result.output
    summary = json.loads(result.stdout.strip().splitlines()[-1])
    person = next(t for t in summary["tables"] if t["source"] == f"{p.src}.person")
    assert person["resumed"] and person["done"] and person["rows_total"] == 20000
    assert len(p.target_rows("person")) == 20000
