"""Scoring of one batch partition: load the date's frozen inputs, score each user, build events.

One user's failure (invalid criteria, a missing rate, anything unexpected) is recorded with its
stage and never stops the batch. Nothing here writes: the scores IO manager persists the result.
"""

import datetime as dt
import gc
import json
import time
import uuid
from collections import defaultdict
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any, NamedTuple

import sqlalchemy as sa
from sqlalchemy.engine import Connection

from scoring_pipeline.engine.criteria import CONVERTED_METRICS, CriteriaSet, parse_criteria
from scoring_pipeline.engine.scoring import (
    AssetScore,
    InstrumentData,
    MetricsCache,
    metric_texts,
    score_criteria_set,
)
from scoring_pipeline.errors import UserCalculationError
from scoring_pipeline.store.snapshots.prices import load_prices
from scoring_pipeline.store.snapshots.rates import RateRow, load_rates
from scoring_pipeline.store.tables import FUNDAMENTAL_COLUMNS

# Which raw fundamentals each metric reads: INPUTS_CAPTURED keeps exactly those.
METRIC_FIELDS: dict[str, tuple[str, ...]] = {
    "price": (),
    "pe_ratio": ("eps",),
    "pb_ratio": ("book_value_per_share",),
    "dividend_yield": ("dividends_per_share",),
    "market_cap": ("shares_outstanding",),
    **{name: (name,) for name in FUNDAMENTAL_COLUMNS},
}


def plain(value: Decimal | None) -> str | None:
    """A Decimal as plain text (no exponent), None kept."""
    return None if value is None else format(value, "f")


_ENCODER = json.JSONEncoder(separators=(",", ":"), default=str, ensure_ascii=False)


def dumps(value: Any) -> str:
    """Compact JSON text; Decimals and dates as strings (one shared encoder: no set-up per call)."""
    return _ENCODER.encode(value)


@contextmanager
def gc_paused() -> Iterator[None]:
    """No cyclic garbage collection inside: scoring a batch allocates hundreds of thousands of
    short-lived objects, all freed by reference counting, and each collection the allocations
    would trigger also scans the run worker's large, long-lived Dagster heap. Collection resumes
    (with whatever cycles built up meanwhile) on leaving, also on error."""
    was_enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if was_enabled:
            gc.enable()


@dataclass(slots=True)
class UserOutcome:
    user_id: str
    correlation_id: str
    base_currency: str
    events: list[tuple[str, dict[str, Any] | str]]  # payload as a dict, or as JSON text
    scores: list[AssetScore] = field(default_factory=list)
    error: dict[str, str] | None = None
    stage: str | None = None

    @property
    def ok(self) -> bool:
        return self.error is None


@dataclass(slots=True)
class BatchOutput:
    """Everything one batch partition produced, ready for the IO manager."""

    score_date: dt.date
    batch_key: str
    job_correlation_id: str
    calculated_at: dt.datetime
    users: list[UserOutcome]
    users_skipped: list[str]
    duration_ms: int = 0
    timings: dict[str, int] = field(default_factory=dict)
    # The night's metric texts of what the successful users were scored on, as JSON objects by
    # (symbol, base currency): with `outcomes`, the stored form of every breakdown (SPEC §4).
    metric_values: dict[tuple[str, str], str] = field(default_factory=dict)
    # The market group whose night this is, and its markets (None: every market): its writes
    # replace only scores of these markets (SPEC §6 per-market nights).
    market_group: str = "all"
    markets: tuple[str, ...] | None = None

    @property
    def succeeded(self) -> list[UserOutcome]:
        return [u for u in self.users if u.ok]

    @property
    def failed(self) -> list[UserOutcome]:
        return [u for u in self.users if not u.ok]

    @property
    def assets_scored(self) -> int:
        return sum(len(u.scores) for u in self.succeeded)


@dataclass(frozen=True, slots=True)
class UserRow:
    user_id: str
    base_currency: str


@dataclass(frozen=True, slots=True)
class CriteriaRow:
    id: str
    user_id: str
    target_market: str
    asset_type: str
    version: int
    rules_text: str

    def parse(self) -> CriteriaSet:
        """The validated criteria set; `InvalidCriteriaError` names this version and the rule."""
        return parse_criteria(
            criteria_version_id=self.id,
            target_market=self.target_market,
            asset_type=self.asset_type,
            version=self.version,
            rules=self.rules_text,
        )


