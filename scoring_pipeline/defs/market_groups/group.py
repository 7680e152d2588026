"""A market group: its markets, its night's schedule and closed days, and the names and asset
keys of its Dagster objects; the default group of an unconfigured deployment, and the group a
run works for."""

import datetime as dt
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, replace
from zoneinfo import ZoneInfo

from scoring_pipeline.defs.market_groups.calendars import is_session
from scoring_pipeline.store.night.model import ALL_MARKETS

# The market group a run works for: a tag of every job of the group (schedule, sensor, CLI and
# UI launches of the job alike).
GROUP_TAG = "scoring/market_group"
# The group of an unconfigured deployment scores every market: the store's name for such a
# night, so a night's `market_group` and the group's name are one value.
DEFAULT_GROUP = ALL_MARKETS
DEFAULT_LEAD_MINUTES = 120


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

    def may_tick_ahead_of_utc(self) -> bool:
        """Whether a tick's date in the group's timezone can be later than its UTC date: the
        timezone is ahead of UTC for part of the year at least (checked in January and July,
        either side of a DST change)."""
        zone = ZoneInfo(self.timezone)
        year = dt.datetime.now(dt.UTC).year
        return any(
            (dt.datetime(year, month, 1, tzinfo=zone).utcoffset() or dt.timedelta())
            > dt.timedelta()
            for month in (1, 7)
        )

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


def selected_groups(
    selected: Iterable[Sequence[str]], groups: Mapping[str, MarketGroup]
) -> list[str]:
    """The groups whose `prices` or `scores` are among the `selected` asset key paths (a run's
    asset selection), in the order of `groups`."""
    paths = {tuple(path) for path in selected}
    return [
        name
        for name, group in groups.items()
        if paths & {tuple(group.asset_key("prices")), tuple(group.asset_key("scores"))}
    ]


def group_of_run(
    tags: Mapping[str, str],
    groups: Mapping[str, MarketGroup],
    selected: Iterable[Sequence[str]] = (),
) -> MarketGroup | None:
    """The group whose night a run works for: its GROUP_TAG; else the one group whose assets it
    materialises (`selected`, its asset selection: UI materialisations and backfills run
    Dagster's implicit asset job, which carries no tag of ours); else the default group when it
    is the only one; else none (a run of several groups' assets works for none)."""
    tagged = tags.get(GROUP_TAG)
    if tagged is not None:
        return groups.get(tagged)
    of_selection = selected_groups(selected, groups)
    if len(of_selection) == 1:
        return groups[of_selection[0]]
    only = list(groups.values())
    return only[0] if len(only) == 1 and only[0].is_default else None


def default_group(cron: str, timezone: str) -> MarketGroup:
    return MarketGroup(name=DEFAULT_GROUP, markets=None, cron=cron, timezone=timezone)


def former_group(name: str) -> MarketGroup:
    """A group the deployment no longer configures, with a night recorded: for the names of
    its Dagster objects only (its `scores` partitions, which `prune` still removes)."""
    default = DEFAULT_GROUPS[DEFAULT_GROUP]
    return default if name == DEFAULT_GROUP else replace(default, name=name, markets=())


# The default group with the default schedule: what the module-level definitions are built for.
DEFAULT_GROUPS = {DEFAULT_GROUP: default_group("0 4 * * *", "UTC")}
