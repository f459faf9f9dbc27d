"""WorkerSettings and ServerSettings: defaults, environment variables, flags over both,
refusals, and the learner store's folder both agree on."""

from __future__ import annotations

import argparse
import json
import re
import subprocess
import sys
from pathlib import Path

import pytest

from drex_store.location import StateLocation
from serving import cli as serving_cli
from serving.settings import ServerSettings
from streams import worker
from streams.settings import WorkerSettings


def worker_flags(*argv: str) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    worker.add_arguments(parser)
    return parser.parse_args(argv)


def server_flags(*argv: str) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    serving_cli.add_arguments(parser)
    return parser.parse_args(argv)


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


def test_a_flag_beats_the_environment_which_beats_the_default() -> None:
    env = {"DREX_BATCH_SIZE": "64", "DREX_JOIN_WINDOW": "7", "DREX_EMBEDDED": "1"}
    s = worker.settings_from_args(worker_flags("--batch-size", "32", "--no-embedded"), env)
    assert s.batch_size == 32  # flag over variable
    assert s.embedded is False  # a boolean flag can say no to its variable
    assert s.join_window == 7.0  # variable over default
    assert s.partitions == WorkerSettings().partitions == 4  # default

    env = {"DREX_PORT": "9000", "DREX_HOST": "0.0.0.0", "DREX_STATE_DIR": "/env-state"}
    s2 = serving_cli.settings_from_args(server_flags("--port", "8081"), env)
    assert (s2.port, s2.host, s2.state_dir) == (8081, "0.0.0.0", "/env-state")
    assert s2.refresh_interval == 0.5


def test_constructing_settings_reads_no_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DREX_PARTITIONS", "9")
    monkeypatch.setenv("DREX_PORT", "1")
    assert WorkerSettings().partitions == 4
    assert ServerSettings().port == 8000
    assert WorkerSettings.from_env().partitions == 9  # os.environ by default
    assert ServerSettings.from_env().port == 1


@pytest.mark.parametrize(
    ("env", "match"),
    [
        ({"DREX_PARTITIONS": "four"}, "DREX_PARTITIONS"),
        ({"DREX_EMBEDDED": "maybe"}, "DREX_EMBEDDED"),
        ({"DREX_VARIANT": "drex-mlp"}, "catalogue"),
        ({"DREX_ROLE": "boss"}, "DREX_ROLE"),
        ({"DREX_PRODUCER_LINGER": "-1"}, "DREX_PRODUCER_LINGER"),
        ({"DREX_ENCODE_WINDOW": "0"}, "DREX_ENCODE_WINDOW"),
        ({"DREX_DEVICE": "tpu"}, "cuda:N"),
        ({"DREX_SET": "use_text=nope"}, r"DREX_SET.*use_text='nope'.*valid boolean"),
        ({"DREX_SET": "no_such_field=1"}, "no_such_field"),
        ({"DREX_SET": "use_text"}, "KEY=VALUE"),
    ],
)
def test_bad_values_are_refused_with_the_variable_named(env: dict[str, str], match: str) -> None:
    with pytest.raises(ValueError, match=match):
        WorkerSettings.from_env(env)


def test_model_settings_are_typed_from_the_variable_and_the_flags() -> None:
    s = WorkerSettings.from_env({"DREX_SET": "use_text=no, lr=0.01,"})
    assert s.model_overrides == ("use_text=no", "lr=0.01")
    assert s.model_overrides_dict() == {"use_text": False, "lr": 0.01}
    assert WorkerSettings().model_overrides_dict() == {}

    args = worker_flags("--set", "use_text=no", "--set", "dim=16")
    s = worker.settings_from_args(args, {"DREX_SET": "lr=0.5"})
    assert s.model_overrides_dict() == {"use_text": False, "dim": 16}  # flags replace DREX_SET
    assert s.to_dict()["model_overrides"] == ["use_text=no", "dim=16"]


def test_a_bad_set_flag_stops_the_worker_before_it_starts(
    capsys: pytest.CaptureFixture[str],
) -> None:
    assert worker.main(["--set", "use_text=nope"]) == 2
    err = capsys.readouterr().err
    assert "use_text='nope'" in err and "--set" in err


