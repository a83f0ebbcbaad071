"""The relay: publishes the changelog to Kafka, at least once, in per-key commit order.

Design (the argument is in ``docs/capture-and-relay.md``): the changelog holds exactly the
changes not yet relayed. Each batch is one source transaction that deletes the oldest visible
records (``DELETE ... RETURNING``), publishes them in sequence order with an idempotent
``acks=all`` producer, waits for every acknowledgement and only then commits the delete.
A crash or error before the commit rolls the delete back, so those records are published
again (duplicates, never gaps). Records of transactions still in progress are invisible to
the delete and are published once they commit. One relay per capture schema is active at a
time (a session advisory lock); others wait as hot standbys.

The database returns each record's columns as text (cheap); the relay puts the envelope
together (:meth:`_Envelopes.envelope`), byte for byte what PostgreSQL's ``json_build_object`` wrote
before, with each table's ``types`` read once per batch from the registry instead of once
per record. That moves about half of the batch statement's cost off the source database.
"""

from __future__ import annotations

import contextlib
import json
import logging
import random
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import psycopg
from psycopg import sql
from sqlalchemy import Engine

from dualwrite.capture._ddl import CHANGELOG, REGISTRY, RELAY_STATE, in_schema
from dualwrite.config import MigrationConfig
from dualwrite.errors import DualwriteError, ServiceUnavailableError
from dualwrite.kafka_io import Producer, ensure_topic, is_retriable
from dualwrite.metrics import Metrics
from dualwrite.redaction import redact_text

__all__ = ["RelayResult", "relay_metrics", "run_relay"]

log = logging.getLogger(__name__)

_MAX_BACKOFF_S = 30.0
_LOG_EVERY_S = 10.0


@dataclass(frozen=True)
class RelayResult:
    """What one ``run_relay`` call did before it returned."""

    relayed: int
    batches: int
    elapsed_s: float
    retries: int


def relay_metrics() -> Metrics:
    metrics = Metrics()
    metrics.counter("relay_changes_total", "Change records published to Kafka and acknowledged.")
    metrics.counter("relay_batches_total", "Batches committed.")
    metrics.counter("relay_retries_total", "Batches rolled back and retried after an error.")
    metrics.gauge("relay_last_batch_size", "Records in the last committed batch.")
    metrics.gauge("relay_lag_seconds", "Age of the oldest unrelayed change (0 when none).")
    metrics.gauge("relay_active", "1 while this process holds the relay lock.")
    return metrics


class _Batch:
    """(seq, Kafka key, envelope) of every record of one batch, in seq order."""

    def __init__(self, rows: list[tuple[int, str, str]]) -> None:
        rows.sort(key=lambda r: r[0])
        self.rows = rows

    @property
    def last_seq(self) -> int:
        return self.rows[-1][0]


_OP_NAMES = {"I": "insert", "U": "update", "D": "delete"}  # anything else: "read"
_ORIGIN_NAMES = {"t": "trigger", "o": "outbox"}  # anything else: "snapshot"


def _json_string(text: str) -> str:
    """``text`` as a JSON string, escaped exactly as PostgreSQL 15's ``escape_json`` does:
    quote, backslash and control characters escaped (the short forms for backspace, form
    feed, newline, carriage return and tab, ``u00xx`` for the others); everything else,
    non-ASCII included, kept as is."""
    return json.dumps(text, ensure_ascii=False)


class _Envelopes:
    """Builds envelopes from changelog columns; caches the JSON text of each source label.

    The ``types`` of each table come from the registry, read once per batch in the batch's
    transaction (:meth:`load_types`), so a re-install that changes a table's columns is
    seen by the next batch. Not thread-safe.
    """

    def __init__(self, registry_sql: sql.Composed) -> None:
        self._registry_sql = registry_sql
        self._types: dict[str, str] = {}
        self._sources: dict[str, str] = {}

    def load_types(self, conn: psycopg.Connection[Any]) -> None:
        self._types = dict(conn.execute(self._registry_sql).fetchall())

    def envelope(
        self,
        seq: int,
        source: str,
        op: str,
        key: str,
        row: str | None,
        txid: str,
        ts: str,
        origin: str,
    ) -> str:
        """The value ``json_build_object(...)::text`` gave for these columns (docs/envelope.md):
        ``key`` and ``row`` are the stored json texts, ``ts`` is ``to_json(captured_at)``."""
        label = self._sources.get(source)
        if label is None:
            label = self._sources[source] = _json_string(source)
        return (
            f'{{"schema_version" : 1, "source" : {label}, '
            f'"op" : "{_OP_NAMES.get(op, "read")}", "key" : {key}, '
            f'"row" : {"null" if row is None else row}, '
            f'"types" : {self._types.get(source, "null")}, "version" : {seq}, '
            f'"txid" : "{txid}", "ts" : {ts}, "origin" : "{_ORIGIN_NAMES.get(origin, "snapshot")}"}}'
        )


