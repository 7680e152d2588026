"""What a command prints besides its own output: the project's warnings, one line each; and
the small helpers of its own lines (a progress line out at once, a counted noun)."""

import logging
import sys
from collections.abc import Iterator
from contextlib import contextmanager


class _Once(logging.Filter):
    """Each message once: every batch of a night warns of the same date's bad inputs (a NaN
    fundamental, say), and a command loads the market groups more than once (each load warns
    of the markets in no group)."""

    def __init__(self) -> None:
        super().__init__()
        self._seen: set[str] = set()

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        if message in self._seen:
            return False
        self._seen.add(message)
        return True


@contextmanager
def project_warnings_on_stderr() -> Iterator[None]:
    """The project's own warnings (a provider's retries, fallbacks and rejected values, the
    market groups' configuration; secrets already redacted) on stderr as `warning: …`, one
    line each and each once, for the whole command. Without it, a warning logged before a
    command installed its own handler went out bare through Python's last-resort handler, and
    again with `warning:` once it had. A night run in process keeps the runs' console logger
    quiet (`in_process._QUIET`): these lines are what it prints of the runs' warnings.

    They do not go on to the root logger: a library that logs through it (dagster-postgres'
    "Retrying failed database creation") has Python give it a stderr handler, which printed
    each of them a second time. Dagster's own handlers (`managed_python_loggers`) sit on the
    project's logger itself."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setLevel(logging.WARNING)
    handler.setFormatter(logging.Formatter("warning: %(message)s"))
    handler.addFilter(_Once())
    logger = logging.getLogger("scoring_pipeline")
    logger.addHandler(handler)
    propagated, logger.propagate = logger.propagate, False
    try:
        yield
    finally:
        logger.removeHandler(handler)
        logger.propagate = propagated


def say(line: str) -> None:
    """A progress line of a long command, out at once (its output may be a pipe or a log)."""
    print(line, flush=True)


def count_of(n: int, one: str, many: str) -> str:
    """`n` with its noun: "1 user", "13,850 users"."""
    return f"{n:,} {one if n == 1 else many}"
