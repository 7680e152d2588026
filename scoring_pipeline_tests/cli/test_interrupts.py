import subprocess
import sys
import textwrap

# A command's work, run as `python -m scoring_pipeline.cli` is: its Ctrl-C (or SIGTERM) lands
# where `{where}` sends the signal to the command's own process.
_WORK = textwrap.dedent(
    """
    import signal, sys, time, weakref
    from scoring_pipeline.cli.interrupts import interrupt_on_sigterm

    class Thing:
        pass

    def send():
        signal.raise_signal(signal.SIG{name})

    interrupt_on_sigterm()
    thing = Thing()
    try:
        {where}
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:  # the command's work goes on
            time.sleep(0.001)
    except KeyboardInterrupt as interrupt:
        print("interrupted", *interrupt.args)
        raise SystemExit(130)
    print("not interrupted")
    """
)
# The garbage collector runs a weakref callback (SQLAlchemy has some) as an object goes.
IN_A_WEAKREF_CALLBACK = "ref = weakref.ref(thing, lambda _: send()); del thing"
# dataclasses make a class's methods with exec() of their source while a module is imported.
IN_CODE_RUN_FROM_A_STRING = 'exec("send()")'


def _work_interrupted(tmp_path, where: str, name: str) -> subprocess.CompletedProcess[str]:
    (tmp_path / "work.py").write_text(_WORK.format(where=where, name=name))
    return subprocess.run(
        [sys.executable, "-m", "work"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=60,
    )


def test_ctrl_c_landing_in_a_weakref_callback_still_stops_the_command(tmp_path):
    # Raised inside the callback, the interrupt cannot propagate: Python printed "Exception
    # ignored in …" and its traceback, and the command went on to its end (seen as a
    # `demo-data` that ran on after Ctrl-C).
    done = _work_interrupted(tmp_path, IN_A_WEAKREF_CALLBACK, "INT")
    assert (done.returncode, done.stdout, done.stderr) == (130, "interrupted\n", "")


def test_sigterm_landing_in_a_weakref_callback_still_stops_the_command(tmp_path):
    done = _work_interrupted(tmp_path, IN_A_WEAKREF_CALLBACK, "TERM")
    assert (done.returncode, done.stdout, done.stderr) == (130, "interrupted signal 15\n", "")


def test_ctrl_c_landing_in_code_run_from_a_string_exits_130(tmp_path):
    # Raised there, the interrupt left exec(), and CPython then ended `python -m` by SIGINT
    # after the command had caught it and returned 130: status -2 (seen in CI, `demo-data`
    # interrupted while it imported a module of dataclasses).
    done = _work_interrupted(tmp_path, IN_CODE_RUN_FROM_A_STRING, "INT")
    assert (done.returncode, done.stdout, done.stderr) == (130, "interrupted\n", "")
