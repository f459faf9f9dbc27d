"""``drex worker``: run the streaming learner (join, learn, index) as a faust worker.

    drex worker --broker kafka://HOST:PORT [--state-dir ./state] [--partitions 4]
                [--batch-size 1024] [--join-window 30] [--device auto] [--metrics-port 9101]
                [--embedded] [--set use_text=false ...]

Every setting (streams/settings.py) has a flag and an environment variable; flags win. The worker
creates its topics, serves Prometheus metrics, and runs until SIGTERM or Ctrl-C, when it
finishes the micro-batch in progress, writes it and leaves the consumer group. A stop
that takes longer than ``--shutdown-grace`` seconds (30; a broker that is gone makes
faust wait for it without end) ends the process with status 75
(streams/shutdown.py), keeping what the learner committed. Repeating warnings and errors
of faust and aiokafka (a broker away) are logged once per ``--log-repeat-interval``.
``python -m streams.worker`` is the same command (tests start workers that way:
:func:`spawn`).
"""

from __future__ import annotations

import argparse
import logging
import os
import subprocess
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import IO, Any

from drex_store.location import add_flags, flag_values
from streams.settings import WorkerSettings
from streams.usage import EXIT_STATUSES, EXIT_USAGE, HelpFormatter, fail

PORT_HINT = "--metrics-port / DREX_METRICS_PORT: another port, 0 any free one, -1 none"
logger = logging.getLogger("drex.worker")


def register(subparsers: Any) -> argparse.ArgumentParser:
    """Add ``drex worker`` to the ``drex`` command's subparsers."""
    p: argparse.ArgumentParser = subparsers.add_parser(
        "worker",
        help="run the streaming learner: join reviews and ratings, learn, index",
        description=__doc__.split("\n\n")[0] if __doc__ else None,
        formatter_class=HelpFormatter,
    )
    add_arguments(p)
    p.set_defaults(func=cmd_worker)
    return p


def add_arguments(p: argparse.ArgumentParser) -> None:
    """One flag per setting (streams/settings.py), named after its variable:
    ``--batch-size`` for ``DREX_BATCH_SIZE``. A flag left out keeps the environment's (or
    the default) value; ``--set KEY=VALUE`` is repeatable."""
    add_flags(p, WorkerSettings)
    p.epilog = (
        "Every flag has a DREX_* variable, and a flag replaces its variable: --set "
        "pairs replace DREX_SET's (a comma-separated list of KEY=VALUE). "
        "DREX_SASL_PLAIN_PASSWORD has no flag: a command line is visible to every user "
        f"of the machine.\n\n{EXIT_STATUSES}; 75 a stop cut short by --shutdown-grace."
    )


def settings_from_args(
    args: argparse.Namespace, env: Mapping[str, str] | None = None
) -> WorkerSettings:
    """Defaults, then ``env``'s ``DREX_*`` variables (default: ``os.environ``), then the
    flags given in ``args``."""
    return WorkerSettings.from_env(env, **flag_values(args, WorkerSettings))


def cmd_worker(args: argparse.Namespace) -> int:
    """Resolve the settings and run the worker until it is stopped; the exit code."""
    try:
        settings = settings_from_args(args)
    except ValueError as err:
        return fail("worker", err, EXIT_USAGE)
    return run(settings)


