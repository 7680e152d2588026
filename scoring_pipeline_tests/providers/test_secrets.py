"""API keys never leak (SPEC §8): with `RATES_API_KEY` (frankfurter, `Authorization: Bearer`) or
`PRICES_API_KEY` (yahoo, `X-API-KEY`) set and the provider a loopback HTTP server answering 500 to
everything, the snapshot assets of a date with no earlier snapshot fail and the night is `failed`.
The server proves the key was sent on every attempt; the key then appears nowhere else: not in the
run's Dagster event log (messages, events, metadata, error info), the run record, the instance's
files (captured compute logs), any table of the database (the app's and Dagster's), the Python
log records (DEBUG) or the process's stdout/stderr. The same holds on the new paths: a payload whose
rejected values echo the key (the rejections' reasons, metadata, metrics and log lines), a setting
refused when the code location loads, and the resource configuration the UI shows."""

import json
import logging
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import dagster as dg
import pytest
import sqlalchemy as sa

from scoring_pipeline.definitions import defs
from scoring_pipeline.errors import ConfigurationError
from scoring_pipeline_tests import factories as f
from scoring_pipeline_tests.scenario import DATE, rows, rules, snapshots

pytestmark = pytest.mark.db

RATES_SECRET = "sk-test-SECRET-12345"
PRICES_SECRET = "pk-test-SECRET-67890"


@dataclass
class FailingServer:
    url: str
    requests: list[tuple[str, dict[str, str]]] = field(default_factory=list)
    # What every request gets: 500 unless a test sets an answer.
    status: int = 500
    body: bytes = b'{"error": "boom"}'


@pytest.fixture
def failing_server() -> Iterator[FailingServer]:
    """A loopback HTTP server that answers 500 to everything and records each request."""
    server_state = FailingServer(url="")

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:  # noqa: N802 (the http.server API)
            server_state.requests.append((self.path, dict(self.headers.items())))
            body = server_state.body
            self.send_response(server_state.status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, format: str, *args: object) -> None:  # noqa: A002
            pass  # keep stderr clean: it is scanned for the secret

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    server_state.url = f"http://127.0.0.1:{server.server_address[1]}"
    try:
        yield server_state
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=10)


def _leaks(texts: dict[str, str], secret: str) -> list[str]:
    # The whole key, and its distinctive tail in case a shortened form is printed.
    tail = secret.split("-", 2)[2]
    return [where for where, text in texts.items() if secret in text or tail in text]


def _database_hits(engine, secret: str) -> dict[str, int]:
    """Rows of any table of the public schema (app tables and Dagster's) whose text holds it."""
    tables = [
        r.table_name
        for r in rows(
            engine,
            "SELECT table_name FROM information_schema.tables "
            "WHERE table_schema = 'public' AND table_type = 'BASE TABLE'",
        )
    ]
    assert {"calculation_events", "overnight_job_runs", "scoring_batch_results"} <= set(tables)
    assert {"event_logs", "runs"} <= set(tables)  # Dagster's storage is scanned too
    hits: dict[str, int] = {}
    with engine.connect() as conn:
        for table in tables:
            quoted = conn.dialect.identifier_preparer.quote(table)
            n = conn.execute(
                sa.text(f"SELECT count(*) FROM {quoted} t WHERE strpos(t::text, :s) > 0"),
                {"s": secret},
            ).scalar_one()
            if n:
                hits[table] = n
    return hits


def _dagster_texts(instance: dg.DagsterInstance, run_id: str) -> dict[str, str]:
    texts: dict[str, str] = {}
    records = instance.all_logs(run_id)
    assert records
    for i, record in enumerate(records):
        event = record.dagster_event
        texts[f"event {i}"] = "\n".join(
            [
                str(record),
                repr(record),
                str(record.user_message),
                str(event),
                repr(event.event_specific_data) if event else "",
                dg.serialize_value(record),
            ]
        )
    run = instance.get_run_by_id(run_id)
    assert run is not None
    texts["run record"] = repr(run) + dg.serialize_value(run)
    return texts


def _instance_files(instance: dg.DagsterInstance) -> dict[str, str]:
    """Every file of the instance's local directory: captured compute logs among them."""
    return {
        f"file {path}": path.read_bytes().decode("utf-8", "replace")
        for path in Path(instance.root_directory).rglob("*")
        if path.is_file()
    }


@dataclass(frozen=True)
class Case:
    asset: str
    env: dict[str, str]
    secret: str
    header: str
    header_value: str
    path: str
    night_error: str


