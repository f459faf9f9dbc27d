"""Every runtime setting of the streaming worker, in one frozen object.

Each field has a default and is read from the environment variable its comment names
(:meth:`WorkerSettings.from_env`); ``drex worker`` flags override the environment. The
resolved settings are written next to every checkpoint (``config.json``), so a reader of
a checkpoint knows exactly what produced it.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field, fields, replace
from pathlib import Path
from typing import Any

_TRUE = {"1", "true", "yes", "on"}
_FALSE = {"0", "false", "no", "off", ""}


@dataclass(frozen=True)
class WorkerSettings:
    """Settings of one ``drex worker`` process (field comment: its environment variable)."""

    # DREX_BROKER: faust broker URL(s), ``kafka://HOST:PORT`` (";"-separated for several)
    broker: str = "kafka://127.0.0.1:9092"
    # DREX_STATE_DIR: local state: faust tables, the learner store, checkpoints, the index
    state_dir: str = "./state"
    # DREX_LEARNER_DIR: the learner's RocksDB store; default STATE_DIR/learner. Workers that
    # may take the learner over from each other must share it (see streams/agents/learn.py)
    learner_dir: str = ""
    # DREX_APP_ID: faust app id = consumer group and prefix of the internal topics
    app_id: str = "drex"
    # DREX_PARTITIONS: partitions of reviews, ratings and join-ticks (the join scales to N)
    partitions: int = 4
    # DREX_BATCH_SIZE: interactions per learner micro-batch
    batch_size: int = 256
    # DREX_BATCH_WITHIN: seconds a partial micro-batch waits before it is learned anyway
    batch_within: float = 1.0
    # DREX_ENCODE_WINDOW: interactions the learner takes at once when a backlog is there
    # (at least batch_size); their reviews are encoded in one pass sorted by length
    # (fewer padded tokens), then learned and persisted micro-batch by micro-batch. A
    # take's first results wait for its whole encoding, and a rebalance waits for the
    # take in progress: on a 2-core CPU 1024 reviews take ~30 s (faust's rebalance
    # timeout is 60 s), so keep window / encoder rate well under that (docs/results.md)
    encode_window: int = 1024
    # DREX_JOIN_BATCH_SIZE: source messages the join handles as one step (one broker
    # round trip for its interactions, one table write per touched row)
    join_batch_size: int = 1000
    # DREX_JOIN_WINDOW: seconds a review waits for its rating (and the reverse)
    join_window: float = 30.0
    # DREX_PRODUCER_LINGER: seconds the worker's producer gathers messages (interactions,
    # changelog records) into one request per partition; 0 (faust's default) sends each
    # in a request of its own: a rating stream ran ~25% slower so (docs/results.md)
    producer_linger: float = 0.005
    # DREX_DEDUP_RETENTION: seconds an emitted interaction's event ids are kept to drop
    # resends (join tombstones) and its id to drop re-emissions (learner store)
    dedup_retention: float = 3600.0
    # DREX_DEVICE: torch device of the encoder and the learner: auto, cpu or cuda
    device: str = "auto"
    # DREX_VARIANT: DReX variant (drex or drex-paper; drex-mlp needs a fixed catalogue)
    variant: str = "drex"
    # DREX_ENCODER: local Hugging Face encoder directory; empty = the bundled MiniLM
    encoder: str = ""
    # DREX_ENCODER_MAX_TOKENS: word-piece tokens kept per review
    encoder_max_tokens: int = 128
    # DREX_SEED: seed of the learner's initial parameters
    seed: int = 0
    # DREX_CHECKPOINT_EVERY: micro-batches between versioned checkpoint files (0 = never)
    checkpoint_every: int = 500
    # DREX_CHECKPOINTS_KEPT: how many checkpoint folders to keep
    checkpoints_kept: int = 3
    # DREX_INDEX_SAVE_EVERY: seconds between saves of the FAISS item index (0 = never)
    index_save_every: float = 60.0
    # DREX_ROLE: "all" (join and learn), "join" (no learner: no torch import) or "learn"
    role: str = "all"
    # DREX_EMBEDDED: the broker is the embedded Tansu: apply streams.compat
    embedded: bool = False
    # DREX_SESSION_TIMEOUT: consumer group session timeout in seconds (0 = faust's
    # default, or 10 s on the embedded broker where a join takes half of it)
    session_timeout: float = 0.0
    # DREX_FSYNC: fsync the learner store's write-ahead log on every batch. Off, a process
    # crash loses nothing; a machine crash may lose the last batches (see state.py)
    fsync: bool = False
    # DREX_TORCH_THREADS: torch intra-op threads (0 = torch's default)
    torch_threads: int = 0
    # DREX_METRICS_PORT: Prometheus metrics port (0 = pick a free one, -1 = no server)
    metrics_port: int = 9101
    # DREX_METRICS_HOST: address the metrics server binds
    metrics_host: str = "127.0.0.1"
    # DREX_LOG_LEVEL: faust/worker log level
    log_level: str = "info"
    # DREX_SECURITY_PROTOCOL: aiokafka security protocol (PLAINTEXT, SSL, SASL_PLAINTEXT,
    # SASL_SSL); empty = PLAINTEXT
    security_protocol: str = ""
    # DREX_SASL_MECHANISM: PLAIN, SCRAM-SHA-256 or SCRAM-SHA-512
    sasl_mechanism: str = ""
    # DREX_SASL_PLAIN_USERNAME
    sasl_plain_username: str = ""
    # DREX_SASL_PLAIN_PASSWORD (kept out of repr and of saved configs)
    sasl_plain_password: str = field(default="", repr=False)
    # DREX_SSL_CAFILE: CA bundle to verify the brokers' certificates
    ssl_cafile: str = ""

    def __post_init__(self) -> None:
        if self.partitions < 1:
            raise ValueError(f"partitions must be >= 1, got {self.partitions}")
        if min(self.batch_size, self.join_batch_size, self.encode_window) < 1:
            raise ValueError(
                f"batch_size, join_batch_size and encode_window must be >= 1, got "
                f"{self.batch_size}, {self.join_batch_size} and {self.encode_window}"
            )
        if self.batch_within <= 0 or self.join_window <= 0:
            raise ValueError("batch_within and join_window must be > 0 seconds")
        if self.producer_linger < 0:
            raise ValueError(f"producer_linger must be >= 0 seconds, got {self.producer_linger}")
        if self.role not in ("all", "join", "learn"):
            raise ValueError(f"role must be all, join or learn, got {self.role!r}")
        if self.device not in ("auto", "cpu", "cuda") and not self.device.startswith("cuda:"):
            raise ValueError(f"device must be auto, cpu or cuda, got {self.device!r}")
        if self.variant == "drex-mlp":
            raise ValueError(
                "drex-mlp builds initial states from a fixed catalogue's preference "
                "vectors, which a stream does not have; use drex or drex-paper"
            )

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None, **overrides: Any) -> WorkerSettings:
        """Defaults, then ``DREX_<FIELD>`` variables, then ``overrides`` (None is ignored)."""
        env = os.environ if env is None else env
        values: dict[str, Any] = {}
        for f in fields(cls):
            raw = env.get(f"DREX_{f.name.upper()}")
            if raw is not None:
                values[f.name] = _parse(f.name, raw, type(f.default))
        values.update({k: v for k, v in overrides.items() if v is not None})
        return cls(**values)

    def with_(self, **changes: Any) -> WorkerSettings:
        return replace(self, **changes)

    # --- derived ------------------------------------------------------------------------

    @property
    def state_path(self) -> Path:
        return Path(self.state_dir)

    @property
    def learner_path(self) -> Path:
        return Path(self.learner_dir) if self.learner_dir else self.state_path / "learner"

    @property
    def faust_datadir(self) -> Path:
        return self.state_path / "faust"

    @property
    def checkpoint_path(self) -> Path:
        return self.state_path / "checkpoints"

    @property
    def index_path(self) -> Path:
        return self.state_path / "index"

    @property
    def runs_learner(self) -> bool:
        return self.role in ("all", "learn")

    @property
    def runs_join(self) -> bool:
        return self.role in ("all", "join")

    def broker_credentials(self) -> dict[str, Any]:
        """faust App settings for TLS/SASL, only those that are set."""
        out: dict[str, Any] = {}
        if self.ssl_cafile:
            import ssl

            out["broker_credentials"] = ssl.create_default_context(cafile=self.ssl_cafile)
        if self.sasl_mechanism:
            import faust

            out["broker_credentials"] = faust.SASLCredentials(
                username=self.sasl_plain_username,
                password=self.sasl_plain_password,
                mechanism=self.sasl_mechanism,
                ssl_context=out.get("broker_credentials"),
            )
        return out

    def aiokafka_options(self) -> dict[str, Any]:
        """The same credentials as aiokafka client keyword arguments (admin, producers)."""
        out: dict[str, Any] = {}
        if self.security_protocol:
            out["security_protocol"] = self.security_protocol
        if self.sasl_mechanism:
            out["sasl_mechanism"] = self.sasl_mechanism
            out["sasl_plain_username"] = self.sasl_plain_username
            out["sasl_plain_password"] = self.sasl_plain_password
        if self.ssl_cafile:
            import ssl

            out["ssl_context"] = ssl.create_default_context(cafile=self.ssl_cafile)
        return out

    def to_dict(self) -> dict[str, Any]:
        """For config.json next to checkpoints; the password is never written."""
        out = asdict(self)
        out["sasl_plain_password"] = "***" if self.sasl_plain_password else ""
        return out


def _parse(name: str, raw: str, kind: type) -> Any:
    try:
        if kind is bool:
            low = raw.strip().lower()
            if low in _TRUE:
                return True
            if low in _FALSE:
                return False
            raise ValueError(raw)
        if kind is int:
            return int(raw)
        if kind is float:
            return float(raw)
    except ValueError:
        raise ValueError(f"DREX_{name.upper()}={raw!r} is not a valid {kind.__name__}") from None
    return raw
