"""What a batch reports about its own cost (the benchmark reads it), and the garbage collector
pause around scoring and writing: always undone, also when the scoring raises."""

import datetime as dt
import gc
import subprocess
import sys

import pytest

from scoring_pipeline.engine.batch import gc_paused, score_batch
from scoring_pipeline.store.batch_inputs import load_batch_inputs
from scoring_pipeline_tests.scenario import (
    DATE,
    batches,
    forget_night_keys,
    snapshots,
    users_in_two_currencies,
)


def test_gc_paused_restores_the_collector_even_on_error():
    assert gc.isenabled()
    with gc_paused():
        assert not gc.isenabled()
    assert gc.isenabled()
    with pytest.raises(RuntimeError), gc_paused():
        raise RuntimeError("scoring blew up")
    assert gc.isenabled()


def test_gc_paused_leaves_a_disabled_collector_disabled():
    gc.disable()
    try:
        with gc_paused():
            assert not gc.isenabled()
        assert not gc.isenabled()
    finally:
        gc.enable()


@pytest.mark.db
def test_batch_timings_count_evaluations_and_engine_time(world, dagster_instance):
    # Batches of 2 users; each user: US_TECH (AAA, BBB) × 3 rules + EU_IND (CCC, DDD) × 1 rule.
    users_in_two_currencies(world, 2)
    assert snapshots(dagster_instance).success
    with world.connect() as conn:
        day = dt.date.fromisoformat(DATE)
        output = score_batch(
            load_batch_inputs(conn, day, "b0000"),
            score_date=day,
            batch="b0000",
            job_correlation_id="j",
        )
    assert len(output.succeeded) == 2
    timings = output.timings
    assert timings["rule_evaluations"] == 2 * (2 * 3 + 2 * 1)
    assert set(timings) == {"load_ms", "engine_ms", "engine_cpu_ms", "build_ms", "rule_evaluations"}
    # CPU time of the engine's thread never exceeds its wall time (1 ms of rounding aside).
    assert 0 <= timings["engine_cpu_ms"] <= timings["engine_ms"] + 1
    assert gc.isenabled()


def test_a_run_worker_process_freezes_its_import_heap():
    """What each pre-forked Celery process does before its first run (in a process of its own:
    freezing this one would change every later test's collections)."""
    code = (
        "import gc\n"
        "from scoring_pipeline.runtime.celery_app import _warm_process\n"
        "assert gc.get_freeze_count() == 0\n"
        "_warm_process()\n"
        "import sys\n"
        "print(gc.get_freeze_count(), 'scoring_pipeline.definitions' in sys.modules)\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=120
    )
    frozen, imported = done.stdout.split()
    assert imported == "True"
    assert int(frozen) > 50_000  # Dagster and the code location: ~160,000 objects here


def _frames_scoring_or_writing() -> bool:
    frame = sys._getframe()
    while frame is not None:
        if frame.f_code.co_name in ("score_batch", "persist_batch"):
            return True
        frame = frame.f_back
    return False


@pytest.mark.db
def test_no_collection_runs_while_a_ranged_runs_batch_is_scored_or_written(
    world, dagster_instance, monkeypatch
):
    """The run's batches are scored and written with the cyclic collector paused: with a tiny
    collection threshold, collections do run during the run, but never with a batch's scoring
    or write on the stack (each would walk the batch's whole live output)."""
    monkeypatch.setenv("SCORING_BATCH_SIZE", "2")
    users_in_two_currencies(world, 4)
    forget_night_keys(dagster_instance)
    assert snapshots(dagster_instance).success
    collections: list[bool] = []  # per collection: was a batch scored or written then?

    def seen(phase: str, info: dict[str, int]) -> None:
        if phase == "start":
            collections.append(_frames_scoring_or_writing())

    thresholds = gc.get_threshold()
    gc.set_threshold(50)
    gc.callbacks.append(seen)
    try:
        result = batches(dagster_instance, "b0000", "b0001")
    finally:
        gc.callbacks.remove(seen)
        gc.set_threshold(*thresholds)
    assert result.success
    assert len(result.get_asset_materialization_events()) == 2
    assert len(collections) > 100  # the run itself collected, often
    assert not any(collections)
    assert gc.isenabled()
