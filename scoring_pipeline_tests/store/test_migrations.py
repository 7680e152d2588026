"""Alembic migrations on real PostgreSQL: upgrade, downgrade, upgrade again, agreement between
the migrated database and the SQLAlchemy table definitions in `tables.py`, and the conversion of
stored breakdowns to the compact form (and back) on a database with data."""

import datetime as dt
import json
import uuid
from decimal import Decimal

import pytest
import sqlalchemy as sa
from sqlalchemy.dialects import postgresql

from scoring_pipeline.engine.criteria import parse_criteria
from scoring_pipeline.engine.metrics import InstrumentData
from scoring_pipeline.engine.scoring import score_criteria_set
from scoring_pipeline.errors import ConfigurationError
from scoring_pipeline.store import db
from scoring_pipeline.store.tables import metadata

pytestmark = pytest.mark.db

SPEC_TABLES = {
    "users",
    "markets",
    "instruments",
    "instrument_fundamentals",
    "portfolios",
    "portfolio_assets",
    "criteria_versions",
    "exchange_rate_snapshots",
    "price_snapshots",
    "scoring_batches",
    "asset_scores",
    "score_history",
    "calculation_events",
    "overnight_job_runs",
    "dashboard_cache",
}


def _type(t: sa.types.TypeEngine) -> str:  # type: ignore[type-arg]
    return t.compile(dialect=postgresql.dialect()).replace("VARCHAR", "TEXT")


def test_upgrade_creates_every_spec_table(fresh_engine):
    db.migrate(fresh_engine)
    names = set(sa.inspect(fresh_engine).get_table_names())
    assert SPEC_TABLES <= names
    assert db.current_revision(fresh_engine) == db.head_revision() == "0011"


def test_tables_match_migrated_schema(fresh_engine):
    db.migrate(fresh_engine)
    inspector = sa.inspect(fresh_engine)
    for table in metadata.sorted_tables:
        columns = {c["name"]: c for c in inspector.get_columns(table.name)}
        assert set(columns) == {c.name for c in table.columns}, table.name
        for column in table.columns:
            live = columns[column.name]
            assert live["nullable"] == column.nullable, f"{table.name}.{column.name}"
            assert _type(live["type"]) == _type(column.type), f"{table.name}.{column.name}"
        pk = inspector.get_pk_constraint(table.name)["constrained_columns"]
        assert pk == [c.name for c in table.primary_key.columns], table.name
        live_uniques = {
            tuple(u["column_names"]) for u in inspector.get_unique_constraints(table.name)
        }
        model_uniques = {
            tuple(c.name for c in con.columns)
            for con in table.constraints
            if isinstance(con, sa.UniqueConstraint) and not isinstance(con, sa.PrimaryKeyConstraint)
        } | {(c.name,) for c in table.columns if c.unique}
        assert live_uniques == model_uniques, table.name
        live_indexes = {
            i["name"]: tuple(i["column_names"])
            for i in inspector.get_indexes(table.name)
            if not i.get("duplicates_constraint")
        }
        model_indexes = {i.name: tuple(c.name for c in i.columns) for i in table.indexes}
        assert live_indexes == model_indexes, table.name


def test_spec_keys_and_indexes(fresh_engine):
    db.migrate(fresh_engine)
    inspector = sa.inspect(fresh_engine)
    assert inspector.get_pk_constraint("asset_scores")["constrained_columns"] == [
        "user_id",
        "symbol",
    ]
    # score_history's key (user_id, symbol, score_date) is a trigger's (tested with the history
    # below); its indexes serve a user's rows of a date and a user's history of one symbol.
    history_indexes = {tuple(i["column_names"]) for i in inspector.get_indexes("score_history")}
    assert history_indexes == {("user_id", "score_date"), ("user_id", "symbol")}
    uniques = {
        tuple(u["column_names"]) for u in inspector.get_unique_constraints("overnight_job_runs")
    }
    assert ("job_type", "score_date", "market_group") in uniques
    indexed = {tuple(i["column_names"]) for i in inspector.get_indexes("calculation_events")}
    assert ("correlation_id",) in indexed and ("user_id", "created_at") in indexed
    score = {c["name"]: c for c in inspector.get_columns("asset_scores")}["score"]["type"]
    assert (score.precision, score.scale) == (12, 4)  # room for ±99999.9999


