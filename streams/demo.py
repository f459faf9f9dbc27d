"""``drex demo``: the whole system on one machine, in one command.

    drex demo [--dataset sample|FILE] [--limit N] [--api-port 8000] [--serve-for SECONDS]

Starts the embedded broker, a worker and the HTTP server as child processes; streams the
dataset as separate review and rating events (with a few review-only, rating-only,
duplicated and malformed ones, as real producers send); shows the learner's progress
(interactions/s, prequential MAE and RMSE) while it learns; then prints recommendations
with their explanations (keywords, a quote from a review, cautions) for the most active
users, and the API and metrics URLs. It keeps serving until Ctrl-C (or ``--serve-for``
seconds), then stops the server, the worker and the broker, in that order, and removes
its temporary state.

The children run in their own sessions, so Ctrl-C reaches only this process, which
stops them cleanly; nothing is left running. SIGTERM and SIGHUP (``kill``, a closed
terminal, a container stopping) stop it the same way, and so does a closed output
(``drex demo | tee log`` and Ctrl-C: the clean-up never waits on a write). Should the
demo itself die (SIGKILL, a crash), Linux sends its children SIGTERM
(``PR_SET_PDEATHSIG``), and the worker exits within its ``DREX_SHUTDOWN_GRACE`` even
though the broker died with the demo.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import IO, Any

from streams.broker import EmbeddedBroker, free_port, handling
from streams.metrics import scrape
from streams.shutdown import die_with_parent, say, silence_output
from streams.usage import EXIT_STATUSES, HelpFormatter, port_number

STOP_MARGIN = 10.0  # seconds the demo waits for a child beyond the worker's own grace


class DemoError(RuntimeError):
    """A part of the demo did not start or stopped; the message says which and where."""


def _port(requested: int, what: str, flag: str) -> int:
    if requested == 0:
        return free_port()
    with socket.socket() as s:
        try:
            s.bind(("127.0.0.1", requested))
        except OSError:
            raise DemoError(
                f"port {requested} ({what}) is in use: pass {flag} PORT, or 0"
            ) from None
    return requested


def _get(url: str) -> tuple[int, Any]:
    try:
        with urllib.request.urlopen(url, timeout=10) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as err:
        return err.code, json.loads(err.read())


class Stack:
    """The broker, the worker and the server, started in order and stopped in reverse."""

    def __init__(self, args: argparse.Namespace, state: Path) -> None:
        self.args = args
        self.state = state
        self.logs = state / "logs"
        self.broker: EmbeddedBroker | None = None
        self.worker: subprocess.Popen[bytes] | None = None
        self.server: subprocess.Popen[bytes] | None = None
        self._files: list[IO[bytes]] = []
        self.api_port = _port(args.api_port, "HTTP API", "--api-port")
        self.metrics_port = _port(args.metrics_port, "worker metrics", "--metrics-port")

    def _log(self, name: str) -> IO[bytes]:
        self.logs.mkdir(parents=True, exist_ok=True)
        f = open(self.logs / f"{name}.log", "ab")  # noqa: SIM115 - closed in stop()
        self._files.append(f)
        return f

    def start(self) -> None:
        from streams.worker import spawn

        self.broker = EmbeddedBroker(log_dir=self.logs / "broker").start()
        command = [
            *("--broker", self.broker.url, "--embedded"),
            *("--state-dir", str(self.state / "worker")),
            *("--metrics-port", str(self.metrics_port)),
            *("--join-window", str(self.args.join_window)),
            *("--session-timeout", "4"),
        ]
        if self.args.encoder:
            command += ["--encoder", self.args.encoder]
        # own sessions: Ctrl-C reaches the demo only, which stops them in order; and
        # SIGTERM when the demo dies without stopping them (SIGKILL)
        self.worker = spawn(
            command, log=self._log("worker"), new_session=True, die_with_parent=True
        )
        self.server = subprocess.Popen(
            [
                *(sys.executable, "-m", "streams.cli", "serve"),
                *("--state-dir", str(self.state / "worker")),
                *("--port", str(self.api_port), "--refresh-interval", "0.5"),
                *("--feedback", "--broker", self.broker.url),  # POST /feedback publishes
            ],
            stdin=subprocess.DEVNULL,
            stdout=self._log("server"),
            stderr=subprocess.STDOUT,
            start_new_session=True,
            preexec_fn=die_with_parent(),  # prctl only, looked up before the fork
        )

    def check(self) -> None:
        for name, proc in (("worker", self.worker), ("server", self.server)):
            if proc is not None and proc.poll() is not None:
                tail = (self.logs / f"{name}.log").read_text(errors="replace")[-2000:]
                raise DemoError(f"the {name} stopped (exit {proc.returncode}):\n{tail}")

    def wait_for(self, ready: Any, what: str, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while not ready():
            self.check()
            if time.monotonic() > deadline:
                raise DemoError(f"timed out after {timeout:.0f} s waiting for {what}")
            time.sleep(0.3)

    def stop(self) -> None:
        """SIGTERM to the server and the worker (which finishes and writes its
        micro-batch), SIGKILL to one still there after the worker's grace; then the
        broker. A signal meanwhile (a second Ctrl-C) does not interrupt it: it kills the
        children at once instead of waiting."""
        from streams.settings import WorkerSettings

        hurry = threading.Event()
        children = [p for p in (self.server, self.worker) if p is not None]
        with handling(lambda signum, frame: hurry.set(), *_STOP_SIGNALS):
            for proc in children:
                if proc.poll() is None:
                    proc.terminate()
            try:  # the worker's (it inherits the environment)
                grace = WorkerSettings.from_env().shutdown_grace
            except ValueError:  # the worker refused its settings too: it has stopped
                grace = 0.0
            deadline = time.monotonic() + grace + STOP_MARGIN
            while any(p.poll() is None for p in children):
                if hurry.is_set() or time.monotonic() > deadline:
                    for proc in children:
                        if proc.poll() is None:
                            proc.kill()
                    for proc in children:
                        proc.wait(10)
                    break
                time.sleep(0.1)
            if self.broker is not None:
                self.broker.stop()
            for f in self._files:
                f.close()


@contextlib.contextmanager
def _state_dir(path: str) -> Iterator[Path]:
    if path:
        Path(path).mkdir(parents=True, exist_ok=True)
        yield Path(path)
        return
    tmp = Path(tempfile.mkdtemp(prefix="drex-demo-"))
    try:
        yield tmp
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


_STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)


def _interrupt(signum: int, frame: object) -> None:
    """SIGTERM and SIGHUP act as Ctrl-C, so the same clean-up stops the children."""
    raise KeyboardInterrupt


def _send(broker: str, events: Any, done: threading.Event, errors: list[BaseException]) -> None:
    from streams.producer import EventProducer

    async def go() -> None:
        async with EventProducer(broker) as producer:
            for topic, key, value in events:
                await producer.send_raw(topic, key, value)

    try:
        asyncio.run(go())
    except BaseException as err:  # reported by the main thread
        errors.append(err)
    finally:
        done.set()


def _progress(stack: Stack, total: int, quiet: bool) -> None:
    """A bar of interactions learned, with the rate and the prequential errors."""
    from tqdm import tqdm

    started = time.monotonic()
    with tqdm(total=total, unit="interaction", desc="learning", disable=quiet) as bar:
        while True:
            stack.check()
            m = scrape(stack.metrics_port)
            applied = int(m.get("drex_learner_interactions", 0.0))
            rated = m.get("drex_prequential_rated_total", 0.0)
            postfix = {"per s": f"{applied / max(time.monotonic() - started, 1e-9):.0f}"}
            if rated:
                postfix["MAE"] = f"{m['drex_prequential_absolute_error_total'] / rated:.3f}"
                rmse = (m["drex_prequential_squared_error_total"] / rated) ** 0.5
                postfix["RMSE"] = f"{rmse:.3f}"
            dead = sum(v for k, v in m.items() if k.startswith("drex_dead_letters_total"))
            postfix["dead letters"] = f"{dead:.0f}"
            bar.set_postfix(postfix, refresh=False)
            bar.update(applied - bar.n)
            if applied >= total:
                return
            time.sleep(0.5)


def _show(stack: Stack, users: list[str], per_user: dict[str, int], k: int) -> str | None:
    """Print each user's profile and recommendations; the first user's top item."""
    api = f"http://127.0.0.1:{stack.api_port}"
    first: str | None = None
    for user in users:
        _, profile = _get(f"{api}/users/{user}/profile?k=6")
        words = ", ".join(w["word"] for w in profile.get("keywords", []))
        say(f"\nuser {user}: {per_user[user]} interactions; profile keywords: {words or '-'}")
        status, body = _get(f"{api}/users/{user}/recommendations?k={k}")
        if status != 200:
            say(f"  (no recommendations: {body})")
            continue
        first = first or next((item["item_id"] for item in body["items"]), None)
        for n, item in enumerate(body["items"], 1):
            because = ", ".join(item["explanation"]) or "(no keywords yet)"
            say(
                f"  {n}. {item['item_id']:<14} predicted {item['predicted_rating']:.2f}"
                f"   because: {because}"
            )
            for line in _evidence(item):
                say(f"      {line}")
    return first


def _evidence(item: dict[str, Any]) -> list[str]:
    """The lines under a recommended item: its quote with the review's rating, and its
    cautions, when it has them."""
    lines = []
    quote = item.get("quote")
    if quote:
        lines.append(f'"{quote["text"]}" ({quote["rating"]:g}★ review)')
    if item.get("cautions"):
        lines.append(f"but some reviews mention: {', '.join(item['cautions'])}")
    return lines


def cmd_demo(args: argparse.Namespace) -> int:
    from drex_model.evaluate.data import load_interactions
    from drex_model.evaluate.sample import write_sample
    from streams.plan import plan_events

    started = time.monotonic()
    try:
        with (
            handling(_interrupt, signal.SIGTERM, signal.SIGHUP),
            _state_dir(args.state_dir) as state,
        ):
            stack = Stack(args, state)  # its ports first: one in use fails before the data
            dataset = args.dataset
            if dataset == "sample":
                dataset = str(write_sample(state / "sample.jsonl"))
            elif not Path(dataset).exists():
                raise DemoError(f"dataset {dataset!r} not found (give a file, or 'sample')")
            report = load_interactions(dataset, progress=not args.quiet)
            rows = report.interactions[: args.limit] if args.limit else report.interactions
            plan = plan_events(
                rows, seed=0, review_only=0.1, rating_only=0.1, duplicate=0.02, malformed=0.01
            )
            truth = plan.truth
            say(f"drex demo: {Path(dataset).name}: {truth.summary()}")
            try:
                say("starting the broker, the worker and the server ...")
                stack.start()
                stack.wait_for(
                    lambda: scrape(stack.metrics_port).get("drex_owns_learner") == 1.0,
                    "the worker to hold the learner",
                    300,
                )
                assert stack.broker is not None
                done, errors = threading.Event(), list[BaseException]()
                sender = threading.Thread(
                    target=_send, args=(stack.broker.url, plan.events, done, errors), daemon=True
                )
                sender.start()
                _progress(stack, truth.interactions, args.quiet)
                sender.join()
                if errors:
                    raise DemoError(f"sending the events failed: {errors[0]!r}")

                def server_caught_up() -> bool:
                    with contextlib.suppress(OSError):
                        status, body = _get(f"http://127.0.0.1:{stack.api_port}/readyz")
                        return status == 200 and body["learner_interactions"] >= truth.interactions
                    return False

                stack.wait_for(server_caught_up, "the server to load the learner's state", 120)
                active = sorted(truth.per_user, key=lambda u: (-truth.per_user[u], u))
                top = _show(stack, active[: args.users], truth.per_user, args.k)
                api = f"http://127.0.0.1:{stack.api_port}"
                say(
                    f"\nlearned {truth.interactions} interactions in "
                    f"{time.monotonic() - started:.0f} s (from start)\n"
                    f"API:      {api}  (OpenAPI: {api}/openapi.json; "
                    f"try {api}/users/{active[0]}/recommendations?k=5)\n"
                    f"metrics:  http://127.0.0.1:{stack.metrics_port}/metrics (worker), "
                    f"{api}/metrics (server)\n"
                    f"feedback: curl -X POST {api}/feedback -H 'Content-Type: application/json' "
                    f"""-d '[{{"user_id": "{active[0]}", "item_id": "{top}", "rating": 5}}]'\n"""
                    f"broker:   {stack.broker.url} (embedded)\n"
                    f"logs:     {stack.logs}"
                    + ("" if args.state_dir else " (removed on exit; --state-dir keeps them)")
                )
                if args.serve_for != 0:
                    forever = args.serve_for < 0
                    say(
                        "serving until Ctrl-C"
                        if forever
                        else f"serving for {args.serve_for:g} s (Ctrl-C stops sooner)"
                    )
                    deadline = time.monotonic() + (args.serve_for if not forever else 0)
                    while forever or time.monotonic() < deadline:
                        stack.check()
                        time.sleep(0.5)
            finally:  # nothing here may keep the children running (a closed pipe)
                try:
                    say("stopping the server, the worker and the broker ...")
                finally:
                    stack.stop()
    except KeyboardInterrupt:
        say("stopped")
        return 130
    except BrokenPipeError:  # a progress bar wrote to a closed pipe; the stack is stopped
        silence_output()
        return 128 + signal.SIGPIPE
    except DemoError as err:
        say(f"drex demo: {err}", file=sys.stderr)
        return 1
    say("stopped")
    return 0


# settings the demo gives its worker and server as flags (Stack.start): their variables
# are not read
SET_BY_DEMO = frozenset(
    {"broker", "embedded", "state_dir", "metrics_port", "join_window", "session_timeout"}
)
SET_BY_DEMO_SERVER = frozenset({"state_dir", "port", "refresh_interval", "feedback"})


def _variables_epilog() -> str:
    """Which ``DREX_*`` variables the demo's children read: they inherit its environment."""
    from serving.settings import ServerSettings
    from streams.settings import WorkerSettings

    def names(cls: Any, fields: Any) -> str:
        return ", ".join(cls.variable(name) for name in cls.model_fields if name in fields)

    worker = set(WorkerSettings.model_fields) - SET_BY_DEMO
    server = set(ServerSettings.model_fields) - SET_BY_DEMO_SERVER
    paragraphs = [
        "The worker and the server inherit this environment, so they read the DREX_* "
        "variables of drex worker and drex serve (their --help says what each does), "
        "but for the settings the demo gives them as flags: "
        f"{names(WorkerSettings, SET_BY_DEMO)} (worker), "
        f"{names(ServerSettings, SET_BY_DEMO_SERVER)} (server) and, with --encoder, "
        "DREX_ENCODER. The demo waits DREX_SHUTDOWN_GRACE for the worker to stop.",
        f"Read by the worker: {names(WorkerSettings, worker)}.",
        f"Read by the server: {names(ServerSettings, server)}.",
        EXIT_STATUSES,
    ]
    return "\n\n".join(paragraphs)


