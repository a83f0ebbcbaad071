"""Every command of the console script has help and exits 0 with --help."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import click
import pytest
from click.testing import CliRunner

from cli.main import cli
from dualwrite import __version__


def _commands(group: click.Group, prefix: tuple[str, ...] = ()) -> list[tuple[str, ...]]:
    found: list[tuple[str, ...]] = [prefix]
    ctx = click.Context(group)
    for name in group.list_commands(ctx):
        command = group.get_command(ctx, name)
        assert command is not None, name
        if isinstance(command, click.Group):
            found.extend(_commands(command, (*prefix, name)))
        else:
            found.append((*prefix, name))
    return found


@pytest.mark.parametrize("path", _commands(cli), ids=lambda p: " ".join(p) or "dualwrite")
def test_every_command_has_help(path: tuple[str, ...]) -> None:
    result = CliRunner().invoke(cli, [*path, "--help"])
    assert result.exit_code == 0, result.output
    assert "Usage: " in result.output
    command: click.Command | None = cli
    for name in path:
        assert isinstance(command, click.Group)
        command = command.get_command(click.Context(command), name)
    assert command is not None and command.help and len(command.help.strip()) > 10


def test_unknown_command_is_a_usage_error_with_exit_2() -> None:
    result = CliRunner().invoke(cli, ["frobnicate"])
    assert result.exit_code == 2
    assert "No such command" in result.output


def test_the_console_script_keeps_exit_codes_and_output_through_its_exit_path(
    tmp_path: Path,
) -> None:
    """``main()`` freezes the heap before the process exits (no final teardown of every
    object): exit codes, stdout and stderr must come through as before."""
    ok = subprocess.run(
        [sys.executable, "-m", "cli.main", "--version"], capture_output=True, text=True
    )
    assert (ok.returncode, ok.stdout.strip()) == (0, f"dualwrite, version {__version__}")
    bad = subprocess.run(
        [sys.executable, "-m", "cli.main", "config", "check", str(tmp_path / "absent.toml")],
        capture_output=True,
        text=True,
    )
    assert bad.returncode == 2
    assert "absent.toml: file not found" in bad.stdout + bad.stderr
