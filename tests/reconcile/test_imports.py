"""``reconcile()`` and ``dualwrite reconcile`` import only what they use: not kafka-python
(asked only when differences need the in-flight re-check), nor SQLAlchemy's ORM (the
outbox's), the capture installer, the worker, the backfill or the readiness gates; the
public names of the packages still resolve."""

from __future__ import annotations

import subprocess
import sys

HEAVY = (
    "kafka",
    "sqlalchemy.orm",
    "dualwrite.capture.outbox",
    "dualwrite.capture._install",
    "pandas",
    "pyarrow",
    "dualwrite.worker",
    "dualwrite.backfill",
    "reconcile.readiness",
)


def _loaded_after(code: str) -> set[str]:
    probe = f"import sys\n{code}\nprint(' '.join(sorted(sys.modules)))"
    out = subprocess.run(
        [sys.executable, "-c", probe], capture_output=True, text=True, check=True
    ).stdout
    return set(out.split())


def test_the_library_call_does_not_import_kafka_or_other_commands() -> None:
    loaded = _loaded_after(
        "from dualwrite import load_migration, make_engine\n"
        "from dualwrite.transform import load_transforms\n"
        "from reconcile import reconcile"
    )
    assert not loaded & set(HEAVY), loaded & set(HEAVY)


def test_the_reconcile_command_does_not_import_kafka_or_other_commands() -> None:
    loaded = _loaded_after(
        "from click.testing import CliRunner\n"
        "from cli.main import cli\n"
        "assert CliRunner().invoke(cli, ['reconcile', '--help']).exit_code == 0"
    )
    assert "cli._reconcile" in loaded
    assert not loaded & {*HEAVY, "cli._worker", "cli._backfill"}, loaded & set(HEAVY)


def test_every_public_name_still_resolves() -> None:
    import dualwrite
    import dualwrite.capture
    import reconcile

    for package in (dualwrite, dualwrite.capture, reconcile):
        for name in package.__all__:
            assert getattr(package, name) is not None, (package.__name__, name)
    from dualwrite import ServiceCheck, check_kafka

    assert ServiceCheck.__module__ == "dualwrite.connectivity" and callable(check_kafka)
