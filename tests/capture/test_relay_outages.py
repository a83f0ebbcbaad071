"""The relay rides out an unavailable database and an unavailable broker and resumes alone."""

from __future__ import annotations

import contextlib
import logging
import os
import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy import Engine, text

from dualwrite import capture, make_engine, parse_migration
from dualwrite.devstack import DevStackSettings
from dualwrite.devstack._kafka_broker import LocalKafka
from dualwrite.relay import relay_metrics, run_relay
from tests.capture.helpers import events
from tests.conftest import REPO, Services

pytestmark = pytest.mark.integration


class TcpProxy:
    """Forwards a local port to a target; ``cut()`` drops every connection and stops listening."""

    def __init__(self, target_port: int) -> None:
        self.target_port = target_port
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            self.port = int(s.getsockname()[1])
        self._sockets: list[socket.socket] = []
        self._listener: socket.socket | None = None

    def start(self) -> None:
        listener = socket.socket()
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        listener.bind(("127.0.0.1", self.port))
        listener.listen()
        self._listener = listener
        threading.Thread(target=self._accept, args=(listener,), daemon=True).start()

    def _accept(self, listener: socket.socket) -> None:
        while True:
            try:
                client, _ = listener.accept()
            except OSError:
                return
            upstream = socket.create_connection(("127.0.0.1", self.target_port))
            self._sockets += [client, upstream]
            for a, b in ((client, upstream), (upstream, client)):
                threading.Thread(target=self._pipe, args=(a, b), daemon=True).start()

    @staticmethod
    def _pipe(src: socket.socket, dst: socket.socket) -> None:
        with contextlib.suppress(OSError):
            while data := src.recv(65536):
                dst.sendall(data)
        with contextlib.suppress(OSError):
            dst.shutdown(socket.SHUT_RDWR)

    def cut(self) -> None:
        if self._listener is not None:
            with contextlib.suppress(OSError):
                self._listener.shutdown(socket.SHUT_RDWR)  # wakes the accept() thread
            self._listener.close()
        for s in self._sockets:
            with contextlib.suppress(OSError):
                s.shutdown(socket.SHUT_RDWR)
            s.close()
        self._sockets.clear()


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
    ports = []
    for _ in range(3):
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            ports.append(int(s.getsockname()[1]))
    settings = DevStackSettings.from_env(
        {
            "DUALWRITE_DEV_DIR": str(tmp_path / "dev"),
            "DUALWRITE_CACHE_DIR": os.environ.get(
                "DUALWRITE_CACHE_DIR", str(REPO / ".dualwrite-cache")
            ),
            "DUALWRITE_PG_PORT": str(ports[0]),
            "DUALWRITE_KAFKA_PORT": str(ports[1]),
            "DUALWRITE_KAFKA_CONTROLLER_PORT": str(ports[2]),
        }
    )
    broker = LocalKafka(settings)
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
