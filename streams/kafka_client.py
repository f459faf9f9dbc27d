"""Where a drex client finds Kafka and how it authenticates: ``drex produce`` and ``drex replay``.

Both commands read the worker's variables (streams/settings.py), with the worker's flags,
so one environment configures every drex process of a deployment:

=========================== ========================= =================================
variable                    flag                      meaning
=========================== ========================= =================================
``DREX_BROKER``             ``--broker``              ``kafka://HOST:PORT`` (";" or ","
                                                      between several)
``DREX_SECURITY_PROTOCOL``  ``--security-protocol``   PLAINTEXT, SSL, SASL_PLAINTEXT,
                                                      SASL_SSL (default: from the rest)
``DREX_SASL_MECHANISM``     ``--sasl-mechanism``      PLAIN, SCRAM-SHA-256, SCRAM-SHA-512
``DREX_SASL_PLAIN_USERNAME`` ``--sasl-plain-username`` SASL user name
``DREX_SASL_PLAIN_PASSWORD`` (none)                   SASL password: a variable only
``DREX_SSL_CAFILE``         ``--ssl-cafile``          CA bundle for the brokers' certificates
=========================== ========================= =================================

A flag beats its variable, a variable beats the default; an empty variable counts as
unset. The password has no flag: a command line is visible to every user of the machine.

:func:`aiokafka_options` turns these settings into aiokafka client keyword arguments, for
the producer, the admin client and the replay's consumer alike. When no protocol is given
it is inferred as faust infers it from the worker's credentials: a SASL mechanism means
SASL, a CA file means TLS. TLS without a CA file verifies against the system's CAs.
Contradictions (a SASL mechanism with ``SSL``, a CA file with ``PLAINTEXT``, SASL without
a user name or password) are refused with a ``ValueError`` naming the variables, rather
than silently ignored. :func:`faust_credentials` gives the same credentials as faust
App settings, for a worker. Nothing here imports torch or another drex module (so
streams/settings.py may import it), and faust only inside :func:`faust_credentials`.
"""

from __future__ import annotations

import argparse
from collections.abc import Mapping
from dataclasses import dataclass, field, fields
from typing import Any, Final, Protocol

#: The worker's default broker (``WorkerSettings.broker``; a unit test keeps them equal).
DEFAULT_BROKER: Final = "kafka://127.0.0.1:9092"
SECURITY_PROTOCOLS: Final = ("PLAINTEXT", "SSL", "SASL_PLAINTEXT", "SASL_SSL")
SASL_MECHANISMS: Final = ("PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512")


class ClientSecurity(Protocol):
    """What :func:`aiokafka_options` reads (``WorkerSettings`` has the same fields)."""

    @property
    def security_protocol(self) -> str: ...
    @property
    def sasl_mechanism(self) -> str: ...
    @property
    def sasl_plain_username(self) -> str: ...
    @property
    def sasl_plain_password(self) -> str: ...
    @property
    def ssl_cafile(self) -> str: ...


@dataclass(frozen=True)
class KafkaClientSettings:
    """The broker and its credentials, as ``drex produce`` and ``drex replay`` use them.

    Each field's ``help`` metadata names its variable; ``flag`` is its command-line flag
    (None: a variable only).
    """

    broker: str = field(
        default=DEFAULT_BROKER,
        metadata={
            "variable": "DREX_BROKER",
            "flag": "--broker",
            "help": "kafka://HOST:PORT, ';'-separated for several",
        },
    )
    security_protocol: str = field(
        default="",
        metadata={
            "variable": "DREX_SECURITY_PROTOCOL",
            "flag": "--security-protocol",
            "help": "PLAINTEXT, SSL, SASL_PLAINTEXT or SASL_SSL; default: SASL_* when a "
            "SASL mechanism is set, SSL when a CA file is, else PLAINTEXT",
        },
    )
    sasl_mechanism: str = field(
        default="",
        metadata={
            "variable": "DREX_SASL_MECHANISM",
            "flag": "--sasl-mechanism",
            "help": "PLAIN, SCRAM-SHA-256 or SCRAM-SHA-512",
        },
    )
    sasl_plain_username: str = field(
        default="",
        metadata={
            "variable": "DREX_SASL_PLAIN_USERNAME",
            "flag": "--sasl-plain-username",
            "help": "SASL user name",
        },
    )
    sasl_plain_password: str = field(
        default="",
        repr=False,
        metadata={
            "variable": "DREX_SASL_PLAIN_PASSWORD",
            "flag": None,
            "help": "SASL password (a variable only: a command line is visible to every "
            "user of the machine)",
        },
    )
    ssl_cafile: str = field(
        default="",
        metadata={
            "variable": "DREX_SSL_CAFILE",
            "flag": "--ssl-cafile",
            "help": "CA bundle to verify the brokers' certificates (unset: the system's CAs)",
        },
    )

    @classmethod
    def variables(cls) -> dict[str, str]:
        """Field name -> its environment variable."""
        return {f.name: f.metadata["variable"] for f in fields(cls)}

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None, **flags: Any) -> KafkaClientSettings:
        """Defaults, then the variables of ``env`` (default: ``os.environ``; empty = unset),
        then ``flags`` (a None value is a flag not given). Raises ``ValueError`` for a
        combination :func:`aiokafka_options` cannot build."""
        import os

        source = os.environ if env is None else env
        values: dict[str, str] = {}
        for name, variable in cls.variables().items():
            value = source.get(variable)
            if value:
                values[name] = value
        values.update({k: str(v) for k, v in flags.items() if v is not None})
        settings = cls(**values)
        aiokafka_options(settings)  # refuse a bad combination before any connection
        return settings

    @classmethod
    def from_args(
        cls, args: argparse.Namespace, env: Mapping[str, str] | None = None
    ) -> KafkaClientSettings:
        """The settings of a command whose parser has :func:`add_client_flags`."""
        names = {f.name for f in fields(cls)}
        return cls.from_env(env, **{k: v for k, v in vars(args).items() if k in names})

    def aiokafka_options(self) -> dict[str, Any]:
        """aiokafka client keyword arguments for the credentials (not the servers)."""
        return aiokafka_options(self)


