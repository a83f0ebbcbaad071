"""Helpers for capture and relay tests: drain the relay, read the topic, decode."""

from __future__ import annotations

import threading

from sqlalchemy import Engine

from dualwrite import MigrationConfig
from dualwrite.envelope import ChangeEvent, decode_event
from dualwrite.kafka_io import Message, read_topic
from dualwrite.relay import RelayResult, run_relay


def drain(engine: Engine, config: MigrationConfig) -> RelayResult:
    return run_relay(engine, config, until_idle=True, stop=threading.Event())


def messages(config: MigrationConfig, idle_ms: int = 1500) -> list[Message]:
    return list(
        read_topic(config.kafka.bootstrap_servers, config.changes_topic, idle_timeout_ms=idle_ms)
    )


def events(config: MigrationConfig, idle_ms: int = 1500) -> list[ChangeEvent]:
    """Every event on the topic, in version order (per-partition order is checked elsewhere)."""
    decoded = [decode_event(m.value or b"") for m in messages(config, idle_ms)]
    return sorted(decoded, key=lambda e: e.version)
