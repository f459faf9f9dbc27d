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
"""

from __future__ import annotations

import argparse
import logging
import os
from collections.abc import Mapping
from typing import Any

from drex_store.location import add_flags, flag_values
from serving.settings import ServerSettings


def cmd_serve(args: argparse.Namespace) -> int:
    try:
        settings = settings_from_args(args)
    except ValueError as err:
        raise SystemExit(f"drex serve: {err}") from None
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
        print(f"drex serve: {url} (OpenAPI at /openapi.json; {key})", flush=True)
        web.run_app(
            build_app(
                replica,
                refresh_interval=settings.refresh_interval,
                api_key=settings.api_key,
                client_timeout=settings.client_timeout,
            ),
            host=settings.host,
            port=settings.port,
            print=None,
            access_log=None,
            reuse_port=settings.reuse_port or None,
            **server_options(settings.client_timeout),
        )
    finally:
        replica.close()
    return 0


def add_arguments(p: argparse.ArgumentParser) -> None:
    """One flag per setting (serving/settings.py), named after its variable."""
    add_flags(p, ServerSettings)
    p.epilog = "Every flag has a DREX_* variable; a flag beats its variable."


def settings_from_args(
    args: argparse.Namespace, env: Mapping[str, str] | None = None
) -> ServerSettings:
    """Defaults, then ``env``'s ``DREX_*`` variables (default: ``os.environ``), then the
    flags given in ``args``."""
    return ServerSettings.from_env(env, **flag_values(args, ServerSettings))


def register(sub: Any) -> None:
    p = sub.add_parser(
        "serve",
        help="HTTP API: recommendations, predictions, profiles, similar items",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    add_arguments(p)
    p.set_defaults(func=cmd_serve)
