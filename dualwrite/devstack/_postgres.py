"""The local PostgreSQL 15 cluster: initdb into a scratch folder, start, stop, inspect.

PostgreSQL refuses to run as root, so when this process is root every server command runs
as the ``postgres`` system user (``runuser``), and the cluster lives in a folder that user can
reach: the state folder when it can, else a folder under the system temp dir whose path is
recorded in the state folder.
"""

from __future__ import annotations

import hashlib
import os
import pwd
import shutil
import subprocess
import tempfile
import time
from pathlib import Path

import psycopg

from dualwrite.devstack._procs import alive, port_in_use, read_pid, tail, write_pid
from dualwrite.devstack._settings import DevStackSettings
from dualwrite.errors import DevStackError

DATABASES = ("source", "target")
_SERVER_MARKER = "postgres"


class LocalPostgres:
    """One local cluster. Not thread-safe; one ``dualwrite dev`` command drives it at a time."""

    def __init__(self, settings: DevStackSettings) -> None:
        self.settings = settings
        self.pid_file = settings.state_dir / "postgres.pid"
        self._location_file = settings.state_dir / "postgres.location"

    # --- paths ---------------------------------------------------------------------------

    @property
    def home(self) -> Path:
        """Folder holding ``data/`` and ``postgres.log``."""
        if self._location_file.exists():
            return Path(self._location_file.read_text().strip())
        return self.settings.state_dir / "postgres"

    @property
    def log_file(self) -> Path:
        return self.home / "postgres.log"

    @property
    def data_dir(self) -> Path:
        return self.home / "data"

    # --- state ---------------------------------------------------------------------------

    def running_pid(self) -> int | None:
        pid = read_pid(self.pid_file)
        return pid if pid is not None and alive(pid, _SERVER_MARKER) else None

    def check_prerequisites(self) -> None:
        for tool in ("initdb", "pg_ctl", "postgres"):
            if not (self.settings.pg_bin / tool).exists():
                raise DevStackError(
                    f"PostgreSQL server binaries not found: {self.settings.pg_bin / tool} is missing. "
                    "Install PostgreSQL 15 (Debian: apt-get install postgresql-15) or set "
                    "DUALWRITE_PG_BIN to the folder holding initdb and pg_ctl."
                )
        if os.geteuid() == 0:
            try:
                pwd.getpwnam("postgres")
            except KeyError:
                raise DevStackError(
                    "running as root, and PostgreSQL refuses root: a 'postgres' system user is "
                    "needed to run the server (it comes with Debian's postgresql package)"
                ) from None

    def check_port(self) -> None:
        if port_in_use(self.settings.pg_port):
            raise DevStackError(
                f"port {self.settings.pg_port} on 127.0.0.1 is already taken by another process; "
                "stop it or choose another port with DUALWRITE_PG_PORT"
            )

    # --- lifecycle -----------------------------------------------------------------------

    def start(self) -> int:
        """Initialise the cluster if needed, start it, create the databases; return the pid."""
        if not (self.data_dir / "PG_VERSION").exists():
            self._initdb()
        logfile = self.log_file
        result = self._run_as_server_user(
            [
                str(self.settings.pg_bin / "pg_ctl"),
                "-D",
                str(self.data_dir),
                "-l",
                str(logfile),
                "-w",
                "-t",
                str(int(self.settings.start_timeout_s)),
                "-o",
                f"-p {self.settings.pg_port} -k {self.home}",
                "start",
            ]
        )
        if result.returncode != 0:
            raise DevStackError(
                f"PostgreSQL did not start (pg_ctl exit {result.returncode}): "
                f"{result.stdout.strip()} {result.stderr.strip()}".strip(),
                log_tail=tail(logfile),
            )
        pid = read_pid(self.data_dir / "postmaster.pid")
        if pid is None:
            self._pg_ctl_stop()
            raise DevStackError("PostgreSQL started but wrote no postmaster.pid", tail(logfile))
        write_pid(self.pid_file, pid)
        try:
            self._create_databases()
        except BaseException:
            self.stop()
            raise
        return pid

    def stop(self) -> bool:
        """Stop the cluster if this tool started it; True when something was stopped."""
        pid = self.running_pid()
        if pid is None:
            self.pid_file.unlink(missing_ok=True)
            return False
        result = self._pg_ctl_stop()
        if result.returncode != 0:
            raise DevStackError(
                f"pg_ctl stop failed (exit {result.returncode}): {result.stderr.strip()}",
                log_tail=tail(self.log_file),
            )
        self.pid_file.unlink(missing_ok=True)
        return True

    def _pg_ctl_stop(self) -> subprocess.CompletedProcess[str]:
        return self._run_as_server_user(
            [
                str(self.settings.pg_bin / "pg_ctl"),
                "-D",
                str(self.data_dir),
                "-m",
                "fast",
                "-w",
                "stop",
            ]
        )

    def wipe(self) -> None:
        """Delete the cluster's files (the server must be stopped)."""
        shutil.rmtree(self.home, ignore_errors=True)
        self._location_file.unlink(missing_ok=True)

    def probe(self, timeout_s: float = 3.0) -> str | None:
        """None when both databases answer ``SELECT 1``; else the error text."""
        for database in DATABASES:
            try:
                with psycopg.connect(
                    self._libpq_url(database), connect_timeout=max(1, int(timeout_s))
                ) as conn:
                    conn.execute("SELECT 1")
            except psycopg.Error as exc:
                return f"{database}: {str(exc).strip()}"
        return None

    # --- internals -----------------------------------------------------------------------

    def _initdb(self) -> None:
        home = self._choose_home()
        home.mkdir(parents=True, exist_ok=True)
        pwfile = home / "pwfile"
        pwfile.write_text(self.settings.pg_password + "\n")
        self._chown_to_server_user(home)
        try:
            result = self._run_as_server_user(
                [
                    str(self.settings.pg_bin / "initdb"),
                    "-D",
                    str(home / "data"),
                    "-U",
                    self.settings.pg_user,
                    f"--pwfile={pwfile}",
                    "--auth-host=scram-sha-256",
                    "--auth-local=trust",
                    "-E",
                    "UTF8",
                    "--locale=C",
                ]
            )
        finally:
            pwfile.unlink(missing_ok=True)
        if result.returncode != 0:
            shutil.rmtree(home / "data", ignore_errors=True)
            raise DevStackError(
                f"initdb failed (exit {result.returncode}): {result.stderr.strip()[-2000:]}"
            )
        conf = home / "data" / "postgresql.conf"
        with conf.open("a") as fh:
            fh.write(
                "\n# --- dualwrite dev stack ---\n"
                "listen_addresses = '127.0.0.1'\n"
                "wal_level = logical\n"
                "max_wal_senders = 10\n"
                "max_replication_slots = 10\n"
                "max_connections = 200\n"
                "shared_buffers = 256MB\n"
                "max_wal_size = 2GB\n"
                "timezone = 'UTC'\n"
            )

    def _choose_home(self) -> Path:
        preferred = self.settings.state_dir / "postgres"
        self.settings.state_dir.mkdir(parents=True, exist_ok=True)
        if os.geteuid() != 0 or self._server_user_can_reach(self.settings.state_dir):
            self._location_file.unlink(missing_ok=True)
            return preferred
        # The state folder sits under a folder the postgres user cannot enter (a mktemp -d
        # checkout, say): keep the cluster under the temp dir instead, recorded for later calls.
        digest = hashlib.sha256(str(self.settings.state_dir).encode()).hexdigest()[:12]
        fallback = Path(tempfile.gettempdir()) / f"dualwrite-pg-{digest}"
        self._location_file.write_text(f"{fallback}\n")
        return fallback

    def _server_user_can_reach(self, folder: Path) -> bool:
        probe = subprocess.run(
            ["runuser", "-u", "postgres", "--", "test", "-x", str(folder)],
            capture_output=True,
            check=False,
        )
        return probe.returncode == 0

    def _chown_to_server_user(self, folder: Path) -> None:
        if os.geteuid() != 0:
            return
        entry = pwd.getpwnam("postgres")
        os.chown(folder, entry.pw_uid, entry.pw_gid)
        os.chmod(folder, 0o700)
        for child in folder.iterdir():
            os.chown(child, entry.pw_uid, entry.pw_gid)

    def _run_as_server_user(self, argv: list[str]) -> subprocess.CompletedProcess[str]:
        if os.geteuid() == 0:
            argv = ["runuser", "-u", "postgres", "--", *argv]
        return subprocess.run(
            argv, capture_output=True, text=True, check=False, stdin=subprocess.DEVNULL
        )

    def _libpq_url(self, database: str) -> str:
        s = self.settings
        return f"postgresql://{s.pg_user}:{s.pg_password}@127.0.0.1:{s.pg_port}/{database}"

    def _create_databases(self) -> None:
        deadline = time.monotonic() + 30
        while True:
            try:
                with psycopg.connect(
                    self._libpq_url("postgres"), autocommit=True, connect_timeout=5
                ) as conn:
                    existing = {
                        row[0] for row in conn.execute("SELECT datname FROM pg_database").fetchall()
                    }
                    for database in DATABASES:
                        if database not in existing:
                            conn.execute(f'CREATE DATABASE "{database}"')
                return
            except psycopg.OperationalError as exc:
                if time.monotonic() > deadline:
                    raise DevStackError(
                        f"PostgreSQL started but does not accept connections: {exc}",
                        log_tail=tail(self.log_file),
                    ) from None
                time.sleep(0.5)
