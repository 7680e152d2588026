"""Market groups: which markets a night scores, and when it starts (SPEC §6 per-market nights).

Configuration is a TOML file named by `MARKET_GROUPS_FILE`, read once when the code location
loads and checked there (a bad file fails the load with one `ConfigurationError`)::

    [groups.us]
    markets = ["US_TECH"]       # markets.code values; a market belongs to at most one group
    calendar = "XNYS"           # exchange calendar (MIC); omit for "every weekday is a session"
    # timezone = "America/New_York"   default: the markets' `markets.timezone`
    # opens_at = "09:30"              default: the markets' `markets.opens_at`
    # lead_minutes = 120              the night starts this long before the open
    # run_on_closed_days = false      true: a night on holidays and weekends too

Without the file there is one group, `all`: every market, on `OVERNIGHT_JOB_CRON` in
`OVERNIGHT_JOB_TIMEZONE` — the single night of before, unchanged (same asset keys and names).

A group's schedule runs in its exchange's timezone on a wall-clock cron `opens_at - lead`, so
Dagster's own conversion keeps it right across DST; the score date of a tick is the tick's local
calendar date. Closed days are read from `exchange_calendars`, built with explicit bounds and
rebuilt daily (a calendar built without bounds ends a year after import, and a code server that
stays up longer would fail); a date outside the bounds falls back to "weekdays are sessions".
"""

import contextlib
import datetime as dt
import functools
import logging
import re
import tomllib
import warnings
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

import pydantic

from scoring_pipeline.errors import ConfigurationError

logger = logging.getLogger(__name__)

GROUPS_FILE_VARIABLE = "MARKET_GROUPS_FILE"
# The market group a run works for: a tag of every job of the group (schedule, sensor, CLI and
# UI launches of the job alike).
GROUP_TAG = "scoring/market_group"
DEFAULT_GROUP = "all"
DEFAULT_LEAD_MINUTES = 120
_NAME = re.compile(r"^[a-z][a-z0-9_]{0,29}$")
_CRON_DAYS = ("1", "2", "3", "4", "5", "6", "0")  # Monday first, as calendars' weekmasks
CALENDAR_YEARS_AHEAD = 2
CALENDAR_START = dt.date(2020, 1, 1)


@dataclass(frozen=True, slots=True)
class MarketGroup:
    """One configured group: its markets (None: every market) and its night's schedule."""

    name: str
    markets: tuple[str, ...] | None
    cron: str
    timezone: str
    calendar: str | None = None
    opens_at: dt.time | None = None
    lead_minutes: int = DEFAULT_LEAD_MINUTES
    run_on_closed_days: bool = True

    @property
    def is_default(self) -> bool:
        """The group of an unconfigured deployment: names and keys exactly as before groups."""
        return self.markets is None

    @property
    def key_prefix(self) -> list[str]:
        return [] if self.is_default else [self.name]

    def asset_key(self, name: str) -> "list[str]":
        return [*self.key_prefix, name]

    def qualified(self, name: str) -> str:
        """A job, schedule or partitions name of this group (`us_scoring_batch_job`)."""
        return name if self.is_default else f"{self.name}_{name}"

    def score_date_of_tick(self, scheduled: dt.datetime) -> dt.date:
        """The date a tick scores: its calendar day in the group's timezone."""
        if scheduled.tzinfo is None:
            scheduled = scheduled.replace(tzinfo=dt.UTC)
        return scheduled.astimezone(ZoneInfo(self.timezone)).date()

    def closed_reason(self, day: dt.date) -> str | None:
        """Why the group has no night on `day` (a closed exchange), or None when it has one."""
        if self.run_on_closed_days:
            return None
        if self.calendar is None:
            if day.weekday() < 5:
                return None
            return f"{day} is a {day:%A}: group {self.name} runs on weekdays only"
        if is_session(self.calendar, day):
            return None
        return (
            f"{day} ({day:%A}) is not a trading session of {self.calendar}: "
            f"no night for group {self.name}"
        )


class _GroupFile(pydantic.BaseModel, extra="forbid"):
    markets: list[str] = pydantic.Field(min_length=1)
    calendar: str | None = None
    timezone: str | None = None
    opens_at: dt.time | None = None
    lead_minutes: int = pydantic.Field(default=DEFAULT_LEAD_MINUTES, ge=0, lt=24 * 60)
    run_on_closed_days: bool = False


