"""A real loopback HTTP server speaking whatever the test scripts, for the provider tests.

``loopback`` is a ``ThreadingHTTPServer`` on 127.0.0.1 (an ephemeral port) in a thread. Each path
gets a sequence of scripted responses (status, headers, body, delay, or a dropped connection)
served in order, the last one repeating; unscripted paths answer 404. Every request received is
recorded (path, query, headers). ``closed_port_url`` is a URL nobody listens on.

Helpers reach the test modules as fixtures (``reply`` is the Reply class, ``fast_http`` the
HttpSettings with tiny backoffs), so no test module imports this one.
"""

import json
import socket
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, urlsplit

import pytest

from scoring_pipeline.providers.http import HttpSettings

# Tiny backoff so retry tests take milliseconds; a short timeout for the timeout tests.
FAST_HTTP = HttpSettings(
    timeout_seconds=2.0, max_retries=3, backoff_base_seconds=0.01, backoff_max_seconds=0.05
)


@dataclass(frozen=True)
class Reply:
    """One scripted response. ``body`` may be bytes, str, or anything JSON-serialisable."""

    status: int = 200
    body: Any = b""
    headers: dict[str, str] = field(default_factory=dict)
    delay: float = 0.0
    disconnect: bool = False  # close the connection without answering
    trickle: float = 0.0  # seconds between 10-byte pieces of the body (a provider dribbling)

    def encoded(self) -> tuple[bytes, dict[str, str]]:
        headers = dict(self.headers)
        if isinstance(self.body, bytes):
            body = self.body
        elif isinstance(self.body, str):
            body = self.body.encode()
        else:
            body = json.dumps(self.body).encode()
            headers.setdefault("Content-Type", "application/json")
        return body, headers


@dataclass(frozen=True)
class ReceivedRequest:
    method: str
    path: str
    query: dict[str, list[str]]
    headers: dict[str, str]  # lower-case names


class LoopbackServer:
    """The scripted server; see the module docstring."""

    def __init__(self) -> None:
        self._scripts: dict[str, list[Reply]] = {}
        self._lock = threading.Lock()
        self._stopping = threading.Event()
        self.requests: list[ReceivedRequest] = []
        self._httpd = ThreadingHTTPServer(("127.0.0.1", 0), self._handler_class())
        self._httpd.daemon_threads = True
        self.port = self._httpd.server_address[1]
        self.url = f"http://127.0.0.1:{self.port}"
        # A short poll interval keeps shutdown (each test's teardown) at a few milliseconds.
        self._thread = threading.Thread(
            target=self._httpd.serve_forever, kwargs={"poll_interval": 0.01}, daemon=True
        )

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stopping.set()  # wakes delayed handlers
        self._httpd.shutdown()
        self._httpd.server_close()
        self._thread.join(timeout=5)

    def script(self, path: str, *replies: Reply) -> None:
        """Serve ``replies`` in order on ``path``; the last one repeats."""
        with self._lock:
            self._scripts[path] = list(replies)

    def requests_to(self, path: str) -> list[ReceivedRequest]:
        with self._lock:
            return [r for r in self.requests if r.path == path]

    def _next_reply(self, path: str) -> Reply:
        with self._lock:
            replies = self._scripts.get(path)
            if not replies:
                return Reply(404, {"message": "not found"})
            return replies.pop(0) if len(replies) > 1 else replies[0]

    def _record(self, request: ReceivedRequest) -> None:
        with self._lock:
            self.requests.append(request)

    def _handler_class(self) -> type[BaseHTTPRequestHandler]:
        server = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:  # noqa: N802 - the http.server naming
                parts = urlsplit(self.path)
                server._record(
                    ReceivedRequest(
                        method="GET",
                        path=parts.path,
                        query=parse_qs(parts.query, keep_blank_values=True),
                        headers={k.lower(): v for k, v in self.headers.items()},
                    )
                )
                reply = server._next_reply(parts.path)
                if reply.delay and server._stopping.wait(reply.delay):
                    return
                if reply.disconnect:
                    self.close_connection = True
                    return
                body, headers = reply.encoded()
                try:
                    self.send_response(reply.status)
                    for name, value in headers.items():
                        self.send_header(name, value)
                    self.send_header("Content-Length", str(len(body)))
                    self.end_headers()
                    if not reply.trickle:
                        self.wfile.write(body)
                    for start in range(0, len(body) if reply.trickle else 0, 10):
                        self.wfile.write(body[start : start + 10])
                        self.wfile.flush()
                        if server._stopping.wait(reply.trickle):
                            return
                except OSError:
                    pass  # the client gave up (timeout tests)

            def log_message(self, format: str, *args: Any) -> None:
                pass

        return Handler


@pytest.fixture
def loopback() -> Iterator[LoopbackServer]:
    server = LoopbackServer()
    server.start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def reply() -> type[Reply]:
    """The Reply class: ``reply(503, headers={"Retry-After": "1"})``."""
    return Reply


@pytest.fixture
def fast_http() -> HttpSettings:
    """HttpSettings for tests: 3 retries, 10 ms first backoff capped at 50 ms, 2 s timeout."""
    return FAST_HTTP


@pytest.fixture
def closed_port_url() -> str:
    """An http URL on a loopback port that was just bound and released: connections are refused."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    return f"http://127.0.0.1:{port}"


@pytest.fixture(autouse=True)
def _no_proxy_for_loopback(monkeypatch: pytest.MonkeyPatch) -> None:
    # httpx honours proxy variables; a CI proxy must not intercept loopback traffic.
    for var in ("HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY", "http_proxy", "https_proxy", "all_proxy"):
        monkeypatch.delenv(var, raising=False)
