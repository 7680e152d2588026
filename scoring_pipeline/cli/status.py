"""`scoring-pipeline status`: the latest nights, or one date's night in detail, from
`overnight_job_runs` (what an operator otherwise reads with SQL)."""

import argparse
import datetime as dt
import os
from typing import Any

from sqlalchemy.engine import Connection

from scoring_pipeline.cli.options import app_engine, parse_date, require_dagster_home
from scoring_pipeline.errors import ConfigurationError
from scoring_pipeline.runtime.dagster_api import DEFAULT_URL
from scoring_pipeline.store import month_partitions
from scoring_pipeline.store.month_partitions import HISTORY_TABLES, Coverage
from scoring_pipeline.store.night.closing import failed_users
from scoring_pipeline.store.night.model import (
    ALL_MARKETS,
    CACHE_WARM,
    FIRST_CLOSED_AFTER_MS,
    Night,
    NightStatus,
    find_night,
    group_option,
    recent_nights,
)
from scoring_pipeline.store.night.outcomes import RUN_DIED_STAGE, failed_before_scoring
from scoring_pipeline.store.night.root_span import PENDING as PENDING_REPORT
from scoring_pipeline.store.night.root_span import PENDING_KEPT
from scoring_pipeline.telemetry import RETRY_AFTER_S

RECENT = 10


def _when(value: dt.datetime | None) -> str:
    return value.astimezone(dt.UTC).strftime("%Y-%m-%d %H:%M:%S UTC") if value else "-"


def _seconds(ms: float) -> str:
    seconds = ms / 1000
    if seconds < 600:
        return f"{seconds:.1f} s"
    return f"{seconds / 60:.0f} min" if seconds < 2 * 3600 else f"{seconds / 3600:.1f} h"


def _closed_after(night: Night) -> tuple[float, float] | None:
    """How many ms after its start the night first closed and last closed (a retry closes it
    again); None while it is open."""
    if night.completed_at is None:
        return None
    last = (night.completed_at - night.started_at).total_seconds() * 1000
    return float(night.metrics.get(FIRST_CLOSED_AFTER_MS, last)), last


def _took(night: Night) -> str:
    """How long the night took until it first closed (a retry later closes it again)."""
    closed = _closed_after(night)
    return "-" if closed is None else _seconds(closed[0])


def _completed(night: Night) -> str:
    """When the night closed, how long it took, and when re-scored batches closed it again."""
    closed = _closed_after(night)
    if closed is None:
        return "-"
    first, last = closed
    again = "" if last - first < 1000 else f"; closed again {_seconds(last)} after its start"
    return f"{_when(night.completed_at)} (took {_seconds(first)}{again})"


def _asset(night: Night, name: str) -> str:
    """The UI name of one of the night's group's assets (`us/scores`; `scores` for the default
    group)."""
    return name if night.market_group == ALL_MARKETS else f"{night.market_group}/{name}"


def _dashboards(night: Night, warm: Night | None) -> str:
    if warm is None and night.status is not NightStatus.STARTED and not _scored_any(night):
        # No warm run follows a night with no user scored (0 active users, or every one
        # failed): "not warmed yet" read as if the dashboards were still to come.
        return "none to warm (no user scored)"
    if warm is None:
        return "not warmed yet"
    text = f"{warm.status.value}, {warm.metrics.get('users_warm', warm.users_processed)} warm"
    if warm.started_at < night.started_at:
        # The night was started again (`score`, a tick after a failed start) since this warming:
        # it is an earlier attempt's, until this one's batches land.
        return f"none warmed since the night was started again (before: {text})"
    return text


def _counted(night: Night) -> bool:
    """Whether the night's users and batches are counted: at its first batch outcome (a night
    being started, or started again, has none yet)."""
    return "users_total" in night.metrics or night.status is not NightStatus.STARTED


def _figure(night: Night, key: str) -> int:
    return int(night.metrics.get(key, 0) or 0)


def _scored_any(night: Night) -> bool:
    """Whether the night scored a user (as far as its figures say: a night without them
    counts as having scored)."""
    return "users_success" not in night.metrics or _figure(night, "users_success") > 0


def _pruned(night: Night, coverage: Coverage) -> list[str]:
    """The night's history tables whose month `prune` dropped."""
    return coverage.dropped(night.score_date, HISTORY_TABLES)


