"""A database that cannot be reached gets one clear message and exit 2, not a traceback, from
every command that needs it (the migration state and readiness commands above all)."""

from __future__ import annotations

import socket
from pathlib import Path

import psycopg
import pytest
from click.testing import CliRunner
from sqlalchemy.exc import OperationalError

from cli.main import _unreachable_database, cli
from tests.conftest import Services

COMMANDS = (
    ["readiness"],
    ["readiness", "--format", "json"],
    ["status"],
    ["state", "show"],
    ["state", "set", "{file}", "capturing"],
    ["cutover"],
    ["cutover", "{file}", "--force", "--reason", "drill"],
    ["rollback"],
    ["reverse", "install"],
    ["reverse", "status"],
    ["capture", "status"],
)


def _closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@pytest.mark.parametrize("command", COMMANDS, ids=lambda c: " ".join(c))
def test_an_unreachable_database_exits_2_with_one_message_naming_it(
    command: list[str], tmp_path: Path, migration_text: str, services: Services
) -> None:
    port = _closed_port()
    path = tmp_path / "m.toml"
    path.write_text(
        migration_text.replace(
            services.source_url, f"postgresql://dualwrite:topsecret@127.0.0.1:{port}/source", 1
        ).replace(
            services.target_url, f"postgresql://dualwrite:topsecret@127.0.0.1:{port}/target", 1
        )
    )
    args = [a.replace("{file}", str(path)) for a in command]
    if str(path) not in args:
        args.append(str(path))
    result = CliRunner().invoke(cli, args)
    assert result.exit_code == 2, result.output
    assert "error: cannot reach PostgreSQL" in result.output
    assert f"port {port}" in result.output and "refused" in result.output
    assert "Traceback" not in result.output and "topsecret" not in result.output


def test_only_a_server_that_never_answered_counts_as_unreachable() -> None:
    refused = psycopg.OperationalError("connection failed: Connection refused")
    assert "cannot reach PostgreSQL" in (_unreachable_database(refused) or "")
    wrapped = OperationalError("SELECT 1", {}, refused)
    assert "cannot reach PostgreSQL" in (_unreachable_database(wrapped) or "")
    # the server answered: a bug or a conflict, reported with its traceback
    assert _unreachable_database(psycopg.errors.DeadlockDetected("deadlock detected")) is None
    assert _unreachable_database(ValueError("x")) is None