def _fetch_batch(
    conn: psycopg.Connection[Any], statement: sql.Composed, envelopes: _Envelopes
) -> _Batch | None:
    """Delete the next batch (in the caller's transaction) and build its envelopes."""
    rows = conn.execute(statement).fetchall()
    if not rows:
        return None
    envelopes.load_types(conn)
    build = envelopes.envelope
    return _Batch([(seq, msg_key, build(seq, *columns)) for seq, msg_key, *columns in rows])


def run_relay(
    engine: Engine,
    config: MigrationConfig,
    *,
    until_idle: bool = False,
    stop: threading.Event | None = None,
    metrics: Metrics | None = None,
    producer_factory: Callable[[], Producer] | None = None,
    on_batch: Callable[[int], None] | None = None,
) -> RelayResult:
    """Publish the changelog until ``stop`` is set (or, with ``until_idle``, until it is empty).

    Retries with exponential backoff (capped at 30 s) while the database or the broker is
    unavailable, logging each failure; nothing is skipped. Returns after finishing the batch
    in hand. Not thread-safe; run one per process.
    """
    stop = stop or threading.Event()
    metrics = metrics or relay_metrics()
    make_producer = producer_factory or (
        lambda: Producer(
            config.kafka.bootstrap_servers, client_id=f"{config.kafka.client_id}-relay"
        )
    )
    schema = config.capture.schema
    statement = _batch_sql(schema, config.relay.batch_size)
    envelopes = _Envelopes(_registry_sql(schema))
    state_update = sql.SQL(
        "UPDATE {} SET relayed_total = relayed_total + %s, last_seq = %s, last_relayed_at = now() WHERE id = 1"
    ).format(in_schema(schema, RELAY_STATE))
    lag_sql = sql.SQL(
        "SELECT COALESCE(extract(epoch FROM clock_timestamp() - captured_at), 0) FROM {} ORDER BY seq LIMIT 1"
    ).format(in_schema(schema, CHANGELOG))

    t0 = time.monotonic()
    relayed = batches = retries = 0
    failures = 0
    conn: psycopg.Connection[Any] | None = None
    producer: Producer | None = None
    topic_ready = False
    last_lag_check = 0.0
    window_start, window_changes, window_batches = time.monotonic(), 0, 0
    try:
        while not stop.is_set():
            try:
                if not topic_ready:
                    ensure_topic(
                        config.kafka.bootstrap_servers,
                        config.changes_topic,
                        partitions=config.relay.topic_partitions,
                    )
                    topic_ready = True
                if producer is None:
                    producer = make_producer()
                if conn is None:
                    conn = _connect(engine, schema, stop)
                    if conn is None:
                        break
                    metrics.set("relay_active", 1)
                with conn.transaction():
                    batch = _fetch_batch(conn, statement, envelopes)
                    if batch is not None:
                        _publish(producer, config.changes_topic, batch)
                        conn.execute(state_update, (len(batch.rows), batch.last_seq))
                count = len(batch.rows) if batch is not None else 0
                if count:
                    relayed += count
                    batches += 1
                    window_changes += count
                    window_batches += 1
                    failures = 0
                    metrics.inc("relay_changes_total", count)
                    metrics.inc("relay_batches_total")
                    metrics.set("relay_last_batch_size", count)
                    if on_batch is not None:
                        on_batch(count)
                now = time.monotonic()
                if now - window_start >= _LOG_EVERY_S and (window_changes or not count):
                    log.info(
                        "relayed %d change(s) in %d batch(es) in the last %.0fs (%.0f/s, last batch %d); lag %.1fs",
                        window_changes,
                        window_batches,
                        now - window_start,
                        window_changes / (now - window_start),
                        int(metrics.get("relay_last_batch_size") or 0),
                        metrics.get("relay_lag_seconds"),
                    )
                    window_start, window_changes, window_batches = now, 0, 0
                if not count or now - last_lag_check > 1.0:
                    lag_row = conn.execute(lag_sql).fetchone()
                    conn.commit()
                    metrics.set("relay_lag_seconds", float(lag_row[0]) if lag_row else 0.0)
                    last_lag_check = now
                if not count:
                    if until_idle:
                        break
                    stop.wait(config.relay.idle_poll_ms / 1000)
            except (psycopg.OperationalError, psycopg.InterfaceError) as exc:
                retries += 1
                failures += 1
                metrics.inc("relay_retries_total")
                metrics.set("relay_active", 0)
                log.warning(
                    "source database unavailable (%s); retrying", redact_text(str(exc).strip())
                )
                _close(conn)
                conn = None
                _backoff(stop, failures)
            except (ServiceUnavailableError, _PublishError) as exc:
                retries += 1
                failures += 1
                metrics.inc("relay_retries_total")
                log.warning("Kafka unavailable (%s); batch rolled back, retrying", exc)
                if producer is not None and isinstance(exc, _PublishError) and not exc.retriable:
                    producer.close(timeout_s=1)
                    producer = None
                _backoff(stop, failures)
    finally:
        if producer is not None:
            producer.close()
        _close(conn)
        metrics.set("relay_active", 0)
    return RelayResult(relayed, batches, time.monotonic() - t0, retries)


