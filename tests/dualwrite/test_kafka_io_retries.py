"""``group_lag`` against an admin client that fails the way a new broker does (pure unit
tests: the admin client is a stand-in; the calls against a real broker are exercised by the
worker, status and readiness tests)."""

from __future__ import annotations

from typing import Any

import kafka.errors
import pytest
from kafka.structs import OffsetAndMetadata, TopicPartition

from dualwrite import kafka_io
from dualwrite.errors import ServiceUnavailableError


class _Admin:
    """Answers like a broker whose group coordinator is not available for ``failures`` calls."""

    def __init__(self, failures: int, error: type[kafka.errors.KafkaError]) -> None:
        self.failures = failures
        self.error = error
        self.calls = 0
        self.closed = False

    def list_partition_offsets(self, specs: dict[TopicPartition, Any], timeout_ms: int) -> Any:
        return {tp: OffsetAndMetadata(10 + tp.partition, "", -1) for tp in specs}

    def list_group_offsets(self, group_id: str) -> dict[str, dict[TopicPartition, Any]]:
        self.calls += 1
        if self.calls <= self.failures:
            raise self.error()
        return {group_id: {TopicPartition("t", 0): OffsetAndMetadata(7, "", -1)}}

    def close(self) -> None:
        self.closed = True


@pytest.fixture
def admin(monkeypatch: pytest.MonkeyPatch) -> Any:
    def install(failures: int, error: type[kafka.errors.KafkaError]) -> _Admin:
        fake = _Admin(failures, error)
        monkeypatch.setattr(kafka_io, "_admin", lambda servers, timeout_s: fake)
        monkeypatch.setattr(kafka_io, "_partitions", lambda admin, topic: [0, 1])
        monkeypatch.setattr(kafka_io, "_RETRY_PAUSE_S", 0.01)
        return fake

    return install


def test_group_lag_waits_out_a_coordinator_that_is_not_available_yet(admin: Any) -> None:
    fake = admin(3, kafka.errors.CoordinatorNotAvailableError)
    assert kafka_io.group_lag(["k:1"], "g", "t", timeout_s=5) == {0: (10, 7), 1: (11, None)}
    assert fake.calls == 4 and fake.closed


def test_group_lag_gives_up_on_a_retriable_error_after_its_timeout(admin: Any) -> None:
    fake = admin(10**9, kafka.errors.CoordinatorNotAvailableError)
    with pytest.raises(ServiceUnavailableError, match="CoordinatorNotAvailable"):
        kafka_io.group_lag(["k:1"], "g", "t", timeout_s=0.2)
    assert fake.calls > 1 and fake.closed


def test_group_lag_does_not_retry_an_error_that_is_not_retriable(admin: Any) -> None:
    fake = admin(1, kafka.errors.GroupAuthorizationFailedError)
    with pytest.raises(ServiceUnavailableError, match="GroupAuthorizationFailed"):
        kafka_io.group_lag(["k:1"], "g", "t", timeout_s=5)
    assert fake.calls == 1
