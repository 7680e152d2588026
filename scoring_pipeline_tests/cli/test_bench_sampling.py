"""The benchmark's process sampler: what it counts of the processes it watches."""

import os
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager

from scoring_pipeline.cli.bench.sampling import RssSampler

# A child that burns half a second of its own CPU at once, says so, then idles until killed.
# The comment puts "celery" on its command line: the sampler's kind for a pool child. `/proc`
# counts CPU in clock ticks, so the sampler may read a little less than was burnt.
BURNER = """
import time
while time.process_time() < 0.5:
    pass
print("burnt", flush=True)
time.sleep(60)
# celery
"""


@contextmanager
def burnt_child() -> Iterator[subprocess.Popen[str]]:
    """A child of this process, once it has burnt its CPU; killed on leaving."""
    with subprocess.Popen([sys.executable, "-c", BURNER], stdout=subprocess.PIPE, text=True) as c:
        try:
            assert c.stdout is not None and c.stdout.readline() == "burnt\n"
            yield c
        finally:
            c.kill()


def _wait_for(predicate: Callable[[], bool], timeout: float = 20.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.05)
    return predicate()


def test_a_process_started_during_sampling_counts_all_its_cpu():
    """A process that starts and burns its CPU between two refreshes of the watched processes
    (a PostgreSQL backend opened for one connection) counts all of it, not only what it used
    after it was first seen; its kind comes from its command line."""
    with RssSampler([os.getpid()], interval=0.05, refresh=2.0) as sampler:
        # The first refresh is over (it watches this process) before the child starts, so the
        # child is first seen by a later one, its CPU already burnt. Started within a second of
        # the sampler, it also checks the two clocks agree (psutil dates processes from the boot
        # time in whole seconds: against the wall clock it looked older than the sampler).
        assert _wait_for(lambda: os.getpid() in sampler._watched)
        with burnt_child():
            counted = _wait_for(lambda: sampler.cpu_seconds.get("celery run worker", 0.0) >= 0.45)
            assert counted, sampler.cpu_seconds
            assert sampler.peaks["celery run worker"] > 0
    # The root (this test's process) is watched too, under its own kind.
    assert "other" in sampler.peaks


def test_processes_that_ran_before_sampling_count_only_what_they_use_during_it():
    with burnt_child() as child:
        with RssSampler([os.getpid()], interval=0.05, refresh=0.2) as sampler:
            assert _wait_for(lambda: child.pid in sampler._cpu)
            time.sleep(0.3)  # a few samples of an idle process
        kind, first, last = sampler._cpu[child.pid]
    assert kind == "celery run worker"
    assert first >= 0.45  # its burn, before the sampler started, is its reading at start
    assert last - first < 0.1  # idle meanwhile