@dataclass(slots=True)
class BatchInputs:
    """The date's frozen inputs restricted to what one batch needs."""

    users: list[UserRow]
    criteria: dict[str, list[CriteriaRow]]
    universes: dict[tuple[str, str], list[InstrumentData]]
    fundamentals_date: dict[str, dt.date]
    prices: dict[str, Any]
    rates: dict[str, RateRow]
    # Each instrument's metrics, computed once per conversion rate for the whole batch.
    metrics_cache: MetricsCache = field(default_factory=MetricsCache)
    # JSON text pieces of INPUTS_CAPTURED shared by the batch's users (prices, fundamentals).
    json_pieces: dict[Any, Any] = field(default_factory=dict)
    # Time spent in the pure engine and the rule evaluations it made, for the benchmark.
    engine_seconds: float = 0.0
    engine_cpu_seconds: float = 0.0  # this thread's CPU time in the engine (no time waiting)
    rule_evaluations: int = 0

    @property
    def usd_rates(self) -> dict[str, Decimal]:
        """The snapshot's USD→X rates, as the engine takes them."""
        return {currency: r.rate for currency, r in self.rates.items()}


_IN_MARKETS = "(CAST(:m AS text[]) IS NULL OR target_market = ANY(CAST(:m AS text[])))"


def _load_users(
    conn: Connection, score_date: dt.date, batch: str, markets: Sequence[str] | None
) -> list[UserRow]:
    """The batch's members; for a market group, those with an active criteria set in it."""
    rows = conn.execute(
        sa.text(
            "SELECT b.user_id, u.base_currency FROM scoring_batches b "
            "JOIN users u ON u.id = b.user_id "
            "WHERE b.score_date = :d AND b.batch_key = :b AND (CAST(:m AS text[]) IS NULL OR "
            "EXISTS (SELECT 1 FROM criteria_versions c WHERE c.user_id = b.user_id "
            f"AND c.is_active AND {_IN_MARKETS})) ORDER BY b.user_id"
        ),
        {"d": score_date, "b": batch, "m": list(markets) if markets is not None else None},
    ).all()
    return [UserRow(str(r.user_id), str(r.base_currency).strip().upper()) for r in rows]


def _load_criteria(
    conn: Connection, user_ids: list[str], markets: Sequence[str] | None
) -> dict[str, list[CriteriaRow]]:
    """The highest active version of each (user, market, asset type) criteria set (of the
    group's markets only, for a market group)."""
    rows = conn.execute(
        sa.text(
            "SELECT DISTINCT ON (user_id, target_market, asset_type) id, user_id, "
            "target_market, asset_type, version, rules::text AS rules_text "
            "FROM criteria_versions WHERE is_active AND user_id = ANY(CAST(:u AS uuid[])) "
            f"AND {_IN_MARKETS} "
            "ORDER BY user_id, target_market, asset_type, version DESC, created_at DESC"
        ),
        {"u": user_ids, "m": list(markets) if markets is not None else None},
    ).all()
    out: dict[str, list[CriteriaRow]] = defaultdict(list)
    for r in rows:
        out[str(r.user_id)].append(
            CriteriaRow(
                str(r.id), str(r.user_id), r.target_market, r.asset_type, r.version, r.rules_text
            )
        )
    return out


def _load_universes(
    conn: Connection, score_date: dt.date, keys: Iterable[tuple[str, str]]
) -> tuple[dict[tuple[str, str], list[InstrumentData]], dict[str, dt.date], dict[str, Any]]:
    keys = sorted(set(keys))
    if not keys:
        return {}, {}, {}
    markets = [k[0] for k in keys]
    types = [k[1] for k in keys]
    instruments = conn.execute(
        sa.text(
            "SELECT i.symbol, i.market, i.asset_type, i.currency FROM instruments i "
            "JOIN unnest(CAST(:m AS text[]), CAST(:t AS text[])) AS k(market, asset_type) "
            "ON k.market = i.market AND k.asset_type = i.asset_type ORDER BY i.symbol"
        ),
        {"m": markets, "t": types},
    ).all()
    symbols = [r.symbol for r in instruments]
    columns = ", ".join(FUNDAMENTAL_COLUMNS)
    fundamentals = conn.execute(
        sa.text(
            f"SELECT DISTINCT ON (symbol) symbol, data_date, {columns} "
            "FROM instrument_fundamentals WHERE symbol = ANY(:s) AND data_date <= :d "
            "ORDER BY symbol, data_date DESC"
        ),
        {"s": symbols, "d": score_date},
    ).all()
    by_symbol = {r.symbol: r for r in fundamentals}
    prices = load_prices(conn, score_date, symbols)
    universes: dict[tuple[str, str], list[InstrumentData]] = defaultdict(list)
    dates: dict[str, dt.date] = {}
    for r in instruments:
        f = by_symbol.get(r.symbol)
        values: dict[str, Decimal | None] = {}
        if f is not None:
            dates[r.symbol] = f.data_date
            values = {c: getattr(f, c) for c in FUNDAMENTAL_COLUMNS if getattr(f, c) is not None}
        price = prices.get(r.symbol)
        universes[(r.market, r.asset_type)].append(
            InstrumentData(
                symbol=r.symbol,
                currency=str(r.currency).strip().upper(),
                close=price.close if price else None,
                fundamentals=values,
            )
        )
    return universes, dates, dict(prices)


