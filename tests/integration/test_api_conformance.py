"""schemathesis over ``/openapi.json`` of a real ``drex serve`` with a populated store.

The store is written by the worker's own per-batch code (``LearnerSession``, as in
tests/functional/test_serving.py); the server is a ``drex serve`` process that follows
it. schemathesis generates requests from the document, valid and invalid ones, and runs
every check it has: no server error, every status, content type, header and body as the
document says, invalid data rejected, valid data accepted, a wrong method answered 405
with ``Allow``. The run is bounded to about a minute (``--max-time``).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

from streams.broker import EmbeddedBroker, free_port
from tests.functional.test_serving import Stream

pytestmark = [pytest.mark.integration, pytest.mark.slow]
MAX_TIME = 50  # seconds schemathesis spends generating requests


@pytest.fixture
def served(
    tmp_path: Path, tiny_encoder_dir: Path, fresh_broker: EmbeddedBroker
) -> Iterator[tuple[str, Path]]:
    """(base URL, server log) of ``drex serve`` over a store of 300 interactions, taking
    feedback (``POST /feedback`` publishes to a broker of the test's own)."""
    stream = Stream(tmp_path, tiny_encoder_dir)
    stream.feed(150)
    stream.feed(150)
    stream.session.release()
    port = free_port()
    log_path = tmp_path / "serve.log"
    with open(log_path, "wb") as log:
        server = subprocess.Popen(
            [
                *(sys.executable, "-m", "streams.cli", "serve"),
                *("--state-dir", stream.settings.state_dir, "--port", str(port)),
                *("--feedback", "--broker", fresh_broker.url),
            ],
            stdout=log,
            stderr=subprocess.STDOUT,
            env={**os.environ, "DREX_API_KEY": ""},
        )
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 60
        while True:
            assert server.poll() is None, log_path.read_text()
            assert time.monotonic() < deadline, log_path.read_text()
            try:
                with urllib.request.urlopen(f"{url}/readyz", timeout=5) as response:
                    if json.loads(response.read())["learner_interactions"] == 300:
                        break
            except OSError:
                pass
            time.sleep(0.2)
        yield url, log_path
    finally:
        server.terminate()
        server.wait(30)


def test_schemathesis_finds_no_server_error_and_no_departure_from_the_document(
    served: tuple[str, Path], tmp_path: Path
) -> None:
    url, log = served
    report = tmp_path / "schemathesis.json"
    run = subprocess.run(
        [
            *(sys.executable, "-m", "schemathesis.cli", "run", f"{url}/openapi.json"),
            *("--checks", "all", "--max-time", str(MAX_TIME), "--workers", "2"),
            *("--seed", "0", "--generation-database", "none", "--no-color"),
            *("--report", "json", "--report-json-path", str(report)),
            *("--request-timeout", "10"),
        ],
        capture_output=True,
        text=True,
        timeout=MAX_TIME + 240,
        cwd=tmp_path,  # schemathesis writes its report folder and cache here
    )
    assert run.returncode == 0, run.stdout[-20000:] + run.stderr[-3000:]
    assert "Traceback" not in log.read_text()