def test_downgrade_to_base_and_upgrade_again(fresh_engine):
    db.migrate(fresh_engine)
    with fresh_engine.begin() as conn:
        conn.execute(sa.text("INSERT INTO markets VALUES ('M', 'M', 'UTC', '09:00')"))
    db.downgrade(fresh_engine, "base")
    assert not (SPEC_TABLES & set(sa.inspect(fresh_engine).get_table_names()))
    assert db.current_revision(fresh_engine) is None
    db.migrate(fresh_engine)
    assert SPEC_TABLES <= set(sa.inspect(fresh_engine).get_table_names())


def test_schema_problem_names_what_to_do_for_each_revision(fresh_engine):
    assert "run `scoring-pipeline migrate`" in str(db.schema_problem(fresh_engine))
    db.migrate(fresh_engine, "0006")
    assert f"at migration 0006 and this code needs {db.head_revision()}" in str(
        db.schema_problem(fresh_engine)
    )
    db.migrate(fresh_engine)
    assert db.schema_problem(fresh_engine) is None
    db.require_current_schema(fresh_engine)
    with fresh_engine.begin() as conn:
        conn.execute(sa.text(f"UPDATE {db.VERSION_TABLE} SET version_num = 'ffff'"))
    with pytest.raises(ConfigurationError, match="which this code does not have .* newer code"):
        db.require_current_schema(fresh_engine)


def test_migrate_is_idempotent_on_a_database_with_data(fresh_engine):
    db.migrate(fresh_engine)
    with fresh_engine.begin() as conn:
        conn.execute(sa.text("INSERT INTO markets VALUES ('M', 'M', 'UTC', '09:00')"))
    db.migrate(fresh_engine)
    with fresh_engine.connect() as conn:
        assert conn.execute(sa.text("SELECT count(*) FROM markets")).scalar_one() == 1


def _legacy_breakdowns(engine, user_id, base, close, aaa=None):
    """Scores of the user's criteria set on two instruments, as the schema before 0004 stored
    them (the canonical breakdown JSON); the engine's canonical text is what the view must give.
    `aaa`: the fundamentals of AAA (eps 2, revenue 7 unless given)."""
    with engine.connect() as conn:
        row = conn.execute(
            sa.text("SELECT id::text, rules::text FROM criteria_versions WHERE user_id = :u"),
            {"u": user_id},
        ).one()
    criteria_set = parse_criteria(
        criteria_version_id=row.id, target_market="M", asset_type="stock", version=1, rules=row[1]
    )
    instruments = [
        InstrumentData(
            "AAA",
            "USD",
            Decimal(close),
            {"eps": Decimal("2"), "revenue": Decimal("7")} if aaa is None else aaa,
        ),
        InstrumentData("EEE", "EUR", None, {"roe": Decimal("0.10")}),
    ]
    rates = {"EUR": Decimal("0.5")}
    return score_criteria_set(criteria_set, instruments, base_currency=base, usd_rates=rates).scores


