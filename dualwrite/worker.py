"""The consumer worker: Kafka change events -> transforms -> idempotent apply on the target.

One worker is one consumer-group member; scale by running more processes. Per batch:

1. poll up to ``batch_size`` events (or until ``linger_ms`` passes);
2. decode and transform each in offset order. Poison (undecodable, unknown table, failing
   transform) goes to the dead-letter topic and its key is quarantined; events of a
   quarantined key (decided when the batch is applied) are parked on the target
   (``dualwrite.parked``) instead of being applied out of order, until ``dualwrite dlq
   redrive``;
3. apply the rest in one target transaction (:class:`dualwrite.apply.Applier`); if the target
   rejects the batch, events are applied one by one and those that still fail are dead-
   lettered (after bounded retries) and quarantined the same way;
4. publish dead letters and wait for their acknowledgement;
5. only then commit the Kafka offsets (invariant 5).

A crash anywhere redelivers the batch; the version guard makes the replay a no-op.

Steps 1-2 of batch N+1 run on the calling thread while step 3 of batch N runs on an apply
thread (which owns the target connection); steps 4-5 of N follow N's commit on the calling
thread, which alone uses the Kafka consumer.
"""

from __future__ import annotations

import base64
import contextlib
import datetime as dt
import json
import logging
import random
import threading
import time
from collections import defaultdict
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any, NamedTuple

import psycopg
from sqlalchemy import Engine

from dualwrite import __version__
from dualwrite.apply import Applier, ApplyError, ensure_bookkeeping
from dualwrite.config import MigrationConfig
from dualwrite.envelope import ChangeEvent, EnvelopeError, decode_event
from dualwrite.errors import ServiceUnavailableError
from dualwrite.gc_tuning import steady_state_gc
from dualwrite.kafka_io import (
    Consumer,
    Message,
    Producer,
    ensure_topic,
    group_lag,
    group_state,
)
from dualwrite.metrics import Metrics
from dualwrite.redaction import redact_text
from dualwrite.transform import TargetOp, TransformError, Transforms

__all__ = ["WorkerResult", "WorkerSettings", "dead_letter_topic", "run_worker", "worker_metrics"]

log = logging.getLogger(__name__)

QUARANTINE_DDL = """
CREATE TABLE IF NOT EXISTS dualwrite.quarantine (
    msg_key    text PRIMARY KEY,
    reason     text NOT NULL,
    error      text NOT NULL,
    since      timestamptz NOT NULL DEFAULT now()
);
CREATE TABLE IF NOT EXISTS dualwrite.parked (
    msg_key    text   NOT NULL,
    topic      text   NOT NULL,
    partition  int    NOT NULL,
    "offset"   bigint NOT NULL,
    value      bytea,
    parked_at  timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (topic, partition, "offset")
);
CREATE INDEX IF NOT EXISTS parked_by_key ON dualwrite.parked (msg_key, partition, "offset");
"""


def dead_letter_topic(config: MigrationConfig) -> str:
    return f"{config.kafka.topic_prefix}.dlq"


def consumer_group(config: MigrationConfig) -> str:
    return f"{config.kafka.topic_prefix}.worker"


@dataclass(frozen=True)
class WorkerSettings:
    batch_size: int = 5000
    linger_ms: int = 100
    idle_s: float = 2.0  # with until_idle: exit after this long with nothing left to read
    max_apply_attempts: int = 3
    # with nothing polled for this long, check that the consumer is still in its group
    rejoin_after_s: float = 60.0
    # while running: objects from start-up frozen out of the cyclic GC, and a young-generation
    # collection every this many allocations instead of 700 (0: leave the GC alone)
    gc_gen0_threshold: int = 20_000


@dataclass(frozen=True)
class WorkerResult:
    consumed: int
    applied: int
    dead_lettered: int
    parked: int
    batches: int
    elapsed_s: float


@dataclass
class _Poison:
    message: Message
    reason: str
    error: str


