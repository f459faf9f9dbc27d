"""``drex demo`` end to end, reduced: a few hundred interactions, the tiny encoder."""

from __future__ import annotations

import re
import signal
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from streams.broker import BrokerError, resolve_tansu_bin

pytestmark = pytest.mark.integration


def _demo(encoder: Path, serve_for: str) -> list[str]:
    try:
        resolve_tansu_bin()
    except BrokerError as exc:
        pytest.skip(f"no Tansu broker binary ({exc})")
    return [
        *(sys.executable, "-m", "streams.cli", "demo", "--dataset", "sample"),
        *("--limit", "400", "--serve-for", serve_for, "--quiet"),
        *("--api-port", "0", "--metrics-port", "0", "--encoder", str(encoder)),
    ]


def _assert_nothing_listens(out: str) -> None:
    """The server, the worker's metrics and the broker the demo printed are gone."""
    ports = [int(p) for p in re.findall(r"127\.0\.0\.1:(\d+)", out)]
    assert len(set(ports)) == 3, out
    for port in set(ports):
        with socket.socket() as s, pytest.raises(OSError):
            s.connect(("127.0.0.1", port))


def test_demo_learns_recommends_with_explanations_and_leaves_nothing_running(
    tiny_encoder_dir: Path, tmp_path: Path
) -> None:
    done = subprocess.run(
        _demo(tiny_encoder_dir, serve_for="0"),
        capture_output=True,
        text=True,
        timeout=600,
        cwd=tmp_path,
    )
    out = done.stdout
    assert done.returncode == 0, out + done.stderr
    assert re.search(r"learned \d+ interactions", out), out
    reasons = re.findall(r"because: (.+)", out)
    assert len(reasons) == 3 * 5  # 3 users x 5 recommendations
    assert any(r != "(no shared keywords yet)" for r in reasons), out
    assert out.rstrip().endswith("stopped")
    _assert_nothing_listens(out)


def test_sigterm_stops_a_serving_demo_and_everything_it_started(
    tiny_encoder_dir: Path, tmp_path: Path
) -> None:
    demo = subprocess.Popen(
        _demo(tiny_encoder_dir, serve_for="-1"),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        cwd=tmp_path,
    )
    assert demo.stdout is not None
    lines = []
    try:
        for line in demo.stdout:
            lines.append(line)
            if line.startswith("serving until"):
                break
        else:
            pytest.fail("the demo ended before serving:\n" + "".join(lines))
        demo.send_signal(signal.SIGTERM)
        rest, _ = demo.communicate(timeout=120)
    finally:
        if demo.poll() is None:
            demo.kill()
    out = "".join(lines) + rest
    assert demo.returncode == 130, out
    assert out.rstrip().endswith("stopped"), out
    _assert_nothing_listens(out)
