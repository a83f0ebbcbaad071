"""`dualwrite config check`: bad input gives one clear message and exit 2; good input exit 0."""

from __future__ import annotations

import json
import socket
from pathlib import Path

import pytest
from click.testing import CliRunner

from cli.main import cli
from tests.conftest import Services


def _check(path: Path, *extra: str) -> tuple[int, str]:
    result = CliRunner().invoke(cli, ["config", "check", str(path), *extra])
    return result.exit_code, result.output


def _closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def test_missing_file(tmp_path: Path) -> None:
    code, output = _check(tmp_path / "absent.toml")
    assert code == 2
    assert "absent.toml: file not found" in output


def test_invalid_toml(tmp_path: Path) -> None:
    path = tmp_path / "m.toml"
    path.write_text("[source\n")
    code, output = _check(path)
    assert code == 2
    assert "m.toml: invalid TOML" in output


def test_unknown_key(tmp_path: Path, migration_text: str) -> None:
    path = tmp_path / "m.toml"
    path.write_text(migration_text.replace("topic_prefix", "topic_prefixx"))
    code, output = _check(path)
    assert code == 2
    assert "kafka.topic_prefixx: unknown key" in output


def test_wrong_type(tmp_path: Path, migration_text: str) -> None:
    path = tmp_path / "m.toml"
    path.write_text(migration_text + "[thresholds]\nmax_dead_letters = 1.5\n")
    code, output = _check(path)
    assert code == 2
    assert "thresholds.max_dead_letters: must be an integer" in output


def test_unreachable_database_is_reported_per_service(
    tmp_path: Path, migration_text: str, services: Services
) -> None:
    port = _closed_port()
    bad = f"postgresql://dualwrite:topsecret@127.0.0.1:{port}/source"
    path = tmp_path / "m.toml"
    path.write_text(migration_text.replace(services.source_url, bad, 1))
    code, output = _check(path, "--timeout", "3")
    assert code == 2
    assert "FAIL source" in output
    assert f"127.0.0.1:{port}" in output and "refused" in output.lower()
    assert "ok   target" in output and "ok   kafka" in output
    assert "topsecret" not in output


def test_unreachable_broker(tmp_path: Path, migration_text: str, services: Services) -> None:
    path = tmp_path / "m.toml"
    path.write_text(migration_text.replace(services.kafka_bootstrap, f"127.0.0.1:{_closed_port()}"))
    code, output = _check(path, "--timeout", "3")
    assert code == 2
    assert "FAIL kafka" in output
    assert "ok   source" in output


@pytest.mark.integration
def test_valid_file_with_live_services_exits_0_and_json_lists_each(
    tmp_path: Path, migration_text: str
) -> None:
    path = tmp_path / "m.toml"
    path.write_text(migration_text)
    code, output = _check(path, "--json")
    assert code == 0, output
    doc = json.loads(output)
    assert doc["ok"] is True
    assert [s["service"] for s in doc["services"]] == ["source", "target", "kafka"]
    assert all(s["ok"] for s in doc["services"])
    assert "dualwrite:dualwrite@" not in output


def test_offline_check_contacts_nothing(tmp_path: Path) -> None:
    path = tmp_path / "m.toml"
    port = _closed_port()
    path.write_text(
        f'[source]\nurl = "postgresql://u:p@127.0.0.1:{port}/a"\n'
        f'[target]\nurl = "postgresql://u:p@127.0.0.1:{port}/b"\n'
        f'[kafka]\nbootstrap_servers = ["127.0.0.1:{port}"]\ntopic_prefix = "x"\n'
        '[[tables]]\nsource = "t"\ntarget = "t"\n'
    )
    code, output = _check(path, "--offline")
    assert code == 0, output
    assert "valid, 1 table(s)" in output
