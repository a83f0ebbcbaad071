"""Shared fixtures: real PostgreSQL and Kafka, unique schemas and topics per test.

Service locations come from the environment (``make test`` and ``dualwrite dev run`` set them):

- ``DUALWRITE_SOURCE_URL``: SQLAlchemy URL of the source (old schema) database
- ``DUALWRITE_TARGET_URL``: SQLAlchemy URL of the target (new schema) database
- ``DUALWRITE_KAFKA_BOOTSTRAP``: ``host:port`` of a Kafka broker

When none is set and a Docker daemon answers, PostgreSQL 15 and Kafka are started with
testcontainers. Otherwise the run stops with a message saying how to run the suite.
Only tests that use these fixtures need services; pure unit tests run anywhere.
"""

from __future__ import annotations

import json
import os
import re
import uuid
import warnings
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, settings
from sqlalchemy import Engine, create_engine, text

REPO = Path(__file__).resolve().parent.parent
ENV_VARS = ("DUALWRITE_SOURCE_URL", "DUALWRITE_TARGET_URL", "DUALWRITE_KAFKA_BOOTSTRAP")

settings.register_profile(
    "default", deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
settings.load_profile("default")

HOW_TO_RUN = (
    "integration tests need PostgreSQL and Kafka. Run the suite with `make test` (starts the "
    "local stack itself), or `dualwrite dev run -- pytest`, or set DUALWRITE_SOURCE_URL, "
    "DUALWRITE_TARGET_URL and DUALWRITE_KAFKA_BOOTSTRAP, or start a Docker daemon for "
    "testcontainers."
)


@dataclass(frozen=True)
class Services:
    source_url: str
    target_url: str
    kafka_bootstrap: str


def _docker_answers() -> bool:
    try:
        import docker  # type: ignore[import-untyped]

        docker.from_env(timeout=3).ping()
    except Exception:
        return False
    return True


@pytest.fixture(scope="session")
def services() -> Iterator[Services]:
    present = [v for v in ENV_VARS if os.environ.get(v)]
    if len(present) == len(ENV_VARS):
        yield Services(*(os.environ[v] for v in ENV_VARS))
        return
    if present:
        missing = sorted(set(ENV_VARS) - set(present))
        pytest.exit(f"{', '.join(missing)} not set (the others are). {HOW_TO_RUN}", returncode=2)
    if not _docker_answers():
        pytest.exit(HOW_TO_RUN, returncode=2)
    from testcontainers.community.kafka import KafkaContainer
    from testcontainers.community.postgres import PostgresContainer

    pg = PostgresContainer(
        "postgres:15", username="dualwrite", password="dualwrite", dbname="source", driver="psycopg"
    )
    pg.with_command("postgres -c wal_level=logical")
    kafka = KafkaContainer().with_kraft()  # testcontainers' default image, KRaft mode
    with pg, kafka:
        source = pg.get_connection_url()
        with create_engine(source, isolation_level="AUTOCOMMIT").connect() as conn:
            conn.execute(text("CREATE DATABASE target"))
        target = re.sub(r"/source$", "/target", source)
        yield Services(source, target, kafka.get_bootstrap_server())


@pytest.fixture(scope="session")
def source_engine(services: Services) -> Iterator[Engine]:
    engine = create_engine(services.source_url, pool_size=10)
    yield engine
    engine.dispose()


@pytest.fixture(scope="session")
def target_engine(services: Services) -> Iterator[Engine]:
    engine = create_engine(services.target_url, pool_size=10)
    yield engine
    engine.dispose()


def _unique(request: pytest.FixtureRequest, prefix: str) -> str:
    name = re.sub(r"[^a-z0-9]+", "_", request.node.name.lower())[:30].strip("_")
    return f"{prefix}_{name}_{uuid.uuid4().hex[:8]}"


@pytest.fixture
def source_schema(source_engine: Engine, request: pytest.FixtureRequest) -> Iterator[str]:
    """A fresh schema on the source database, dropped after the test."""
    schema = _unique(request, "t")
    with source_engine.begin() as conn:
        conn.execute(text(f'CREATE SCHEMA "{schema}"'))
    yield schema
    with source_engine.begin() as conn:
        conn.execute(text(f'DROP SCHEMA "{schema}" CASCADE'))


@pytest.fixture
def target_schema(target_engine: Engine, request: pytest.FixtureRequest) -> Iterator[str]:
    """A fresh schema on the target database, dropped after the test."""
    schema = _unique(request, "t")
    with target_engine.begin() as conn:
        conn.execute(text(f'CREATE SCHEMA "{schema}"'))
    yield schema
    with target_engine.begin() as conn:
        conn.execute(text(f'DROP SCHEMA "{schema}" CASCADE'))


@pytest.fixture
def topic(request: pytest.FixtureRequest) -> str:
    """A topic name no other test uses (the test creates the topic)."""
    return _unique(request, "dwtest").replace("_", ".")


@pytest.fixture
def migration_text(services: Services) -> str:
    """A valid migration file pointing at the test services."""
    return (
        f'[source]\nurl = "{services.source_url}"\n'
        f'[target]\nurl = "{services.target_url}"\n'
        f'[kafka]\nbootstrap_servers = ["{services.kafka_bootstrap}"]\ntopic_prefix = "dwtest"\n'
        '[[tables]]\nsource = "public.customers"\nkey = ["id"]\ntarget = "public.customers"\n'
    )


@pytest.fixture
def make_config(services: Services, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    """Build a MigrationConfig for this test: unique capture schema and topic prefix.

    ``make_config(["schema.table", ...], **relay)`` writes the file (``config.path``) and loads
    it; capture is uninstalled (forced) after the test so no trigger outlives it.
    """
    from dualwrite import MigrationConfig, load_migration

    made: list[MigrationConfig] = []
    unique = uuid.uuid4().hex[:8]

    def build(tables: list[str] | list[dict[str, Any]], **relay: int) -> MigrationConfig:
        lines = [
            'name = "dwtest"',
            f'[source]\nurl = "{services.source_url}"',
            f'[target]\nurl = "{services.target_url}"',
            f'[kafka]\nbootstrap_servers = ["{services.kafka_bootstrap}"]\ntopic_prefix = "dwtest.{unique}.{len(made)}"',
            f'[capture]\nschema = "cap_{unique}_{len(made)}"',
        ]
        if relay:
            lines.append("[relay]\n" + "\n".join(f"{k} = {v}" for k, v in relay.items()))
        for table in tables:
            spec = table if isinstance(table, dict) else {"source": table}
            entry = {"target": spec["source"], **spec}
            body = "\n".join(f"{k} = {json.dumps(v)}" for k, v in entry.items())
            lines.append(f"[[tables]]\n{body}")
        path = tmp_path_factory.mktemp("migration") / "migration.toml"
        path.write_text("\n".join(lines) + "\n")
        config = load_migration(path, env={})
        made.append(config)
        return config

    yield build
    from dualwrite import capture, make_engine

    for config in made:
        engine = make_engine(config.source)
        try:
            capture.uninstall(engine, config, force=True)
        except Exception as exc:  # the test may have dropped tables or schemas itself
            warnings.warn(f"capture cleanup of {config.capture.schema}: {exc}", stacklevel=1)
        finally:
            engine.dispose()
