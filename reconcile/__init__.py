"""reconcile: prove the new store holds what the old one says it should.

A transform-aware diff of both stores with canonical per-type comparison, in-flight
re-checks, reports and run history. Readiness lands here too (issue 7).
"""

from reconcile._canonical import NORMALISERS, canonical, encode_row
from reconcile._compare import (
    CATEGORIES,
    DEFAULT_WORKERS,
    Difference,
    ReconcileResult,
    TableSummary,
    reconcile,
)
from reconcile._report import record_run, summary_line, to_json, to_markdown, write_artifact

__all__ = [
    "CATEGORIES",
    "DEFAULT_WORKERS",
    "NORMALISERS",
    "Difference",
    "ReconcileResult",
    "TableSummary",
    "canonical",
    "encode_row",
    "reconcile",
    "record_run",
    "summary_line",
    "to_json",
    "to_markdown",
    "write_artifact",
]