def test_upgrade_converts_stored_breakdowns_and_downgrade_restores_them(fresh_engine):
    from scoring_pipeline_tests import factories as f

    engine = fresh_engine
    db.migrate(engine, "0003")
    f.market(engine, "M")
    rules = [
        f.rule("pe_ratio", "lt", "20", 10),
        f.rule("revenue", "gt", "1", 5),  # converted to the base currency
        f.rule("roe", "gte", "0.1", 3, required_fundamentals=["roe", "eps"]),
        f.rule("price", "exists", None, 1),
    ]
    users = {
        base: f.user(engine, base_currency=base, criteria=[("M", "stock", rules)])
        for base in ("USD", "EUR")
    }
    expected_current, expected_past = {}, {}
    with engine.begin() as conn:
        for base, uid in users.items():
            for date, close, expected in (
                ("2026-11-26", "30", expected_past),
                ("2026-11-27", "31", expected_current),
            ):
                correlation = str(uuid.uuid4())
                scores = _legacy_breakdowns(engine, uid, base, close)
                results = []
                for s in scores:
                    expected[(uid, s.symbol)] = s.breakdown
                    results.append({"assetId": s.symbol, "breakdown": s.breakdown})
                    conn.execute(
                        sa.text(
                            "INSERT INTO score_history VALUES (:u, :s, :d, :cv, :sc, :c, now())"
                        ),
                        {
                            "u": uid,
                            "s": s.symbol,
                            "d": date,
                            "cv": s.criteria_version_id,
                            "sc": s.score,
                            "c": correlation,
                        },
                    )
                    if date == "2026-11-27":
                        conn.execute(
                            sa.text(
                                "INSERT INTO asset_scores (user_id, symbol, criteria_version_id, "
                                "score, max_possible_score, percentage, breakdown, score_date, "
                                "correlation_id, calculated_at) VALUES (:u, :s, :cv, :sc, :m, "
                                ":p, CAST(:b AS jsonb), :d, :c, now())"
                            ),
                            {
                                "u": uid,
                                "s": s.symbol,
                                "cv": s.criteria_version_id,
                                "sc": s.score,
                                "m": s.max_possible_score,
                                "p": s.percentage,
                                "b": s.breakdown_json,
                                "d": date,
                                "c": correlation,
                            },
                        )
                if date == "2026-11-26":  # the past date's breakdowns live in its event only
                    conn.execute(
                        sa.text(
                            "INSERT INTO calculation_events (correlation_id, user_id, event_type, "
                            "payload) VALUES (:c, :u, 'SCORES_COMPUTED', CAST(:p AS jsonb))"
                        ),
                        {"c": correlation, "u": uid, "p": json.dumps({"results": results})},
                    )
    assert len({json.dumps(b) for b in expected_current.values()}) > 2  # the values differ
    # Invalid criteria as the app may store them (rules not an array): no scores to convert,
    # and no obstacle to the conversion. With a night's worth of breakdowns (a few thousand),
    # the planner expands every criteria version's rules before joining them to the scores.
    invalid = f.user(engine, base_currency="USD", criteria=[("M", "stock", rules)])
    symbol, bulk_breakdown = next(
        (s, b) for (u, s), b in expected_current.items() if u == users["USD"]
    )
    with engine.begin() as conn:
        conn.execute(
            sa.text("UPDATE criteria_versions SET rules = '\"not json [\"' WHERE user_id = :u"),
            {"u": invalid},
        )
        conn.execute(
            sa.text(
                "INSERT INTO asset_scores SELECT a.user_id, 'BULK' || g, a.criteria_version_id, "
                "a.score, a.max_possible_score, a.percentage, a.breakdown, a.score_date, "
                "a.correlation_id, a.calculated_at FROM asset_scores a, "
                "generate_series(1, 3000) AS g WHERE a.user_id = :u AND a.symbol = :s"
            ),
            {"u": users["USD"], "s": symbol},
        )
    expected_current |= {(users["USD"], f"BULK{g}"): bulk_breakdown for g in range(1, 3001)}

    db.migrate(engine)

    def view(name):
        with engine.connect() as conn:
            return {
                (r.u, r.symbol, str(r.score_date)): r.breakdown
                for r in conn.execute(
                    sa.text(f"SELECT user_id::text AS u, symbol, score_date, breakdown FROM {name}")
                )
            }

    current = view("asset_score_breakdowns")
    history = view("score_history_breakdowns")
    assert current == {(u, s, "2026-11-27"): b for (u, s), b in expected_current.items()}
    assert history == {
        **{(u, s, "2026-11-26"): b for (u, s), b in expected_past.items()},
        **{(u, s, "2026-11-27"): b for (u, s), b in expected_current.items() if "BULK" not in s},
    }
    columns = {c["name"] for c in sa.inspect(engine).get_columns("asset_scores")}
    assert "breakdown" not in columns and {"outcomes", "base_currency"} <= columns

    db.downgrade(engine, "0003")
    with engine.connect() as conn:
        restored = {
            (r.u, r.symbol): r.breakdown
            for r in conn.execute(
                sa.text("SELECT user_id::text AS u, symbol, breakdown FROM asset_scores")
            )
        }
    assert restored == expected_current


