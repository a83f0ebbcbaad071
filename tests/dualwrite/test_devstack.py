"""`dualwrite dev`: a second, private stack is started, inspected and stopped for real.

Each test uses its own state folder and free ports, and the shared jar cache, so it never
touches the stack the rest of the suite runs on.
"""

from __future__ import annotations

import base64
import os
import shutil
import socket
import stat
from collections.abc import Iterator
from pathlib import Path

import pytest
from click.testing import CliRunner

from cli.main import cli
from dualwrite.devstack import DevStackSettings, down, status, up
from dualwrite.devstack._kafka_broker import new_cluster_id
from dualwrite.devstack._procs import alive
from dualwrite.errors import DevStackError
from tests.conftest import REPO

PG_BIN = Path(os.environ.get("DUALWRITE_PG_BIN", "/usr/lib/postgresql/15/bin"))
needs_local_binaries = pytest.mark.skipif(
    not (PG_BIN / "initdb").exists() or shutil.which("java") is None,
    reason=f"the local stack needs PostgreSQL server binaries in {PG_BIN} and java",
)
pytestmark = [pytest.mark.integration, needs_local_binaries]


def _free_ports(n: int) -> list[int]:
    socks = [socket.socket() for _ in range(n)]
    try:
        for s in socks:
            s.bind(("127.0.0.1", 0))
        return [int(s.getsockname()[1]) for s in socks]
    finally:
        for s in socks:
            s.close()


@pytest.fixture
def stack_env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[dict[str, str]]:
    pg, kafka, controller = _free_ports(3)
    env = {
        "DUALWRITE_DEV_DIR": str(tmp_path / "dev"),
        "DUALWRITE_CACHE_DIR": os.environ.get(
            "DUALWRITE_CACHE_DIR", str(REPO / ".dualwrite-cache")
        ),
        "DUALWRITE_PG_PORT": str(pg),
        "DUALWRITE_KAFKA_PORT": str(kafka),
        "DUALWRITE_KAFKA_CONTROLLER_PORT": str(controller),
    }
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    yield env
    settings = DevStackSettings.from_env(env)
    down(settings, wipe=True)


def test_up_twice_is_harmless_and_down_stops_exactly_what_up_started(
    stack_env: dict[str, str],
) -> None:
    settings = DevStackSettings.from_env(stack_env)
    first = up(settings)
    assert first.started == ("postgres", "kafka")
    assert first.healthy, first.services
    pids = {s.name: s.pid for s in first.services}

    second = up(settings)
    assert second.started == ()
    assert {s.name: s.pid for s in second.services} == pids

    # what one caller started, and nothing else (the demo, when PostgreSQL was running)
    assert down(settings, only=("kafka",)) == ("kafka",)
    assert not alive(pids["kafka"] or -1, "kafka.Kafka")
    assert alive(pids["postgres"] or -1, "postgres")
    assert down(settings) == ("postgres",)
    assert not alive(pids["postgres"] or -1, "postgres")
    assert not status(settings).healthy
    assert down(settings) == ()


def test_cli_dev_status_reports_both_services(stack_env: dict[str, str]) -> None:
    runner = CliRunner()
    result = runner.invoke(cli, ["dev", "status"])
    assert result.exit_code == 1
    assert "postgres" in result.output and "not running" in result.output


def test_taken_port_is_refused_before_anything_starts(stack_env: dict[str, str]) -> None:
    settings = DevStackSettings.from_env(stack_env)
    with socket.socket() as blocker:
        blocker.bind(("127.0.0.1", settings.kafka_port))
        blocker.listen()
        result = CliRunner().invoke(cli, ["dev", "up"])
    assert result.exit_code == 2
    assert f"port {settings.kafka_port}" in result.output
    assert "DUALWRITE_KAFKA_PORT" in result.output
    assert all(s.pid is None for s in status(settings).services)


def test_missing_java_is_refused_before_anything_starts(
    stack_env: dict[str, str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    empty_bin = tmp_path / "bin"
    empty_bin.mkdir()
    monkeypatch.setenv("PATH", f"{empty_bin}:/usr/sbin:/sbin")
    settings = DevStackSettings.from_env(stack_env)
    with pytest.raises(DevStackError, match="Java is not installed"):
        up(settings)
    assert all(s.pid is None for s in status(settings).services)


def test_failed_maven_download_leaves_nothing_half_started(
    stack_env: dict[str, str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    fake_bin = tmp_path / "bin"
    fake_bin.mkdir()
    mvn = fake_bin / "mvn"
    mvn.write_text(
        "#!/bin/sh\necho '[ERROR] Could not transfer artifact from central: Connection refused'\nexit 1\n"
    )
    mvn.chmod(mvn.stat().st_mode | stat.S_IEXEC)
    java = shutil.which("java")
    assert java
    (fake_bin / "java").symlink_to(java)
    monkeypatch.setenv("PATH", f"{fake_bin}:/usr/sbin:/usr/bin:/sbin:/bin")
    env = {**stack_env, "DUALWRITE_CACHE_DIR": str(tmp_path / "empty-cache")}
    settings = DevStackSettings.from_env(env)
    with pytest.raises(DevStackError) as info:
        up(settings)
    assert "Maven failed" in str(info.value) or "with Maven failed" in str(info.value)
    assert "Connection refused" in str(info.value)
    # PostgreSQL had started before the download failed; it must have been stopped again.
    assert all(s.pid is None for s in status(settings).services)


def test_bad_port_variable_is_named(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DUALWRITE_PG_PORT", "fifty")
    result = CliRunner().invoke(cli, ["dev", "up"])
    assert result.exit_code == 2
    assert "DUALWRITE_PG_PORT='fifty' is not an integer" in result.output


def test_cluster_id_never_starts_with_a_dash_so_the_storage_tool_reads_it_as_a_value() -> None:
    # 0xF8 encodes to '-' as the first base64 character: one random draw in 64 did this,
    # and kafka-storage then rejected "-t -xyz..." as a missing argument.
    draws = iter([b"\xf8" + bytes(15), b"\x00" * 16])
    cluster_id = new_cluster_id(lambda: next(draws))
    assert cluster_id == "AAAAAAAAAAAAAAAAAAAAAA"
    assert base64.urlsafe_b64encode(b"\xf8" + bytes(15)).decode().startswith("-")
