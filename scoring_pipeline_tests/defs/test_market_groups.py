"""Market groups (SPEC §6 per-market nights): configuration checked at load, tick times in each
exchange's timezone across the DST changes, closed days skipped with a reason, and the default
configuration unchanged. Tick times are Dagster's own (its cron iterator, the one the daemon
uses), compared with `exchange_calendars`' session opens."""

import datetime as dt
import logging
from pathlib import Path
from zoneinfo import ZoneInfo

import dagster as dg
import exchange_calendars
import pytest

from scoring_pipeline.defs.market_groups.config import GROUPS_FILE_VARIABLE, load_groups
from scoring_pipeline.defs.market_groups.group import MarketGroup, default_group
from scoring_pipeline.defs.nights import build_nights
from scoring_pipeline.defs.resources import DatabaseResource
from scoring_pipeline.errors import ConfigurationError
from scoring_pipeline_tests import market_world as mw

MARKETS = {
    "US_TECH": ("America/New_York", dt.time(9, 30)),
    "BR_BANKS": ("America/Sao_Paulo", dt.time(10, 0)),
    "EU_IND": ("Europe/Berlin", dt.time(9, 0)),
    "US_REITS": ("America/New_York", dt.time(9, 30)),
    "LATE": ("America/New_York", dt.time(10, 0)),
}


def _load(tmp_path: Path, text: str | None) -> list[MarketGroup]:
    env = {"OVERNIGHT_JOB_CRON": "0 4 * * *"}
    if text is not None:
        path = tmp_path / "groups.toml"
        path.write_text(text)
        env[GROUPS_FILE_VARIABLE] = str(path)
    return load_groups(env, "0 4 * * *", "UTC", lambda: MARKETS)


@pytest.fixture
def three(tmp_path: Path) -> dict[str, MarketGroup]:
    return {g.name: g for g in _load(tmp_path, mw.THREE_GROUPS)}


def test_without_a_file_there_is_one_default_group_on_the_overnight_cron(tmp_path):
    (group,) = _load(tmp_path, None)
    assert group.name == "all" and group.markets is None and group.is_default
    assert (group.cron, group.timezone) == ("0 4 * * *", "UTC")
    assert group.closed_reason(dt.date(2026, 11, 26)) is None  # the cron alone decides
    nights = build_nights([group])
    (night,) = nights.nights.values()
    # The historical names and keys: nothing changes for an unconfigured deployment.
    assert (night.prices.key, night.scores.key) == (dg.AssetKey("prices"), dg.AssetKey("scores"))
    assert night.snapshots_job.name == "overnight_snapshots_job"
    assert night.batch_job.name == "scoring_batch_job"
    assert night.schedule.name == "overnight_scoring_schedule"
    assert night.scores.partitions_def.name == "scoring_night_batches"


def test_three_groups_take_timezone_and_open_from_the_markets_table(three):
    us, br, eu = three["us"], three["br"], three["eu"]
    assert (us.timezone, us.cron, us.markets) == ("America/New_York", "30 7 * * 1-5", ("US_TECH",))
    assert (br.timezone, br.cron) == ("America/Sao_Paulo", "0 8 * * 1-5")
    assert (eu.timezone, eu.cron) == ("Europe/Berlin", "0 7 * * 1-5")
    nights = build_nights(list(three.values()))
    assert {a.key.to_user_string() for a in nights.assets()} == {
        "active_users",
        "exchange_rates",
        "us/prices",
        "us/scores",
        "br/prices",
        "br/scores",
        "eu/prices",
        "eu/scores",
    }
    us_night = nights.nights["us"]
    assert us_night.snapshots_job.name == "us_overnight_snapshots_job"
    assert us_night.batch_job.name == "us_scoring_batch_job"
    assert us_night.schedule.name == "us_overnight_scoring_schedule"
    assert us_night.schedule.execution_timezone == "America/New_York"
    assert us_night.scores.partitions_def.name == "us_scoring_night_batches"