def _replace_rows_of(conn, uid, date, current) -> str:
    """A new calculation of the user for the date: its earlier rows of the date (and, when
    `current`, its current scores) deleted, as a re-score replaced them; its correlation id."""
    conn.execute(
        sa.text("DELETE FROM score_history WHERE user_id = :u AND score_date = :d"),
        {"u": uid, "d": date},
    )
    if current:
        conn.execute(sa.text("DELETE FROM asset_scores WHERE user_id = :u"), {"u": uid})
    return str(uuid.uuid4())


def _score_row(uid, s, date, correlation, at) -> dict:
    """The parameters of a score's row common to every form: :u :s :d :cv :sc :m :p :c :at."""
    return {
        "u": uid,
        "s": s.symbol,
        "d": date,
        "cv": s.criteria_version_id,
        "sc": s.score,
        "m": s.max_possible_score,
        "p": s.percentage,
        "c": correlation,
        "at": at,
    }


def _store_legacy_calculation(conn, uid, date, scores, *, base, at, current, events=True):
    """One user's calculation as the code before 0004 stored it: its history rows of the date
    and, when `current`, its asset_scores rows (both replacing the user's earlier ones, as a
    re-score did), and its events: INPUTS_CAPTURED with the base currency it was computed in,
    SCORES_COMPUTED with the canonical breakdowns (none when `events` is false: deleted since)."""
    correlation = _replace_rows_of(conn, uid, date, current)
    for s in scores:
        row = {**_score_row(uid, s, date, correlation, at), "b": s.breakdown_json}
        conn.execute(
            sa.text("INSERT INTO score_history VALUES (:u, :s, :d, :cv, :sc, :c, :at)"), row
        )
        if current:
            conn.execute(
                sa.text(
                    "INSERT INTO asset_scores (user_id, symbol, criteria_version_id, score, "
                    "max_possible_score, percentage, breakdown, score_date, correlation_id, "
                    "calculated_at) VALUES (:u, :s, :cv, :sc, :m, :p, CAST(:b AS jsonb), :d, :c, "
                    ":at)"
                ),
                row,
            )
    if events:
        results = [
            {
                "assetId": s.symbol,
                "criteriaVersionId": s.criteria_version_id,
                "score": str(s.score),
                "maxPossibleScore": str(s.max_possible_score),
                "percentage": None if s.percentage is None else str(s.percentage),
                "breakdown": s.breakdown,
            }
            for s in scores
        ]
        for kind, payload in (
            ("INPUTS_CAPTURED", {"correlationId": correlation, "baseCurrency": base}),
            ("SCORES_COMPUTED", {"correlationId": correlation, "results": results}),
        ):
            conn.execute(
                sa.text(
                    "INSERT INTO calculation_events (correlation_id, user_id, event_type, "
                    "payload, created_at) VALUES (:c, :u, :k, CAST(:p AS jsonb), :at)"
                ),
                {"c": correlation, "u": uid, "k": kind, "p": json.dumps(payload), "at": at},
            )
    return correlation


def _breakdown_views(engine):
    """(current, history): each view's breakdowns by (user, symbol, score date)."""

    def view(conn, name):
        return {
            (r.u, r.symbol, str(r.score_date)): r.breakdown
            for r in conn.execute(
                sa.text(f"SELECT user_id::text AS u, symbol, score_date, breakdown FROM {name}")
            )
        }

    with engine.connect() as conn:
        return view(conn, "asset_score_breakdowns"), view(conn, "score_history_breakdowns")


def _restored_breakdowns(engine):
    """asset_scores.breakdown by (user, symbol), after a downgrade below 0004."""
    with engine.connect() as conn:
        return {
            (r.u, r.symbol): r.breakdown
            for r in conn.execute(
                sa.text("SELECT user_id::text AS u, symbol, breakdown FROM asset_scores")
            )
        }


def _conversion_rules():
    from scoring_pipeline_tests import factories as f

    return [
        f.rule("pe_ratio", "lt", "20", 10),
        f.rule("revenue", "gt", "1", 5),  # converted to the base currency
        f.rule("roe", "gte", "0.1", 3, required_fundamentals=["roe", "eps"]),
        f.rule("price", "exists", None, 1),
    ]


