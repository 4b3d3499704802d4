"""Liveness of a processor worker: is its broker there, with its topics?

faust keeps a worker alive when its broker goes away, and against a broker that restarted empty (the
embedded broker keeps data in memory) its consumers neither fail nor progress. :class:`BrokerWatch`
probes the broker every second from a thread (``describe_topics``: the broker answers, and the
topics this worker needs exist, the internal ones included, with the topic ids they had at start: a
broker that restarted empty has none, or new ones when a producer auto-created them).
It reports ``/healthz`` (through :meth:`infra.metrics.Metrics.set_health`) and the gauges
``ctloop_processor_last_progress_seconds`` (Unix time of the last good probe) and
``ctloop_processor_healthy``. When its topics are gone or recreated it calls ``on_stall`` at once (the
worker exits with :data:`EXIT_BROKER_LOST` so that its supervisor restarts it: a new process recreates
its topics and starts from what the broker has), so that it stops writing stale state and offsets into
the new broker (what its producers still send in the second before can leave unreadable records there,
which made the next worker's table recovery hang: processors/topic_repair.py, run by the next worker on
start, makes those topics again); after
``processor_stall_timeout_s`` without any good probe (broker unreachable, or a table recovery that
receives nothing: :func:`recovery_problem`) too.
"""
from __future__ import annotations

import logging
import threading
import time
from typing import TYPE_CHECKING, Callable, Iterable

if TYPE_CHECKING:  # pragma: no cover
    from infra.settings import Settings

log = logging.getLogger(__name__)

EXIT_BROKER_LOST = 75
"""Exit code of a worker that lost its broker or its topics (EX_TEMPFAIL: restart it)."""


class Problem(str):
    """A failed probe, in words. ``lost``: conclusive, the broker answers but this worker's topics are
    gone or were recreated (a broker that restarted empty): waiting cannot help."""
    lost: bool = False

    @classmethod
    def of(cls, text: str, lost: bool = False) -> "Problem":
        """A Problem with ``text``; ``lost`` True when waiting cannot help (the topics are gone)."""
        p = cls(text)
        p.lost = lost
        return p


class BrokerCheck:
    """``check()`` -> None when the broker answers within ``timeout_s`` and every topic of
    ``required_topics`` exists with the topic id it had at the first good probe (ids: Kafka topic
    ids, new for a recreated topic, e.g. auto-created on a restarted empty broker by a producer), else
    a :class:`Problem`: unreachable (not ``lost``), or topics missing / recreated (``lost``)."""

    def __init__(self, settings: "Settings", required_topics: Iterable[str], timeout_s: float = 3.0):
        from confluent_kafka.admin import AdminClient

        from streams.kafka_config import client_config

        self.bootstrap_servers = settings.bootstrap_servers
        self.required = sorted(set(required_topics))
        self.timeout_s = timeout_s
        self.admin = AdminClient(client_config(settings, {
            "log.connection.close": False, "socket.connection.setup.timeout.ms": max(1000, int(timeout_s * 1000))}))
        self.ids: dict[str, str] | None = None

    def _topic_ids(self) -> dict[str, str | None]:
        from confluent_kafka import KafkaError, KafkaException, TopicCollection

        out: dict[str, str | None] = {}
        futures = self.admin.describe_topics(TopicCollection(self.required), request_timeout=self.timeout_s)
        for name, fut in futures.items():
            try:
                out[name] = str(fut.result(self.timeout_s).topic_id)
            except KafkaException as exc:
                err = exc.args[0] if exc.args else None
                if getattr(err, "code", lambda: None)() == KafkaError.UNKNOWN_TOPIC_OR_PART:
                    out[name] = None
                    continue
                raise
        return out

    def __call__(self) -> Problem | None:
        try:
            ids = self._topic_ids()
        except Exception as exc:  # noqa: BLE001 - KafkaException (transport, timeout)
            return Problem.of(f"broker {self.bootstrap_servers} unreachable: {exc}")
        missing = [t for t, i in ids.items() if i is None]
        if missing:
            return Problem.of(f"topics missing on {self.bootstrap_servers} (restarted empty?): "
                              f"{', '.join(missing[:5])}" + (f" and {len(missing) - 5} more" if len(missing) > 5 else ""),
                              lost=True)
        if self.ids is None:
            self.ids = ids
            return None
        recreated = [t for t, i in ids.items() if self.ids.get(t) != i]
        if recreated:
            return Problem.of(f"topics recreated on {self.bootstrap_servers} (new topic ids; restarted empty?): "
                              f"{', '.join(recreated[:5])}" + (f" and {len(recreated) - 5} more"
                                                              if len(recreated) > 5 else ""), lost=True)
        return None


