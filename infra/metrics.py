"""Prometheus metrics, one registry per process (no global registry).

Names follow ``ctloop_<subsystem>_<what>_<unit>``; counters end in ``_total``. Every process builds a
:class:`Metrics`, passes it to its components, and calls :meth:`serve`, which also answers
``/healthz`` (200 or 503 with a JSON body) from the health check given to :meth:`set_health`.
"""
from __future__ import annotations

import json
import logging
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Callable

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Gauge, Histogram, generate_latest

log = logging.getLogger(__name__)


class Metrics:
    def __init__(self, process: str):
        self.process = process
        self.registry = CollectorRegistry()
        self._metrics: dict[str, object] = {}
        self.port: int | None = None
        self._health: Callable[[], tuple[bool, dict]] = lambda: (True, {})
        self._server: ThreadingHTTPServer | None = None

    def set_health(self, check: Callable[[], tuple[bool, dict]]) -> None:
        """``check()`` -> (healthy, details): /healthz answers 200 when healthy, else 503; the body is
        the details as JSON (plus ``"healthy"``). Default: always healthy."""
        self._health = check

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
        """Expose /metrics (Prometheus text format) and /healthz in a daemon thread; port 0 picks a free
        one. Returns the port."""
        metrics = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self):  # noqa: N802 - http.server's name
                if self.path.split("?")[0] == "/healthz":
                    try:
                        healthy, details = metrics._health()
                    except Exception as exc:  # noqa: BLE001 - a failing check is an unhealthy process
                        healthy, details = False, {"error": f"{type(exc).__name__}: {exc}"}
                    body, status, ctype = (json.dumps({"healthy": healthy, **details}).encode(),
                                           200 if healthy else 503, "application/json")
                else:
                    body, status, ctype = generate_latest(metrics.registry), 200, CONTENT_TYPE_LATEST
                self.send_response(status)
                self.send_header("Content-Type", ctype)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args):  # noqa: D401 - silence per-request logging
                return None

        server = ThreadingHTTPServer((addr, port), Handler)
        server.daemon_threads = True
        threading.Thread(target=server.serve_forever, name=f"{self.process}-metrics", daemon=True).start()
        self._server = server
        self.port = server.server_port
        log.info("%s: Prometheus metrics on :%d/metrics, health on /healthz", self.process, self.port)
        return self.port

    def exposition(self) -> str:
        from prometheus_client import generate_latest

        return generate_latest(self.registry).decode()
