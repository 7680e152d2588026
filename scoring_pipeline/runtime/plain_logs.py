"""Dagster's processes log through coloredlogs' formatter, which colours every line with ANSI
codes whatever the output is. Written to a file (the service logs, a supervisor's journal, a log
shipper), those codes clutter each line's timestamp and level for `grep`, `less` and parsers.

Each Dagster process the project starts therefore swaps that formatter for a plain one when its
output is not a terminal: the daemon (`runtime/daemon`), the webserver and the code server
(started through `main` below), and the run workers (`runtime/celery_app`). The code server's
own gRPC child process configures its logging apart, and keeps its colours (its few lines:
started, stopped).
"""

import logging
import sys
from importlib.metadata import entry_points
from typing import Any, Literal, TextIO

import coloredlogs


class PlainFormatter(logging.Formatter):
    """Dagster's log line (its format and date format) without colour: takes the coloured
    formatter's arguments and leaves out its styles."""

    def __init__(
        self,
        fmt: str | None = None,
        datefmt: str | None = None,
        style: Literal["%", "{", "$"] = "%",
        level_styles: Any = None,
        field_styles: Any = None,
    ) -> None:
        super().__init__(fmt, datefmt, style)


def plain_unless_a_terminal(stream: TextIO | None = None) -> bool:
    """Make the process's coloured log formatters plain unless `stream` (standard output) is a
    terminal; whether it did. To be called before Dagster configures its loggers."""
    stream = sys.stdout if stream is None else stream
    if stream.isatty():
        return False
    coloredlogs.ColoredFormatter = PlainFormatter
    return True


def main() -> None:
    """`python -m scoring_pipeline.runtime.plain_logs SCRIPT ARGS…`: the installed console
    script SCRIPT (`dagster`, `dagster-webserver`) with ARGS, its logs plain when not on a
    terminal."""
    name, *args = sys.argv[1:]
    (script,) = entry_points(group="console_scripts", name=name)
    plain_unless_a_terminal()
    sys.argv = [name, *args]
    sys.exit(script.load()())


if __name__ == "__main__":
    main()