RECOVERY_QUIET_S = 5.0
"""A table recovery that has received no changelog record for this long while records remain counts
as a problem (:func:`recovery_problem`); the watch exits after ``processor_stall_timeout_s`` of it."""


def recovery_problem(recovery, now: float | None = None, quiet_s: float = RECOVERY_QUIET_S) -> Problem | None:
    """A :class:`Problem` (not ``lost``) when faust's table recovery (``app.tables.recovery``) is in
    progress, has records left to read, and has received none for ``quiet_s`` (since its start or its
    last record), else None. A changelog whose end offset is beyond what the broker serves made
    recovery wait forever (processors/topic_repair.py); this bounds any such wait. Reads faust's
    state from the watch's thread: anything unexpected reads as no problem."""
    try:
        if not getattr(recovery, "in_recovery", False):
            return None
        remaining = recovery.active_remaining_total()
        started = recovery._recovery_started_at
        if remaining <= 0 or started is None:
            return None
        last = max([started, *list(recovery._active_events_received_at.values())])
        now = time.monotonic() if now is None else now
        if now - last < quiet_s:
            return None
        return Problem.of(f"table recovery stalled: {remaining} changelog records left, none received for "
                          f"{now - last:.0f}s")
    except Exception:  # noqa: BLE001 - faust internals changed, or changed under us: no verdict
        return None


def broker_check(settings: "Settings", required_topics: Iterable[str], timeout_s: float = 3.0) -> BrokerCheck:
    """A :class:`BrokerCheck` of the cluster of ``settings``, probed once now (when the broker answers) to
    record the topic ids."""
    check = BrokerCheck(settings, required_topics, timeout_s)
    check()
    return check


class BrokerWatch:
    """Probe with ``check()`` (None: fine, else the problem) every ``interval_s``; unhealthy from the
    first failed probe; ``on_stall(problem)`` once no probe succeeded for ``stall_timeout_s``, or at
    once when the problem is ``lost`` (a :class:`Problem` saying the topics are gone or recreated);
    never when ``stall_timeout_s`` is 0. ``clock``/``wall``: monotonic and Unix time (injectable)."""

    def __init__(self, check: Callable[[], str | None], stall_timeout_s: float, on_stall: Callable[[str], None], *,
                 metrics=None, interval_s: float | None = None, clock=time.monotonic, wall=time.time):
        if stall_timeout_s < 0:
            raise ValueError(f"processor_stall_timeout_s: must be >= 0, got {stall_timeout_s}")
        self.check = check
        self.stall_timeout_s = stall_timeout_s
        self.on_stall = on_stall
        self.interval_s = interval_s if interval_s is not None else (
            max(0.2, min(1.0, stall_timeout_s / 4)) if stall_timeout_s > 0 else 1.0)
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
        lost = getattr(problem, "lost", False)
        if self.stall_timeout_s > 0 and not self.stalled and (lost or self.clock() - self.last_ok >= self.stall_timeout_s):
            self.stalled = True
            self.on_stall(problem)
        return problem

    def health(self) -> tuple[bool, dict]:
        """(healthy, details) for /healthz."""
        return self.problem is None, {"problem": self.problem, "last_progress_seconds": self.last_ok_wall,
                                      "stall_timeout_s": self.stall_timeout_s}

    def start(self) -> "BrokerWatch":
        """Start the daemon thread that probes every ``interval_s`` seconds; returns self."""
        def loop():
            while not self._stop.wait(self.interval_s):
                self.probe()
        self._thread = threading.Thread(target=loop, name="processor-liveness", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        """Stop probing (the thread ends at its next wake-up)."""
        self._stop.set()
