"""Follow small, ordered topics (deployments, model lifecycle, model updates, triggers) in a
background thread: a stage's view of the whole log.

Every worker folds the whole log (no consumer group: all partitions are assigned), so each one has
the full deployment configuration and model history whatever partitions faust gives it; a restart
rebuilds the same state. ``start()`` returns once the log has been read to the end it had at start.
This is :class:`streams.follower.TopicFollower` with the handler signature the stages use.
"""
from __future__ import annotations

from typing import Callable, Iterable

from streams.follower import TopicFollower
from streams.serde import Serde

Handler = Callable[[str, dict, str], None]
"""handler(event_type, value, topic)."""


class LogFollower:
    def __init__(self, settings, topics: Iterable[str], handler: Handler, *, serde: Serde | None = None,
                 name: str = "follower"):
        self._follower = TopicFollower(settings, topics, lambda e: handler(e.event_type, e.value, e.topic),
                                       serde=serde, name=name, poll_timeout_s=0.1)

    def start(self, timeout_s: float = 30.0) -> "LogFollower":
        self._follower.start()
        self._follower.wait_caught_up(timeout_s)
        return self

    @property
    def events_seen(self) -> int:
        return self._follower.events

    def stop(self, timeout_s: float = 5.0) -> None:
        self._follower.stop(timeout_s)
