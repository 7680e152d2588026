import subprocess
import sys
import textwrap

# A command's work, run as `python -m scoring_pipeline.cli` is: its Ctrl-C (or SIGTERM) lands
# where `{where}` sends the signal to the command's own process; then it waits on a pipe that
# never answers, as a statement waits on a lock in the server (only a signal wakes it).
_WORK = textwrap.dedent(
    """
    import os, signal, sys, weakref
    from scoring_pipeline.cli.interrupts import interrupt_on_sigterm

    class Thing:
        pass

    def send():
        signal.raise_signal(signal.SIG{name})

    interrupt_on_sigterm()
    thing = Thing()
    silent, _ = os.pipe()
    try:
        {where}
        os.read(silent, 1)  # the command's work goes on
    except KeyboardInterrupt as interrupt:
        print("interrupted", *interrupt.args)
        raise SystemExit(130)
    """
)
# The garbage collector runs a weakref callback (SQLAlchemy has some) as an object goes.
IN_A_WEAKREF_CALLBACK = "ref = weakref.ref(thing, lambda _: send()); del thing"
# dataclasses make a class's methods with exec() of their source while a module is imported.
IN_CODE_RUN_FROM_A_STRING = 'exec("send()")'
# alembic makes `op.execute` and the like with exec(); a migration's statement runs in them.
IN_A_FUNCTION_MADE_BY_EXEC = (
    'made = {}; exec("def execute(): send(); os.read(silent, 1)", globals(), made); '
    'made["execute"](); print("went on")'
)


# What the work prints and its status, stopped by Ctrl-C and by SIGTERM.
INTERRUPTED = (130, "interrupted\n", "")
TERMINATED = (130, "interrupted signal 15\n", "")


def _run_as_module(tmp_path, source: str) -> tuple[int, str, str]:
    """`python -m work` of `source`: its status, stdout and stderr. One that the interrupt
    never stops waits on: that is a failure, at 60 s."""
    (tmp_path / "work.py").write_text(source)
    done = subprocess.run(
        [sys.executable, "-m", "work"], cwd=tmp_path, capture_output=True, text=True, timeout=60
    )
    return done.returncode, done.stdout, done.stderr


def _work_interrupted(tmp_path, where: str, name: str) -> tuple[int, str, str]:
    return _run_as_module(tmp_path, _WORK.format(where=where, name=name))


def test_ctrl_c_landing_in_a_weakref_callback_still_stops_the_command(tmp_path):
    # Raised inside the callback, the interrupt cannot propagate: Python printed "Exception
    # ignored in …" and its traceback, and the command went on to its end (seen as a
    # `demo-data` that ran on after Ctrl-C).
    assert _work_interrupted(tmp_path, IN_A_WEAKREF_CALLBACK, "INT") == INTERRUPTED


def test_sigterm_landing_in_a_weakref_callback_still_stops_the_command(tmp_path):
    assert _work_interrupted(tmp_path, IN_A_WEAKREF_CALLBACK, "TERM") == TERMINATED


def test_ctrl_c_landing_in_code_run_from_a_string_exits_130(tmp_path):
    # Raised there, the interrupt left exec(), and CPython then ended `python -m` by SIGINT
    # after the command had caught it and returned 130: status -2 (seen in CI, `demo-data`
    # interrupted while it imported a module of dataclasses).
    assert _work_interrupted(tmp_path, IN_CODE_RUN_FROM_A_STRING, "INT") == INTERRUPTED


def test_sigterm_landing_in_a_function_made_by_exec_stops_it_there(tmp_path):
    # Such a function is not code run from a string: the interrupt is raised in it at once,
    # and its wait ends (a first try held the interrupt back there: `migrate` under SIGTERM
    # waited on its statement's lock for good).
    assert _work_interrupted(tmp_path, IN_A_FUNCTION_MADE_BY_EXEC, "TERM") == TERMINATED


def test_psycopgs_warnings_about_the_connection_an_interrupt_left_are_not_printed(tmp_path):
    # Ctrl-C between psycopg's sending a statement and its reading the answer left the
    # connection busy, and the transaction's rollback on the way out printed "error ignored in
    # rollback of <psycopg.Transaction …>: sending query failed: another command is already in
    # progress" above "scoring-pipeline: interrupted" (seen in CI). Before an interrupt its
    # warnings are printed as ever.
    source = textwrap.dedent(
        """
        import logging, signal
        from scoring_pipeline.cli.interrupts import interrupt_on_sigterm

        interrupt_on_sigterm()
        psycopg = logging.getLogger("psycopg")
        psycopg.warning("a warning before")
        try:
            signal.raise_signal(signal.SIGINT)
        except KeyboardInterrupt:
            psycopg.warning("error ignored in rollback: another command is in progress")
            print("interrupted")
        """
    )
    assert _run_as_module(tmp_path, source) == (0, "interrupted\n", "a warning before\n")