def load_batch_inputs(
    conn: Connection, score_date: dt.date, batch: str, markets: Sequence[str] | None = None
) -> BatchInputs:
    users = _load_users(conn, score_date, batch, markets)
    criteria = _load_criteria(conn, [u.user_id for u in users], markets)
    keys = {(c.target_market, c.asset_type) for rows in criteria.values() for c in rows}
    universes, dates, prices = _load_universes(conn, score_date, keys)
    return BatchInputs(
        users=users,
        criteria=criteria,
        universes=universes,
        fundamentals_date=dates,
        prices=prices,
        rates=load_rates(conn, score_date),
    )


def _used_fields(sets: list[CriteriaSet]) -> list[str]:
    names: set[str] = set()
    for cs in sets:
        for rule in cs.rules:
            for metric in (rule.metric, *rule.required):
                names.update(METRIC_FIELDS.get(metric, ()))
    return sorted(names)


def _needed_currencies(sets: list[CriteriaSet], inputs: BatchInputs, base: str) -> set[str]:
    needed = {base}
    for cs in sets:
        if any(m in CONVERTED_METRICS for rule in cs.rules for m in (rule.metric, *rule.required)):
            needed.update(i.currency for i in inputs.universes.get(universe_key(cs), []))
    return needed


def universe_key(cs: CriteriaSet) -> tuple[str, str]:
    return (cs.target_market, cs.asset_type)


def _price_piece(inputs: BatchInputs, i: InstrumentData) -> str:
    key = ("price", i.symbol)
    piece: str | None = inputs.json_pieces.get(key)
    if piece is None:
        row = inputs.prices.get(i.symbol)
        piece = inputs.json_pieces[key] = dumps(
            {
                "symbol": i.symbol,
                "close": plain(i.close),
                "currency": i.currency,
                "priceDate": row.price_date.isoformat() if row and row.price_date else None,
                "source": row.source if row else None,
            }
        )
    return piece


def _fundamental_pieces(inputs: BatchInputs, i: InstrumentData) -> tuple[str, dict[str, str]]:
    """`"SYMBOL":{"dataDate":"…"` and, per field present, `"field":"value"` (JSON text)."""
    key = ("fundamentals", i.symbol)
    found: tuple[str, dict[str, str]] | None = inputs.json_pieces.get(key)
    if found is None:
        head = f'{dumps(i.symbol)}:{{"dataDate":"{inputs.fundamentals_date[i.symbol]}"'
        fields = {
            name: f'"{name}":"{plain(value)}"'
            for name, value in i.fundamentals.items()
            if value is not None
        }
        found = inputs.json_pieces[key] = (head, fields)
    return found


class _UniverseText(NamedTuple):
    """One universe's part of INPUTS_CAPTURED, as JSON text without the enclosing brackets."""

    prices: str  # price entries, comma-separated
    symbols: str  # the symbols as JSON strings, comma-separated
    fundamentals: str  # `"SYMBOL":{…}` members with the given fields, comma-separated