def register(sub: Any) -> None:
    p = sub.add_parser(
        "demo",
        help="broker + worker + server on this machine: stream, learn, recommend",
        description=__doc__,
        epilog=_variables_epilog(),
        formatter_class=HelpFormatter,
    )
    p.add_argument("--dataset", default="sample", help="'sample' (generated) or a dataset file")
    p.add_argument(
        "--limit", type=int, default=0, help="stream only the first N interactions (0: all)"
    )
    p.add_argument(
        "--api-port", type=port_number, default=8000, help="HTTP API port (0: any free one)"
    )
    p.add_argument(
        "--metrics-port",
        type=port_number,
        default=9101,
        help="worker metrics port (0: any free one)",
    )
    p.add_argument("--state-dir", default="", help="keep state here (default: a temporary one)")
    p.add_argument(
        "--join-window",
        type=float,
        default=5.0,
        help="seconds a review waits for its rating, and the reverse",
    )
    p.add_argument(
        "--encoder",
        default="",
        help="local Hugging Face encoder folder (default: the bundled MiniLM)",
    )
    p.add_argument("--users", type=int, default=3, help="users to show recommendations for")
    p.add_argument("--k", type=int, default=5, help="recommendations per user")
    p.add_argument(
        "--serve-for",
        type=float,
        default=-1,
        help="seconds to keep serving after the recommendations (-1: until Ctrl-C; 0: stop)",
    )
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    p.set_defaults(func=cmd_demo)
