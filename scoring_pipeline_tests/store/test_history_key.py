"""`score_history`'s key (user_id, symbol, score_date), kept by the trigger of migration 0008
instead of a unique index, on real PostgreSQL: a duplicate is refused whether it comes in the
same statement, against a stored row, through COPY or from a concurrent writer; the upgrade
keeps a database's history, and the downgrade restores the primary key. The batch write COPYs
into the month partition, where no trigger fires, and checks its keys with the trigger's own
function (migration 0010): refused alike."""

import datetime as dt
import uuid

import psycopg
import pytest
import sqlalchemy as sa
from sqlalchemy.engine import Engine

from scoring_pipeline.store import db
from scoring_pipeline.store.batch_write import copy_history
from scoring_pipeline.store.copy import copy_text
from scoring_pipeline.store.month_partitions import ensure_partitions, month_partition
from scoring_pipeline_tests.concurrency import second_writer_after_first

pytestmark = pytest.mark.db

DAY = dt.date(2026, 11, 27)
_COLUMNS = "user_id, symbol, score_date, criteria_version_id, score, correlation_id, calculated_at"
_VALUES = "(CAST(:u AS uuid), :s, :d, gen_random_uuid(), 1, gen_random_uuid(), now())"


def _migrated(engine: Engine, revision: str = "head") -> Engine:
    db.migrate(engine, revision)
    with engine.begin() as conn:
        ensure_partitions(conn, DAY)
    return engine


def _insert(conn: sa.Connection, rows: list[tuple[str, str, dt.date]]) -> None:
    values = ", ".join(_VALUES.replace(":", f":{i}_") for i in range(len(rows)))
    params = {f"{i}_{k}": v for i, row in enumerate(rows) for k, v in zip("usd", row, strict=True)}
    conn.execute(sa.text(f"INSERT INTO score_history ({_COLUMNS}) VALUES {values}"), params)


def _rows(engine: Engine) -> list[tuple[str, str, dt.date]]:
    with engine.connect() as conn:
        return [
            (str(r[0]), r[1], r[2])
            for r in conn.execute(
                sa.text("SELECT user_id, symbol, score_date FROM score_history ORDER BY 1, 2, 3")
            )
        ]


def test_a_duplicate_in_one_statement_or_against_a_stored_row_is_refused(fresh_engine):
    engine = _migrated(fresh_engine)
    user, other = str(uuid.uuid4()), str(uuid.uuid4())
    with engine.begin() as conn:
        _insert(conn, [(user, "AAA", DAY), (user, "BBB", DAY), (other, "AAA", DAY)])
        _insert(conn, [(user, "AAA", DAY - dt.timedelta(1))])  # another date: its own key
    stored = _rows(engine)
    assert len(stored) == 4

    for rows in (
        [(user, "AAA", DAY)],  # against a stored row
        [(other, "CCC", DAY), (other, "CCC", DAY)],  # twice in one statement
    ):
        with pytest.raises(sa.exc.IntegrityError) as caught, engine.begin() as conn:
            _insert(conn, rows)
        error = caught.value.orig
        assert error is not None and error.sqlstate == "23505"  # unique_violation
        assert f"({rows[0][0]}, {rows[0][1]}, {DAY})" in str(error)
        assert _rows(engine) == stored  # the statement's rows are gone with it


def test_copy_is_checked_like_insert(fresh_engine):
    engine = _migrated(fresh_engine)
    user = str(uuid.uuid4())
    line = f"{user}\tAAA\t{DAY}\t{uuid.uuid4()}\t2.5000\t{uuid.uuid4()}\t2026-11-27 04:00:00+00\n"
    columns = [c.strip() for c in _COLUMNS.split(",")]
    with engine.begin() as conn:
        assert copy_text(conn, "score_history", columns, [line]) == 1
    # COPY goes around SQLAlchemy (store/copy.py): the driver's error, not a wrapped one.
    with pytest.raises(psycopg.errors.UniqueViolation, match="violates the key"):
        with engine.begin() as conn:
            copy_text(conn, "score_history", columns, [line])
    assert len(_rows(engine)) == 1


def _history_line(user: str, symbol: str, day: dt.date) -> str:
    """A history row in COPY text (`HISTORY_COLUMNS`' order)."""
    return (
        f"{user}\t{symbol}\t{day}\t{uuid.uuid4()}\t2.5000\t{uuid.uuid4()}\t"
        f"{day} 04:00:00+00\tPF\tUSD\t1\n"
    )


def _write_like_a_batch(conn: sa.Connection, rows: list[tuple[str, str, dt.date]]) -> None:
    """What the batch write does with a date's history rows (`copy_history`)."""
    (day,) = {d for _, _, d in rows}
    users = sorted({u for u, _, _ in rows})
    copy_history(conn, day, users, [_history_line(*row) for row in rows])


@pytest.mark.parametrize("write", [_insert, _write_like_a_batch], ids=["insert", "batch_write"])
def test_a_concurrent_writer_of_the_same_key_waits_then_is_refused(fresh_engine, write):
    """Two transactions insert the same key: the second waits on the first's lock of the
    (user, date), and once the first commits, sees its row and fails — whether it inserts
    through the parent table or COPYs into the month partition as the batch write does."""
    engine = _migrated(fresh_engine)
    user = str(uuid.uuid4())

    def second(conn: sa.Connection) -> None:
        # Another session's date style: the lock's key must not depend on a date's text.
        conn.execute(sa.text("SET LOCAL DateStyle = 'SQL, DMY'"))
        write(conn, [(user, "AAA", DAY)])

    outcome = second_writer_after_first(
        engine, lambda conn: _insert(conn, [(user, "AAA", DAY)]), second
    )
    assert isinstance(outcome, sa.exc.IntegrityError)
    assert "violates the key" in str(outcome)
    assert _rows(engine) == [(user, "AAA", DAY)]


