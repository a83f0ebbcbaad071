"""Pipeline lag: Kafka consumer lag per partition and end-to-end lag per source table."""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass
from typing import Any

from sqlalchemy import Engine

from dualwrite.config import MigrationConfig
from dualwrite.kafka_io import group_lag
from dualwrite.worker import consumer_group, ensure_worker_tables

__all__ = ["PartitionLag", "PipelineStatus", "SourceLag", "pipeline_status"]


@dataclass(frozen=True)
class PartitionLag:
    partition: int
    end_offset: int
    committed: int | None

    @property
    def lag(self) -> int:
        return self.end_offset - (self.committed or 0)


@dataclass(frozen=True)
class SourceLag:
    source: str
    version: int
    source_ts: dt.datetime | None
    lag_s: float | None  # now minus the source timestamp of the last applied change


@dataclass(frozen=True)
class PipelineStatus:
    partitions: tuple[PartitionLag, ...]
    sources: tuple[SourceLag, ...]
    quarantined: int

    @property
    def total_lag(self) -> int:
        return sum(p.lag for p in self.partitions)


def pipeline_status(engine: Engine, config: MigrationConfig) -> PipelineStatus:
    """Read the worker group's lag from Kafka and the applied positions from the target, for
    this migration's source tables (a target may be shared by several migrations)."""
    ensure_worker_tables(engine)
    offsets = group_lag(
        config.kafka.bootstrap_servers, consumer_group(config), config.changes_topic
    )
    partitions = tuple(
        PartitionLag(p, end, committed) for p, (end, committed) in sorted(offsets.items())
    )
    labels = [str(t.source) for t in config.tables]
    raw: Any = engine.raw_connection()
    try:
        with raw.cursor() as cur:
            cur.execute(
                "SELECT source_table, version, source_ts, extract(epoch FROM now() - source_ts) "
                "FROM dualwrite.source_positions WHERE source_table = ANY(%s) ORDER BY source_table",
                (labels,),
            )
            sources = tuple(
                SourceLag(r[0], int(r[1]), r[2], None if r[3] is None else float(r[3]))
                for r in cur.fetchall()
            )
            cur.execute(
                "SELECT count(*) FROM dualwrite.quarantine WHERE split_part(msg_key, ':', 1) = ANY(%s)",
                (labels,),
            )
            row = cur.fetchone()
    finally:
        raw.close()
    return PipelineStatus(partitions, sources, int(row[0]) if row else 0)
