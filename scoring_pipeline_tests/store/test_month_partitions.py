"""Month partitions by score date of score_history, calculation_events and score_metric_values:
migration 0005 converts a database with data (and back), a night creates its months ahead, and
`scoring-pipeline prune` lists, then (with --yes only) detaches and drops whole old months."""

import datetime as dt
import json
import re
import threading
import time

import pytest
import sqlalchemy as sa

from scoring_pipeline.defs.partitions import SCORES_PARTITIONS_NAME as PARTITIONS
from scoring_pipeline.store import db
from scoring_pipeline.store.dashboard_cache import pending_batches
from scoring_pipeline.store.month_partitions import (
    PARTITIONED_TABLES,
    ensure_partitions,
    partitions,
)
from scoring_pipeline_tests import factories as f
from scoring_pipeline_tests.cli_helpers import run
from scoring_pipeline_tests.scenario import batch, rows, rules, snapshots

pytestmark = pytest.mark.db

USER = "00000000-0000-4000-8000-000000000001"
CV = "00000000-0000-4000-8000-0000000000cc"


def _counts(engine):
    with engine.connect() as conn:
        return {
            table: conn.execute(sa.text(f"SELECT count(*) FROM {table}")).scalar_one()
            for table in ("score_history", "calculation_events", "score_metric_values")
        }


def _old_rows(engine):
    """Two nights (October and November) stored by the schema before 0005."""
    with engine.begin() as conn:
        for n, date in enumerate(("2026-10-30", "2026-11-27")):
            calc, night = (
                f"00000000-0000-4000-8000-00000000{n:04d}",
                f"10000000-0000-4000-8000-0000000{n:05d}",
            )
            conn.execute(
                sa.text(
                    "INSERT INTO score_history VALUES "
                    "(:u, 'AAA', :d, :cv, 1, :c, now(), 'm', 'USD')"
                ),
                {"u": USER, "d": date, "cv": CV, "c": calc},
            )
            conn.execute(
                sa.text(
                    "INSERT INTO score_metric_values VALUES "
                    "(:d, 'AAA', 'USD', '{\"price\": \"3\"}')"
                ),
                {"d": date},
            )
            events = [
                (calc, USER, "CALC_STARTED", {"scoreDate": date}),
                (calc, USER, "CALC_COMPLETED", {"status": "success"}),
                (night, None, "JOB_COMPLETED", {"scoreDate": date}),
            ]
            for c, u, kind, payload in events:
                conn.execute(
                    sa.text(
                        "INSERT INTO calculation_events (correlation_id, user_id, event_type, "
                        "payload, created_at) VALUES (:c, :u, :k, CAST(:p AS jsonb), "
                        "'2026-12-05T00:00:00Z')"
                    ),
                    {"c": c, "u": u, "k": kind, "p": json.dumps(payload)},
                )


def test_migration_partitions_a_database_with_data_and_back(fresh_engine):
    engine = fresh_engine
    db.migrate(engine, "0004")
    _old_rows(engine)
    before = _counts(engine)
    with engine.connect() as conn:
        ids = conn.execute(sa.text("SELECT max(id) FROM calculation_events")).scalar_one()

    db.migrate(engine)
    assert _counts(engine) == before
    with engine.connect() as conn:
        months = {(p.table, p.start) for p in partitions(conn)}
        dates = dict(
            conn.execute(
                sa.text(
                    "SELECT event_type || ':' || (payload->>'scoreDate'), score_date::text "
                    "FROM calculation_events WHERE payload ? 'scoreDate'"
                )
            ).all()
        )
        completed = (
            conn.execute(
                sa.text(
                    "SELECT score_date::text FROM calculation_events WHERE event_type = "
                    "'CALC_COMPLETED' ORDER BY id"
                )
            )
            .scalars()
            .all()
        )
        new_id = conn.execute(
            sa.text(
                "INSERT INTO calculation_events (correlation_id, event_type, payload, score_date) "
                "VALUES (gen_random_uuid(), 'X', '{}', '2026-11-27') RETURNING id"
            )
        ).scalar_one()
        conn.rollback()
    for table in ("score_history", "calculation_events", "score_metric_values"):
        assert {(table, dt.date(2026, 10, 1)), (table, dt.date(2026, 11, 1))} <= months
    # Every event got its calculation's or night's score date, not the day it was written.
    assert all(k.split(":")[1] == v for k, v in dates.items())
    assert completed == ["2026-10-30", "2026-11-27"]
    assert new_id > ids

    db.downgrade(engine, "0004")
    assert _counts(engine) == before
    with engine.connect() as conn:
        assert conn.execute(sa.text("SELECT max(id) FROM calculation_events")).scalar_one() == ids