def test_explicit_settings_win_and_closed_days_may_run(tmp_path):
    (group,) = _load(
        tmp_path,
        '[groups.x]\nmarkets = ["LATE"]\ntimezone = "Asia/Tokyo"\nopens_at = "09:00"\n'
        "lead_minutes = 90\nrun_on_closed_days = true\n",
    )
    assert (group.timezone, group.cron, group.calendar) == ("Asia/Tokyo", "30 7 * * *", None)
    assert group.closed_reason(dt.date(2026, 11, 28)) is None  # a Saturday, but asked for


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ('[groups.us]\nmarkets = ["NOPE"]\n', "no market 'NOPE' in the markets table"),
        (
            '[groups.a]\nmarkets = ["US_TECH"]\n[groups.b]\nmarkets = ["US_TECH"]\n',
            "market US_TECH is in groups a and b",
        ),
        (
            '[groups.us]\nmarkets = ["US_TECH", "US_TECH"]\n',
            "group us lists market US_TECH more than once",
        ),
        ('[groups.us]\nmarkets = ["US_TECH"]\ncalendar = "XXXX"\n', "unknown exchange calendar"),
        ('[groups.us]\nmarkets = ["US_TECH"]\ntimezone = "Mars/Base"\n', "unknown timezone"),
        ('[groups.all]\nmarkets = ["US_TECH"]\n', "group name 'all'"),
        ('[groups.US]\nmarkets = ["US_TECH"]\n', "group name 'US'"),
        ("[groups.us]\nmarkets = []\n", "groups.us.markets"),
        ('[groups.us]\nmarkets = ["US_TECH"]\nlead = 3\n', "groups.us.lead"),
        (
            '[groups.us]\nmarkets = ["US_TECH"]\nrun_on_closed_days = "yes"\n',
            "groups.us.run_on_closed_days",
        ),
        ("[groups.us\n", "not valid TOML"),
        (
            '[groups.us]\nmarkets = ["US_TECH", "LATE"]\n',
            "its markets have different opens_at values",
        ),
        (
            '[groups.us]\nmarkets = ["US_TECH"]\nopens_at = "01:00"\n',
            "is the previous day",
        ),
    ],
)
def test_a_bad_file_fails_the_load_with_one_clear_error(tmp_path, text, message):
    with pytest.raises(ConfigurationError, match="MARKET_GROUPS_FILE") as raised:
        _load(tmp_path, text)
    assert message in str(raised.value)


def test_a_file_that_is_not_utf8_is_named(tmp_path):
    path = tmp_path / "groups.toml"
    path.write_bytes(b"\xff\xfe[groups.us]\n")
    with pytest.raises(ConfigurationError) as raised:
        load_groups({GROUPS_FILE_VARIABLE: str(path)}, "0 4 * * *", "UTC", lambda: MARKETS)
    assert (
        str(raised.value) == f"MARKET_GROUPS_FILE={str(path)!r}: not UTF-8 text (byte 0: b'\\xff')"
    )


def test_a_missing_file_is_named(tmp_path):
    env = {GROUPS_FILE_VARIABLE: str(tmp_path / "absent.toml")}
    with pytest.raises(ConfigurationError, match="cannot read the file"):
        load_groups(env, "0 4 * * *", "UTC", lambda: MARKETS)


def test_without_the_markets_table_the_file_must_name_timezone_and_open(tmp_path):
    def unreachable() -> dict[str, tuple[str, dt.time]]:
        raise OSError("connection refused")

    path = tmp_path / "g.toml"
    path.write_text('[groups.us]\nmarkets = ["US_TECH"]\ncalendar = "XNYS"\n')
    with pytest.raises(ConfigurationError, match="could not be read .*set both in the file"):
        load_groups({GROUPS_FILE_VARIABLE: str(path)}, "0 4 * * *", "UTC", unreachable)
    path.write_text(
        '[groups.us]\nmarkets = ["US_TECH"]\ncalendar = "XNYS"\n'
        'timezone = "America/New_York"\nopens_at = "09:30"\n'
    )
    (group,) = load_groups({GROUPS_FILE_VARIABLE: str(path)}, "0 4 * * *", "UTC", unreachable)
    assert group.cron == "30 7 * * 1-5"


