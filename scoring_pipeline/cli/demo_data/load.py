"""`generate`, what `demo-data` and the benchmark call: the input tables' contents replaced with
a universe drawn from a seed (by COPY), and the `file` providers' files written beside it.
"""

import datetime as dt
import random
from collections.abc import Callable
from pathlib import Path
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Connection

from scoring_pipeline.cli.demo_data.draws import random_uuid
from scoring_pipeline.cli.demo_data.instruments import MARKETS, Universe, draw_universe
from scoring_pipeline.cli.demo_data.provider_files import write_provider_files
from scoring_pipeline.cli.demo_data.users import draw_users
from scoring_pipeline.engine.criteria import FUNDAMENTAL_FIELDS
from scoring_pipeline.store.copy import copy_rows


def generate(
    conn: Connection,
    *,
    users: int,
    seed: int,
    out_dir: Path,
    instruments_per_market: int = 100,
    rules_per_set: int = 12,
    today: dt.date | None = None,
    echo: Callable[[str], None] = lambda _line: None,
) -> dict[str, int]:
    """Replace the input tables' contents with a synthetic universe; write provider files.
    `echo` gets a line as each part starts, and every `PROGRESS_EVERY` users drawn."""
    rng = random.Random(seed)
    today = today or dt.datetime.now(dt.UTC).date()
    universe = draw_universe(rng, instruments_per_market, today)
    conn.execute(
        sa.text(
            "TRUNCATE portfolio_assets, portfolios, criteria_versions, instrument_fundamentals, "
            "instruments, markets, users CASCADE"
        )
    )
    _copy_universe(conn, universe)
    user_count, set_count, holding_count = _copy_users(
        conn, rng, users, universe, rules_per_set, echo
    )
    write_provider_files(out_dir, universe.prices, today)
    return {
        "users": user_count,
        "criteria_sets": set_count,
        "instruments": len(universe.instruments),
        "holdings": holding_count,
    }


def _copy_universe(conn: Connection, universe: Universe) -> None:
    copy_rows(
        conn,
        "markets",
        ("code", "name", "timezone", "opens_at"),
        ((m.code, m.name, m.timezone, m.opens_at) for m in MARKETS),
    )
    copy_rows(
        conn,
        "instruments",
        ("symbol", "name", "market", "asset_type", "currency"),
        (
            (i["symbol"], i["name"], i["market"], i["asset_type"], i["currency"])
            for i in universe.instruments
        ),
    )
    columns = ("symbol", "data_date", *FUNDAMENTAL_FIELDS)
    copy_rows(
        conn,
        "instrument_fundamentals",
        columns,
        ([f[c] for c in columns] for f in universe.fundamentals),
    )


# A progress line every so many users drawn: about 10 s of work on a busy 2-core machine.
PROGRESS_EVERY = 10_000


def _copy_users(
    conn: Connection,
    rng: random.Random,
    users: int,
    universe: Universe,
    rules_per_set: int,
    echo: Callable[[str], None],
) -> tuple[int, int, int]:
    """COPY `users` drawn users with their criteria sets, portfolio and holdings; returns the
    numbers of users, criteria sets and holdings."""
    user_rows: list[tuple[Any, ...]] = []
    set_rows: list[tuple[Any, ...]] = []
    portfolio_rows: list[tuple[Any, ...]] = []
    asset_rows: list[tuple[Any, ...]] = []
    # The portfolio's and holdings' ids are drawn between one user's draws and the next's:
    # the same seed gives the same data only in this order.
    for user, sets, holdings in draw_users(rng, users, universe, rules_per_set):
        user_rows.append((user["id"], user["email"], user["base_currency"]))
        set_rows.extend(
            (
                s["id"],
                s["user_id"],
                s["target_market"],
                s["asset_type"],
                s["name"],
                s["version"],
                s["is_active"],
                s["rules"],
            )
            for s in sets
        )
        portfolio_id = random_uuid(rng)
        portfolio_rows.append((portfolio_id, user["id"], "Main"))
        asset_rows.extend(
            (
                random_uuid(rng),
                portfolio_id,
                h["symbol"],
                h["quantity"],
                h["currency"],
                h["is_ignored"],
            )
            for h in holdings
        )
        if len(user_rows) % PROGRESS_EVERY == 0 and len(user_rows) < users:
            echo(f"  drew {len(user_rows):,} of {users:,} users")
    echo(
        f"  writing {len(user_rows):,} users, {len(set_rows):,} criteria sets and "
        f"{len(asset_rows):,} holdings…"
    )
    copy_rows(conn, "users", ("id", "email", "base_currency"), user_rows)
    copy_rows(
        conn,
        "criteria_versions",
        ("id", "user_id", "target_market", "asset_type", "name", "version", "is_active", "rules"),
        set_rows,
    )
    copy_rows(conn, "portfolios", ("id", "user_id", "name"), portfolio_rows)
    copy_rows(
        conn,
        "portfolio_assets",
        ("id", "portfolio_id", "symbol", "quantity", "currency", "is_ignored"),
        asset_rows,
    )
    return len(user_rows), len(set_rows), len(asset_rows)