@dataclass
class _Batch:
    messages: list[Message]
    good: list[tuple[Message, ChangeEvent, list[TargetOp]]] = field(default_factory=list)
    poison: list[_Poison] = field(default_factory=list)
    parked: list[Message] = field(default_factory=list)


def worker_metrics() -> Metrics:
    m = Metrics()
    m.counter("worker_events_total", "Change events consumed.")
    m.counter("worker_applied_total", "Target row operations written.")
    m.counter("worker_dead_letters_total", "Events sent to the dead-letter topic.")
    m.counter("worker_parked_total", "Events parked behind a quarantined key.")
    m.counter("worker_batches_total", "Batches committed.")
    m.counter("worker_retries_total", "Retries while the target database or Kafka was unavailable.")
    m.gauge(
        "worker_end_to_end_lag_seconds",
        "Now minus the source timestamp of the last applied change.",
    )
    return m


def ensure_worker_tables(engine: Engine) -> None:
    ensure_bookkeeping(engine)
    raw: Any = engine.raw_connection()
    try:
        with raw.cursor() as cur:
            cur.execute("SELECT pg_advisory_xact_lock(hashtext('dualwrite.bookkeeping'))")
            cur.execute(QUARANTINE_DDL)
        raw.commit()
    finally:
        raw.close()


def run_worker(
    engine: Engine,
    config: MigrationConfig,
    transforms: Transforms,
    *,
    settings: WorkerSettings | None = None,
    until_idle: bool = False,
    stop: threading.Event | None = None,
    metrics: Metrics | None = None,
    on_batch: Callable[[int], None] | None = None,
) -> WorkerResult:
    """Consume, transform and apply until ``stop`` (or, with ``until_idle``, until caught up).

    The database or broker being unavailable is retried with backoff; the batch in hand is
    kept and re-applied, and offsets are committed only after the target commit.
    """
    settings = settings or WorkerSettings()
    stop = stop or threading.Event()
    metrics = metrics or worker_metrics()
    ensure_worker_tables(engine)
    servers = config.kafka.bootstrap_servers
    ensure_topic(servers, config.changes_topic, partitions=config.relay.topic_partitions)
    ensure_topic(servers, dead_letter_topic(config), partitions=1)

    def new_consumer() -> Consumer:
        return Consumer(
            servers,
            consumer_group(config),
            [config.changes_topic],
            client_id=f"{config.kafka.client_id}-worker",
            max_poll_records=settings.batch_size,
        )

    consumer = new_consumer()
    quiet_since: float | None = None
    producer = Producer(servers, client_id=f"{config.kafka.client_id}-worker-dlq")
    target = _Target(engine, transforms, stop, metrics)
    executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="dualwrite-apply")
    t0 = time.monotonic()
    totals = _Totals()
    idle_since: float | None = None
    last_log = time.monotonic()
    pending: tuple[list[Message], Future[_Outcome]] | None = None

    def complete(messages: list[Message], applying: Future[_Outcome]) -> None:
        """The batch's target commit, then its dead letters, then its offsets (in that order)."""
        result = applying.result()
        _publish_and_commit(consumer, producer, config, stop, metrics, messages, result)
        totals.add(len(messages), result, metrics)
        if on_batch is not None:
            on_batch(len(messages))

    with steady_state_gc(settings.gc_gen0_threshold):
        try:
            while not stop.is_set():
                messages = _poll(consumer, settings, stop)
                # Decoded and transformed here while the previous batch is applied on the apply
                # thread (its database round trips release the GIL).
                prepared = _prepare(transforms, messages) if messages else []
                if pending is not None:
                    complete(*pending)
                    pending = None
                if messages:
                    idle_since = None
                    pending = (
                        messages,
                        executor.submit(target.process, config, messages, settings, prepared),
                    )
                elif until_idle:
                    idle_since = idle_since or time.monotonic()
                    if time.monotonic() - idle_since >= settings.idle_s and _group_caught_up(
                        config, metrics
                    ):
                        break
                # not trusting the consumer's own view of its assignment: the broker's counts
                if messages:
                    quiet_since = None
                elif quiet_since is None:
                    quiet_since = time.monotonic()
                elif time.monotonic() - quiet_since >= settings.rejoin_after_s:
                    quiet_since = None
                    if _left_alone(config, metrics):
                        consumer.close()
                        consumer = new_consumer()
                if time.monotonic() - last_log >= 10.0:
                    totals.log(metrics)
                    last_log = time.monotonic()
            if pending is not None:
                complete(*pending)
                pending = None
        except _StoppedUncommitted as exc:
            log.warning(
                "stopped with a batch whose offsets are not committed (%s); "
                "it is redelivered and replayed without effect",
                exc,
            )
        finally:
            # a batch still being applied is not committed: redelivered
            executor.shutdown(wait=True)
            consumer.close()
            producer.close()
            target.close()
    return WorkerResult(
        totals.consumed,
        totals.applied,
        totals.dead,
        totals.parked,
        totals.batches,
        time.monotonic() - t0,
    )


