"""Prometheus metrics, one registry per process (no global registry).

Names follow ``ctloop_<subsystem>_<what>_<unit>``; counters end in ``_total``. Every process builds a
:class:`Metrics`, passes it to its components, and calls :meth:`serve`.
"""
from __future__ import annotations

import logging

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, start_http_server

log = logging.getLogger(__name__)


class Metrics:
    def __init__(self, process: str):
        self.process = process
        self.registry = CollectorRegistry()
        self._metrics: dict[str, object] = {}
        self.port: int | None = None

    def _get(self, kind, name: str, doc: str, labels: tuple[str, ...], **kw):
        metric = self._metrics.get(name)
        if metric is None:
            metric = kind(name, doc, labels, registry=self.registry, **kw)
            self._metrics[name] = metric
        return metric

    def counter(self, name: str, doc: str, labels: tuple[str, ...] = ()) -> Counter:
        return self._get(Counter, name, doc, labels)

    def gauge(self, name: str, doc: str, labels: tuple[str, ...] = ()) -> Gauge:
        return self._get(Gauge, name, doc, labels)

    def histogram(self, name: str, doc: str, labels: tuple[str, ...] = (), buckets=Histogram.DEFAULT_BUCKETS) -> Histogram:
        return self._get(Histogram, name, doc, labels, buckets=buckets)

    def serve(self, port: int = 0, addr: str = "0.0.0.0") -> int:
        """Expose /metrics; port 0 picks a free one. Returns the port."""
        server, _thread = start_http_server(port, addr=addr, registry=self.registry)
        self.port = server.server_port
        log.info("%s: Prometheus metrics on :%d/metrics", self.process, self.port)
        return self.port

    def exposition(self) -> str:
        from prometheus_client import generate_latest

        return generate_latest(self.registry).decode()
