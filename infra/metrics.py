"""Prometheus metrics, one registry per process (no global registry).

Names follow ``ctloop_<subsystem>_<what>_<unit>``; counters end in ``_total``. Every process builds a
:class:`Metrics`, passes it to its components, and calls :meth:`serve`, which also answers
``/healthz`` (200 or 503 with a JSON body) from the health check given to :meth:`set_health`.

**Counters export 0 before their first event** wherever their label set is known, so that dashboards
and alerts see 0, not "No data". A labelled Prometheus counter has no series until ``labels(...)`` is
first called; :class:`Metrics` creates the children (at 0) of every combination of known label values:

* values fixed by the event contract (:data:`KNOWN_LABEL_VALUES`: trigger reasons, trainer outcomes,
  policy actions, prediction roles, drift ``detected``), and values a process declares
  (:meth:`Metrics.declare`, e.g. the sink's tables);
* values seen on any counter of the same process: once ``deployment="shop"`` is counted anywhere (a
  first prediction, a first labeled example), every other counter labelled by ``deployment`` (and
  otherwise known labels) exports 0 for ``shop``.

A counter with a label whose values are still unknown (no deployment seen yet) has no series; the
dashboard's queries add ``or vector(0)`` for that case (tests/test_grafana.py).
"""
from __future__ import annotations

import json
import logging
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Callable

import itertools
from typing import Iterable, Mapping

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Gauge, Histogram, generate_latest

log = logging.getLogger(__name__)

KNOWN_LABEL_VALUES: Mapping[str, tuple[str, ...]] = {
    "reason": ("review_threshold", "drift", "schedule", "performance_decay", "manual"),  # TrainingTriggered.reason
    "outcome": ("registered", "rejected", "failed"),      # a training run (trainers/pipeline.py)
    "action": ("promote", "reject", "rollback"),          # a promotion-policy decision (processors/promotion_policy.py)
    "role": ("primary", "canary", "shadow"),              # PredictionLogged.role
    "detected": ("true", "false"),                        # a drift window
}
"""Label values fixed by the event contract: counters with these labels export every value at 0."""

_MAX_COMBINATIONS = 256   # per counter and new value: a bound on the children made at 0


class _KnownCounter(Counter):
    """A Counter that reports the label values it is given to its :class:`Metrics` (which then makes
    the children of the other known combinations, at 0)."""

    _owner: "Metrics | None" = None
    _reported: frozenset = frozenset()

    def labels(self, *values, **kw):
        """The child of these label values; the first time a combination is seen it is reported to the
        owner (which then exports the other known combinations at 0)."""
        child = super().labels(*values, **kw)
        owner = self._owner
        key = values or tuple(sorted(kw.items()))
        if owner is not None and key not in self._reported:   # the hot path: one set lookup
            named = dict(zip(self._labelnames, values)) if values else kw
            owner._saw({k: str(v) for k, v in named.items()})
            self._reported = self._reported | {key}
        return child


class Metrics:
    """One process's Prometheus registry (no global registry): counters, gauges and histograms by name
    (asking twice for a name returns the same metric), /metrics and /healthz served by :meth:`serve`.

    ``known_values``: label name -> values that every counter with that label exports at 0 from the
    start (merged with :data:`KNOWN_LABEL_VALUES`); see the module doc."""

    def __init__(self, process: str, known_values: Mapping[str, Iterable[str]] | None = None):
        self.process = process
        self.registry = CollectorRegistry()
        self._metrics: dict[str, object] = {}
        self.port: int | None = None
        self._health: Callable[[], tuple[bool, dict]] = lambda: (True, {})
        self._server: ThreadingHTTPServer | None = None
        self._lock = threading.RLock()
        self._known: dict[str, set[str]] = {k: set(v) for k, v in KNOWN_LABEL_VALUES.items()}
        for name, values in (known_values or {}).items():
            self._known.setdefault(name, set()).update(str(v) for v in values)

    def declare(self, label: str, values: Iterable[str]) -> None:
        """Declare values of ``label`` (e.g. ``table``: the sink's tables): every counter labelled by it
        exports them at 0 (with the other labels' known values)."""
        new = {str(v) for v in values}
        with self._lock:
            added = new - self._known.setdefault(label, set())
            if not added:
                return
            self._known[label] |= added
            self._initialise({label: added})

    def _saw(self, values: dict[str, str]) -> None:
        with self._lock:
            added = {k: {v} for k, v in values.items() if v not in self._known.get(k, ())}
            if not added:
                return
            for k, v in added.items():
                self._known.setdefault(k, set()).update(v)
            self._initialise(added)

    def _initialise(self, only: Mapping[str, set[str]] | None = None) -> None:
        """Make the children (at 0) of every counter whose labels all have known values; with ``only``,
        just the combinations that use one of those new values."""
        for metric in list(self._metrics.values()):
            if not isinstance(metric, _KnownCounter) or not metric._labelnames:
                continue
            names = metric._labelnames
            if any(not self._known.get(n) for n in names):
                continue
            if only is not None and not any(n in only for n in names):
                continue
            pools = [sorted(self._known[n]) for n in names]
            made = 0
            for combo in itertools.product(*pools):
                if only is not None and not any(n in only and v in only[n] for n, v in zip(names, combo)):
                    continue
                Counter.labels(metric, *combo)   # the plain labels(): no feedback loop
                made += 1
                if made >= _MAX_COMBINATIONS:
                    log.warning("%s: %s has more than %d known label combinations; the rest start at the first event",
                                self.process, metric._name, _MAX_COMBINATIONS)
                    break

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
        """A counter; its known label combinations export 0 from now on (module doc)."""
        with self._lock:
            fresh = name not in self._metrics
            metric = self._get(_KnownCounter, name, doc, labels)
            if fresh:
                metric._owner = self
                self._initialise_one(metric)
            return metric

    def _initialise_one(self, metric) -> None:
        names = metric._labelnames
        if names and all(self._known.get(n) for n in names):
            for i, combo in enumerate(itertools.product(*[sorted(self._known[n]) for n in names])):
                if i >= _MAX_COMBINATIONS:
                    break
                Counter.labels(metric, *combo)

    def gauge(self, name: str, doc: str, labels: tuple[str, ...] = ()) -> Gauge:
        """The gauge ``name`` of this process's registry (created on first use; later calls return it)."""
        return self._get(Gauge, name, doc, labels)

    def histogram(self, name: str, doc: str, labels: tuple[str, ...] = (), buckets=Histogram.DEFAULT_BUCKETS) -> Histogram:
        """The histogram ``name`` (``buckets``: upper bounds, in the observed unit; created on first use)."""
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
        """The registry in the Prometheus text exposition format (what /metrics serves)."""
        from prometheus_client import generate_latest

        return generate_latest(self.registry).decode()
