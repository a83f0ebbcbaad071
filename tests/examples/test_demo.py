"""`dualwrite demo` at a reduced size: the whole migration runs end to end and proves itself:
zero drift, a ready report, cutover and the rollback rehearsal, every state recorded."""

from __future__ import annotations

import json
import socket
from pathlib import Path

import pytest
from click.testing import CliRunner

from cli.main import cli
from dualwrite import load_migration, make_engine
from dualwrite.state import current_state, history
from tests.browser import render
from tests.conftest import Services

pytestmark = pytest.mark.integration


def test_the_demo_migrates_live_reconciles_clean_and_is_ready(
    tmp_path: Path, services: Services, monkeypatch: pytest.MonkeyPatch
) -> None:
    # the local stack's settings point elsewhere: the demo must use the services it is given
    # (DUALWRITE_SOURCE_URL, _TARGET_URL, _KAFKA_BOOTSTRAP) and start nothing
    monkeypatch.setenv("DUALWRITE_DEV_DIR", str(tmp_path / "no-stack"))
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        monkeypatch.setenv("DUALWRITE_PG_PORT", str(sock.getsockname()[1]))
    monkeypatch.setenv("DUALWRITE_SOURCE_URL", services.source_url)
    monkeypatch.setenv("DUALWRITE_TARGET_URL", services.target_url)
    monkeypatch.setenv("DUALWRITE_KAFKA_BOOTSTRAP", services.kafka_bootstrap)
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
    # the report the demo wrote, opened in headless Chromium
    page, ids = render(out / "readiness.html")
    assert "READY for cutover: all 7 gates pass" in ids["verdict"]
    assert sum(1 for i in ids if i.startswith("gate-")) == 7
    assert page.console_errors == [] and not page.alerts
    assert (
        "CLEAN" in (out / "reconcile.md").read_text()
        or "clean" in (out / "reconcile.md").read_text()
    )
    assert (out / "reconcile-differences.jsonl").read_text() == ""

    config = load_migration(out / "migration.toml", env={})
    assert not (tmp_path / "no-stack").exists()
    assert config.source.url == services.source_url
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