class _Target:
    """The target connection and its Applier, used by the apply thread only.

    A batch that fails because the database is unavailable is retried with backoff on a new
    connection, as often as it takes (until ``stop``); nothing is committed to Kafka meanwhile.
    """

    def __init__(
        self, engine: Engine, transforms: Transforms, stop: threading.Event, metrics: Metrics
    ) -> None:
        self.engine = engine
        self.transforms = transforms
        self.stop = stop
        self.metrics = metrics
        self.conn = _connect(engine)
        self.applier = Applier(self.conn, transforms)

    def process(
        self,
        config: MigrationConfig,
        messages: list[Message],
        settings: WorkerSettings,
        prepared: list[_Prepared],
    ) -> _Outcome:
        failures = 0
        while True:
            try:
                return _process(
                    self.applier, self.conn, config, self.transforms, messages, settings, prepared
                )
            except (psycopg.OperationalError, psycopg.InterfaceError) as exc:
                if self.stop.is_set():
                    raise _StoppedUncommitted(
                        f"target database unavailable: {redact_text(str(exc).strip())}"
                    ) from None
                failures += 1
                self.metrics.inc("worker_retries_total")
                log.warning(
                    "target database unavailable (%s); retrying the batch",
                    redact_text(str(exc).strip()),
                )
                _sleep(self.stop, failures)
                self.conn = _reconnect(self.engine, self.conn)
                self.applier = Applier(self.conn, self.transforms)

    def close(self) -> None:
        self.conn.close()


@dataclass
class _Totals:
    consumed: int = 0
    applied: int = 0
    dead: int = 0
    parked: int = 0
    batches: int = 0

    def add(self, events: int, result: _Outcome, metrics: Metrics) -> None:
        self.consumed += events
        self.applied += result.applied
        self.dead += len(result.poison)
        self.parked += len(result.parked)
        self.batches += 1
        metrics.inc("worker_events_total", events)
        metrics.inc("worker_applied_total", result.applied)
        metrics.inc("worker_dead_letters_total", len(result.poison))
        metrics.inc("worker_parked_total", len(result.parked))
        metrics.inc("worker_batches_total")
        if result.last_ts is not None:
            metrics.set(
                "worker_end_to_end_lag_seconds",
                (dt.datetime.now(dt.UTC) - result.last_ts).total_seconds(),
            )

    def log(self, metrics: Metrics) -> None:
        log.info(
            "consumed %d event(s), applied %d, dead-lettered %d, parked %d; end-to-end lag %.1fs",
            self.consumed,
            self.applied,
            self.dead,
            self.parked,
            metrics.get("worker_end_to_end_lag_seconds"),
        )


