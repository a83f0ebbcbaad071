"""Dead letters: inspect the quarantine and re-drive keys after a fix.

Re-drive takes, for each quarantined key, its dead letters (from the dead-letter topic) and
its parked events (from ``dualwrite.parked``), lifts the quarantine, and processes them in
their original offset order through the same decode -> transform -> version-guarded apply as
the worker. Events already applied are skipped by the version guard; an event that fails
again is dead-lettered again and the key is quarantined again, with what is left parked.

A parked event's only copy is its ``dualwrite.parked`` row (its Kafka offset was committed),
so that row is deleted only after the event was applied, and kept when the event fails again
or is parked again. A re-drive that dies half-way leaves parked rows without a quarantine
row: the next re-drive picks those keys up too.

The target's quarantine is shared by every migration writing to that database: a migration
only sees and re-drives its own keys (those of its source tables, and any key on its own
dead-letter topic, undecodable ones included).
"""

from __future__ import annotations

import base64
import datetime as dt
import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import psycopg
from sqlalchemy import Engine

from dualwrite.apply import Applier
from dualwrite.config import MigrationConfig
from dualwrite.kafka_io import Message, Producer, read_topic
from dualwrite.transform import Transforms
from dualwrite.worker import (
    WorkerSettings,
    _publish_dead_letters,
    dead_letter_topic,
    ensure_worker_tables,
    process_messages,
)

__all__ = [
    "DeadLetter",
    "QuarantinedKey",
    "RedriveResult",
    "dead_letters",
    "migration_keys",
    "migration_quarantine",
    "quarantined",
    "redrive",
]


@dataclass(frozen=True)
class QuarantinedKey:
    msg_key: str
    reason: str
    error: str
    since: dt.datetime
    parked: int


@dataclass(frozen=True)
class DeadLetter:
    key: str
    reason: str
    error: str
    worker_version: str
    topic: str
    partition: int
    offset: int
    failed_at: str
    value: bytes


@dataclass(frozen=True)
class RedriveResult:
    keys: tuple[str, ...]
    replayed: int
    applied: int
    still_quarantined: tuple[str, ...]


def quarantined(engine: Engine) -> list[QuarantinedKey]:
    """Every quarantined key with its reason and how many events wait behind it.

    Keys with parked events but no quarantine row (a re-drive that died half-way) are listed
    too, with reason ``redrive_interrupted``: their events are not applied yet.
    """
    ensure_worker_tables(engine)
    raw: Any = engine.raw_connection()
    try:
        with raw.cursor() as cur:
            cur.execute(
                "SELECT q.msg_key, q.reason, q.error, q.since, "
                "(SELECT count(*) FROM dualwrite.parked p WHERE p.msg_key = q.msg_key) "
                "FROM dualwrite.quarantine q "
                "UNION ALL "
                "SELECT p.msg_key, 'redrive_interrupted', "
                "'parked events without a quarantine: run dlq redrive', min(p.parked_at), count(*) "
                "FROM dualwrite.parked p WHERE NOT EXISTS "
                "(SELECT 1 FROM dualwrite.quarantine q WHERE q.msg_key = p.msg_key) "
                "GROUP BY p.msg_key "
                "ORDER BY 4, 1"
            )
            return [QuarantinedKey(*row) for row in cur.fetchall()]
    finally:
        raw.close()


def dead_letters(
    config: MigrationConfig, key: str | None = None, idle_timeout_ms: int = 1500
) -> list[DeadLetter]:
    """The records on the dead-letter topic (all, or those of one message key).

    No topic means no dead letters yet (the first worker creates it); Kafka not answering
    raises :class:`~dualwrite.errors.ServiceUnavailableError`, never "none".
    """
    out: list[DeadLetter] = []
    records = list(
        read_topic(
            config.kafka.bootstrap_servers,
            dead_letter_topic(config),
            idle_timeout_ms=idle_timeout_ms,
            missing_ok=True,
        )
    )
    for message in records:
        doc = json.loads(message.value or b"{}")
        if key is not None and doc.get("key") != key:
            continue
        out.append(
            DeadLetter(
                key=doc["key"],
                reason=doc["reason"],
                error=doc["error"],
                worker_version=doc.get("worker_version", "?"),
                topic=doc["topic"],
                partition=int(doc["partition"]),
                offset=int(doc["offset"]),
                failed_at=doc.get("failed_at", ""),
                value=base64.b64decode(doc["value_b64"]),
            )
        )
    return out