def test_upgrade_takes_each_breakdowns_base_currency_from_its_calculation(fresh_engine):
    """A user whose base currency changed after the old code scored them: the stored breakdowns
    were computed in the old currency (their INPUTS_CAPTURED says so), and they keep its values
    (not those of the users of the new currency); a calculation whose events are gone falls back
    on the user's currency."""
    from scoring_pipeline_tests import factories as f

    engine = fresh_engine
    db.migrate(engine, "0003")
    f.market(engine, "M")
    rules = _conversion_rules()
    bases = {"usd": "USD", "eur": "EUR", "moved": "EUR", "no_events": "USD"}
    users = {
        n: f.user(engine, base_currency=b, criteria=[("M", "stock", rules)])
        for n, b in bases.items()
    }
    expected_current, expected_history = {}, {}
    with engine.begin() as conn:
        for name, uid in users.items():
            for date, close, at in (
                ("2026-11-26", "30", "2026-11-26T04:00:00Z"),
                ("2026-11-27", "31", "2026-11-27T04:00:00Z"),
            ):
                current = date == "2026-11-27"
                scores = _legacy_breakdowns(engine, uid, bases[name], close)
                _store_legacy_calculation(
                    conn,
                    uid,
                    date,
                    scores,
                    base=bases[name],
                    at=at,
                    current=current,
                    events=name != "no_events",
                )
                for s in scores:
                    # Without its events, a past date's breakdown is gone (null in the view).
                    kept = current or name != "no_events"
                    expected_history[(uid, s.symbol, date)] = s.breakdown if kept else None
                    if current:
                        expected_current[(uid, s.symbol, date)] = s.breakdown
        conn.execute(
            sa.text("UPDATE users SET base_currency = 'USD' WHERE id = :u"), {"u": users["moved"]}
        )
    moved = {k: b for k, b in expected_current.items() if k[0] == users["moved"]}
    usd = {(s, d): b for (u, s, d), b in expected_current.items() if u == users["usd"]}
    assert any(b != usd[(s, d)] for (_, s, d), b in moved.items())  # EUR values, not USD ones

    db.migrate(engine)

    current, history = _breakdown_views(engine)
    assert current == expected_current
    assert history == expected_history
    with engine.connect() as conn:
        stored = {
            (table, r.u, r.base_currency)
            for table in ("asset_scores", "score_history")
            for r in conn.execute(
                sa.text(
                    f"SELECT DISTINCT user_id::text AS u, base_currency FROM {table} "
                    "WHERE outcomes IS NOT NULL"
                )
            )
        }
    assert stored == {
        (table, uid, bases[name])
        for table in ("asset_scores", "score_history")
        for name, uid in users.items()
    }

    db.downgrade(engine, "0003")
    assert _restored_breakdowns(engine) == {(u, s): b for (u, s, _), b in expected_current.items()}


