"""Typed wrappers over kafka-python: the only module in the project that imports ``kafka``.

Everything else produces, consumes and administers topics through these functions and
classes, so the client library's untyped surface, its error classes and its settings are
decided in one place. Errors that kafka-python marks ``retriable`` stay recognisable through
:func:`is_retriable`; connection failures become :class:`ServiceUnavailableError`.

Thread-safety: a :class:`Producer` may be shared between threads (kafka-python's producer is
thread-safe); a :class:`Consumer` belongs to one thread.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import kafka
import kafka.errors
from kafka.admin import NewTopic
from kafka.structs import OffsetAndMetadata, TopicPartition

from dualwrite.errors import ServiceUnavailableError

__all__ = [
    "ClusterInfo",
    "Consumer",
    "Message",
    "Producer",
    "ensure_topic",
    "group_lag",
    "is_retriable",
    "probe_cluster",
    "read_topic",
]

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ClusterInfo:
    """What a metadata round trip learned about the cluster."""

    cluster_id: str | None
    controller_id: int | None
    brokers: tuple[str, ...]
    topics: tuple[str, ...]


@dataclass(frozen=True)
class Message:
    """One consumed record."""

    topic: str
    partition: int
    offset: int
    key: bytes | None
    value: bytes | None
    timestamp_ms: int


def is_retriable(exc: BaseException) -> bool:
    """True when kafka-python marks the error as retriable (timeouts, leader moves, ...)."""
    return bool(getattr(exc, "retriable", False))


def probe_cluster(bootstrap_servers: Sequence[str], timeout_s: float = 10.0) -> ClusterInfo:
    """Do a full metadata round trip; raise :class:`ServiceUnavailableError` if none answers."""
    admin = _admin(bootstrap_servers, timeout_s)
    try:
        cluster = admin.describe_cluster()
        topics = admin.list_topics()
    except kafka.errors.KafkaError as exc:
        raise ServiceUnavailableError(
            f"Kafka at {','.join(bootstrap_servers)} did not answer a metadata request: {exc}"
        ) from None
    finally:
        admin.close()
    brokers = tuple(f"{b['host']}:{b['port']}" for b in cluster.get("brokers", []))
    return ClusterInfo(
        cluster_id=cluster.get("cluster_id"),
        controller_id=cluster.get("controller_id"),
        brokers=brokers,
        topics=tuple(sorted(topics)),
    )


def ensure_topic(
    bootstrap_servers: Sequence[str],
    name: str,
    partitions: int = 1,
    replication_factor: int = 1,
    timeout_s: float = 30.0,
) -> bool:
    """Create topic ``name`` unless it exists; return True when this call created it.

    Waits until the topic's metadata is visible, so a producer can use it straight away.
    """
    admin = _admin(bootstrap_servers, timeout_s)
    try:
        if name in admin.list_topics():
            return False
        admin.create_topics(
            [NewTopic(name, partitions, replication_factor)],
            timeout_ms=int(timeout_s * 1000),
            wait_for_metadata=True,
        )
        return True
    except kafka.errors.TopicAlreadyExistsError:
        return False
    except kafka.errors.KafkaError as exc:
        raise ServiceUnavailableError(f"cannot create topic {name}: {exc}") from None
    finally:
        admin.close()


class Producer:
    """An idempotent producer with ``acks=all``: a send is durable once its future resolves."""

    def __init__(
        self,
        bootstrap_servers: Sequence[str],
        *,
        client_id: str = "dualwrite",
        linger_ms: int = 5,
        batch_size: int = 256 * 1024,
        compression: str | None = None,
        max_block_ms: int = 60_000,
    ) -> None:
        try:
            self._producer = kafka.KafkaProducer(
                bootstrap_servers=list(bootstrap_servers),
                client_id=client_id,
                acks="all",
                enable_idempotence=True,
                linger_ms=linger_ms,
                batch_size=batch_size,
                compression_type=compression,
                max_block_ms=max_block_ms,
                reconnect_backoff_max_ms=5000,
            )
        except kafka.errors.KafkaError as exc:
            raise ServiceUnavailableError(
                f"cannot connect a producer to Kafka at {','.join(bootstrap_servers)}: {exc}"
            ) from None

    def send(self, topic: str, key: bytes | None, value: bytes | None) -> Any:
        """Queue one record; returns a future whose ``get(timeout)`` gives its offset."""
        return self._producer.send(topic, key=key, value=value)

    def flush(self, timeout_s: float | None = None) -> None:
        """Block until every queued record is acknowledged (or raise the send error)."""
        self._producer.flush(timeout=timeout_s)

    def close(self, timeout_s: float = 10.0) -> None:
        self._producer.close(timeout=timeout_s)


class Consumer:
    """A consumer-group member with manual offset commits (never auto-commit)."""

    def __init__(
        self,
        bootstrap_servers: Sequence[str],
        group_id: str,
        topics: Iterable[str],
        *,
        client_id: str = "dualwrite",
        auto_offset_reset: str = "earliest",
        max_poll_records: int = 500,
    ) -> None:
        try:
            self._consumer = kafka.KafkaConsumer(
                *topics,
                bootstrap_servers=list(bootstrap_servers),
                client_id=client_id,
                group_id=group_id,
                enable_auto_commit=False,
                auto_offset_reset=auto_offset_reset,
                max_poll_records=max_poll_records,
            )
        except kafka.errors.KafkaError as exc:
            raise ServiceUnavailableError(
                f"cannot connect a consumer to Kafka at {','.join(bootstrap_servers)}: {exc}"
            ) from None

    def poll(self, timeout_ms: int = 1000, max_records: int | None = None) -> list[Message]:
        """Fetch the next records of the assigned partitions, in offset order per partition."""
        batches = self._consumer.poll(timeout_ms=timeout_ms, max_records=max_records)
        out: list[Message] = []
        for records in batches.values():
            for r in records:
                out.append(Message(r.topic, r.partition, r.offset, r.key, r.value, r.timestamp))
        return out

    def commit(self, positions: dict[tuple[str, int], int] | None = None) -> bool:
        """Commit ``{(topic, partition): next_offset}``, or everything polled when ``None``.

        Returns False when the group rebalanced meanwhile (the partitions' new owner will be
        redelivered the uncommitted records: harmless for idempotent consumers). Raises
        :class:`ServiceUnavailableError` for retriable failures (broker down, coordinator
        moving): the caller retries.
        """
        try:
            if positions is None:
                self._consumer.commit()
                return True
            offsets = {
                TopicPartition(t, p): OffsetAndMetadata(o, "", -1)
                for (t, p), o in positions.items()
            }
            self._consumer.commit(offsets)
            return True
        except kafka.errors.CommitFailedError:
            return False
        except kafka.errors.KafkaError as exc:
            if is_retriable(exc):
                raise ServiceUnavailableError(f"offset commit failed: {exc}") from None
            raise

    def committed(self, topic: str, partition: int) -> int | None:
        """The group's committed offset for one partition, or None when nothing was committed."""
        result = self._consumer.committed(TopicPartition(topic, partition))
        return None if result is None else int(result)

    def close(self) -> None:
        """Leave the group and close connections."""
        self._consumer.close()


