"""The streaming comparison spills several targets to partition files and keeps every
(target, side, partition) in a file of its own: a file of one target's rows is never
appended to another's (the demo's 120k-row reconcile crashed on exactly that)."""

from __future__ import annotations

import pytest

from dualwrite.backfill import run_backfill
from reconcile import ReconcileResult, reconcile
from tests.reverse.conftest import Pair, make_pair, shop

__all__ = ["make_pair", "shop"]

pytestmark = pytest.mark.integration


def _spilled(p: Pair) -> ReconcileResult:
    """The streaming route with partitions of about 20 rows: every target spills."""
    return reconcile(
        p.source,
        p.target,
        p.config,
        p.transforms,
        segments=False,
        bucket_rows=20,
        chunk_rows=16,
        wait_s=5,
    )


def test_spilled_partitions_of_several_targets_compare_clean_then_find_drift(shop: Pair) -> None:
    p = shop
    run_backfill(p.source, p.target, p.config, p.transforms)
    result = _spilled(p)
    assert len(result.tables) >= 3 and {t.method for t in result.tables} == {"stream"}
    assert all(t.expected_rows > 20 for t in result.tables), "every target spans partitions"
    assert result.status == "clean", result.counts

    p.new_sql(
        "UPDATE {d}.orders SET amount = amount + 1 WHERE id = (SELECT min(id) FROM {d}.orders)"
    )
    p.new_sql(
        "DELETE FROM {d}.addresses WHERE customer_id = (SELECT max(customer_id) FROM {d}.addresses)"
    )
    result = _spilled(p)
    assert result.status == "drift"
    found = {(d.target.split(".")[-1], d.category) for d in result.differences}
    assert found == {("orders", "mismatch"), ("addresses", "missing")}, result.differences
