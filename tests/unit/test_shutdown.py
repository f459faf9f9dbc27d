"""streams/shutdown.py without a broker: the repeat filter, the watchdog, quiet pipes."""

from __future__ import annotations

import logging
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import pytest

from streams.shutdown import EXIT_FORCED, RepeatFilter, Watchdog


def _record(msg: str, *args: Any, name: str = "aiokafka.conn", level: int = logging.ERROR):
    return logging.LogRecord(name, level, __file__, 1, msg, args, None)


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def test_a_repeating_error_passes_once_then_once_per_interval_with_its_count() -> None:
    clock = Clock()
    limit = RepeatFilter(30.0, clock=clock)
    passed = []
    for second in range(95):  # one a second, with the node and the error varying
        clock.now = float(second)
        record = _record("Unable connect to node with id %s: %s", second, "refused")
        if limit.filter(record):
            passed.append(record.getMessage())
    assert len(passed) == 4  # at 0, 30, 60, 90 s
    assert passed[0] == "Unable connect to node with id 0: refused"
    assert passed[1].endswith("[and 29 more like this in the last 30 s]")


def test_each_kind_has_its_own_budget_and_other_records_always_pass() -> None:
    limit = RepeatFilter(30.0, clock=Clock())
    assert limit.filter(_record("Unable to update metadata from %s", [111]))
    assert limit.filter(_record("Failed fetch messages from %s: %s", 111, "x"))
    assert not limit.filter(_record("Unable to update metadata from %s", [111]))
    assert limit.filter(_record("Unable to update metadata from %s", [111], level=logging.WARNING))
    for _ in range(3):  # info lines, and drex's own errors, are never thinned
        assert limit.filter(_record("Stopping...", level=logging.INFO))
        assert limit.filter(_record("dead letter %s", 1, name="drex.learn"))
    assert RepeatFilter(0.0).filter(_record("a")) and RepeatFilter(0.0).filter(_record("a"))


def test_the_watchdog_exits_after_the_grace_with_what_was_unfinished(
    caplog: pytest.LogCaptureFixture,
) -> None:
    exited = threading.Event()
    codes: list[int] = []

    def fake_exit(code: int) -> None:
        codes.append(code)
        exited.set()

    dog = Watchdog(0.2, lambda: "Producer", exit=fake_exit)
    with caplog.at_level(logging.INFO, logger="drex.shutdown"):
        started = time.monotonic()
        dog.arm("SIGTERM")
        dog.arm("SIGTERM")  # a repeated signal (the parent-death signal, per thread)
        assert exited.wait(5)
        took = time.monotonic() - started
    assert codes == [EXIT_FORCED]
    assert 0.15 < took < 2
    assert "did not stop within" in caplog.text and "unfinished: Producer" in caplog.text


def test_an_unarmed_watchdog_never_fires() -> None:
    codes: list[int] = []
    Watchdog(0.05, exit=codes.append)
    time.sleep(0.2)
    assert codes == []


@pytest.mark.skipif(sys.platform != "linux", reason="PR_SET_PDEATHSIG is Linux only")
def test_a_child_started_with_die_with_parent_gets_sigterm_when_its_parent_is_killed(
    tmp_path: Any,
) -> None:
    """The parent (a short Python process) starts a sleeping child and is SIGKILLed."""
    pid_file = tmp_path / "child.pid"
    parent = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import subprocess, sys, time\n"
            "from streams.shutdown import die_with_parent\n"
            "child = subprocess.Popen(['sleep', '60'], preexec_fn=die_with_parent())\n"
            f"open({str(pid_file)!r}, 'w').write(str(child.pid))\n"
            "time.sleep(60)\n",
        ],
    )
    try:
        deadline = time.monotonic() + 30
        while not (pid_file.exists() and pid_file.read_text()):
            assert time.monotonic() < deadline and parent.poll() is None
            time.sleep(0.05)
        child = int(pid_file.read_text())
    finally:
        parent.kill()
        parent.wait(10)
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline:
        try:
            os.kill(child, 0)
        except ProcessLookupError:
            return
        state = Path(f"/proc/{child}/stat").read_text().rsplit(")", 1)[1].split()[0]
        if state == "Z":  # dead, waiting for init to reap it
            return
        time.sleep(0.05)
    os.kill(child, signal.SIGKILL)
    pytest.fail("the child outlived its SIGKILLed parent")


def test_a_disarmed_watchdog_does_not_fire() -> None:
    codes: list[int] = []
    dog = Watchdog(0.1, exit=codes.append)
    dog.arm("SIGTERM")
    dog.disarm()  # the stop finished in time
    time.sleep(0.3)
    assert codes == []


def test_two_handlers_sharing_the_filter_count_a_record_once() -> None:
    clock = Clock()
    limit = RepeatFilter(30.0, clock=clock)
    for _ in range(3):
        record = _record("Unable to update metadata from %s", [111])
        assert limit.filter(record) == limit.filter(record)  # a second handler agrees
    clock.now = 31.0
    record = _record("Unable to update metadata from %s", [111])
    assert limit.filter(record)
    assert record.getMessage().endswith("[and 2 more like this in the last 31 s]")
