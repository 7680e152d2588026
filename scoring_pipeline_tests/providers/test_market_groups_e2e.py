"""Per-market nights through the real webserver, daemon and run workers (SPEC §6): the three
groups' schedules as GraphQL shows them (next ticks across a DST change, a closed day's dry run
skipped), then one date scored by the three groups' jobs as their schedules launch them — rates
requested once, each group's prices once, three nights closed with their own figures, and every
group's rows kept."""

import datetime as dt
import json
import subprocess

import pytest
import sqlalchemy as sa

from scoring_pipeline.defs.market_groups.config import load_groups
from scoring_pipeline.runtime.dagster_api import LOCATION, REPOSITORY, DagsterApi
from scoring_pipeline.runtime.services import (
    PRIVATE_CRON,
    free_port,
    private_deployment_env,
    running_services,
)
from scoring_pipeline_tests import factories as f
from scoring_pipeline_tests import market_world as mw
from scoring_pipeline_tests.cli_helpers import CLI
from scoring_pipeline_tests.e2e import let_ticks_pass, runs, wait_for
from scoring_pipeline_tests.scenario import rules

_UNFINISHED = ("QUEUED", "NOT_STARTED", "STARTING", "STARTED", "CANCELING")

pytestmark = [pytest.mark.db, pytest.mark.slow]

DATE = mw.DATE

_FUTURE_TICKS = """
query Ticks($selector: ScheduleSelector!, $cursor: Float!) {
  scheduleOrError(scheduleSelector: $selector) {
    ... on Schedule { executionTimezone futureTicks(cursor: $cursor, limit: 4) {
      results { timestamp } } }
  }
}
"""
_DRY_RUN = """
mutation DryRun($selector: ScheduleSelector!, $timestamp: Float!) {
  scheduleDryRun(selectorData: $selector, timestamp: $timestamp) {
    ... on DryRunInstigationTick {
      evaluationResult { skipReason runRequests { runKey tags { key value } } error { message } }
    }
    ... on PythonError { message }
  }
}
"""


def _selector(name: str) -> dict[str, str]:
    return {
        "repositoryLocationName": LOCATION,
        "repositoryName": REPOSITORY,
        "scheduleName": f"{name}_overnight_scoring_schedule",
    }


def _utc(day: str, time: str) -> float:
    return dt.datetime.fromisoformat(f"{day}T{time}+00:00").timestamp()


def _rows(engine, sql, **params):
    with engine.connect() as conn:
        return conn.execute(sa.text(sql), params).all()


