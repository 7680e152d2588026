"""OpenTelemetry for the night: one `overnight-scoring-job` span per score date, steps as children.

Configured only by the standard `OTEL_*` variables: spans are exported (OTLP over HTTP) when
`OTEL_EXPORTER_OTLP_ENDPOINT` or `OTEL_EXPORTER_OTLP_TRACES_ENDPOINT` is set and
`OTEL_TRACES_EXPORTER` is not `none`; otherwise nothing is set up and every helper is a no-op.

A night spans many processes (schedule tick, snapshot run, batch runs on Celery workers, cache
warming), so its root span cannot be held open by one of them. The night's W3C `traceparent`
(trace id + the root's span id) is chosen when the night starts, carried in run tags and kept in
`overnight_job_runs.metrics`; each step opens a child span under it in its own process, and the
process that closes the night emits the root span itself, with the recorded ids, start and end.
"""

import atexit
import contextlib
import logging
import os
import re
import secrets
import threading
import time
from collections.abc import Iterator, Mapping, Sequence
from typing import Any
from urllib.parse import unquote

from opentelemetry import trace
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import ReadableSpan, SpanProcessor, TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor, SpanExporter, SpanExportResult
from opentelemetry.sdk.util.instrumentation import InstrumentationScope
from opentelemetry.trace import SpanContext, SpanKind, Status, StatusCode, TraceFlags
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

from scoring_pipeline.providers.redaction import redact

ROOT_SPAN = "overnight-scoring-job"
DEFAULT_SERVICE = "scoring-pipeline"
TRACEPARENT = "traceparent"
# The instrumentation scope of every span of the night, the root's included.
SCOPE = "scoring_pipeline"
# How long a step waits for its spans to reach the collector (the SDK's flush has no timeout:
# it blocks through the exporter's retries, `OTEL_EXPORTER_OTLP_TIMEOUT`, 10 s by default).
FLUSH_WAIT_S = 2.0
# While the collector fails, spans are dropped at once, and it is tried again this often.
RETRY_AFTER_S = 30.0
# The SDK's loggers that report each failed attempt: what they say is kept for the one line
# the exporter guard writes, not logged attempt by attempt.
_EXPORT_LOGGERS = (
    "opentelemetry.exporter.otlp.common.http",
    "opentelemetry.exporter.otlp.proto.http.trace_exporter",
    "opentelemetry.sdk._shared_internal",
)

log = logging.getLogger(__name__)
_lock = threading.Lock()
_state: dict[str, Any] = {}


def enabled(env: Mapping[str, str] | None = None) -> bool:
    env = os.environ if env is None else env
    if env.get("OTEL_SDK_DISABLED", "").lower() == "true":
        return False
    if env.get("OTEL_TRACES_EXPORTER", "otlp").lower() in ("none", ""):
        return False
    return bool(
        env.get("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT") or env.get("OTEL_EXPORTER_OTLP_ENDPOINT")
    )


def _endpoint(env: Mapping[str, str]) -> str:
    traces = env.get("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT")
    if traces:
        return traces
    return env.get("OTEL_EXPORTER_OTLP_ENDPOINT", "").rstrip("/") + "/v1/traces"


def _header_values(env: Mapping[str, str]) -> list[str]:
    """The values of the OTLP headers (an API key, a bearer token): never shown."""
    values: list[str] = []
    for name in ("OTEL_EXPORTER_OTLP_HEADERS", "OTEL_EXPORTER_OTLP_TRACES_HEADERS"):
        for pair in env.get(name, "").split(","):
            _, _, value = pair.partition("=")
            values.extend(v for v in (value.strip(), unquote(value.strip())) if v)
    return values


class _Attempts(logging.Filter):
    """Keeps the last thing the SDK said about a failed export, instead of logging it."""

    def __init__(self) -> None:
        super().__init__()
        self.last: str | None = None

    def filter(self, record: logging.LogRecord) -> bool:
        # "Transient error %s encountered while exporting…": the error is what matters, and of
        # a refused connection, its errno ("[Errno 111] Connection refused").
        transient = str(record.msg).startswith("Transient error") and record.args
        text = str(record.args[0]) if transient else record.getMessage()  # type: ignore[index]
        errno = re.search(r"\[Errno -?\d+\] [^\"')]+", text)
        self.last = errno.group(0) if errno else text
        return False


