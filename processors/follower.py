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
    """Follows ``topics`` from the beginning, group-less, calling ``handler(event_type, value, topic)`` for
    each decoded event in a background thread."""
    def __init__(self, settings, topics: Iterable[str], handler: Handler, *, serde: Serde | None = None,
                 name: str = "follower"):
        self._follower = TopicFollower(settings, topics, lambda e: handler(e.event_type, e.value, e.topic),
                                       serde=serde, name=name, poll_timeout_s=0.1)

    def start(self, timeout_s: float = 30.0) -> "LogFollower":
        """Start following and wait until the log is read to the end it had now; returns self. Raises
        TimeoutError after ``timeout_s`` seconds."""
        self._follower.start()
        self._follower.wait_caught_up(timeout_s)
        return self

    @property
    def events_seen(self) -> int:
        """Events delivered to the handler so far (count)."""
        return self._follower.events

    def stop(self, timeout_s: float = 5.0) -> None:
        """Stop the follower thread, waiting at most ``timeout_s`` seconds."""
        self._follower.stop(timeout_s)
