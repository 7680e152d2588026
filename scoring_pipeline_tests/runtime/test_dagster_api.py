"""`DagsterApi`, what `retry-failed` asks the webserver through, against a webserver that is down
or too slow to answer (real sockets on loopback)."""

import socket

import pytest

from scoring_pipeline.runtime.dagster_api import DagsterApi, DagsterApiError
from scoring_pipeline.runtime.services import free_port


def test_a_webserver_that_is_down_is_said_to_be_down():
    api = DagsterApi(f"http://127.0.0.1:{free_port()}")
    with pytest.raises(DagsterApiError) as down:
        api.query("{ version }", {})
    assert "no Dagster webserver answering at http://127.0.0.1:" in str(down.value)
    assert "start it" in str(down.value)


def test_a_webserver_too_slow_to_answer_may_still_launch_what_was_asked():
    # An operator review: a webserver that took the request and did not answer in time (an
    # overloaded one) was said to be "no Dagster webserver answering …; start it with `make
    # ui`", though the backfill it was asked for may well be launched a moment later.
    with socket.socket() as listening:
        listening.bind(("127.0.0.1", 0))
        listening.listen(1)  # accepts the connection, never answers
        api = DagsterApi(f"http://127.0.0.1:{listening.getsockname()[1]}", timeout=0.5)
        with pytest.raises(DagsterApiError) as slow:
            api.query("{ version }", {})
    said = str(slow.value)
    assert "did not answer within 0.5 s (ReadTimeout)" in said, said
    assert "start it" not in said
    assert "may still carry it out" in said and "retry-failed" in said
