"""docker-compose.yml stays interchangeable with the local stack (it cannot run here)."""

from __future__ import annotations

import re
from typing import Any

import yaml

from dualwrite.devstack import DevStackSettings
from tests.conftest import REPO


def _compose() -> dict[str, Any]:
    doc = yaml.safe_load((REPO / "docker-compose.yml").read_text())
    assert isinstance(doc, dict)
    return doc


def test_compose_uses_the_local_stack_ports_databases_and_credentials() -> None:
    settings = DevStackSettings.from_env({})
    services = _compose()["services"]
    pg, kafka = services["postgres"], services["kafka"]
    assert pg["ports"] == [f"127.0.0.1:${{DUALWRITE_PG_PORT:-{settings.pg_port}}}:5432"]
    assert pg["environment"]["POSTGRES_USER"] == settings.pg_user
    assert pg["environment"]["POSTGRES_PASSWORD"] == settings.pg_password
    assert pg["environment"]["POSTGRES_DB"] == "source"
    init = (REPO / "docker" / "postgres-init.sql").read_text()
    assert re.search(r"CREATE DATABASE target\b", init)
    assert "wal_level=logical" in pg["command"]
    port = settings.kafka_port
    assert kafka["ports"] == [
        f"127.0.0.1:${{DUALWRITE_KAFKA_PORT:-{port}}}:${{DUALWRITE_KAFKA_PORT:-{port}}}"
    ]
    assert (
        f"EXTERNAL://127.0.0.1:${{DUALWRITE_KAFKA_PORT:-{port}}}"
        in kafka["environment"]["KAFKA_ADVERTISED_LISTENERS"]
    )


def test_compose_runs_the_same_kafka_version_in_kraft_mode() -> None:
    kafka = _compose()["services"]["kafka"]
    settings = DevStackSettings.from_env({})
    assert kafka["image"] == f"apache/kafka:{settings.kafka_version}"
    assert kafka["environment"]["KAFKA_PROCESS_ROLES"] == "broker,controller"
    assert kafka["environment"]["KAFKA_OFFSETS_TOPIC_REPLICATION_FACTOR"] == 1
