"""The retrying httpx client of the HTTP providers, and its timeout and retry policy.

Every httpx exception is turned into one of our errors here, with a message built from the
provider's name and a redacted URL; the httpx exception is never chained (its request holds the
URL and headers), so no traceback can show a secret.
"""

import logging
import math
import threading
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass

import httpx

from scoring_pipeline.errors import (
    ConfigurationError,
    ProviderPayloadError,
    ProviderUnavailableError,
)
from scoring_pipeline.providers.redaction import RedactingLogFilter, redact

logger = logging.getLogger("scoring_pipeline.providers")

# Larger answers are refused rather than read into memory (a quote page of 50 symbols is ~50 kB).
DEFAULT_MAX_RESPONSE_BYTES = 20_000_000
# A request's whole answer must arrive within this many timeouts: httpx's timeout bounds each
# read, so a provider dribbling its answer would otherwise hold the step as long as it sends.
REQUEST_DEADLINE_TIMEOUTS = 3
_USER_AGENT = "scoring-pipeline (httpx)"
# Loggers of the HTTP stack that may print request URLs (httpx logs each request at INFO).
# Logger filters are not inherited by child loggers, so httpcore's are listed one by one.
_HTTP_STACK_LOGGERS = (
    "httpx",
    "httpcore",
    "httpcore.connection",
    "httpcore.http11",
    "httpcore.http2",
    "httpcore.proxy",
)


@dataclass(frozen=True)
class HttpSettings:
    """Timeout and retry policy of the HTTP providers (from the provider resources' fields).

    A request is tried ``1 + max_retries`` times; the wait before retry ``n`` (0-based) is
    ``backoff_base_seconds * 2**n`` capped at ``backoff_max_seconds``, or a numeric
    ``Retry-After`` of a 429/503 answer, capped the same way.
    """

    timeout_seconds: float = 10.0
    max_retries: int = 3
    backoff_base_seconds: float = 0.5
    backoff_max_seconds: float = 30.0

    def __post_init__(self) -> None:
        if not (math.isfinite(self.timeout_seconds) and self.timeout_seconds > 0):
            raise ConfigurationError(
                f"provider timeout must be a positive number of seconds, "
                f"got {self.timeout_seconds!r}"
            )
        if isinstance(self.max_retries, bool) or not 0 <= self.max_retries <= 20:
            raise ConfigurationError(
                f"provider max retries must be an integer from 0 to 20, got {self.max_retries!r}"
            )
        for label, value in (
            ("backoff base", self.backoff_base_seconds),
            ("backoff max", self.backoff_max_seconds),
        ):
            if not (math.isfinite(value) and value >= 0):
                raise ConfigurationError(
                    f"provider {label} must be a non-negative number of seconds, got {value!r}"
                )

    def backoff_seconds(self, retry: int, retry_after: float | None = None) -> float:
        """The wait before retry number ``retry`` (0-based)."""
        if retry_after is not None:
            return min(retry_after, self.backoff_max_seconds)
        return min(self.backoff_base_seconds * 2.0**retry, self.backoff_max_seconds)


@dataclass(frozen=True)
class _Failure:
    reason: str
    retryable: bool
    retry_after: float | None = None


def _retry_after_seconds(headers: httpx.Headers) -> float | None:
    value = headers.get("retry-after")
    if value is None:
        return None
    try:
        seconds = float(value.strip())
    except ValueError:
        return None  # an HTTP-date: fall back to exponential backoff
    return seconds if math.isfinite(seconds) and seconds >= 0 else None


def _check_base_url(base_url: str, redact_text: Callable[[str], str]) -> None:
    try:
        url = httpx.URL(base_url)
    except httpx.InvalidURL:
        url = None
    if url is None or url.scheme not in ("http", "https") or not url.host:
        raise ConfigurationError(
            f"provider base URL must be an http(s) URL with a host, got {redact_text(base_url)!r}"
        )


