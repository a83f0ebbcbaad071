"""The worker rides out an unavailable target database and an unavailable broker, resumes
alone, reaches the exact state, and still stops promptly while a service is down."""

from __future__ import annotations

import contextlib
import datetime as dt
import logging
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

import pytest
from sqlalchemy import Engine, create_engine, text

from dualwrite import MigrationConfig, parse_migration
from dualwrite import worker as worker_module
from dualwrite.devstack._kafka_broker import LocalKafka
from dualwrite.errors import ServiceUnavailableError
from dualwrite.kafka_io import Consumer, Message
from dualwrite.metrics import Metrics
from dualwrite.relay import run_relay
from dualwrite.worker import (
    WorkerSettings,
    _Outcome,
    _Poison,
    _publish_and_commit,
    _StoppedUncommitted,
    run_worker,
    worker_metrics,
)
from tests.outages import TcpProxy, private_broker
from tests.worker.conftest import Pipeline
from tests.worker.test_worker_crashes import _assert_exact

pytestmark = pytest.mark.integration

SETTINGS = WorkerSettings(batch_size=200, linger_ms=50)


def _wait(predicate: Callable[[], bool], timeout_s: float = 90.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not predicate():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.1)


def _persons(p: Pipeline) -> int:
    with p.target.connect() as conn:
        return int(conn.execute(text(f'SELECT count(*) FROM "{p.dst}".person')).scalar_one())


def _insert(p: Pipeline, first: int, last: int) -> None:
    p.source_sql(
        "INSERT INTO {s}.person SELECT i, 'n' || i, 'Mail' || i || '@X', 'Oslo' "
        "FROM generate_series(CAST(:a AS int), CAST(:b AS int)) i",
        a=first,
        b=last,
    )
    p.source_sql(
        "INSERT INTO {s}.profile SELECT i, 'gold' FROM generate_series(CAST(:a AS int), CAST(:b AS int)) i",
        a=first,
        b=last,
    )


@dataclass
class _Running:
    worker: threading.Thread
    stop_worker: threading.Event
    metrics: Metrics


@contextlib.contextmanager
def _relay_and_worker(
    p: Pipeline,
    config: MigrationConfig,
    target: Engine,
    settings: WorkerSettings = SETTINGS,
) -> Iterator[_Running]:
    """The relay and one worker on threads; both stopped and joined on exit."""
    stop_relay, stop_worker = threading.Event(), threading.Event()
    metrics = worker_metrics()
    relay = threading.Thread(target=run_relay, args=(p.source, config), kwargs={"stop": stop_relay})
    worker = threading.Thread(
        target=run_worker,
        args=(target, config, p.transforms),
        kwargs={"settings": settings, "stop": stop_worker, "metrics": metrics},
    )
    relay.start()
    worker.start()
    try:
        yield _Running(worker, stop_worker, metrics)
    finally:
        stop_relay.set()
        stop_worker.set()
        relay.join(timeout=90)
        worker.join(timeout=90)
    assert not relay.is_alive(), "the relay did not stop"
    assert not worker.is_alive(), "the worker did not stop"


def test_worker_rides_out_a_target_database_outage(
    merge_pipeline: Pipeline, caplog: pytest.LogCaptureFixture
) -> None:
    p = merge_pipeline
    proxy = TcpProxy(p.target.url.port or 5432)
    proxy.start()
    proxied = create_engine(p.target.url.set(port=proxy.port))
    caplog.set_level(logging.WARNING, logger="dualwrite.worker")
    try:
        with _relay_and_worker(p, p.config, proxied) as run:
            _insert(p, 1, 100)
            _wait(lambda: _persons(p) == 100)
            proxy.cut()
            _insert(p, 101, 200)
            _wait(lambda: run.metrics.get("worker_retries_total") >= 1)
            assert _persons(p) == 100  # nothing reaches the target while it is unreachable
            proxy.start()
            _wait(lambda: _persons(p) == 200)
            # down again with a batch in hand: a stop must not wait for the database to return
            proxy.cut()
            retries = run.metrics.get("worker_retries_total")
            _insert(p, 201, 250)
            _wait(lambda: run.metrics.get("worker_retries_total") > retries)
            run.stop_worker.set()
            run.worker.join(timeout=60)
            assert not run.worker.is_alive(), "the worker did not stop while the database was down"
            assert "it is redelivered" in caplog.text
            # the uncommitted batch is redelivered to the next worker
            run_worker(p.target, p.config, p.transforms, settings=SETTINGS, until_idle=True)
    finally:
        proxy.cut()
        proxied.dispose()
    assert "target database unavailable" in caplog.text
    assert _persons(p) == 250
    _assert_exact(p)


@pytest.fixture
def broker(tmp_path: Path) -> Iterator[LocalKafka]:
    broker = private_broker(tmp_path / "dev")
    broker.start()
    yield broker
    broker.stop()
    broker.wipe()


