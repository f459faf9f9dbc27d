"""``drex demo`` end to end, reduced: a few hundred interactions, the tiny encoder."""

from __future__ import annotations

import re
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from streams.broker import BrokerError, resolve_tansu_bin

pytestmark = pytest.mark.integration


def test_demo_learns_recommends_with_explanations_and_leaves_nothing_running(
    tiny_encoder_dir: Path, tmp_path: Path
) -> None:
    try:
        resolve_tansu_bin()
    except BrokerError as exc:
        pytest.skip(f"no Tansu broker binary ({exc})")
    done = subprocess.run(
        [
            *(sys.executable, "-m", "streams.cli", "demo", "--dataset", "sample"),
            *("--limit", "400", "--serve-for", "0", "--quiet"),
            *("--api-port", "0", "--metrics-port", "0", "--encoder", str(tiny_encoder_dir)),
        ],
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

    # the server, the worker's metrics and the broker are gone
    ports = [int(p) for p in re.findall(r"127\.0\.0\.1:(\d+)", out)]
    assert len(set(ports)) == 3, out
    for port in set(ports):
        with socket.socket() as s, pytest.raises(OSError):
            s.connect(("127.0.0.1", port))
