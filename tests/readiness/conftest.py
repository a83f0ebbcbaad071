"""Readiness and state tests: the worker tests' merge pipeline, under a migration name of its
own (run history, state and transitions are kept per migration name on the shared target)."""

from __future__ import annotations

import threading
import uuid
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path

import pytest

from dualwrite import load_migration
from dualwrite.backfill import run_backfill
from dualwrite.relay import run_relay
from dualwrite.reverse import record_round_trip, round_trip_check
from dualwrite.worker import run_worker
from reconcile import reconcile, record_run
from tests.reverse.conftest import Pair, make_pair, shop
from tests.worker.conftest import Pipeline, merge_pipeline

__all__ = [
    "Pair",
    "Pipeline",
    "make_pair",
    "merge_pipeline",
    "pump",
    "ready_pipeline",
    "ready_shop",
    "renamed",
    "shop",
]


def renamed(p: Pipeline) -> Pipeline:
    """The pipeline under a unique migration name (rewritten in its file, so the CLI sees it)."""
    path = Path(p.config.path)
    name = f"rd_{uuid.uuid4().hex[:8]}"
    path.write_text(path.read_text().replace('name = "dwtest"', f'name = "{name}"', 1))
    return replace(p, config=load_migration(path, env={}))


def pump(p: Pipeline) -> None:
    run_relay(p.source, p.config, until_idle=True, stop=threading.Event())
    run_worker(p.target, p.config, p.transforms, until_idle=True, stop=threading.Event())


@pytest.fixture
def ready_pipeline(merge_pipeline: Pipeline) -> Iterator[Pipeline]:
    """Seeded before capture-time rows are backfilled, live changes streamed, reconciled clean:
    every forward gate passes."""
    p = renamed(merge_pipeline)
    p.source_sql(
        "INSERT INTO {s}.person SELECT g, 'n' || g, NULL, 'c' || g FROM generate_series(1, 50) g"
    )
    p.source_sql("INSERT INTO {s}.profile SELECT g, 't' || g FROM generate_series(1, 50, 5) g")
    run_backfill(p.source, p.target, p.config, p.transforms)
    pump(p)
    record_run(p.target, reconcile(p.source, p.target, p.config, p.transforms, wait_s=10))
    yield p


@pytest.fixture
def ready_shop(shop: Pair) -> Pair:
    """The shop example backfilled, streamed, reconciled clean, its reverse capture installed
    and its inverse transforms round-trip checked: every gate, the rollback path's included,
    passes."""
    run_backfill(shop.source, shop.target, shop.config, shop.transforms)
    shop.pump_forward()
    record_run(
        shop.target, reconcile(shop.source, shop.target, shop.config, shop.transforms, wait_s=10)
    )
    checked = round_trip_check(shop.config, 200, source=shop.source, target=shop.target)
    record_round_trip(shop.config, checked, target=shop.target)
    return shop