def _overview(nights: list[tuple[Night, Night | None]], coverage: Coverage) -> list[str]:
    header = (
        f"{'score date':<11} {'group':<8} {'status':<10} {'users':>7} {'failed':>7} "
        f"{'batches failed':>15}  {'took':>8}  dashboards"
    )
    lines = [header]
    for night, warm in nights:
        counted = _counted(night)
        batches = f"{_figure(night, 'batches_failed')}/{_figure(night, 'batches_total')}"
        lines.append(
            f"{night.score_date.isoformat():<11} {night.market_group:<8} "
            f"{night.status.value:<10} "
            f"{_figure(night, 'users_total') if counted else '…':>7} "
            f"{_figure(night, 'users_failed'):>7} {batches if counted else '…':>15}  "
            f"{_took(night):>8}  {_dashboards(night, warm)}"
            + ("  (stale inputs)" if _stale_inputs(night) else "")
            + ("  (pruned)" if _pruned(night, coverage) else "")
            + ("  (its `score` is gone: see `status --date`)" if _score_gone(night) else "")
        )
    return lines


def _stale_inputs(night: Night) -> list[str]:
    """The night's inputs reused stale from an earlier snapshot (every provider failed)."""
    return [what for what in ("rates", "prices") if night.metrics.get(f"{what}_stale")]


def _prices_line(night: Night) -> list[str]:
    """How many of the night's needed symbols have no price (their assets are skipped)."""
    if "prices_unpriced" not in night.metrics:
        return []
    unpriced = _figure(night, "prices_unpriced")
    rejected = _figure(night, "prices_unpriced_rejected")  # of those unpriced, as they are
    named = list(night.metrics.get("prices_unpriced_symbols") or [])
    which = f" ({', '.join(named)}{', …' if unpriced > len(named) else ''})" if named else ""
    why = (
        f": {unpriced - rejected} not returned by the provider, {rejected} refused as invalid"
        if unpriced
        else ""
    )
    stale = "; stale: reused from an earlier date" if night.metrics.get("prices_stale") else ""
    return [
        f"prices          {unpriced} of {_figure(night, 'prices_symbols')} needed symbols "
        f"without a price{which}{why}{stale}"
    ]


def _detail(
    night: Night,
    warm: Night | None,
    failed: list[dict[str, Any]],
    configured: list[str],
    coverage: Coverage,
    score_gone: str | None = None,
) -> list[str]:
    lines = [
        f"score date      {night.score_date}",
        f"market group    {night.market_group}{_removed(night, configured)}",
        f"job status      {night.status.value}",
        f"started         {_when(night.started_at)}",
        f"completed       {_completed(night)}",
        _users_line(night),
        f"assets scored   {_figure(night, 'assets_scored')}",
        *_prices_line(night),
        _batches_line(night),
        f"dashboards      {_dashboards(night, warm)}",
    ]
    details = night.error_details or {}
    if night.status is NightStatus.FAILED and details.get("stage"):
        lines.append(f"error           stage {details['stage']}: {details.get('message')}")
    stale = _stale_inputs(night)
    if stale:
        lines.append(
            f"stale inputs    {' and '.join(stale)}: every provider failed, an earlier "
            "snapshot was reused"
        )
    if night.metrics.get(PENDING_REPORT) is not None:
        lines.append(f"report          {_pending_report(night)}")
    pruned = _pruned(night, coverage)
    if pruned:
        lines.append(
            f"pruned          its month of {' and '.join(pruned)} was dropped (`scoring-pipeline "
            "prune`): the figures above stand, its calculations can no longer be replayed"
        )
    lines.extend(failed_user_line(failure) for failure in failed[:20])
    # `failed` is the first 100 at most: the night's figure counts them all.
    failed_in_all = max(_figure(night, "users_failed"), len(failed))
    if failed_in_all > 20:
        lines.append(
            f"  … and {failed_in_all - 20} more (every one in "
            "scoring_batch_results.failed_users of the date)"
        )
    # The command that scores this night anew (its group's own, for a configured group).
    score = f"scoring-pipeline score --date {night.score_date}{group_option(night.market_group)}"
    if pruned and night.status is not NightStatus.COMPLETED and night.market_group in configured:
        lines.append(
            "next            its batches cannot be retried (a retry would write back part of "
            f"a pruned month); to score the date anew, `{score}`"
        )
    elif night.status in (NightStatus.PARTIAL, NightStatus.FAILED) and failed:
        lines.append(f"next            {_next_step(night, configured, failed)}")
    elif stale and night.status is NightStatus.COMPLETED and night.market_group in configured:
        lines.append(
            f"next            once the providers answer, `{score} --refresh` fetches the inputs "
            "again and re-scores the night"
        )
    elif night.status is NightStatus.STARTED and score_gone and night.market_group in configured:
        lines.append(
            "next            the `scoring-pipeline score` that started it stopped without "
            f"closing it ({score_gone}): `{score}` scores the night again"
        )
    elif failed_before_scoring(night) and night.market_group in configured:
        lines.append(
            f"next            once its inputs can be fetched, start it again with `{score}` (its "
            "batches cannot score without them: retrying them does nothing)"
        )
    return lines


