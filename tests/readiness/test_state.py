"""Migration state: transitions the graph forbids are refused even when forced; transitions
whose preconditions fail are refused unless forced, and a forced one is recorded with its
reason and the failed checks; a state that moves under a transition refuses it."""

from __future__ import annotations

import threading
import uuid

import pytest
from click.testing import CliRunner
from sqlalchemy import Engine

from cli.main import cli
from dualwrite.relay import run_relay
from dualwrite.state import (
    Check,
    StateError,
    TransitionRefused,
    current_state,
    history,
    transition,
)
from tests.conftest import REPO
from tests.readiness.conftest import Pair, Pipeline, renamed

pytestmark = pytest.mark.integration


def _name() -> str:
    return f"st_{uuid.uuid4().hex[:8]}"


def _walk(engine: Engine, name: str, *states: str) -> None:
    for s in states:
        transition(engine, name, s)


def test_a_new_migration_walks_the_graph_and_records_each_step(target_engine: Engine) -> None:
    name = _name()
    assert current_state(target_engine, name).state == "new"
    _walk(target_engine, name, "capturing", "backfilling", "streaming", "verified", "cut_over")
    transition(target_engine, name, "rolled_back", reason="rehearsal")
    assert current_state(target_engine, name).state == "rolled_back"
    steps = [(t.from_state, t.to_state) for t in history(target_engine, name)]
    assert steps == [
        ("new", "capturing"),
        ("capturing", "backfilling"),
        ("backfilling", "streaming"),
        ("streaming", "verified"),
        ("verified", "cut_over"),
        ("cut_over", "rolled_back"),
    ]
    assert history(target_engine, name)[-1].reason == "rehearsal"


def test_the_graph_refuses_skips_even_with_force(target_engine: Engine) -> None:
    name = _name()
    with pytest.raises(TransitionRefused, match="cannot go from new to cut_over"):
        transition(target_engine, name, "cut_over", force=True, reason="hurry")
    _walk(target_engine, name, "capturing", "backfilling", "streaming", "verified", "cut_over")
    transition(target_engine, name, "complete")
    with pytest.raises(TransitionRefused, match="none \\(final state\\)"):
        transition(target_engine, name, "rolled_back", force=True, reason="too late")
    with pytest.raises(StateError, match="unknown state"):
        transition(target_engine, name, "done")
    assert current_state(target_engine, name).state == "complete"


def test_failed_preconditions_refuse_and_force_is_recorded(target_engine: Engine) -> None:
    name = _name()
    failing = lambda: [Check("backfill", False, "2 tables unfinished"), Check("x", True, "ok")]  # noqa: E731
    with pytest.raises(TransitionRefused, match="backfill: 2 tables unfinished") as refused:
        transition(target_engine, name, "capturing", checks=failing)
    assert [c.name for c in refused.value.failed] == ["backfill"]
    assert current_state(target_engine, name).state == "new"
    assert history(target_engine, name) == []

    moved = transition(target_engine, name, "capturing", checks=failing, force=True, reason="ops")
    assert moved.forced and current_state(target_engine, name).state == "capturing"
    (recorded,) = history(target_engine, name)
    assert recorded.forced and recorded.reason == "ops"
    assert recorded.checks == (
        Check("backfill", False, "2 tables unfinished"),
        Check("x", True, "ok"),
    )


def test_a_state_that_moves_during_the_checks_refuses_the_transition(
    target_engine: Engine,
) -> None:
    name = _name()
    _walk(target_engine, name, "capturing", "backfilling", "streaming", "verified")

    def racing_operator() -> list[Check]:
        transition(target_engine, name, "streaming")  # someone demotes it meanwhile
        return [Check("all", True, "ok")]

    with pytest.raises(TransitionRefused, match="changed to streaming"):
        transition(target_engine, name, "cut_over", checks=racing_operator)
    assert current_state(target_engine, name).state == "streaming"
    assert [t.to_state for t in history(target_engine, name)][-1] == "streaming"


def test_cutover_is_refused_unless_ready_and_force_needs_a_reason(
    merge_pipeline: Pipeline,
) -> None:
    p = renamed(merge_pipeline)
    _walk(p.target, p.config.name, "capturing", "backfilling", "streaming", "verified")
    runner = CliRunner()
    refused = runner.invoke(cli, ["cutover", p.config.path])
    assert refused.exit_code == 1, refused.output
    assert "refused" in refused.output and "FAIL  backfill" in refused.output
    wrong = runner.invoke(cli, ["rollback", p.config.path])
    assert wrong.exit_code == 2 and "cannot go from verified to rolled_back" in wrong.output
    assert current_state(p.target, p.config.name).state == "verified"

    no_reason = runner.invoke(cli, ["cutover", p.config.path, "--force"])
    assert no_reason.exit_code == 2 and "--reason" in no_reason.output

    forced = runner.invoke(cli, ["cutover", p.config.path, "--force", "--reason", "drill"])
    assert forced.exit_code == 0, forced.output
    assert "verified -> cut_over (forced)" in forced.output
    shown = runner.invoke(cli, ["state", "show", p.config.path])
    assert "cut_over" in shown.output and "FORCED: drill" in shown.output


def test_cutover_is_accepted_when_every_gate_passes_and_rollback_waits_for_the_reverse_path(
    ready_shop: Pair, monkeypatch: pytest.MonkeyPatch
) -> None:
    p = ready_shop
    monkeypatch.chdir(REPO)  # the transform module is imported relative to the working directory
    _walk(p.target, p.config.name, "capturing", "backfilling", "streaming")
    runner = CliRunner()
    verified = runner.invoke(cli, ["state", "set", p.config.path, "verified"])
    assert verified.exit_code == 0, verified.output
    result = runner.invoke(cli, ["cutover", p.config.path])
    assert result.exit_code == 0, result.output
    assert "verified -> cut_over" in result.output and "forced" not in result.output
    last = history(p.target, p.config.name)[-1]
    assert not last.forced and {c.name for c in last.checks} >= {"backfill", "reverse_path"}

    # the new application writes; the reverse pipeline has not delivered it to the old store
    p.new_sql(
        "UPDATE {d}.orders SET status = 'cancelled' WHERE id = (SELECT min(id) FROM {d}.orders)"
    )
    run_relay(p.target, p.reverse, until_idle=True, stop=threading.Event())
    refused = runner.invoke(cli, ["rollback", p.config.path])
    assert refused.exit_code == 1, refused.output
    assert "FAIL  reverse worker_lag" in refused.output
    assert current_state(p.target, p.config.name).state == "cut_over"

    p.pump_reverse()
    accepted = runner.invoke(cli, ["rollback", p.config.path, "--reason", "rehearsal"])
    assert accepted.exit_code == 0, accepted.output
    assert "cut_over -> rolled_back" in accepted.output
    assert current_state(p.target, p.config.name).state == "rolled_back"
