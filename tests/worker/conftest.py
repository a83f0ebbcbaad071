"""Fixtures for worker tests: a source and target schema pair wired through capture and relay."""

from __future__ import annotations

import sys
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import pytest
from sqlalchemy import Engine, text

from dualwrite import MigrationConfig, capture
from dualwrite.transform import Transforms, load_transforms
from tests.conftest import REPO


@dataclass
class Pipeline:
    config: MigrationConfig
    transforms: Transforms
    src: str
    dst: str
    source: Engine
    target: Engine

    def source_sql(self, statement: str, **params: Any) -> None:
        with self.source.begin() as conn:
            conn.execute(text(statement.format(s=f'"{self.src}"')), params)

    def target_rows(self, table: str) -> list[tuple[Any, ...]]:
        with self.target.connect() as conn:
            return [
                tuple(r)
                for r in conn.execute(text(f'SELECT * FROM "{self.dst}".{table} ORDER BY 1'))
            ]


@pytest.fixture
def merge_pipeline(
    source_engine: Engine,
    target_engine: Engine,
    source_schema: str,
    target_schema: str,
    make_config,
) -> Iterator[Pipeline]:
    """person + profile merged into person, person split into address; the test module's transforms."""
    with source_engine.begin() as conn:
        conn.execute(
            text(
                f'CREATE TABLE "{source_schema}".person (id int PRIMARY KEY, name text, email text, city text)'
            )
        )
        conn.execute(
            text(f'CREATE TABLE "{source_schema}".profile (person_id int PRIMARY KEY, tier text)')
        )
    with target_engine.begin() as conn:
        conn.execute(
            text(
                f'CREATE TABLE "{target_schema}".person (id int PRIMARY KEY, name text, email text, tier text)'
            )
        )
        conn.execute(
            text(
                f"CREATE TABLE \"{target_schema}\".address (person_id int PRIMARY KEY, city text NOT NULL CHECK (city <> 'forbidden'))"
            )
        )
    if str(REPO) not in sys.path:
        sys.path.insert(0, str(REPO))
    config = make_config(
        [
            {"source": f"{source_schema}.person", "target": f"{target_schema}.person"},
            {"source": f"{source_schema}.profile", "target": f"{target_schema}.person"},
        ],
        batch_size=500,
        idle_poll_ms=10,
        topic_partitions=4,
    )
    config = _with_module(config, "tests.worker.merge_transform")
    capture.install(source_engine, config)
    yield Pipeline(
        config, load_transforms(config), source_schema, target_schema, source_engine, target_engine
    )


def _with_module(config: MigrationConfig, module: str) -> MigrationConfig:
    from pathlib import Path

    from dualwrite import load_migration

    path = Path(config.path)
    path.write_text(path.read_text() + f'[transform]\nmodule = "{module}"\n')
    return load_migration(path, env={})


WorkerRunner = Callable[..., Any]
