"""Shared steps of the reconcile tests."""

from __future__ import annotations

import threading
import uuid
from pathlib import Path

from dualwrite import load_migration
from dualwrite.relay import run_relay
from dualwrite.worker import run_worker
from tests.worker.conftest import Pipeline


def pump(p: Pipeline) -> None:
    """Relay everything committed, then apply everything relayed."""
    run_relay(p.source, p.config, until_idle=True, stop=threading.Event())
    run_worker(p.target, p.config, p.transforms, until_idle=True, stop=threading.Event())


def seed(p: Pipeline) -> None:
    """200 people (every other one with a profile), carried to the target."""
    p.source_sql(
        "INSERT INTO {s}.person SELECT g, 'n' || g, 'E' || g || '@X', 'c' || g FROM generate_series(1, 200) g"
    )
    p.source_sql("INSERT INTO {s}.profile SELECT g, 't' || g FROM generate_series(1, 200, 2) g")
    pump(p)


def unique_name(p: Pipeline) -> str:
    """Give the pipeline's migration a name of its own (run history is kept per name on the
    shared target database), reloading the config; returns the name."""
    name = f"m{uuid.uuid4().hex[:12]}"
    path = Path(p.config.path)
    path.write_text(path.read_text().replace('name = "dwtest"', f'name = "{name}"', 1))
    p.config = load_migration(path, env={})
    return name
