"""The redaction of secrets from what the providers show: error messages, URLs, log records.

Known secrets (the API keys) are scrubbed literally and URL-encoded; credential-looking URL parts
are scrubbed even when the secret is not known, so a key passed some other way stays hidden.
"""

import logging
import re
from collections.abc import Callable, Iterable
from typing import TypeVar
from urllib.parse import quote, quote_plus

from scoring_pipeline.errors import ProviderError

_T = TypeVar("_T")

REDACTED = "***"
# How `values.shorten` ends a text it cut, and the shortest start of a secret cut there that is
# redacted (a shorter one tells nothing of the key).
_CUT = "..."
_CUT_KEPT_MIN = 4
# Query parameters whose value is redacted from any text: names that look like credentials.
_SECRET_PARAM = re.compile(
    r"(?i)([?&;][^=&#\s]*(?:key|token|secret|passw|sig|auth|crumb|credential|session)[^=&#\s]*=)"
    r"[^&#\s'\"]*"
)
_URL_USERINFO = re.compile(r"(?i)(\b[a-z][a-z0-9+.-]*://[^/\s:@]+:)[^/\s@]+@")
_BEARER = re.compile(r"(?i)(\bbearer\s+)[^\s'\",;]+")


def redact(text: str, secrets: Iterable[str | None] = ()) -> str:
    """Return ``text`` without the given secrets and without credential-looking URL parts.

    Each secret is scrubbed literally and in its URL-encoded forms, and so is its start (4
    characters or more) where a shortened text was cut after it ("..."); values of query parameters
    whose name looks like a credential (``api_key``, ``token``, ``sig``…), URL passwords and
    bearer tokens are replaced by ``***`` even when the secret is not known.
    """
    for secret in sorted({s for s in secrets if s}, key=len, reverse=True):
        for variant in (secret, quote(secret, safe=""), quote_plus(secret)):
            text = text.replace(variant, REDACTED)
            # Payload text is shortened before the error carrying it is redacted: a secret the
            # provider echoed may have been cut, and its start then ends with "...".
            for kept in range(len(variant) - 1, _CUT_KEPT_MIN - 1, -1):
                text = text.replace(variant[:kept] + _CUT, REDACTED + _CUT)
    text = _SECRET_PARAM.sub(rf"\g<1>{REDACTED}", text)
    text = _URL_USERINFO.sub(rf"\g<1>{REDACTED}@", text)
    return _BEARER.sub(rf"\g<1>{REDACTED}", text)


def call_redacted(secrets: Iterable[str | None], call: Callable[[], _T]) -> _T:
    """Return ``call()``; a ProviderError it raises comes out with the secrets scrubbed from its
    message (a new error of the same type, raised with no cause or context to leak through)."""
    replacement: ProviderError | None = None
    try:
        return call()
    except ProviderError as exc:
        text = str(exc)
        clean = redact(text, secrets)
        if clean == text:
            raise
        replacement = type(exc)(clean.removeprefix(f"{exc.provider}: "), provider=exc.provider)
    raise replacement


class RedactingLogFilter(logging.Filter):
    """Scrubs the given secrets from the records of the loggers it is added to (a client adds
    it to the HTTP stack's own loggers)."""

    def __init__(self, secrets: list[str]) -> None:
        super().__init__()
        self._secrets = secrets

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        clean = redact(message, self._secrets)
        if clean != message:
            record.msg, record.args = clean, None
        return True