def _pending_report(night: Night) -> str:
    """What becomes of a night's report (root span) that the collector did not take."""
    line = "not taken by the OpenTelemetry collector when the night closed; "
    closed = night.completed_at
    if closed is not None and closed < dt.datetime.now(dt.UTC) - PENDING_KEPT:
        return (
            line + f"no longer sent (only nights closed in the last {PENDING_KEPT.days} days are)"
        )
    return line + (
        f"sent again every {RETRY_AFTER_S:.0f} s by the services' night_report_sensor, and by "
        "the next `scoring-pipeline score`"
    )


def _users_line(night: Night) -> str:
    if not _counted(night):
        return (
            "users           not counted yet: the night's users and batches are counted when "
            "its first batch lands"
        )
    return (
        f"users           {_figure(night, 'users_total')} in all: "
        f"{_figure(night, 'users_success')} scored, {_figure(night, 'users_failed')} failed, "
        f"{_figure(night, 'users_skipped') + _figure(night, 'users_skipped_no_criteria')} "
        "skipped"
    )


def _batches_line(night: Night) -> str:
    if not _counted(night):
        return "batches         not counted yet"
    if failed_before_scoring(night):
        return (
            f"batches         {_figure(night, 'batches_total')} "
            "(none scored: the night failed before its batches)"
        )
    return (
        f"batches         {_figure(night, 'batches_total')} "
        f"({_figure(night, 'batches_failed')} failed)"
    )


def _removed(night: Night, configured: list[str]) -> str:
    """Said of a night whose group the deployment no longer configures, whatever its status:
    its assets and jobs are gone, so it is neither retried nor re-scored as a group of its own."""
    if night.market_group in configured:
        return ""
    return f" (no longer configured; now: {', '.join(configured)})"


def _next_step(night: Night, configured: list[str], failed: list[dict[str, Any]]) -> str:
    """How to recover a night's failed users: retry its failed batches, or, for a group the
    deployment no longer configures (its assets and jobs are gone), score the date anew."""
    if night.market_group not in configured:
        return (
            f"group {night.market_group} is no longer configured (now: {', '.join(configured)}), "
            "so its batches cannot be retried: fix those users' data, then score the date with "
            f"the configured groups: `scoring-pipeline score --date {night.score_date}`"
        )
    group = group_option(night.market_group)
    stages = {f.get("stage") for f in failed}
    if stages == {"currency_conversion"}:
        # The frozen rates lack a currency: a retry would use the same snapshot.
        return (
            "the date's frozen rates lack a currency they need: once the rates provider has it, "
            f"`scoring-pipeline score --date {night.score_date}{group} --refresh` (fetches the "
            "inputs again and re-scores the night; in the UI: materialise exchange_rates with "
            f"config refresh: true, then {_asset(night, 'scores')} → Failed and missing)"
        )
    fix = (
        "their batch runs ended without scoring them (stage batch: a worker died, a run was "
        "cancelled); retry them with"
        if stages == {RUN_DIED_STAGE}
        else "fix those users' data, then"
    )
    return (
        f"{fix} `scoring-pipeline retry-failed "
        f"--date {night.score_date}{group}`{_url_note()} (or in the UI: asset "
        f"{_asset(night, 'scores')} → Partitions → Materialize… → Failed and missing)"
    )


