"""reconcile: prove the new store holds what the old one says it should.

A transform-aware diff of both stores with canonical per-type comparison, in-flight
re-checks, reports (JSON, Markdown, self-contained HTML) and run history, repair through
the normal pipeline, and the cutover readiness gates built on them.
"""

from typing import TYPE_CHECKING

from dualwrite._lazy import lazy_attributes

if TYPE_CHECKING:
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

_WHERE = {
    "CATEGORIES": "reconcile._compare",
    "ChartPoint": "reconcile._html",
    "DEFAULT_WORKERS": "reconcile._compare",
    "Difference": "reconcile._compare",
    "Gate": "reconcile.readiness",
    "Html": "reconcile._html",
    "NORMALISERS": "reconcile._canonical",
    "REPAIRABLE": "reconcile._repair",
    "ReadinessReport": "reconcile.readiness",
    "ReconcileError": "reconcile._errors",
    "ReconcileResult": "reconcile._compare",
    "RepairEntry": "reconcile._repair",
    "RepairError": "reconcile._errors",
    "RepairProgress": "reconcile._repair",
    "RepairResult": "reconcile._repair",
    "RunRecord": "reconcile._report",
    "SavedReport": "reconcile._repair",
    "TableRun": "reconcile._report",
    "TableSummary": "reconcile._compare",
    "badge": "reconcile._html",
    "canonical": "reconcile._canonical",
    "encode_row": "reconcile._canonical",
    "ensure_history": "reconcile._report",
    "escape": "reconcile._html",
    "evaluate_readiness": "reconcile.readiness",
    "gate_checks": "reconcile.readiness",
    "load_report": "reconcile._repair",
    "read_history": "reconcile._report",
    "readiness_html": "reconcile._readiness_report",
    "readiness_json": "reconcile._readiness_report",
    "readiness_lines": "reconcile._readiness_report",
    "readiness_markdown": "reconcile._readiness_report",
    "reconcile": "reconcile._compare",
    "record_run": "reconcile._report",
    "render_page": "reconcile._html",
    "repair": "reconcile._repair",
    "summary_line": "reconcile._report",
    "svg_history_chart": "reconcile._html",
    "table_html": "reconcile._html",
    "to_html": "reconcile._report",
    "to_json": "reconcile._report",
    "to_markdown": "reconcile._report",
    "verdict": "reconcile._readiness_report",
    "write_artifact": "reconcile._report",
}
"""Where each public name lives. Imported on first use, so ``from reconcile import
reconcile`` does not import the readiness gates (Kafka), the repair or the HTML renderers."""


__getattr__ = lazy_attributes(__name__, _WHERE)
