"""An end-to-end smoke run: a row goes source -> Kafka -> target and is read back."""

from __future__ import annotations

import json
import time
import uuid
from dataclasses import dataclass

from sqlalchemy import Engine, text

from dualwrite.config import KafkaConfig
from dualwrite.errors import DualwriteError
from dualwrite.kafka_io import Consumer, Producer, ensure_topic

_SCHEMA = "dualwrite_smoke"


@dataclass(frozen=True)
class SmokeResult:
    """Each step of the smoke run with its duration in milliseconds."""

    steps: tuple[tuple[str, float], ...]
    topic: str


def smoke(
    source: Engine, target: Engine, kafka: KafkaConfig, timeout_s: float = 30.0
) -> SmokeResult:
    """Write a row to the source, carry it through a Kafka topic, write it to the target.

    Raises :class:`DualwriteError` naming the step that failed. Leaves no tables behind; the
    topic ``<prefix>.smoke`` is kept (topics are cheap and may be inspected).
    """
    steps: list[tuple[str, float]] = []
    token = str(uuid.uuid4())
    topic = f"{kafka.topic_prefix}.smoke"

    def step(name: str, t0: float) -> None:
        steps.append((name, (time.perf_counter() - t0) * 1000))

    ddl = (
        f"CREATE SCHEMA IF NOT EXISTS {_SCHEMA}; "
        f"CREATE TABLE IF NOT EXISTS {_SCHEMA}.ping (id uuid PRIMARY KEY, note text, at timestamptz)"
    )
    t0 = time.perf_counter()
    with source.begin() as conn:
        conn.execute(text(ddl))
        row = conn.execute(
            text(f"INSERT INTO {_SCHEMA}.ping VALUES (:id, 'hello', now()) RETURNING id, note, at"),
            {"id": token},
        ).one()
    step("write source", t0)

    t0 = time.perf_counter()
    ensure_topic(kafka.bootstrap_servers, topic)
    producer = Producer(kafka.bootstrap_servers, client_id=f"{kafka.client_id}-smoke")
    payload = {"id": str(row.id), "note": row.note, "at": row.at.isoformat()}
    try:
        producer.send(topic, token.encode(), json.dumps(payload).encode()).get(timeout_s)
    finally:
        producer.close()
    step("produce (acks=all, idempotent)", t0)

    t0 = time.perf_counter()
    consumer = Consumer(kafka.bootstrap_servers, f"{kafka.topic_prefix}.smoke.{token}", [topic])
    received: dict[str, str] | None = None
    try:
        deadline = time.monotonic() + timeout_s
        while received is None and time.monotonic() < deadline:
            for message in consumer.poll(timeout_ms=500):
                if message.key == token.encode() and message.value is not None:
                    received = json.loads(message.value)
        if received is None:
            raise DualwriteError(
                f"the smoke message did not come back from topic {topic} in {timeout_s}s"
            )
        consumer.commit()
    finally:
        consumer.close()
    step("consume and commit offset", t0)

    t0 = time.perf_counter()
    with target.begin() as conn:
        conn.execute(text(ddl))
        conn.execute(
            text(
                f"INSERT INTO {_SCHEMA}.ping VALUES (CAST(:id AS uuid), :note, CAST(:at AS timestamptz))"
            ),
            received,
        )
        back = conn.execute(
            text(f"SELECT id, note, at FROM {_SCHEMA}.ping WHERE id = :id"), {"id": token}
        ).one()
    if (back.id, back.note, back.at) != (row.id, row.note, row.at):
        raise DualwriteError(f"the row read back from the target differs: {back} != {row}")
    step("write and read back target", t0)

    for engine in (source, target):
        with engine.begin() as conn:
            conn.execute(text(f"DROP SCHEMA IF EXISTS {_SCHEMA} CASCADE"))
    return SmokeResult(tuple(steps), topic)
