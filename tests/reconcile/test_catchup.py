"""The in-flight re-check on the segment route: the pipeline's catch-up is watched while the
comparison runs; candidates read after the pipeline passed the read position are final
(fetched once), and a write the pipeline has not applied yet is in flight, not drift."""

from __future__ import annotations

import threading
from collections import Counter
from typing import Any

import pytest
from sqlalchemy import Engine

import reconcile._compare as compare
from dualwrite.relay import run_relay
from dualwrite.transform import Transforms
from dualwrite.worker import run_worker
from reconcile import reconcile
from reconcile._catchup import CatchUp, source_position
from reconcile._session import connect
from tests.reconcile.test_segments import EXPECTED, _found, declared

pytestmark = pytest.mark.integration

__all__ = ["declared"]


def _pump(source: Engine, target: Engine, config: Any, transforms: Transforms) -> None:
    run_relay(source, config, until_idle=True, stop=threading.Event())
    run_worker(target, config, transforms, until_idle=True, stop=threading.Event())


def _counting_evaluations(monkeypatch: pytest.MonkeyPatch) -> Counter[tuple[Any, ...]]:
    """Counts how often each key was fetched and compared in Python."""
    fetched: Counter[tuple[Any, ...]] = Counter()
    real = compare.evaluate

    def counted(*args: Any, **kwargs: Any) -> Any:
        fetched.update(args[6])
        return real(*args, **kwargs)

    monkeypatch.setattr(compare, "evaluate", counted)
    return fetched


def test_the_watcher_sees_a_pending_change_and_then_the_caught_up_pipeline(
    declared: tuple[Any, Transforms], source_engine: Engine, target_engine: Engine
) -> None:
    config, transforms = declared
    schema = config.tables[0].source.schema
    with source_engine.begin() as conn:
        conn.exec_driver_sql(f"UPDATE \"{schema}\".items SET note = 'changed' WHERE id = 1")
    with connect(source_engine) as src:
        position = source_position(src, config)
    assert position is not None
    watcher = CatchUp(source_engine, config, position, threading.Event())
    watcher.start()
    try:
        assert watcher.wait(1.0) is False and not watcher.passed()  # not relayed yet
        _pump(source_engine, target_engine, config, transforms)
        assert watcher.wait(30.0) is True and watcher.passed()
    finally:
        watcher.close()


def test_candidates_read_after_the_pipeline_caught_up_are_fetched_once(
    declared: tuple[Any, Transforms],
    source_engine: Engine,
    target_engine: Engine,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    config, transforms = declared

    class CaughtUpFirst(CatchUp):
        def start(self) -> None:
            super().start()
            assert self.wait(30.0)  # nothing is pending: the pipeline has passed the position

    monkeypatch.setattr(compare, "CatchUp", CaughtUpFirst)
    fetched = _counting_evaluations(monkeypatch)
    result = reconcile(source_engine, target_engine, config, transforms, wait_s=5)
    assert _found(result) == EXPECTED
    assert {(10,), (30,), (100001,)} <= set(fetched)
    assert set(fetched.values()) == {1}  # each candidate read once: no re-check


def test_a_change_the_pipeline_applies_after_the_read_is_in_flight_not_drift(
    declared: tuple[Any, Transforms],
    source_engine: Engine,
    target_engine: Engine,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    config, transforms = declared
    schema = config.tables[0].source.schema
    with source_engine.begin() as conn:  # committed, captured, not yet relayed nor applied
        conn.exec_driver_sql(f"UPDATE \"{schema}\".items SET name = 'renamed' WHERE id = 5")
    fetched = _counting_evaluations(monkeypatch)

    def catch_up_once_evaluated(table: str, rows: int) -> None:
        # called after the candidates were evaluated: the pipeline catches up only now
        _pump(source_engine, target_engine, config, transforms)

    result = reconcile(
        source_engine,
        target_engine,
        config,
        transforms,
        wait_s=60,
        progress=catch_up_once_evaluated,
    )
    assert _found(result) == {*EXPECTED, ("[5]", "in_flight")}
    assert result.status == "drift" and result.caught_up
    assert fetched[(5,)] == fetched[(30,)] == 2  # evaluated, then re-checked
