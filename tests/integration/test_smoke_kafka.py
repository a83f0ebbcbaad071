"""The real broker: idempotent produce, consume in a group, committed offsets survive."""

from __future__ import annotations

import pytest

from dualwrite.kafka_io import Consumer, Producer, ensure_topic, probe_cluster
from tests.conftest import Services

pytestmark = pytest.mark.integration


def _drain(consumer: Consumer, want: int, rounds: int = 40) -> list[bytes]:
    got: list[bytes] = []
    for _ in range(rounds):
        got.extend(m.value or b"" for m in consumer.poll(timeout_ms=500))
        if len(got) >= want:
            break
    return got


def test_metadata_round_trip(services: Services) -> None:
    info = probe_cluster([services.kafka_bootstrap])
    assert info.cluster_id
    assert len(info.brokers) >= 1


def test_produce_then_consume_in_a_group_and_resume_from_committed_offset(
    services: Services, topic: str
) -> None:
    servers = [services.kafka_bootstrap]
    assert ensure_topic(servers, topic, partitions=2) is True
    assert ensure_topic(servers, topic, partitions=2) is False

    producer = Producer(servers)
    futures = [producer.send(topic, f"k{i % 5}".encode(), f"v{i}".encode()) for i in range(100)]
    producer.flush()
    offsets = [f.get(10) for f in futures]
    producer.close()
    # one key always lands on one partition
    by_key: dict[bytes, set[int]] = {}
    for i, meta in enumerate(offsets):
        by_key.setdefault(f"k{i % 5}".encode(), set()).add(meta.partition)
    assert all(len(parts) == 1 for parts in by_key.values())

    group = f"{topic}.group"
    first = Consumer(servers, group, [topic])
    seen = _drain(first, 100)
    assert sorted(seen) == sorted(f"v{i}".encode() for i in range(100))
    first.commit()
    first.close()

    producer = Producer(servers)
    producer.send(topic, b"k0", b"after-commit").get(10)
    producer.close()

    second = Consumer(servers, group, [topic])
    resumed = _drain(second, 1)
    second.close()
    assert resumed == [b"after-commit"]


def test_per_key_order_is_preserved_within_a_partition(services: Services, topic: str) -> None:
    servers = [services.kafka_bootstrap]
    ensure_topic(servers, topic, partitions=3)
    producer = Producer(servers, linger_ms=20)
    for i in range(300):
        producer.send(topic, f"key-{i % 7}".encode(), str(i).encode())
    producer.flush()
    producer.close()
    consumer = Consumer(servers, f"{topic}.g", [topic])
    messages = []
    for _ in range(40):
        messages.extend(consumer.poll(timeout_ms=500))
        if len(messages) >= 300:
            break
    consumer.close()
    per_key: dict[bytes | None, list[int]] = {}
    for m in messages:
        per_key.setdefault(m.key, []).append(int(m.value or b"0"))
    assert len(messages) == 300
    assert all(values == sorted(values) for values in per_key.values())