def test_a_join_only_worker_neither_checks_model_settings_nor_imports_torch() -> None:
    code = (
        "import sys\n"
        "import serving.settings, streams.settings, streams.worker\n"
        "from streams.settings import WorkerSettings\n"
        "s = WorkerSettings.from_env({'DREX_SET': 'use_text=nope', 'DREX_ROLE': 'join'})\n"
        "assert s.model_overrides == ('use_text=nope',)\n"
        "assert 'torch' not in sys.modules, 'torch was imported'\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True, cwd=Path(__file__).parents[2])


@pytest.mark.parametrize(
    ("env", "expected"),
    [
        ({}, Path("state/learner")),
        ({"DREX_STATE_DIR": "/data/drex"}, Path("/data/drex/learner")),
        ({"DREX_STATE_DIR": "/data/drex", "DREX_LEARNER_DIR": "/shared/l"}, Path("/shared/l")),
        ({"DREX_LEARNER_DIR": "/shared/l"}, Path("/shared/l")),
        ({"DREX_STATE_DIR": "/data/drex", "DREX_LEARNER_DIR": ""}, Path("/data/drex/learner")),
    ],
)
def test_the_server_and_the_worker_agree_on_the_learner_store(
    env: dict[str, str], expected: Path
) -> None:
    w = WorkerSettings.from_env(env)
    s = ServerSettings.from_env(env)
    assert w.learner_path == s.learner_path == expected
    assert isinstance(w, StateLocation) and isinstance(s, StateLocation)


def test_every_setting_names_its_variable_and_has_a_flag() -> None:
    for cls, add in (
        (WorkerSettings, worker.add_arguments),
        (ServerSettings, serving_cli.add_arguments),
    ):
        parser = argparse.ArgumentParser()
        add(parser)
        text = parser.format_help()
        for name, field in cls.model_fields.items():
            variable = cls.variable(name)
            assert (field.description or "").startswith(f"{variable}:"), name
            if name in cls.ENV_ONLY:
                assert cls.flag(name) not in text
            else:
                assert cls.flag(name) in text and variable in text, name
    assert WorkerSettings.flag("model_overrides") == "--set"
    assert WorkerSettings.variable("model_overrides") == "DREX_SET"


def test_the_password_never_reaches_saved_configs_or_flags() -> None:
    sasl = {"sasl_mechanism": "PLAIN", "sasl_plain_username": "u"}
    s = WorkerSettings(**sasl, sasl_plain_password="hunter2")
    assert "hunter2" not in repr(s)
    assert s.to_dict()["sasl_plain_password"] == "***"
    env = {"DREX_SASL_MECHANISM": "PLAIN", "DREX_SASL_PLAIN_USERNAME": "u"}
    from_env = WorkerSettings.from_env({**env, "DREX_SASL_PLAIN_PASSWORD": "pw"})
    assert from_env.sasl_plain_password == "pw"
    with pytest.raises(SystemExit):
        worker_flags("--sasl-plain-password", "pw")
    json.dumps(WorkerSettings().to_dict())  # config.json takes it as it is


def test_settings_are_frozen_and_copies_are_checked() -> None:
    s = WorkerSettings()
    with pytest.raises(ValueError, match="frozen"):
        s.partitions = 2  # type: ignore[misc]
    assert s.with_(partitions=2).partitions == 2
    assert s.model_copy(update={"partitions": 3}).partitions == 3
    with pytest.raises(ValueError, match="partitions"):
        s.with_(partitions=0)


def test_a_bad_server_setting_is_refused_with_its_variable_named(
    capsys: pytest.CaptureFixture[str],
) -> None:
    with pytest.raises(ValueError, match="DREX_CANDIDATES"):
        serving_cli.settings_from_args(server_flags(), {"DREX_CANDIDATES": "0"})
    assert serving_cli.cmd_serve(server_flags("--candidates", "0")) == 2  # a usage error
    assert re.match(r"drex serve: .*--candidates", capsys.readouterr().err)
    s = serving_cli.settings_from_args(server_flags(), {"DREX_EXPOSURE_WEIGHT": "0.25"})
    assert s.exposure_weight == 0.25
    assert ServerSettings().exposure_weight is None


def test_the_producer_linger_reaches_the_faust_producer(tmp_path: Path) -> None:
    from streams.app import create_app

    settings = WorkerSettings(state_dir=str(tmp_path), role="join", producer_linger=0.02)
    app = create_app(settings).app
    assert app.conf.producer_linger == 0.02
    assert app.producer.linger_ms == 20


def test_the_worker_authenticates_as_produce_and_replay_do(tmp_path: Path) -> None:
    """One rule for every client (streams/kafka_client.py): the worker's faust credentials
    and its admin client's options agree with each other and with produce's and replay's,
    where they used to disagree (SSL without a CA file gave aiokafka no context and faust
    plaintext; a SASL mechanism without a protocol gave the admin client PLAINTEXT)."""
    import ssl

    import faust

    from streams.kafka_client import KafkaClientSettings

    ssl_only = WorkerSettings(security_protocol="SSL")
    assert isinstance(ssl_only.aiokafka_options()["ssl_context"], ssl.SSLContext)
    assert isinstance(ssl_only.broker_credentials()["broker_credentials"], ssl.SSLContext)

    env = {"DREX_SASL_MECHANISM": "PLAIN", "DREX_SASL_PLAIN_USERNAME": "u"}
    env["DREX_SASL_PLAIN_PASSWORD"] = "p"
    sasl = WorkerSettings.from_env(env)
    assert sasl.aiokafka_options()["security_protocol"] == "SASL_PLAINTEXT"
    assert isinstance(sasl.broker_credentials()["broker_credentials"], faust.SASLCredentials)
    client = KafkaClientSettings.from_env(env)
    assert sasl.aiokafka_options() == client.aiokafka_options()


def test_contradictory_security_settings_are_refused_at_start(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="DREX_SSL_CAFILE is set but"):
        WorkerSettings(security_protocol="PLAINTEXT", ssl_cafile=str(tmp_path / "ca.pem"))
    with pytest.raises(ValueError, match="needs DREX_SASL_PLAIN_USERNAME"):
        WorkerSettings(sasl_mechanism="PLAIN")
