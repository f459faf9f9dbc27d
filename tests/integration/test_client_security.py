"""``drex produce`` and ``drex replay`` on a TLS listener, configured only by the worker's
variables (DREX_BROKER, DREX_SSL_CAFILE).

Tansu 0.6.0 cannot serve TLS itself (its ``--cert`` and ``--key`` flags refuse each
other) nor SASL users (``--authentication`` refuses the ``tansu user create`` that would
add one), so a TLS-terminating proxy stands in front of a real Tansu that advertises
the proxy's address: every byte the clients send goes through a real TLS session that
checks the certificate against the CA file, then to the real broker.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import shutil
import socket
import ssl
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from drex_model.evaluate.data import load_interactions
from drex_model.evaluate.sample import write_sample
from streams import producer
from streams.broker import BrokerError, free_port, resolve_tansu_bin
from streams.reconstruct import interactions_digest
from streams.replay import main

pytestmark = pytest.mark.integration


def make_certificates(folder: Path) -> tuple[Path, Path, Path]:
    """(CA certificate, server certificate for IP 127.0.0.1, server key), by openssl."""
    if shutil.which("openssl") is None:
        pytest.skip("no openssl command to make test certificates")

    def openssl(*args: str) -> None:
        subprocess.run(["openssl", *args], check=True, capture_output=True, cwd=folder)

    openssl("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2", "-keyout",
            "ca.key", "-out", "ca.pem", "-subj", "/CN=drex-test-ca",
            "-addext", "basicConstraints=critical,CA:TRUE",
            "-addext", "keyUsage=critical,keyCertSign,cRLSign")  # fmt: skip
    openssl("req", "-newkey", "rsa:2048", "-nodes", "-keyout", "server.key", "-out",
            "server.csr", "-subj", "/CN=127.0.0.1")  # fmt: skip
    # Python 3.13's default context verifies strictly (VERIFY_X509_STRICT): the CA needs
    # keyUsage, the server certificate an authority key identifier.
    (folder / "san.cnf").write_text(
        "subjectAltName=IP:127.0.0.1\n"
        "authorityKeyIdentifier=keyid,issuer\n"
        "keyUsage=critical,digitalSignature,keyEncipherment\n"
        "extendedKeyUsage=serverAuth\n"
    )
    openssl("x509", "-req", "-in", "server.csr", "-CA", "ca.pem", "-CAkey", "ca.key",
            "-CAcreateserial", "-out", "server.pem", "-days", "2",
            "-extfile", "san.cnf")  # fmt: skip
    return folder / "ca.pem", folder / "server.pem", folder / "server.key"


class TlsProxy:
    """Accepts TLS on 127.0.0.1:``port`` and relays the plaintext to ``target``."""

    def __init__(self, port: int, target: int, context: ssl.SSLContext) -> None:
        self.port, self.target, self.context = port, target, context
        self.sessions = 0  # TLS handshakes completed
        self._loop = asyncio.new_event_loop()
        self._ready = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        asyncio.set_event_loop(self._loop)
        self._loop.run_until_complete(self._serve())
        self._ready.set()
        self._loop.run_forever()

    async def _serve(self) -> None:
        self._server = await asyncio.start_server(
            self._relay, "127.0.0.1", self.port, ssl=self.context
        )

    async def _relay(self, client_r: asyncio.StreamReader, client_w: asyncio.StreamWriter) -> None:
        self.sessions += 1
        broker_r, broker_w = await asyncio.open_connection("127.0.0.1", self.target)

        async def pipe(r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
            try:
                while data := await r.read(65536):
                    w.write(data)
                    await w.drain()
            except (ConnectionError, ssl.SSLError):
                pass
            finally:
                w.close()

        await asyncio.gather(pipe(client_r, broker_w), pipe(broker_r, client_w))

    def __enter__(self) -> TlsProxy:
        self._thread.start()
        if not self._ready.wait(10):
            raise RuntimeError("the TLS proxy did not start")
        return self

    def __exit__(self, *exc: object) -> None:
        self._loop.call_soon_threadsafe(self._server.close)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(10)


@pytest.fixture
def tls_broker(tmp_path: Path) -> Iterator[tuple[str, Path, TlsProxy]]:
    """(broker URL of a TLS listener, its CA file, the proxy) in front of a real Tansu."""
    try:
        binary = resolve_tansu_bin()
    except BrokerError as exc:
        pytest.skip(f"no Tansu broker binary ({exc})")
    ca, cert, key = make_certificates(tmp_path)
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(cert, key)
    inner, outer = free_port(), free_port()
    log = (tmp_path / "tansu.log").open("wb")
    proc = subprocess.Popen(
        [binary, "broker", "--listener-url", f"tcp://127.0.0.1:{inner}",
         "--advertised-listener-url", f"tcp://127.0.0.1:{outer}",
         "--storage-engine", "memory://tansu/"],
        stdout=log, stderr=subprocess.STDOUT,
    )  # fmt: skip
    try:
        deadline = time.monotonic() + 20
        while True:
            try:
                socket.create_connection(("127.0.0.1", inner), timeout=1).close()
                break
            except OSError:
                if time.monotonic() > deadline or proc.poll() is not None:
                    raise RuntimeError("Tansu did not start") from None
                time.sleep(0.1)
        with TlsProxy(outer, inner, context) as proxy:
            yield f"kafka://127.0.0.1:{outer}", ca, proxy
    finally:
        proc.terminate()
        proc.wait(10)
        log.close()


def drex_produce(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="drex")
    producer.register(parser.add_subparsers())
    args = parser.parse_args(["produce", *argv])
    return int(args.func(args))


def test_produce_and_replay_reach_a_tls_listener_through_the_workers_variables(
    tls_broker: tuple[str, Path, TlsProxy],
    tiny_encoder_dir: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    url, ca, proxy = tls_broker
    sample = write_sample(tmp_path / "sample.jsonl", users=30, items=20, per_user=6)
    rows = load_interactions(sample).interactions
    produce = ["--dataset", str(sample), "--partitions", "2", "--quiet"]
    monkeypatch.setenv("DREX_BROKER", url)

    # plaintext to a TLS port fails, and so does TLS that cannot verify the certificate
    assert drex_produce(produce) == 1
    monkeypatch.setenv("DREX_SECURITY_PROTOCOL", "SSL")  # the system's CAs only
    assert drex_produce(produce) == 1
    assert "cannot send to" in capsys.readouterr().err
    assert proxy.sessions == 0  # no TLS session was ever established

    monkeypatch.delenv("DREX_SECURITY_PROTOCOL")
    monkeypatch.setenv("DREX_SSL_CAFILE", str(ca))  # TLS, implied by the CA file
    assert drex_produce(produce) == 0  # topics created and events sent through TLS
    sessions = proxy.sessions
    assert sessions > 0

    out = tmp_path / "replay"
    code = main(["--output", str(out), "--seeds", "0", "--variants", "drex", "--baselines",
                 "bias", "--max-epochs", "1", "--encoder", str(tiny_encoder_dir),
                 "--cache-dir", str(tmp_path / "cache"), "--set", "dim=8", "--quiet"])  # fmt: skip
    assert code == 0
    assert proxy.sessions > sessions
    info = json.loads((out / "results.json").read_text())["replay"]
    assert info["records_read"] == 2 * len(rows) and info["records_missing"] == {}
    assert info["interactions_digest"] == interactions_digest(rows)
