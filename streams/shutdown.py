"""A bounded stop for processes that talk to a broker that may be gone.

faust stops a worker by committing offsets and flushing its producer, and both wait for
the broker: with the broker gone that is faust's request timeout (1,200 s) per request,
and the stop never ends while the join's tick records are still queued. Meanwhile
aiokafka logs every failed connection, fetch, metadata update and produce retry (about
13 KB/s). Three small tools, installed by ``drex worker`` (streams/worker.py) and
``drex demo`` (streams/demo.py):

* :class:`Watchdog`: armed by the first SIGTERM or SIGINT, it ends the process with
  :data:`EXIT_FORCED` once ``grace`` seconds have passed, after
  logging at ERROR what had not stopped. What the learner committed stays: its store
  writes state, offset and ids in one atomic RocksDB write (streams/state.py), so a
  forced exit is a crash between two batches, and the interactions it had read but not
  committed are read again by the next owner.
* :class:`RepeatFilter`: a logging filter that lets the first record of each kind
  (logger, level, message template) through and then at most one per ``interval``
  seconds, which says how many it stood for.
* :func:`die_with_parent`: a ``preexec_fn`` that has Linux signal a child when the
  process that started it dies, even by SIGKILL, so a demo leaves no orphans.
"""

from __future__ import annotations

import contextlib
import ctypes
import logging
import os
import signal
import sys
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from typing import Any

logger = logging.getLogger("drex.shutdown")

EXIT_FORCED = 75
"""Exit status of a stop cut short by the grace (EX_TEMPFAIL: try again once the broker
is back). A clean stop exits 0, a crash faust's 1."""

RATE_LIMITED_LOGGERS = ("aiokafka", "faust", "mode", "kafka")
"""Loggers (with their children) whose repeating warnings and errors :class:`RepeatFilter`
thins out; drex's own log lines always pass."""

_PR_SET_PDEATHSIG = 1


# --- the watchdog ------------------------------------------------------------------------


class Watchdog:
    """Ends the process ``grace`` seconds after :meth:`arm`, whatever the stop is doing.

    ``describe`` returns what has not finished yet (logged with the exit); ``exit`` is
    ``os._exit`` but for tests. The timer is a daemon thread, so it runs while the event
    loop is blocked, and never keeps a process alive that stopped in time.
    """

    def __init__(
        self,
        grace: float,
        describe: Callable[[], str] = lambda: "",
        exit: Callable[[int], Any] = os._exit,
    ) -> None:
        self.grace = grace
        self.describe = describe
        self._exit = exit
        self._armed_at: float | None = None
        self._why = ""
        self._lock = threading.Lock()
        self._fired = False
        self._timer: threading.Timer | None = None

    @property
    def armed(self) -> bool:
        return self._armed_at is not None

    def arm(self, why: str) -> None:
        """Start the countdown (``why``: what asked for the stop); later calls change
        nothing. (A second signal does not cut the stop short: Linux sends the
        parent-death signal again for each thread of a dying parent.)"""
        if self._armed_at is not None:
            return
        self._armed_at = time.monotonic()
        self._why = why
        logger.info("stopping (%s): at most %.0f s before a forced exit", why, self.grace)
        self._timer = threading.Timer(self.grace, self.fire, args=("the grace ran out",))
        self._timer.daemon = True
        self._timer.name = "drex-shutdown-watchdog"
        self._timer.start()

    def disarm(self) -> None:
        """The stop finished in time: no forced exit during the interpreter's own exit."""
        if self._timer is not None:
            self._timer.cancel()

    def fire(self, reason: str) -> None:
        """Log what is unfinished, flush the logs and exit with :data:`EXIT_FORCED`."""
        with self._lock:  # the timer and a direct call may race: one exit
            if self._fired:
                return
            self._fired = True
        took = time.monotonic() - (self._armed_at or time.monotonic())
        try:
            unfinished = self.describe()
        except Exception as err:  # the process is stuck: say what we can, exit anyway
            unfinished = f"(could not tell: {err!r})"
        logger.error(
            "did not stop within %.1f s of %s (%s): exiting with status %d; unfinished: %s",
            took,
            self._why,
            reason,
            EXIT_FORCED,
            unfinished or "-",
        )
        flush_logs()
        self._exit(EXIT_FORCED)


def flush_logs() -> None:
    """Flush every handler of the root logger, stdout and stderr (before ``os._exit``)."""
    for handler in logging.getLogger().handlers:
        with contextlib.suppress(Exception):
            handler.flush()
    for stream in (sys.stdout, sys.stderr):
        with contextlib.suppress(Exception):
            stream.flush()


