"""Rendering a readiness report: versioned JSON, Markdown, a self-contained HTML page, and
the lines of the terminal summary. Rendering never re-evaluates a gate."""

from __future__ import annotations

import datetime as dt
import html
import json
from typing import Any

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


_CSS = """
body{font-family:system-ui,-apple-system,Segoe UI,Roboto,sans-serif;margin:2rem auto;max-width:70rem;
color:#1b1f24;padding:0 1rem}
h1{font-size:1.5rem}.verdict{padding:.8rem 1rem;border-radius:6px;font-weight:600}
.ready{background:#dafbe1;color:#116329}.notready{background:#ffebe9;color:#a40e26}
table{border-collapse:collapse;width:100%;margin:1rem 0}th,td{border:1px solid #d0d7de;
padding:.4rem .6rem;text-align:left;vertical-align:top}th{background:#f6f8fa}
td.pass{color:#116329;font-weight:600}td.fail{color:#a40e26;font-weight:600}
pre{background:#f6f8fa;padding:.6rem;overflow-x:auto;font-size:.85rem}
details{margin:.4rem 0}.meta{color:#57606a}
"""


def _gate_row(g: Gate) -> str:
    e = html.escape
    status = '<td class="pass">pass</td>' if g.passed else '<td class="fail">FAIL</td>'
    return (
        f'<tr id="gate-{e(g.name)}"><td>{e(g.title)}</td>{status}<td>{e(g.summary)}</td>'
        f"<td>{'' if g.passed else e(g.remedy)}</td></tr>"
    )


def readiness_html(report: ReadinessReport) -> str:
    """A self-contained page (inline CSS, no script, no external asset)."""
    e = html.escape
    cls = "ready" if report.ready else "notready"
    rows = "\n".join(_gate_row(g) for g in report.gates)
    evidence = "\n".join(
        f"<details><summary>{e(g.title)}</summary><pre>"
        f"{e(json.dumps(_jsonable(dict(g.evidence)), indent=2, sort_keys=True))}</pre></details>"
        for g in report.gates
    )
    return f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>Cutover readiness: {e(report.migration)}</title><style>{_CSS}</style></head>
<body>
<h1>Cutover readiness: {e(report.migration)}</h1>
<p id="verdict" class="verdict {cls}">{e(verdict(report))}</p>
<p class="meta">State <code>{e(report.state.state)}</code> &middot; generated
{e(report.generated_at.strftime("%Y-%m-%d %H:%M:%S"))} UTC &middot; report schema
v{SCHEMA_VERSION}</p>
<table id="gates"><thead><tr><th>Gate</th><th>Result</th><th>Evidence</th><th>What to do</th></tr>
</thead><tbody>
{rows}
</tbody></table>
<h2>Evidence</h2>
{evidence}
</body></html>
"""
