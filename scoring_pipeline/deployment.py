"""Picks the resources for the environment; called only by definitions.py.

The same resource keys everywhere; secrets and the DSN go through `dg.EnvVar` so they resolve at
launch and stay hidden in the UI.
"""

import os
from collections.abc import Mapping
from typing import Any

import dagster as dg

from scoring_pipeline.errors import ConfigurationError
from scoring_pipeline.io_managers import ScoresIOManager
from scoring_pipeline.resources import (
    DatabaseResource,
    PricesProviderResource,
    RatesProviderResource,
    ScoringSettingsResource,
)

DEFAULT_CRON = "0 4 * * *"
DEFAULT_TIMEZONE = "UTC"


def _positive_int(env: Mapping[str, str], name: str, default: int) -> int:
    raw = env.get(name, "").strip()
    if not raw:
        return default
    try:
        value = int(raw)
    except ValueError:
        raise ConfigurationError(f"{name} must be a positive integer, got {raw!r}") from None
    if value <= 0:
        raise ConfigurationError(f"{name} must be a positive integer, got {raw!r}")
    return value


def schedule_settings(env: Mapping[str, str] | None = None) -> tuple[str, str]:
    env = os.environ if env is None else env
    cron = env.get("OVERNIGHT_JOB_CRON", "").strip() or DEFAULT_CRON
    timezone = env.get("OVERNIGHT_JOB_TIMEZONE", "").strip() or DEFAULT_TIMEZONE
    return cron, timezone


def _secret(env: Mapping[str, str], name: str) -> Any:
    return dg.EnvVar(name) if env.get(name) else None


def build_resources(env: Mapping[str, str] | None = None) -> dict[str, Any]:
    env = os.environ if env is None else env
    database = DatabaseResource(url=dg.EnvVar("DATABASE_URL") if env.get("DATABASE_URL") else None)
    return {
        "database": database,
        "rates_provider": RatesProviderResource(api_key=_secret(env, "RATES_API_KEY")),
        "prices_provider": PricesProviderResource(api_key=_secret(env, "PRICES_API_KEY")),
        "settings": ScoringSettingsResource(
            batch_size=_positive_int(env, "SCORING_BATCH_SIZE", 50),
            snapshot_max_age_days=_positive_int(env, "SNAPSHOT_MAX_AGE_DAYS", 3),
        ),
        "scores_io_manager": ScoresIOManager(database=database),
    }
