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
import threading
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar, cast

import kafka
import kafka.errors
from kafka.admin import NewTopic, OffsetSpec
from kafka.structs import OffsetAndMetadata, TopicPartition

from dualwrite.errors import ServiceUnavailableError

__all__ = [
    "ClusterInfo",
    "Consumer",
    "GroupState",
    "Message",
    "Producer",
    "call_with_deadline",
    "ensure_topic",
    "group_lag",
    "group_state",
    "is_retriable",
    "probe_cluster",
    "read_topic",
    "topic_partitions",
]

log = logging.getLogger(__name__)

# kafka-python's defaults are the consumer's request timeout (305 s) or none at all; a worker
# must notice an unavailable broker sooner than that to log it and back off.
_COMMIT_TIMEOUT_MS = 30_000
_CLOSE_TIMEOUT_MS = 10_000


@dataclass(frozen=True)
class ClusterInfo:
    """What a metadata round trip learned about the cluster."""

    cluster_id: str | None
    controller_id: int | None
    brokers: tuple[str, ...]
    topics: tuple[str, ...]


@dataclass(frozen=True, init=False)
class Message:
    """One consumed record."""

    topic: str
    partition: int
    offset: int
    key: bytes | None
    value: bytes | None
    timestamp_ms: int

    def __init__(
        self,
        topic: str,
        partition: int,
        offset: int,
        key: bytes | None,
        value: bytes | None,
        timestamp_ms: int,
    ) -> None:
        # One per consumed record: the fields go straight into the instance dict (the frozen
        # dataclass __init__ calls object.__setattr__ per field, twice the cost).
        d = self.__dict__
        d["topic"] = topic
        d["partition"] = partition
        d["offset"] = offset
        d["key"] = key
        d["value"] = value
        d["timestamp_ms"] = timestamp_ms


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
            out.extend(
                [
                    Message(r.topic, r.partition, r.offset, r.key, r.value, r.timestamp)
                    for r in records
                ]
            )
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
                self._consumer.commit(timeout_ms=_COMMIT_TIMEOUT_MS)
                return True
            offsets = {
                TopicPartition(t, p): OffsetAndMetadata(o, "", -1)
                for (t, p), o in positions.items()
            }
            self._consumer.commit(offsets, timeout_ms=_COMMIT_TIMEOUT_MS)
            return True
        except (kafka.errors.CommitFailedError, kafka.errors.RebalanceInProgressError):
            # RebalanceInProgressError: this member's rejoin is still in flight (a poll
            # returned mid-join); the offsets are not committed, the group redelivers them
            return False
        except kafka.errors.KafkaError as exc:
            if is_retriable(exc):
                raise ServiceUnavailableError(f"offset commit failed: {exc}") from None
            raise

    def committed(self, topic: str, partition: int) -> int | None:
        """The group's committed offset for one partition, or None when nothing was committed."""
        try:
            result = self._consumer.committed(
                TopicPartition(topic, partition), timeout_ms=_COMMIT_TIMEOUT_MS
            )
        except kafka.errors.KafkaError as exc:
            raise ServiceUnavailableError(
                f"cannot read the committed offset of {topic}[{partition}]: {exc}"
            ) from None
        return None if result is None else int(result)

    def close(self) -> None:
        """Leave the group and close connections (bounded: a dead coordinator cannot hang it)."""
        self._consumer.close(autocommit=False, timeout_ms=_CLOSE_TIMEOUT_MS)


