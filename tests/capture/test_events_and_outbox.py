"""Key changes, deletes, the outbox, and the CLI around capture and relay."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request

import pytest
from click.testing import CliRunner
from sqlalchemy import Engine, text
from sqlalchemy.orm import Session

from cli.main import cli
from dualwrite import capture
from dualwrite.capture import CaptureError, Outbox
from tests.capture.helpers import drain, events, messages
from tests.conftest import REPO

pytestmark = pytest.mark.integration


def test_key_change_is_a_delete_then_an_insert_on_the_right_partitions(
    source_engine: Engine, source_schema: str, make_config
) -> None:
    with source_engine.begin() as conn:
        conn.execute(
            text(f'CREATE TABLE "{source_schema}".t (a int, b text, v int, PRIMARY KEY (a, b))')
        )
    config = make_config([f"{source_schema}.t"])
    capture.install(source_engine, config)
    with source_engine.begin() as conn:
        conn.execute(text(f"INSERT INTO \"{source_schema}\".t VALUES (1, 'x', 10)"))
        conn.execute(text(f'UPDATE "{source_schema}".t SET v = 11 WHERE a = 1'))
        conn.execute(text(f"UPDATE \"{source_schema}\".t SET b = 'y' WHERE a = 1"))
        conn.execute(text(f'DELETE FROM "{source_schema}".t'))
    drain(source_engine, config)
    got = [(e.op, dict(e.key), e.row and e.row["v"]) for e in events(config)]
    assert got == [
        ("insert", {"a": 1, "b": "x"}, 10),
        ("update", {"a": 1, "b": "x"}, 11),
        ("delete", {"a": 1, "b": "x"}, None),
        ("insert", {"a": 1, "b": "y"}, 11),
        ("delete", {"a": 1, "b": "y"}, None),
    ]
    keys = {m.key for m in messages(config)}
    assert keys == {f'{source_schema}.t:[1, "x"]'.encode(), f'{source_schema}.t:[1, "y"]'.encode()}
    by_key: dict[bytes | None, set[int]] = {}
    for m in messages(config):
        by_key.setdefault(m.key, set()).add(m.partition)
    assert all(len(p) == 1 for p in by_key.values())


def test_timestamptz_key_gets_one_message_key_whatever_the_writer_time_zone(
    source_engine: Engine, source_schema: str, make_config
) -> None:
    with source_engine.begin() as conn:
        conn.execute(text(f'CREATE TABLE "{source_schema}".t (at timestamptz PRIMARY KEY, v int)'))
    config = make_config([f"{source_schema}.t"])
    capture.install(source_engine, config)
    for zone, v in (("UTC", 1), ("Asia/Tokyo", 2), ("America/Denver", 3)):
        with source_engine.begin() as conn:
            conn.execute(text(f"SET LOCAL timezone = '{zone}'"))
            if v == 1:
                conn.execute(
                    text(f"INSERT INTO \"{source_schema}\".t VALUES ('2024-01-01 00:00:00+00', 1)")
                )
            else:
                conn.execute(text(f'UPDATE "{source_schema}".t SET v = :v'), {"v": v})
    drain(source_engine, config)
    assert {m.key for m in messages(config)} == {
        f'{source_schema}.t:["2024-01-01T00:00:00"]'.encode()
    }


def test_outbox_records_in_the_callers_transaction_with_the_trigger_envelope(
    source_engine: Engine, source_schema: str, make_config
) -> None:
    with source_engine.begin() as conn:
        conn.execute(
            text(f'CREATE TABLE "{source_schema}".app (id int PRIMARY KEY, email text, j json)')
        )
        conn.execute(
            text(f'CREATE TABLE "{source_schema}".trig (id int PRIMARY KEY, email text, j json)')
        )
    config = make_config(
        [
            {"source": f"{source_schema}.app", "capture": "outbox"},
            {"source": f"{source_schema}.trig"},
        ]
    )
    capture.install(source_engine, config)
    outbox = Outbox(config)
    app = f"{source_schema}.app"
    # rolled back: nothing may be published
    with Session(source_engine) as session:
        session.execute(text(f"INSERT INTO \"{source_schema}\".app VALUES (9, 'gone', NULL)"))
        outbox.record(session, app, {"id": 9}, "insert")
        session.rollback()
    with Session(source_engine) as session, session.begin():
        session.execute(text(f"INSERT INTO \"{source_schema}\".app VALUES (1, 'A@x', '[1,  2]')"))
        outbox.record(session, app, {"id": 1}, "insert")
    with source_engine.begin() as conn:
        conn.execute(text(f"UPDATE \"{source_schema}\".app SET email = 'a@x' WHERE id = 1"))
        outbox.record(conn, app, {"id": 1}, "update")
        conn.execute(text(f'DELETE FROM "{source_schema}".app WHERE id = 1'))
        outbox.record(conn, app, {"id": 1}, "delete")
        conn.execute(text(f"INSERT INTO \"{source_schema}\".trig VALUES (1, 'A@x', '[1,  2]')"))
    with pytest.raises(CaptureError, match="the row does not exist"), source_engine.begin() as conn:
        outbox.record(conn, app, {"id": 42}, "update")
    with (
        pytest.raises(CaptureError, match="key must name exactly id"),
        source_engine.begin() as conn,
    ):
        outbox.record(conn, app, {"nope": 1}, "update")
    drain(source_engine, config)
    got = events(config)
    outboxed = [e for e in got if e.source.endswith(".app")]
    assert [(e.op, e.origin, e.row and e.row["email"]) for e in outboxed] == [
        ("insert", "outbox", "A@x"),
        ("update", "outbox", "a@x"),
        ("delete", "outbox", None),
    ]
    (triggered,) = [e for e in got if e.source.endswith(".trig")]
    first = outboxed[0]
    assert (first.row, first.types, first.key) == (triggered.row, triggered.types, triggered.key)


def test_cli_capture_install_status_relay_tail_uninstall(
    source_engine: Engine, source_schema: str, make_config
) -> None:
    with source_engine.begin() as conn:
        conn.execute(text(f'CREATE TABLE "{source_schema}".t (id int PRIMARY KEY, v text)'))
    config = make_config([f"{source_schema}.t"])
    runner = CliRunner()
    result = runner.invoke(cli, ["capture", "status", config.path])
    assert result.exit_code == 1 and "not installed" in result.output
    result = runner.invoke(cli, ["capture", "install", config.path])
    assert result.exit_code == 0, result.output
    with source_engine.begin() as conn:
        conn.execute(text(f"INSERT INTO \"{source_schema}\".t VALUES (1, 'hello'), (2, NULL)"))
    result = runner.invoke(cli, ["capture", "status", config.path, "--json"])
    assert result.exit_code == 0, result.output
    assert json.loads(result.output)["backlog"] == 2
    result = runner.invoke(cli, ["capture", "uninstall", config.path])
    assert result.exit_code == 2 and "not yet relayed" in result.output
    result = runner.invoke(cli, ["relay", "--until-idle", config.path])
    assert result.exit_code == 0 and "relayed 2 change(s)" in result.output
    result = runner.invoke(cli, ["tail", config.path, "--idle-timeout", "1"])
    assert result.exit_code == 0
    assert "insert" in result.output and '"hello"' in result.output
    result = runner.invoke(cli, ["capture", "uninstall", config.path])
    assert result.exit_code == 0 and "removed from 1 table" in result.output


def test_relay_stops_cleanly_on_sigterm_and_serves_metrics(
    source_engine: Engine, source_schema: str, make_config
) -> None:
    with source_engine.begin() as conn:
        conn.execute(text(f'CREATE TABLE "{source_schema}".t (id int PRIMARY KEY)'))
    config = make_config([f"{source_schema}.t"])
    capture.install(source_engine, config)
    with source_engine.begin() as conn:
        conn.execute(text(f'INSERT INTO "{source_schema}".t SELECT generate_series(1, 500)'))
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    proc = subprocess.Popen(
        [sys.executable, "-m", "cli.main", "relay", config.path, "--metrics-port", str(port)],
        env={**os.environ, "PYTHONPATH": str(REPO)},
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
    )
    body = ""
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        try:
            body = (
                urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5)
                .read()
                .decode()
            )
        except OSError:
            body = ""  # not listening yet
        if "dualwrite_relay_changes_total 500.0" in body:
            break
        time.sleep(0.2)
    assert "dualwrite_relay_changes_total 500.0" in body
    assert "# TYPE dualwrite_relay_lag_seconds gauge" in body
    proc.send_signal(signal.SIGTERM)
    out, _ = proc.communicate(timeout=30)
    assert proc.returncode == 0
    assert "relayed 500 change(s)" in out
    assert capture.status(source_engine, config).relayed_total == 500
