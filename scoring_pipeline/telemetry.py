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

import contextlib
import os
import secrets
import threading
from collections.abc import Iterator, Mapping
from typing import Any

from opentelemetry import trace
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import ReadableSpan, SpanProcessor, TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor
from opentelemetry.trace import SpanContext, SpanKind, Status, StatusCode, TraceFlags
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

ROOT_SPAN = "overnight-scoring-job"
DEFAULT_SERVICE = "scoring-pipeline"
TRACEPARENT = "traceparent"

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


def _provider() -> tuple[TracerProvider, SpanProcessor] | None:
    """The process's provider and processor, built on first use when an exporter is set."""
    if not enabled():
        return None
    with _lock:
        if "provider" not in _state or _state.get("pid") != os.getpid():
            from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter

            attributes = (
                {} if os.environ.get("OTEL_SERVICE_NAME") else {"service.name": DEFAULT_SERVICE}
            )
            provider = TracerProvider(resource=Resource.create(attributes))
            processor = BatchSpanProcessor(OTLPSpanExporter())
            provider.add_span_processor(processor)
            _state.update(provider=provider, processor=processor, pid=os.getpid())
        return _state["provider"], _state["processor"]


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
    name: str, traceparent: str | None, attributes: Mapping[str, Any] | None = None
) -> Iterator[trace.Span | None]:
    """A child span of the night's root span, exported when this step ends."""
    configured = _provider()
    if configured is None or parse_traceparent(traceparent) is None:
        yield None
        return
    provider, processor = configured
    parent = TraceContextTextMapPropagator().extract({TRACEPARENT: traceparent or ""})
    tracer = provider.get_tracer("scoring_pipeline")
    try:
        with tracer.start_as_current_span(
            name, context=parent, attributes=dict(attributes or {})
        ) as span:
            yield span
    finally:
        processor.force_flush()


def emit_night_span(
    traceparent: str | None,
    *,
    start_ns: int,
    end_ns: int,
    attributes: Mapping[str, Any],
    ok: bool,
    description: str,
) -> bool:
    """Emit the night's root span with its reserved ids; False when tracing is off."""
    configured = _provider()
    span_context = parse_traceparent(traceparent)
    if configured is None or span_context is None:
        return False
    provider, processor = configured
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
    )
    processor.on_end(span)
    processor.force_flush()
    return True