def group_lag(
    bootstrap_servers: Sequence[str], group_id: str, topic: str, timeout_s: float = 15.0
) -> dict[int, tuple[int, int | None]]:
    """Per partition of ``topic``: (log end offset, the group's committed offset or None).

    Raises :class:`ServiceUnavailableError` when Kafka does not answer within ``timeout_s``
    (kafka-python's metadata waits have no bound of their own).
    """

    def read() -> dict[int, tuple[int, int | None]]:
        admin = _admin(bootstrap_servers, timeout_s)
        deadline = time.monotonic() + timeout_s
        try:
            while True:
                try:
                    partitions = _partitions(admin, topic)
                    tps = [TopicPartition(topic, p) for p in partitions]
                    ends = (
                        admin.list_partition_offsets(
                            dict.fromkeys(tps, OffsetSpec.LATEST), timeout_ms=int(timeout_s * 1000)
                        )
                        if tps
                        else {}
                    )
                    committed = admin.list_group_offsets(group_id).get(group_id, {})
                    break
                except kafka.errors.KafkaError as exc:
                    # A retriable error passes (a new broker has no group coordinator until
                    # its offsets topic exists: CoordinatorNotAvailable); asked again shortly.
                    if is_retriable(exc) and time.monotonic() < deadline:
                        time.sleep(_RETRY_PAUSE_S)
                        continue
                    raise ServiceUnavailableError(
                        f"cannot read the offsets of group {group_id} on {topic}: {exc}"
                    ) from None
        finally:
            admin.close()
        out: dict[int, tuple[int, int | None]] = {}
        for tp in tps:
            meta = committed.get(tp)
            out[tp.partition] = (
                int(ends[tp].offset),
                None if meta is None or meta.offset < 0 else int(meta.offset),
            )
        return out

    return call_with_deadline(read, timeout_s * 2, f"reading the lag of group {group_id}")


@dataclass(frozen=True)
class GroupState:
    """A consumer group as the broker sees it."""

    state: str  # Empty, Stable, PreparingRebalance, CompletingRebalance, Dead
    members: int

    @property
    def abandoned(self) -> bool:
        """No member at all (and no rebalance in progress)."""
        return self.members == 0 and self.state in ("Empty", "Dead")


def group_state(
    bootstrap_servers: Sequence[str], group_id: str, timeout_s: float = 15.0
) -> GroupState:
    """The group's state and member count (``Dead`` with 0 members for an unknown group)."""

    def read() -> GroupState:
        admin = _admin(bootstrap_servers, timeout_s)
        try:
            described = admin.describe_groups([group_id]).get(group_id, {})
        except kafka.errors.KafkaError as exc:
            raise ServiceUnavailableError(f"cannot describe group {group_id}: {exc}") from None
        finally:
            admin.close()
        return GroupState(
            str(described.get("group_state") or "Dead"), len(described.get("members") or [])
        )

    return call_with_deadline(read, timeout_s * 2, f"describing group {group_id}")


T = TypeVar("T")


_RETRY_PAUSE_S = 0.2  # between two tries of a Kafka call that failed with a retriable error


def call_with_deadline(fn: Callable[[], T], timeout_s: float, what: str) -> T:
    """Run a blocking client call on a helper thread; give up after ``timeout_s``.

    Some kafka-python calls wait for cluster metadata or a group coordinator without any
    bound (seen under load with 3.0.12). A caller that must stay responsive (a worker
    deciding whether it is idle, ``status``) uses this instead of hanging with them: the
    abandoned call finishes or fails on its daemon thread, and its result is dropped.
    """
    box: dict[str, Any] = {}
    done = threading.Event()

    def run() -> None:
        try:
            box["value"] = fn()
        except BaseException as exc:  # handed to the caller below
            box["error"] = exc
        finally:
            done.set()

    threading.Thread(target=run, name=f"dualwrite-{what[:40]}", daemon=True).start()
    if not done.wait(timeout_s):
        raise ServiceUnavailableError(f"Kafka did not answer within {timeout_s:g}s ({what})")
    if "error" in box:
        raise box["error"]
    return cast(T, box["value"])


def topic_partitions(
    bootstrap_servers: Sequence[str], topic: str, timeout_s: float = 15.0
) -> list[int]:
    """The partition numbers of ``topic``, sorted; [] when it does not exist."""

    def read() -> list[int]:
        admin = _admin(bootstrap_servers, timeout_s)
        try:
            return _partitions(admin, topic)
        except kafka.errors.KafkaError as exc:
            raise ServiceUnavailableError(f"cannot describe topic {topic}: {exc}") from None
        finally:
            admin.close()

    return call_with_deadline(read, timeout_s * 2, f"describing topic {topic}")


