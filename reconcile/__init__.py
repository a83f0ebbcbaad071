"""reconcile: prove the new store holds what the old one says it should.

A transform-aware diff of both stores with canonical per-type comparison, in-flight
re-checks, reports and run history; and the cutover readiness gates built on them.
"""

from reconcile._canonical import NORMALISERS, canonical, encode_row
from reconcile._compare import CATEGORIES, Difference, ReconcileResult, TableSummary, reconcile
from reconcile._readiness_report import (
    readiness_html,
    readiness_json,
    readiness_lines,
    readiness_markdown,
    verdict,
)
from reconcile._report import record_run, summary_line, to_json, to_markdown, write_artifact
from reconcile.readiness import Gate, ReadinessReport, evaluate_readiness, gate_checks

__all__ = [
    "CATEGORIES",
    "NORMALISERS",
    "Difference",
    "Gate",
    "ReadinessReport",
    "ReconcileResult",
    "TableSummary",
    "canonical",
    "encode_row",
    "evaluate_readiness",
    "gate_checks",
    "readiness_html",
    "readiness_json",
    "readiness_lines",
    "readiness_markdown",
    "reconcile",
    "record_run",
    "summary_line",
    "to_json",
    "to_markdown",
    "verdict",
    "write_artifact",
]
