"""The result types of a reconcile run (frozen; rendering lives in ``_report``)."""

from __future__ import annotations

import datetime as dt
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

CATEGORIES = ("missing", "extra", "mismatch", "transform_error", "in_flight", "unverified")
DRIFT = ("missing", "extra", "mismatch", "transform_error")


@dataclass(frozen=True)
class Difference:
    target: str
    key: str
    category: str
    columns: Mapping[str, tuple[Any, Any]] = field(
        default_factory=dict
    )  # col -> (expected, actual)
    detail: str = ""


@dataclass(frozen=True)
class TableSummary:
    target: str
    expected_rows: int
    target_rows: int
    counts: Mapping[str, int]
    method: str = ""  # "segments" (checksums in both databases) or "stream" (in Python)


@dataclass(frozen=True)
class ReconcileResult:
    """The outcome of one run. ``status``: clean, drift or incomplete."""

    migration: str
    started_at: dt.datetime
    finished_at: dt.datetime
    tables: tuple[TableSummary, ...]
    differences: tuple[Difference, ...]
    caught_up: bool

    @property
    def counts(self) -> dict[str, int]:
        total: dict[str, int] = dict.fromkeys(CATEGORIES, 0)
        for d in self.differences:
            total[d.category] += 1
        return total

    @property
    def status(self) -> str:
        counts = self.counts
        if any(counts[c] for c in DRIFT):
            return "drift"
        if counts["unverified"]:
            return "incomplete"
        return "clean"