def _universe_text(
    inputs: BatchInputs, key: tuple[str, str], fields: tuple[str, ...]
) -> _UniverseText:
    """Built once per batch for each universe and set of captured fields: the batch's users
    share universes, so a user's INPUTS_CAPTURED is a join of a few of these."""
    cache_key = ("universe", key, fields)
    found: _UniverseText | None = inputs.json_pieces.get(cache_key)
    if found is None:
        universe = inputs.universes.get(key, [])
        fundamentals = []
        for i in universe:
            if i.symbol in inputs.fundamentals_date:
                head, pieces = _fundamental_pieces(inputs, i)
                values = "".join("," + pieces[name] for name in fields if name in pieces)
                fundamentals.append(f"{head}{values}}}")
        found = inputs.json_pieces[cache_key] = _UniverseText(
            prices=",".join(_price_piece(inputs, i) for i in universe),
            symbols=",".join(dumps(i.symbol) for i in universe),
            fundamentals=",".join(fundamentals),
        )
    return found


def _joined(parts: Iterable[str]) -> str:
    return ",".join(p for p in parts if p)


def capture_inputs_json(
    correlation_id: str, user: UserRow, sets: list[CriteriaSet], inputs: BatchInputs
) -> str:
    """INPUTS_CAPTURED as JSON text: enough to recompute SCORES_COMPUTED exactly.

    Built from text shared by the batch's users (a universe's prices and fundamentals are the
    same text whoever's calculation captures them); equal once parsed to the straightforward
    dict in the tests' reference.
    """
    # A criteria set's universe is its own (one market and asset type): its instruments carry
    # the raw values that set's rules read, not those of the user's other sets.
    texts = [_universe_text(inputs, universe_key(cs), tuple(_used_fields([cs]))) for cs in sets]
    rates = [
        {
            "from": "USD",
            "to": r.quote_currency,
            "rate": plain(r.rate),
            "rateDate": r.rate_date.isoformat(),
            "source": r.source,
        }
        for c in sorted(_needed_currencies(sets, inputs, user.base_currency))
        if (r := inputs.rates.get(c)) is not None
    ]
    criteria = ",".join(
        f'{{"criteriaVersionId":{dumps(cs.criteria_version_id)},'
        f'"targetMarket":{dumps(cs.target_market)},"assetType":{dumps(cs.asset_type)},'
        f'"version":{dumps(cs.version)},"rules":{dumps(cs.raw_rules)},'
        f'"assetIds":[{text.symbols}]}}'
        for cs, text in zip(sets, texts, strict=True)
    )
    return (
        f'{{"correlationId":"{correlation_id}","baseCurrency":{dumps(user.base_currency)},'
        f'"criteria":[{criteria}],"prices":[{_joined(t.prices for t in texts)}],'
        f'"rates":{dumps(rates)},'
        f'"fundamentals":{{{_joined(t.fundamentals for t in texts)}}},'
        f'"assetIds":[{_joined(t.symbols for t in texts)}]}}'
    )


def results_json(correlation_id: str, scores: list[AssetScore]) -> str:
    """SCORES_COMPUTED as JSON text, each breakdown in its compact form (equal to
    `results_payload`): the canonical one is rebuilt from it and INPUTS_CAPTURED (replay)."""
    parts = [
        f'{{"assetId":{dumps(s.symbol)},"criteriaVersionId":"{s.criteria_version_id}",'
        f'"score":"{format(s.score, "f")}",'
        f'"maxPossibleScore":"{format(s.max_possible_score, "f")}",'
        f'"percentage":{dumps(plain(s.percentage))},"outcomes":"{s.outcomes}"}}'
        for s in scores
    ]
    return f'{{"correlationId":"{correlation_id}","results":[{",".join(parts)}]}}'


def results_payload(correlation_id: str, scores: list[AssetScore]) -> dict[str, Any]:
    return {
        "correlationId": correlation_id,
        "results": [
            {
                "assetId": s.symbol,
                "criteriaVersionId": s.criteria_version_id,
                "score": plain(s.score),
                "maxPossibleScore": plain(s.max_possible_score),
                "percentage": plain(s.percentage),
                "outcomes": s.outcomes,
            }
            for s in scores
        ],
    }


def batch_metric_values(
    inputs: BatchInputs, users: list[UserOutcome]
) -> dict[tuple[str, str], str]:
    """The metric texts (JSON) of every (symbol, base currency) the users were scored on."""
    instruments = {i.symbol: i for universe in inputs.universes.values() for i in universe}
    usd_rates = inputs.usd_rates
    out: dict[tuple[str, str], str] = {}
    for user in users:
        for s in user.scores:
            key = (s.symbol, user.base_currency)
            if key not in out:
                texts = metric_texts(
                    instruments[s.symbol], base_currency=user.base_currency, usd_rates=usd_rates
                )
                out[key] = dumps(dict(sorted(texts.items())))
    return out


