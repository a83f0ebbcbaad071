"""Outage helpers shared by the relay and worker tests: a TCP proxy that can be cut, and a
private Kafka broker (the real one, from the shared jar cache) that can be stopped and started.
"""

from __future__ import annotations

import contextlib
import os
import socket
import threading
from pathlib import Path

from dualwrite.devstack import DevStackSettings
from dualwrite.devstack._kafka_broker import LocalKafka
from tests.conftest import REPO


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


def private_broker(dev_dir: Path) -> LocalKafka:
    """A broker of its own on free ports, not started; the caller stops and wipes it."""
    ports = []
    for _ in range(3):
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            ports.append(int(s.getsockname()[1]))
    settings = DevStackSettings.from_env(
        {
            "DUALWRITE_DEV_DIR": str(dev_dir),
            "DUALWRITE_CACHE_DIR": os.environ.get(
                "DUALWRITE_CACHE_DIR", str(REPO / ".dualwrite-cache")
            ),
            "DUALWRITE_PG_PORT": str(ports[0]),
            "DUALWRITE_KAFKA_PORT": str(ports[1]),
            "DUALWRITE_KAFKA_CONTROLLER_PORT": str(ports[2]),
        }
    )
    return LocalKafka(settings)
