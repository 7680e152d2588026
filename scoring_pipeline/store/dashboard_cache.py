"""Dashboard cache warming: one `dashboard_cache` entry per successfully scored user.

Each batch outcome carries the users it scored successfully; warming reads their current
scores, holdings and the date's snapshots, and upserts the entries. The outcome's `outcome_seq`
is recorded as `warmed_seq`, so a re-scored batch (new sequence) is warmed again and a batch
already warmed is not.
"""

import datetime as dt
import json
from collections import defaultdict
from dataclasses import dataclass, field
from decimal import Decimal, InvalidOperation
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Connection

from scoring_pipeline.engine.json_text import plain
from scoring_pipeline.engine.metrics import SCORE_CONTEXT, rate_between
from scoring_pipeline.errors import InvalidHoldingError, MissingRateError
from scoring_pipeline.store.planner import by_index
from scoring_pipeline.store.snapshots.rates import load_rates

TOP_ASSETS = 10
CACHE_TTL = dt.timedelta(hours=24)
_CENT = Decimal("0.01")


@dataclass(frozen=True, slots=True)
class PendingBatch:
    score_date: dt.date
    batch_key: str
    outcome_seq: int
    market_group: str = "all"

    @property
    def token(self) -> str:
        return (
            f"{self.score_date.isoformat()}|{self.market_group}|{self.batch_key}|{self.outcome_seq}"
        )

    @classmethod
    def from_token(cls, token: str) -> "PendingBatch":
        parts = token.split("|")
        if len(parts) == 3:  # a token of a run requested before market groups
            parts.insert(1, "all")
        date, group, batch, seq = parts
        return cls(dt.date.fromisoformat(date), batch, int(seq), group)


@dataclass
class WarmResult:
    warmed: int = 0
    batches: int = 0
    failed: list[dict[str, str]] = field(default_factory=list)


# A warm run is requested once this many landed batches wait, once the oldest has waited this
# long, or at once for a night with no batch left to land: a run per landed batch cost as much
# Dagster work (~0.3 CPU-s) as warming a few batches, and a 10,000-user night asked for 36.
WARM_AT_BATCHES = 10
WARM_WITHIN_SECONDS = 5.0


@dataclass(frozen=True)
class PendingWarm:
    """Batch outcomes not warmed at their latest sequence, and whether to warm them now."""

    batches: list[PendingBatch]
    oldest_waited_s: float = 0.0
    night_closed: bool = False

    @property
    def due(self) -> bool:
        return bool(self.batches) and (
            self.night_closed
            or len(self.batches) >= WARM_AT_BATCHES
            or self.oldest_waited_s >= WARM_WITHIN_SECONDS
        )

    def wait_reason(self) -> str:
        if not self.batches:
            return "no newly scored batch to warm"
        return (
            f"{len(self.batches)} landed batch(es) wait to be warmed together (the oldest for "
            f"{self.oldest_waited_s:.1f} s): at {WARM_AT_BATCHES}, after "
            f"{WARM_WITHIN_SECONDS:.0f} s, or when their night has no batch left to land"
        )


# The date's month of calculation_events exists (as `month_partitions` names them), or the table
# takes any date (a DEFAULT partition).
_MONTH_KEPT = (
    "(to_regclass(format('calculation_events_%s', to_char(r.score_date, 'YYYY_MM'))) IS NOT NULL "
    "OR EXISTS (SELECT 1 FROM pg_partitioned_table pt WHERE pt.partdefid <> 0 "
    "AND pt.partrelid = to_regclass('calculation_events')))"
)


def pending_batches(
    conn: Connection, limit: int = 200, taken: frozenset[str] = frozenset()
) -> PendingWarm:
    """Batch outcomes with successful users that are not warmed at their latest sequence
    (those whose `token` is in `taken`, a warm run's already, left out; those of a pruned month
    too); a night is closed when its scoring row is no longer `started` (or it has none)."""
    rows = conn.execute(
        sa.text(
            "SELECT r.score_date, r.market_group, r.batch_key, r.outcome_seq, "
            "EXTRACT(EPOCH FROM clock_timestamp() - r.updated_at)::float AS waited, "
            "n.status IS DISTINCT FROM 'started' AS night_closed "
            "FROM scoring_batch_results r LEFT JOIN overnight_job_runs n "
            "ON n.job_type = 'scoring' AND n.score_date = r.score_date "
            "AND n.market_group = r.market_group "
            "WHERE r.users_success > 0 AND (r.warmed_seq IS NULL OR r.warmed_seq < r.outcome_seq) "
            # Not a night whose month `prune` dropped: warming it would write the month back.
            f"AND {_MONTH_KEPT} "
            "ORDER BY r.outcome_seq LIMIT :n"
        ),
        {"n": limit + len(taken)},
    ).all()
    found = [
        (PendingBatch(r.score_date, r.batch_key, int(r.outcome_seq), r.market_group), r)
        for r in rows
    ]
    kept = [(b, r) for b, r in found if b.token not in taken][:limit]
    return PendingWarm(
        batches=[b for b, _ in kept],
        oldest_waited_s=max((float(r.waited) for _, r in kept), default=0.0),
        night_closed=any(r.night_closed for _, r in kept),
    )