def score_user(
    user: UserRow,
    inputs: BatchInputs,
    *,
    score_date: dt.date,
    batch: str,
    job_correlation_id: str,
) -> UserOutcome:
    """Score one user; never raises for the user's own data, it records the failure instead."""
    started = time.perf_counter()
    correlation_id = str(uuid.uuid4())
    outcome = UserOutcome(user.user_id, correlation_id, user.base_currency, events=[])
    outcome.events.append(
        (
            "CALC_STARTED",
            {
                "correlationId": correlation_id,
                "userId": user.user_id,
                "timestamp": dt.datetime.now(dt.UTC).isoformat(),
                "scoreDate": score_date.isoformat(),
                "batchKey": batch,
                "jobCorrelationId": job_correlation_id,
            },
        )
    )
    stage = "criteria_validation"
    try:
        sets = [c.parse() for c in inputs.criteria.get(user.user_id, [])]
        stage = "inputs_capture"
        outcome.events.append(
            ("INPUTS_CAPTURED", capture_inputs_json(correlation_id, user, sets, inputs))
        )
        stage = "scoring"
        usd_rates = inputs.usd_rates
        for cs in sets:
            universe = inputs.universes.get(universe_key(cs), [])
            engine_started, engine_cpu_started = time.perf_counter(), time.thread_time()
            result = score_criteria_set(
                cs,
                universe,
                base_currency=user.base_currency,
                usd_rates=usd_rates,
                metrics_cache=inputs.metrics_cache,
            )
            inputs.engine_seconds += time.perf_counter() - engine_started
            inputs.engine_cpu_seconds += time.thread_time() - engine_cpu_started
            inputs.rule_evaluations += len(cs.rules) * len(universe)
            outcome.scores.extend(result.scores)
        outcome.events.append(("SCORES_COMPUTED", results_json(correlation_id, outcome.scores)))
    except Exception as exc:  # one user's failure never stops the batch
        if isinstance(exc, UserCalculationError):
            stage = exc.stage
        outcome.scores = []
        outcome.stage = stage
        outcome.error = {"type": type(exc).__name__, "message": str(exc)}
        outcome.events = [e for e in outcome.events if e[0] != "SCORES_COMPUTED"]
    duration_ms = int((time.perf_counter() - started) * 1000)
    completed: dict[str, Any] = {
        "correlationId": correlation_id,
        "durationMs": duration_ms,
        "assetCount": len(outcome.scores),
        "status": "success" if outcome.ok else "failed",
    }
    if not outcome.ok:
        completed["stage"] = outcome.stage
        completed["error"] = outcome.error
    outcome.events.append(("CALC_COMPLETED", completed))
    return outcome


def score_batch(
    conn: Connection,
    *,
    score_date: dt.date,
    batch: str,
    job_correlation_id: str,
    market_group: str = "all",
    markets: Sequence[str] | None = None,
) -> BatchOutput:
    started = time.perf_counter()
    inputs = load_batch_inputs(conn, score_date, batch, markets)
    loaded = time.perf_counter()
    output = BatchOutput(
        score_date=score_date,
        batch_key=batch,
        job_correlation_id=job_correlation_id,
        calculated_at=dt.datetime.now(dt.UTC),
        users=[],
        users_skipped=[],
        market_group=market_group,
        markets=tuple(markets) if markets is not None else None,
    )
    with gc_paused():
        for user in inputs.users:
            if not inputs.criteria.get(user.user_id):
                output.users_skipped.append(user.user_id)  # criteria deactivated since membership
                continue
            output.users.append(
                score_user(
                    user,
                    inputs,
                    score_date=score_date,
                    batch=batch,
                    job_correlation_id=job_correlation_id,
                )
            )
        output.metric_values = batch_metric_values(inputs, output.succeeded)
    output.duration_ms = int((time.perf_counter() - started) * 1000)
    output.timings = {
        "load_ms": int((loaded - started) * 1000),
        "engine_ms": int(inputs.engine_seconds * 1000),
        "engine_cpu_ms": int(inputs.engine_cpu_seconds * 1000),
        "build_ms": int((time.perf_counter() - loaded - inputs.engine_seconds) * 1000),
        "rule_evaluations": inputs.rule_evaluations,
    }
    return output
