"""``drex serve``: the HTTP API over a replica of the learner's store.

    drex serve --state-dir ./state [--host 127.0.0.1] [--port 8000]

It reads the store of the worker that holds the learner (``STATE_DIR/learner``, or
``--learner-dir``) as a RocksDB secondary: run it on the same machine as that worker or
on a volume they share. Several servers may follow one store (each keeps its own
secondary folder, a temporary one by default); with ``--reuse-port`` they can share one
port on a machine, one process per core.
"""

from __future__ import annotations

import argparse
import logging
import os
from pathlib import Path
from typing import Any


def cmd_serve(args: argparse.Namespace) -> int:
    # one OpenMP thread per FAISS search: on few cores the default makes a query ~15x
    # slower (serving/index.py); must be set before faiss is loaded
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    from aiohttp import web

    from serving.replica import Replica
    from serving.server import build_app

    logging.basicConfig(
        level=args.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    learner_dir = Path(args.learner_dir) if args.learner_dir else Path(args.state_dir) / "learner"
    if args.candidates < 1:
        raise SystemExit("drex serve: --candidates must be >= 1")
    replica = Replica(
        learner_dir,
        secondary_dir=args.secondary_dir or None,
        exposure_weight=args.exposure_weight,
        candidates=args.candidates,
    )
    try:
        # the application's refresher loads the store in the background: /healthz answers
        # at once, /readyz says 503 until the learner's state is loaded
        print(f"drex serve: http://{args.host}:{args.port} (OpenAPI at /openapi.json)", flush=True)
        web.run_app(
            build_app(replica, refresh_interval=args.refresh_interval),
            host=args.host,
            port=args.port,
            print=None,
            access_log=None,
            reuse_port=args.reuse_port or None,
        )
    finally:
        replica.close()
    return 0


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--state-dir", default=os.environ.get("DREX_STATE_DIR", "./state"))
    p.add_argument(
        "--learner-dir",
        default=os.environ.get("DREX_LEARNER_DIR", ""),
        help="the learner's store (default: STATE_DIR/learner)",
    )
    p.add_argument(
        "--secondary-dir",
        default="",
        help="this server's RocksDB secondary folder (default: a temporary one)",
    )
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=8000)
    p.add_argument("--refresh-interval", type=float, default=0.5, help="seconds between catch-ups")
    p.add_argument(
        "--candidates", type=int, default=100, help="FAISS candidates per recommendation"
    )
    p.add_argument(
        "--exposure-weight",
        type=float,
        default=None,
        help="weight of log(1 + item ratings) in the ranking (default: the model config's)",
    )
    p.add_argument(
        "--reuse-port",
        action="store_true",
        help="share the port with other drex serve processes (SO_REUSEPORT; the kernel "
        "spreads connections): run one per core",
    )
    p.add_argument("--log-level", default="info")


def register(sub: Any) -> None:
    p = sub.add_parser(
        "serve",
        help="HTTP API: recommendations, predictions, profiles, similar items",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    add_arguments(p)
    p.set_defaults(func=cmd_serve)