def _publish_and_commit(
    consumer: Consumer,
    producer: Producer,
    config: MigrationConfig,
    stop: threading.Event,
    metrics: Metrics,
    messages: list[Message],
    result: _Outcome,
) -> None:
    """Dead letters first (acknowledged), then the offsets: both retried while unavailable.

    Never gives up while running: committing the offsets without the dead letters would lose
    them. A stop requested meanwhile raises :class:`_StoppedUncommitted`; the batch's target
    writes are committed but its offsets are not, so the batch is redelivered and replayed
    (a no-op through the version guard; its poison events find their keys quarantined).
    """
    attempt = 0
    while True:
        try:
            _publish_dead_letters(producer, config, result.poison)
            break
        except ServiceUnavailableError as exc:
            attempt = _retry_or_stop(stop, metrics, attempt, f"cannot publish dead letters ({exc})")
    attempt = 0
    while True:
        try:
            if not consumer.commit(_next_offsets(messages)):
                log.warning(
                    "the group rebalanced during the batch; its new owner re-reads it (no effect)"
                )
            return
        except ServiceUnavailableError as exc:
            attempt = _retry_or_stop(stop, metrics, attempt, str(exc))


class _StoppedUncommitted(Exception):
    """Stop was requested while Kafka refused a batch's dead letters or offsets."""


def _retry_or_stop(stop: threading.Event, metrics: Metrics, attempt: int, reason: str) -> int:
    if stop.is_set():
        raise _StoppedUncommitted(reason)
    attempt += 1
    metrics.inc("worker_retries_total")
    log.warning("%s; retrying (attempt %d)", reason, attempt)
    _sleep(stop, attempt)
    return attempt


@dataclass(frozen=True)
class _Outcome:
    applied: int
    poison: list[_Poison]
    parked: list[Message]
    last_ts: dt.datetime | None


def _group_caught_up(config: MigrationConfig, metrics: Metrics) -> bool:
    """Every partition of the topic, not only this member's, has its committed offset at the
    log end: a member that is gone but not yet evicted may still hold partitions.

    Kafka not answering means "not known to be caught up": logged, and asked again later.
    """
    try:
        offsets = group_lag(
            config.kafka.bootstrap_servers, consumer_group(config), config.changes_topic
        )
    except ServiceUnavailableError as exc:
        metrics.inc("worker_retries_total")
        log.warning("cannot tell whether the group caught up (%s); still waiting", exc)
        return False
    return bool(offsets) and all(
        end == 0 or (committed is not None and committed >= end)
        for end, committed in offsets.values()
    )


def _left_alone(config: MigrationConfig, metrics: Metrics) -> bool:
    """True when the group has no member at all although this consumer is subscribed to it:
    kafka-python (3.0.12) can drop out of its group under load and not rejoin, polling
    nothing from then on (its own view may still list partitions). The caller then replaces
    the consumer, which joins afresh."""
    group = consumer_group(config)
    try:
        state = group_state(config.kafka.bootstrap_servers, group)
    except ServiceUnavailableError as exc:
        log.warning("cannot check membership of group %s (%s)", group, exc)
        return False
    if not state.abandoned:
        return False
    metrics.inc("worker_rejoins_total")
    log.warning(
        "this worker polled nothing for a while and group %s is empty on the broker: "
        "the consumer fell out of its group; joining again with a new consumer",
        group,
    )
    return True


def _poll(consumer: Consumer, settings: WorkerSettings, stop: threading.Event) -> list[Message]:
    deadline = time.monotonic() + settings.linger_ms / 1000
    batch: list[Message] = []
    while len(batch) < settings.batch_size and not stop.is_set():
        remaining = max(0, int((deadline - time.monotonic()) * 1000))
        got = consumer.poll(
            timeout_ms=remaining if batch else max(remaining, 200),
            max_records=settings.batch_size - len(batch),
        )
        batch.extend(got)
        if time.monotonic() >= deadline or (not got and batch):
            break
        if not got and not batch:
            break
    return batch


def process_messages(
    applier: Applier,
    conn: psycopg.Connection[Any],
    config: MigrationConfig,
    transforms: Transforms,
    messages: list[Message],
    settings: WorkerSettings | None = None,
) -> _Outcome:
    """Decode, transform and apply one batch (exposed for re-drive and tests)."""
    return _process(applier, conn, config, transforms, messages, settings or WorkerSettings())