def test_the_batch_write_copies_into_the_month_and_refuses_a_duplicate(fresh_engine):
    engine = _migrated(fresh_engine)
    user, other = str(uuid.uuid4()), str(uuid.uuid4())
    with engine.begin() as conn:
        _write_like_a_batch(conn, [(user, "AAA", DAY), (user, "BBB", DAY), (other, "AAA", DAY)])
    with engine.connect() as conn:
        where = conn.execute(
            sa.text("SELECT DISTINCT tableoid::regclass::text FROM score_history")
        ).scalars()
        assert list(where) == ["score_history_2026_11"]
    stored = _rows(engine)
    assert len(stored) == 3
    # Twice in one write, and against a stored row of the same (user, date).
    for rows in ([(other, "CCC", DAY), (other, "CCC", DAY)], [(user, "AAA", DAY)]):
        with pytest.raises(sa.exc.IntegrityError) as caught, engine.begin() as conn:
            _write_like_a_batch(conn, rows)
        error = caught.value.orig
        assert error is not None and error.sqlstate == "23505"  # unique_violation
        assert f"({rows[0][0]}, {rows[0][1]}, {DAY})" in str(error)
        assert _rows(engine) == stored


def test_a_date_of_no_month_partition_of_ours_is_written_through_the_parent(fresh_engine):
    """A DEFAULT partition (an operator's) takes a date the nights made no month for: the write
    finds no month of its own, COPYs through the parent, and the trigger checks the keys."""
    engine = _migrated(fresh_engine)
    later = dt.date(2027, 6, 15)
    with engine.begin() as conn:
        conn.execute(sa.text("CREATE TABLE score_history_rest PARTITION OF score_history DEFAULT"))
        assert month_partition(conn, "score_history", DAY) == "score_history_2026_11"
        assert month_partition(conn, "score_history", later) is None
        # A table of the month's name that is not a partition of it is not taken for one.
        conn.execute(sa.text("CREATE TABLE score_history_2027_06 (LIKE score_history)"))
        assert month_partition(conn, "score_history", later) is None
        # Whatever the session's date style, in which the server prints a partition's bounds.
        conn.execute(sa.text("SET LOCAL DateStyle = 'SQL, DMY'"))
        assert month_partition(conn, "score_history", DAY) == "score_history_2026_11"
    user = str(uuid.uuid4())
    with engine.begin() as conn:
        _write_like_a_batch(conn, [(user, "AAA", later)])
    with pytest.raises(psycopg.errors.UniqueViolation, match="violates the key"):
        with engine.begin() as conn:
            _write_like_a_batch(conn, [(user, "AAA", later)])
    with engine.connect() as conn:
        where = conn.execute(
            sa.text("SELECT tableoid::regclass::text FROM score_history WHERE score_date = :d"),
            {"d": later},
        ).scalars()
        assert list(where) == ["score_history_rest"]


def test_upgrade_keeps_the_history_and_downgrade_restores_the_primary_key(fresh_engine):
    engine = _migrated(fresh_engine, "0007")
    users = [str(uuid.uuid4()) for _ in range(3)]
    with engine.begin() as conn:
        _insert(conn, [(u, s, DAY) for u in users for s in ("AAA", "BBB")])
    before = _rows(engine)
    db.migrate(engine)
    assert _rows(engine) == before
    inspector = sa.inspect(engine)
    assert inspector.get_pk_constraint("score_history")["constrained_columns"] == []
    # The month partition made before the upgrade has both indexes, like the ones made after.
    partition = {tuple(i["column_names"]) for i in inspector.get_indexes("score_history_2026_11")}
    assert partition == {("user_id", "score_date"), ("user_id", "symbol")}
    db.downgrade(engine, "0007")
    assert sa.inspect(engine).get_pk_constraint("score_history")["constrained_columns"] == [
        "user_id",
        "symbol",
        "score_date",
    ]
    assert _rows(engine) == before


def test_downgrade_of_the_check_function_keeps_the_key_checked(fresh_engine):
    """0010's downgrade drops the function and puts 0008's trigger function back: a duplicate
    through the parent is still refused; upgrading again restores the function."""
    engine = _migrated(fresh_engine)
    user = str(uuid.uuid4())
    with engine.begin() as conn:
        _insert(conn, [(user, "AAA", DAY)])
    db.downgrade(engine, "0009")
    with engine.connect() as conn:
        found = conn.execute(sa.text("SELECT to_regproc('score_history_check_keys')")).scalar()
        assert found is None
    with pytest.raises(sa.exc.IntegrityError, match="violates the key"), engine.begin() as conn:
        _insert(conn, [(user, "AAA", DAY)])
    db.migrate(engine)
    with pytest.raises(sa.exc.IntegrityError, match="violates the key"), engine.begin() as conn:
        _write_like_a_batch(conn, [(user, "AAA", DAY)])
    assert _rows(engine) == [(user, "AAA", DAY)]
