"""``Transforms.apply_reads`` (the backfill's per-chunk path) against ``Transforms.apply``.

The backfill groups a chunk's reads once per chunk instead of making a ``TargetOp`` per row;
what it hands the applier must be exactly what the per-row path gives, grouped by the
applier itself (``Applier._read_batch``), errors included. Pure logic: no database.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Mapping, Sequence
from typing import Any

import pytest

from dualwrite.apply import Applier
from dualwrite.transform import ReadBatch, TargetOp, TransformError, Transforms
from examples.shop.transform import build_transforms


def _normal(batch: ReadBatch) -> tuple[dict[Any, Any], list[Any]]:
    groups = {(str(g.target), g.source, g.columns): dict(g.rows) for g in batch.groups}
    general = [(str(o.target), o.key, o.values, o.source, o.version) for o in batch.general]
    return groups, general


def _per_row(
    transforms: Transforms, source: str, key: Sequence[str], records: list[dict[str, Any]]
) -> ReadBatch:
    ops: list[TargetOp] = []
    for r in records:
        ops.extend(transforms.apply(source, "read", {c: r[c] for c in key}, r, 0))
    return Applier(None, transforms)._read_batch(ops)  # type: ignore[arg-type]


def _customer(i: int, *, street: str | None) -> dict[str, Any]:
    stamp = dt.datetime(2024, 3, 31, 1, 30) + dt.timedelta(hours=i)  # across a DST change
    return {
        "id": i,
        "first_name": f" Ann{i} ",
        "last_name": None if i % 3 else "Lee",
        "email": f"A{i}@X.org",
        "phone": None,
        "created_at": stamp,
        "updated_at": stamp,
        "street": street,
        "city": "Berlin" if street else None,
        "zip": None,
        "country": "de" if street else None,
    }


def _order(i: int) -> dict[str, Any]:
    return {
        "id": i,
        "customer_id": i % 7,
        "amount_cents": 1999 + i,
        "currency": "eur",
        "status": ["pending", " Test ", "SHIPPED", "canceled"][i % 4],
        "placed_at": dt.datetime(2023, 10, 29, 2, 15) + dt.timedelta(minutes=20 * i),
    }


CASES = {
    "orders (filtered rows: deletes)": ("legacy.orders", ("id",), [_order(i) for i in range(40)]),
    "customers (merged target, address or not)": (
        "legacy.customers",
        ("id",),
        [_customer(i, street=None if i % 2 else f"Street {i}") for i in range(30)],
    ),
    "profiles (merged target's other owner)": (
        "legacy.customer_profiles",
        ("customer_id",),
        [
            {"customer_id": i, "loyalty_tier": "gold", "marketing_opt_in": i % 2 == 0, "notes": ""}
            for i in range(20)
        ],
    ),
}


@pytest.mark.parametrize("case", list(CASES))
def test_the_shop_chunks_group_as_the_per_row_path(case: str) -> None:
    source, key, records = CASES[case]
    transforms = build_transforms()
    assert _normal(transforms.apply_reads(source, key, records)) == _normal(
        _per_row(transforms, source, key, records)
    )


def _merged_registry(function: Any) -> Transforms:
    """One merged target fed by ``s.a`` (through ``function``; its key is (id, v)) and
    ``s.b``, and a single-owner target with a two-column key."""
    registry = Transforms()
    registry.target("t.m", key=["id"], owners={"s.a": ["x"], "s.b": ["y"]})
    registry.target("t.single", key=["k1", "k2"])
    registry.source("s.a", targets={"t.m": {"id": "id"}, "t.single": {"k1": "id", "k2": "v"}})(
        function
    )
    return registry


def _merge_function(row: Mapping[str, Any]) -> dict[str, dict[str, Any]]:
    if row["id"] % 3 == 0:
        return {}  # filtered from both: a merged delete and a single-owner delete
    out: dict[str, dict[str, Any]] = {"t.m": {"id": row["id"], "x": row["v"]}}
    if row["id"] % 2:
        out["t.single"] = {"k1": row["id"], "k2": row["v"], "z": row["w"]}
    else:  # another column order: another group
        out["t.single"] = {"z": row["w"], "k2": row["v"], "k1": row["id"]}
    return out


def test_merged_deletes_and_composite_keys_group_as_the_per_row_path() -> None:
    # repeated target keys (first stays), and source keys read twice
    records = [{"id": i % 10, "v": f"v{i % 5}", "w": i} for i in range(25)]
    registry = _merged_registry(_merge_function)
    batch = registry.apply_reads("s.a", ("id", "v"), records)
    assert _normal(batch) == _normal(_per_row(registry, "s.a", ("id", "v"), records))
    assert batch.general and all(op.values is None for op in batch.general)


@pytest.mark.parametrize(
    ("function", "message"),
    [
        (
            lambda row: 1 / 0,
            r"transform of s.a failed for key \{'id': 0, 'v': 'a'\}: ZeroDivisionError",
        ),
        (lambda row: {"t.other": {}}, r"produced undeclared targets \['t.other'\]"),
        (lambda row: {"t.m": {"x": 1}}, r"s.a -> t.m left out key column\(s\) \['id'\]"),
        (
            lambda row: {"t.m": {"id": 1, "y": 2}},
            r"s.a writes \['y'\] of t.m, which it does not own",
        ),
    ],
    ids=["raises", "undeclared", "no-key", "not-owned"],
)
def test_the_same_errors_as_the_per_row_path(function: Any, message: str) -> None:
    registry = _merged_registry(function)
    records = [{"id": 0, "v": "a"}]
    with pytest.raises(TransformError, match=message):
        registry.apply_reads("s.a", ("id", "v"), records)
    with pytest.raises(TransformError, match=message):
        _per_row(registry, "s.a", ("id", "v"), records)