def migration_keys(config: MigrationConfig, letters: Sequence[DeadLetter]) -> Callable[[str], bool]:
    """Whether a quarantined message key is this migration's: one of its source tables, or a
    key on its own dead-letter topic (an undecodable key, an unknown table)."""
    prefixes = tuple(f"{t.source}:" for t in config.tables)
    lettered = frozenset(d.key for d in letters)
    return lambda key: key.startswith(prefixes) or key in lettered


def migration_quarantine(
    engine: Engine, config: MigrationConfig, letters: Sequence[DeadLetter] | None = None
) -> list[QuarantinedKey]:
    """The quarantined keys of this migration (see :func:`migration_keys`)."""
    mine = migration_keys(config, dead_letters(config) if letters is None else letters)
    return [q for q in quarantined(engine) if mine(q.msg_key)]


def redrive(
    engine: Engine, config: MigrationConfig, transforms: Transforms, keys: list[str] | None = None
) -> RedriveResult:
    """Re-process the dead letters and parked events of ``keys`` (default: every quarantined
    key of this migration, and keys a previous re-drive left parked)."""
    letters = dead_letters(config)
    targets = [q.msg_key for q in migration_quarantine(engine, config, letters)]
    if keys is not None:
        targets = [k for k in targets if k in set(keys)]
    url = engine.url.set(drivername="postgresql").render_as_string(hide_password=False)
    conn: psycopg.Connection[Any] = psycopg.connect(url, options="-c timezone=UTC")
    applier = Applier(conn, transforms)
    producer = Producer(
        config.kafka.bootstrap_servers, client_id=f"{config.kafka.client_id}-redrive"
    )
    replayed = applied = 0
    still: list[str] = []
    try:
        for key in targets:
            messages: dict[tuple[str, int, int], Message] = {}
            for letter in letters:
                if letter.key == key:
                    messages[(letter.topic, letter.partition, letter.offset)] = Message(
                        letter.topic, letter.partition, letter.offset, key.encode(), letter.value, 0
                    )
            for topic, partition, offset, value in conn.execute(
                'SELECT topic, partition, "offset", value FROM dualwrite.parked WHERE msg_key = %s',
                (key,),
            ).fetchall():
                messages[(topic, partition, offset)] = Message(
                    topic, partition, offset, key.encode(), bytes(value), 0
                )
            conn.execute("DELETE FROM dualwrite.quarantine WHERE msg_key = %s", (key,))
            conn.commit()
            ordered = [messages[k] for k in sorted(messages, key=lambda k: (k[1], k[2], k[0]))]
            outcome = process_messages(applier, conn, config, transforms, ordered, WorkerSettings())
            kept = {(m.topic, m.partition, m.offset) for m in outcome.parked} | {
                (p.message.topic, p.message.partition, p.message.offset) for p in outcome.poison
            }
            done = [
                (m.topic, m.partition, m.offset)
                for m in ordered
                if (m.topic, m.partition, m.offset) not in kept
            ]
            conn.execute(
                'DELETE FROM dualwrite.parked WHERE msg_key = %s AND (topic, partition, "offset") '
                "IN (SELECT * FROM unnest(%s::text[], %s::int[], %s::bigint[]))",
                (key, [d[0] for d in done], [d[1] for d in done], [d[2] for d in done]),
            )
            conn.commit()
            _publish_dead_letters(producer, config, outcome.poison)
            replayed += len(ordered)
            applied += outcome.applied
            if outcome.poison:
                still.append(key)
    finally:
        producer.close()
        conn.close()
    return RedriveResult(tuple(targets), replayed, applied, tuple(still))