class GuardedExporter(SpanExporter):
    """The OTLP exporter, kept from holding up a night while the collector fails.

    The first failure is logged once (`traces: …`, with what the SDK said, secrets redacted);
    then spans are dropped at once and steps stop waiting for their flush, and every
    `RETRY_AFTER_S` one export tries the collector again; when it answers, a line says so."""

    def __init__(self, inner: SpanExporter, endpoint: str, secret_values: Sequence[str]) -> None:
        self._inner = inner
        self._endpoint = endpoint
        self._secrets = list(secret_values)
        self._failing = False
        self._tried_at = 0.0
        self.dropped = 0
        self._shut = False
        self.attempts = _Attempts()
        for name in _EXPORT_LOGGERS:
            logging.getLogger(name).addFilter(self.attempts)

    @property
    def failing(self) -> bool:
        return self._failing

    def retry_due(self) -> bool:
        """Whether the next export tries the collector (it is not failing, or its next try
        is due)."""
        return not self._failing or time.monotonic() - self._tried_at >= RETRY_AFTER_S

    def export(self, spans: Sequence[ReadableSpan]) -> SpanExportResult:
        if not self.retry_due():
            self.dropped += len(spans)
            return SpanExportResult.FAILURE
        self._tried_at = time.monotonic()
        try:
            result = self._inner.export(spans)
        except Exception as error:  # an exporter must not raise; if it does, it failed
            self.attempts.last = f"{type(error).__name__}: {error}"
            result = SpanExportResult.FAILURE
        if result is SpanExportResult.SUCCESS:
            if self._failing:
                log.warning(
                    "traces: %s answers again (%d spans were dropped while it did not)",
                    self._shown(self._endpoint),
                    self.dropped,
                )
                self._failing, self.dropped = False, 0
            return result
        self.dropped += len(spans)
        self.failed(self.attempts.last or "the export failed")
        return result

    def failed(self, reason: str) -> None:
        """Stop waiting for the collector: the first failure of a streak is logged."""
        if not self._failing:
            self._failing, self._tried_at = True, time.monotonic()
            log.warning(
                "traces: could not export to %s (%s); the night goes on, its spans are dropped "
                "until the collector answers (tried again every %.0f s)",
                self._shown(self._endpoint),
                self._shown(reason),
                RETRY_AFTER_S,
            )

    def _shown(self, text: str) -> str:
        return redact(text, self._secrets)

    def force_flush(self, timeout_millis: int = 30000) -> bool:
        return self._inner.force_flush(timeout_millis)

    def shutdown(self) -> None:
        if not self._shut:  # at exit, perhaps after `_shut_down_at_exit`
            self._shut = True
            self._inner.shutdown()


def _provider() -> tuple[TracerProvider, SpanProcessor, GuardedExporter] | None:
    """The process's provider, processor and exporter, built on first use when an exporter is
    set."""
    if not enabled():
        return None
    with _lock:
        if "provider" not in _state or _state.get("pid") != os.getpid():
            from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter

            # Shut down by `_shut_down_at_exit`, not by the SDK's own exit hook: that one waits
            # for an export in flight, as long as `OTEL_EXPORTER_OTLP_TIMEOUT` to a collector
            # that accepts connections and never answers (`score` ended 7 s after its summary).
            provider = TracerProvider(resource=_resource(), shutdown_on_exit=False)
            exporter = GuardedExporter(
                OTLPSpanExporter(), _endpoint(os.environ), _header_values(os.environ)
            )
            processor = BatchSpanProcessor(exporter)
            provider.add_span_processor(processor)
            atexit.register(_shut_down_at_exit, provider, exporter)
            _state.update(
                provider=provider, processor=processor, exporter=exporter, pid=os.getpid()
            )
        return _state["provider"], _state["processor"], _state["exporter"]


def _resource() -> Resource:
    """The standard resource (`OTEL_SERVICE_NAME`, `OTEL_RESOURCE_ATTRIBUTES`), named
    `DEFAULT_SERVICE` only when neither names the service (the SDK says `unknown_service`)."""
    resource = Resource.create()
    if str(resource.attributes.get("service.name", "")).startswith("unknown_service"):
        resource = resource.merge(Resource({"service.name": DEFAULT_SERVICE}))
    return resource