def failed_user_line(failure: dict[str, Any]) -> str:
    """One failed user of a night (`failed_users`), as `status` and `score` print it."""
    error = failure.get("error") or {}
    return (
        f"  failed user {failure.get('userId')} (batch {failure.get('batch')}, "
        f"stage {failure.get('stage')}): {error.get('message')}"
    )


def _url_note() -> str:
    """retry-failed asks the webserver, which `services --port` may have put anywhere: say so,
    unless DAGSTER_WEBSERVER_URL tells retry-failed where it is."""
    if os.environ.get("DAGSTER_WEBSERVER_URL"):
        return ""
    return f", with `--url URL` when the webserver is not at {DEFAULT_URL}"


def _score_gone(night: Night) -> str | None:
    """For an open night that `scoring-pipeline score` started: why that command no longer
    runs (killed, its session lost), or None. Its night stays `started` until the next `score`
    of the date: the services' sensors leave the runs of `score` to it."""
    if night.status is not NightStatus.STARTED or night.snapshot_run_id is None:
        return None
    import dagster as dg

    from scoring_pipeline.runtime.run_launcher import score_gone
    from scoring_pipeline.store.db import check_dagster_storage

    try:
        require_dagster_home()  # else Dagster would open an instance of SQLite files there
        # Once, quickly: dagster-postgres retries a storage it cannot reach for ~14 s, warning.
        check_dagster_storage(os.environ["DAGSTER_PG_URL"])
    except ConfigurationError:
        return None
    try:
        with dg.DagsterInstance.get() as instance:
            return score_gone(instance, night.snapshot_run_id)
    except Exception:  # noqa: BLE001 - Dagster's storage apart and unreachable: the night's
        return None  # figures are the application database's, and are shown without the hint


def _warming(conn: Connection, night: Night) -> Night | None:
    """The `cache_warm` night that follows a scoring night."""
    return find_night(conn, night.score_date, job_type=CACHE_WARM, market_group=night.market_group)


def _configured_groups() -> list[str]:
    from scoring_pipeline.definitions import market_groups

    return [g.name for g in market_groups()]


def _known_group(conn: Connection, name: str, configured: list[str]) -> None:
    """Refuse a group that is neither configured nor the group of a night already recorded
    (a deployment that moved to market groups still lists its nights of `all`)."""
    if name in configured or recent_nights(conn, 1, market_group=name):
        return
    raise ConfigurationError(
        f"--group {name}: no such market group (configured: {', '.join(configured)})"
    )


def cmd_status(args: argparse.Namespace) -> int:
    engine = app_engine()
    # Read once (the groups file, the markets table): for `--group` and a night's next step.
    configured = _configured_groups() if args.group is not None or args.date is not None else []
    with engine.connect() as conn:
        if args.group is not None:
            _known_group(conn, args.group, configured)
        if args.date is None:
            nights = recent_nights(conn, RECENT, market_group=args.group)
            if not nights:
                print("no night has been started yet")
                return 0
            months = month_partitions.coverage(conn)
            for line in _overview([(n, _warming(conn, n)) for n in nights], months):
                print(line)
            return 0
        score_date = parse_date(args.date)
        found = recent_nights(conn, 1_000, score_date=score_date, market_group=args.group)
        if not found:
            from scoring_pipeline.defs.partitions import SCORE_DATE_START, score_dates_ahead_of_utc

            # The widest score dates any code location has (up to tomorrow in UTC, for a group
            # ahead of UTC): `score --date` refuses a date beyond them, no night can be started.
            if not score_dates_ahead_of_utc.has_partition_key(score_date.isoformat()):
                today = dt.datetime.now(dt.UTC).date()
                print(
                    f"no night of {score_date}: score dates run from {SCORE_DATE_START} to "
                    f"today ({today}, UTC)"
                )
                return 1
            which = f" in group {args.group}" if args.group else ""
            only = f" --group {args.group}" if args.group else ""
            print(
                f"no night of {score_date}{which}: start it with `scoring-pipeline score "
                f"--date {score_date}{only}` or its snapshots job"
            )
            return 1
        months = month_partitions.coverage(conn)
        for index, night in enumerate(found):
            failed = failed_users(conn, score_date, market_group=night.market_group)
            if index:
                print()
            warm, gone = _warming(conn, night), _score_gone(night)
            for line in _detail(night, warm, failed, configured, months, gone):
                print(line)
    return 0