def test_a_night_creates_its_month_partitions_ahead(world, dagster_instance):
    f.user(world, holdings=[("AAA", "USD")], criteria=[("US_TECH", "stock", rules())])
    date = "2025-12-10"
    assert snapshots(dagster_instance, partition_key=date).success
    assert batch(dagster_instance, date=date).success
    with world.connect() as conn:
        months = {(p.table, p.start) for p in partitions(conn)}
    for table in ("score_history", "calculation_events", "score_metric_values"):
        assert {(table, dt.date(2025, 12, 1)), (table, dt.date(2026, 1, 1))} <= months
    assert (
        rows(world, "SELECT count(*) AS n FROM score_history WHERE score_date = :d", d=date)[0].n
        == 2
    )


def test_new_month_partitions_order_their_columns_against_padding(fresh_engine):
    db.migrate(fresh_engine)
    with fresh_engine.begin() as conn:
        created = ensure_partitions(conn, dt.date(2031, 5, 3), months_ahead=0)
        # The same month's layout as a plain `PARTITION OF` makes it, for comparison.
        conn.execute(
            sa.text(
                "CREATE TABLE score_history_2031_06 PARTITION OF score_history "
                "FOR VALUES FROM ('2031-06-01') TO ('2031-07-01')"
            )
        )
    assert set(created) == {f"{t}_2031_05" for t in PARTITIONED_TABLES}
    order = rows(
        fresh_engine,
        "SELECT attname FROM pg_attribute WHERE attrelid = 'score_history_2031_05'::regclass "
        "AND attnum > 0 ORDER BY attnum",
    )
    assert [r.attname for r in order][:2] == ["calculated_at", "score_date"]
    row = {
        "u": USER,
        "s": "AAPL",
        "cv": CV,
        "score": "12.5000",
        "c": "00000000-0000-4000-8000-0000000000c1",
        "at": "2031-05-03T04:00:00+00:00",
        "o": "mus",
    }
    insert = (
        "INSERT INTO score_history (user_id, symbol, score_date, criteria_version_id, score, "
        "correlation_id, calculated_at, outcomes, base_currency) "
        "VALUES (:u, :s, :d, :cv, :score, :c, :at, :o, 'USD')"
    )
    with fresh_engine.begin() as conn:
        for day in ("2031-05-03", "2031-06-03"):
            conn.execute(sa.text(insert), {**row, "d": day})
    sizes = {
        month: rows(fresh_engine, f"SELECT pg_column_size(h.*) AS n FROM score_history_{month} h")[
            0
        ].n
        for month in ("2031_05", "2031_06")
    }
    assert sizes["2031_05"] <= sizes["2031_06"] - 8, sizes
    # Read through the parent, in its order, the row is what was written.
    back = rows(
        fresh_engine,
        "SELECT user_id::text, symbol, score::text, calculated_at, outcomes, base_currency "
        "FROM score_history WHERE score_date = '2031-05-03'",
    )
    assert [tuple(b) for b in back] == [
        (USER, "AAPL", "12.5000", dt.datetime(2031, 5, 3, 4, tzinfo=dt.UTC), "mus", "USD")
    ]
    # The parent's primary key holds in the new partition; the events' id default too.
    with pytest.raises(sa.exc.IntegrityError), fresh_engine.begin() as conn:
        conn.execute(sa.text(insert), {**row, "d": "2031-05-03"})
    with fresh_engine.begin() as conn:
        conn.execute(
            sa.text(
                "INSERT INTO calculation_events (correlation_id, event_type, payload, score_date) "
                "VALUES (:c, 'JOB_STARTED', '{}', '2031-05-03')"
            ),
            {"c": row["c"]},
        )
    assert rows(fresh_engine, "SELECT id FROM calculation_events_2031_05")[0].id >= 1


