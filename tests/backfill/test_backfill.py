"""Backfill against real services: racing the stream, resuming after SIGKILL, odd keys."""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import threading
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import pytest
from click.testing import CliRunner
from sqlalchemy import Engine, text

from cli.main import cli
from dualwrite import backfill as backfill_module
from dualwrite import capture
from dualwrite.backfill import BackfillError, BackfillSettings, run_backfill
from dualwrite.relay import run_relay
from dualwrite.transform import load_transforms
from dualwrite.worker import run_worker
from tests.conftest import REPO
from tests.worker.conftest import Pipeline
from tests.worker.test_worker_crashes import _assert_exact

pytestmark = pytest.mark.integration


def _forget_captured(p: Pipeline) -> None:
    """Make the rows written so far look like rows that existed before capture."""
    p.source_sql(f'DELETE FROM "{p.config.capture.schema}".changelog')


@pytest.mark.parametrize("processes", [1, 2], ids=["one-process", "two-shard-processes"])
def test_backfill_racing_writers_and_the_stream_is_exact(
    merge_pipeline: Pipeline, processes: int
) -> None:
    """Invariant 4 under a live stream; with two shard processes, their chunks also write
    the same tables at once (different lock slots) while the stream's batches wait for each."""
    p = merge_pipeline
    p.source_sql(
        "INSERT INTO {s}.person SELECT g, 'old' || g, 'E' || g || '@X', CASE WHEN g % 3 = 0 THEN NULL ELSE 'c' || g END "
        "FROM generate_series(1, 3000) g"
    )
    p.source_sql("INSERT INTO {s}.profile SELECT g, 't' || g FROM generate_series(1, 3000, 2) g")
    _forget_captured(p)

    stop = threading.Event()
    relay = threading.Thread(target=run_relay, args=(p.source, p.config), kwargs={"stop": stop})
    worker = threading.Thread(
        target=run_worker, args=(p.target, p.config, p.transforms), kwargs={"stop": stop}
    )
    relay.start()
    worker.start()

    def writer() -> None:
        rng = random.Random(5)
        for n in range(600):
            i = rng.randint(1, 3300)
            r = rng.random()
            if r < 0.4:
                p.source_sql(
                    "INSERT INTO {s}.person VALUES (:i, :n, NULL, 'w') ON CONFLICT (id) DO UPDATE SET name = :n",
                    i=i,
                    n=f"w{n}",
                )
            elif r < 0.6:
                p.source_sql(
                    "UPDATE {s}.profile SET tier = :t WHERE person_id = :i", i=i, t=f"u{n}"
                )
            elif r < 0.8:
                p.source_sql("DELETE FROM {s}.person WHERE id = :i", i=i)
            else:
                p.source_sql("DELETE FROM {s}.profile WHERE person_id = :i", i=i)

    writing = threading.Thread(target=writer)
    writing.start()
    results = run_backfill(
        p.source,
        p.target,
        p.config,
        p.transforms,
        BackfillSettings(chunk_rows=200, processes=processes),
    )
    writing.join()
    stop.set()
    relay.join()
    worker.join()
    run_relay(p.source, p.config, until_idle=True, stop=threading.Event())
    run_worker(p.target, p.config, p.transforms, until_idle=True, stop=threading.Event())
    assert all(r.done for r in results)
    _assert_exact(p)


def test_backfill_refuses_without_capture(
    source_engine: Engine, target_engine: Engine, source_schema: str, make_config
) -> None:
    with source_engine.begin() as conn:
        conn.execute(text(f'CREATE TABLE "{source_schema}".t (id int PRIMARY KEY)'))
    config = make_config([f"{source_schema}.t"])
    with pytest.raises(BackfillError, match="capture must be installed before the backfill"):
        run_backfill(source_engine, target_engine, config, load_transforms(config))


def test_sigkill_mid_backfill_then_resume_redoes_nothing(merge_pipeline: Pipeline) -> None:
    p = merge_pipeline
    p.source_sql(
        "INSERT INTO {s}.person SELECT g, 'n' || g, NULL, 'c' FROM generate_series(1, 30000) g"
    )
    _forget_captured(p)
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    args = [
        sys.executable,
        "-m",
        "cli.main",
        "backfill",
        p.config.path,
        "--chunk-rows",
        "500",
        "--json",
    ]
    proc = subprocess.Popen(
        args, env=env, cwd=str(REPO), stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True
    )
    assert proc.stdout is not None
    seen = 0
    for line in proc.stdout:  # kill once some chunks are committed
        doc = json.loads(line)
        if doc.get("event") == "progress" and doc["rows_done"] >= 5000:
            seen = doc["rows_done"]
            break
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert seen >= 5000
    with p.target.connect() as conn:
        done_before = conn.execute(
            text("SELECT rows_done FROM dualwrite.backfill_progress WHERE source_table = :t"),
            {"t": f"{p.src}.person"},
        ).scalar_one()
    assert 0 < done_before < 30000

    result = CliRunner().invoke(cli, ["backfill", p.config.path, "--json", "--chunk-rows", "500"])
    assert result.exit_code == 0, result.output
    summary = json.loads(result.stdout.strip().splitlines()[-1])
    person = next(t for t in summary["tables"] if t["source"] == f"{p.src}.person")
    assert person["resumed"] and person["done"]
    assert person["rows"] == 30000 - done_before  # nothing redone: progress commits with each chunk
    assert person["rows_total"] == 30000
    assert len(p.target_rows("person")) == 30000 and len(p.target_rows("address")) == 30000