def _top_assets(conn: Connection, users: list[str]) -> dict[str, Any]:
    """Each user's best current scores per criteria set: every market group's current scores
    (a group closed today shows its latest night's), as the dashboard combines them."""
    rows = conn.execute(
        sa.text(
            # One index lookup per user (LATERAL): `user_id = ANY(...)` over hundreds of users
            # lets the planner pick a scan of the whole table, which grows all night. Ties go
            # by the symbols' code points, whatever the database's collation (ICU's or a
            # language's would put `^IDX` before `AAPL`).
            "SELECT u.user_id::text AS user_id, r.cv, r.symbol, r.score, r.percentage "
            "FROM unnest(CAST(:u AS uuid[])) AS u(user_id) CROSS JOIN LATERAL ("
            "SELECT criteria_version_id::text AS cv, symbol, score, percentage, "
            "row_number() OVER (PARTITION BY criteria_version_id "
            'ORDER BY score DESC, symbol COLLATE "C") AS rank '
            "FROM asset_scores a WHERE a.user_id = u.user_id) r "
            "WHERE r.rank <= :k ORDER BY 1, 2, r.rank"
        ),
        {"u": users, "k": TOP_ASSETS},
    ).all()
    out: dict[str, dict[str, list[dict[str, Any]]]] = defaultdict(lambda: defaultdict(list))
    for r in rows:
        out[r.user_id][r.cv].append(
            {"symbol": r.symbol, "score": plain(r.score), "percentage": plain(r.percentage)}
        )
    return out


def _holdings(conn: Connection, users: list[str], score_date: dt.date) -> dict[str, list[Any]]:
    """The users' priced holdings. Each portfolio's assets are read through their index
    (`OFFSET 0` keeps the planner from turning the lookups into one join over every holding):
    a join read all ~120,000 holdings of a 10,000-user universe for each batch's 50 users."""
    rows = conn.execute(
        sa.text(
            "SELECT p.user_id::text AS user_id, a.symbol, a.quantity, a.held_in, "
            "s.close, s.currency, s.price_date "
            "FROM unnest(CAST(:u AS uuid[])) AS u(user_id) "
            "JOIN portfolios p ON p.user_id = u.user_id "
            "CROSS JOIN LATERAL (SELECT symbol, quantity, currency AS held_in "
            "FROM portfolio_assets x WHERE x.portfolio_id = p.id AND NOT x.is_ignored "
            "OFFSET 0) a "
            "LEFT JOIN price_snapshots s ON s.symbol = a.symbol AND s.score_date = :d"
        ),
        {"u": users, "d": score_date},
    ).all()
    out: dict[str, list[Any]] = defaultdict(list)
    for r in rows:
        out[r.user_id].append(r)
    return out


def portfolio_value(
    holdings: list[Any], base_currency: str, usd_rates: dict[str, Decimal]
) -> tuple[Decimal | None, list[str]]:
    """Σ quantity × close converted to the base currency; unpriced symbols are listed apart."""
    total = Decimal(0)
    unpriced: list[str] = []
    for h in holdings:
        if h.quantity is not None and not Decimal(h.quantity).is_finite():
            raise InvalidHoldingError(
                f"holding {h.symbol}: quantity {h.quantity} is not a number (portfolio_assets)"
            )
        if h.close is None:
            unpriced.append(h.symbol)
            continue
        currency = (h.currency or h.held_in).strip().upper()
        value = SCORE_CONTEXT.multiply(h.quantity, h.close)
        if currency != base_currency:
            value = SCORE_CONTEXT.multiply(value, rate_between(usd_rates, currency, base_currency))
        total = SCORE_CONTEXT.add(total, value)
    return total, sorted(unpriced)


def _to_the_cent(value: Decimal, base_currency: str) -> str | None:
    """The portfolio value to the cent, as plain text. A value of 10^18 or more has no cents
    within the context's 20 digits: only an absurd quantity (a typo in the app) gets there, and
    that user's dashboard is not built, like a quantity that is no number."""
    try:
        return plain(value.quantize(_CENT, context=SCORE_CONTEXT))
    except InvalidOperation:
        raise InvalidHoldingError(
            f"portfolio value {value} {base_currency} is too large to show to the cent "
            "(check the quantities in portfolio_assets)"
        ) from None