def group_lag(
    bootstrap_servers: Sequence[str], group_id: str, topic: str
) -> dict[int, tuple[int, int | None]]:
    """Per partition of ``topic``: (log end offset, the group's committed offset or None)."""
    admin = _admin(bootstrap_servers, 10.0)
    try:
        committed = admin.list_group_offsets(group_id).get(group_id, {})
    except kafka.errors.KafkaError as exc:
        raise ServiceUnavailableError(f"cannot read offsets of group {group_id}: {exc}") from None
    finally:
        admin.close()
    consumer = kafka.KafkaConsumer(
        bootstrap_servers=list(bootstrap_servers), group_id=None, enable_auto_commit=False
    )
    try:
        partitions = consumer.partitions_for_topic(topic) or set()
        tps = [TopicPartition(topic, p) for p in sorted(partitions)]
        ends = consumer.end_offsets(tps) if tps else {}
    finally:
        consumer.close()
    out: dict[int, tuple[int, int | None]] = {}
    for tp in tps:
        meta = committed.get(tp)
        out[tp.partition] = (
            int(ends[tp]),
            None if meta is None or meta.offset < 0 else int(meta.offset),
        )
    return out


def read_topic(
    bootstrap_servers: Sequence[str],
    topic: str,
    *,
    idle_timeout_ms: int = 2000,
    max_messages: int | None = None,
    from_beginning: bool = True,
) -> Iterable[Message]:
    """Yield a topic's records without joining a group (no offsets committed).

    Stops after ``idle_timeout_ms`` without a new record, or after ``max_messages``.
    Partitions are read one batch at a time, so per-partition order is kept.
    """
    try:
        consumer = kafka.KafkaConsumer(
            bootstrap_servers=list(bootstrap_servers),
            group_id=None,
            enable_auto_commit=False,
            auto_offset_reset="earliest" if from_beginning else "latest",
            consumer_timeout_ms=idle_timeout_ms,
        )
    except kafka.errors.KafkaError as exc:
        raise ServiceUnavailableError(
            f"cannot reach Kafka at {','.join(bootstrap_servers)}: {exc}"
        ) from None
    try:
        partitions = consumer.partitions_for_topic(topic)
        if not partitions:
            raise ServiceUnavailableError(f"topic {topic} does not exist")
        assigned = [TopicPartition(topic, p) for p in sorted(partitions)]
        consumer.assign(assigned)
        if from_beginning:
            consumer.seek_to_beginning(*assigned)
        for count, r in enumerate(consumer, start=1):
            yield Message(r.topic, r.partition, r.offset, r.key, r.value, r.timestamp)
            if max_messages is not None and count >= max_messages:
                return
    finally:
        consumer.close()


def _admin(bootstrap_servers: Sequence[str], timeout_s: float) -> Any:
    try:
        return kafka.KafkaAdminClient(
            bootstrap_servers=list(bootstrap_servers),
            client_id="dualwrite-admin",
            request_timeout_ms=int(timeout_s * 1000),
            bootstrap_timeout_ms=int(timeout_s * 1000),
            reconnect_backoff_max_ms=2000,
        )
    except kafka.errors.KafkaConfigurationError:
        raise
    except kafka.errors.KafkaError as exc:
        raise ServiceUnavailableError(
            f"cannot reach Kafka at {','.join(bootstrap_servers)}: {exc}"
        ) from None