_ODD_KEYS = {
    "comp": "(a int, b text, v numeric(10,2), PRIMARY KEY (a, b))",
    "txt": '(code text COLLATE "C" PRIMARY KEY, v text)',
    "uid": "(id uuid PRIMARY KEY, v jsonb)",
    "empty": "(id int PRIMARY KEY, v text)",
}


def _odd_key_tables(
    source_engine: Engine,
    target_engine: Engine,
    source_schema: str,
    target_schema: str,
    make_config: Any,
) -> Any:
    """Tables with a composite, a text, a UUID key and an empty one (2000, 1500, 700 and 0
    rows), on both sides, analysed, capture installed; returns their migration config."""
    for engine, schema in ((source_engine, source_schema), (target_engine, target_schema)):
        with engine.begin() as conn:
            for name, cols in _ODD_KEYS.items():
                conn.execute(text(f'CREATE TABLE "{schema}".{name} {cols}'))
    with source_engine.begin() as conn:
        conn.execute(
            text(
                f"INSERT INTO \"{source_schema}\".comp SELECT g % 7, 'k' || g, g / 3.0 FROM generate_series(1, 2000) g"
            )
        )
        conn.execute(
            text(
                f"INSERT INTO \"{source_schema}\".txt SELECT md5(g::text), repeat('x', g % 50) FROM generate_series(1, 1500) g"
            )
        )
        for _ in range(700):
            conn.execute(
                text(f'INSERT INTO "{source_schema}".uid VALUES (:u, :v)'),
                {"u": str(uuid.uuid4()), "v": json.dumps({"n": 1})},
            )
        for name in _ODD_KEYS:  # row estimates: where shards cut, how much a sample reads
            conn.execute(text(f'ANALYZE "{source_schema}".{name}'))
    config = make_config(
        [{"source": f"{source_schema}.{n}", "target": f"{target_schema}.{n}"} for n in _ODD_KEYS]
    )
    capture.install(source_engine, config)
    return config


def _assert_copied(
    source_engine: Engine, target_engine: Engine, source_schema: str, target_schema: str
) -> None:
    for name in _ODD_KEYS:
        with source_engine.connect() as s, target_engine.connect() as t:
            want = s.execute(text(f'SELECT * FROM "{source_schema}".{name} ORDER BY 1, 2')).all()
            got = t.execute(text(f'SELECT * FROM "{target_schema}".{name} ORDER BY 1, 2')).all()
        assert got == want, name


def test_composite_text_uuid_keys_and_empty_tables(
    source_engine: Engine,
    target_engine: Engine,
    source_schema: str,
    target_schema: str,
    make_config,
) -> None:
    config = _odd_key_tables(
        source_engine, target_engine, source_schema, target_schema, make_config
    )
    results = run_backfill(
        source_engine,
        target_engine,
        config,
        load_transforms(config),
        BackfillSettings(chunk_rows=97),
    )
    assert [r.rows for r in results] == [2000, 1500, 700, 0]
    assert all(r.done for r in results)
    _assert_copied(source_engine, target_engine, source_schema, target_schema)
    again = run_backfill(source_engine, target_engine, config, load_transforms(config))
    assert all(r.rows == 0 and r.done for r in again)  # finished tables are not read again


