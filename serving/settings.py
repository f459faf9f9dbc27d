"""Every setting of one ``drex serve`` process, in one frozen object (no torch import).

As the worker's (streams/settings.py): each field has a default and a docstring naming
its environment variable, read by pydantic-settings (:meth:`ServerSettings.from_env`);
``drex serve`` has a flag per field, and a flag beats its variable. ``state_dir`` and
``learner_dir`` are :class:`drex_store.location.StateLocation`'s, so a server given the
worker's ``DREX_STATE_DIR``/``DREX_LEARNER_DIR`` opens the store that worker writes.
"""

from __future__ import annotations

from typing import ClassVar

from pydantic import Field

from drex_store.location import StateLocation


class ServerSettings(StateLocation):
    """Settings of one ``drex serve`` process (a field's docstring: its variable)."""

    # a flag would show the key to every user of the machine (ps, /proc/*/cmdline)
    ENV_ONLY: ClassVar[frozenset[str]] = frozenset({"api_key"})

    host: str = "127.0.0.1"
    """DREX_HOST: address the HTTP server binds."""
    port: int = Field(8000, ge=0, le=65535)
    """DREX_PORT: port of the HTTP API and its /metrics."""
    refresh_interval: float = Field(0.5, gt=0)
    """DREX_REFRESH_INTERVAL: seconds between catch-ups with the learner's store."""
    candidates: int = Field(100, ge=1)
    """DREX_CANDIDATES: FAISS candidates per recommendation (plus the items the user has
    seen)."""
    exposure_weight: float | None = None
    """DREX_EXPOSURE_WEIGHT: weight of log(1 + item ratings) in the ranking; unset: the
    model config's."""
    secondary_dir: str = ""
    """DREX_SECONDARY_DIR: this server's RocksDB secondary folder; empty = a temporary
    one."""
    reuse_port: bool = False
    """DREX_REUSE_PORT: share the port with other drex serve processes (SO_REUSEPORT; the
    kernel spreads connections): run one per core."""
    api_key: str = Field("", repr=False)
    """DREX_API_KEY: when set, every endpoint but /healthz, /readyz, /metrics and
    /openapi.json requires it, as ``Authorization: Bearer <key>`` or ``X-API-Key: <key>``
    (401 otherwise); empty: no key. No flag, kept out of repr."""
    client_timeout: float = Field(15.0, gt=0)
    """DREX_CLIENT_TIMEOUT: seconds a client has to send a request's headers (from
    connecting, or from its previous response) and again its body; a slower or idle
    connection is closed (a body too slow gets 408 first)."""
    log_level: str = "info"
    """DREX_LOG_LEVEL: log level."""
    feedback: bool = False
    """DREX_FEEDBACK: accept POST /feedback and publish its reviews and ratings to the
    topics of DREX_BROKER (with the worker's TLS/SASL settings); off: no such route."""
