"""Rendering a readiness report: versioned JSON, Markdown, a self-contained HTML page, and
the lines of the terminal summary. Rendering never re-evaluates a gate."""

from __future__ import annotations

import datetime as dt
import json
from typing import Any

from reconcile._html import badge, escape, render_page
from reconcile.readiness import SCHEMA_VERSION, Gate, ReadinessReport


def _jsonable(value: Any) -> Any:
    if isinstance(value, dt.datetime | dt.date):
        return value.isoformat()
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_jsonable(v) for v in value]
    return value


def readiness_json(report: ReadinessReport) -> dict[str, Any]:
    return {
        "schema_version": SCHEMA_VERSION,
        "migration": report.migration,
        "generated_at": report.generated_at.isoformat(),
        "ready": report.ready,
        "state": report.state.state,
        "state_since": report.state.since.isoformat() if report.state.since else None,
        "gates": [
            {
                "name": g.name,
                "title": g.title,
                "passed": g.passed,
                "summary": g.summary,
                "evidence": _jsonable(dict(g.evidence)),
                "remedy": g.remedy,
            }
            for g in report.gates
        ],
    }


def verdict(report: ReadinessReport) -> str:
    """The one line for alerting and the top of every rendering."""
    if report.ready:
        return f"{report.migration}: READY for cutover: all {len(report.gates)} gates pass"
    names = ", ".join(g.name for g in report.failed)
    return f"{report.migration}: NOT READY: {len(report.failed)} of {len(report.gates)} gates fail ({names})"


def readiness_lines(report: ReadinessReport) -> list[tuple[bool, str]]:
    """(passed, text) per terminal line: one per gate, and its remedy when it fails."""
    lines: list[tuple[bool, str]] = []
    for g in report.gates:
        lines.append((g.passed, f"{'PASS' if g.passed else 'FAIL'}  {g.title}: {g.summary}"))
        if not g.passed and g.remedy:
            lines.append((False, f"      what to do: {g.remedy}"))
    return lines


def readiness_markdown(report: ReadinessReport) -> str:
    out = [
        f"# Cutover readiness: {report.migration}",
        "",
        f"**{verdict(report)}**",
        "",
        f"State: `{report.state.state}`; generated {report.generated_at:%Y-%m-%d %H:%M:%S} UTC.",
        "",
        "| gate | result | evidence | what to do |",
        "|---|---|---|---|",
    ]
    for g in report.gates:
        cells = [
            g.title,
            "pass" if g.passed else "**FAIL**",
            g.summary,
            "" if g.passed else g.remedy,
        ]
        out.append("| " + " | ".join(c.replace("|", "\\|") for c in cells) + " |")
    out += ["", "## Evidence", ""]
    for g in report.gates:
        out += [
            f"### {g.title}",
            "",
            "```json",
            json.dumps(_jsonable(dict(g.evidence)), indent=2, sort_keys=True),
            "```",
            "",
        ]
    return "\n".join(out)


def _gate_row(g: Gate) -> str:
    result = badge("ok" if g.passed else "fail")
    return (
        f'<tr id="gate-{escape(g.name)}"><td>{escape(g.title)}</td><td>{result}</td>'
        f"<td>{escape(g.summary)}</td><td>{'' if g.passed else escape(g.remedy)}</td></tr>"
    )


def readiness_html(report: ReadinessReport) -> str:
    """A self-contained page (the reconcile report's kit: inline CSS, no script)."""
    rows = "".join(_gate_row(g) for g in report.gates)
    evidence = "".join(
        f'<details><summary>{escape(g.title)}</summary><pre class="mono">'
        f"{escape(json.dumps(_jsonable(dict(g.evidence)), indent=2, sort_keys=True))}</pre>"
        "</details>"
        for g in report.gates
    )
    body = (
        f'<p id="verdict" class="summary">{badge("ready" if report.ready else "not_ready")} '
        f"{escape(verdict(report))}</p>"
        '<table id="gates"><thead><tr><th>Gate</th><th>Result</th><th>Evidence</th>'
        f"<th>What to do</th></tr></thead><tbody>{rows}</tbody></table>"
        f"<h2>Evidence</h2>{evidence}"
    )
    return render_page(
        f"Cutover readiness: {report.migration}",
        body,
        subtitle=f"state {report.state.state} · generated "
        f"{report.generated_at:%Y-%m-%d %H:%M:%S} UTC · report schema v{SCHEMA_VERSION}",
    )
