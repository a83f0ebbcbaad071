"""Apply is idempotent and monotonic: any per-key reordering, duplication and batching of the
same changes gives the same target as applying them once, in order (Hypothesis)."""

from __future__ import annotations

import random
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from sqlalchemy import Engine, text

from dualwrite.apply import Applier, ensure_bookkeeping
from dualwrite.transform import Transforms
from dualwrite.worker import _connect

pytestmark = pytest.mark.integration

# A change: (key, op, value); versions are assigned in list order, as the changelog does.
changes = st.lists(
    st.tuples(
        st.integers(1, 4), st.sampled_from(["upsert", "upsert", "delete"]), st.integers(0, 99)
    ),
    min_size=1,
    max_size=25,
)


def _transforms(schema: str) -> Transforms:
    t = Transforms()
    t.target(f"{schema}.kv", key=["k"])

    @t.source("src.kv", targets={f"{schema}.kv": {"k": "k"}})
    def kv(row: Any) -> dict[str, dict[str, Any]]:
        return {f"{schema}.kv": {"k": row["k"], "v": row["v"]}}

    return t


def _final_state(history: list[tuple[int, str, int]]) -> dict[int, int]:
    state: dict[int, int] = {}
    for k, op, v in history:
        if op == "delete":
            state.pop(k, None)
        else:
            state[k] = v
    return state


@settings(max_examples=25, deadline=None)
@given(history=changes, seed=st.integers(0, 2**32 - 1))
def test_shuffled_duplicated_batches_converge_to_in_order_result(
    history: list[tuple[int, str, int]], seed: int, target_engine: Engine, target_schema: str
) -> None:
    ensure_bookkeeping(target_engine)
    with target_engine.begin() as conn:
        conn.execute(text(f'DROP TABLE IF EXISTS "{target_schema}".kv'))
        conn.execute(text(f'CREATE TABLE "{target_schema}".kv (k int PRIMARY KEY, v int)'))
        conn.execute(
            text("DELETE FROM dualwrite.applied WHERE target_table = :t"),
            {"t": f"{target_schema}.kv"},
        )
    transforms = _transforms(target_schema)
    ops = []
    for version, (k, op, v) in enumerate(history, start=1):
        kind = "delete" if op == "delete" else "update"
        ops += transforms.apply(
            "src.kv", kind, {"k": k}, None if op == "delete" else {"k": k, "v": v}, version
        )
    rng = random.Random(seed)
    delivered = ops + rng.sample(ops, k=len(ops) // 2)  # redelivered duplicates
    rng.shuffle(delivered)
    conn = _connect(target_engine)
    try:
        applier = Applier(conn, transforms)
        i = 0
        while i < len(delivered):
            size = rng.randint(1, 6)
            applier.apply(delivered[i : i + size])
            i += size
    finally:
        conn.close()
    with target_engine.connect() as c:
        got = dict(c.execute(text(f'SELECT k, v FROM "{target_schema}".kv')).all())
    assert got == _final_state(history)
