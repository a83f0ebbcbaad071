"""Fixtures for the rollback path: a forward migration whose reverse direction is exercised.

Each fixture installs forward capture on the source and reverse capture on the target and
removes both afterwards (forced), so no trigger outlives its test.
"""

from __future__ import annotations

import sys
import threading
import uuid
import warnings
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import Engine, text

from dualwrite import MigrationConfig, capture, load_migration
from dualwrite.relay import run_relay
from dualwrite.reverse import install_reverse, reverse_config, uninstall_reverse
from dualwrite.transform import Transforms, load_transforms
from dualwrite.worker import run_worker
from examples.shop.workload import install_new_schema, install_old_schema, seed, tables_toml
from tests.conftest import REPO, Services


@dataclass
class Pair:
    """A forward migration and its reversal, with both databases."""

    config: MigrationConfig
    reverse: MigrationConfig
    src: str  # old schema, on the source database
    dst: str  # new schema, on the target database
    source: Engine
    target: Engine

    @property
    def transforms(self) -> Transforms:
        return load_transforms(self.config)

    def old_sql(self, statement: str, **params: Any) -> None:
        with self.source.begin() as conn:
            conn.execute(text(statement.format(s=f'"{self.src}"')), params)

    def new_sql(self, statement: str, **params: Any) -> None:
        with self.target.begin() as conn:
            conn.execute(text(statement.format(d=f'"{self.dst}"')), params)

    def old_rows(self, query: str) -> list[tuple[Any, ...]]:
        with self.source.connect() as conn:
            return [tuple(r) for r in conn.execute(text(query.format(s=f'"{self.src}"')))]

    def new_rows(self, query: str) -> list[tuple[Any, ...]]:
        with self.target.connect() as conn:
            return [tuple(r) for r in conn.execute(text(query.format(d=f'"{self.dst}"')))]

    def forward_backlog(self) -> int:
        """Changes captured on the old tables and not yet relayed."""
        with self.source.connect() as conn:
            return int(
                conn.execute(
                    text(f'SELECT count(*) FROM "{self.config.capture.schema}".changelog')
                ).scalar_one()
            )

    def reverse_backlog(self) -> int:
        """Changes captured on the new tables and not yet relayed."""
        with self.target.connect() as conn:
            return int(
                conn.execute(
                    text(f'SELECT count(*) FROM "{self.reverse.capture.schema}".changelog')
                ).scalar_one()
            )

    def pump_forward(self) -> None:
        run_relay(self.source, self.config, until_idle=True, stop=threading.Event())
        run_worker(
            self.target, self.config, self.transforms, until_idle=True, stop=threading.Event()
        )

    def pump_reverse(self) -> None:
        run_relay(self.target, self.reverse, until_idle=True, stop=threading.Event())
        run_worker(
            self.source,
            self.reverse,
            load_transforms(self.reverse),
            until_idle=True,
            stop=threading.Event(),
        )


MakePair = Callable[..., Pair]


@pytest.fixture
def make_pair(
    services: Services,
    source_engine: Engine,
    target_engine: Engine,
    source_schema: str,
    target_schema: str,
    tmp_path: Path,
) -> Iterator[MakePair]:
    """``make_pair(tables_toml, module=None)``: write the migration file (``{s}``/``{d}`` in
    ``tables_toml`` stand for the quoted old and new schema names), install forward capture
    and reverse capture, return the :class:`Pair`."""
    if str(REPO) not in sys.path:
        sys.path.insert(0, str(REPO))
    made: list[MigrationConfig] = []
    unique = uuid.uuid4().hex[:8]

    def build(tables_toml: str, module: str | None = None) -> Pair:
        body = "\n".join(
            [
                f'name = "rev{unique}"',
                f'[source]\nurl = "{services.source_url}"',
                f'[target]\nurl = "{services.target_url}"',
                f'[kafka]\nbootstrap_servers = ["{services.kafka_bootstrap}"]\n'
                f'topic_prefix = "dwtest.rev.{unique}"',
                f'[capture]\nschema = "cap_{unique}"',
                "[relay]\nbatch_size = 500\nidle_poll_ms = 10\ntopic_partitions = 4",
                f'[transform]\nmodule = "{module}"' if module else "",
                tables_toml.replace("{s}", source_schema).replace("{d}", target_schema),
            ]
        )
        path = tmp_path / "migration.toml"
        path.write_text(body + "\n")
        config = load_migration(path, env={})
        made.append(config)
        capture.install(source_engine, config)
        install_reverse(config, target_engine)
        return Pair(
            config,
            reverse_config(config),
            source_schema,
            target_schema,
            source_engine,
            target_engine,
        )

    yield build
    for config in made:
        try:
            capture.uninstall(source_engine, config, force=True)
            uninstall_reverse(config, target_engine, force=True)
        except Exception as exc:  # the test may have dropped what it installed
            warnings.warn(f"capture cleanup: {exc}", stacklevel=1)


SHOP_TABLES = tables_toml("{s}", "{d}")  # make_pair fills in the schemas


@pytest.fixture
def shop(
    make_pair: MakePair,
    source_engine: Engine,
    target_engine: Engine,
    source_schema: str,
    target_schema: str,
) -> Pair:
    install_old_schema(source_engine, source_schema)
    install_new_schema(target_engine, target_schema)
    seed(source_engine, 60, schema=source_schema, rng_seed=7)  # messy legacy data
    return make_pair(SHOP_TABLES, module="examples.shop.transform")