class _Prepared(NamedTuple):
    """One message decoded and transformed (``poison`` set when that failed); a named tuple,
    built once per event at a third of a frozen dataclass's cost."""

    message: Message
    key: str
    event: ChangeEvent | None
    ops: list[TargetOp]
    poison: _Poison | None


def _prepare(transforms: Transforms, messages: list[Message]) -> list[_Prepared]:
    """Decode and transform each message (pure: no database, no Kafka)."""
    out: list[_Prepared] = []
    for message in messages:
        key = (message.key or b"").decode("utf-8", "replace")
        try:
            event = decode_event(message.value or b"")
            ops = transforms.apply(event.source, event.op, event.key, event.row, event.version)
        except EnvelopeError as exc:
            out.append(_Prepared(message, key, None, [], _Poison(message, "undecodable", str(exc))))
            continue
        except TransformError as exc:
            reason = (
                "unknown_table"
                if str(exc).startswith("no transform for source table")
                else "transform_error"
            )
            out.append(_Prepared(message, key, None, [], _Poison(message, reason, str(exc))))
            continue
        out.append(_Prepared(message, key, event, ops, None))
    return out


def _process(
    applier: Applier,
    conn: psycopg.Connection[Any],
    config: MigrationConfig,
    transforms: Transforms,
    messages: list[Message],
    settings: WorkerSettings,
    prepared: list[_Prepared] | None = None,
) -> _Outcome:
    """Apply one batch: events of quarantined keys, and every event of a key after its first
    poison in offset order, are parked; the rest is applied in one target transaction."""
    if prepared is None:
        prepared = _prepare(transforms, messages)
    quarantined = _quarantined(conn, prepared)
    batch = _Batch(messages)
    blocked = set(quarantined)
    for p in prepared:
        if p.key in blocked:
            batch.parked.append(p.message)
        elif p.poison is not None:
            batch.poison.append(p.poison)
            blocked.add(p.key)
        else:
            assert p.event is not None
            batch.good.append((p.message, p.event, p.ops))
    applied = 0
    try:
        applied = _apply_all(applier, batch.good, extra=lambda: _record_quarantine(conn, batch))
    except ApplyError:
        applied = _apply_one_by_one(applier, conn, batch, settings)
    last_ts = max((e.ts for _m, e, _o in batch.good), default=None)
    return _Outcome(applied, batch.poison, batch.parked, last_ts)


_QUARANTINE_READ_WHOLE = 1000


def _quarantined(conn: psycopg.Connection[Any], prepared: list[_Prepared]) -> set[str]:
    """The batch's quarantined keys. Few keys are quarantined at any time, so the table is
    read whole while it is small rather than sending every key of the batch to the server."""
    rows = conn.execute(
        "SELECT msg_key FROM dualwrite.quarantine LIMIT %s", (_QUARANTINE_READ_WHOLE + 1,)
    ).fetchall()
    if len(rows) > _QUARANTINE_READ_WHOLE:
        keys = sorted({p.key for p in prepared})
        rows = conn.execute(
            "SELECT msg_key FROM dualwrite.quarantine WHERE msg_key = ANY(%s)", (keys,)
        ).fetchall()
    conn.commit()
    return {r[0] for r in rows}


def _positions(events: list[ChangeEvent]) -> dict[str, tuple[int, dt.datetime | None]]:
    out: dict[str, tuple[int, dt.datetime | None]] = {}
    for e in events:
        current = out.get(e.source)
        if current is None or e.version > current[0]:
            out[e.source] = (e.version, e.ts)
    return out


def _apply_all(
    applier: Applier,
    good: list[tuple[Message, ChangeEvent, list[TargetOp]]],
    extra: Callable[[], None],
) -> int:
    ops = [op for _m, _e, event_ops in good for op in event_ops]
    with applier.conn.transaction():
        result = applier.apply(ops, _positions([e for _m, e, _o in good]))
        extra()
    return result.applied