def test_prune_lists_then_drops_whole_old_months_only_with_yes(world, dagster_instance, cli_env):
    f.user(world, holdings=[("AAA", "USD")], criteria=[("US_TECH", "stock", rules())])
    for date in ("2025-06-12", "2025-08-20"):  # two nights in two months
        assert snapshots(dagster_instance, partition_key=date).success
        assert batch(dagster_instance, date=date).success
    history = "SELECT score_date::text AS d, count(*) AS n FROM score_history GROUP BY 1 ORDER BY 1"
    assert [r.d for r in rows(world, history)] == ["2025-06-12", "2025-08-20"]

    def night_keys(date):
        return [k for k in dagster_instance.get_dynamic_partitions(PARTITIONS) if date in k]

    assert night_keys("2025-06-12") and night_keys("2025-08-20")

    listed = run(cli_env, "prune", "--before", "2025-08-01").stdout
    assert "score_history_2025_06" in listed and "calculation_events_2025_07" in listed
    assert "score_history_2025_08" not in listed  # the month of 2025-08-01 itself is kept
    # Each month says its rows: counted when never analysed (a new month), else estimated.
    june = next(line for line in listed.splitlines() if "score_history_2025_06" in line)
    june_rows = rows(world, history)[0].n
    assert f" {june_rows:,} rows " in june or f" ~{june_rows:,} rows " in june
    assert " 2025-06-01 .. 2025-06-30 " in june, june  # its days, the last one included
    assert "month partitions hold only days before 2025-08-01:" in listed
    july = next(line for line in listed.splitlines() if "score_history_2025_07" in line)
    assert " 0 rows " in july or " ~0 rows " in july
    # Dagster's partitions of the pruned nights are listed too, and go with them.
    assert "Dagster's `scores` partitions of nights in those months" in listed
    assert "group all: 1 batch of the night 2025-06-12" in listed
    # The user's current scores are August's: none is dated in the months that go.
    assert "current score" not in listed
    assert "nothing dropped: run again with --yes" in listed
    assert [r.d for r in rows(world, history)] == ["2025-06-12", "2025-08-20"]
    assert night_keys("2025-06-12")

    (june_calculation,) = rows(
        world,
        "SELECT correlation_id::text AS c FROM calculation_events "
        "WHERE score_date = '2025-06-12' AND event_type = 'CALC_STARTED'",
    )
    # The plan adds up what goes, and the drop says what the disk got back (it said "dropped
    # 6 partitions"): the listed sizes, and the database's size after.
    sizes = [
        float(line.split()[-2].replace(",", ""))
        for line in listed.splitlines()
        if line.startswith("  ") and line.endswith(" MB") and "in all" not in line
    ]
    in_all = next(line for line in listed.splitlines() if line.startswith("  in all "))
    in_all_mb = float(in_all.split()[-2].replace(",", ""))
    assert len(sizes) == 6 and abs(in_all_mb - sum(sizes)) <= 0.05 * len(sizes), in_all
    dropped = run(cli_env, "prune", "--before", "2025-08-01", "--yes").stdout
    freed = re.search(
        r"^dropped 6 partitions: ~?[0-9,]+ rows, ([0-9,.]+) MB freed "
        r"\(the database is now ([0-9,.]+) MB\)$",
        dropped,
        re.MULTILINE,
    )
    assert freed is not None, dropped
    assert float(freed.group(1).replace(",", "")) == in_all_mb, (freed, in_all)
    assert "removed 1 `scores` partition of group all" in dropped
    # The README's "`replay` of one of its calculations says its events were pruned": one
    # whose current scores a later night replaced said only "no calculation with correlation
    # id …", as for an id that never was.
    gone = run(cli_env, "replay", june_calculation.c, check=False)
    assert gone.returncode == 2 and gone.stderr == (
        f"scoring-pipeline: error: no calculation with correlation id {june_calculation.c}: "
        "none is left, and the events of the pruned nights (2025-06-12) are gone with their "
        "months (`scoring-pipeline prune`); a calculation of theirs can no longer be replayed\n"
    ), gone.stderr
    assert not night_keys("2025-06-12") and night_keys("2025-08-20")
    assert [r.d for r in rows(world, history)] == ["2025-08-20"]
    events = "SELECT DISTINCT score_date::text AS d FROM calculation_events ORDER BY 1"
    assert [r.d for r in rows(world, events)] == ["2025-08-20"]
    with world.connect() as conn:
        left = {p.name for p in partitions(conn)}
    assert not {n for n in left if n.endswith(("2025_06", "2025_07"))}
    # `status` says which nights lost their history, in the list and in the detail.
    overview = run(cli_env, "status").stdout.splitlines()
    assert [line.endswith("(pruned)") for line in overview if line.startswith("2025-")] == [
        False,  # 2025-08-20, newest first
        True,
    ], overview
    detail = run(cli_env, "status", "--date", "2025-06-12").stdout
    assert (
        "pruned          its month of score_history and calculation_events was dropped "
        "(`scoring-pipeline prune`): the figures above stand, its calculations can no longer "
        "be replayed"
    ) in detail, detail
    assert "pruned" not in run(cli_env, "status", "--date", "2025-08-20").stdout
    # Its batch is not warmed any more (a warm run would write its month back, a review
    # found), nor retried; the kept night's is still to warm.
    with world.connect() as conn:
        pending = {str(b.score_date) for b in pending_batches(conn).batches}
    assert pending == {"2025-08-20"}
    retried = run(cli_env, "retry-failed", "--date", "2025-06-12", check=False)
    assert retried.returncode == 1
    assert retried.stdout.startswith(
        "nothing to retry in group all: the night of 2025-06-12 was pruned (its month of "
        "score_history and calculation_events was dropped); to score the date anew, "
        "`scoring-pipeline score --date 2025-06-12`"
    ), retried.stdout
    assert not night_keys("2025-06-12")

    again = run(cli_env, "prune", "--before", "2025-08-01", "--yes").stdout
    assert "nothing to prune" in again
    # A prune stopped after its drop left partition keys behind: the next run removes them.
    dagster_instance.add_dynamic_partitions(PARTITIONS, ["2025-06-12/b0000"])
    finished = run(cli_env, "prune", "--before", "2025-08-01", "--yes").stdout
    assert "removed 1 `scores` partition of group all" in finished
    assert "dropped" not in finished and not night_keys("2025-06-12")
    # A group no longer configured (the deployment moved off it) keeps its nights' keys in
    # Dagster: they go too, as they do with its MARKET_GROUPS_FILE (it listed none without).
    with world.begin() as conn:
        conn.execute(
            sa.text(
                "INSERT INTO overnight_job_runs (id, job_type, score_date, market_group, status, "
                "started_at, correlation_id) VALUES (gen_random_uuid(), 'scoring', "
                "'2025-06-12', 'us', 'completed', now(), gen_random_uuid())"
            )
        )
    # (The session's other tests share the Dagster storage: only these keys are this test's.)
    former, keys = "us_scoring_night_batches", ["2025-06-12/b0000", "2025-06-12/b0001"]
    dagster_instance.add_dynamic_partitions(former, keys)
    try:
        listed = run(cli_env, "prune", "--before", "2025-08-01").stdout
        assert "group us: 2 batches of the night 2025-06-12" in listed, listed
        removed = run(cli_env, "prune", "--before", "2025-08-01", "--yes").stdout
        assert "removed 2 `scores` partitions of group us" in removed, removed
        assert not set(keys) & set(dagster_instance.get_dynamic_partitions(former))
    finally:
        for key in set(keys) & set(dagster_instance.get_dynamic_partitions(former)):
            dagster_instance.delete_dynamic_partition(former, key)
    # The current scores are August's: their metric values are never pruned with the month.
    kept = run(cli_env, "prune", "--before", "2025-09-01").stdout
    assert "kept score_metric_values_2025_08" in kept
    assert "score_history_2025_08" in kept
    # The user's current scores are August's: they keep showing, their history goes.
    assert (
        "2 current scores of 1 user are dated in those months (not scored since): they keep "
        "showing, but their calculations can no longer be replayed"
    ) in kept, kept
    (shown,) = rows(world, "SELECT DISTINCT correlation_id::text AS c FROM asset_scores")
    assert run(cli_env, "replay", shown.c).returncode == 0
    run(cli_env, "prune", "--before", "2025-09-01", "--yes")
    gone = run(cli_env, "replay", shown.c, check=False)
    assert gone.returncode == 2 and gone.stderr.strip().startswith(
        f"scoring-pipeline: error: the events of calculation {shown.c} (user "
    ), gone.stderr
    assert gone.stderr.strip().endswith(
        ", 2025-08-20) were pruned with their month (`scoring-pipeline prune`): it can no longer "
        "be replayed; its 2 current scores still show"
    ), gone.stderr

    future = run(cli_env, "prune", "--before", "2999-01-01", check=False)
    assert future.returncode != 0 and future.stderr.strip().count("\n") == 0
    assert "is after today" in future.stderr and "give today or an earlier date" in future.stderr
    bad = run(cli_env, "prune", "--before", "01/08/2025", check=False)
    assert bad.returncode != 0 and "--before must be YYYY-MM-DD" in bad.stderr
    no_day = run(cli_env, "prune", "--before", "2025-11-31", check=False)
    assert no_day.returncode == 2 and no_day.stderr.strip() == (
        "scoring-pipeline: error: --before 2025-11-31 is not a date (day is out of range for month)"
    ), no_day.stderr