def unfinished_services(root: Any) -> list[str]:
    """Labels of the mode services under ``root`` (faust's worker, app, consumer,
    producer, tables ...) that started and have not stopped, outermost first."""
    out: list[str] = []
    seen: set[int] = set()
    todo = [root]
    while todo:
        service = todo.pop(0)
        if id(service) in seen:
            continue
        seen.add(id(service))
        started = getattr(service, "_started", None)
        stopped = getattr(service, "_stopped", None)
        running = started is not None and started.is_set()
        if running and stopped is not None and not stopped.is_set():
            out.append(str(getattr(service, "shortlabel", type(service).__name__)))
        todo.extend(list(getattr(service, "_children", ())))
        todo.extend(list(getattr(service, "services", ()) or ()))
    return out


# --- rate-limited logs -------------------------------------------------------------------


class RepeatFilter(logging.Filter):
    """Lets the first record of each kind through, then at most one per ``interval``
    seconds, with how many it stood for appended.

    A kind is (logger, level, message template): "Unable connect to node with id %s: %s"
    is one kind whatever the node and the error. Only records at ``level`` or above from
    the loggers under ``prefixes`` are thinned; others always pass. Attach it to handlers
    (a filter on a logger does not see its children's records).
    """

    def __init__(
        self,
        interval: float,
        prefixes: Iterable[str] = RATE_LIMITED_LOGGERS,
        level: int = logging.WARNING,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        super().__init__()
        self.interval = interval
        self.prefixes = tuple(prefixes)
        self.level = level
        self.clock = clock
        # kind -> (when one was last let through, how many were held back since)
        self._seen: dict[tuple[str, int, str], tuple[float, int]] = {}
        self._lock = threading.Lock()

    def _applies(self, record: logging.LogRecord) -> bool:
        if record.levelno < self.level or self.interval <= 0:
            return False
        name = record.name
        return any(name == p or name.startswith(p + ".") for p in self.prefixes)

    def filter(self, record: logging.LogRecord) -> bool:
        if not self._applies(record):
            return True
        decided = getattr(record, "_drex_repeats", None)
        if decided is not None:  # seen by another handler: the same answer, counted once
            return bool(decided >= 0)
        kind = (record.name, record.levelno, str(record.msg))
        now = self.clock()
        with self._lock:
            last = self._seen.get(kind)
            if last is not None and now - last[0] < self.interval:
                self._seen[kind] = (last[0], last[1] + 1)
                record._drex_repeats = -1
                return False
            held = last[1] if last is not None else 0
            self._seen[kind] = (now, 0)
            if len(self._seen) > 10_000:  # kinds from formatted messages: keep it bounded
                self._seen = {kind: (now, 0)}
        record._drex_repeats = held
        if held:
            since = now - last[0] if last is not None else 0.0
            record.msg = f"{record.msg} [and {held} more like this in the last {since:.0f} s]"
        return True


def install_repeat_filter(interval: float, logger_: logging.Logger | None = None) -> None:
    """Add one :class:`RepeatFilter` to every handler of ``logger_`` (default: root) that
    has none yet (call after faust set its handlers up)."""
    target = logger_ or logging.getLogger()
    shared = RepeatFilter(interval)
    for handler in target.handlers:
        if not any(isinstance(f, RepeatFilter) for f in handler.filters):
            handler.addFilter(shared)


# --- children that die with their parent --------------------------------------------------


def die_with_parent(sig: int = signal.SIGTERM) -> Callable[[], None] | None:
    """A ``preexec_fn`` that has Linux send ``sig`` to the child when the thread that
    started it ends (the parent's exit, even by SIGKILL); None elsewhere.

    ``prctl`` is looked up here, in the parent: the hook runs between fork and exec,
    where loading a library could deadlock. A parent that died before the hook ran
    (the child then belongs to init) is caught by comparing the parent's pid.
    """
    if sys.platform != "linux":
        return None
    try:
        prctl = ctypes.CDLL(None, use_errno=True).prctl
    except (OSError, AttributeError):
        return None
    parent = os.getpid()
    number = int(sig)

    def hook() -> None:  # pragma: no cover - runs in the child
        prctl(_PR_SET_PDEATHSIG, number, 0, 0, 0)
        if os.getppid() != parent:
            os.kill(os.getpid(), number)

    return hook


@contextlib.contextmanager
def quiet_broken_pipe() -> Iterator[None]:
    """Nothing raised by writes to a closed stdout or stderr (``| tee`` killed by
    Ctrl-C) inside the block; after the first one, both are sent to /dev/null, so later
    writes (progress bars, the interpreter's final flush) are dropped too."""
    try:
        yield
    except BrokenPipeError:
        silence_output()


def silence_output() -> None:
    """Point stdout and stderr at /dev/null (their pipe's reader is gone)."""
    devnull = os.open(os.devnull, os.O_WRONLY)
    for stream in (sys.stdout, sys.stderr):
        with contextlib.suppress(Exception):
            os.dup2(devnull, stream.fileno())
    os.close(devnull)


def say(*parts: Any, file: Any = None, **kwargs: Any) -> None:
    """``print(..., flush=True)`` that never raises for a closed pipe (see
    :func:`quiet_broken_pipe`)."""
    with quiet_broken_pipe():
        print(*parts, file=file if file is not None else sys.stdout, flush=True, **kwargs)
