"""Liveness of a processor worker: is its broker there, with its topics?

faust keeps a worker alive when its broker goes away, and against a broker that restarted empty (the
embedded broker keeps data in memory) its consumers neither fail nor progress. :class:`BrokerWatch`
probes the broker every few seconds from a thread (``list_topics``: the broker answers, and the
topics this worker needs exist, the internal ones included, which only processor workers create).
It reports ``/healthz`` (through :meth:`infra.metrics.Metrics.set_health`) and the gauges
``ctloop_processor_last_progress_seconds`` (Unix time of the last good probe) and
``ctloop_processor_healthy``; after ``processor_stall_timeout_s`` without a good probe it calls
``on_stall`` (the worker exits with :data:`EXIT_BROKER_LOST` so that its supervisor restarts it: a
new process recreates its topics and starts from what the broker has).
"""
from __future__ import annotations

import logging
import threading
import time
from typing import Callable, Iterable

log = logging.getLogger(__name__)

EXIT_BROKER_LOST = 75
"""Exit code of a worker that lost its broker or its topics (EX_TEMPFAIL: restart it)."""


def broker_check(bootstrap_servers: str, required_topics: Iterable[str], timeout_s: float = 3.0) -> Callable[[], str | None]:
    """A probe: None when the broker answers within ``timeout_s`` and every topic of
    ``required_topics`` exists, else the problem in words."""
    from confluent_kafka.admin import AdminClient

    admin = AdminClient({"bootstrap.servers": bootstrap_servers, "log.connection.close": False,
                         "socket.connection.setup.timeout.ms": max(1000, int(timeout_s * 1000))})
    required = sorted(set(required_topics))

    def check() -> str | None:
        try:
            md = admin.list_topics(timeout=timeout_s)
        except Exception as exc:  # noqa: BLE001 - KafkaException (transport, timeout)
            return f"broker {bootstrap_servers} unreachable: {exc}"
        if not md.brokers:
            return f"broker {bootstrap_servers}: no brokers in the metadata"
        missing = [t for t in required if t not in md.topics or md.topics[t].error is not None]
        if missing:
            return f"topics missing on {bootstrap_servers} (restarted empty?): {', '.join(missing[:5])}" + (
                f" and {len(missing) - 5} more" if len(missing) > 5 else "")
        return None

    return check


class BrokerWatch:
    """Probe with ``check()`` (None: fine, else the problem) every ``interval_s``; unhealthy from the
    first failed probe; ``on_stall(problem)`` once no probe succeeded for ``stall_timeout_s``
    (0: never). ``clock``/``wall``: monotonic and Unix time (injectable for tests)."""

    def __init__(self, check: Callable[[], str | None], stall_timeout_s: float, on_stall: Callable[[str], None], *,
                 metrics=None, interval_s: float | None = None, clock=time.monotonic, wall=time.time):
        if stall_timeout_s < 0:
            raise ValueError(f"processor_stall_timeout_s: must be >= 0, got {stall_timeout_s}")
        self.check = check
        self.stall_timeout_s = stall_timeout_s
        self.on_stall = on_stall
        self.interval_s = interval_s if interval_s is not None else (
            max(0.2, min(5.0, stall_timeout_s / 4)) if stall_timeout_s > 0 else 5.0)
        self.clock, self.wall = clock, wall
        self.last_ok = clock()
        self.last_ok_wall = wall()
        self.problem: str | None = None
        self.stalled = False
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._progress = self._healthy = None
        if metrics is not None:
            self._progress = metrics.gauge("ctloop_processor_last_progress_seconds",
                                           "Unix time of the last probe that found the broker and this worker's topics.")
            self._healthy = metrics.gauge("ctloop_processor_healthy", "1 while the last broker probe succeeded, else 0.")
            self._progress.set(self.last_ok_wall)
            self._healthy.set(1)

    def probe(self) -> str | None:
        """Probe once; returns the problem (None: healthy). Calls on_stall past the timeout."""
        try:
            problem = self.check()
        except Exception as exc:  # noqa: BLE001 - a probe that fails is a problem, not a crash of the watch
            problem = f"probe failed: {type(exc).__name__}: {exc}"
        if problem is None:
            if self.problem is not None:
                log.info("processor liveness: broker and topics are back")
            self.problem, self.last_ok, self.last_ok_wall = None, self.clock(), self.wall()
            if self._progress is not None:
                self._progress.set(self.last_ok_wall)
                self._healthy.set(1)
            return None
        if self.problem is None:
            log.warning("processor liveness: %s", problem)
        self.problem = problem
        if self._healthy is not None:
            self._healthy.set(0)
        if self.stall_timeout_s > 0 and not self.stalled and self.clock() - self.last_ok >= self.stall_timeout_s:
            self.stalled = True
            self.on_stall(problem)
        return problem

    def health(self) -> tuple[bool, dict]:
        """(healthy, details) for /healthz."""
        return self.problem is None, {"problem": self.problem, "last_progress_seconds": self.last_ok_wall,
                                      "stall_timeout_s": self.stall_timeout_s}

    def start(self) -> "BrokerWatch":
        def loop():
            while not self._stop.wait(self.interval_s):
                self.probe()
        self._thread = threading.Thread(target=loop, name="processor-liveness", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
