"""Reconcile's database sessions: pinned settings, text-exact loaders, and a small pool.

Every session reconcile opens pins the settings the canonical comparison depends on (UTC,
ISO dates, shortest exact float text, hex bytea), and loads json/jsonb as their text so the
Python side sees what ``jsonb::text`` sees (never a float). :class:`Sessions` hands out at
most ``size`` connections per database to threads; a connection is used by one thread at a
time.
"""

from __future__ import annotations

import queue
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import psycopg
from psycopg.types.string import TextLoader
from sqlalchemy import Engine

SETTINGS = (
    "-c timezone=UTC -c datestyle=ISO,YMD -c extra_float_digits=1 -c bytea_output=hex "
    "-c intervalstyle=postgres -c client_encoding=UTF8 -c jit=off -c work_mem=64MB"
)
"""Pinned for the canonical forms; ``jit=off`` and ``work_mem`` because compiling the
checksum queries cost more than it saved, and a 4 MB hash aggregate planned to spill."""


def connect(engine: Engine, name: str = "dualwrite-reconcile") -> psycopg.Connection[Any]:
    """A psycopg connection with reconcile's pinned settings (raises psycopg.OperationalError)."""
    url = engine.url.set(drivername="postgresql").render_as_string(hide_password=False)
    conn = psycopg.connect(url, options=SETTINGS, application_name=name, connect_timeout=10)
    for type_name in ("json", "jsonb"):
        conn.adapters.register_loader(type_name, TextLoader)
    return conn


class Sessions:
    """Up to ``size`` connections to one database, opened lazily, shared by threads.

    Thread-safe. ``close`` closes every idle connection; call it once all users are done.
    """

    def __init__(self, engine: Engine, size: int) -> None:
        self._engine = engine
        self._size = size
        self._opened = 0
        self._idle: queue.LifoQueue[psycopg.Connection[Any]] = queue.LifoQueue()
        self._lock = threading.Lock()
        self._all: list[psycopg.Connection[Any]] = []

    @contextmanager
    def get(self) -> Iterator[psycopg.Connection[Any]]:
        conn = self._take()
        try:
            yield conn
        except BaseException:
            conn.rollback()
            raise
        finally:
            self._idle.put(conn)

    def _take(self) -> psycopg.Connection[Any]:
        try:
            return self._idle.get_nowait()
        except queue.Empty:
            pass
        with self._lock:
            if self._opened < self._size:
                self._opened += 1
                try:
                    conn = connect(self._engine)
                except BaseException:
                    self._opened -= 1
                    raise
                self._all.append(conn)
                return conn
        return self._idle.get()

    def close(self) -> None:
        for conn in self._all:
            conn.close()