class _File(pydantic.BaseModel, extra="forbid"):
    groups: dict[str, _GroupFile] = pydantic.Field(min_length=1)


MarketsReader = Callable[[], Mapping[str, tuple[str, dt.time]]]


def group_of_run(
    tags: Mapping[str, str], groups: Mapping[str, MarketGroup], asset_group: str | None = None
) -> MarketGroup | None:
    """The group whose night a run works for: its GROUP_TAG; else `asset_group`, the group of the
    asset it materialises (UI materialisations and backfills run Dagster's implicit asset job,
    which carries no tag of ours); else the default group when it is the only one; else none."""
    tagged = tags.get(GROUP_TAG)
    if tagged is not None:
        return groups.get(tagged)
    if asset_group is not None:
        return groups.get(asset_group)
    only = list(groups.values())
    return only[0] if len(only) == 1 and only[0].is_default else None


def default_group(cron: str, timezone: str) -> MarketGroup:
    return MarketGroup(name=DEFAULT_GROUP, markets=None, cron=cron, timezone=timezone)


def load_groups(
    env: Mapping[str, str], cron: str, timezone: str, read_markets: MarketsReader
) -> list[MarketGroup]:
    """The configured groups, checked; the default group when no file is configured.

    `read_markets` returns {markets.code: (timezone, opens_at)}; it is called only when a file is
    configured, to check its market codes and to fill a group's missing timezone or open time.
    """
    path = env.get(GROUPS_FILE_VARIABLE, "").strip()
    if not path:
        return [default_group(cron, timezone)]
    where = f"{GROUPS_FILE_VARIABLE}={path!r}"
    try:
        raw = tomllib.loads(Path(path).read_text(encoding="utf-8"))
        parsed = _File.model_validate(raw)
    except OSError as exc:
        raise ConfigurationError(f"{where}: cannot read the file: {exc.strerror}") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigurationError(f"{where}: not valid TOML: {exc}") from None
    except pydantic.ValidationError as exc:
        first = exc.errors(include_url=False, include_input=False)[0]
        place = ".".join(str(p) for p in first["loc"])
        raise ConfigurationError(f"{where}: {place}: {first['msg']}") from None
    try:
        known: Mapping[str, tuple[str, dt.time]] | None = read_markets()
    except Exception as exc:  # the database may be down while the code location loads
        known = None
        failure = f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"
    if known is None:
        missing = [g for g, s in parsed.groups.items() if s.timezone is None or s.opens_at is None]
        if missing:
            raise ConfigurationError(
                f"{where}: group {missing[0]} takes its timezone or open time from the markets "
                f"table, which could not be read ({failure}): set both in the file"
            )
        logger.warning("market groups: the markets table could not be read to check codes")
    groups = [_group(name, spec, known, where) for name, spec in parsed.groups.items()]
    _check_disjoint(groups, where)
    return groups


def _group(
    name: str, spec: _GroupFile, known: Mapping[str, tuple[str, dt.time]] | None, where: str
) -> MarketGroup:
    if not _NAME.match(name) or name == DEFAULT_GROUP:
        raise ConfigurationError(
            f"{where}: group name {name!r} must be lower-case letters, digits and _ "
            f"(at most 30, starting with a letter), and not {DEFAULT_GROUP!r}"
        )
    if known is not None:
        unknown = [m for m in spec.markets if m not in known]
        if unknown:
            raise ConfigurationError(
                f"{where}: group {name}: no market {unknown[0]!r} in the markets table "
                f"(known: {', '.join(sorted(known)) or 'none'})"
            )
    timezone = spec.timezone or _common(name, spec, known, 0, where, "timezone")
    opens_at = spec.opens_at or _common(name, spec, known, 1, where, "opens_at")
    assert isinstance(timezone, str) and isinstance(opens_at, dt.time)
    try:
        ZoneInfo(timezone)
    except (ZoneInfoNotFoundError, ValueError):
        raise ConfigurationError(f"{where}: group {name}: unknown timezone {timezone!r}") from None
    if spec.calendar is not None and spec.calendar not in calendar_names():
        raise ConfigurationError(
            f"{where}: group {name}: unknown exchange calendar {spec.calendar!r} "
            "(a MIC such as XNYS, BVMF, XETR)"
        )
    start = opens_at.hour * 60 + opens_at.minute - spec.lead_minutes
    if start < 0:
        raise ConfigurationError(
            f"{where}: group {name}: {spec.lead_minutes} minutes before {opens_at:%H:%M} is the "
            "previous day; a night must start on its score date (shorten lead_minutes)"
        )
    return MarketGroup(
        name=name,
        markets=tuple(spec.markets),
        cron=f"{start % 60} {start // 60} * * {_cron_days(spec)}",
        timezone=timezone,
        calendar=spec.calendar,
        opens_at=opens_at,
        lead_minutes=spec.lead_minutes,
        run_on_closed_days=spec.run_on_closed_days,
    )


