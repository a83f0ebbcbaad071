"""`dualwrite demo` at a reduced size: the whole migration runs end to end and proves itself:
zero drift, a ready report, cutover and the rollback rehearsal, every state recorded."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from click.testing import CliRunner

from cli.main import cli
from dualwrite import load_migration, make_engine
from dualwrite.state import current_state, history

pytestmark = pytest.mark.integration


def test_the_demo_migrates_live_reconciles_clean_and_is_ready(tmp_path: Path) -> None:
    out = tmp_path / "demo"
    result = CliRunner().invoke(
        cli,
        ["demo", "--customers", "1500", "--workload-s", "4", "--output", str(out)],
    )
    assert result.exit_code == 0, result.output
    summary = json.loads((out / "demo-result.json").read_text())
    assert summary["source_rows"] > 5000
    assert summary["live_transactions"] > 0
    assert summary["reconcile_status"] == "clean"
    assert summary["ready"] is True
    assert summary["reverse_status"] == "clean"
    assert summary["final_state"] == "rolled_back"
    assert (out / "reverse-reconcile-differences.jsonl").read_text() == ""
    readiness = json.loads((out / "readiness.json").read_text())
    assert readiness["ready"] is True and all(g["passed"] for g in readiness["gates"])
    assert "READY for cutover" in (out / "readiness.html").read_text()
    assert (
        "CLEAN" in (out / "reconcile.md").read_text()
        or "clean" in (out / "reconcile.md").read_text()
    )
    assert (out / "reconcile-differences.jsonl").read_text() == ""

    config = load_migration(out / "migration.toml", env={})
    target = make_engine(config.target)
    try:
        transitions = history(target, config.name)
        walked = [t.to_state for t in transitions]
        state = current_state(target, config.name).state
    finally:
        target.dispose()
    assert walked == [
        "capturing",
        "backfilling",
        "streaming",
        "verified",
        "cut_over",
        "rolled_back",
    ]
    assert state == summary["final_state"]
    assert not any(t.forced for t in transitions)