def run(settings: WorkerSettings) -> int:
    """Create the topics, serve metrics, run the faust worker (blocks)."""
    from streams import metrics
    from streams.app import create_app, ensure_topics

    logging.basicConfig(
        level=settings.log_level.upper(),
        format="[%(asctime)s] %(levelname)s %(name)s: %(message)s",
    )
    settings.faust_datadir.mkdir(parents=True, exist_ok=True)
    if settings.metrics_port >= 0:  # before the broker: a port in use fails at once
        where = f"{settings.metrics_host}:{settings.metrics_port}"
        try:
            port = metrics.serve(settings.metrics_port, settings.metrics_host)
        except OSError as err:  # in use, or an address this machine does not have
            reason = err.strerror or err
            return fail("worker", f"cannot serve metrics on {where}: {reason} ({PORT_HINT})")
        print(f"drex worker: metrics on http://{settings.metrics_host}:{port}/metrics", flush=True)
    try:
        created = ensure_topics(settings)
    except Exception as err:
        return fail("worker", f"cannot reach {settings.broker}: {err}")
    if created:
        logger.info("created topics %s", sorted(created))
    drex = create_app(settings)
    worker = _worker_class()(drex.app, settings, loglevel=settings.log_level, quiet=True)
    try:
        worker.execute_from_commandline()
    except SystemExit as stop:
        return int(stop.code or 0)
    finally:
        worker.watchdog.disarm()
    return 0


def _worker_class() -> type[Any]:
    """faust's Worker with a bounded stop and rate-limited broker errors (imports faust)."""
    import faust
    from prometheus_client import REGISTRY

    from streams.shutdown import Watchdog, install_repeat_filter, unfinished_services

    class DrexWorker(faust.Worker):
        """Arms a :class:`~streams.shutdown.Watchdog` at the first SIGTERM/SIGINT, and
        puts a :class:`~streams.shutdown.RepeatFilter` on faust's log handlers."""

        def __init__(self, app: Any, settings: WorkerSettings, **kwargs: Any) -> None:
            super().__init__(app, **kwargs)
            self.drex_settings = settings
            self.watchdog = Watchdog(settings.shutdown_grace, self._unfinished)

        def _unfinished(self) -> str:
            services = unfinished_services(self) + unfinished_services(self.app)
            out = f"still stopping: {', '.join(dict.fromkeys(services)) or '-'}"
            if self.drex_settings.runs_learner:
                applied = REGISTRY.get_sample_value("drex_learner_interactions") or 0.0
                out += f"; the learner store keeps the {applied:.0f} interactions it committed"
            return out + "; what was read and not committed is read again at the next start"

        def _schedule_shutdown(self, sig: Any) -> None:
            self.watchdog.arm(getattr(sig, "name", str(sig)))
            super()._schedule_shutdown(sig)

        def on_setup_root_logger(self, logger_: logging.Logger, level: int) -> None:
            super().on_setup_root_logger(logger_, level)
            install_repeat_filter(self.drex_settings.log_repeat_interval, logger_)

    return DrexWorker


def spawn(
    args: Sequence[str],
    env: Mapping[str, str] | None = None,
    log: IO[bytes] | None = None,
    cwd: str | os.PathLike[str] | None = None,
    new_session: bool = False,
    die_with_parent: bool = False,
) -> subprocess.Popen[bytes]:
    """Start ``python -m streams.worker ARGS`` (for tests, benchmarks and the demo).

    Its output goes to ``log`` (default: inherited). Stop it with ``terminate()`` (a
    clean stop) or ``kill()`` (a crash). ``new_session``: Ctrl-C in the terminal does
    not reach it (the caller stops it, in order). ``die_with_parent`` (Linux): it gets
    SIGTERM when the calling thread ends, even when the caller is SIGKILLed; call from a
    thread that lives as long as the worker should (normally the main thread).
    """
    from streams.shutdown import die_with_parent as hook

    full_env = dict(os.environ if env is None else env)
    full_env.setdefault("PYTHONUNBUFFERED", "1")
    return subprocess.Popen(
        [sys.executable, "-m", "streams.worker", *args],
        env=full_env,
        stdout=log,
        stderr=subprocess.STDOUT if log is not None else None,
        cwd=str(cwd) if cwd is not None else str(Path(__file__).resolve().parents[1]),
        start_new_session=new_session,
        preexec_fn=hook() if die_with_parent else None,
    )


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="drex worker", description=__doc__)
    add_arguments(parser)
    return cmd_worker(parser.parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
