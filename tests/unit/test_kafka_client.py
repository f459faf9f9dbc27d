"""The Kafka connection settings of ``drex produce`` and ``drex replay``: the worker's
variables, flags that beat them, and the aiokafka keyword arguments they give."""

from __future__ import annotations

import argparse
import ast
import asyncio
import re
import shutil
import ssl
import subprocess
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import pytest

from streams import kafka_client, producer, replay
from streams.kafka_client import DEFAULT_BROKER, KafkaClientSettings, aiokafka_options
from streams.settings import WorkerSettings

VARIABLE = r"\bDREX_[A-Z][A-Z0-9_]*"  # a variable's name (not "DREX_*")


@pytest.fixture(scope="module")
def ca_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A self-signed CA certificate, made by the openssl command line."""
    if shutil.which("openssl") is None:
        pytest.skip("no openssl command to make a test CA")
    folder = tmp_path_factory.mktemp("ca")
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2",
         "-keyout", str(folder / "ca.key"), "-out", str(folder / "ca.pem"),
         "-subj", "/CN=drex-test-ca"],
        check=True, capture_output=True,
    )  # fmt: skip
    return folder / "ca.pem"


def command(register: Any) -> argparse.ArgumentParser:
    """The real ``drex produce`` / ``drex replay`` subparser, registered as cli.py does."""
    parser = argparse.ArgumentParser(prog="drex")
    return register(parser.add_subparsers())  # type: ignore[no-any-return]


# --- the settings ----------------------------------------------------------------------


def test_the_default_broker_is_the_workers() -> None:
    assert WorkerSettings.model_fields["broker"].default == DEFAULT_BROKER
    assert KafkaClientSettings.from_env({}).broker == DEFAULT_BROKER


def test_every_setting_has_the_workers_variable_and_flag() -> None:
    for name, variable in KafkaClientSettings.variables().items():
        assert WorkerSettings.variable(name) == variable
    parser = command(producer.register)
    flags = {a.dest: a.option_strings for a in parser._actions}
    for name in KafkaClientSettings.variables():
        if name in WorkerSettings.ENV_ONLY:
            assert name not in flags  # the password: a variable only, as for the worker
        else:
            assert flags[name] == [WorkerSettings.flag(name)]


def test_a_flag_beats_its_variable_and_an_empty_variable_is_unset() -> None:
    env = {"DREX_BROKER": "kafka://env:1", "DREX_SSL_CAFILE": ""}
    assert KafkaClientSettings.from_env(env).broker == "kafka://env:1"
    assert KafkaClientSettings.from_env(env, broker="kafka://flag:2").broker == "kafka://flag:2"
    assert KafkaClientSettings.from_env(env).ssl_cafile == ""
    args = command(replay.register).parse_args(["--output", "x"])
    assert KafkaClientSettings.from_args(args, env).broker == "kafka://env:1"
    args = command(replay.register).parse_args(["--output", "x", "--broker", "kafka://f:3"])
    assert KafkaClientSettings.from_args(args, env).broker == "kafka://f:3"


def test_plaintext_by_default() -> None:
    assert aiokafka_options(KafkaClientSettings()) == {"security_protocol": "PLAINTEXT"}


def test_a_ca_file_gives_a_verifying_ssl_context_that_trusts_it(ca_file: Path) -> None:
    options = KafkaClientSettings.from_env({"DREX_SSL_CAFILE": str(ca_file)}).aiokafka_options()
    assert options["security_protocol"] == "SSL"  # implied by the CA file, as faust does
    context = options["ssl_context"]
    assert isinstance(context, ssl.SSLContext)
    assert context.verify_mode == ssl.CERT_REQUIRED and context.check_hostname
    assert "drex-test-ca" in str(context.get_ca_certs())  # the CA file's certificate


def test_tls_without_a_ca_file_verifies_against_the_system_cas() -> None:
    options = KafkaClientSettings(security_protocol="ssl").aiokafka_options()
    assert options["security_protocol"] == "SSL"
    assert options["ssl_context"].verify_mode == ssl.CERT_REQUIRED


def test_sasl_settings_give_the_sasl_fields(ca_file: Path) -> None:
    env = {
        "DREX_SASL_MECHANISM": "scram-sha-512",
        "DREX_SASL_PLAIN_USERNAME": "alice",
        "DREX_SASL_PLAIN_PASSWORD": "s3cret",
    }
    assert KafkaClientSettings.from_env(env).aiokafka_options() == {
        "security_protocol": "SASL_PLAINTEXT",
        "sasl_mechanism": "SCRAM-SHA-512",
        "sasl_plain_username": "alice",
        "sasl_plain_password": "s3cret",
    }
    with_tls = KafkaClientSettings.from_env({**env, "DREX_SSL_CAFILE": str(ca_file)})
    options = with_tls.aiokafka_options()
    assert options["security_protocol"] == "SASL_SSL"
    assert isinstance(options["ssl_context"], ssl.SSLContext)
    assert options["sasl_plain_password"] == "s3cret"
    assert "s3cret" not in repr(with_tls)
    plain = KafkaClientSettings.from_env(
        {**env, "DREX_SECURITY_PROTOCOL": "SASL_PLAINTEXT", "DREX_SASL_MECHANISM": ""}
    )
    assert plain.aiokafka_options()["sasl_mechanism"] == "PLAIN"  # aiokafka's and Kafka's


def test_the_options_are_what_aiokafka_clients_accept(ca_file: Path) -> None:
    from aiokafka import AIOKafkaConsumer, AIOKafkaProducer
    from aiokafka.admin import AIOKafkaAdminClient

    settings = KafkaClientSettings(
        sasl_mechanism="SCRAM-SHA-256",
        sasl_plain_username="u",
        sasl_plain_password="p",
        ssl_cafile=str(ca_file),
    )

    async def build() -> None:  # constructing validates the arguments; nothing connects
        options = settings.aiokafka_options()
        clients = (
            AIOKafkaProducer(bootstrap_servers="127.0.0.1:1", **options),
            AIOKafkaConsumer(bootstrap_servers="127.0.0.1:1", **options),
            AIOKafkaAdminClient(bootstrap_servers="127.0.0.1:1", **options),
        )
        for client in (clients[0].client, clients[1]._client, clients[2]._client):
            assert client._security_protocol == "SASL_SSL"
            assert client._sasl_mechanism == "SCRAM-SHA-256"
        for client in clients[:2]:
            await client.stop()
        await clients[2].close()

    asyncio.run(build())


def test_faust_gets_the_same_credentials(ca_file: Path) -> None:
    import faust
    from faust.types.auth import AuthProtocol

    sasl = {"sasl_mechanism": "PLAIN", "sasl_plain_username": "u", "sasl_plain_password": "p"}
    assert kafka_client.faust_credentials(KafkaClientSettings()) == {}
    tls = kafka_client.faust_credentials(KafkaClientSettings(security_protocol="SSL"))
    assert isinstance(tls["broker_credentials"], ssl.SSLContext)
    for settings, protocol in [
        (KafkaClientSettings(**sasl), AuthProtocol.SASL_PLAINTEXT),
        (KafkaClientSettings(**sasl, ssl_cafile=str(ca_file)), AuthProtocol.SASL_SSL),
        (KafkaClientSettings(**sasl, security_protocol="SASL_SSL"), AuthProtocol.SASL_SSL),
    ]:
        credentials = kafka_client.faust_credentials(settings)["broker_credentials"]
        assert isinstance(credentials, faust.SASLCredentials)
        assert credentials.protocol == protocol
        assert credentials.protocol.value == settings.aiokafka_options()["security_protocol"]
        assert (credentials.username, credentials.password) == ("u", "p")


@pytest.mark.parametrize(
    ("env", "message"),
    [
        ({"DREX_SECURITY_PROTOCOL": "TLS"}, "DREX_SECURITY_PROTOCOL = 'TLS': expected one of"),
        ({"DREX_SECURITY_PROTOCOL": "PLAINTEXT", "DREX_SSL_CAFILE": "ca.pem"}, "does not use TLS"),
        (
            {"DREX_SECURITY_PROTOCOL": "SSL", "DREX_SASL_MECHANISM": "PLAIN"},
            "SSL does not use SASL",
        ),
        ({"DREX_SASL_MECHANISM": "GSSAPI"}, "DREX_SASL_MECHANISM = 'GSSAPI': expected one of"),
        (
            {"DREX_SASL_MECHANISM": "PLAIN", "DREX_SASL_PLAIN_USERNAME": "u"},
            "needs DREX_SASL_PLAIN_USERNAME and DREX_SASL_PLAIN_PASSWORD",
        ),
        ({"DREX_SSL_CAFILE": "/nonexistent/ca.pem"}, "DREX_SSL_CAFILE = '/nonexistent"),
    ],
)
def test_contradictory_or_incomplete_settings_are_refused_by_name(
    env: dict[str, str], message: str
) -> None:
    with pytest.raises(ValueError, match=re.escape(message)):
        KafkaClientSettings.from_env(env)


# --- the commands ----------------------------------------------------------------------


def test_bad_connection_settings_exit_2_with_one_line(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    monkeypatch.setenv("DREX_SECURITY_PROTOCOL", "TLS")
    args = command(producer.register).parse_args(["--dataset", "sample", "--quiet"])
    assert args.func(args) == 2
    assert capsys.readouterr().err.startswith("drex produce: DREX_SECURITY_PROTOCOL = 'TLS'")
    with pytest.raises(SystemExit) as stop:
        replay.main(["--output", str(tmp_path), "--quiet"])
    assert stop.value.code == 2
    assert capsys.readouterr().err.startswith("drex replay: DREX_SECURITY_PROTOCOL = 'TLS'")


class Recording(Mapping[str, str]):
    """An environment that records which variables were asked for."""

    def __init__(self, values: Mapping[str, str]) -> None:
        self._values, self.asked = dict(values), set[str]()

    def __getitem__(self, key: str) -> str:
        self.asked.add(key)
        return self._values[key]

    def get(self, key: str, default: Any = None) -> Any:
        self.asked.add(key)
        return self._values.get(key, default)

    def __iter__(self) -> Iterator[str]:
        raise AssertionError("the settings ask for their variables by name")

    def __len__(self) -> int:
        return len(self._values)


def variables_in_source(*modules: Any) -> set[str]:
    """Every string constant in the modules' code that is a whole DREX_* name."""
    found = set()
    for module in modules:
        tree = ast.parse(Path(module.__file__).read_text(encoding="utf-8"))
        for node in ast.walk(tree):
            if isinstance(node, ast.Constant) and isinstance(node.value, str):
                found |= set(re.findall(VARIABLE, node.value))
    return found


@pytest.mark.parametrize(
    ("module", "argv"),
    [(producer, ["--dataset", "sample"]), (replay, ["--output", "x"])],
    ids=["produce", "replay"],
)
def test_every_variable_the_command_reads_is_in_its_help(module: Any, argv: list[str]) -> None:
    parser = command(module.register)
    text = parser.format_help()
    in_help = set(re.findall(VARIABLE, text))
    env = Recording({})
    KafkaClientSettings.from_args(parser.parse_args(argv), env)
    assert env.asked == set(KafkaClientSettings.variables().values())
    assert env.asked <= in_help, env.asked - in_help
    # and the command's modules name no variable that the help leaves out
    assert variables_in_source(module, kafka_client) <= in_help
    assert "--sasl-plain-password" not in text  # a variable only
