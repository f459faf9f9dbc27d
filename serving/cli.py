"""``drex serve``: the HTTP API over a replica of the learner's store.

    drex serve --state-dir ./state [--host 127.0.0.1] [--port 8000]

It reads the store of the worker that holds the learner (``STATE_DIR/learner``, or
``--learner-dir``) as a RocksDB secondary: run it on the same machine as that worker or
on a volume they share; given the worker's ``DREX_STATE_DIR`` and ``DREX_LEARNER_DIR``
(or flags), it finds that store. Every setting (serving/settings.py) has a flag and a
``DREX_*`` variable; flags win. Several servers may follow one store (each keeps its own
secondary folder, a temporary one by default); with ``--reuse-port`` they can share one
port on a machine, one process per core.

With ``DREX_API_KEY`` set (a variable only: a flag would show it to every user), every
endpoint but /healthz, /readyz, /metrics and /openapi.json needs the key. A client slower
than ``--client-timeout`` to send a request is disconnected.

With ``--feedback`` (``DREX_FEEDBACK``) ``POST /feedback`` publishes reviews and ratings to
the broker of ``--broker`` / ``DREX_BROKER``, with the worker's TLS/SASL settings
(streams/feedback.py; the ``drex`` command hands that part in, serving imports no
streams code).
"""

from __future__ import annotations

import argparse
import errno
import logging
import os
import socket
import sys
import textwrap
from collections.abc import Callable, Mapping
from typing import Any

from drex_store.location import add_flags, flag_values
from serving.settings import ServerSettings

# exit statuses, as every drex command's (streams/usage.py)
EXIT_FAILURE, EXIT_USAGE = 1, 2
_LISTEN_ERRORS = frozenset({errno.EADDRINUSE, errno.EADDRNOTAVAIL, errno.EACCES})
LISTEN_HINT = "--host / DREX_HOST, --port / DREX_PORT"


def cmd_serve(args: argparse.Namespace) -> int:
    try:
        settings = settings_from_args(args)
    except ValueError as err:
        return _fail(err, EXIT_USAGE)
    feedback = None
    if settings.feedback:
        factory: Callable[[argparse.Namespace], Any] | None = getattr(args, "feedback_sink", None)
        if factory is None:
            return _fail("--feedback needs the drex command's Kafka client", EXIT_USAGE)
        try:
            feedback = factory(args)
        except ValueError as err:  # contradictory TLS/SASL settings
            return _fail(err, EXIT_USAGE)
    where = f"{settings.host}:{settings.port}"
    try:  # before the store is opened: a port in use is the only thing said
        _try_listen(settings.host, settings.port, settings.reuse_port)
    except OSError as err:
        return _fail(f"cannot listen on {where}: {_reason(err)} ({LISTEN_HINT})")
    # one OpenMP thread per FAISS search: on few cores the default makes a query ~15x
    # slower (drex_store/index.py); must be set before faiss is loaded
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    from aiohttp import web

    from serving.replica import Replica
    from serving.server import build_app, server_options

    logging.basicConfig(
        level=settings.log_level.upper(),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    replica = Replica(
        settings.learner_path,
        secondary_dir=settings.secondary_dir or None,
        exposure_weight=settings.exposure_weight,
        candidates=settings.candidates,
    )
    try:
        # the application's refresher loads the store in the background: /healthz answers
        # at once, /readyz says 503 until the learner's state is loaded
        url = f"http://{settings.host}:{settings.port}"
        key = "API key required" if settings.api_key else "no API key"
        takes = f"; feedback to {feedback.client.broker}" if feedback is not None else ""
        print(f"drex serve: {url} (OpenAPI at /openapi.json; {key}{takes})", flush=True)
        web.run_app(
            build_app(
                replica,
                refresh_interval=settings.refresh_interval,
                api_key=settings.api_key,
                client_timeout=settings.client_timeout,
                feedback=feedback,
            ),
            host=settings.host,
            port=settings.port,
            print=None,
            access_log=None,
            reuse_port=settings.reuse_port or None,
            **server_options(settings.client_timeout),
        )
    except OSError as err:
        if not _cannot_listen(err):  # taken since _try_listen, or a fault of its own
            raise
        return _fail(f"cannot listen on {where}: {_reason(err)} ({LISTEN_HINT})")
    finally:
        replica.close()
    return 0


def _try_listen(host: str, port: int, reuse_port: bool) -> None:
    """Bind every address of ``host`` as the server will (aiohttp sets SO_REUSEADDR),
    then let go; ``OSError`` if one cannot be bound."""
    infos = socket.getaddrinfo(host or None, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    for family, kind, proto, _, address in infos:
        with socket.socket(family, kind, proto) as sock:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            if reuse_port:
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
            if family == socket.AF_INET6:  # as asyncio: one socket per family
                sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
            sock.bind(address)


def _cannot_listen(err: OSError) -> bool:
    """Whether ``err`` is a failure to bind the server's address (not a fault later)."""
    return isinstance(err, socket.gaierror) or err.errno in _LISTEN_ERRORS


def _reason(err: OSError) -> str:
    # asyncio words it "error while attempting to bind on address (...): address already
    # in use"; the part after the last colon says why
    return (err.strerror or str(err)).rsplit(": ", 1)[-1]


def _fail(message: object, status: int = EXIT_FAILURE) -> int:
    print(f"drex serve: {' '.join(str(message).split())}", file=sys.stderr, flush=True)
    return status


def add_arguments(p: argparse.ArgumentParser) -> None:
    """One flag per setting (serving/settings.py), named after its variable."""
    add_flags(p, ServerSettings)
    p.epilog = "\n\n".join(
        textwrap.fill(text, 88)
        for text in (
            "Every flag has a DREX_* variable; a flag beats its variable. DREX_API_KEY is "
            "a variable only.",
            "exit status: 0 stopped (Ctrl-C, SIGTERM); 1 it cannot listen (a port in use, "
            "an unknown host); 2 a flag or DREX_* variable that cannot be right (a port "
            "out of range, a value of the wrong type).",
        )
    )


def settings_from_args(
    args: argparse.Namespace, env: Mapping[str, str] | None = None
) -> ServerSettings:
    """Defaults, then ``env``'s ``DREX_*`` variables (default: ``os.environ``), then the
    flags given in ``args``."""
    return ServerSettings.from_env(env, **flag_values(args, ServerSettings))


def register(sub: Any) -> argparse.ArgumentParser:
    """Add ``drex serve``; the caller may add ``--feedback``'s Kafka flags and set the
    ``feedback_sink`` default: a callable from the parsed arguments to the sink."""
    p: argparse.ArgumentParser = sub.add_parser(
        "serve",
        help="HTTP API: recommendations, predictions, profiles, similar items",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    add_arguments(p)
    p.set_defaults(func=cmd_serve)
    return p
