"""A small kit for self-contained HTML reports: a page skeleton, escaping, tables, SVG charts.

Used by the reconcile report and the readiness report. The pages need nothing from the
network: the CSS is inline, charts are inline SVG generated here, and there is no script at
all; a Content-Security-Policy meta tag (``default-src 'none'``) makes a browser refuse any
script or remote resource even if one slipped into the page.

Everything passed in as data is escaped: report values come from the databases and are
untrusted. Only :class:`Html` instances (markup built by these functions, or by a caller that
escaped its own parts) are inserted as they are. Pure functions, thread-safe.
"""

from __future__ import annotations

import html
import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

__all__ = [
    "ChartPoint",
    "Html",
    "badge",
    "escape",
    "render_page",
    "svg_history_chart",
    "table_html",
]

STATUS_COLOURS = {
    "clean": "#1a7f37",
    "ready": "#1a7f37",
    "ok": "#1a7f37",
    "fail": "#cf222e",
    "drift": "#cf222e",
    "not_ready": "#cf222e",
    "error": "#cf222e",
    "incomplete": "#bf8700",
}
_DEFAULT_COLOUR = "#57606a"


class Html(str):
    """Markup that is already safe: :func:`escape` returns it unchanged."""

    __slots__ = ()


def escape(value: object) -> Html:
    """The text of ``value`` with ``& < > " '`` escaped (``None`` becomes an empty string).

    Safe in element content and in quoted attribute values. An :class:`Html` value is
    returned as it is.
    """
    if isinstance(value, Html):
        return value
    return Html(html.escape("" if value is None else str(value), quote=True))


def badge(status: str) -> Html:
    """A coloured status label (``clean``, ``drift``, ``incomplete``, ``ready``, ...)."""
    colour = STATUS_COLOURS.get(status.lower(), _DEFAULT_COLOUR)
    return Html(f'<span class="badge" style="background:{colour}">{escape(status.upper())}</span>')


def table_html(
    headers: Sequence[object],
    rows: Iterable[Sequence[object]],
    *,
    numeric: Iterable[int] = (),
    empty: str = "none",
) -> Html:
    """A ``<table>``; every cell is escaped unless it is :class:`Html`.

    ``numeric`` lists the column indexes to right-align; ``empty`` is shown when there are
    no rows.
    """
    right = set(numeric)

    def cell(tag: str, index: int, value: object) -> str:
        cls = ' class="num"' if index in right else ""
        return f"<{tag}{cls}>{escape(value)}</{tag}>"

    head = "".join(cell("th", i, h) for i, h in enumerate(headers))
    body = ["<tr>" + "".join(cell("td", i, v) for i, v in enumerate(row)) + "</tr>" for row in rows]
    if not body:
        body = [f'<tr><td class="empty" colspan="{len(headers)}">{escape(empty)}</td></tr>']
    return Html(f"<table><thead><tr>{head}</tr></thead><tbody>{''.join(body)}</tbody></table>")


@dataclass(frozen=True)
class ChartPoint:
    """One point of a history chart: an x label (a run's time), a value, and optionally a
    status (colours the marker) and a tooltip."""

    label: str
    value: float
    status: str | None = None
    tooltip: str | None = None


def svg_history_chart(
    points: Sequence[ChartPoint],
    *,
    kind: str = "line",
    title: str = "",
    y_label: str = "",
    width: int = 760,
    height: int = 240,
) -> Html:
    """An inline SVG chart of ``points`` in order (oldest first): ``kind`` ``"line"`` (a line
    with one marker per point) or ``"bar"`` (one bar per point).

    Every point is one element of class ``point`` with a ``<title>`` tooltip, coloured by its
    status. The y axis starts at 0. With no points the chart says so. Raises ``ValueError``
    for an unknown ``kind``.
    """
    if kind not in ("line", "bar"):
        raise ValueError(f"kind must be 'line' or 'bar', got {kind!r}")
    left, right, top, bottom = 56, 16, 28, 44
    plot_w, plot_h = width - left - right, height - top - bottom
    parts = [
        f'<svg class="chart" xmlns="http://www.w3.org/2000/svg" width="{width}" '
        f'height="{height}" viewBox="0 0 {width} {height}" role="img" '
        f'aria-label="{escape(title or y_label or "chart")}">'
    ]
    if title:
        parts.append(f'<text x="{left}" y="16" class="chart-title">{escape(title)}</text>')
    if not points:
        parts.append(
            f'<text x="{width / 2:.0f}" y="{height / 2:.0f}" text-anchor="middle" '
            'class="chart-empty">no runs recorded yet</text></svg>'
        )
        return Html("".join(parts))
    finite = [p.value for p in points if math.isfinite(p.value)]
    top_value = _nice_ceiling(max(finite, default=0.0))

    def y_of(value: float) -> float:
        value = value if math.isfinite(value) else 0.0
        return top + plot_h - (max(value, 0.0) / top_value) * plot_h

    for tick in (0.0, top_value / 2, top_value):
        y = y_of(tick)
        parts.append(
            f'<line x1="{left}" y1="{y:.1f}" x2="{left + plot_w}" y2="{y:.1f}" class="grid"/>'
            f'<text x="{left - 6}" y="{y + 4:.1f}" text-anchor="end" class="tick">'
            f"{escape(_short_number(tick))}</text>"
        )
    if y_label:
        parts.append(
            f'<text x="12" y="{top + plot_h / 2:.0f}" class="axis-label" text-anchor="middle" '
            f'transform="rotate(-90 12 {top + plot_h / 2:.0f})">{escape(y_label)}</text>'
        )
    n = len(points)
    step = plot_w / n
    xs = [left + step * (i + 0.5) for i in range(n)]
    if kind == "line" and n > 1:
        path = " ".join(f"{x:.1f},{y_of(p.value):.1f}" for x, p in zip(xs, points, strict=True))
        parts.append(f'<polyline points="{path}" class="series"/>')
    bar_w = max(1.0, min(step * 0.7, 40.0))
    for x, p in zip(xs, points, strict=True):
        colour = STATUS_COLOURS.get((p.status or "").lower(), _DEFAULT_COLOUR)
        tip = escape(p.tooltip or f"{p.label}: {_short_number(p.value)}")
        y = y_of(p.value)
        if kind == "bar":
            h = max(top + plot_h - y, 1.0)
            parts.append(
                f'<rect class="point" x="{x - bar_w / 2:.1f}" y="{top + plot_h - h:.1f}" '
                f'width="{bar_w:.1f}" height="{h:.1f}" fill="{colour}"><title>{tip}</title></rect>'
            )
        else:
            parts.append(
                f'<circle class="point" cx="{x:.1f}" cy="{y:.1f}" r="4" fill="{colour}">'
                f"<title>{tip}</title></circle>"
            )
    every = max(1, math.ceil(n / 8))  # at most ~8 x labels
    for i in range(0, n, every):
        parts.append(
            f'<text x="{xs[i]:.1f}" y="{top + plot_h + 16}" text-anchor="middle" class="tick">'
            f"{escape(points[i].label)}</text>"
        )
    parts.append("</svg>")
    return Html("".join(parts))