CASES = [
    Case(
        asset="exchange_rates",
        env={"RATES_PROVIDER": "frankfurter", "RATES_API_KEY": RATES_SECRET},
        secret=RATES_SECRET,
        header="Authorization",
        header_value=f"Bearer {RATES_SECRET}",
        path="/latest?",
        night_error="every rates provider failed",
    ),
    Case(
        asset="prices",
        env={"PRICES_PROVIDER": "yahoo", "PRICES_API_KEY": PRICES_SECRET},
        secret=PRICES_SECRET,
        header="X-API-KEY",
        header_value=PRICES_SECRET,
        path="/v7/finance/quote?symbols=",
        night_error="every prices provider failed",
    ),
]


def _providers_env(monkeypatch, env):
    """The providers' settings, with the loopback test server reached directly (no proxy)."""
    for key, value in {**env, "NO_PROXY": "127.0.0.1,localhost"}.items():
        monkeypatch.setenv(key, value)
    for proxy in ("HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY", "http_proxy", "https_proxy"):
        monkeypatch.delenv(proxy, raising=False)


def _texts_of_the_run(instance, run_id, caplog, captured):
    """Every text a run left: its Dagster events, the instance's files, logs, stdout/stderr."""
    texts = {
        **_dagster_texts(instance, run_id),
        **_instance_files(instance),
        "caplog text": caplog.text,
        "stdout": captured.out,
        "stderr": captured.err,
    }
    for i, record in enumerate(caplog.records):
        texts[f"log record {i}"] = f"{record.getMessage()} {record.__dict__!r}"
    return texts


@pytest.mark.parametrize("case", CASES, ids=[c.asset for c in CASES])
def test_api_key_is_sent_but_never_leaks(
    case, world, dagster_instance, failing_server, monkeypatch, caplog, capfd
):
    f.user(world, holdings=[("AAA", "USD")], criteria=[("US_TECH", "stock", rules())])
    prefix = "RATES" if case.asset == "exchange_rates" else "PRICES"
    _providers_env(
        monkeypatch,
        {
            **case.env,
            f"{prefix}_BASE_URL": failing_server.url,
            "PROVIDER_MAX_RETRIES": "1",
            "PROVIDER_BACKOFF_SECONDS": "0.01",
        },
    )
    caplog.set_level(logging.DEBUG)

    result = snapshots(dagster_instance, raise_on_error=False)

    # The night failed where expected, for the expected reason.
    assert not result.success
    failures = [e for e in result.all_events if e.is_step_failure]
    assert [e.step_key for e in failures] == [case.asset]
    error = failures[0].step_failure_data.error
    assert error is not None and case.night_error in error.to_string()
    assert "HTTP 500" in error.to_string()
    job = rows(
        world,
        "SELECT status, error_details FROM overnight_job_runs WHERE score_date = :d",
        d=DATE,
    )[0]
    assert job.status == "failed" and case.night_error in job.error_details["message"]
    assert job.error_details["stage"] == case.asset

    # The key was used: sent on the first attempt and on the retry, as the provider expects.
    assert len(failing_server.requests) == 2
    for path, headers in failing_server.requests:
        assert path.startswith(case.path)
        assert headers.get(case.header) == case.header_value
        assert case.secret not in path

    # ... and it appears nowhere else.
    captured = capfd.readouterr()
    assert "HTTP 500" in captured.err  # the Dagster console log of the failure is scanned
    assert any("retrying in" in r.getMessage() for r in caplog.records)  # DEBUG logs captured
    # The provider's retry warning is in the run's event log, where the UI shows it.
    logged = [e.user_message for e in dagster_instance.all_logs(result.run_id)]
    assert any("retrying in" in m for m in logged)
    texts = _texts_of_the_run(dagster_instance, result.run_id, caplog, captured)
    assert _leaks(texts, case.secret) == []
    assert _database_hits(world, case.secret) == {}
    tail = case.secret.split("-", 2)[2]
    assert _database_hits(world, tail) == {}
    events = rows(world, "SELECT event_type FROM calculation_events ORDER BY id")
    assert [e.event_type for e in events] == ["JOB_STARTED", "JOB_COMPLETED"]