def _partitions(admin: Any, topic: str) -> list[int]:
    """The topic's partition numbers, sorted; [] when the topic does not exist."""
    for described in admin.describe_topics([topic]):
        if described["name"] == topic and described["error_code"] == 0:
            return sorted(int(p["partition_index"]) for p in described["partitions"])
    return []


def read_topic(
    bootstrap_servers: Sequence[str],
    topic: str,
    *,
    idle_timeout_ms: int = 2000,
    max_messages: int | None = None,
    from_beginning: bool = True,
    missing_ok: bool = False,
) -> Iterable[Message]:
    """Yield a topic's records without joining a group (no offsets committed).

    Stops after ``idle_timeout_ms`` without a new record, or after ``max_messages``. A topic
    that does not exist yields nothing with ``missing_ok``, else raises.
    Partitions are read one batch at a time, so per-partition order is kept.
    """
    partitions = topic_partitions(bootstrap_servers, topic)
    if not partitions:
        if missing_ok:
            return
        raise ServiceUnavailableError(f"topic {topic} does not exist")
    consumer = _groupless_consumer(
        bootstrap_servers,
        auto_offset_reset="earliest" if from_beginning else "latest",
        consumer_timeout_ms=idle_timeout_ms,
    )
    try:
        assigned = [TopicPartition(topic, p) for p in partitions]
        consumer.assign(assigned)
        if from_beginning:
            consumer.seek_to_beginning(*assigned)
        for count, r in enumerate(consumer, start=1):
            yield _message(r)
            if max_messages is not None and count >= max_messages:
                return
    finally:
        consumer.close()


def records_at(
    bootstrap_servers: Sequence[str],
    topic: str,
    offsets: Mapping[int, int],
    timeout_s: float = 15.0,
) -> dict[int, Message]:
    """Per partition of ``offsets`` (``{partition: offset}``), the first record at or after
    that offset, read without joining a group. A partition with no record there within
    ``timeout_s`` (compacted away, not yet replicated) has no entry. Raises
    :class:`ServiceUnavailableError` when Kafka does not answer."""
    if not offsets:
        return {}

    def read() -> dict[int, Message]:
        consumer = _groupless_consumer(bootstrap_servers, auto_offset_reset="earliest")
        found: dict[int, Message] = {}
        try:
            assigned = [TopicPartition(topic, p) for p in offsets]
            consumer.assign(assigned)
            for tp in assigned:
                consumer.seek(tp, offsets[tp.partition])
            deadline = time.monotonic() + timeout_s
            while len(found) < len(offsets) and time.monotonic() < deadline:
                for tp, records in consumer.poll(timeout_ms=200).items():
                    if tp.partition not in found and records:
                        found[tp.partition] = _message(records[0])
                        consumer.pause(tp)
        except kafka.errors.KafkaError as exc:
            raise ServiceUnavailableError(f"cannot read {topic}: {exc}") from None
        finally:
            consumer.close()
        return found

    return call_with_deadline(read, timeout_s + 5.0, f"records of {topic}")


def _groupless_consumer(bootstrap_servers: Sequence[str], **options: Any) -> Any:
    """A consumer outside any group (it commits nothing), for reading records by offset."""
    try:
        return kafka.KafkaConsumer(
            bootstrap_servers=list(bootstrap_servers),
            group_id=None,
            enable_auto_commit=False,
            **options,
        )
    except kafka.errors.KafkaError as exc:
        raise ServiceUnavailableError(
            f"cannot reach Kafka at {','.join(bootstrap_servers)}: {exc}"
        ) from None


def _message(record: Any) -> Message:
    return Message(
        record.topic, record.partition, record.offset, record.key, record.value, record.timestamp
    )


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
