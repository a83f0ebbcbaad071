"""Checking that a migration's databases and Kafka cluster answer.

Each check does a real round trip (a query, a metadata request) and returns a frozen result
instead of raising, so a caller can report every service at once. Messages are redacted.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

from sqlalchemy import Engine, text
from sqlalchemy.exc import SQLAlchemyError

from dualwrite.config import KafkaConfig
from dualwrite.errors import ServiceUnavailableError
from dualwrite.kafka_io import probe_cluster
from dualwrite.redaction import redact_text, redact_url

__all__ = ["ServiceCheck", "check_database", "check_kafka"]


@dataclass(frozen=True)
class ServiceCheck:
    """The outcome of one round trip to one service."""

    service: str
    endpoint: str
    ok: bool
    detail: str
    elapsed_ms: float


def check_database(name: str, engine: Engine) -> ServiceCheck:
    """Connect and read the server version; never raises for connection problems."""
    endpoint = redact_url(engine.url.render_as_string(hide_password=False))
    password = engine.url.password if isinstance(engine.url.password, str) else None
    t0 = time.perf_counter()
    try:
        with engine.connect() as conn:
            version = conn.execute(text("SHOW server_version")).scalar_one()
    except SQLAlchemyError as exc:
        cause = getattr(exc, "orig", None) or exc
        detail = " ".join(str(cause).split())
        return ServiceCheck(name, endpoint, False, redact_text(detail, (password or "",)), _ms(t0))
    return ServiceCheck(name, endpoint, True, f"PostgreSQL {version}", _ms(t0))


def check_kafka(kafka: KafkaConfig, timeout_s: float = 10.0) -> ServiceCheck:
    """Do a metadata round trip with the cluster; never raises for connection problems."""
    endpoint = ",".join(kafka.bootstrap_servers)
    t0 = time.perf_counter()
    try:
        info = probe_cluster(kafka.bootstrap_servers, timeout_s=timeout_s)
    except ServiceUnavailableError as exc:
        return ServiceCheck("kafka", endpoint, False, str(exc), _ms(t0))
    brokers = len(info.brokers)
    return ServiceCheck(
        "kafka",
        endpoint,
        True,
        f"cluster {info.cluster_id}, {brokers} broker{'s' if brokers != 1 else ''}",
        _ms(t0),
    )


def _ms(t0: float) -> float:
    return (time.perf_counter() - t0) * 1000