@pytest.mark.parametrize("sample_rows", [100_000, 40], ids=["every-key", "page-sample"])
def test_key_range_shards_read_every_row_once(
    source_engine: Engine,
    target_engine: Engine,
    source_schema: str,
    target_schema: str,
    make_config: Any,
    monkeypatch: pytest.MonkeyPatch,
    sample_rows: int,
) -> None:
    """Three shards at once cut each table into key ranges (from every key, or from a page
    sample that may hit few rows or none): together they read each row exactly once, and the
    recorded ranges chain from unbounded to unbounded. A shard restarted keeps its range."""
    config = _odd_key_tables(
        source_engine, target_engine, source_schema, target_schema, make_config
    )
    real_sample = backfill_module.key_sample
    monkeypatch.setattr(
        backfill_module, "key_sample", lambda conn, shape: real_sample(conn, shape, sample_rows)
    )

    def shard(k: int, restart: bool = False) -> tuple[Any, ...]:
        settings = BackfillSettings(chunk_rows=97, shard=k, shards=3, restart=restart)
        return run_backfill(source_engine, target_engine, config, load_transforms(config), settings)

    with ThreadPoolExecutor(3) as pool:
        results = list(pool.map(shard, range(3)))
    rows = {str(t.source): 0 for t in config.tables}
    for per_table in results:
        for r in per_table:
            assert r.done
            rows[r.source] += r.rows
    assert list(rows.values()) == [2000, 1500, 700, 0]  # no row read by two shards
    _assert_copied(source_engine, target_engine, source_schema, target_schema)

    def ranges() -> dict[str, list[Any]]:
        with target_engine.connect() as conn:
            found = conn.execute(
                text(
                    "SELECT source_table, bounds::text FROM dualwrite.backfill_progress "
                    "WHERE source_table LIKE :s ORDER BY source_table, shard"
                ),
                {"s": f"{source_schema}.%"},
            ).all()
        by_table: dict[str, list[Any]] = {}
        for table, bounds in found:
            by_table.setdefault(table, []).append(json.loads(bounds))
        return by_table

    recorded = ranges()
    for table, bounds in recorded.items():
        assert len(bounds) == 3, table
        if bounds[1] == {"empty": True}:  # nothing to cut by: shard 0 takes the table
            assert bounds == [{"lower": None, "upper": None}, {"empty": True}, {"empty": True}]
            continue
        assert bounds[0]["lower"] is None and bounds[2]["upper"] is None, table
        assert bounds[0]["upper"] == bounds[1]["lower"] and bounds[1]["upper"] == bounds[2]["lower"]
    if sample_rows > 2000:  # every key sampled: non-empty tables are cut into three
        assert all(
            len({json.dumps(b) for b in recorded[f"{source_schema}.{n}"]}) == 3
            for n in ("comp", "txt", "uid")
        )

    again = shard(1, restart=True)
    assert ranges() == recorded
    assert sum(r.rows for r in again) == sum(
        r.rows for r in results[1]
    )  # the same range, read again

    # a shard's progress row deleted by hand: no new cut is made under the others' ranges
    with target_engine.begin() as conn:
        conn.execute(
            text(
                "DELETE FROM dualwrite.backfill_progress WHERE source_table = :t AND shard = '1/3'"
            ),
            {"t": f"{source_schema}.comp"},
        )
    with pytest.raises(BackfillError, match=r"comp: shards 0/3, 2/3 have key ranges"):
        shard(1)


def test_max_rows_per_s_throttles(merge_pipeline: Pipeline) -> None:
    p = merge_pipeline
    p.source_sql("INSERT INTO {s}.person SELECT g, 'n', NULL, NULL FROM generate_series(1, 600) g")
    t0 = time.monotonic()
    (person, _profile) = run_backfill(
        p.source,
        p.target,
        p.config,
        p.transforms,
        BackfillSettings(chunk_rows=100, max_rows_per_s=300),
    )
    assert person.rows == 600
    assert time.monotonic() - t0 >= 1.6  # 600 rows at 300 rows/s: about 2 s, never much faster


