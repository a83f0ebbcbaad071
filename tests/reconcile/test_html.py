"""The HTML kit: self-contained pages, everything escaped, one chart point per run."""

from __future__ import annotations

import datetime as dt
import re
from html.parser import HTMLParser

import pytest
from hypothesis import given
from hypothesis import strategies as st

from reconcile import (
    ChartPoint,
    Difference,
    Html,
    ReconcileResult,
    RunRecord,
    TableSummary,
    escape,
    render_page,
    svg_history_chart,
    table_html,
    to_html,
)

HOSTILE = "<script>alert(1)</script>"


class _Tags(HTMLParser):
    """Collects start tags and their attributes, as a browser's tokenizer would see them."""

    def __init__(self) -> None:
        super().__init__()
        self.tags: list[tuple[str, dict[str, str | None]]] = []
        self.text: list[str] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.tags.append((tag, dict(attrs)))

    def handle_data(self, data: str) -> None:
        self.text.append(data)


def _parse(page: str) -> _Tags:
    parser = _Tags()
    parser.feed(page)
    parser.close()
    return parser


def test_escape_makes_markup_inert_and_leaves_html_alone() -> None:
    assert escape(HOSTILE) == "&lt;script&gt;alert(1)&lt;/script&gt;"
    assert escape('" onload="x') == "&quot; onload=&quot;x"
    assert escape(None) == ""
    assert escape(Html("<b>ok</b>")) == "<b>ok</b>"


@given(st.text())
def test_any_text_in_a_table_cell_is_text_not_markup(value: str) -> None:
    parsed = _parse(render_page("t", table_html(["h"], [[value]])))
    structure = ["html", "head", "meta", "meta", "meta", "title", "style", "body", "h1"]
    assert [t for t, _ in parsed.tags] == [
        *structure,
        "table",
        "thead",
        "tr",
        "th",
        "tbody",
        "tr",
        "td",
    ]
    assert value in "".join(parsed.text)  # read back as text, exactly


def test_page_is_self_contained_without_script() -> None:
    page = render_page(HOSTILE, table_html(["a"], [[HOSTILE]]), subtitle=HOSTILE)
    parsed = _parse(page)
    names = {t for t, _ in parsed.tags}
    assert "script" not in names and "link" not in names and "img" not in names
    for _tag, attrs in parsed.tags:
        assert "src" not in attrs and "href" not in attrs
    assert "url(" not in page and "@import" not in page
    csp = [
        a
        for t, a in parsed.tags
        if t == "meta" and a.get("http-equiv") == "Content-Security-Policy"
    ]
    assert csp and "default-src 'none'" in (csp[0]["content"] or "")
    assert (
        page.count("&lt;script&gt;alert(1)&lt;/script&gt;") == 4
    )  # title, heading, subtitle, cell
    assert "<script>" not in page


def test_history_chart_has_one_point_per_run_and_escapes_labels() -> None:
    points = [
        ChartPoint(f"run {i}", float(v), status, tooltip=HOSTILE)
        for i, (v, status) in enumerate(
            [(0, "clean"), (12, "drift"), (3, "incomplete"), (0, "clean")]
        )
    ]
    for kind in ("line", "bar"):
        svg = svg_history_chart(points, kind=kind, title=HOSTILE, y_label="keys")
        assert svg.count('class="point"') == 4
        assert "<script" not in svg and "&lt;script&gt;" in svg
        assert svg.startswith("<svg") and svg.endswith("</svg>")
    assert "no runs recorded yet" in svg_history_chart([])
    with pytest.raises(ValueError):
        svg_history_chart(points, kind="pie")


def test_chart_scales_the_largest_value_to_the_top() -> None:
    svg = svg_history_chart([ChartPoint("a", 0), ChartPoint("b", 250)])
    ys = [float(y) for y in re.findall(r'<circle class="point" cx="[^"]+" cy="([^"]+)"', svg)]
    assert ys[0] > ys[1]  # 0 at the bottom, 250 (the axis top, a nice number) at the top
    assert ">250<" in svg


def test_reconcile_html_escapes_drift_samples() -> None:
    now = dt.datetime(2026, 1, 2, 3, 4, 5, tzinfo=dt.UTC)
    result = ReconcileResult(
        "shop",
        now,
        now,
        (TableSummary("shop.people", 10, 10, {"mismatch": 1, "extra": 1}),),
        (
            Difference("shop.people", '["<b>1</b>"]', "mismatch", {"name": (HOSTILE, "x")}),
            Difference("shop.people", "[2]", "extra", detail=HOSTILE),
        ),
        True,
    )
    history = [
        RunRecord(i, "shop", now, now, s, {"mismatch": i}, (), None)
        for i, s in enumerate(["clean", "drift"], 1)
    ]
    page = to_html(result, history)
    assert "<script>" not in page and "<b>1</b>" not in page
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in page
    assert page.count('class="point"') == 2
    assert "shop.people" in page and "DRIFT" in page
