"""The real broker: idempotent produce, consume in a group, committed offsets survive."""

from __future__ import annotations

import threading
import time

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


def _poll_in_background(consumer: Consumer, until: threading.Event) -> threading.Thread:
    def poll() -> None:
        while not until.is_set():
            consumer.poll(timeout_ms=200)

    thread = threading.Thread(target=poll)
    thread.start()
    return thread


def test_a_commit_during_a_rebalance_reports_false_and_a_later_commit_lands(
    services: Services, topic: str
) -> None:
    """The window a CI run caught: a member whose poll returned with its rejoin still in
    flight commits the batch it applied. kafka-python refuses the commit with
    RebalanceInProgressError; ``commit`` must report False (the worker logs it and goes on:
    the records are redelivered and replayed, a no-op), not raise (the worker exited 2)."""
    servers = [services.kafka_bootstrap]
    ensure_topic(servers, topic, partitions=2)
    group = f"{topic}.g"
    member, idle = Consumer(servers, group, [topic]), Consumer(servers, group, [topic])
    joined = threading.Event()
    joining = _poll_in_background(member, joined)
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline and not (
        idle._consumer.assignment() and member._consumer.assignment()
    ):
        idle.poll(timeout_ms=200)
    joined.set()
    joining.join()
    assert member._consumer.assignment() and idle._consumer.assignment()
    # a third member joins; ``idle`` stops polling, so the rebalance waits for it and
    # ``member``'s rejoin stays in flight between its polls
    newcomer = Consumer(servers, group, [topic])
    done = threading.Event()
    newcomer_polls = _poll_in_background(newcomer, done)
    answers: list[bool] = []
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline and False not in answers:
        member.poll(timeout_ms=100)
        answers.append(member.commit({(topic, 0): 0}))
    assert False in answers, "the rebalance never reached the committing member"
    idle.close()  # leaves: the rebalance completes without it
    landed = False
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline and not landed:
        member.poll(timeout_ms=100)
        landed = member.commit({(topic, 0): 3})
    assert landed, "no commit landed after the rebalance completed"
    assert member.committed(topic, 0) == 3
    done.set()
    newcomer_polls.join()
    member.close()
    newcomer.close()