def test_upgrade_keeps_differing_values_of_a_date_symbol_and_currency_as_revisions(fresh_engine):
    """A batch re-scored by the old code after the fundamentals changed: the date's stored
    breakdowns of one (symbol, base currency) hold differing values, and each keeps its own
    through the views (one revision of metric values for each set of values that disagree; a
    breakdown whose rules read none of the values that differ, or agree with one set, adds none).
    Downgrading to 0010 and upgrading again keeps them, and so does the downgrade below 0004."""
    from scoring_pipeline_tests import factories as f

    engine = fresh_engine
    db.migrate(engine, "0003")
    f.market(engine, "M")
    rules = _conversion_rules()
    criteria = {
        "full": rules,
        "full_rescored": rules,
        "pe_only": rules[:1],
        "pe_only_rescored": rules[:1],
        "roe_only": rules[2:],
        "moved": rules,  # scored in EUR, then made a USD user; its events deleted since
    }
    users = {
        n: f.user(engine, base_currency="USD", criteria=[("M", "stock", r)])
        for n, r in criteria.items()
    }
    changed = {"eps": Decimal("3"), "revenue": Decimal("8")}  # fundamentals changed
    expected_current, expected_history = {}, {}

    def calculation(conn, name, date, at, aaa=None):
        base = "EUR" if name == "moved" else "USD"
        scores = _legacy_breakdowns(engine, users[name], base, "31", aaa)
        current = date == "2026-11-27"
        events = name != "moved"
        _store_legacy_calculation(
            conn, users[name], date, scores, base=base, at=at, current=current, events=events
        )
        for s in scores:
            key = (users[name], s.symbol, date)
            expected_history[key] = s.breakdown if events or current else None
            if current:
                expected_current[key] = s.breakdown

    with engine.begin() as conn:
        for name in users:
            calculation(conn, name, "2026-11-26", "2026-11-26T04:00:00Z")
            calculation(conn, name, "2026-11-27", "2026-11-27T04:00:00Z")
        # The fundamentals change, and two batches of the date are scored again.
        calculation(conn, "full_rescored", "2026-11-27", "2026-11-27T09:00:00Z", changed)
        calculation(conn, "pe_only_rescored", "2026-11-27", "2026-11-27T10:00:00Z", {})
    assert (
        expected_current[(users["full"], "AAA", "2026-11-27")]
        != (expected_current[(users["full_rescored"], "AAA", "2026-11-27")])
    )

    def revisions():
        with engine.connect() as conn:
            return dict(
                conn.execute(
                    sa.text(
                        "SELECT score_date::text || ' ' || symbol || ' ' || base_currency, "
                        "count(*) FROM score_metric_values GROUP BY 1"
                    )
                ).all()
            )

    def assert_views():
        current, history = _breakdown_views(engine)
        assert current == expected_current
        assert history == expected_history

    db.migrate(engine)

    assert_views()
    # 2026-11-27's AAA in USD: the night's values (pe_only agrees with them), moved's EUR revenue
    # (its events gone, it is filed under its user's currency), the re-scored full's, and
    # pe_only_rescored's missing pe_ratio. roe_only reads none of what differs.
    assert revisions() == {
        "2026-11-26 AAA USD": 1,
        "2026-11-26 EEE USD": 1,
        "2026-11-27 AAA USD": 4,
        "2026-11-27 EEE USD": 1,
    }
    with engine.connect() as conn:
        left = conn.execute(
            sa.text("SELECT count(*) FROM pg_class WHERE relname LIKE '%values_revisions'")
        ).scalar_one()
    assert left == 0

    db.downgrade(engine, "0010")
    assert_views()
    db.migrate(engine)
    assert_views()
    assert revisions()["2026-11-27 AAA USD"] == 4

    db.downgrade(engine, "0003")
    assert _restored_breakdowns(engine) == {(u, s): b for (u, s, _), b in expected_current.items()}


