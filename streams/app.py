"""The faust app of a drex worker: settings in, topics, tables and agents wired.

Wiring only. The data flow, one module each, in order:

    reviews, ratings --agents/join--> interactions --agents/learn--> learner store,
        (N partitions, by user)          (1 partition)       user-/item-embeddings tables
                                                              --agents/index--> FAISS

Topics are created before the app starts (:func:`ensure_topics`): faust only declares
its own internal topics, and a broker that auto-creates a topic on first use gives it
its default partition count (Tansu: 4), which the co-partitioned join cannot work with.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from streams.agents import join as join_agent
from streams.agents import learn as learn_agent
from streams.agents.index import IndexFeeder
from streams.events import DEAD_LETTERS_TOPIC, INTERACTIONS_TOPIC, RATINGS_TOPIC, REVIEWS_TOPIC
from streams.join_state import changelog_topic
from streams.settings import WorkerSettings


@dataclass
class DrexApp:
    """The faust app and what its agents hold (for the worker, tests and tools)."""

    app: Any
    settings: WorkerSettings
    join: join_agent.JoinWiring | None
    learn: learn_agent.LearnWiring | None
    feeder: IndexFeeder


def topic_partitions(settings: WorkerSettings) -> dict[str, int]:
    """Every source and output topic and its partition count."""
    n = settings.partitions
    return {
        REVIEWS_TOPIC: n,
        RATINGS_TOPIC: n,
        join_agent.TICKS_TOPIC: n,  # co-partitioned with the sources (see join.py)
        INTERACTIONS_TOPIC: 1,  # one learner (see learn.py)
        DEAD_LETTERS_TOPIC: n,
        # the join's changelog: partition p holds source partition p's steps (never compact)
        changelog_topic(settings.app_id): n,
    }


def ensure_topics(settings: WorkerSettings) -> set[str]:
    """Create the missing topics (existing ones are left alone); returns those created."""
    from streams.producer import bootstrap_servers

    servers = ",".join(bootstrap_servers(settings.broker))
    options = settings.aiokafka_options()
    if not options:
        from streams.broker import create_topics

        return create_topics(servers, topic_partitions(settings))
    from streams.broker import run_sync

    return run_sync(lambda: _create_with_credentials(servers, topic_partitions(settings), options))


async def _create_with_credentials(
    servers: str, topics: dict[str, int], options: dict[str, Any]
) -> set[str]:
    from aiokafka.admin import AIOKafkaAdminClient, NewTopic

    admin = AIOKafkaAdminClient(bootstrap_servers=servers, client_id="drex-admin", **options)
    await admin.start()
    try:
        existing = set(await admin.list_topics())
        missing = {name: n for name, n in topics.items() if name not in existing}
        if missing:
            await admin.create_topics([NewTopic(name, n, 1) for name, n in missing.items()])
        return set(missing)
    finally:
        await admin.close()


def _register_lag(app: Any, settings: WorkerSettings) -> None:
    """``drex_consumer_lag_messages{topic, partition}``: the group's committed lag on the
    partitions this worker is assigned, every few seconds (streams/lag.py). faust's own
    topics, named after the app id (table changelogs, the assignor's leader topic), are
    left out: the group commits nothing there."""
    from streams import lag
    from streams.producer import bootstrap_servers

    group = str(app.conf.id)  # faust's consumer group and the prefix of its own topics
    reader = lag.LagReader(
        ",".join(bootstrap_servers(settings.broker)),
        group,
        settings.aiokafka_options(),
    )
    internal = f"{group}-"

    async def read_lag() -> None:
        assigned = app.consumer.assignment()
        await reader.update([tp for tp in assigned if not tp.topic.startswith(internal)])

    app.timer(lag.INTERVAL, name="drex.consumer-lag")(read_lag)

    async def close_lag(sender: Any, /, *args: Any, signal: Any, **kwargs: Any) -> None:
        await reader.close()

    app.on_before_shutdown.connect(close_lag)


def create_app(settings: WorkerSettings) -> DrexApp:
    """A faust App with the agents of ``settings.role``; the Tansu shim when embedded; the
    recovery fix (streams/recovery.py) always."""
    import faust

    from streams import backpressure, metrics
    from streams.compat import TANSU_SETTINGS, apply_tansu_compat
    from streams.recovery import TableManager, install

    metrics.expose()  # a worker's /metrics carries its metrics (importing them does not)

    conf: dict[str, Any] = {
        "broker": settings.broker,
        "store": "rocksdb://",
        "datadir": str(settings.faust_datadir),
        "web_enabled": False,
        "topic_partitions": settings.partitions,
        "producer_linger": settings.producer_linger,
        "TableManager": TableManager,  # faust's, without its end-of-recovery record loss
        **settings.broker_credentials(),
    }
    if settings.embedded:
        conf.update(TANSU_SETTINGS)
    if settings.session_timeout > 0:
        conf["broker_session_timeout"] = settings.session_timeout
        conf["broker_heartbeat_interval"] = min(1.0, settings.session_timeout / 4)
    app = faust.App(settings.app_id, **conf)
    install(app)  # the consumer side of the recovery fix
    if settings.embedded:
        apply_tansu_compat(app)  # its consumer builds on the fixed one
    _register_lag(app, settings)
    backpressure.install(settings.log_repeat_interval)  # faust's "producer buffer full" flood
    backpressure.bind_buffer_gauge(app)
    feeder = IndexFeeder(settings.index_save_every)
    join = join_agent.register(app, settings) if settings.runs_join else None
    learn = None
    if settings.runs_learner:
        learn = learn_agent.register(app, settings, feeder)
    return DrexApp(app, settings, join, learn, feeder)
