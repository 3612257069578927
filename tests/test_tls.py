"""Encryption in transit: mutual TLS to Temporal (through a TLS-terminating proxy in front of the dev
server, which speaks plaintext), and the API served over HTTPS by `dialogue api`."""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import os
import ssl
import subprocess
import sys
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

import httpx
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID
from temporalio.testing import WorkflowEnvironment

from dialogue.platform.settings import Settings
from dialogue.platform.temporal import connect
from tests.conftest import TEST_PAYLOAD_KEYS, free_port


@dataclass
class Pki:
    ca: Path
    server_cert: Path
    server_key: Path
    client_cert: Path
    client_key: Path


def _name(common: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common)])


def _write(
    folder: Path, name: str, cert: x509.Certificate, key: ec.EllipticCurvePrivateKey
) -> tuple[Path, Path]:
    cert_path, key_path = folder / f"{name}.pem", folder / f"{name}.key"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )
    )
    return cert_path, key_path


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    """A CA, a server certificate for localhost and 127.0.0.1, and a client certificate."""
    folder = tmp_path_factory.mktemp("pki")
    now = datetime.now(UTC)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca = (
        x509.CertificateBuilder()
        .subject_name(_name("test CA"))
        .issuer_name(_name("test CA"))
        .public_key(ca_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - timedelta(minutes=5))
        .not_valid_after(now + timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .add_extension(
            x509.KeyUsage(True, False, False, False, False, True, True, False, False), critical=True
        )
        .sign(ca_key, hashes.SHA256())
    )
    ca_path, _ = _write(folder, "ca", ca, ca_key)

    def issue(common: str, usage: x509.ObjectIdentifier, names: list[x509.GeneralName]) -> tuple[Path, Path]:
        key = ec.generate_private_key(ec.SECP256R1())
        builder = (
            x509.CertificateBuilder()
            .subject_name(_name(common))
            .issuer_name(ca.subject)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - timedelta(minutes=5))
            .not_valid_after(now + timedelta(days=1))
            .add_extension(x509.ExtendedKeyUsage([usage]), critical=False)
        )
        if names:
            builder = builder.add_extension(x509.SubjectAlternativeName(names), critical=False)
        return _write(folder, common, builder.sign(ca_key, hashes.SHA256()), key)

    server = issue(
        "localhost",
        ExtendedKeyUsageOID.SERVER_AUTH,
        [x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))],
    )
    client = issue("worker", ExtendedKeyUsageOID.CLIENT_AUTH, [])
    return Pki(ca_path, *server, *client)


@contextlib.asynccontextmanager
async def mtls_proxy(pki: Pki, upstream: str) -> AsyncIterator[int]:
    """TLS that demands a client certificate signed by the CA, then plaintext gRPC to the dev server."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(pki.server_cert, pki.server_key)
    context.load_verify_locations(pki.ca)
    context.verify_mode = ssl.CERT_REQUIRED
    context.set_alpn_protocols(["h2"])
    host, port = upstream.rsplit(":", 1)

    async def pipe(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        with contextlib.suppress(ConnectionError, asyncio.CancelledError):
            while data := await reader.read(65536):
                writer.write(data)
                await writer.drain()
        writer.close()

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        up_reader, up_writer = await asyncio.open_connection(host, int(port))
        await asyncio.gather(pipe(reader, up_writer), pipe(up_reader, writer))

    server = await asyncio.start_server(handle, "127.0.0.1", 0, ssl=context)
    try:
        yield server.sockets[0].getsockname()[1]
    finally:
        server.close()


async def test_mutual_tls_to_temporal(pki: Pki, env: WorkflowEnvironment, settings: Settings) -> None:
    async with mtls_proxy(pki, env.client.service_client.config.target_host) as port:
        secured = settings.model_copy(
            update={
                "temporal_address": f"127.0.0.1:{port}",
                "temporal_tls_ca_file": pki.ca,
                "temporal_tls_cert_file": pki.client_cert,
                "temporal_tls_key_file": pki.client_key,
                "temporal_tls_server_name": "localhost",
            }
        )
        client = await asyncio.wait_for(connect(secured), 20)
        assert (await client.count_workflows()).count >= 0  # a real call through the TLS tunnel
        without_certificate = secured.model_copy(
            update={"temporal_tls_cert_file": None, "temporal_tls_key_file": None}
        )
        with pytest.raises(RuntimeError):  # the proxy refuses the handshake
            await asyncio.wait_for(connect(without_certificate), 20)


def test_the_api_over_https(pki: Pki, settings: Settings, tmp_path: Path) -> None:
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("DIALOGUE_")} | {
        "DIALOGUE_DATA_DIR": str(tmp_path / "data"),
        "DIALOGUE_API_PORT": str(port),
        "DIALOGUE_API_KEY": "https-test-key",
        "DIALOGUE_PAYLOAD_KEYS": TEST_PAYLOAD_KEYS.spec(),  # production, the default, makes none up
        "DIALOGUE_API_SSL_CERTFILE": str(pki.server_cert),
        "DIALOGUE_API_SSL_KEYFILE": str(pki.server_key),
        "DIALOGUE_TEMPORAL_ADDRESS": settings.temporal_address,
    }
    api = subprocess.Popen([sys.executable, "-m", "dialogue", "api"], env=env, stdout=subprocess.DEVNULL)
    try:
        with httpx.Client(verify=ssl.create_default_context(cafile=pki.ca), timeout=5) as http:
            for _ in range(150):
                try:
                    health = http.get(f"https://127.0.0.1:{port}/healthz")
                    break
                except httpx.ConnectError:
                    assert api.poll() is None, "dialogue api exited"
                    time.sleep(0.2)
            assert health.status_code == 200
        with pytest.raises(httpx.HTTPError):  # plain HTTP is not served
            httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=5)
    finally:
        api.terminate()
        api.wait(20)
