"""Picks the resources for the environment; called only by definitions.py.

The environment is read here, once, when the code location loads: each variable fills one typed
field of a resource, and a bad value fails the load with one ConfigurationError naming the
variable (shown by the UI and by `scoring-pipeline`). The same resource keys everywhere; secrets
and the DSN go through `dg.EnvVar` so they resolve at launch and stay hidden in the UI.
"""

import os
from collections.abc import Mapping
from typing import Any, TypeVar
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

import dagster as dg
import pydantic

from scoring_pipeline.defs.io_managers import ScoresIOManager
from scoring_pipeline.defs.resources import (
    DatabaseResource,
    PricesProviderResource,
    RatesProviderResource,
    ScoringSettingsResource,
)
from scoring_pipeline.errors import ConfigurationError
from scoring_pipeline.providers.redaction import redact

DEFAULT_CRON = "0 4 * * *"
DEFAULT_TIMEZONE = "UTC"

_R = TypeVar("_R", bound=dg.ConfigurableResource)  # type: ignore[type-arg]

# Field of a provider resource -> environment variable ({kind} is RATES or PRICES).
_PROVIDER_VARIABLES = {
    "provider": "{kind}_PROVIDER",
    "base_url": "{kind}_BASE_URL",
    "file": "{kind}_FILE",
    "fallback_provider": "{kind}_FALLBACK_PROVIDER",
    "fallback_base_url": "{kind}_FALLBACK_BASE_URL",
    "timeout_seconds": "PROVIDER_TIMEOUT_SECONDS",
    "max_retries": "PROVIDER_MAX_RETRIES",
    "backoff_seconds": "PROVIDER_BACKOFF_SECONDS",
    "backoff_max_seconds": "PROVIDER_BACKOFF_MAX_SECONDS",
    "max_rejected_fraction": "PROVIDER_MAX_REJECTED_FRACTION",
    "max_data_age_days": "PROVIDER_MAX_DATA_AGE_DAYS",
}
_SETTINGS_VARIABLES = {
    "batch_size": "SCORING_BATCH_SIZE",
    "batches_per_run": "SCORING_BATCHES_PER_RUN",
    "snapshot_max_age_days": "SNAPSHOT_MAX_AGE_DAYS",
}


def schedule_settings(env: Mapping[str, str] | None = None) -> tuple[str, str]:
    env = os.environ if env is None else env
    cron = env.get("OVERNIGHT_JOB_CRON", "").strip() or DEFAULT_CRON
    timezone = env.get("OVERNIGHT_JOB_TIMEZONE", "").strip() or DEFAULT_TIMEZONE
    try:
        ZoneInfo(timezone)
    except (ZoneInfoNotFoundError, ValueError):
        raise ConfigurationError(
            f"OVERNIGHT_JOB_TIMEZONE: unknown timezone {timezone!r} (an IANA name, as UTC or "
            "America/New_York; names are case-sensitive)"
        ) from None
    return cron, timezone


def _secret(env: Mapping[str, str], name: str) -> Any:
    return dg.EnvVar(name) if env.get(name) else None


def _configured(
    cls: type[_R],
    env: Mapping[str, str],
    variables: Mapping[str, str],
    secrets: Mapping[str, Any] | None = None,
) -> _R:
    """``cls`` with each field whose variable is set (and not blank) taken from ``env``."""
    values = {
        field: env[var].strip() for field, var in variables.items() if env.get(var, "").strip()
    }
    try:
        return cls(**values, **(secrets or {}))
    except pydantic.ValidationError as exc:
        raise ConfigurationError(_describe(exc, env, variables)) from None


def _describe(
    exc: pydantic.ValidationError, env: Mapping[str, str], variables: Mapping[str, str]
) -> str:
    """The first problem of a settings validation failure in one line, naming the variable."""
    errors = exc.errors(include_url=False, include_input=False)
    first = errors[0]
    message = first["msg"].removeprefix("Value error, ")
    more = f" (and {len(errors) - 1} more problem{'s' if len(errors) > 2 else ''})"
    more = more if len(errors) > 1 else ""
    field = str(first["loc"][0]) if first["loc"] else ""
    var = variables.get(field)
    if var is None:
        # A rule across fields (``resources._ProviderResource._consistent``) names its variable
        # generically; say which one.
        message = message.replace("*_FILE", variables.get("file", "*_FILE"))
        names = ", ".join(sorted({v for v in variables.values() if env.get(v, "").strip()}))
        return f"invalid settings ({names or 'defaults'}): {message}{more}"
    # A URL may carry credentials: shown redacted, like every URL the providers print.
    shown = redact(env.get(var, "").strip(), [env.get("RATES_API_KEY"), env.get("PRICES_API_KEY")])
    return f"invalid setting {var}={shown!r}: {message}{more}"


def _provider(cls: type[_R], env: Mapping[str, str], kind: str) -> _R:
    variables = {field: var.format(kind=kind) for field, var in _PROVIDER_VARIABLES.items()}
    return _configured(cls, env, variables, {"api_key": _secret(env, f"{kind}_API_KEY")})


def build_resources(env: Mapping[str, str] | None = None) -> dict[str, Any]:
    """The resources of the code location, configured from ``env`` (``os.environ``)."""
    env = os.environ if env is None else env
    database = DatabaseResource(url=dg.EnvVar("DATABASE_URL") if env.get("DATABASE_URL") else None)
    return {
        "database": database,
        "rates_provider": _provider(RatesProviderResource, env, "RATES"),
        "prices_provider": _provider(PricesProviderResource, env, "PRICES"),
        "settings": _configured(ScoringSettingsResource, env, _SETTINGS_VARIABLES),
        "scores_io_manager": ScoresIOManager(database=database),
    }