def _common(
    name: str,
    spec: _GroupFile,
    known: Mapping[str, tuple[str, dt.time]] | None,
    index: int,
    where: str,
    field: str,
) -> str | dt.time:
    """The markets' shared timezone or open time (a group must name it when they differ)."""
    values = {known[m][index] for m in spec.markets} if known is not None else set()
    if len(values) != 1:
        raise ConfigurationError(
            f"{where}: group {name}: its markets have different {field} values "
            f"({', '.join(sorted(str(v) for v in values))}): set {field} for the group"
        )
    return values.pop()


def _cron_days(spec: _GroupFile) -> str:
    """Every day when closed days run too; else the calendar's week (Mon–Fri without one).
    Holidays are not a cron matter: the schedule skips them with a reason."""
    if spec.run_on_closed_days:
        return "*"
    mask = weekmask(spec.calendar) if spec.calendar else "1111100"
    if mask == "1111100":
        return "1-5"
    return ",".join(day for day, on in zip(_CRON_DAYS, mask, strict=True) if on == "1")


def _check_disjoint(groups: list[MarketGroup], where: str) -> None:
    owner: dict[str, str] = {}
    for group in groups:
        for market in group.markets or ():
            if market in owner:
                raise ConfigurationError(
                    f"{where}: market {market} is in groups {owner[market]} and {group.name}: "
                    "a market belongs to one group (their nights would replace each other's scores)"
                )
            owner[market] = group.name


# --- exchange calendars -----------------------------------------------------------------------


@functools.cache
def calendar_names() -> frozenset[str]:
    import exchange_calendars

    return frozenset(exchange_calendars.get_calendar_names(include_aliases=True))


def weekmask(mic: str) -> str:
    return str(_calendar(mic, _today()).weekmask)


def _today() -> dt.date:
    return dt.datetime.now(dt.UTC).date()


@contextlib.contextmanager
def _pandas_quiet() -> Iterator[None]:
    """exchange_calendars 4.13 calls a pandas API that pandas 3.1 deprecates (Pandas4Warning);
    the result is right, and the warning would otherwise reach every code server's log."""
    import pandas

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", pandas.errors.Pandas4Warning)
        yield


@functools.lru_cache(maxsize=16)
def _calendar(mic: str, built_on: dt.date) -> Any:
    """The calendar with explicit bounds, rebuilt once a day (`built_on` is the cache key)."""
    import exchange_calendars

    end = dt.date(built_on.year + CALENDAR_YEARS_AHEAD, 12, 31)
    with _pandas_quiet():
        return exchange_calendars.get_calendar(
            mic, start=CALENDAR_START.isoformat(), end=end.isoformat()
        )


def is_session(mic: str, day: dt.date) -> bool:
    """Whether the exchange trades on `day`; outside the calendar's bounds, weekdays do."""
    calendar = _calendar(mic, _today())
    first, last = calendar.first_session.date(), calendar.last_session.date()
    if not first <= day <= last:
        logger.warning(
            "%s: %s is outside the calendar (%s..%s): weekdays are sessions", mic, day, first, last
        )
        return day.weekday() < 5
    with _pandas_quiet():
        return bool(calendar.is_session(day.isoformat()))


# The default group with the default schedule: what the module-level definitions are built for.
DEFAULT_GROUPS = {DEFAULT_GROUP: default_group("0 4 * * *", "UTC")}