def test_downgrade_below_0004_and_upgrade_again_keeps_the_history_of_compact_nights(fresh_engine):
    """Nights scored in the compact form keep their history breakdowns through `migrate
    --downgrade 0001` and `migrate`: the downgrade writes each calculation's canonical
    breakdowns back into its SCORES_COMPUTED event, where the old schema keeps a past date's
    (the old code's replay reads them there), and 0004 converts them again, revisions included.
    A calculation re-scored since (its rows replaced) keeps its compact event. The compact form
    is converted under either of its keys: `breakdown` (SPEC §5), and `outcomes`, as events were
    recorded until 2026-12-04 (the user `eur`'s here)."""
    from scoring_pipeline.engine.payloads import results_payload
    from scoring_pipeline.store.month_partitions import ensure_partitions
    from scoring_pipeline_tests import factories as f

    engine = fresh_engine
    db.migrate(engine)
    f.market(engine, "M")
    rules = _conversion_rules()
    bases = {"usd": "USD", "eur": "EUR", "rescored": "USD"}
    users = {
        n: f.user(engine, base_currency=b, criteria=[("M", "stock", rules)])
        for n, b in bases.items()
    }
    expected_current, expected_history, expected_events = {}, {}, {}
    values: dict[tuple[str, str, str, int], dict[str, str]] = {}

    def calculation(conn, name, date, at, revision=1, aaa=None):
        """One calculation as the compact form stores it (the night's rows of the user
        replaced), its events INPUTS_CAPTURED and SCORES_COMPUTED (compact)."""
        uid, base, current = users[name], bases[name], date == "2026-11-27"
        scores = _legacy_breakdowns(engine, uid, base, "31", aaa)
        correlation = _replace_rows_of(conn, uid, date, current)
        for s in scores:
            texts = {
                r["metric"]: e["actualValue"]
                for r, e in zip(rules, s.breakdown, strict=True)
                if "actualValue" in e
            }
            values.setdefault((date, s.symbol, base, revision), {}).update(texts)
            row = {
                **_score_row(uid, s, date, correlation, at),
                "o": s.outcomes,
                "b": base,
                "r": revision,
            }
            conn.execute(
                sa.text(
                    "INSERT INTO score_history (user_id, symbol, score_date, criteria_version_id, "
                    "score, correlation_id, calculated_at, outcomes, base_currency, "
                    "values_revision) VALUES (:u, :s, :d, :cv, :sc, :c, :at, :o, :b, :r)"
                ),
                row,
            )
            expected_history[(uid, s.symbol, date)] = s.breakdown
            if current:
                conn.execute(
                    sa.text(
                        "INSERT INTO asset_scores (user_id, symbol, criteria_version_id, score, "
                        "max_possible_score, percentage, score_date, correlation_id, "
                        "calculated_at, outcomes, base_currency, values_revision) VALUES (:u, "
                        ":s, :cv, :sc, :m, :p, :d, :c, :at, :o, :b, :r)"
                    ),
                    row,
                )
                expected_current[(uid, s.symbol, date)] = s.breakdown
        compact = results_payload(correlation, scores)
        if name == "eur":  # the compact form as recorded until 2026-12-04
            compact["results"] = [
                {**{k: v for k, v in r.items() if k != "breakdown"}, "outcomes": r["breakdown"]}
                for r in compact["results"]
            ]
        for kind, payload in (
            ("INPUTS_CAPTURED", {"correlationId": correlation, "baseCurrency": base}),
            ("SCORES_COMPUTED", compact),
        ):
            conn.execute(
                sa.text(
                    "INSERT INTO calculation_events (correlation_id, user_id, event_type, "
                    "payload, created_at, score_date) VALUES (:c, :u, :k, CAST(:p AS jsonb), "
                    ":at, :d)"
                ),
                {
                    "c": correlation,
                    "u": uid,
                    "k": kind,
                    "p": json.dumps(payload),
                    "at": at,
                    "d": date,
                },
            )
        # The old form of the event: each result's breakdown in place of its outcomes.
        old = [
            {**{k: v for k, v in r.items() if k != "outcomes"}, "breakdown": s.breakdown}
            for r, s in zip(compact["results"], scores, strict=True)
        ]
        expected_events[correlation] = old
        return correlation

    with engine.begin() as conn:
        ensure_partitions(conn, dt.date(2026, 11, 26))
        for name in users:
            calculation(conn, name, "2026-11-26", "2026-11-26T04:00:00Z")
            calculation(conn, name, "2026-11-27", "2026-11-27T04:00:00Z")
        changed = {"eps": Decimal("3"), "revenue": Decimal("8")}
        replaced = list(expected_events)[-1]
        calculation(conn, "rescored", "2026-11-27", "2026-11-27T09:00:00Z", 2, changed)
        for (date, symbol, base, revision), texts in values.items():
            conn.execute(
                sa.text(
                    "INSERT INTO score_metric_values (score_date, symbol, base_currency, "
                    "revision, metric_values) VALUES (:d, :s, :b, :r, CAST(:v AS jsonb))"
                ),
                {"d": date, "s": symbol, "b": base, "r": revision, "v": json.dumps(texts)},
            )
    compact_replaced = expected_events.pop(replaced)
    assert _breakdown_views(engine) == (expected_current, expected_history)

    db.downgrade(engine, "0001")
    with engine.connect() as conn:
        recorded = dict(
            conn.execute(
                sa.text(
                    "SELECT correlation_id::text, payload->'results' FROM calculation_events "
                    "WHERE event_type = 'SCORES_COMPUTED'"
                )
            ).all()
        )
    assert {c: recorded[c] for c in expected_events} == expected_events
    # Kept compact (the history row of that calculation was replaced).
    assert all(isinstance(r["breakdown"], str) for r in recorded[replaced])
    assert len(compact_replaced) == len(recorded[replaced])

    db.migrate(engine)
    assert _breakdown_views(engine) == (expected_current, expected_history)
    with engine.connect() as conn:
        revisions = conn.execute(
            sa.text(
                "SELECT count(*) FROM score_metric_values WHERE score_date = '2026-11-27' "
                "AND symbol = 'AAA' AND base_currency = 'USD'"
            )
        ).scalar_one()
    assert revisions == 2


