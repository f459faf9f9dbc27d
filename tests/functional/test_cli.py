"""The real ``drex`` entry point, as a user runs it: ``--version``, and errors that are
one line (or argparse's usage and one line), never a traceback, with status 2 for a
usage error and 1 for a failure while running (streams/usage.py)."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from collections.abc import Iterator
from importlib.metadata import version
from pathlib import Path

import pytest

DREX = Path(sys.executable).parent / "drex"  # the [project.scripts] entry point


def drex(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("DREX_")}
    command = [str(DREX)] if DREX.exists() else [sys.executable, "-m", "streams.cli"]
    return subprocess.run(
        [*command, *args], capture_output=True, text=True, env=env, cwd=cwd, timeout=300
    )


def one_line_error(run: subprocess.CompletedProcess[str], command: str, status: int) -> str:
    """The one stderr line of a failed ``drex <command>``."""
    assert "Traceback" not in run.stderr, run.stderr
    assert run.returncode == status, run.stderr
    lines = run.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"drex {command}: "), run.stderr
    return lines[0]


def usage_error(run: subprocess.CompletedProcess[str], command: str) -> str:
    """argparse's form: the usage, then ``drex <command>: error: ...``; status 2."""
    assert "Traceback" not in run.stderr, run.stderr
    assert run.returncode == 2, run.stderr
    lines = run.stderr.splitlines()
    assert lines[0].startswith(f"usage: drex {command} "), run.stderr
    assert lines[-1].startswith(f"drex {command}: error: "), run.stderr
    return lines[-1]


@pytest.fixture
def busy_port() -> Iterator[int]:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen()
        yield sock.getsockname()[1]


def test_version(tmp_path: Path) -> None:
    run = drex("--version", cwd=tmp_path)
    assert (run.returncode, run.stdout.strip()) == (0, f"drex {version('drex')}")


def test_the_help_says_what_the_exit_statuses_mean(tmp_path: Path) -> None:
    run = drex("--help", cwd=tmp_path)
    text = " ".join(run.stdout.split())
    assert run.returncode == 0
    assert "exit status: 0 done; 1 failed while running" in text
    assert "2 a usage error" in text


def test_bad_set_pairs_are_usage_errors(tmp_path: Path) -> None:
    common = ("evaluate", "--dataset", "sample", "--output", str(tmp_path / "out"))
    line = usage_error(drex(*common, "--set", "dim=abc", cwd=tmp_path), "evaluate")
    assert "argument --set: dim='abc'" in line and "integer" in line
    line = usage_error(drex(*common, "--set", "variant=drex-paper", cwd=tmp_path), "evaluate")
    assert "variant is not a KEY=VALUE override" in line and "--variants" in line
    line = usage_error(drex(*common, "--set", "dimm=3", cwd=tmp_path), "evaluate")
    assert "KEY one of" in line and "use_text" in line
    assert not (tmp_path / "out").exists()  # refused before anything was written


def test_an_unknown_baseline_is_a_usage_error_listing_the_valid_names(tmp_path: Path) -> None:
    huge = tmp_path / "huge.jsonl"  # never read: the names are checked first
    huge.write_text("not json\n")
    run = drex(
        *("evaluate", "--dataset", str(huge), "--output", str(tmp_path / "out")),
        *("--baselines", "bias", "foo"),
        cwd=tmp_path,
    )
    line = usage_error(run, "evaluate")
    assert "invalid choice: 'foo'" in line and "'itemknn'" in line


def test_a_missing_dataset_is_one_line(tmp_path: Path) -> None:
    missing = tmp_path / "none.json"
    run = drex("evaluate", "--dataset", str(missing), "--output", str(tmp_path), cwd=tmp_path)
    line = one_line_error(run, "evaluate", 1)
    assert f"dataset '{missing}' not found" in line


def test_serve_on_a_port_in_use_is_one_line(tmp_path: Path, busy_port: int) -> None:
    run = drex("serve", "--port", str(busy_port), "--state-dir", str(tmp_path), cwd=tmp_path)
    line = one_line_error(run, "serve", 1)
    assert f"cannot listen on 127.0.0.1:{busy_port}" in line and "in use" in line


def test_serve_on_a_port_out_of_range_is_a_usage_error(tmp_path: Path) -> None:
    line = one_line_error(drex("serve", "--port", "70000", cwd=tmp_path), "serve", 2)
    assert "DREX_PORT / --port" in line and "65535" in line


def test_the_worker_on_a_metrics_port_in_use_is_one_line(tmp_path: Path, busy_port: int) -> None:
    run = drex(
        *("worker", "--metrics-port", str(busy_port), "--state-dir", str(tmp_path)),
        *("--broker", "kafka://127.0.0.1:1"),  # nothing there: the port is checked first
        cwd=tmp_path,
    )
    line = one_line_error(run, "worker", 1)
    assert f"cannot serve metrics on 127.0.0.1:{busy_port}" in line and "in use" in line
    assert "--metrics-port" in line


@pytest.mark.parametrize(
    ("command", "flag"), [("demo", "--api-port"), ("demo", "--metrics-port"), ("broker", "--port")]
)
def test_a_port_out_of_range_is_a_usage_error(tmp_path: Path, command: str, flag: str) -> None:
    line = usage_error(drex(command, flag, "70000", cwd=tmp_path), command)
    assert f"argument {flag}: port 70000 is out of range: 0 to 65535" in line


@pytest.mark.parametrize("flag", ["--api-port", "--metrics-port"])
def test_the_demo_on_a_port_in_use_is_one_line(tmp_path: Path, busy_port: int, flag: str) -> None:
    run = drex("demo", flag, str(busy_port), "--state-dir", str(tmp_path), cwd=tmp_path)
    line = one_line_error(run, "demo", 1)
    assert f"port {busy_port}" in line and "in use" in line and flag in line
    assert run.stdout == ""  # said before the dataset is read, nothing started


def test_replay_refuses_bad_names_and_pairs_before_it_reaches_the_broker(tmp_path: Path) -> None:
    # nothing listens on port 1: had the replay connected first, it would fail with 1
    common = ("replay", "--broker", "kafka://127.0.0.1:1", "--output", str(tmp_path / "out"))
    line = one_line_error(drex(*common, "--baselines", "foo", cwd=tmp_path), "replay", 2)
    assert "unknown baseline foo for --mode paper" in line and "itemknn" in line
    run = drex(*common, "--mode", "prequential", "--baselines", "ease", cwd=tmp_path)
    assert "unknown baseline ease for --mode prequential" in one_line_error(run, "replay", 2)
    run = drex(*common, "--mode", "prequential", "--variants", "drex-mlp", cwd=tmp_path)
    assert "unknown variant drex-mlp" in one_line_error(run, "replay", 2)
    line = usage_error(drex(*common, "--set", "dim=abc", cwd=tmp_path), "replay")
    assert "argument --set: dim='abc'" in line
    assert not (tmp_path / "out").exists()


def test_produce_of_a_missing_dataset_is_one_line(tmp_path: Path) -> None:
    missing = tmp_path / "none.json"
    run = drex("produce", "--dataset", str(missing), cwd=tmp_path)
    assert f"dataset '{missing}' not found" in one_line_error(run, "produce", 1)
