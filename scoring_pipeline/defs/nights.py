"""The Dagster objects of the configured market groups' nights, built by one factory.

Shared by every group: `active_users` and `exchange_rates` (one membership and one rates
snapshot per date). Per group: `prices` and `scores` (prefixed `<group>/` for a configured
group), the scores' invariant checks, the snapshots and batch jobs and the schedule. The default
configuration is the single group `all`, whose objects keep their historical names and keys.
"""

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import dagster as dg

from scoring_pipeline.defs import checks as checks_module
from scoring_pipeline.defs import jobs as jobs_module
from scoring_pipeline.defs.assets import active_users as active_users_module
from scoring_pipeline.defs.assets import exchange_rates as exchange_rates_module
from scoring_pipeline.defs.assets import prices as prices_module
from scoring_pipeline.defs.assets import scores as scores_module
from scoring_pipeline.defs.assets.active_users import build_active_users
from scoring_pipeline.defs.assets.exchange_rates import build_exchange_rates
from scoring_pipeline.defs.assets.prices import build_prices
from scoring_pipeline.defs.assets.scores import build_scores
from scoring_pipeline.defs.checks import build_scores_invariants
from scoring_pipeline.defs.jobs import build_jobs
from scoring_pipeline.defs.market_groups.group import MarketGroup, group_of_run
from scoring_pipeline.defs.run_tags import selection_paths
from scoring_pipeline.defs.schedules import build_group_schedule


@dataclass(frozen=True)
class GroupNight:
    """One market group's assets, checks, jobs and schedule."""

    group: MarketGroup
    prices: dg.AssetsDefinition
    scores: dg.AssetsDefinition
    checks: dg.AssetChecksDefinition
    snapshots_job: Any
    batch_job: Any
    schedule: dg.ScheduleDefinition


@dataclass(frozen=True)
class NightDefinitions:
    active_users: dg.AssetsDefinition
    exchange_rates: dg.AssetsDefinition
    nights: dict[str, GroupNight]

    @property
    def groups(self) -> dict[str, MarketGroup]:
        return {name: night.group for name, night in self.nights.items()}

    def assets(self) -> list[dg.AssetsDefinition]:
        per_group = [a for n in self.nights.values() for a in (n.prices, n.scores)]
        return [self.active_users, self.exchange_rates, *per_group]

    def night_of_run(self, run: dg.DagsterRun) -> GroupNight | None:
        """The group night a run works for (`group_of_run`), its asset selection telling the
        group of a UI materialisation or backfill of a group's `scores` or `prices`."""
        group = group_of_run(run.tags, self.groups, selection_paths(run))
        return self.nights[group.name] if group is not None else None


def build_nights(groups: Sequence[MarketGroup]) -> NightDefinitions:
    """Every group's definitions; the default group reuses the module-level objects (the ones
    tests and the CLI import), with the schedule of its configured cron, unless its timezone is
    ahead of UTC."""
    # A default group whose clock runs ahead of UTC needs tomorrow's UTC date among the snapshot
    # partitions, which the module-level objects (built for UTC) do not have: built anew.
    if len(groups) == 1 and groups[0].is_default and not groups[0].may_tick_ahead_of_utc():
        group = groups[0]
        night = GroupNight(
            group=group,
            prices=prices_module.prices,
            scores=scores_module.scores,
            checks=checks_module.scores_invariants,
            snapshots_job=jobs_module.overnight_snapshots_job,
            batch_job=jobs_module.scoring_batch_job,
            schedule=build_group_schedule(group, jobs_module.overnight_snapshots_job),
        )
        return NightDefinitions(
            active_users_module.active_users,
            exchange_rates_module.exchange_rates,
            {group.name: night},
        )
    by_name = {g.name: g for g in groups}
    active_users = build_active_users(by_name)
    exchange_rates = build_exchange_rates(by_name, active_users)
    return NightDefinitions(
        active_users, exchange_rates, dict(_group_nights(groups, active_users, exchange_rates))
    )


def _group_nights(
    groups: Iterable[MarketGroup],
    active_users: dg.AssetsDefinition,
    exchange_rates: dg.AssetsDefinition,
) -> Iterable[tuple[str, GroupNight]]:
    for group in groups:
        prices = build_prices(group, active_users)
        scores = build_scores(group, [active_users, exchange_rates, prices])
        snapshots_job, batch_job = build_jobs(group, [active_users, exchange_rates, prices], scores)
        yield (
            group.name,
            GroupNight(
                group=group,
                prices=prices,
                scores=scores,
                checks=build_scores_invariants(group, scores),
                snapshots_job=snapshots_job,
                batch_job=batch_job,
                schedule=build_group_schedule(group, snapshots_job),
            ),
        )