def _payload(
    user_id: str,
    correlation_id: str,
    base_currency: str,
    score_date: dt.date,
    holdings: list[Any],
    top: dict[str, list[dict[str, Any]]],
    usd_rates: dict[str, Decimal],
    rates_as_of: str | None,
) -> dict[str, Any]:
    value, unpriced = portfolio_value(holdings, base_currency, usd_rates)
    price_dates = [h.price_date for h in holdings if h.price_date is not None]
    return {
        "userId": user_id,
        "scoreDate": score_date.isoformat(),
        "baseCurrency": base_currency,
        "portfolioValue": _to_the_cent(value, base_currency) if value is not None else None,
        "unpricedSymbols": unpriced,
        "topAssets": [{"criteriaVersionId": cv, "assets": assets} for cv, assets in top.items()],
        "dataFreshness": {
            "pricesAsOf": max(price_dates).isoformat() if price_dates else None,
            "ratesAsOf": rates_as_of,
            "criteriaVersionIds": sorted(top),
        },
        "correlationId": correlation_id,
    }


def warm_batch(conn: Connection, batch: PendingBatch) -> WarmResult:
    """Warm the successful users of one batch's latest outcome, unless it is warmed already."""
    row = conn.execute(
        sa.text(
            "SELECT succeeded_users, outcome_seq, warmed_seq FROM scoring_batch_results "
            "WHERE score_date = :d AND market_group = :g AND batch_key = :b FOR UPDATE"
        ),
        {"d": batch.score_date, "g": batch.market_group, "b": batch.batch_key},
    ).first()
    result = WarmResult(batches=1)
    if row is None or (row.warmed_seq is not None and row.warmed_seq >= row.outcome_seq):
        return result  # gone, or warmed at its latest outcome already (by an earlier run)
    succeeded = {u["userId"]: u["correlationId"] for u in row.succeeded_users}
    users = sorted(succeeded)
    # 50 users' rows of tables with millions: their statistics, stale mid-night, made the
    # top-assets read look costly enough to JIT-compile (~100 ms of a ~110 ms read on PG 15).
    with by_index(conn):
        bases = _base_currencies(conn, users)
        rates = load_rates(conn, batch.score_date)
        top = _top_assets(conn, users)
        holdings = _holdings(conn, users, batch.score_date)
    usd_rates = {c: r.rate for c, r in rates.items()}
    rates_as_of = max((r.rate_date for r in rates.values()), default=None)
    now = dt.datetime.now(dt.UTC)
    entries = []
    for user_id in users:
        base = str(bases.get(user_id, "USD")).strip().upper()
        try:
            payload = _payload(
                user_id,
                succeeded[user_id],
                base,
                batch.score_date,
                holdings.get(user_id, []),
                top.get(user_id, {}),
                usd_rates,
                rates_as_of.isoformat() if rates_as_of else None,
            )
        except (MissingRateError, InvalidHoldingError) as exc:  # this user's only; others go on
            result.failed.append({"userId": user_id, "error": str(exc)})
            continue
        entries.append(
            {
                "u": user_id,
                "d": batch.score_date,
                "p": json.dumps(payload, separators=(",", ":")),
                "c": succeeded[user_id],
                "w": now,
                "e": now + CACHE_TTL,
            }
        )
    if entries:
        _upsert(conn, entries)
    # A user whose dashboard could not be built is not warm, whatever an earlier one shows.
    _mark_warmed(conn, batch, row.outcome_seq, [e["u"] for e in entries])
    result.warmed = len(entries)
    return result


def _base_currencies(conn: Connection, users: list[str]) -> dict[str, str]:
    return {
        str(r.id): str(r.base_currency)
        for r in conn.execute(
            sa.text("SELECT id, base_currency FROM users WHERE id = ANY(CAST(:u AS uuid[]))"),
            {"u": users},
        )
    }


def _upsert(conn: Connection, entries: list[dict[str, Any]]) -> None:
    """Replace each user's cached dashboard, unless it already shows a later score date."""
    conn.execute(
        sa.text(
            "INSERT INTO dashboard_cache (user_id, score_date, payload, correlation_id, "
            "warmed_at, expires_at) VALUES (:u, :d, CAST(:p AS jsonb), :c, :w, :e) "
            "ON CONFLICT (user_id) DO UPDATE SET score_date = EXCLUDED.score_date, "
            "payload = EXCLUDED.payload, correlation_id = EXCLUDED.correlation_id, "
            "warmed_at = EXCLUDED.warmed_at, expires_at = EXCLUDED.expires_at "
            "WHERE dashboard_cache.score_date <= EXCLUDED.score_date"
        ),
        entries,
    )


def _mark_warmed(conn: Connection, batch: PendingBatch, outcome_seq: int, users: list[str]) -> None:
    """Record the warmed sequence and how many of the batch's users now have a dashboard of
    its date or a later one: a user's may show a later date already (an older date re-scored
    after it, by a backfill say: the upsert keeps the later one), and is warm all the same."""
    conn.execute(
        sa.text(
            "UPDATE scoring_batch_results SET warmed_seq = :s, users_warm = (SELECT count(*) "
            "FROM dashboard_cache WHERE user_id = ANY(CAST(:u AS uuid[])) AND score_date >= :d) "
            "WHERE score_date = :d AND market_group = :g AND batch_key = :b"
        ),
        {
            "s": outcome_seq,
            "u": users,
            "d": batch.score_date,
            "g": batch.market_group,
            "b": batch.batch_key,
        },
    )
