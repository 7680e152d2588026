"""Errors of the scoring pipeline, one type per thing that can go wrong.

Hierarchy::

    ScoringPipelineError                 base of everything raised on purpose
    ├── ConfigurationError               bad or missing environment / settings
    ├── UserCalculationError             fails one user's calculation, never the batch
    │   ├── InvalidCriteriaError         a criteria version or one of its rules is invalid
    │   └── MissingRateError             a needed currency pair is not in the snapshot
    ├── ProviderError                    a rates or prices provider could not give a usable answer
    │   ├── ProviderUnavailableError     timeouts, connection errors, 429/5xx after every retry
    │   └── ProviderPayloadError         the payload is malformed, or too many of its values were
    │                                    rejected (a single bad value is only recorded as missing)
    ├── SnapshotUnavailableError         all providers failed, no recent snapshot to reuse
    └── ReplayError                      a calculation cannot be replayed (unknown id, no inputs)

Messages name what is at fault (user, criteria version, rule, provider, symbol, currency) and
never contain secrets: provider errors are built from the provider's name and a redacted URL.
"""


class ScoringPipelineError(Exception):
    """Base class of every error the pipeline raises on purpose."""


class ConfigurationError(ScoringPipelineError):
    """A setting (usually an environment variable) is missing or invalid."""


class UserCalculationError(ScoringPipelineError):
    """An error that fails one user's calculation; the rest of the batch goes on."""

    stage: str = "scoring"


class InvalidCriteriaError(UserCalculationError):
    """A criteria version, or one of its rules, does not follow the rule schema."""

    stage = "criteria_validation"

    def __init__(self, message: str, *, criteria_version_id: str, rule: str | None = None) -> None:
        where = f"criteria version {criteria_version_id}"
        if rule is not None:
            where += f", rule {rule}"
        super().__init__(f"invalid criteria ({where}): {message}")
        self.criteria_version_id = criteria_version_id
        self.rule = rule


class InvalidHoldingError(UserCalculationError):
    """A holding whose quantity is no finite number ('NaN', 'Infinity' in NUMERIC): the user's
    dashboard cannot show a portfolio value."""

    stage = "dashboard"


class MissingRateError(UserCalculationError):
    """A conversion needs a currency that the date's exchange-rate snapshot does not hold."""

    stage = "currency_conversion"

    def __init__(self, from_currency: str, to_currency: str) -> None:
        super().__init__(f"no exchange rate for {from_currency}->{to_currency} in the snapshot")
        self.from_currency = from_currency
        self.to_currency = to_currency


class ProviderError(ScoringPipelineError):
    """A provider could not give a usable answer."""

    def __init__(self, message: str, *, provider: str) -> None:
        super().__init__(f"{provider}: {message}")
        self.provider = provider
        # An answer refused only for one rejected value (over the rejected share of a small
        # answer): the snapshot's last resort when neither a fallback nor a recent snapshot
        # can stand in, since one bad value never fails a night (SPEC §8). Set by the chain.
        self.last_resort: object | None = None


class ProviderUnavailableError(ProviderError):
    """The provider did not answer usefully after every retry (timeouts, refused, 429, 5xx)."""


class ProviderPayloadError(ProviderError):
    """The provider's answer is unusable as a whole: malformed, the wrong shape, or more than
    `PROVIDER_MAX_REJECTED_FRACTION` of its values rejected."""


class NightInProgressError(ScoringPipelineError):
    """A night is not (re)started while another run is starting it or its batches are being
    scored: restarting it then would score every batch twice and close it twice."""


class SnapshotUnavailableError(ScoringPipelineError):
    """Every provider failed and no snapshot recent enough exists to reuse."""


class ReplayError(ScoringPipelineError):
    """A calculation cannot be replayed."""
