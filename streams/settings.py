"""Every runtime setting of the streaming worker, in one frozen object.

Each field has a default and a docstring naming the environment variable it is read
from (:meth:`WorkerSettings.from_env`, pydantic-settings); ``drex worker`` has a flag per
field (``--batch-size`` for ``DREX_BATCH_SIZE``), and a flag beats its variable. The
resolved settings are written next to every checkpoint (``config.json``), so a reader of
a checkpoint knows exactly what produced it. Importing this module imports no torch.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any, ClassVar, Literal, Self

from pydantic import Field, field_validator, model_validator
from pydantic_settings import NoDecode

from drex_store.location import StateLocation

DREX_MLP_REFUSAL = (
    "drex-mlp builds initial states from a fixed catalogue's preference vectors, which "
    "a stream does not have; use drex or drex-paper"
)


class WorkerSettings(StateLocation):
    """Settings of one ``drex worker`` process (a field's docstring: its variable).

    ``state_dir`` and ``learner_dir`` (``DREX_STATE_DIR``, ``DREX_LEARNER_DIR``) come
    from :class:`drex_store.location.StateLocation`, as ``drex serve``'s do.
    """

    ENV_ONLY: ClassVar[frozenset[str]] = frozenset({"sasl_plain_password"})

    broker: str = "kafka://127.0.0.1:9092"
    """DREX_BROKER: faust broker URL(s), ``kafka://HOST:PORT`` (";"-separated for several)."""
    app_id: str = "drex"
    """DREX_APP_ID: faust app id = consumer group and prefix of the internal topics."""
    partitions: int = Field(4, ge=1)
    """DREX_PARTITIONS: partitions of reviews, ratings and join-ticks (the join scales to N)."""
    batch_size: int = Field(1024, ge=1)
    """DREX_BATCH_SIZE: most interactions per learner micro-batch: one learn_many call
    and one atomic store write (a micro-batch holds what a take brought, at most this
    many). It is a unit of persistence, not of learning: the optimiser steps every
    ``step_size`` rated interactions whatever the micro-batch. Larger ones write each
    changed row and the dense state once for more interactions: with 1024 a learn
    worker spends ~20% less CPU per rating-only interaction than with 256
    (docs/results.md). A crash redoes at most the micro-batch in progress."""
    batch_within: float = Field(1.0, gt=0)
    """DREX_BATCH_WITHIN: seconds a partial micro-batch waits before it is learned anyway."""
    encode_window: int = Field(1024, ge=1)
    """DREX_ENCODE_WINDOW: interactions the learner takes at once when a backlog is there
    (at least batch_size). Their reviews are encoded in one pass sorted by length (fewer
    padded tokens), then learned and persisted micro-batch by micro-batch. A take's first
    results wait for its whole encoding, and a rebalance waits for the take in progress:
    on a 2-core CPU 1024 reviews take ~30 s (faust's rebalance timeout is 60 s), so keep
    window / encoder rate well under that (docs/results.md)."""
    join_batch_size: int = Field(1000, ge=1)
    """DREX_JOIN_BATCH_SIZE: source messages the join handles as one step (one broker
    round trip for its interactions, one table write per touched row)."""
    join_window: float = Field(30.0, gt=0)
    """DREX_JOIN_WINDOW: seconds a review waits for its rating (and the reverse)."""
    producer_linger: float = Field(0.005, ge=0)
    """DREX_PRODUCER_LINGER: seconds the worker's producer gathers messages (interactions,
    changelog records) into one request per partition. 0 (faust's default) sends each in
    a request of its own: a rating stream ran ~25% slower so (docs/results.md)."""
    dedup_retention: float = 3600.0
    """DREX_DEDUP_RETENTION: seconds an emitted interaction's event ids are kept to drop
    resends (join tombstones) and its id to drop re-emissions (learner store)."""
    device: str = "auto"
    """DREX_DEVICE: torch device of the encoder and the learner: auto, cpu, cuda or cuda:N."""
    variant: Literal["drex", "drex-paper"] = "drex"
    """DREX_VARIANT: DReX variant (drex-mlp needs a fixed catalogue, which a stream has not)."""
    model_overrides: Annotated[tuple[str, ...], NoDecode] = Field((), validation_alias="DREX_SET")
    """DREX_SET: DReXConfig fields for the learner as KEY=VALUE, a comma-separated list in
    the variable, one ``--set`` per pair (``drex evaluate --help`` lists the keys; the
    variant is DREX_VARIANT's). Each value is parsed as its field's type when
    the worker starts (``use_text=no`` is False, ``use_text=nope`` is refused); a
    join-only worker has no learner and does not read them (nor import torch)."""
    encoder: str = ""
    """DREX_ENCODER: local Hugging Face encoder directory; empty = the bundled MiniLM."""
    encoder_max_tokens: int = Field(128, ge=1)
    """DREX_ENCODER_MAX_TOKENS: word-piece tokens kept per review."""
    review_cache_mb: float = Field(256.0, gt=0)
    """DREX_REVIEW_CACHE_MB: memory for encoded reviews (~60 KB each with MiniLM). Every
    user and item keeps its last review until its next interaction, so without a bound
    they grow with the catalogue; past it, the oldest go back to the learner store and
    are read from it when needed."""
    seed: int = 0
    """DREX_SEED: seed of the learner's initial parameters."""
    checkpoint_every: int = Field(500, ge=0)
    """DREX_CHECKPOINT_EVERY: micro-batches between versioned checkpoint folders (0 = never)."""
    checkpoint_interval: float = Field(600.0, ge=0)
    """DREX_CHECKPOINT_INTERVAL: seconds after which the next micro-batch writes a
    checkpoint even if ``checkpoint_every`` batches have not passed (0 = by count only): at a
    low batch rate a count alone may never come (the ``DrexCheckpointStale`` alert fires at
    twice this default)."""
    checkpoints_kept: int = Field(3, ge=1)
    """DREX_CHECKPOINTS_KEPT: how many checkpoint folders to keep."""
    index_save_every: float = Field(60.0, ge=0)
    """DREX_INDEX_SAVE_EVERY: seconds between publications of the item FAISS index in the
    learner store, for servers (also at take-over and release; 0: after every batch)."""
    role: Literal["all", "join", "learn"] = "all"
    """DREX_ROLE: agents to run: all (join and learn), join (no learner: no torch import)
    or learn."""
    embedded: bool = False
    """DREX_EMBEDDED: the broker is the embedded Tansu: apply streams.compat."""
    session_timeout: float = Field(0.0, ge=0)
    """DREX_SESSION_TIMEOUT: consumer group session timeout in seconds (0 = faust's
    default, or 10 s on the embedded broker where a join takes half of it)."""
    fsync: bool = False
    """DREX_FSYNC: fsync the learner store's write-ahead log on every batch. Off, a
    process crash loses nothing; a machine crash may lose the last batches (state.py)."""
    torch_threads: int = Field(0, ge=0)
    """DREX_TORCH_THREADS: torch intra-op threads while encoding reviews (0 = torch's
    default, one per physical core)."""
    learn_threads: int = Field(1, ge=0)
    """DREX_LEARN_THREADS: torch intra-op threads while learning (0 = as when encoding).
    One by default: a micro-batch's t-batches are small, so a second thread adds no speed
    and, when the event loop or another process holds a core, stalls every parallel
    region (docs/results.md: the learner 4-7x slower under such load)."""
    metrics_port: int = Field(9101, ge=-1, le=65535)
    """DREX_METRICS_PORT: Prometheus metrics port (0 = pick a free one, -1 = no server)."""
    metrics_host: str = "127.0.0.1"
    """DREX_METRICS_HOST: address the metrics server binds."""
    log_level: str = "info"
    """DREX_LOG_LEVEL: faust/worker log level."""
    shutdown_grace: float = Field(30.0, gt=0)
    """DREX_SHUTDOWN_GRACE: seconds a stop (SIGTERM, Ctrl-C) may take before the worker
    exits anyway, with status 75 and an ERROR line saying what had not stopped (faust
    waits for a broker that is gone without end). What the learner committed is kept;
    what it had read and not committed is read again at the next start."""
    log_repeat_interval: float = Field(30.0, ge=0)
    """DREX_LOG_REPEAT_INTERVAL: seconds between two log lines of the same faust/aiokafka
    warning or error (the first passes at once, the next says how many it stands for);
    a broker away logged ~13 KB/s without it. 0 = every line."""
    security_protocol: str = ""
    """DREX_SECURITY_PROTOCOL: aiokafka security protocol (PLAINTEXT, SSL, SASL_PLAINTEXT,
    SASL_SSL); empty = PLAINTEXT."""
    sasl_mechanism: str = ""
    """DREX_SASL_MECHANISM: PLAIN, SCRAM-SHA-256 or SCRAM-SHA-512."""
    sasl_plain_username: str = ""
    """DREX_SASL_PLAIN_USERNAME: SASL user name."""
    sasl_plain_password: str = Field("", repr=False)
    """DREX_SASL_PLAIN_PASSWORD: SASL password; no flag, kept out of repr and of saved
    configs."""
    ssl_cafile: str = ""
    """DREX_SSL_CAFILE: CA bundle to verify the brokers' certificates."""

    @field_validator("device")
    @classmethod
    def _known_device(cls, device: str) -> str:
        if device in ("auto", "cpu", "cuda") or (
            device.startswith("cuda:") and device[5:].isdigit()
        ):
            return device
        raise ValueError("device must be auto, cpu, cuda or cuda:N")

    @field_validator("variant", mode="before")
    @classmethod
    def _streamable_variant(cls, variant: Any) -> Any:
        if variant == "drex-mlp":
            raise ValueError(DREX_MLP_REFUSAL)
        return variant

    @field_validator("model_overrides", mode="before")
    @classmethod
    def _pairs(cls, pairs: Any) -> Any:
        if isinstance(pairs, str):  # DREX_SET: comma-separated
            pairs = pairs.split(",")
        if isinstance(pairs, list | tuple):
            return tuple(p.strip() for p in pairs if isinstance(p, str) and p.strip())
        return pairs

    @model_validator(mode="after")
    def _typed_pairs(self) -> Self:
        # after every field: a join-only worker has no learner, so no pairs to check
        if self.model_overrides and self.runs_learner:
            try:
                self.model_overrides_dict()
            except ValueError as err:
                where = f"{self.variable('model_overrides')} / {self.flag('model_overrides')}"
                raise ValueError(f"model_overrides ({where}): {err}") from None
        return self

    @model_validator(mode="after")
    def _consistent_security(self) -> Self:
        # a contradiction (a CA file with PLAINTEXT, SASL without a password) is refused
        # at start, by name, as drex produce and drex replay refuse it
        self.aiokafka_options()
        return self

    def model_overrides_dict(self) -> dict[str, Any]:
        """``model_overrides`` as typed DReXConfig overrides (for ``for_variant``).

        Imports torch (``drex_model.model``) only when there are any.
        """
        if not self.model_overrides:
            return {}
        from drex_model.model import parse_overrides

        return parse_overrides(self.model_overrides)

    def with_(self, **changes: Any) -> WorkerSettings:
        """A copy with ``changes``, validated (``model_copy(update=...)`` is not)."""
        return type(self)(**{**self.model_dump(), **changes})

    # --- derived ------------------------------------------------------------------------
    # state_path and learner_path: StateLocation

    @property
    def faust_datadir(self) -> Path:
        return self.state_path / "faust"

    @property
    def checkpoint_path(self) -> Path:
        return self.state_path / "checkpoints"

    @property
    def runs_learner(self) -> bool:
        return self.role in ("all", "learn")

    @property
    def runs_join(self) -> bool:
        return self.role in ("all", "join")

    def broker_credentials(self) -> dict[str, Any]:
        """faust App settings for TLS/SASL (streams/kafka_client.py, the same rule as
        ``drex produce`` and ``drex replay``)."""
        from streams.kafka_client import faust_credentials

        return faust_credentials(self)

    def aiokafka_options(self) -> dict[str, Any]:
        """The same credentials as aiokafka client keyword arguments (admin, producers)."""
        from streams.kafka_client import aiokafka_options

        return aiokafka_options(self)

    def to_dict(self) -> dict[str, Any]:
        """For config.json next to checkpoints (JSON types); the password is never written."""
        out = self.model_dump(mode="json")
        out["sasl_plain_password"] = "***" if self.sasl_plain_password else ""
        return out