def test_rejected_values_echoing_the_key_never_leak(
    world, dagster_instance, failing_server, monkeypatch, caplog, capfd
):
    """A provider answering with the key in place of prices: the values are rejected (and the
    payload used), yet the key reaches no table, metadata, metric, event or log."""
    f.user(world, holdings=[("AAA", "USD")], criteria=[("US_TECH", "stock", rules())])
    failing_server.status = 200
    failing_server.body = json.dumps(
        {
            "quoteResponse": {
                "result": [
                    {
                        "symbol": "AAA",
                        "regularMarketPrice": 30,
                        "currency": "USD",
                        "regularMarketTime": 1795780800,
                    },
                    {
                        "symbol": "BBB",
                        "regularMarketPrice": PRICES_SECRET,
                        "currency": PRICES_SECRET,
                        "regularMarketTime": PRICES_SECRET,
                    },
                ],
                "error": None,
            }
        }
    ).encode()
    _providers_env(
        monkeypatch,
        {
            "PRICES_PROVIDER": "yahoo",
            "PRICES_API_KEY": PRICES_SECRET,
            "PRICES_BASE_URL": failing_server.url,
            "PROVIDER_MAX_REJECTED_FRACTION": "0.5",
        },
    )
    caplog.set_level(logging.DEBUG)

    result = snapshots(dagster_instance)

    assert result.success
    assert failing_server.requests[0][1].get("X-API-KEY") == PRICES_SECRET
    metadata = result.asset_materializations_for_node("prices")[0].metadata
    assert metadata["rejected_values"].value == {"BBB": "not_numeric"}
    assert any("rejected and stored as missing" in r.getMessage() for r in caplog.records)
    captured = capfd.readouterr()
    texts = _texts_of_the_run(dagster_instance, result.run_id, caplog, captured)
    assert _leaks(texts, PRICES_SECRET) == []
    assert _database_hits(world, PRICES_SECRET) == {}


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("PRICES_BASE_URL", f"https://gw.example/q?apikey={PRICES_SECRET}"),
        ("RATES_BASE_URL", f"ftp://user:{RATES_SECRET}@rates.example/v1"),
        ("RATES_FALLBACK_BASE_URL", f"https://rates.example/{RATES_SECRET}?x=1"),
    ],
)
def test_a_setting_refused_at_load_never_echoes_the_key(monkeypatch, name, value):
    monkeypatch.setenv("RATES_API_KEY", RATES_SECRET)
    monkeypatch.setenv("PRICES_API_KEY", PRICES_SECRET)
    if name.startswith("RATES_FALLBACK"):
        monkeypatch.setenv("RATES_FALLBACK_PROVIDER", "frankfurter")
    monkeypatch.setenv(name, value)

    with pytest.raises(ConfigurationError) as caught:
        defs()

    message = str(caught.value)
    assert name in message and "\n" not in message
    assert _leaks({"error": message}, RATES_SECRET) == []
    assert _leaks({"error": message}, PRICES_SECRET) == []


def test_the_resource_configuration_shows_the_variable_not_the_key(monkeypatch):
    monkeypatch.setenv("RATES_API_KEY", RATES_SECRET)
    monkeypatch.setenv("PRICES_API_KEY", PRICES_SECRET)

    resources = defs().resources

    for key, secret, variable in (
        ("rates_provider", RATES_SECRET, "RATES_API_KEY"),
        ("prices_provider", PRICES_SECRET, "PRICES_API_KEY"),
    ):
        resource = resources[key]
        assert isinstance(resource.api_key, dg.EnvVar) and resource.api_key == variable
        shown = {"repr": repr(resource), "config": json.dumps(resource.model_dump(), default=str)}
        assert _leaks(shown, secret) == []


class _Refusing(BaseHTTPRequestHandler):
    def do_POST(self) -> None:  # noqa: N802 (http.server's name)
        self.send_response(503)
        self.end_headers()

    def log_message(self, *_: object) -> None:
        pass


def test_the_webserver_urls_password_is_never_shown_in_errors():
    """`retry-failed --url http://user:secret@host` (a webserver behind basic auth): its errors
    name the URL with the password as ***, whether nothing answers or the server refuses."""
    from scoring_pipeline.runtime.dagster_api import DagsterApi, DagsterApiError
    from scoring_pipeline.runtime.services import free_port

    silent = DagsterApi.from_env(f"http://ops:s3cret@127.0.0.1:{free_port()}")
    with pytest.raises(DagsterApiError) as nobody:
        silent.query("{ version }", {})
    assert "s3cret" not in str(nobody.value)
    assert "no Dagster webserver answering at http://ops:***@127.0.0.1:" in str(nobody.value)

    server = ThreadingHTTPServer(("127.0.0.1", 0), _Refusing)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        port = server.server_address[1]
        with pytest.raises(DagsterApiError) as refused:
            DagsterApi.from_env(f"http://ops:s3cret@127.0.0.1:{port}").query("{ version }", {})
    finally:
        server.shutdown()
        server.server_close()
    assert str(refused.value) == f"http://ops:***@127.0.0.1:{port}/graphql answered HTTP 503"
    assert DagsterApi.from_env("http://127.0.0.1:3000").shown_url == "http://127.0.0.1:3000"
