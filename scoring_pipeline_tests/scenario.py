"""A small two-market world for the database-backed tests, and helpers to run a night in it."""

import dagster as dg
import pytest
import sqlalchemy as sa

from scoring_pipeline.defs.assets.active_users import active_users
from scoring_pipeline.defs.assets.exchange_rates import exchange_rates
from scoring_pipeline.defs.assets.prices import prices
from scoring_pipeline.defs.assets.scores import scores
from scoring_pipeline.defs.checks import scores_invariants
from scoring_pipeline.defs.deployment import build_resources
from scoring_pipeline.defs.market_groups.group import DEFAULT_GROUP, DEFAULT_GROUPS
from scoring_pipeline.defs.partitions import (
    SCORES_PARTITIONS_NAME,
    remove_night_partitions,
    scores_partition_key,
)
from scoring_pipeline.defs.sensors import scoring_batches_sensor
from scoring_pipeline_tests import factories as f

DATE = "2026-11-27"
EVENT_ORDER = ["CALC_STARTED", "INPUTS_CAPTURED", "SCORES_COMPUTED", "CALC_COMPLETED"]


@pytest.fixture
def world(clean_db, app_env, tmp_path, monkeypatch):
    """Two markets in two currencies, four instruments, provider files; batches of 2 users."""
    return build_world(clean_db, tmp_path, monkeypatch)


def build_world(engine, tmp_path, monkeypatch):
    """The `world` fixture's content in an empty, migrated database (its engine returned)."""
    f.market(engine, "US_TECH")
    f.market(engine, "EU_IND")
    f.instrument(
        engine,
        "AAA",
        market="US_TECH",
        currency="USD",
        eps="2",
        roe="15",
        shares_outstanding="1000",
    )
    f.instrument(engine, "BBB", market="US_TECH", currency="USD", eps="0.02", roe="5")
    f.instrument(engine, "CCC", market="EU_IND", currency="EUR", eps="1", revenue="1000000")
    f.instrument(engine, "DDD", market="EU_IND", currency="EUR")  # no fundamentals at all
    env = f.provider_files(
        tmp_path,
        rates={"EUR": "0.5", "GBP": "0.8"},
        prices={"AAA": ("30", "USD"), "BBB": ("0.3", "USD"), "CCC": ("10", "EUR")},
    )
    for key, value in {**env, "SCORING_BATCH_SIZE": "2"}.items():
        monkeypatch.setenv(key, value)
    return engine


def rules():
    return [
        f.rule("pe_ratio", "lt", "15", 10),
        f.rule("roe", "gte", "10", 5),
        f.rule("price", "exists", None, 1),
    ]


def users_in_two_currencies(world, count):
    """`count` users holding AAA, in USD and EUR alternately, each with a US_TECH set and an
    EU_IND set (4 scored assets each): both conversions and two sets per user."""
    return [
        f.user(
            world,
            base_currency="EUR" if i % 2 else "USD",
            holdings=[("AAA", "USD")],
            criteria=[
                ("US_TECH", "stock", rules()),
                ("EU_IND", "stock", [f.rule("revenue", "gt", "100", 3)]),
            ],
        )
        for i in range(count)
    ]


def snapshots(instance, *, partition_key=DATE, **kwargs):
    return dg.materialize(
        [active_users, exchange_rates, prices],
        partition_key=partition_key,
        instance=instance,
        resources=build_resources(),
        **kwargs,
    )


def batch(instance, batch_key="b0000", *, date=DATE, **kwargs):
    """Materialise one batch partition with its asset checks, which must pass whenever the
    batch's step succeeded (every database test thereby checks the SPEC §5 invariants)."""
    result = dg.materialize(
        [scores, scores_invariants],
        partition_key=scores_partition_key(date, batch_key),
        instance=instance,
        resources=build_resources(),
        raise_on_error=False,
        **kwargs,
    )
    for evaluation in result.get_asset_check_evaluations():
        assert evaluation.passed, (evaluation.check_name, evaluation.metadata)
    return result


def batches(instance, first="b0000", last="b0002", *, date=DATE, tags=None, **kwargs):
    """Materialise the batch partitions from `first` to `last` in one run (a partition range,
    as the night's sensor launches them, or a UI backfill with its tag in `tags`), with their
    asset checks, which must pass for every batch that landed (`batch`'s rule)."""
    result = dg.materialize(
        [scores, scores_invariants],
        instance=instance,
        resources=build_resources(),
        raise_on_error=False,
        tags={
            "dagster/asset_partition_range_start": scores_partition_key(date, first),
            "dagster/asset_partition_range_end": scores_partition_key(date, last),
            **(tags or {}),
        },
        **kwargs,
    )
    for evaluation in result.get_asset_check_evaluations():
        assert evaluation.passed, (evaluation.check_name, evaluation.metadata)
    return result


def forget_night_keys(instance, date=DATE):
    """Remove the date's `scores` partition keys from the (shared) instance, so that its next
    snapshots run registers them afresh, consecutively: earlier tests registered some of them
    among other dates' keys, and a range covers every key between its ends."""
    keys = instance.get_dynamic_partitions(SCORES_PARTITIONS_NAME)
    remove_night_partitions(
        instance, DEFAULT_GROUPS[DEFAULT_GROUP], [k for k in keys if k.startswith(f"{date}/")]
    )


def refused_before_any_step(result: dg.ExecuteInProcessResult) -> str:
    """The error of a run refused as its resources started (no step ran): what its
    RESOURCE_INIT_FAILURE event says, as the run's page shows it."""
    events = result.all_events
    assert not [e for e in events if e.event_type_value == "STEP_START"]
    (failure,) = [e for e in events if e.event_type_value == "RESOURCE_INIT_FAILURE"]
    error = failure.engine_event_data.error
    assert error is not None
    return error.message


def rows(engine, sql, **params):
    with engine.connect() as conn:
        return conn.execute(sa.text(sql), params).all()


def batches_requested(instance, result) -> list[dg.RunRequest]:
    """What `scoring_batches_sensor` requests after a run (an execution result) succeeded."""
    resources = build_resources()
    context = dg.build_run_status_sensor_context(
        sensor_name="scoring_batches_sensor",
        dagster_event=result.get_run_success_event(),
        dagster_instance=instance,
        dagster_run=result.dagster_run,
        resources={"database": resources["database"], "settings": resources["settings"]},
    )
    return scoring_batches_sensor(context)
