"""``drex demo`` end to end, reduced: a few hundred interactions, the tiny encoder."""

from __future__ import annotations

import contextlib
import os
import re
import shlex
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable
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
    assert any(r != "(no keywords yet)" for r in reasons), out
    assert re.search(r'^ {6}".+" \(\d(\.\d+)?★ review\)$', out, re.MULTILINE), out  # quotes
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


# --- no orphans (issue 17, item 4) ---------------------------------------------------------

GRACE = "8"  # DREX_SHUTDOWN_GRACE the demo's worker inherits (default 30)
GONE_WITHIN = 8 + 12  # seconds: the worker's grace, the server's stop, a loaded machine


def _processes() -> dict[int, tuple[int, str]]:
    """pid -> (parent pid, command line) of every live (not zombie) process."""
    out = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        with contextlib.suppress(OSError):
            fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
            if fields[0] != "Z":
                cmdline = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode()
                out[int(entry.name)] = (int(fields[1]), cmdline)
    return out


def _stack(state: Path, out: str) -> list[int]:
    """The worker and the server (their command lines name the demo's state folder) and
    the broker (its port) the demo started."""
    broker = re.search(r"kafka://127\.0\.0\.1:(\d+)", out)
    assert broker is not None, out
    listener = f"tcp://127.0.0.1:{broker.group(1)} "
    found = [
        pid
        for pid, (_, cmdline) in _processes().items()
        if (f"--state-dir {state}/" in cmdline and " demo " not in cmdline)
        or (listener in cmdline and "tansu" in cmdline)
    ]
    assert len(found) == 3, (found, out)
    return found


def _wait_for_serving(output: Path, alive: Callable[[], bool], timeout: float) -> str:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        text = output.read_text(errors="replace") if output.exists() else ""
        if "serving until" in text:
            return text
        if not alive():
            pytest.fail(f"the demo ended before serving:\n{text}")
        time.sleep(0.5)
    pytest.fail(f"the demo did not serve within {timeout:.0f} s")


def _listening(out: str) -> list[int]:
    ports = {int(p) for p in re.findall(r"127\.0\.0\.1:(\d+)", out)}
    assert len(ports) == 3, out
    busy = []
    for port in sorted(ports):
        with socket.socket() as s, contextlib.suppress(OSError):
            s.connect(("127.0.0.1", port))
            busy.append(port)
    return busy


def _assert_all_gone(pids: list[int], out: str) -> None:
    """Every process of the stack exits and every port it printed is free within
    GONE_WITHIN seconds (the ones left are killed, never left to the next test)."""
    deadline = time.monotonic() + GONE_WITHIN
    while time.monotonic() < deadline:
        if not set(pids) & set(_processes()) and not _listening(out):
            return
        time.sleep(0.2)
    left = sorted(set(pids) & set(_processes()))
    for pid in left:
        with contextlib.suppress(OSError):
            os.kill(pid, signal.SIGKILL)
    pytest.fail(f"{GONE_WITHIN} s later: still running {left}, listening {_listening(out)}")


def test_ctrl_c_on_a_demo_piped_into_tee_stops_everything_though_the_pipe_is_closed(
    tiny_encoder_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """``drex demo 2>&1 | tee log``, then Ctrl-C: SIGINT to the whole process group; tee
    goes first, so whatever the demo writes afterwards meets a closed pipe."""
    monkeypatch.setenv("DREX_SHUTDOWN_GRACE", GRACE)
    state, log = tmp_path / "state", tmp_path / "tee.log"
    demo_command = shlex.join([*_demo(tiny_encoder_dir, serve_for="-1"), "--state-dir", str(state)])
    shell = subprocess.Popen(  # a job of its own: one process group, as a terminal makes
        ["bash", "-c", f"{demo_command} 2>&1 | tee {shlex.quote(str(log))} >/dev/null"],
        cwd=tmp_path,
        start_new_session=True,
    )
    pids: list[int] = []
    try:
        out = _wait_for_serving(log, lambda: shell.poll() is None, 300)
        pids = _stack(state, out)
        job = {pid: cmd for pid, (ppid, cmd) in _processes().items() if ppid == shell.pid}
        tee = next(pid for pid, cmd in job.items() if cmd.startswith("tee "))
        demo = next(pid for pid, cmd in job.items() if " demo " in cmd)
        os.kill(tee, signal.SIGINT)
        deadline = time.monotonic() + 10
        while tee in _processes() and time.monotonic() < deadline:
            time.sleep(0.05)
        os.killpg(shell.pid, signal.SIGINT)  # Ctrl-C
        shell.wait(60)  # the shell waits for the demo
        pids.append(demo)
    finally:
        if shell.poll() is None:
            os.killpg(shell.pid, signal.SIGKILL)
            shell.wait(10)
    _assert_all_gone(pids, log.read_text(errors="replace"))


def test_children_of_a_killed_demo_exit_and_free_their_ports(
    tiny_encoder_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """SIGKILL gives the demo no chance to clean up: its children go on their own (the
    worker within its grace, though the broker died with the demo)."""
    monkeypatch.setenv("DREX_SHUTDOWN_GRACE", GRACE)
    state, output = tmp_path / "state", tmp_path / "demo.out"
    with output.open("wb") as out:
        demo = subprocess.Popen(
            [*_demo(tiny_encoder_dir, serve_for="-1"), "--state-dir", str(state)],
            stdout=out,
            stderr=subprocess.STDOUT,
            cwd=tmp_path,
            start_new_session=True,
        )
    pids: list[int] = []
    try:
        pids = _stack(state, _wait_for_serving(output, lambda: demo.poll() is None, 300))
    finally:
        demo.kill()
        demo.wait(10)
    _assert_all_gone(pids, output.read_text(errors="replace"))