class ProviderHttpClient:
    """A GET-only httpx client for one provider: lazy, retrying, redacting, size-limited."""

    def __init__(
        self,
        *,
        provider: str,
        base_url: str,
        settings: HttpSettings,
        headers: Mapping[str, str] | None = None,
        secrets: Iterable[str | None] = (),
        max_response_bytes: int = DEFAULT_MAX_RESPONSE_BYTES,
    ) -> None:
        self.provider = provider
        self.base_url = base_url.rstrip("/")
        self._secrets = [s for s in secrets if s]
        _check_base_url(self.base_url, self.redact)
        self.settings = settings
        self._headers = {"User-Agent": _USER_AGENT, "Accept": "application/json"}
        self._headers.update(headers or {})
        self._max_response_bytes = max_response_bytes
        self._client: httpx.Client | None = None
        self._log_filter: RedactingLogFilter | None = None
        self._lock = threading.Lock()

    def __repr__(self) -> str:
        shown = self.redact(self.base_url)
        return f"ProviderHttpClient(provider={self.provider!r}, base_url={shown!r})"

    def redact(self, text: str) -> str:
        """``redact`` with this client's secrets."""
        return redact(text, self._secrets)

    def close(self) -> None:
        """Close the underlying httpx client; a later request opens a new one."""
        with self._lock:
            client, self._client = self._client, None
            log_filter, self._log_filter = self._log_filter, None
        if client is not None:
            client.close()
        if log_filter is not None:
            for name in _HTTP_STACK_LOGGERS:
                logging.getLogger(name).removeFilter(log_filter)

    def get_bytes(self, path: str, *, params: Mapping[str, str] | None = None) -> bytes:
        """GET ``{base_url}/{path}`` and return the body of a 2xx answer, retrying as configured.

        Raises ProviderUnavailableError after the last retry or on a non-retryable status, and
        ProviderPayloadError when the body exceeds the size limit.
        """
        url = f"{self.base_url}/{path.lstrip('/')}"
        shown_url = self.redact(str(httpx.URL(url, params=dict(params or {}))))
        attempts = self.settings.max_retries + 1
        failure = _Failure("no attempt made", retryable=False)
        for attempt in range(attempts):
            outcome = self._attempt(url, params)
            if isinstance(outcome, bytes):
                return outcome
            failure = outcome
            if not failure.retryable or attempt + 1 == attempts:
                break
            delay = self.settings.backoff_seconds(attempt, failure.retry_after)
            logger.warning(
                "%s",
                self.redact(
                    f"{self.provider}: GET {shown_url} failed ({failure.reason}), attempt "
                    f"{attempt + 1} of {attempts}; retrying in {delay:.3f} s"
                ),
                extra={"provider": self.provider, "attempt": attempt + 1, "delay_seconds": delay},
            )
            time.sleep(delay)
        tried = f"after {attempt + 1} attempt{'s' if attempt else ''}"
        if not failure.retryable:
            tried = "not retried"
        raise ProviderUnavailableError(
            self.redact(f"GET {shown_url} failed ({failure.reason}; {tried})"),
            provider=self.provider,
        )

    def _http(self) -> httpx.Client:
        with self._lock:
            if self._client is None:
                self._log_filter = RedactingLogFilter(self._secrets)
                for name in _HTTP_STACK_LOGGERS:
                    logging.getLogger(name).addFilter(self._log_filter)
                # Redirects are not followed: a moved API is a configuration problem, and an
                # X-API-KEY header must not travel to another host.
                self._client = httpx.Client(
                    timeout=httpx.Timeout(self.settings.timeout_seconds),
                    headers=self._headers,
                    follow_redirects=False,
                )
            return self._client

    def _attempt(self, url: str, params: Mapping[str, str] | None) -> bytes | _Failure:
        failure: _Failure
        deadline = time.monotonic() + REQUEST_DEADLINE_TIMEOUTS * self.settings.timeout_seconds
        try:
            with self._http().stream("GET", url, params=params) as response:
                status = response.status_code
                if 200 <= status < 300:
                    return self._read_limited(response, deadline)
                if status == 429 or status >= 500:
                    retry_after = None
                    if status in (429, 503):
                        retry_after = _retry_after_seconds(response.headers)
                    return _Failure(f"HTTP {status}", retryable=True, retry_after=retry_after)
                return _Failure(f"HTTP {status}", retryable=False)
        except httpx.TimeoutException as exc:
            failure = _Failure(f"timed out: {type(exc).__name__}", retryable=True)
        except (httpx.NetworkError, httpx.RemoteProtocolError) as exc:
            failure = _Failure(f"connection error: {type(exc).__name__}: {exc}", retryable=True)
        except (httpx.HTTPError, httpx.InvalidURL) as exc:
            failure = _Failure(f"{type(exc).__name__}: {exc}", retryable=False)
        return failure

    def _read_limited(self, response: httpx.Response, deadline: float) -> bytes | _Failure:
        chunks: list[bytes] = []
        size = 0
        for chunk in response.iter_bytes():
            if time.monotonic() > deadline:
                allowed = REQUEST_DEADLINE_TIMEOUTS * self.settings.timeout_seconds
                return _Failure(
                    f"timed out: the whole answer took longer than {allowed:g} s "
                    f"({REQUEST_DEADLINE_TIMEOUTS} times the timeout)",
                    retryable=True,
                )
            size += len(chunk)
            if size > self._max_response_bytes:
                raise ProviderPayloadError(
                    f"response larger than {self._max_response_bytes} bytes, refused",
                    provider=self.provider,
                )
            chunks.append(chunk)
        return b"".join(chunks)
