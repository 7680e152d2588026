"""Exchange calendars: which days an exchange trades, for the market groups' schedules.

Closed days are read from `exchange_calendars`, built with explicit bounds and rebuilt daily (a
calendar built without bounds ends a year after import, and a code server that stays up longer
would fail); a date outside the bounds falls back to "weekdays are sessions".
"""

import contextlib
import datetime as dt
import functools
import logging
import warnings
from collections.abc import Iterator
from typing import Any

# The logger of the market groups, named as before they became a package.
logger = logging.getLogger("scoring_pipeline.defs.market_groups")

CALENDAR_YEARS_AHEAD = 2
CALENDAR_START = dt.date(2020, 1, 1)


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