def test_a_creator_that_waited_for_another_skips_the_months_it_made(world):
    """Two nights of one new month start at once (two groups' nights, a backfill): the second
    creator looks the months up while the first's are not committed yet, waits for its lock,
    then finds them made (its catalog cache still said "missing": DuplicateTable)."""
    day = dt.date(2034, 7, 9)
    errors: list[BaseException] = []

    def second() -> None:
        try:
            with world.begin() as conn:
                assert ensure_partitions(conn, day) == []
        except BaseException as exc:  # noqa: BLE001 - reported by the test below
            errors.append(exc)

    with world.connect() as first:
        with first.begin():
            assert "score_history_2034_07" in ensure_partitions(first, day)
            waiter = threading.Thread(target=second)
            waiter.start()
            wait_for_lock_waiter(world)
        waiter.join(timeout=30)
    assert not waiter.is_alive() and errors == []
    with world.connect() as conn:
        names = {p.name for p in partitions(conn)}
    assert {"score_history_2034_07", "calculation_events_2034_08"} <= names


def wait_for_lock_waiter(engine, timeout: float = 30.0) -> None:
    """Until another session of the database waits on an advisory lock."""
    deadline = time.monotonic() + timeout
    sql = (
        "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() "
        "AND wait_event_type = 'Lock' AND wait_event = 'advisory'"
    )
    while time.monotonic() < deadline:
        with engine.connect() as conn:
            if conn.execute(sa.text(sql)).scalar_one():
                return
        time.sleep(0.05)
    raise AssertionError("no session waited on the partitions' lock")
