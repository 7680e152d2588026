"""The benchmark's report: the figures of a night and the later nights, the table printed at
the end (`lines`), and the JSON file `save` writes. Other programs read both: keep their text
and keys as they are.
"""

import datetime as dt
import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from scoring_pipeline.cli.bench.floors import COPY_TABLES

# The machine's cores: what its busy share is a share of.
CORES = os.cpu_count() or 1


@dataclass
class BenchReport:
    users: int
    figures: dict[str, Any] = field(default_factory=dict)
    tables: dict[str, dict[str, int]] = field(default_factory=dict)
    rss_mb: dict[str, float] = field(default_factory=dict)
    cpu_s: dict[str, float] = field(default_factory=dict)
    machine_cpu_s: float = 0.0
    machine_steal_s: float = 0.0  # what the hypervisor took from the machine's cores meanwhile
    machine_wall_s: float = 0.0  # how long the machine's CPU time was counted
    runs: dict[str, int] = field(default_factory=dict)
    # Nights after the first, on the same database: what each added on disk.
    later_nights: list[dict[str, Any]] = field(default_factory=list)

    @property
    def cpu_seconds_per_1000_users(self) -> float:
        """Every sampled process's CPU time during the night, per 1,000 users."""
        return sum(self.cpu_s.values()) * 1000 / max(self.users, 1)

    @property
    def machine_cpu_seconds_per_1000_users(self) -> float:
        """The whole machine's busy CPU time during the night, per 1,000 users."""
        return self.machine_cpu_s * 1000 / max(self.users, 1)

    @property
    def machine_busy_share(self) -> float:
        """The share of the machine's cores that were busy while the night was sampled (the
        raw COPY and the other floors are measured after it, on an idle machine)."""
        return self.machine_cpu_s / max(self.machine_wall_s * CORES, 1e-9)

    def lines(self) -> list[str]:
        f = self.figures
        out = [
            f"benchmark: {self.users} users, {f['batches']} batches in "
            f"{self.runs.get('scoring_batch_job', 0)} runs, "
            f"{f['assets_scored']:,} assets scored, {f['rule_evaluations']:,} rule evaluations",
            f"{'end to end (first run start -> all batches terminal, caches warm)':<66}"
            f"{f['end_to_end_s']:>8.1f} s",
        ]
        for name, seconds in f["stages_s"].items():
            out.append(f"  {name:<64}{seconds:>8.1f} s")
        out.append("inside the batches (summed over batches, serial-equivalent):")
        for name, seconds in f["batch_sums_s"].items():
            out.append(f"  {name:<64}{seconds:>8.1f} s")
        work = sum(f["batch_sums_s"].values())
        run_seconds = f["run_seconds_by_job"]
        out.append("run time summed over runs, by job (what the run workers spent):")
        for job, seconds in sorted(run_seconds.items()):
            out.append(f"  {job:<64}{seconds:>8.1f} s")
        batches = max(f["batches"], 1)
        runs = max(self.runs.get("scoring_batch_job", 0), 1)
        dagster = run_seconds.get("scoring_batch_job", 0.0) - work
        checks = f.get("asset_check_s", 0.0)
        out += [
            f"{'Dagster per batch (batch runs time - scoring work) / batches':<66}"
            f"{dagster / batches:>8.2f} s",
            f"{'  of which the asset checks (3 invariants a batch)':<66}{checks / batches:>8.3f} s",
            f"{'  per batch run (' + format(batches / runs, '.1f') + ' batches a run)':<66}"
            f"{dagster / runs:>8.2f} s",
            f"{'scoring engine rule evaluations per second (in the night)':<66}"
            f"{f['rule_evaluations_per_s']:>10,.0f}",
            f"{'  per second of the engine thread on a core (CPU time, no waiting)':<66}"
            f"{f['rule_evaluations_per_cpu_s']:>10,.0f}",
            f"{'  the same engine alone after the night (batch b0000, best of 5)':<66}"
            f"{f['engine_alone_per_s']:>10,.0f}",
            f"{'raw COPY of the same output rows (' + ', '.join(COPY_TABLES) + ')':<66}"
            f"{f['raw_copy_s']:>8.1f} s",
            *(
                f"  {table:<64}{seconds:>8.1f} s"
                for table, seconds in f["raw_copy_s_by_table"].items()
            ),
            f"{'write stage / raw COPY':<66}{f['write_to_copy_ratio']:>8.2f} x",
            *self._concurrency_lines(),
            "the write stage's parts (summed over batches):",
            *(
                f"  {part:<64}{seconds:>8.1f} s"
                for part, seconds in f.get("write_parts_s", {}).items()
            ),
            *self._server_lines(),
            f"{'PostgreSQL connections opened during the night (all processes)':<66}"
            f"{f['connections_opened']:>8,}",
            f"{'bytes on disk per scored asset (all output tables)':<66}"
            f"{f['bytes_per_asset']:>8.0f} B",
            "table                        rows          bytes on disk",
        ]
        for table, t in self.tables.items():
            out.append(f"  {table:<24}{t['rows']:>12,}{t['bytes']:>18,}")
        out.append("peak RSS by process kind:")
        for kind, mb in sorted(self.rss_mb.items()):
            out.append(f"  {kind:<64}{mb:>8.0f} MB")
        out.append("CPU time during the night by process kind:")
        for kind, seconds in sorted(self.cpu_s.items(), key=lambda kv: -kv[1]):
            out.append(f"  {kind:<64}{seconds:>8.1f} s")
        out.append(
            f"{'CPU seconds per 1,000 users, all processes':<66}"
            f"{self.cpu_seconds_per_1000_users:>8.1f} s"
        )
        out.append(
            f"{'  the whole machine (also short-lived processes, anything else)':<66}"
            f"{self.machine_cpu_seconds_per_1000_users:>8.1f} s"
        )
        out.append(
            f"{'  the cores busy over the night (share of ' + str(CORES) + ')':<66}"
            f"{100 * self.machine_busy_share:>8.0f} %"
        )
        out.append(
            f"{'  taken by the hypervisor meanwhile (steal: the host busy elsewhere)':<66}"
            f"{self.machine_steal_s:>8.1f} s"
        )
        out.append("runs by job:")
        for job, count in sorted(self.runs.items()):
            out.append(f"  {job:<64}{count:>8}")
        if self.later_nights:
            out.append(
                "later nights on the same database (each after a plain VACUUM of the output "
                "tables, the day's autovacuum):"
            )
        for night in self.later_nights:
            out.append(
                f"  {night['score_date']} (night {night['night_of_month']} of its month): "
                f"{night['assets_scored']:,} assets scored, "
                f"{night['end_to_end_s']:.1f} s, bytes added per scored asset"
                f"{night['bytes_added_per_asset']:>8.0f} B"
            )
            for table, added in night["bytes_added"].items():
                if added:
                    out.append(f"    {table:<62}{added:>+18,}")
            parts = night.get("write_parts_s", {})
            server = night.get("server_during_night", {})
            if parts:
                out.append(
                    "    write parts: "
                    + ", ".join(f"{part} {seconds:.1f} s" for part, seconds in parts.items())
                )
            if server:
                out.append(
                    f"    WAL {server['wal_bytes'] / 2**20:.0f} MB "
                    f"({server['wal_full_page_images']:,} full-page images), "
                    f"{server['checkpoints']} checkpoints"
                )
        return out

    def _concurrency_lines(self) -> list[str]:
        """What COPYing from several connections at once costs (`floors.concurrent_copy`), and
        the write against the raw COPY at that cost: the write's own work beyond COPY."""
        f = self.figures
        together = f.get("concurrent_copy")
        if not together:
            return []
        sample = (
            f"  COPY batch by batch, {together['connections']} connections at once / one "
            f"({together['batches']} batches)"
        )
        return [
            f"{sample:<66}{together['factor']:>8.2f} x",
            f"{'write stage / (raw COPY x that)':<66}{f['write_to_concurrent_copy_ratio']:>8.2f} x",
        ]

    def _server_lines(self) -> list[str]:
        f = self.figures
        server = f.get("server_during_night")
        if not server:
            return []
        return [
            f"{'WAL written during the night (whole server) / by the raw COPY':<66}"
            f"{server['wal_bytes'] / 2**20:>8.0f} MB / {f['raw_copy_wal_bytes'] / 2**20:.0f} MB",
            f"{'  WAL records / full-page images / writes with WAL buffers full':<66}"
            f"{server['wal_records']:>8,} / {server['wal_full_page_images']:,} / "
            f"{server['wal_buffers_full']:,}",
            f"{'checkpoints during the night':<66}{server['checkpoints']:>8}",
        ]


def save(report: BenchReport, directory: Path) -> Path:
    return write_json(
        directory / f"bench-{report.users}.json",
        {
            "users": report.users,
            "date": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
            "machine": f"{CORES} cores",
            "figures": report.figures,
            "tables": report.tables,
            "rss_mb": report.rss_mb,
            "cpu_s": report.cpu_s,
            "cpu_seconds_per_1000_users": report.cpu_seconds_per_1000_users,
            "machine_cpu_seconds_per_1000_users": report.machine_cpu_seconds_per_1000_users,
            "machine_busy_share": report.machine_busy_share,
            "machine_steal_s": report.machine_steal_s,
            "runs": report.runs,
            "later_nights": report.later_nights,
        },
    )


def write_json(path: Path, content: dict[str, Any]) -> Path:
    """A report saved as indented JSON (its folder created); returns its path."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(content, indent=2))
    return path
