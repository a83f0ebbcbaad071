"""``dualwrite readiness``, ``dualwrite state``, ``dualwrite cutover`` and ``dualwrite rollback``."""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import click

from cli._direction import load_direction
from cli._output import emit_json, err, out
from dualwrite import make_engine
from dualwrite.config import MigrationConfig
from dualwrite.state import (
    STATES,
    Transition,
    TransitionRefused,
    current_state,
    history,
    transition,
)
from reconcile import (
    evaluate_readiness,
    gate_checks,
    readiness_html,
    readiness_json,
    readiness_lines,
    readiness_markdown,
    verdict,
)

migration_arg = click.argument("migration_file", type=click.Path(dir_okay=False))


def _writable(path: Path | None, option: str) -> None:
    """Refuse a report path that cannot be written before the gates are evaluated (they take
    a while), rather than fail after them and lose the report."""
    if path is None:
        return
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise click.BadParameter(
            f"cannot create {path.parent}: {exc.strerror}", param_hint=option
        ) from None
    if not os.access(path.parent, os.W_OK):
        raise click.BadParameter(f"cannot write {path}", param_hint=option)


def _write(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text, encoding="utf-8")
    err.print(f"[dim]wrote {path}[/]", highlight=False)


@click.command("readiness")
@migration_arg
@click.option(
    "--format",
    "fmt",
    type=click.Choice(["text", "json", "markdown", "html"]),
    default="text",
    show_default=True,
    help="What to print on stdout.",
)
@click.option("--html", "html_path", type=click.Path(dir_okay=False, path_type=Path))
@click.option("--markdown", "md_path", type=click.Path(dir_okay=False, path_type=Path))
@click.option("--json-file", "json_path", type=click.Path(dir_okay=False, path_type=Path))
def readiness_command(
    migration_file: str,
    fmt: str,
    html_path: Path | None,
    md_path: Path | None,
    json_path: Path | None,
) -> None:
    """Evaluate the cutover gates: exit 0 when ready, 1 when not, 2 on error.

    Each gate shows its evidence and, when it fails, what to do. Thresholds come from the
    migration file's [thresholds].
    """
    for path, option in (
        (html_path, "--html"),
        (md_path, "--markdown"),
        (json_path, "--json-file"),
    ):
        _writable(path, option)
    config = load_direction(migration_file, False)
    source, target = make_engine(config.source), make_engine(config.target)
    try:
        report = evaluate_readiness(config, source, target)
    finally:
        source.dispose()
        target.dispose()
    if html_path:
        _write(html_path, readiness_html(report))
    if md_path:
        _write(md_path, readiness_markdown(report))
    if json_path:
        _write(json_path, json.dumps(readiness_json(report), indent=2) + "\n")
    if fmt == "json":
        emit_json(readiness_json(report))
    elif fmt == "markdown":
        sys.stdout.write(readiness_markdown(report))
    elif fmt == "html":
        sys.stdout.write(readiness_html(report))
    else:
        out.print(f"state: {report.state.state}", markup=False)
        for passed, line in readiness_lines(report):
            out.print(line, style=None if passed else "red", markup=False)
        out.print(verdict(report), style="bold green" if report.ready else "bold red", markup=False)
    sys.exit(0 if report.ready else 1)


def _move(config: MigrationConfig, to_state: str, force: bool, reason: str | None) -> Transition:
    if force and not reason:
        raise click.UsageError("--force needs --reason (it is recorded with the transition)")
    source, target = make_engine(config.source), make_engine(config.target)
    try:
        return transition(
            target,
            config.name,
            to_state,
            checks=gate_checks(config, source, target, to_state),
            force=force,
            reason=reason,
        )
    except TransitionRefused as refused:
        if not refused.failed:
            raise  # not allowed from here at all: bad input, exit 2
        for c in refused.failed:
            out.print(f"FAIL  {c.name}: {c.detail}", markup=False)
        err.print(
            f"refused: {config.name} stays in its state; fix the failed precondition(s) "
            "(`dualwrite readiness` shows the evidence), or --force with --reason",
            markup=False,
        )
        sys.exit(1)
    finally:
        source.dispose()
        target.dispose()


def _report_move(t: Transition) -> None:
    for c in t.checks:
        out.print(f"{'PASS' if c.passed else 'FAIL'}  {c.name}: {c.detail}", markup=False)
    forced = " (forced)" if t.forced else ""
    out.print(f"{t.migration}: {t.from_state} -> {t.to_state}{forced}", markup=False)


force_option = click.option(
    "--force", is_flag=True, help="Move even if preconditions fail (recorded, needs --reason)."
)
reason_option = click.option("--reason", default=None, help="Why; recorded with the transition.")


@click.group("state")
def state_group() -> None:
    """The migration's state and its guarded transitions."""


@state_group.command("show")
@migration_arg
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
def state_show(migration_file: str, as_json: bool) -> None:
    """Print the current state and the transition history."""
    config = load_direction(migration_file, False)
    target = make_engine(config.target)
    try:
        st = current_state(target, config.name)
        past = history(target, config.name)
    finally:
        target.dispose()
    if as_json:
        emit_json({"state": st, "history": past})
        return
    since = f" since {st.since:%Y-%m-%d %H:%M:%S} UTC" if st.since else ""
    out.print(f"{config.name}: {st.state}{since}", markup=False)
    for t in past:
        forced = f"  FORCED: {t.reason}" if t.forced else (f"  ({t.reason})" if t.reason else "")
        out.print(
            f"  {t.at:%Y-%m-%d %H:%M:%S}  {t.from_state} -> {t.to_state}  by {t.actor}{forced}",
            markup=False,
        )


@state_group.command("set")
@migration_arg
@click.argument("to_state", metavar="STATE", type=click.Choice(STATES))
@force_option
@reason_option
def state_set(migration_file: str, to_state: str, force: bool, reason: str | None) -> None:
    """Move to TO_STATE if the transition is allowed and its preconditions pass."""
    _report_move(_move(load_direction(migration_file, False), to_state, force, reason))


@click.command("cutover")
@migration_arg
@force_option
@reason_option
def cutover_command(migration_file: str, force: bool, reason: str | None) -> None:
    """Record the cutover (verified -> cut_over); refused unless every readiness gate passes.

    Run it when the application is about to write to the new store; the reverse pipeline
    (`dualwrite relay --reverse`, `dualwrite worker --reverse`) keeps the old store current.
    """
    _report_move(_move(load_direction(migration_file, False), "cut_over", force, reason))


@click.command("rollback")
@migration_arg
@force_option
@reason_option
def rollback_command(migration_file: str, force: bool, reason: str | None) -> None:
    """Record the rollback (cut_over -> rolled_back) once the old store has caught up."""
    _report_move(_move(load_direction(migration_file, False), "rolled_back", force, reason))