class _PublishError(DualwriteError):
    def __init__(self, message: str, retriable: bool) -> None:
        super().__init__(message)
        self.retriable = retriable


def _publish(producer: Producer, topic: str, batch: _Batch) -> None:
    """Send every record, wait for all acknowledgements; raise on any failure."""
    try:
        futures = [
            producer.send(topic, key.encode(), value.encode()) for _seq, key, value in batch.rows
        ]
        producer.flush(timeout_s=60)
    except Exception as exc:
        raise _PublishError(f"send failed: {exc}", is_retriable(exc)) from None
    for future in futures:
        if not future.is_done:
            raise _PublishError("a send was not acknowledged within 60 s", True)
        if future.failed():
            failure = future.exception
            raise _PublishError(f"send failed: {failure}", is_retriable(failure))


def _batch_sql(schema: str, batch_size: int) -> sql.Composed:
    """Delete the oldest visible records; return their columns as text for :class:`_Envelopes`
    (``ts`` is ``to_json(captured_at)``, the very text ``json_build_object`` writes)."""
    changelog = in_schema(schema, CHANGELOG)
    return sql.SQL(
        """
DELETE FROM {changelog} AS c
WHERE c.seq IN (SELECT seq FROM {changelog} ORDER BY seq LIMIT {n})
RETURNING c.seq, c.msg_key, c.source_table, c.op::text, c.key::text, c.row_image::text,
    c.txid::text, pg_catalog.to_json(c.captured_at)::text, c.origin::text
"""
    ).format(changelog=changelog, n=sql.Literal(batch_size))


def _registry_sql(schema: str) -> sql.Composed:
    return sql.SQL("SELECT source_table, types::text FROM {}").format(in_schema(schema, REGISTRY))


def _connect(engine: Engine, schema: str, stop: threading.Event) -> psycopg.Connection[Any] | None:
    """A UTC session holding the relay lock for ``schema``; None if stopped while waiting.

    Its commits do not wait for the WAL flush (``synchronous_commit = off``): a batch's DELETE
    is committed only after Kafka acknowledged every record, so if a database crash undoes
    the last commits, their records come back and are published again (duplicates, never a
    gap), exactly as when the relay dies before committing. WAL order keeps the undone
    commits a suffix of the batches, so they are re-sent in seq order.
    """
    url = engine.url.set(drivername="postgresql").render_as_string(hide_password=False)
    conn = psycopg.connect(
        url,
        options="-c timezone=UTC -c synchronous_commit=off",
        application_name="dualwrite-relay",
        connect_timeout=10,
    )
    lock_key = f"dualwrite.relay:{schema}"
    warned = False
    while not stop.is_set():
        got = conn.execute("SELECT pg_try_advisory_lock(hashtext(%s))", (lock_key,)).fetchone()
        conn.commit()
        if got and got[0]:
            if warned:
                log.info("relay lock acquired; this relay is now active")
            return conn
        if not warned:
            log.warning("another relay holds the lock for capture schema %r; standing by", schema)
            warned = True
        stop.wait(2.0)
    conn.close()
    return None


def _close(conn: psycopg.Connection[Any] | None) -> None:
    if conn is not None:
        with contextlib.suppress(psycopg.Error):
            conn.close()


def _backoff(stop: threading.Event, failures: int) -> None:
    delay = min(_MAX_BACKOFF_S, 0.25 * 2 ** min(failures, 8)) * random.uniform(0.8, 1.2)  # noqa: S311
    stop.wait(delay)
