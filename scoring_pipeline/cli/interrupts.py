"""Ctrl-C and SIGTERM stop a command as KeyboardInterrupt, wherever in its work they land."""

import logging
import signal
import sys
import threading
import time
from types import FrameType
from typing import Any

# How long the re-delivered interrupt waits: the weakref callback or finaliser that could not
# raise it has returned by then (and should it not have, the interrupt is re-delivered again).
_REDELIVERY_DELAY_S = 0.01


def _args(signum: int) -> tuple[str, ...]:
    """The interrupt's message: none for Ctrl-C, "signal 15" for SIGTERM."""
    return () if signum == signal.SIGINT else (f"signal {signum}",)


def _run_from_a_string(frame: FrameType | None) -> bool:
    """Whether the main thread runs the module-level code of an exec() or eval() of a string
    (file "<string>", code "<module>"): dataclasses and namedtuple make their methods so while
    modules are imported. A KeyboardInterrupt that leaves such an exec() sets a flag in CPython
    3.11 that makes `python -m …` end by SIGINT after the command has caught it, printed
    "interrupted" and returned 130: the status was -2, at random, as the interrupt landed there
    or not. A function that exec() defined and that runs later (alembic's `op.execute`) is not
    such code; nor is `python -c`'s own, with nothing under it."""
    while frame is not None:
        code = frame.f_code
        if code.co_filename == "<string>" and code.co_name == "<module>" and frame.f_back:
            return True
        frame = frame.f_back
    return False


class _Interrupts:
    """The signal handlers and the unraisable hook that make one Ctrl-C one KeyboardInterrupt.

    Python runs a signal's handler wherever the main thread is, inside a weakref callback or a
    finaliser too (the garbage collector runs them wherever an object is allocated, SQLAlchemy's
    among them). Raised there, the interrupt cannot propagate: Python printed "Exception ignored
    in …" with a traceback, and the command went on to its end as if no Ctrl-C had come. Here
    the hook sees such an interrupt and delivers it again a moment later, once the callback has
    returned. An interrupt landing in code run from a string is delivered again so too."""

    def __init__(self) -> None:
        self.previous_hook = sys.unraisablehook
        self.in_hook = False
        self.raised = False

    def handler(self, signum: int, frame: FrameType | None) -> None:
        # Raised in the hook, the hook would fail and the interrupt be lost again; raised in
        # code run from a string, CPython ends the process by SIGINT (`_run_from_a_string`).
        if self.in_hook or _run_from_a_string(frame):
            self.redeliver(signum)
            return
        self.raised = True
        # KeyboardInterrupt itself: uncaught (`--debug`), it ends the process as SIGINT would.
        raise KeyboardInterrupt(*_args(signum))

    def unraisable(self, unraisable: Any) -> None:
        if not isinstance(unraisable.exc_value, KeyboardInterrupt):
            self.previous_hook(unraisable)
            return
        self.in_hook = True
        try:
            term = unraisable.exc_value.args == _args(signal.SIGTERM)
            self.redeliver(signal.SIGTERM if term else signal.SIGINT)
        finally:
            self.in_hook = False

    def redeliver(self, signum: int) -> None:
        """The signal again, to the main thread, in a moment: a signal, so that a system call
        the main thread waits in (a statement waiting on a lock) is interrupted too."""
        main = threading.main_thread().ident
        assert main is not None

        def later() -> None:
            time.sleep(_REDELIVERY_DELAY_S)
            signal.pthread_kill(main, signum)

        threading.Thread(target=later, name="interrupt-redelivery", daemon=True).start()

    def after_an_interrupt(self, record: logging.LogRecord) -> bool:
        """A logging filter for psycopg: once the interrupt is raised, its warnings about the
        connection it left mid-statement ("error ignored in rollback … another command is
        already in progress") are not the operator's business: the server rolls back the
        transaction as the connection closes, and the command says "interrupted"."""
        return not self.raised


def interrupt_on_sigterm() -> None:
    """A supervisor (systemd, Kubernetes, `timeout`) stops a command with SIGTERM: raise
    KeyboardInterrupt, as Ctrl-C does, so the services it started are stopped on the way out
    instead of left running without it. SIGINT too, even when the command started with it
    ignored: a shell starts a background command (`… services &`) so, and `kill -INT` of it
    then did nothing. An interrupt that lands where Python cannot raise it well is raised
    again just after (`_Interrupts`)."""
    interrupts = _Interrupts()
    sys.unraisablehook = interrupts.unraisable
    logging.getLogger("psycopg").addFilter(interrupts.after_an_interrupt)
    signal.signal(signal.SIGTERM, interrupts.handler)
    signal.signal(signal.SIGINT, interrupts.handler)