def test_three_groups_through_the_daemon(clean_db, database_url, tmp_path, loopback, reply):
    engine = clean_db
    prices = {"AAA": (30, "USD"), "PPP": (12, "BRL"), "CCC": (10, "EUR")}
    mw.three_markets(engine, prices)
    users = {
        "us_eu": f.user(
            engine,
            holdings=[("AAA", "USD")],
            criteria=[
                ("US_TECH", "stock", rules()),
                ("EU_IND", "stock", [f.rule("revenue", "gt", "100", 3)]),
            ],
        ),
        "br": f.user(engine, holdings=[("PPP", "BRL")], criteria=[("BR_BANKS", "stock", rules())]),
        # Bad data in New York's night only: its criteria name a metric that does not exist.
        "bad_us": f.user(
            engine,
            holdings=[("AAA", "USD")],
            criteria=[("US_TECH", "stock", [f.rule("no_such_metric", "lt", "15", 10)])],
        ),
    }
    (tmp_path / "groups.toml").write_text(mw.THREE_GROUPS)
    mw.script_providers(loopback, reply, prices, {"EUR": 0.5, "BRL": 5})
    env = private_deployment_env(database_url, tmp_path / "home", tmp_path / "unused_files")
    for key in ("RATES_FILE", "PRICES_FILE", *mw.PROXIES):
        env.pop(key, None)
    env.update(mw.loopback_providers_env(loopback))
    env["MARKET_GROUPS_FILE"] = str(tmp_path / "groups.toml")
    # The groups' schedules tick at their markets' real opening times on weekdays: one due while
    # the services run would start today's night of its group beside the test's date.
    markets = {
        r.code: (r.timezone, r.opens_at)
        for r in _rows(engine, "SELECT code, timezone, opens_at FROM markets")
    }
    groups = load_groups(env, PRIVATE_CRON, "UTC", lambda: markets)
    let_ticks_pass((g.cron, g.timezone) for g in groups)
    with running_services(port=free_port(), workers=2, env=env) as services:
        api = DagsterApi(services.url)
        # Next ticks as the UI shows them: New York's crosses the end of DST on 2026-11-01.
        us = api.query(
            _FUTURE_TICKS, {"selector": _selector("us"), "cursor": _utc("2026-10-30", "00:00")}
        )["scheduleOrError"]
        assert us["executionTimezone"] == "America/New_York"
        ticks = [
            dt.datetime.fromtimestamp(t["timestamp"], dt.UTC).strftime("%a %m-%d %H:%M")
            for t in us["futureTicks"]["results"]
        ]
        assert ticks == ["Fri 10-30 11:30", "Mon 11-02 12:30", "Tue 11-03 12:30", "Wed 11-04 12:30"]
        # A closed day: the schedule's evaluation skips it, naming the calendar.
        for name, day, time, mic in (
            ("us", "2026-11-26", "12:30", "XNYS"),
            ("br", "2026-11-20", "11:00", "BVMF"),
            ("eu", "2026-12-24", "06:00", "XETR"),
        ):
            result = api.query(
                _DRY_RUN, {"selector": _selector(name), "timestamp": _utc(day, time)}
            )["scheduleDryRun"]["evaluationResult"]
            assert not result["runRequests"], (name, result)
            assert f"not a trading session of {mic}" in (result["skipReason"] or ""), result
        # An open day: the tick asks for the group's night of its local date.
        result = api.query(
            _DRY_RUN, {"selector": _selector("br"), "timestamp": _utc(DATE, "11:00")}
        )["scheduleDryRun"]["evaluationResult"]
        (request,) = result["runRequests"]
        assert {t["key"]: t["value"] for t in request["tags"]}["scoring/market_group"] == "br"

        # The day's order of opens; each launch is what the group's schedule requests.
        for name, closed in (("eu", "completed"), ("br", "completed"), ("us", "partial")):
            api.launch_job(
                f"{name}_overnight_snapshots_job",
                tags={"dagster/partition": DATE, "scoring/trigger": "schedule"},
            )
            wait_for(
                f"the {name} night to close and its dashboards to warm",
                lambda n=name, c=closed: (
                    len(
                        _rows(
                            engine,
                            "SELECT 1 FROM overnight_job_runs WHERE market_group = :g "
                            "AND status IN (:s, 'completed')",
                            g=n,
                            s=c,
                        )
                    )
                    == 2
                    or None
                ),
                timeout=240,
            )
        # retry-failed leaves a batch alone while its run is still ending.
        wait_for(
            "New York's batch run to end",
            lambda: not runs(api, "us_scoring_batch_job", statuses=list(_UNFINISHED)) or None,
        )
        # The operator mends the user's criteria and retries New York's failed batch only.
        with engine.begin() as conn:
            conn.execute(
                sa.text(
                    "UPDATE criteria_versions SET rules = CAST(:r AS jsonb) WHERE user_id = :u"
                ),
                {"r": json.dumps(rules()), "u": users["bad_us"]},
            )
        retry = subprocess.run(
            [*CLI, "retry-failed", "--date", DATE, "--group", "us", "--url", services.url],
            env=env,
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert retry.returncode == 0, retry.stderr
        assert "in group us: b0000" in retry.stdout
        wait_for(
            "the retried us night to complete",
            lambda: (
                _rows(
                    engine,
                    "SELECT 1 FROM overnight_job_runs WHERE job_type = 'scoring' "
                    "AND market_group = 'us' AND status = 'completed'",
                )
                or None
            ),
            timeout=240,
        )

    assert len(loopback.requests_to(mw.LATEST)) == 1
    asked = [r.query["symbols"][0] for r in loopback.requests_to(mw.QUOTE)]
    # At most one request per group, for what the date lacked: Berlin's night priced its user's
    # held AAA with its CCC, São Paulo asked for PPP, New York found AAA priced already.
    assert asked == ["AAA,CCC", "PPP"]
    nights = {
        r.market_group: r.metrics
        for r in _rows(
            engine,
            "SELECT market_group, metrics FROM overnight_job_runs WHERE job_type = 'scoring'",
        )
    }
    assert {g: (m["users_total"], m["assets_scored"]) for g, m in nights.items()} == {
        "us": (2, 2),
        "br": (1, 1),
        "eu": (1, 1),
    }
    scores = _rows(engine, "SELECT user_id::text AS u, symbol FROM asset_scores ORDER BY 1, 2")
    assert {(s.u, s.symbol) for s in scores} == {
        (users["us_eu"], "AAA"),
        (users["us_eu"], "CCC"),
        (users["br"], "PPP"),
        (users["bad_us"], "AAA"),
    }
    (cache,) = _rows(
        engine, "SELECT payload FROM dashboard_cache WHERE user_id = :u", u=users["us_eu"]
    )
    # The dashboard combines both of the user's groups' current scores.
    shown = {a["symbol"] for top in cache.payload["topAssets"] for a in top["assets"]}
    assert shown == {"AAA", "CCC"}, json.dumps(cache.payload)