def test_backfill_sessions_run_without_jit(
    merge_pipeline: Pipeline, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Both sessions of a real backfill have JIT off (chunk statements of ~20k rows were
    JIT-compiled per chunk otherwise), and the backfill is still exact."""
    p = merge_pipeline
    p.source_sql("INSERT INTO {s}.person SELECT g, 'n', NULL, NULL FROM generate_series(1, 300) g")
    seen: list[tuple[str, str]] = []
    original = backfill_module._connect

    def spy(engine: Engine) -> Any:
        conn = original(engine)
        row = conn.execute("SELECT current_database(), current_setting('jit')").fetchone()
        conn.commit()
        assert row is not None
        seen.append((row[0], row[1]))
        return conn

    monkeypatch.setattr(backfill_module, "_connect", spy)
    (person, _profile) = run_backfill(
        p.source, p.target, p.config, p.transforms, BackfillSettings(chunk_rows=100)
    )
    assert person.rows == 300 and person.done
    databases = {p.source.url.database, p.target.url.database}
    assert {db for db, _jit in seen} == databases and len(seen) == 2
    assert [jit for _db, jit in seen] == ["off", "off"]
    _assert_exact(p)


def _backfill_odd(
    source_engine: Engine,
    target_engine: Engine,
    source_schema: str,
    target_schema: str,
    make_config: Any,
    chunk_rows: int,
    query: str,
) -> tuple[Any, list[Any], list[Any]]:
    """Capture and backfill table ``odd`` of ``source_schema`` into ``target_schema``;
    return the table's result and ``query`` (``{}``: the schema) on the target and source."""
    config = make_config([{"source": f"{source_schema}.odd", "target": f"{target_schema}.odd"}])
    capture.install(source_engine, config)
    (result,) = run_backfill(
        source_engine,
        target_engine,
        config,
        load_transforms(config),
        BackfillSettings(chunk_rows=chunk_rows),
    )
    with source_engine.connect() as s, target_engine.connect() as t:
        got = list(t.execute(text(query.format(f'"{target_schema}"'))).all())
        want = list(s.execute(text(query.format(f'"{source_schema}"'))).all())
    return result, got, want


def test_toasted_values_and_nulls_everywhere(
    source_engine: Engine,
    target_engine: Engine,
    source_schema: str,
    target_schema: str,
    make_config,
) -> None:
    cols = "(id int PRIMARY KEY, big text, blob bytea, doc jsonb, n numeric, at timestamptz)"
    for engine, schema in ((source_engine, source_schema), (target_engine, target_schema)):
        with engine.begin() as conn:
            conn.execute(text(f'CREATE TABLE "{schema}".odd {cols}'))
    with source_engine.begin() as conn:
        conn.execute(
            text(
                f'INSERT INTO "{source_schema}".odd SELECT g, repeat(md5(g::text), 40000), '
                "decode(repeat(md5(g::text), 5000), 'hex'), jsonb_build_object('k', repeat('v', 100000)), "
                f"g, now() FROM generate_series(1, 20) g"
            )
        )
        conn.execute(text(f'INSERT INTO "{source_schema}".odd (id) SELECT generate_series(21, 40)'))
    result, got, want = _backfill_odd(
        source_engine,
        target_engine,
        source_schema,
        target_schema,
        make_config,
        7,
        "SELECT id, md5(big), md5(blob), md5(doc::text), n, at FROM {}.odd ORDER BY id",
    )
    assert result.rows == 40
    assert got == want


def test_infinite_timestamps_a_column_named_t_and_a_domain_are_copied_exactly(
    source_engine: Engine,
    target_engine: Engine,
    source_schema: str,
    target_schema: str,
    make_config,
) -> None:
    """The typed read cannot load 'infinity': the chunks holding one are read again as row
    images (the other chunks stay typed); a column named ``t`` (the reader's table alias)
    and a domain column are read as themselves."""
    for engine, schema in ((source_engine, source_schema), (target_engine, target_schema)):
        with engine.begin() as conn:
            conn.execute(text(f'CREATE DOMAIN "{schema}".positive AS int CHECK (VALUE > 0)'))
            conn.execute(
                text(
                    f'CREATE TABLE "{schema}".odd (id int PRIMARY KEY, t text, '
                    f'at timestamp, on_day date, n "{schema}".positive)'
                )
            )
    with source_engine.begin() as conn:
        conn.execute(
            text(
                f"INSERT INTO \"{source_schema}\".odd SELECT g, 't' || g, "
                "CASE WHEN g = 25 THEN 'infinity' WHEN g = 26 THEN '-infinity' "
                "ELSE timestamp '2024-03-31 02:30' + g * interval '1 hour' END, "
                "CASE WHEN g = 77 THEN 'infinity'::date ELSE date '2024-01-01' + g END, g "
                "FROM generate_series(1, 100) g"
            )
        )
    result, got, want = _backfill_odd(
        source_engine,
        target_engine,
        source_schema,
        target_schema,
        make_config,
        10,
        "SELECT id, t, at::text, on_day::text, n FROM {}.odd ORDER BY id",
    )
    assert result.rows == 100 and result.done
    assert got == want
    assert [r[2] for r in got if r[0] in (25, 26)] == ["infinity", "-infinity"]


def test_the_collector_is_tuned_while_the_backfill_runs_and_restored_after(
    merge_pipeline: Pipeline,
) -> None:
    import gc

    p = merge_pipeline
    p.source_sql("INSERT INTO {s}.person SELECT g, 'n', NULL, NULL FROM generate_series(1, 250) g")
    before = gc.get_threshold()
    seen: list[tuple[int, int, int]] = []
    (person, _profile) = run_backfill(
        p.source,
        p.target,
        p.config,
        p.transforms,
        BackfillSettings(chunk_rows=100, gc_gen0_threshold=12_345),
        progress=lambda _progress: seen.append(gc.get_threshold()),
    )
    assert person.rows == 250 and seen
    assert {t[0] for t in seen} == {12_345}
    assert gc.get_threshold() == before
    _assert_exact(p)
