"""WorkerSettings: defaults, environment variables, flags over both, refusals."""

from __future__ import annotations

from pathlib import Path

import pytest

from streams.settings import WorkerSettings


def test_environment_then_overrides() -> None:
    env = {
        "DREX_PARTITIONS": "8",
        "DREX_JOIN_WINDOW": "2.5",
        "DREX_EMBEDDED": "yes",
        "DREX_BROKER": "kafka://k:9",
    }
    s = WorkerSettings.from_env(env, partitions=2, broker=None)
    assert (s.partitions, s.join_window, s.embedded, s.broker) == (2, 2.5, True, "kafka://k:9")
    assert s.learner_path == s.state_path / "learner"
    assert WorkerSettings.from_env({}) == WorkerSettings()


@pytest.mark.parametrize(
    ("env", "match"),
    [
        ({"DREX_PARTITIONS": "four"}, "DREX_PARTITIONS"),
        ({"DREX_EMBEDDED": "maybe"}, "DREX_EMBEDDED"),
        ({"DREX_VARIANT": "drex-mlp"}, "catalogue"),
        ({"DREX_ROLE": "boss"}, "role"),
        ({"DREX_PRODUCER_LINGER": "-1"}, "producer_linger"),
        ({"DREX_ENCODE_WINDOW": "0"}, "encode_window"),
    ],
)
def test_bad_values_are_refused_with_the_variable_named(env: dict[str, str], match: str) -> None:
    with pytest.raises(ValueError, match=match):
        WorkerSettings.from_env(env)


def test_the_password_never_reaches_saved_configs() -> None:
    s = WorkerSettings(sasl_plain_password="hunter2")
    assert "hunter2" not in repr(s)
    assert s.to_dict()["sasl_plain_password"] == "***"


def test_the_producer_linger_reaches_the_faust_producer(tmp_path: Path) -> None:
    from streams.app import create_app

    settings = WorkerSettings(state_dir=str(tmp_path), role="join", producer_linger=0.02)
    app = create_app(settings).app
    assert app.conf.producer_linger == 0.02
    assert app.producer.linger_ms == 20
