"""The local Apache Kafka broker: one KRaft node (broker + controller) started with ``java``.

The broker's jars come from Maven Central through ``pom.xml`` beside this module, copied by
``mvn dependency:copy-dependencies`` into a cache folder that later runs reuse. Ready means a
metadata round trip through kafka-python succeeded, not merely an open port.
"""

from __future__ import annotations

import base64
import shutil
import subprocess
import time
import uuid
from collections.abc import Callable
from pathlib import Path

from dualwrite.devstack._procs import alive, port_in_use, read_pid, tail, terminate, write_pid
from dualwrite.devstack._settings import POM_PATH, DevStackSettings
from dualwrite.errors import DevStackError, ServiceUnavailableError
from dualwrite.kafka_io import probe_cluster

_SERVER_MARKER = "kafka.Kafka"
_COMPLETE = ".complete"


class LocalKafka:
    """One local broker. Not thread-safe; one ``dualwrite dev`` command drives it at a time."""

    def __init__(self, settings: DevStackSettings) -> None:
        self.settings = settings
        self.home = settings.state_dir / "kafka"
        self.pid_file = settings.state_dir / "kafka.pid"

    @property
    def libs_dir(self) -> Path:
        return self.settings.cache_dir / f"kafka-{self.settings.kafka_version}"

    @property
    def log_file(self) -> Path:
        return self.home / "server.log"

    @property
    def console_file(self) -> Path:
        return self.home / "kafka.out"

    def running_pid(self) -> int | None:
        pid = read_pid(self.pid_file)
        return pid if pid is not None and alive(pid, _SERVER_MARKER) else None

    def libs_cached(self) -> bool:
        return (self.libs_dir / _COMPLETE).exists()

    def check_prerequisites(self) -> None:
        if shutil.which("java") is None:
            raise DevStackError(
                "Java is not installed (no 'java' on PATH); the Kafka broker needs Java 17 or "
                "newer (Debian: apt-get install openjdk-17-jre-headless)"
            )
        if not self.libs_cached() and shutil.which("mvn") is None:
            raise DevStackError(
                "Maven is not installed (no 'mvn' on PATH) and the Kafka jars are not cached in "
                f"{self.libs_dir}; install Maven (Debian: apt-get install maven)"
            )

    def check_ports(self) -> None:
        for var, port in (
            ("DUALWRITE_KAFKA_PORT", self.settings.kafka_port),
            ("DUALWRITE_KAFKA_CONTROLLER_PORT", self.settings.kafka_controller_port),
        ):
            if port_in_use(port):
                raise DevStackError(
                    f"port {port} on 127.0.0.1 is already taken by another process; "
                    f"stop it or choose another port with {var}"
                )

    def fetch_libs(self) -> bool:
        """Copy the broker's jars from Maven Central into the cache; False when already there."""
        if self.libs_cached():
            return False
        staging = self.libs_dir.with_name(self.libs_dir.name + ".partial")
        shutil.rmtree(staging, ignore_errors=True)
        staging.parent.mkdir(parents=True, exist_ok=True)
        result = subprocess.run(
            [
                "mvn",
                "-B",
                "-q",
                "-f",
                str(POM_PATH),
                f"-Dmaven.repo.local={self.settings.cache_dir / 'm2'}",
                "dependency:copy-dependencies",
                f"-DoutputDirectory={staging}",
            ],
            capture_output=True,
            text=True,
            check=False,
            stdin=subprocess.DEVNULL,
        )
        if result.returncode != 0 or not any(staging.glob("kafka_2.13-*.jar")):
            output = "\n".join((result.stdout + result.stderr).splitlines()[-25:])
            shutil.rmtree(staging, ignore_errors=True)
            raise DevStackError(
                f"downloading the Kafka broker jars with Maven failed (exit {result.returncode}); "
                "check access to Maven Central (or a mirror in ~/.m2/settings.xml)",
                log_tail=output,
            )
        (staging / _COMPLETE).write_text("ok\n")
        shutil.rmtree(self.libs_dir, ignore_errors=True)
        staging.rename(self.libs_dir)
        return True

    def start(self) -> int:
        """Format storage if needed, start the broker, wait until it answers metadata."""
        self.fetch_libs()
        self._write_config()
        data_dir = self.home / "data"
        if not (data_dir / "meta.properties").exists():
            self._format(data_dir)
        console = self.console_file.open("ab")
        try:
            proc = subprocess.Popen(
                [
                    "java",
                    f"-Xmx{self.settings.kafka_heap_mb}m",
                    f"-Xms{min(256, self.settings.kafka_heap_mb)}m",
                    "-XX:+UseG1GC",
                    "-XX:+ExitOnOutOfMemoryError",
                    "-Djava.awt.headless=true",
                    f"-Dlog4j2.configurationFile={self.home / 'log4j2.properties'}",
                    "-cp",
                    f"{self.libs_dir}/*",
                    "kafka.Kafka",
                    str(self.home / "server.properties"),
                ],
                stdout=console,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                start_new_session=True,
            )
        finally:
            console.close()
        write_pid(self.pid_file, proc.pid)
        try:
            self._wait_ready(proc)
        except BaseException:
            terminate(proc.pid, timeout_s=10)
            self.pid_file.unlink(missing_ok=True)
            raise
        return proc.pid

    def stop(self) -> bool:
        """Stop the broker if this tool started it; True when something was stopped."""
        pid = self.running_pid()
        if pid is None:
            self.pid_file.unlink(missing_ok=True)
            return False
        terminate(pid, timeout_s=30)
        self.pid_file.unlink(missing_ok=True)
        return True

    def wipe(self) -> None:
        shutil.rmtree(self.home, ignore_errors=True)

    def probe(self, timeout_s: float = 3.0) -> str | None:
        """None when a metadata round trip succeeds; else the error text."""
        try:
            probe_cluster([self.settings.kafka_bootstrap], timeout_s=timeout_s)
        except ServiceUnavailableError as exc:
            return str(exc)
        return None

    # --- internals -----------------------------------------------------------------------

    def _write_config(self) -> None:
        s = self.settings
        self.home.mkdir(parents=True, exist_ok=True)
        (self.home / "server.properties").write_text(
            "# written by `dualwrite dev up`; single-node KRaft, broker and controller in one JVM\n"
            "process.roles=broker,controller\n"
            "node.id=1\n"
            f"controller.quorum.voters=1@127.0.0.1:{s.kafka_controller_port}\n"
            f"listeners=PLAINTEXT://127.0.0.1:{s.kafka_port},CONTROLLER://127.0.0.1:{s.kafka_controller_port}\n"
            f"advertised.listeners=PLAINTEXT://127.0.0.1:{s.kafka_port}\n"
            "controller.listener.names=CONTROLLER\n"
            "listener.security.protocol.map=PLAINTEXT:PLAINTEXT,CONTROLLER:PLAINTEXT\n"
            "inter.broker.listener.name=PLAINTEXT\n"
            f"log.dirs={self.home / 'data'}\n"
            "num.partitions=1\n"
            "default.replication.factor=1\n"
            "min.insync.replicas=1\n"
            "offsets.topic.replication.factor=1\n"
            "offsets.topic.num.partitions=1\n"
            "transaction.state.log.replication.factor=1\n"
            "transaction.state.log.min.isr=1\n"
            "transaction.state.log.num.partitions=1\n"
            "share.coordinator.state.topic.replication.factor=1\n"
            "share.coordinator.state.topic.min.isr=1\n"
            "group.initial.rebalance.delay.ms=0\n"
            "auto.create.topics.enable=false\n"
            "delete.topic.enable=true\n"
            "log.retention.hours=168\n"
        )
        (self.home / "log4j2.properties").write_text(
            "status = warn\n"
            "appender.file.type = File\n"
            "appender.file.name = FILE\n"
            f"appender.file.fileName = {self.log_file}\n"
            "appender.file.layout.type = PatternLayout\n"
            "appender.file.layout.pattern = [%d] %p %m (%c)%n\n"
            "rootLogger.level = INFO\n"
            "rootLogger.appenderRef.file.ref = FILE\n"
            "logger.kafka.name = kafka\n"
            "logger.kafka.level = INFO\n"
            "logger.state.name = state.change.logger\n"
            "logger.state.level = WARN\n"
        )

    def _format(self, data_dir: Path) -> None:
        cluster_id = new_cluster_id()
        result = subprocess.run(
            [
                "java",
                f"-Dlog4j2.configurationFile={self.home / 'log4j2.properties'}",
                "-cp",
                f"{self.libs_dir}/*",
                "kafka.tools.StorageTool",
                "format",
                f"--cluster-id={cluster_id}",
                "-c",
                str(self.home / "server.properties"),
            ],
            capture_output=True,
            text=True,
            check=False,
            stdin=subprocess.DEVNULL,
        )
        if result.returncode != 0:
            shutil.rmtree(data_dir, ignore_errors=True)
            raise DevStackError(
                f"formatting Kafka storage failed (exit {result.returncode})",
                log_tail="\n".join((result.stdout + result.stderr).splitlines()[-25:]),
            )

    def _wait_ready(self, proc: subprocess.Popen[bytes]) -> None:
        deadline = time.monotonic() + self.settings.start_timeout_s
        last_error = "no answer yet"
        while time.monotonic() < deadline:
            code = proc.poll()
            if code is not None:
                raise DevStackError(
                    f"the Kafka broker exited during start-up (exit code {code})",
                    log_tail=tail(self.log_file) + "\n" + tail(self.console_file, 10),
                )
            if port_in_use(self.settings.kafka_port):
                error = self.probe(timeout_s=3.0)
                if error is None:
                    return
                last_error = error
            time.sleep(0.3)
        raise DevStackError(
            f"the Kafka broker did not become ready within {self.settings.start_timeout_s:.0f}s "
            f"({last_error})",
            log_tail=tail(self.log_file),
        )


def new_cluster_id(random_bytes: Callable[[], bytes] = lambda: uuid.uuid4().bytes) -> str:
    """A KRaft cluster id: 16 random bytes in URL-safe base64, never starting with '-'.

    Kafka's own ``Uuid.randomUuid`` redraws ids that start with a dash because command
    lines would read them as options; one draw in 64 does.
    """
    while True:
        cluster_id = base64.urlsafe_b64encode(random_bytes()).decode().rstrip("=")
        if not cluster_id.startswith("-"):
            return cluster_id
