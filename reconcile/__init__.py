"""reconcile: prove the new store holds what the old one says it should.

A transform-aware diff of both stores with canonical per-type comparison, in-flight
re-checks, reports (JSON, Markdown, self-contained HTML) and run history, repair through
the normal pipeline, and the cutover readiness gates built on them.
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
from reconcile._errors import ReconcileError, RepairError
from reconcile._html import (
    ChartPoint,
    Html,
    badge,
    escape,
    render_page,
    svg_history_chart,
    table_html,
)
from reconcile._readiness_report import (
    readiness_html,
    readiness_json,
    readiness_lines,
    readiness_markdown,
    verdict,
)
from reconcile._repair import (
    REPAIRABLE,
    RepairEntry,
    RepairProgress,
    RepairResult,
    SavedReport,
    load_report,
    repair,
)
from reconcile._report import (
    RunRecord,
    TableRun,
    ensure_history,
    read_history,
    record_run,
    summary_line,
    to_html,
    to_json,
    to_markdown,
    write_artifact,
)
from reconcile.readiness import Gate, ReadinessReport, evaluate_readiness, gate_checks

__all__ = [
    "CATEGORIES",
    "DEFAULT_WORKERS",
    "NORMALISERS",
    "REPAIRABLE",
    "ChartPoint",
    "Difference",
    "Gate",
    "Html",
    "ReadinessReport",
    "ReconcileError",
    "ReconcileResult",
    "RepairEntry",
    "RepairError",
    "RepairProgress",
    "RepairResult",
    "RunRecord",
    "SavedReport",
    "TableRun",
    "TableSummary",
    "badge",
    "canonical",
    "encode_row",
    "ensure_history",
    "escape",
    "evaluate_readiness",
    "gate_checks",
    "load_report",
    "read_history",
    "readiness_html",
    "readiness_json",
    "readiness_lines",
    "readiness_markdown",
    "reconcile",
    "record_run",
    "render_page",
    "repair",
    "summary_line",
    "svg_history_chart",
    "table_html",
    "to_html",
    "to_json",
    "to_markdown",
    "verdict",
    "write_artifact",
]
