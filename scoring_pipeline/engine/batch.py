"""Scoring of one batch from its inputs: each user scored and their calculation's events built.

One user's failure (invalid criteria, a missing rate, anything unexpected) is recorded with its
stage and never stops the batch. Nothing here reads or writes: the store loads the inputs and the
scores IO manager persists the result.
"""

import datetime as dt
import gc
import time
import uuid
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

from scoring_pipeline.engine.batch_inputs import BatchInputs, UserRow
from scoring_pipeline.engine.json_text import dumps
from scoring_pipeline.engine.metrics import metric_texts
from scoring_pipeline.engine.payloads import capture_inputs_json, results_json, universe_key
from scoring_pipeline.engine.scoring import AssetScore, score_criteria_set
from scoring_pipeline.errors import UserCalculationError


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
    # The (market, asset type) universe of each criteria set scored: `scores` are their
    # instruments, one score each.
    universes: list[tuple[str, str]] = field(default_factory=list)
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


# The metric texts of (instrument data, base currency, the two USD rates), as JSON: a night's
# batches all show the same few thousand, so a run worker process computes each once a night
# instead of once a batch. Keyed by the exact text of everything `metric_texts` reads, so a
# changed snapshot or fundamental is a new key, never a stale text; emptied when it outgrows a
# few nights.
_METRIC_TEXTS: dict[tuple[tuple[str, ...], str, str], str] = {}
METRIC_TEXTS_KEPT = 100_000


def batch_metric_values(
    inputs: BatchInputs, users: list[UserOutcome]
) -> dict[tuple[str, str], str]:
    """The metric texts (JSON) of every (symbol, base currency) the users were scored on: the
    instruments of each (universe, base currency) their criteria sets were scored over."""
    usd_rates = inputs.usd_rates
    if len(_METRIC_TEXTS) > METRIC_TEXTS_KEPT:
        _METRIC_TEXTS.clear()
    # Decimals by their text: 1.0 and 1.00 are equal (and hash alike) but print apart. An
    # instrument's part of the key is built once a batch, not once per base currency.
    instrument_keys: dict[str, tuple[str, ...]] = {}
    out: dict[tuple[str, str], str] = {}
    scored = dict.fromkeys((key, u.base_currency) for u in users for key in u.universes)
    for universe, base in scored:
        base_rate = str(usd_rates.get(base))
        for i in inputs.universes.get(universe, ()):
            key = (i.symbol, base)
            if key in out:
                continue
            instrument_key = instrument_keys.get(i.symbol)
            if instrument_key is None:
                instrument_key = instrument_keys[i.symbol] = (
                    i.symbol,
                    i.currency,
                    str(i.close),
                    *[f"{name}={value}" for name, value in i.fundamentals.items()],
                    str(usd_rates.get(i.currency)),
                )
            memo_key = (instrument_key, base, base_rate)
            text = _METRIC_TEXTS.get(memo_key)
            if text is None:
                texts = metric_texts(i, base_currency=base, usd_rates=usd_rates)
                text = _METRIC_TEXTS[memo_key] = dumps(dict(sorted(texts.items())))
            out[key] = text
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
    started_event = {  # keys in `jsonb`'s order, as every calculation event (`json_text.jsonb_key`)
        "userId": user.user_id,
        "batchKey": batch,
        "scoreDate": score_date.isoformat(),
        "timestamp": dt.datetime.now(dt.UTC).isoformat(),
        "correlationId": correlation_id,
        "jobCorrelationId": job_correlation_id,
    }
    outcome.events.append(("CALC_STARTED", started_event))
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
            outcome.universes.append(universe_key(cs))
        outcome.events.append(("SCORES_COMPUTED", results_json(correlation_id, outcome.scores)))
    except Exception as exc:  # one user's failure never stops the batch
        if isinstance(exc, UserCalculationError):
            stage = exc.stage
        outcome.scores = []
        outcome.universes = []
        outcome.stage = stage
        outcome.error = {"type": type(exc).__name__, "message": str(exc)}
        outcome.events = [e for e in outcome.events if e[0] != "SCORES_COMPUTED"]
    duration_ms = int((time.perf_counter() - started) * 1000)
    outcome.events.append(("CALC_COMPLETED", _completed(outcome, duration_ms)))
    return outcome


def _completed(outcome: UserOutcome, duration_ms: int) -> dict[str, Any]:
    """CALC_COMPLETED's payload: success, or failed with the stage and the error."""
    if outcome.ok:  # keys in `jsonb`'s order, as every calculation event (`json_text.jsonb_key`)
        return {
            "status": "success",
            "assetCount": len(outcome.scores),
            "durationMs": duration_ms,
            "correlationId": outcome.correlation_id,
        }
    return {
        "error": outcome.error,
        "stage": outcome.stage,
        "status": "failed",
        "assetCount": len(outcome.scores),
        "durationMs": duration_ms,
        "correlationId": outcome.correlation_id,
    }


def score_batch(
    inputs: BatchInputs,
    *,
    score_date: dt.date,
    batch: str,
    job_correlation_id: str,
    market_group: str = "all",
    markets: Sequence[str] | None = None,
    load_seconds: float = 0.0,
) -> BatchOutput:
    """Every member of the batch scored (or skipped: criteria deactivated since the membership
    was frozen); `load_seconds`, the time the store took to read `inputs`, joins the timings."""
    loaded = time.perf_counter()
    started = loaded - load_seconds
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