def test_upgrade_counts_the_warm_users_of_batches_warmed_before_it(fresh_engine):
    db.migrate(fresh_engine, "0006")
    warm, cold = str(uuid.uuid4()), str(uuid.uuid4())
    with fresh_engine.begin() as conn:
        for i, user in enumerate((warm, cold)):
            conn.execute(
                sa.text("INSERT INTO users (id, email, base_currency) VALUES (:u, :e, 'USD')"),
                {"u": user, "e": f"m{i}@example.com"},
            )
        conn.execute(
            sa.text(
                "INSERT INTO dashboard_cache (user_id, score_date, payload, correlation_id, "
                "warmed_at, expires_at) VALUES (:u, '2026-11-27', '{}', gen_random_uuid(), "
                "now(), now())"
            ),
            {"u": warm},
        )
        for batch, warmed_seq in (("b0000", 1), ("b0001", None)):
            conn.execute(
                sa.text(
                    "INSERT INTO scoring_batch_results (score_date, batch_key, status, "
                    "users_total, users_success, users_failed, users_skipped, assets_scored, "
                    "duration_ms, failed_users, succeeded_users, warmed_seq) VALUES "
                    "('2026-11-27', :b, 'success', 2, 2, 0, 0, 2, 1, '[]', "
                    "CAST(:s AS jsonb), :w)"
                ),
                {
                    "b": batch,
                    "s": json.dumps([{"userId": u, "correlationId": u} for u in (warm, cold)]),
                    "w": warmed_seq,
                },
            )
    db.migrate(fresh_engine)
    with fresh_engine.connect() as conn:
        counts = dict(
            conn.execute(sa.text("SELECT batch_key, users_warm FROM scoring_batch_results")).all()
        )
    assert counts == {"b0000": 1, "b0001": None}  # only a warmed batch has a count
    db.downgrade(fresh_engine, "0006")
    columns = {c["name"] for c in sa.inspect(fresh_engine).get_columns("scoring_batch_results")}
    assert "users_warm" not in columns


def test_vacuum_keeps_the_pages_of_the_tables_every_night_rewrites(fresh_engine):
    """asset_scores: a night's replaced rows at the end of the file stay for the next night's rows
    (migration 0009); a look-alike table with PostgreSQL's default is cut by the same vacuum."""
    db.migrate(fresh_engine)
    rows = (
        "SELECT gen_random_uuid(), 'S' || g, gen_random_uuid(), 1, 1, 100, DATE '2026-11-27', "
        "gen_random_uuid(), now(), 'MN', 'USD' FROM generate_series(1, 5000) g"
    )
    sizes = {}
    with fresh_engine.connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
        conn.execute(sa.text("CREATE TABLE default_truncate (LIKE asset_scores INCLUDING ALL)"))
        for table in ("asset_scores", "default_truncate"):
            conn.execute(sa.text(f"INSERT INTO {table} {rows}"))
            full = conn.execute(sa.text(f"SELECT pg_relation_size('{table}')")).scalar_one()
            conn.execute(sa.text(f"DELETE FROM {table}"))  # the next night's replacement
            conn.execute(sa.text(f"VACUUM {table}"))
            after = conn.execute(sa.text(f"SELECT pg_relation_size('{table}')")).scalar_one()
            sizes[table] = (full, after)
        options = dict(
            conn.execute(
                sa.text(
                    "SELECT relname, reloptions FROM pg_class "
                    "WHERE relname IN ('asset_scores', 'dashboard_cache')"
                )
            ).all()
        )
    assert options == {t: ["vacuum_truncate=false"] for t in ("asset_scores", "dashboard_cache")}
    full, after = sizes["asset_scores"]
    assert full > 0 and after == full
    full, after = sizes["default_truncate"]
    assert full > 0 and after < full
    db.downgrade(fresh_engine, "0008")
    with fresh_engine.connect() as conn:
        reset = conn.execute(
            sa.text("SELECT reloptions FROM pg_class WHERE relname = 'asset_scores'")
        ).scalar_one()
    assert reset is None
