"""The nightly example keeps dualwrite's exit code and alerts on everything but a clean run."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

from tests.conftest import REPO

SCRIPT = REPO / "examples" / "nightly" / "reconcile-nightly.sh"


@pytest.mark.parametrize(
    ("status", "alert"),
    [(0, None), (1, "DRIFT"), (2, "failed with exit 2"), (3, "INCOMPLETE")],
)
def test_nightly_script_passes_the_exit_code_through_and_alerts(
    tmp_path: Path, status: int, alert: str | None
) -> None:
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    fake = bin_dir / "dualwrite"  # stands in for the real command: records its arguments
    fake.write_text(
        "#!/bin/sh\n"
        f'echo "$@" > "{tmp_path}/args"\n'
        f'echo "reconcile shop: SUMMARY {status}"\n'
        f"exit {status}\n"
    )
    recorder = bin_dir / "alert"
    recorder.write_text(f'#!/bin/sh\necho "$@" >> "{tmp_path}/alerts"\n')
    for f in (fake, recorder):
        f.chmod(0o755)
    env = {
        **os.environ,
        "PATH": f"{bin_dir}:{os.environ['PATH']}",
        "REPORTS": str(tmp_path / "reports"),
        "ALERT": str(recorder),
    }
    done = subprocess.run([str(SCRIPT)], env=env, capture_output=True, text=True, check=False)
    assert done.returncode == status, done.stderr
    assert f"reconcile shop: SUMMARY {status}" in done.stdout
    args = (tmp_path / "args").read_text()
    assert args.startswith("reconcile migration.toml --quiet")
    assert "--artifact" in args and "--html" in args
    alerts = tmp_path / "alerts"
    if alert is None:
        assert not alerts.exists()
    else:
        assert alert in alerts.read_text()