def _ticks(group: MarketGroup, first: dt.date, last: dt.date) -> list[dt.datetime]:
    """The schedule's ticks between two dates (UTC), as Dagster's daemon computes them."""
    from dagster._utils.schedules import cron_string_iterator

    start = dt.datetime.combine(first, dt.time(0), tzinfo=dt.UTC).timestamp()
    out = []
    for tick in cron_string_iterator(start, group.cron, group.timezone):
        if tick.astimezone(dt.UTC).date() > last:
            return out
        out.append(tick.astimezone(dt.UTC))
    return out


@pytest.mark.parametrize(
    ("name", "local_date", "utc_time"),
    [
        # New York: EDT until 2026-11-01, EST until 2027-03-14.
        ("us", "2026-10-30", "11:30"),
        ("us", "2026-11-02", "12:30"),
        ("us", "2027-03-12", "12:30"),
        ("us", "2027-03-15", "11:30"),
        # Berlin: CEST until 2026-10-25, CET until 2027-03-28.
        ("eu", "2026-10-23", "05:00"),
        ("eu", "2026-10-26", "06:00"),
        ("eu", "2027-03-26", "06:00"),
        ("eu", "2027-03-29", "05:00"),
        # São Paulo has no DST.
        ("br", "2026-11-02", "11:00"),
        ("br", "2027-03-15", "11:00"),
    ],
)
def test_ticks_follow_each_exchange_across_dst(three, name, local_date, utc_time):
    day = dt.date.fromisoformat(local_date)
    (tick,) = [t for t in _ticks(three[name], day, day) if t.date() == day]
    assert tick.strftime("%H:%M") == utc_time
    assert three[name].score_date_of_tick(tick) == day


@pytest.mark.filterwarnings("ignore::pandas.errors.Pandas4Warning")
@pytest.mark.parametrize(("name", "mic"), [("us", "XNYS"), ("br", "BVMF"), ("eu", "XETR")])
def test_every_session_is_ticked_two_hours_before_its_open(three, name, mic):
    """Oct 2026 – Apr 2027, both DST changes: each session's tick is open − 2 h (B3's late open
    on Ash Wednesday, 13:00, is the only one ticked earlier than that: harmless)."""
    group = three[name]
    calendar = exchange_calendars.get_calendar(mic, start="2026-10-01", end="2027-04-30")
    ticks = {
        group.score_date_of_tick(t): t
        for t in _ticks(group, dt.date(2026, 10, 1), dt.date(2027, 4, 30))
    }
    checked = 0
    for session in calendar.sessions:
        day = session.date()
        opens = calendar.session_open(session).to_pydatetime()
        lead = opens - ticks[day]
        if mic == "BVMF" and lead > dt.timedelta(hours=2):
            assert (day, opens.astimezone(ZoneInfo(group.timezone)).hour) == (
                dt.date(2027, 2, 10),
                13,
            )
            continue
        assert lead == dt.timedelta(hours=2), (day, ticks[day], opens)
        checked += 1
    assert checked > 100


@pytest.mark.parametrize(
    ("name", "closed", "mic"),
    [("us", "2026-11-26", "XNYS"), ("br", "2026-11-20", "BVMF"), ("eu", "2026-12-24", "XETR")],
)
def test_a_closed_day_is_skipped_with_a_reason_naming_the_calendar(three, name, closed, mic):
    group = three[name]
    night = build_nights(list(three.values())).nights[name]
    day = dt.date.fromisoformat(closed)
    (tick,) = [t for t in _ticks(group, day, day) if group.score_date_of_tick(t) == day]
    # Never reaches the database: the closed day is decided first.
    unused = DatabaseResource(url="postgresql://nobody@127.0.0.1:9/none")
    with dg.build_schedule_context(
        scheduled_execution_time=tick, resources={"database": unused}
    ) as context:
        result = night.schedule.evaluate_tick(context)
    assert not result.run_requests
    assert result.skip_message is not None
    assert (
        f"not a trading session of {mic}" in result.skip_message and closed in result.skip_message
    )


