"""The readiness page opens in headless Chromium: it renders the verdict and every gate, logs
no console error, and untrusted text in the evidence stays inert."""

from __future__ import annotations

import datetime as dt
from pathlib import Path

from dualwrite.state import MigrationState
from reconcile import ReadinessReport, readiness_html
from reconcile.readiness import Gate
from tests.browser import render

HOSTILE = "<script>alert('x')</script><img src=x onerror=alert(1)>"


def _report(ready: bool) -> ReadinessReport:
    now = dt.datetime(2026, 11, 27, 12, 0, tzinfo=dt.UTC)
    return ReadinessReport(
        "shop",
        now,
        MigrationState("shop", "verified", now),
        (
            Gate("backfill", "Backfill complete", True, "finished for all 3 table(s)", {"rows": 3}),
            Gate(
                "dead_letters",
                "Dead letters",
                ready,
                f"1 quarantined key {HOSTILE}",
                {"quarantined_keys": [{"key": HOSTILE}]},
                "run `dualwrite dlq redrive`",
            ),
        ),
    )


def test_ready_page_renders_the_verdict_and_gates_without_console_errors(tmp_path: Path) -> None:
    page = tmp_path / "ready.html"
    page.write_text(readiness_html(_report(True)), encoding="utf-8")
    rendered, ids = render(page)
    assert rendered.title == "Cutover readiness: shop"
    assert "READY for cutover: all 2 gates pass" in ids["verdict"]
    assert "Backfill complete" in ids["gate-backfill"] and "OK" in ids["gate-backfill"]
    assert rendered.console_errors == []


def test_failing_page_shows_the_failure_and_its_remedy_and_keeps_hostile_text_inert(
    tmp_path: Path,
) -> None:
    page = tmp_path / "not-ready.html"
    page.write_text(readiness_html(_report(False)), encoding="utf-8")
    rendered, ids = render(page)
    assert "NOT READY: 1 of 2 gates fail (dead_letters)" in ids["verdict"]
    row = ids["gate-dead_letters"]
    assert "FAIL" in row and "dualwrite dlq redrive" in row
    assert "<script>alert('x')</script>" in row  # shown as text, not run
    assert not rendered.alerts
    assert rendered.console_errors == []
