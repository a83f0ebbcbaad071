"""Has the pipeline applied every change committed before the read began?

The evidence (``docs/reconcile.md``, "No false alarms from in-flight writes"): the changelog
sequence's last value ``position`` is read before the comparison reads any row, so every
change visible to the comparison's first read has ``seq <= position``. The pipeline has
passed that position once (a) no changelog record with ``seq <= position`` is left on the
source (the relay deletes a record only after Kafka acknowledged it) and then (b) the worker
group's committed offset has reached the log end of every partition of the changes topic
(read after (a) held; offsets are committed only after the target transaction, invariant 5).
Evidence gathered at any moment after ``position`` was read stays true later, so the check
runs in a background thread *while* the comparison runs, and the re-check, which reads after
the comparison, only waits for its verdict. Kafka (and kafka-python's import) is touched only
from that thread and only once (a) holds.

The target's ``dualwrite.source_positions`` is not evidence: it is the highest version applied
per source table, a high-water mark. Partitions are consumed independently, so a version
above ``position`` applied from one partition says nothing about a change of another key
still unconsumed on another partition.
"""

from __future__ import annotations

import logging
import threading
import time
from typing import Any

import psycopg
from psycopg import sql
from sqlalchemy import Engine

from dualwrite.config import MigrationConfig
from reconcile._session import connect

log = logging.getLogger(__name__)
log.addHandler(logging.NullHandler())

POLL_S = 0.5
"""Seconds between two polls of the relay backlog and the consumer group's offsets."""


def source_position(src: psycopg.Connection[Any], config: MigrationConfig) -> int | None:
    """The changelog sequence's last value: every change committed before now is <= it
    (None while no change was ever recorded)."""
    row = src.execute(
        "SELECT pg_sequence_last_value(pg_get_serial_sequence(%s, 'seq'))",
        (sql.SQL("{}.changelog").format(sql.Identifier(config.capture.schema)).as_string(None),),
    ).fetchone()
    src.commit()
    return None if row is None or row[0] is None else int(row[0])


class CatchUp:
    """Watches, in a daemon thread, whether the pipeline has passed ``position``.

    :meth:`start` begins polling at once; :meth:`wait` returns True as soon as the pipeline
    has passed the position, False when ``wait_s`` more seconds ran out (or ``stop`` was set),
    and re-raises what the watcher failed with (an unreachable broker:
    :class:`dualwrite.errors.ServiceUnavailableError`; a database error). :meth:`close` stops
    the thread without waiting for it (a broker call in progress finishes on its own).
    ``start``/``wait``/``close`` are for one thread, :meth:`passed` for any; the watcher
    thread only sets events.
    """

    def __init__(
        self,
        source: Engine,
        config: MigrationConfig,
        position: int | None,
        stop: threading.Event,
    ) -> None:
        self._source = source
        self._config = config
        self._position = position
        self._stop = stop
        self._closed = threading.Event()
        self._done = threading.Event()
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._watch, name="reconcile-catch-up", daemon=True)
        self.polls = 0

    def start(self) -> None:
        self._thread.start()

    def wait(self, wait_s: float) -> bool:
        """True once the pipeline has passed the position (waiting at most ``wait_s``)."""
        deadline = time.monotonic() + wait_s
        while not self._done.is_set() and not self._stop.is_set():
            left = deadline - time.monotonic()
            if left <= 0:
                break
            self._done.wait(min(left, POLL_S))
        if self._error is not None:
            raise self._error
        return self._done.is_set() and self._error is None

    def passed(self) -> bool:
        """True if the pipeline has passed the position already (does not wait)."""
        return self._done.is_set() and self._error is None

    def close(self) -> None:
        self._closed.set()

    def _watch(self) -> None:
        try:
            with connect(self._source, "dualwrite-reconcile-catch-up") as src:
                relayed = self._position is None
                while not self._closed.is_set() and not self._stop.is_set():
                    self.polls += 1
                    if not relayed:
                        relayed = _relayed(src, self._config, self._position)
                    if relayed and _consumed(self._config):
                        self._done.set()
                        return
                    self._closed.wait(POLL_S)
        except BaseException as exc:  # handed to wait(), which raises it where it matters
            self._error = exc
            self._done.set()


def _relayed(src: psycopg.Connection[Any], config: MigrationConfig, position: int | None) -> bool:
    """(a): no changelog record at or below ``position`` is left to relay."""
    row = src.execute(
        sql.SQL("SELECT EXISTS (SELECT 1 FROM {}.changelog WHERE seq <= %s)").format(
            sql.Identifier(config.capture.schema)
        ),
        (position,),
    ).fetchone()
    src.commit()
    return row is not None and not row[0]


def _consumed(config: MigrationConfig) -> bool:
    """(b): the worker group has committed offsets at the log end of every partition."""
    from dualwrite.kafka_io import group_lag  # kafka-python: only once there is a question
    from dualwrite.worker import consumer_group

    offsets = group_lag(
        config.kafka.bootstrap_servers, consumer_group(config), config.changes_topic
    )
    return all(
        end == 0 or (committed is not None and committed >= end)
        for end, committed in offsets.values()
    )