def test_a_date_beyond_the_calendar_falls_back_to_weekdays(caplog):
    from scoring_pipeline.defs.market_groups.calendars import is_session

    far = dt.date(2099, 1, 5)  # a Monday, far beyond the bounds the calendar is built with
    assert is_session("XNYS", far) and not is_session("XNYS", dt.date(2099, 1, 3))
    assert "outside the calendar" in caplog.text


def test_a_group_of_markets_sharing_an_exchange_takes_their_common_open(tmp_path):
    (group,) = _load(
        tmp_path, '[groups.us]\nmarkets = ["US_TECH", "US_REITS"]\ncalendar = "XNYS"\n'
    )
    assert (group.markets, group.timezone, group.opens_at) == (
        ("US_TECH", "US_REITS"),
        "America/New_York",
        dt.time(9, 30),
    )


def test_a_group_ahead_of_utc_finds_its_date_among_the_snapshot_partitions(tmp_path, three):
    """Tokyo's 07:00 tick of 2026-12-07 runs at 22:00 UTC on 2026-12-06: its score date is
    tomorrow in UTC, so the snapshot partitions reach it. Groups west of UTC or on it keep the
    partitions up to today (UTC)."""
    tick = dt.datetime(2026, 12, 6, 22, 0, tzinfo=dt.UTC)
    tokyo = default_group("0 7 * * 1-5", "Asia/Tokyo")
    assert tokyo.score_date_of_tick(tick) == dt.date(2026, 12, 7)
    nights = build_nights([tokyo])
    (night,) = nights.nights.values()
    for asset in (nights.active_users, nights.exchange_rates, night.prices):
        keys = asset.partitions_def.get_partition_keys(current_time=tick)
        assert keys[-1] == "2026-12-07", asset.key
    assert night.snapshots_job.name == "overnight_snapshots_job"  # the default names still
    assert night.scores.key == dg.AssetKey("scores")

    (utc,) = _load(tmp_path, None)
    for groups in ([utc], [three["us"], three["br"]]):
        keys = build_nights(groups).active_users.partitions_def.get_partition_keys(
            current_time=tick
        )
        assert keys[-1] == "2026-12-06"
    # Berlin is ahead of UTC (its 07:00 is 06:00 UTC, the same date, but another cron's need
    # not be): with it, the partitions reach tomorrow too.
    assert three["eu"].may_tick_ahead_of_utc()
    keys = build_nights(list(three.values())).active_users.partitions_def.get_partition_keys(
        current_time=tick
    )
    assert keys[-1] == "2026-12-07"


def test_markets_in_no_group_are_named_at_load(tmp_path, caplog):
    """A market of the markets table in no group is scored by no night: said when the code
    location loads, not found weeks later by its users."""
    with caplog.at_level(logging.WARNING, logger="scoring_pipeline.defs.market_groups"):
        _load(tmp_path, mw.THREE_GROUPS)
    (warning,) = [r for r in caplog.records if "in no group" in r.getMessage()]
    assert warning.getMessage() == (
        "market groups: markets LATE, US_REITS are in no group of "
        f"{GROUPS_FILE_VARIABLE}: no night scores the criteria sets targeting them"
    )
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="scoring_pipeline.defs.market_groups"):
        rest = '[groups.rest]\nmarkets = ["US_REITS", "LATE"]\nopens_at = 09:30:00\n'
        _load(tmp_path, mw.THREE_GROUPS + rest)
    assert "in no group" not in caplog.text
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="scoring_pipeline.defs.market_groups"):
        _load(tmp_path, mw.THREE_GROUPS + '[groups.reits]\nmarkets = ["US_REITS"]\n')
    assert (
        "market groups: market LATE is in no group of "
        f"{GROUPS_FILE_VARIABLE}: no night scores the criteria sets targeting it"
    ) in caplog.text
