"""The groups benchmark's report: each night's figures, the table printed at the end (`lines`),
and the JSON file `save_groups` writes. Other programs read both: keep their text and keys as
they are.
"""

from dataclasses import dataclass, field
from pathlib import Path

from scoring_pipeline.cli.bench.report import write_json


@dataclass
class NightFigures:
    name: str
    seconds: float
    cpu_s: float
    users_total: int
    assets_scored: int
    batches: int
    status: str


@dataclass
class GroupsReport:
    users: int
    single: NightFigures
    groups: list[NightFigures] = field(default_factory=list)

    def lines(self) -> list[str]:
        def row(n: NightFigures) -> str:
            return (
                f"  {n.name:<10}{n.status:<11}{n.users_total:>8,}{n.assets_scored:>12,}"
                f"{n.batches:>9,}{n.seconds:>10.1f} s{n.cpu_s:>9.1f} s"
            )

        total_s = sum(g.seconds for g in self.groups)
        total_cpu = sum(g.cpu_s for g in self.groups)
        return [
            f"benchmark: {self.users} users, one night vs {len(self.groups)} market groups",
            "  night     status        users      assets  batches  end to end      CPU",
            row(self.single),
            *(row(g) for g in self.groups),
            f"groups summed: {total_s:.1f} s, {total_cpu:.1f} CPU-s, "
            f"{sum(g.assets_scored for g in self.groups):,} assets",
            "per-group overhead vs one night: "
            f"time {total_s / max(self.single.seconds, 1e-9):.2f} x, "
            f"CPU {total_cpu / max(self.single.cpu_s, 1e-9):.2f} x",
        ]


def save_groups(report: GroupsReport, directory: Path) -> Path:
    return write_json(
        directory / f"bench-groups-{report.users}.json",
        {
            "users": report.users,
            "single": vars(report.single),
            "groups": [vars(g) for g in report.groups],
        },
    )
