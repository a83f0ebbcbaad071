"""Counters and gauges for logs and an optional Prometheus text endpoint.

A tiny, dependency-free implementation of the Prometheus text exposition format: the relay
and the worker own a :class:`Metrics` and, when asked for a port, serve it on
``/metrics``. Thread-safe: updates and the HTTP thread share one lock.
"""

from __future__ import annotations

import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

__all__ = ["Metrics", "MetricsServer"]


class Metrics:
    """Named counters (only grow) and gauges (set), each with a help text."""

    def __init__(self, namespace: str = "dualwrite") -> None:
        self._namespace = namespace
        self._lock = threading.Lock()
        self._values: dict[str, float] = {}
        self._kinds: dict[str, tuple[str, str]] = {}

    def counter(self, name: str, help_text: str) -> None:
        with self._lock:
            self._kinds[name] = ("counter", help_text)
            self._values.setdefault(name, 0.0)

    def gauge(self, name: str, help_text: str) -> None:
        with self._lock:
            self._kinds[name] = ("gauge", help_text)
            self._values.setdefault(name, float("nan"))

    def inc(self, name: str, amount: float = 1.0) -> None:
        with self._lock:
            self._values[name] = self._values.get(name, 0.0) + amount

    def set(self, name: str, value: float) -> None:
        with self._lock:
            self._values[name] = value

    def get(self, name: str) -> float:
        with self._lock:
            return self._values.get(name, float("nan"))

    def render(self) -> str:
        """The Prometheus text exposition of every metric."""
        lines: list[str] = []
        with self._lock:
            for name in sorted(self._values):
                full = f"{self._namespace}_{name}"
                kind, help_text = self._kinds.get(name, ("untyped", ""))
                lines.append(f"# HELP {full} {help_text}")
                lines.append(f"# TYPE {full} {kind}")
                value = self._values[name]
                lines.append(f"{full} {'NaN' if value != value else repr(value)}")
        return "\n".join(lines) + "\n"


class MetricsServer:
    """Serves ``metrics.render()`` on ``http://host:port/metrics`` from a daemon thread."""

    def __init__(self, metrics: Metrics, port: int, host: str = "127.0.0.1") -> None:
        owner = metrics

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                if self.path.rstrip("/") != "/metrics":
                    self.send_error(404)
                    return
                body = owner.render().encode()
                self.send_response(200)
                self.send_header("Content-Type", "text/plain; version=0.0.4")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, format: str, *args: object) -> None:
                return

        self._server = ThreadingHTTPServer((host, port), Handler)
        self.port = int(self._server.server_address[1])
        self._thread = threading.Thread(
            target=self._server.serve_forever, name="metrics", daemon=True
        )
        self._thread.start()

    def close(self) -> None:
        self._server.shutdown()
        self._server.server_close()