def _apply_one_by_one(
    applier: Applier, conn: psycopg.Connection[Any], batch: _Batch, settings: WorkerSettings
) -> int:
    applied = 0
    blocked: set[tuple[int, bytes]] = set()
    remaining: list[tuple[Message, ChangeEvent, list[TargetOp]]] = []
    for message, event, ops in batch.good:
        ident = (message.partition, message.key or b"")
        if ident in blocked:
            batch.parked.append(message)
            continue
        error: str | None = None
        for _attempt in range(settings.max_apply_attempts):
            try:
                applied += applier.apply(ops, _positions([event])).applied
                error = None
                break
            except ApplyError as exc:
                error = str(exc)
        if error is not None:
            batch.poison.append(_Poison(message, "target_error", error))
            blocked.add(ident)
        else:
            remaining.append((message, event, ops))
    batch.good = remaining
    with conn.transaction():
        _record_quarantine(conn, batch)
    return applied


def _record_quarantine(conn: psycopg.Connection[Any], batch: _Batch) -> None:
    for p in batch.poison:
        conn.execute(
            "INSERT INTO dualwrite.quarantine (msg_key, reason, error) VALUES (%s, %s, %s) ON CONFLICT (msg_key) DO NOTHING",
            ((p.message.key or b"").decode("utf-8", "replace"), p.reason, p.error[:4000]),
        )
    for m in batch.parked:
        conn.execute(
            'INSERT INTO dualwrite.parked (msg_key, topic, partition, "offset", value) VALUES (%s, %s, %s, %s, %s) '
            "ON CONFLICT DO NOTHING",
            ((m.key or b"").decode("utf-8", "replace"), m.topic, m.partition, m.offset, m.value),
        )


def _publish_dead_letters(
    producer: Producer, config: MigrationConfig, poison: list[_Poison]
) -> None:
    if not poison:
        return
    topic = dead_letter_topic(config)
    futures = []
    for p in poison:
        record = {
            "schema_version": 1,
            "reason": p.reason,
            "error": p.error,
            "worker_version": __version__,
            "topic": p.message.topic,
            "partition": p.message.partition,
            "offset": p.message.offset,
            "key": (p.message.key or b"").decode("utf-8", "replace"),
            "value_b64": base64.b64encode(p.message.value or b"").decode(),
            "failed_at": dt.datetime.now(dt.UTC).isoformat(),
        }
        futures.append(producer.send(topic, p.message.key, json.dumps(record).encode()))
        log.warning(
            "dead-lettered %s@%d (%s): %s", p.message.key, p.message.offset, p.reason, p.error[:200]
        )
    try:
        producer.flush(timeout_s=60)
        for f in futures:
            f.get(0)
    except Exception as exc:
        raise ServiceUnavailableError(f"dead-letter publish failed: {exc}") from None


def _next_offsets(messages: list[Message]) -> dict[tuple[str, int], int]:
    out: dict[tuple[str, int], int] = defaultdict(int)
    for m in messages:
        out[(m.topic, m.partition)] = max(out[(m.topic, m.partition)], m.offset + 1)
    return dict(out)


def _connect(engine: Engine) -> psycopg.Connection[Any]:
    url = engine.url.set(drivername="postgresql").render_as_string(hide_password=False)
    return psycopg.connect(
        url, options="-c timezone=UTC", application_name="dualwrite-worker", connect_timeout=10
    )


def _reconnect(engine: Engine, conn: psycopg.Connection[Any]) -> psycopg.Connection[Any]:
    with contextlib.suppress(psycopg.Error):
        conn.close()
    try:
        return _connect(engine)
    except psycopg.OperationalError:
        return conn  # still down: the next attempt fails fast and backs off again


def _sleep(stop: threading.Event, failures: int) -> None:
    stop.wait(min(30.0, 0.25 * 2 ** min(failures, 8)) * random.uniform(0.8, 1.2))  # noqa: S311
