"""The market groups' configuration: a TOML file named by `MARKET_GROUPS_FILE`, read once when
the code location loads and checked there (a bad file fails the load with one
`ConfigurationError`)::

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
calendar date.
"""

import datetime as dt
import logging
import re
import tomllib
from collections.abc import Callable, Mapping
from pathlib import Path
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

import pydantic

from scoring_pipeline.defs.market_groups.calendars import calendar_names, weekmask
from scoring_pipeline.defs.market_groups.group import (
    DEFAULT_GROUP,
    DEFAULT_LEAD_MINUTES,
    MarketGroup,
    default_group,
)
from scoring_pipeline.errors import ConfigurationError

# The logger of the market groups, named as before they became a package.
logger = logging.getLogger("scoring_pipeline.defs.market_groups")

GROUPS_FILE_VARIABLE = "MARKET_GROUPS_FILE"
_NAME = re.compile(r"^[a-z][a-z0-9_]{0,29}$")
_CRON_DAYS = ("1", "2", "3", "4", "5", "6", "0")  # Monday first, as calendars' weekmasks


class _GroupFile(pydantic.BaseModel, extra="forbid"):
    markets: list[str] = pydantic.Field(min_length=1)
    calendar: str | None = None
    timezone: str | None = None
    opens_at: dt.time | None = None
    lead_minutes: int = pydantic.Field(default=DEFAULT_LEAD_MINUTES, ge=0, lt=24 * 60)
    # TOML's own true/false only: pydantic would read the string "yes" (or "on", "1") as true.
    run_on_closed_days: pydantic.StrictBool = False


class _File(pydantic.BaseModel, extra="forbid"):
    groups: dict[str, _GroupFile] = pydantic.Field(min_length=1)


MarketsReader = Callable[[], Mapping[str, tuple[str, dt.time]]]


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
    except UnicodeDecodeError as exc:
        raise ConfigurationError(
            f"{where}: not UTF-8 text (byte {exc.start}: {exc.object[exc.start : exc.start + 1]!r})"
        ) from None
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
    if known is not None:
        _warn_markets_in_no_group(groups, known)
    return groups


def _warn_markets_in_no_group(groups: list[MarketGroup], known: Mapping[str, object]) -> None:
    """A market of the table in no group is scored by no night: say so at load."""
    grouped = {m for g in groups for m in g.markets or ()}
    alone = sorted(set(known) - grouped)
    if alone:
        logger.warning(
            "market groups: %s %s in no group of %s: no night scores the criteria sets "
            "targeting %s",
            ("market " if len(alone) == 1 else "markets ") + ", ".join(alone),
            "is" if len(alone) == 1 else "are",
            GROUPS_FILE_VARIABLE,
            "it" if len(alone) == 1 else "them",
        )


def _group(
    name: str, spec: _GroupFile, known: Mapping[str, tuple[str, dt.time]] | None, where: str
) -> MarketGroup:
    if not _NAME.match(name) or name == DEFAULT_GROUP:
        raise ConfigurationError(
            f"{where}: group name {name!r} must be lower-case letters, digits and _ "
            f"(at most 30, starting with a letter), and not {DEFAULT_GROUP!r}"
        )
    twice = sorted({m for m in spec.markets if spec.markets.count(m) > 1})
    if twice:
        raise ConfigurationError(
            f"{where}: group {name} lists market {twice[0]} more than once: name each market once"
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
