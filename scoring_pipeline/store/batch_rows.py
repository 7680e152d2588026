"""A batch's output as COPY text lines for `asset_scores`, `score_history` and
`calculation_events`, serialised once before the write transaction opens (no locks held)."""

from dataclasses import dataclass

from scoring_pipeline.engine.batch import BatchOutput
from scoring_pipeline.engine.json_text import dumps
from scoring_pipeline.store.copy import copy_field
from scoring_pipeline.store.payload_compression import CAPTURED_EVENTS

NULL = "\\N"  # COPY's text for NULL

SCORE_COLUMNS = (
    "user_id",
    "symbol",
    "criteria_version_id",
    "score",
    "max_possible_score",
    "percentage",
    "score_date",
    "correlation_id",
    "calculated_at",
    "outcomes",
    "base_currency",
    "values_revision",
)
HISTORY_COLUMNS = (
    "user_id",
    "symbol",
    "score_date",
    "criteria_version_id",
    "score",
    "correlation_id",
    "calculated_at",
    "outcomes",
    "base_currency",
    "values_revision",
)
EVENT_COLUMNS = (
    "correlation_id",
    "user_id",
    "event_type",
    "payload",
    "created_at",
    "score_date",
)


@dataclass
class PreparedBatch:
    """The batch's COPY text, built before the write transaction opens (no locks held)."""

    scores_by_user: dict[str, list[str]]
    history: list[str]
    # Event lines in calculation order, split where the payloads' compression changes
    # (`store/payload_compression`): CALC_STARTED and INPUTS_CAPTURED, then the rest.
    captured_events: list[str]
    computed_events: list[str]
    rows: int


def prepare_batch(output: BatchOutput, revisions: dict[tuple[str, str], int]) -> PreparedBatch:
    """Serialise every row once, in COPY's text format. `revisions`: the revision of metric
    values each (symbol, base currency) of the batch shows, as `store/metric_values` stored
    them (nearly always 1)."""
    date = output.score_date.isoformat()
    at = output.calculated_at.isoformat()
    later = {pair: r for pair, r in revisions.items() if r != 1}
    scores_by_user: dict[str, list[str]] = {}
    history: list[str] = []
    for user in output.succeeded:
        lines = scores_by_user[user.user_id] = []
        prefix = f"{user.user_id}\t"
        suffix = f"\t{user.correlation_id}\t{at}\t"
        base = f"\t{user.base_currency}\t"
        for s in user.scores:
            symbol = copy_field(s.symbol)
            score, maximum, percentage, *_json = s.texts  # plain decimal text: nothing to escape
            revision = later.get((s.symbol, user.base_currency), 1) if later else 1
            lines.append(
                f"{prefix}{symbol}\t{s.criteria_version_id}\t{score}\t{maximum}\t"
                f"{NULL if percentage is None else percentage}\t"
                f"{date}{suffix}{s.outcomes}{base}{revision}\n"
            )
            history.append(
                f"{prefix}{symbol}\t{date}\t{s.criteria_version_id}\t{score}{suffix}"
                f"{s.outcomes}{base}{revision}\n"
            )
    captured: list[str] = []
    computed: list[str] = []
    for u in output.users:
        for event_type, payload in u.events:
            (captured if event_type in CAPTURED_EVENTS else computed).append(
                f"{u.correlation_id}\t{u.user_id}\t{event_type}\t"
                f"{copy_field(payload if isinstance(payload, str) else dumps(payload))}"
                f"\t{at}\t{date}\n"
            )
    return PreparedBatch(scores_by_user, history, captured, computed, len(history))