def test_worker_rides_out_a_broker_outage_and_stops_while_it_is_down(
    merge_pipeline: Pipeline, broker: LocalKafka
) -> None:
    p = merge_pipeline
    own = parse_migration(
        Path(p.config.path)
        .read_text()
        .replace(",".join(p.config.kafka.bootstrap_servers), broker.settings.kafka_bootstrap),
        p.config.path,
        {},
    )
    assert list(own.kafka.bootstrap_servers) == [broker.settings.kafka_bootstrap]
    with _relay_and_worker(p, own, p.target) as run:
        _insert(p, 1, 100)
        _wait(lambda: _persons(p) == 100)
        broker.stop()
        _insert(p, 101, 200)
        time.sleep(3)  # the relay and the worker both meet the dead broker
        assert run.worker.is_alive(), "the worker gave up while the broker was down"
        assert _persons(p) == 100
        broker.start()
        _wait(lambda: _persons(p) == 200, timeout_s=180)
        _assert_exact(p)
        broker.stop()
        t_stop = time.monotonic()
        run.stop_worker.set()
        run.worker.join(timeout=90)
        assert not run.worker.is_alive(), "the worker hung on a dead broker after stop"
        print(f"worker stopped {time.monotonic() - t_stop:.1f}s after stop with the broker down")


class _FailingProducer:
    """Refuses ``failures`` flushes (as an unreachable broker does), then acknowledges."""

    def __init__(self, failures: int) -> None:
        self.failures = failures
        self.sent: list[bytes | None] = []

    def send(self, topic: str, key: bytes | None, value: bytes | None) -> object:
        self.sent.append(value)
        return _Done()

    def flush(self, timeout_s: float | None = None) -> None:
        if self.failures:
            self.failures -= 1
            raise ServiceUnavailableError("broker unreachable")


class _Done:
    def get(self, timeout: float) -> int:
        return 0


class _RecordingConsumer:
    def __init__(self, log: list[str]) -> None:
        self.log = log

    def commit(self, positions: dict[tuple[str, int], int] | None = None) -> bool:
        self.log.append(f"commit {positions}")
        return True


def _poisoned_batch() -> tuple[list[Message], _Outcome]:
    message = Message("t.changes", 0, 7, b'["k",1]', b"not json", 0)
    outcome = _Outcome(
        applied=0,
        poison=[_Poison(message, "undecodable", "not json")],
        parked=[],
        last_ts=dt.datetime.now(dt.UTC),
    )
    return [message], outcome


def test_offsets_are_committed_only_after_dead_letters_are_acknowledged(
    merge_pipeline: Pipeline,
) -> None:
    messages, outcome = _poisoned_batch()
    producer, calls = _FailingProducer(failures=2), []
    metrics = worker_metrics()
    _publish_and_commit(
        _RecordingConsumer(calls),  # type: ignore[arg-type]
        producer,  # type: ignore[arg-type]
        merge_pipeline.config,
        threading.Event(),
        metrics,
        messages,
        outcome,
    )
    assert metrics.get("worker_retries_total") == 2
    assert len(producer.sent) == 3  # the dead letter re-sent until acknowledged
    assert calls == ["commit {('t.changes', 0): 8}"]


def test_a_stop_while_dead_letters_fail_leaves_the_offsets_uncommitted(
    merge_pipeline: Pipeline,
) -> None:
    messages, outcome = _poisoned_batch()
    calls: list[str] = []
    stop = threading.Event()
    stop.set()
    with pytest.raises(_StoppedUncommitted, match="broker unreachable"):
        _publish_and_commit(
            _RecordingConsumer(calls),  # type: ignore[arg-type]
            _FailingProducer(failures=10**6),  # type: ignore[arg-type]
            merge_pipeline.config,
            stop,
            worker_metrics(),
            messages,
            outcome,
        )
    assert calls == []  # committing now would lose the dead letter: the batch is redelivered


class _DroppingConsumer(Consumer):
    """Leaves its group on the worker's own thread once ``drop`` is set, and never rejoins:
    what kafka-python 3.0.12 was seen doing under load (group empty, polls returning nothing)."""

    drop = threading.Event()
    dropped = threading.Event()
    created: ClassVar[list[_DroppingConsumer]] = []

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.created.append(self)

    def poll(self, timeout_ms: int = 1000, max_records: int | None = None) -> list[Message]:
        if self.drop.is_set() and self is self.created[0]:
            self._consumer.unsubscribe()  # leaves the group; nothing is assigned any more
            self.dropped.set()
            time.sleep(timeout_ms / 1000)
            return []
        return super().poll(timeout_ms, max_records)


def test_a_worker_whose_consumer_fell_out_of_its_group_joins_again(
    merge_pipeline: Pipeline, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    p = merge_pipeline
    _DroppingConsumer.drop.clear()
    _DroppingConsumer.dropped.clear()
    _DroppingConsumer.created.clear()
    monkeypatch.setattr(worker_module, "Consumer", _DroppingConsumer)
    caplog.set_level(logging.WARNING, logger="dualwrite.worker")
    settings = WorkerSettings(batch_size=200, linger_ms=50, rejoin_after_s=2.0)
    with _relay_and_worker(p, p.config, p.target, settings) as run:
        _insert(p, 1, 100)
        _wait(lambda: _persons(p) == 100)
        _DroppingConsumer.drop.set()
        _wait(_DroppingConsumer.dropped.is_set)  # out of the group before the next rows exist
        _insert(p, 101, 200)
        _wait(lambda: _persons(p) == 200)
    metrics = run.metrics
    assert metrics.get("worker_rejoins_total") == 1
    assert len(_DroppingConsumer.created) == 2
    assert "fell out of its group" in caplog.text
    _assert_exact(p)