def _nice_ceiling(value: float) -> float:
    """The smallest of 1, 2, 2.5, 5 x 10^k at or above ``value`` (1 for 0)."""
    if value <= 0:
        return 1.0
    magnitude = 10 ** math.floor(math.log10(value))
    for factor in (1, 2, 2.5, 5, 10):
        if factor * magnitude >= value:
            return float(factor * magnitude)
    return float(10 * magnitude)


def _short_number(value: float) -> str:
    if not math.isfinite(value):
        return str(value)
    if value == int(value):
        return f"{int(value):,}"
    return f"{value:,.2f}".rstrip("0").rstrip(".")


_CSS = """
:root { color-scheme: light; }
body { font: 14px/1.45 system-ui, -apple-system, "Segoe UI", Roboto, sans-serif;
       color: #1f2328; margin: 2rem auto; max-width: 1100px; padding: 0 1rem; }
h1 { font-size: 1.5rem; margin-bottom: .25rem; }
h2 { font-size: 1.15rem; margin-top: 2rem; border-bottom: 1px solid #d0d7de; padding-bottom: .25rem; }
.subtitle { color: #57606a; margin-top: 0; }
table { border-collapse: collapse; margin: .5rem 0 1rem; width: 100%; }
th, td { border: 1px solid #d0d7de; padding: .3rem .5rem; text-align: left; vertical-align: top; }
th { background: #f6f8fa; }
td.num, th.num { text-align: right; font-variant-numeric: tabular-nums; }
td.empty { color: #57606a; font-style: italic; }
td { word-break: break-word; }
code, .mono { font-family: ui-monospace, SFMono-Regular, Menlo, monospace; font-size: 12.5px; }
.badge { color: #fff; border-radius: 4px; padding: .1rem .45rem; font-weight: 600; font-size: .85rem; }
.summary { font-family: ui-monospace, SFMono-Regular, Menlo, monospace; background: #f6f8fa;
           padding: .5rem .75rem; border-radius: 6px; }
.chart .grid { stroke: #d0d7de; stroke-width: 1; }
.chart .series { fill: none; stroke: #0969da; stroke-width: 2; }
.chart .tick, .chart .axis-label { font-size: 11px; fill: #57606a; }
.chart .chart-title { font-size: 13px; font-weight: 600; fill: #1f2328; }
.chart .chart-empty { font-size: 13px; fill: #57606a; }
footer { color: #57606a; margin-top: 2rem; font-size: 12px; }
"""


def render_page(title: str, body_html: str, *, subtitle: str | None = None) -> str:
    """A complete HTML5 document: ``title`` (escaped) as ``<title>`` and heading, an optional
    escaped ``subtitle``, then ``body_html`` as it is (build it from escaped parts).

    No external asset, no script; a CSP meta tag forbids both.
    """
    sub = f'<p class="subtitle">{escape(subtitle)}</p>' if subtitle else ""
    return (
        "<!DOCTYPE html>\n"
        '<html lang="en"><head><meta charset="utf-8">'
        '<meta http-equiv="Content-Security-Policy" '
        "content=\"default-src 'none'; style-src 'unsafe-inline'; img-src data:\">"
        '<meta name="viewport" content="width=device-width, initial-scale=1">'
        f"<title>{escape(title)}</title><style>{_CSS}</style></head>\n"
        f"<body><h1>{escape(title)}</h1>{sub}\n{body_html}\n</body></html>\n"
    )