def security_protocol(security: ClientSecurity) -> str:
    """The protocol given, else the one the other settings imply (as faust infers it)."""
    if security.security_protocol:
        return security.security_protocol.upper()
    if security.sasl_mechanism:
        return "SASL_SSL" if security.ssl_cafile else "SASL_PLAINTEXT"
    return "SSL" if security.ssl_cafile else "PLAINTEXT"


def aiokafka_options(security: ClientSecurity) -> dict[str, Any]:
    """aiokafka keyword arguments (``AIOKafkaProducer``, ``AIOKafkaConsumer``,
    ``AIOKafkaAdminClient``) for ``security``: the protocol, an SSL context when it is
    SSL or SASL_SSL, the SASL fields when it is SASL_*.

    Raises ``ValueError`` (naming the variables) for an unknown protocol or mechanism and
    for settings the protocol would ignore or cannot work without.
    """
    var = KafkaClientSettings.variables()
    protocol = security_protocol(security)
    if protocol not in SECURITY_PROTOCOLS:
        raise ValueError(
            f"{var['security_protocol']} = {security.security_protocol!r}: "
            f"expected one of {', '.join(SECURITY_PROTOCOLS)}"
        )
    uses_ssl = protocol in ("SSL", "SASL_SSL")
    uses_sasl = protocol.startswith("SASL_")
    if security.ssl_cafile and not uses_ssl:
        raise ValueError(
            f"{var['ssl_cafile']} is set but {var['security_protocol']} = {protocol} "
            "does not use TLS (SSL or SASL_SSL would)"
        )
    if not uses_sasl and (
        security.sasl_mechanism or security.sasl_plain_username or security.sasl_plain_password
    ):
        raise ValueError(
            f"SASL settings ({var['sasl_mechanism']}, {var['sasl_plain_username']}, "
            f"{var['sasl_plain_password']}) are set but {var['security_protocol']} = "
            f"{protocol} does not use SASL (SASL_PLAINTEXT or SASL_SSL would)"
        )
    out: dict[str, Any] = {"security_protocol": protocol}
    if uses_ssl:
        import ssl

        try:
            out["ssl_context"] = ssl.create_default_context(cafile=security.ssl_cafile or None)
        except (OSError, ssl.SSLError) as err:
            raise ValueError(
                f"{var['ssl_cafile']} = {security.ssl_cafile!r}: cannot load it ({err})"
            ) from None
    if uses_sasl:
        mechanism = (security.sasl_mechanism or "PLAIN").upper()
        if mechanism not in SASL_MECHANISMS:
            raise ValueError(
                f"{var['sasl_mechanism']} = {security.sasl_mechanism!r}: "
                f"expected one of {', '.join(SASL_MECHANISMS)}"
            )
        if not security.sasl_plain_username or not security.sasl_plain_password:
            raise ValueError(
                f"{protocol} with {mechanism} needs {var['sasl_plain_username']} and "
                f"{var['sasl_plain_password']}"
            )
        out.update(
            sasl_mechanism=mechanism,
            sasl_plain_username=security.sasl_plain_username,
            sasl_plain_password=security.sasl_plain_password,
        )
    return out


def faust_credentials(security: ClientSecurity) -> dict[str, Any]:
    """The same credentials as faust App settings (``broker_credentials``), for a worker:
    nothing for PLAINTEXT, the SSL context for SSL, ``faust.SASLCredentials`` for SASL_*
    (with the SSL context under SASL_SSL, which is how faust tells the two apart).
    Imports faust; raises ``ValueError`` as :func:`aiokafka_options` does."""
    options = aiokafka_options(security)
    context = options.get("ssl_context")
    if not options["security_protocol"].startswith("SASL_"):
        return {} if context is None else {"broker_credentials": context}
    import faust

    credentials = faust.SASLCredentials(
        username=options["sasl_plain_username"],
        password=options["sasl_plain_password"],
        mechanism=options["sasl_mechanism"],
        ssl_context=context,
    )
    return {"broker_credentials": credentials}


def add_client_flags(parser: argparse.ArgumentParser) -> None:
    """``--broker``, ``--security-protocol``, ``--sasl-mechanism``, ``--sasl-plain-username``,
    ``--ssl-cafile`` in a "Kafka connection" group; the password's variable in the epilog.

    A flag left out is absent from the namespace (:meth:`KafkaClientSettings.from_args`
    then takes the variable or the default), so ``--help`` shows each default itself.
    """
    group = parser.add_argument_group(
        "Kafka connection", "each flag beats its DREX_* variable; an empty variable is unset"
    )
    env_only = []
    for f in fields(KafkaClientSettings):
        variable, flag, text = f.metadata["variable"], f.metadata["flag"], f.metadata["help"]
        if flag is None:
            env_only.append(f"{variable}: {text}.")
            continue
        default = f"; default {f.default}" if f.default else ""
        group.add_argument(
            flag,
            dest=f.name,
            default=argparse.SUPPRESS,
            metavar=f.name.upper(),
            help=f"{text} ({variable}{default})".replace("%", "%%"),
        )
    parser.epilog = " ".join(filter(None, [parser.epilog, *env_only]))
