"""The relay rides out an unavailable database and an unavailable broker and resumes alone."""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy import Engine, text

from dualwrite import capture, make_engine, parse_migration
from dualwrite.devstack._kafka_broker import LocalKafka
from dualwrite.relay import relay_metrics, run_relay
from tests.capture.helpers import events
from tests.conftest import Services
from tests.outages import TcpProxy, private_broker

pytestmark = pytest.mark.integration


def _wait(predicate, timeout_s: float = 60.0) -> None:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout_s
    while not predicate():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.1)


def test_relay_survives_a_database_outage(
    source_engine: Engine, source_schema: str, make_config, caplog: pytest.LogCaptureFixture
) -> None:
    with source_engine.begin() as conn:
        conn.execute(text(f'CREATE TABLE "{source_schema}".t (id int PRIMARY KEY)'))
    config = make_config([f"{source_schema}.t"], idle_poll_ms=20)
    capture.install(source_engine, config)
    proxy = TcpProxy(source_engine.url.port or 5432)
    proxy.start()
    proxied = parse_migration(
        Path(config.path).read_text().replace(f":{source_engine.url.port}/", f":{proxy.port}/", 1),
        config.path,
        {},
    )
    assert f":{proxy.port}/" in proxied.source.url
    engine = make_engine(proxied.source)
    metrics = relay_metrics()
    stop = threading.Event()
    caplog.set_level(logging.WARNING, logger="dualwrite.relay")
    relay = threading.Thread(
        target=run_relay, args=(engine, proxied), kwargs={"stop": stop, "metrics": metrics}
    )
    relay.start()
    try:
        with source_engine.begin() as conn:
            conn.execute(text(f'INSERT INTO "{source_schema}".t SELECT generate_series(1, 100)'))
        _wait(lambda: metrics.get("relay_changes_total") == 100)
        proxy.cut()
        with source_engine.begin() as conn:
            conn.execute(text(f'INSERT INTO "{source_schema}".t SELECT generate_series(101, 200)'))
        _wait(lambda: metrics.get("relay_retries_total") >= 1)
        time.sleep(1)
        assert metrics.get("relay_changes_total") == 100
        proxy.start()
        _wait(lambda: metrics.get("relay_changes_total") == 200)
    finally:
        stop.set()
        relay.join()
        proxy.cut()
        engine.dispose()
    assert "source database unavailable" in caplog.text
    assert sorted(e.key["id"] for e in events(config)) == list(range(1, 201))


@pytest.fixture
def late_broker(tmp_path: Path) -> Iterator[LocalKafka]:
    broker = private_broker(tmp_path / "dev")
    yield broker
    broker.stop()
    broker.wipe()


def test_relay_waits_for_an_unavailable_broker_and_resumes(
    source_engine: Engine,
    source_schema: str,
    make_config,
    services: Services,
    late_broker: LocalKafka,
    caplog: pytest.LogCaptureFixture,
) -> None:
    with source_engine.begin() as conn:
        conn.execute(text(f'CREATE TABLE "{source_schema}".t (id int PRIMARY KEY)'))
    config = make_config([f"{source_schema}.t"], idle_poll_ms=20)
    capture.install(source_engine, config)
    late = parse_migration(
        Path(config.path)
        .read_text()
        .replace(services.kafka_bootstrap, late_broker.settings.kafka_bootstrap),
        config.path,
        {},
    )
    with source_engine.begin() as conn:
        conn.execute(text(f'INSERT INTO "{source_schema}".t SELECT generate_series(1, 50)'))
    metrics = relay_metrics()
    stop = threading.Event()
    caplog.set_level(logging.WARNING, logger="dualwrite.relay")
    relay = threading.Thread(
        target=run_relay, args=(source_engine, late), kwargs={"stop": stop, "metrics": metrics}
    )
    relay.start()
    try:
        _wait(lambda: metrics.get("relay_retries_total") >= 1, timeout_s=90)
        t_up = time.monotonic()
        assert capture.status(source_engine, config).backlog == 50
        late_broker.start()
        _wait(lambda: metrics.get("relay_changes_total") == 50, timeout_s=90)
        print(f"resumed {time.monotonic() - t_up:.1f}s after the broker was started")
    finally:
        stop.set()
        relay.join()
    assert "Kafka unavailable" in caplog.text
    assert capture.status(source_engine, config).backlog == 0
    assert sorted(e.key["id"] for e in events(late)) == list(range(1, 51))
