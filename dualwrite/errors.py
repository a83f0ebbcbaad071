"""The exception hierarchy of the write path.

Every error the library raises on purpose derives from :class:`DualwriteError`, so a caller
(the CLI above all) can tell an expected failure, which it reports with its evidence, from a
bug. Errors carry the evidence as attributes, and their messages never contain a secret.
"""

from __future__ import annotations


class DualwriteError(Exception):
    """Root of every error raised on purpose by the ``dualwrite`` package."""


class ConfigError(DualwriteError):
    """A migration file is missing, unreadable or invalid.

    ``path`` is the file, ``key`` the dotted key at fault (``None`` when the file as a whole
    is at fault) and ``problem`` a sentence saying what is wrong.
    """

    def __init__(self, path: str, key: str | None, problem: str) -> None:
        self.path = path
        self.key = key
        self.problem = problem
        where = f"{path}: {key}" if key else path
        super().__init__(f"{where}: {problem}")


class ServiceUnavailableError(DualwriteError):
    """A database or Kafka broker could not be reached; the message names which (redacted)."""


class DevStackError(DualwriteError):
    """The local development services could not be started, stopped or inspected.

    ``log_tail`` holds the last lines of the failing service's log, when there is one.
    """

    def __init__(self, message: str, log_tail: str | None = None) -> None:
        self.log_tail = log_tail
        full = message if not log_tail else f"{message}\n--- last log lines ---\n{log_tail}"
        super().__init__(full)
