"""Dead letters: inspect the quarantine and re-drive keys after a fix.

Re-drive takes, for each quarantined key, its dead letters (from the dead-letter topic) and
its parked events (from ``dualwrite.parked``), lifts the quarantine, and processes them in
their original offset order through the same decode -> transform -> version-guarded apply as
the worker. Events already applied are skipped by the version guard; an event that fails
again is dead-lettered again and the key is quarantined again, with what is left parked.
"""

from __future__ import annotations

import base64
import datetime as dt
import json
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
    """Every quarantined key with its reason and how many events wait behind it."""
    ensure_worker_tables(engine)
    raw: Any = engine.raw_connection()
    try:
        with raw.cursor() as cur:
            cur.execute(
                "SELECT q.msg_key, q.reason, q.error, q.since, "
                "(SELECT count(*) FROM dualwrite.parked p WHERE p.msg_key = q.msg_key) "
                "FROM dualwrite.quarantine q ORDER BY q.since, q.msg_key"
            )
            return [QuarantinedKey(*row) for row in cur.fetchall()]
    finally:
        raw.close()


def dead_letters(
    config: MigrationConfig, key: str | None = None, idle_timeout_ms: int = 1500
) -> list[DeadLetter]:
    """The records on the dead-letter topic (all, or those of one message key)."""
    out: list[DeadLetter] = []
    try:
        records = list(
            read_topic(
                config.kafka.bootstrap_servers,
                dead_letter_topic(config),
                idle_timeout_ms=idle_timeout_ms,
            )
        )
    except Exception:  # the topic is created by the first worker; none means no dead letters
        return []
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


def redrive(
    engine: Engine, config: MigrationConfig, transforms: Transforms, keys: list[str] | None = None
) -> RedriveResult:
    """Re-process the dead letters and parked events of ``keys`` (default: every quarantined key)."""
    targets = [q.msg_key for q in quarantined(engine)]
    if keys is not None:
        targets = [k for k in targets if k in set(keys)]
    letters = dead_letters(config)
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
            messages: dict[tuple[int, int], Message] = {}
            for letter in letters:
                if letter.key == key:
                    messages[(letter.partition, letter.offset)] = Message(
                        letter.topic, letter.partition, letter.offset, key.encode(), letter.value, 0
                    )
            for topic, partition, offset, value in conn.execute(
                'SELECT topic, partition, "offset", value FROM dualwrite.parked WHERE msg_key = %s',
                (key,),
            ).fetchall():
                messages[(partition, offset)] = Message(
                    topic, partition, offset, key.encode(), bytes(value), 0
                )
            with conn.transaction():
                conn.execute("DELETE FROM dualwrite.quarantine WHERE msg_key = %s", (key,))
                conn.execute("DELETE FROM dualwrite.parked WHERE msg_key = %s", (key,))
            ordered = [messages[k] for k in sorted(messages)]
            outcome = process_messages(applier, conn, config, transforms, ordered, WorkerSettings())
            _publish_dead_letters(producer, config, outcome.poison)
            replayed += len(ordered)
            applied += outcome.applied
            if outcome.poison:
                still.append(key)
    finally:
        producer.close()
        conn.close()
    return RedriveResult(tuple(targets), replayed, applied, tuple(still))