def _shut_down_at_exit(provider: TracerProvider, exporter: GuardedExporter) -> None:
    """Send the spans left, waiting `FLUSH_WAIT_S` at most (none while the collector fails),
    then let the process go: the exporter's thread is a daemon, an export in flight dies with
    it."""
    if not exporter.failing:
        done = threading.Event()

        def shut_down() -> None:
            provider.shutdown()
            done.set()

        threading.Thread(target=shut_down, name="otel-shutdown", daemon=True).start()
        if done.wait(FLUSH_WAIT_S):
            return
    exporter.shutdown()  # no retry of what is in flight


def _flush(processor: SpanProcessor, exporter: GuardedExporter, *, retry: bool = False) -> None:
    """Send what this process traced so far, waiting `FLUSH_WAIT_S` at most (none while the
    collector fails, unless `retry` and its next try is due): a step's spans leave before its
    process may be gone."""
    if exporter.failing and not (retry and exporter.retry_due()):
        return
    done = threading.Event()

    def flush() -> None:
        processor.force_flush()
        done.set()

    threading.Thread(target=flush, name="otel-flush", daemon=True).start()
    if not done.wait(FLUSH_WAIT_S):
        exporter.failed(exporter.attempts.last or f"no answer within {FLUSH_WAIT_S:.0f} s")


def new_traceparent() -> str:
    """A fresh W3C traceparent: a new trace whose root span id is reserved for the night."""
    return f"00-{secrets.token_hex(16)}-{secrets.token_hex(8)}-01"


def parse_traceparent(value: str | None) -> SpanContext | None:
    if not value:
        return None
    ctx = TraceContextTextMapPropagator().extract({TRACEPARENT: value})
    span_context = trace.get_current_span(ctx).get_span_context()
    return span_context if span_context.is_valid else None


@contextlib.contextmanager
def step_span(
    name: str,
    traceparent: str | None,
    attributes: Mapping[str, Any] | None = None,
    *,
    start_ns: int | None = None,
) -> Iterator[trace.Span | None]:
    """A child span of the night's root span, exported when this step ends; `start_ns`: when
    the step began, if before the span opens (epoch nanoseconds)."""
    configured = _provider()
    if configured is None or parse_traceparent(traceparent) is None:
        yield None
        return
    provider, processor, exporter = configured
    parent = TraceContextTextMapPropagator().extract({TRACEPARENT: traceparent or ""})
    tracer = provider.get_tracer(SCOPE)
    try:
        with tracer.start_as_current_span(
            name, context=parent, attributes=dict(attributes or {}), start_time=start_ns
        ) as span:
            yield span
    finally:
        _flush(processor, exporter)


def set_error(span: trace.Span | None, description: str) -> None:
    """Mark a step's span ERROR with what went wrong (a no-op when tracing is off)."""
    if span is not None:
        span.set_status(Status(StatusCode.ERROR, description))


def emit_night_span(
    traceparent: str | None,
    *,
    start_ns: int,
    end_ns: int,
    attributes: Mapping[str, Any],
    ok: bool,
    description: str,
) -> bool | None:
    """Emit the night's root span with its reserved ids: True once the collector has taken
    it, False when it has not (down, refusing, or silent for `FLUSH_WAIT_S`: the caller keeps
    it to send again), None when tracing is off or the night has no trace."""
    configured = _provider()
    span_context = parse_traceparent(traceparent)
    if configured is None or span_context is None:
        return None
    provider, processor, exporter = configured
    root = SpanContext(
        trace_id=span_context.trace_id,
        span_id=span_context.span_id,
        is_remote=False,
        trace_flags=TraceFlags(TraceFlags.SAMPLED),
    )
    span = ReadableSpan(
        name=ROOT_SPAN,
        context=root,
        parent=None,
        resource=provider.resource,
        attributes={k: v for k, v in attributes.items() if v is not None},
        kind=SpanKind.INTERNAL,
        status=Status(StatusCode.OK if ok else StatusCode.ERROR, None if ok else description),
        start_time=start_ns,
        end_time=end_ns,
        instrumentation_scope=InstrumentationScope(SCOPE),
    )
    processor.on_end(span)
    # Waited for even while the collector fails, when its next try is due: the report of a
    # night is kept until the collector takes it, so whether it did matters.
    _flush(processor, exporter, retry=True)
    # Flushed with every span queued before it, or not taken: a failed export, a flush past
    # its wait, or a collector failing with its next try not yet due (the span is dropped;
    # should the processor's next export send it after all, sending it again later repeats
    # its ids, which backends keep as the latest).
    return not exporter.failing
