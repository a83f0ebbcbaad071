"""`dualwrite dev smoke`: a row crosses source -> Kafka -> target for real."""

from __future__ import annotations

from pathlib import Path

import pytest
from click.testing import CliRunner

from cli.main import cli

pytestmark = pytest.mark.integration


def test_smoke_run_carries_a_row_end_to_end(tmp_path: Path, migration_text: str) -> None:
    path = tmp_path / "m.toml"
    path.write_text(migration_text)
    result = CliRunner().invoke(cli, ["dev", "smoke", str(path)])
    assert result.exit_code == 0, result.output
    assert "smoke run passed" in result.output
    for step in (
        "write source",
        "produce",
        "consume and commit offset",
        "write and read back target",
    ):
        assert step in result.output
