"""A batch's scoring turn: a second run that reaches a batch another run is scoring waits until
that run has written it (and lets go), and other batches do not wait."""

import datetime as dt
import threading
import time

import pytest

from scoring_pipeline.store.scoring_turn import scoring_turn

pytestmark = pytest.mark.db

DAY = dt.date(2026, 11, 27)


def test_a_second_run_waits_for_the_batchs_turn_and_other_batches_do_not(world):
    held = threading.Event()
    release = threading.Event()

    def first() -> None:
        with scoring_turn(world, DAY, "all", "b0001"):
            held.set()
            release.wait(10)

    thread = threading.Thread(target=first)
    thread.start()
    assert held.wait(10)
    started = time.monotonic()
    with scoring_turn(world, DAY, "all", "b0002"), scoring_turn(world, DAY, "us", "b0001"):
        pass  # another batch, another group's batch of the same key: no wait
    assert time.monotonic() - started < 0.5

    waited: list[float] = []

    def second() -> None:
        began = time.monotonic()
        with scoring_turn(world, DAY, "all", "b0001"):
            waited.append(time.monotonic() - began)

    waiter = threading.Thread(target=second)
    waiter.start()
    time.sleep(0.6)
    assert not waited  # still waiting while the first holds the turn
    release.set()
    thread.join(10)
    waiter.join(10)
    assert waited and waited[0] >= 0.5
    # Let go after the block: taken again at once.
    started = time.monotonic()
    with scoring_turn(world, DAY, "all", "b0001"):
        pass
    assert time.monotonic() - started < 0.5
